"""Review of the warehouse guard (`<db>.lock`): cases where it does not hold what it promises.

Real parts only, as in test_rebuild_lock.py: the command as a process on a real DuckDB
file; races are made to land by that file's launcher (SIGSTOP at a named audit event).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from clirun import REPO, cli_env, fs  # noqa: E402
from factories import line, record, write_history  # noqa: E402
from test_rebuild_lock import (  # noqa: E402
    LAUNCHER,
    foreign_wal,
    paused,
    resume,
    runs_of,
    wait_stopped,
)  # noqa: E402

NOBODY = 65534


def _mirror(root: Path, *hosts: str) -> Path:
    for host in hosts:
        write_history(root, host, line(record(host=host, run_id=f"{host}-r1")))
    return root


# --- another user -------------------------------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may write (a group's shared warehouse directory, say); pytest's
    tmp_path is private to its user."""
    base = Path(tempfile.mkdtemp(prefix="fleetstate-review-", dir="/tmp"))
    base.chmod(0o777)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _other_user(base: Path) -> tuple[str, dict[str, str]]:
    """A Python interpreter `nobody` may run with this checkout's packages, and its env."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as another user")
    site = str(Path(duckdb.__file__).resolve().parent.parent)
    env = {
        **cli_env(),
        "PYTHONPATH": f"{REPO}:{site}",
        "HOME": str(base),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, os.path.realpath(sys.executable)]
    candidates += [f"{d}/{version}" for d in ("/usr/bin", "/usr/local/bin", "/bin")]
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-c", "import duckdb, typer, pipeline.cli"],
                user=NOBODY, group=NOBODY, extra_groups=[], cwd=base, env=env,
                capture_output=True,
            )  # fmt: skip
        except OSError:  # not there, or in a directory nobody may enter (~root/.pyenv)
            continue
        if probe.returncode == 0:
            return python, env
    pytest.skip("no Python interpreter that user nobody can run with these packages")


def _as_nobody(
    python: str, env: dict[str, str], base: Path, db: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, "-m", "pipeline", "--db", str(db), *args],
        user=NOBODY, group=NOBODY, extra_groups=[], umask=0o022,
        cwd=base, env=env, capture_output=True, text=True,
    )  # fmt: skip


def test_a_guard_another_user_made_private_does_not_let_a_rebuild_lose_an_ingest(
    shared_dir: Path,
) -> None:
    """warehouse._guard creates `<db>.lock` with mode 0o666 & ~umask and, when it cannot open
    it, goes on *unguarded*, for the exclusive holder (`rebuilding`) as for every opener.
    In a shared warehouse directory, the first command after the upgrade makes the guard;
    an operator with umask 077 running a read-only `status` makes it 0600, and from then on
    the warehouse's owner (here `nobody`) opens nothing through the guard: its `rebuild`
    replaces the warehouse unguarded, and an `ingest` in the moment before the rename exits
    0 and its runs are gone, the data loss the guard was added against. (The docstring's
    "nobody who could rebuild it can either" does not hold: the owner can rebuild.)
    Expected: the ingest is refused (locked) or its runs are in the rebuilt warehouse."""
    base = shared_dir
    python, env = _other_user(base)
    mirror = _mirror(base / "mirror", "h0.example.com", "h1.example.com")
    other = _mirror(base / "other", "late-001.example.com")
    db = base / "wh.duckdb"
    made = _as_nobody(python, env, base, db, "ingest", "--from", str(mirror))
    assert made.returncode == 0, made.stderr
    (base / "wh.duckdb.lock").unlink()  # a warehouse of the release before the guard

    # an operator (root here) with a private umask looks first: the guard is made 0600
    look = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "status"],
        cwd=REPO, env=cli_env(), umask=0o077, capture_output=True, text=True,
    )  # fmt: skip
    assert look.returncode == 0, look.stderr  # on HEAD the guard is now 0600, root's

    launcher = base / "launcher.py"
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o644)
    flag = base / "rebuild-paused"
    rebuild = subprocess.Popen(
        [python, str(launcher), "--db", str(db), "rebuild", "--mirror", str(mirror)],
        user=NOBODY, group=NOBODY, extra_groups=[], umask=0o022, cwd=base,
        env={**env, "PAUSE_AT": "os.rename=.rebuild", "PAUSE_FLAG": str(flag)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_stopped(rebuild, Path(f"{flag}.0"))  # old warehouse closed, not yet replaced
        ingested = _as_nobody(python, env, base, db, "ingest", "--from", str(other))
    finally:
        rc, err = resume(rebuild)
    assert rc == 0, err[-500:]
    assert ingested.returncode != 0 or runs_of(db, "late-001.example.com") == 1, (
        "`ingest` exited 0 while the owner's rebuild held no guard (it could not open the "
        "0600 guard another user made) and the rebuild then discarded its runs"
    )


# --- the guard file is not a regular file -------------------------------------------------


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return ""


def test_a_fifo_at_the_guard_path_does_not_hang_a_command(tmp_path: Path) -> None:
    """warehouse._guard opens `<db>.lock` with os.open(O_RDONLY | O_CREAT) and no O_NONBLOCK:
    when that name is a FIFO the open blocks until some writer opens it, i.e. forever;
    FLEETSTATE_LOCK_WAIT_S (1 s here) bounds nothing and a read-only `status` hangs with no
    message. The test waits until the process has ended or sits in the kernel's FIFO open
    (wchan `wait_for_partner`). Expected: the command ends (unguarded, or a one-line error
    naming the guard), never a hang."""
    mirror = _mirror(tmp_path / "mirror", "h0.example.com")
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    guard = tmp_path / "wh.duckdb.lock"
    guard.unlink()
    os.mkfifo(guard)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--db", str(db), "status"],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        while proc.poll() is None:
            if _wchan(proc.pid) == "wait_for_partner":
                pytest.fail(
                    "`status` is blocked for good in open() of the guard, a FIFO "
                    "(FLEETSTATE_LOCK_WAIT_S=1 does not bound it)"
                )
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode in (0, 1), err.decode()[-300:]
    assert len(err.decode().strip().splitlines()) <= 1, err.decode()[-300:]


# --- FLEETSTATE_LOCK_WAIT_S -------------------------------------------------------------

# Python 3.12 raises the audit event `time.sleep`; 3.11 does not, so the launcher raises it
# (the sleep itself is the real one).
SLEEP_EVENT = r"""
import sys, time
_sleep = time.sleep
def _audited_sleep(secs):
    sys.audit("time.sleep", secs)
    _sleep(secs)
time.sleep = _audited_sleep
"""


def test_rebuild_waits_no_longer_than_fleetstate_lock_wait_s_in_all(tmp_path: Path) -> None:
    """README: a command that finds the warehouse locked "waits up to FLEETSTATE_LOCK_WAIT_S
    seconds (5), then stops with a one-line error". `rebuilding` gives the guard a deadline
    (now + wait) and then `_open_old` -> `_open_waiting` starts a second, fresh one for
    DuckDB's lock, so a rebuild can wait twice the setting (a demo: mirror lock, the
    real-data check's open, the guard and DuckDB's lock, four times). Here the rebuild is
    stopped right before it takes the guard (its deadline already set), the whole wait
    (0.5 s) passes, and another process holds the warehouse open: a rebuild whose wait is
    used up must stop (locked, exit 1) at its first failed try; this one sleeps to try
    again (it reaches `time.sleep`, audit event, where it is stopped a second time)."""
    mirror = _mirror(tmp_path / "mirror", "h0.example.com")
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    holder = duckdb.connect(str(db), read_only=True)  # another process's open: DuckDB's lock
    wait_s = 0.5
    proc, flag = paused(
        tmp_path, "rebuild", db, ["rebuild", "--mirror", str(mirror)],
        ["fcntl.flock=", "time.sleep="], prelude=SLEEP_EVENT, FLEETSTATE_LOCK_WAIT_S=str(wait_s),
    )  # fmt: skip
    try:
        wait_stopped(proc, Path(f"{flag}.0"))  # deadline set, about to take the guard
        used_up = time.monotonic() + wait_s
        while time.monotonic() < used_up:  # let its whole wait pass (not a synchronisation)
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGCONT)
        second = Path(f"{flag}.1")
        while proc.poll() is None and not second.exists():
            time.sleep(0.01)
        retried = second.exists()
    finally:
        holder.close()
        if proc.poll() is None:
            rc, err = resume(proc)
        else:
            rc, err = proc.returncode, proc.communicate(timeout=60)[1].decode()
    assert not retried, (
        "after FLEETSTATE_LOCK_WAIT_S had passed, the rebuild slept to try DuckDB's lock "
        "again: its open of the old warehouse has a wait of its own"
    )
    assert rc == 1 and "is locked by another fleetstate process" in err, err[-300:]


# --- demo ------------------------------------------------------------------------------


def test_demo_with_a_mirror_without_a_name_is_one_line_of_error(tmp_path: Path) -> None:
    """demo._one_demo_at_a_time: `mirror.with_name(f".{mirror.name}.lock")` raises ValueError
    ("PosixPath('.') has an empty name") for `--mirror .` (or `/`), and the user gets a
    Python traceback; before this change the demo refused it in one line ("... is not a
    demo mirror ..."). Expected: exit 1 and one line `fleetstate: error: ...`."""
    cwd = tmp_path / "here"
    cwd.mkdir()
    done = fs(tmp_path / "wh.duckdb", "demo", "--mirror", ".", cwd=cwd)
    err = done.stderr.strip()
    assert done.returncode == 1, err[-300:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-400:]
    assert err.startswith("fleetstate: error: "), err[-300:]


# --- rebuild --force, which the refusal recommends -----------------------------------------


def test_rebuild_force_replaces_an_unreadable_warehouse_under_a_path_containing_lock(
    tmp_path: Path,
) -> None:
    """`rebuild` refuses an old warehouse DuckDB cannot open and names `rebuild --force` as
    the way out. _open_waiting takes any DuckDB IOException whose text contains "lock" as
    the lock of another process, and DuckDB's text holds the file's path: for a warehouse
    under e.g. /home/blockley/ or /srv/clock/ a foreign write-ahead log is "warehouse ... is
    locked by another fleetstate process" after the wait, for `rebuild` and for `rebuild
    --force` alike (a WarehouseError, which _open_old's `except duckdb.Error` does not
    take), so --force can never replace it. Expected: --force replaces it, as it does
    for the same files in a directory named otherwise."""
    mirror = _mirror(tmp_path / "mirror", "h1.example.com")
    home = tmp_path / "blockley"
    home.mkdir()
    db = home / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    foreign_wal(db, tmp_path)
    forced = fs(db, "rebuild", "--mirror", str(mirror), "--force")
    assert forced.returncode == 0, forced.stderr.strip()[-300:]
    assert runs_of(db, "h1.example.com") == 1


def test_rebuild_does_not_offer_force_where_force_cannot_replace(tmp_path: Path) -> None:
    """A --db naming a directory: `rebuild` says "cannot open the warehouse ... `rebuild
    --force` replaces it", and `rebuild --force` then loads the whole mirror into a scratch
    file and fails at the rename ("[Errno 21] Is a directory"). Expected: either --force
    does what the message says, or the message does not offer it (a directory is not a
    warehouse: refused up front, as a non-DuckDB file is)."""
    mirror = _mirror(tmp_path / "mirror", "h1.example.com")
    db = tmp_path / "wh.duckdb"
    db.mkdir()
    refused = fs(db, "rebuild", "--mirror", str(mirror))
    assert refused.returncode == 1
    if "--force` replaces it" in refused.stderr:
        forced = fs(db, "rebuild", "--mirror", str(mirror), "--force")
        assert forced.returncode == 0, (
            f"the refusal offered --force, which then failed: {forced.stderr.strip()[-300:]}"
        )


def test_the_guard_is_readable_by_all_and_a_rebuild_never_runs_without_it(
    tmp_path: Path,
) -> None:
    """The guard is made 0644 whatever the umask of the command that made it, so every
    user of the warehouse can take it; a `rebuild` that cannot take it (here a directory
    in its place) stops with one line naming it instead of replacing the file unguarded,
    while a read-only command goes on without it."""
    mirror = _mirror(tmp_path / "mirror", "h0.example.com")
    db = tmp_path / "wh.duckdb"
    old = os.umask(0o077)
    try:
        assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    finally:
        os.umask(old)
    guard = tmp_path / "wh.duckdb.lock"
    assert guard.stat().st_mode & 0o777 == 0o644
    guard.unlink()
    guard.mkdir()
    refused = fs(db, "rebuild", "--mirror", str(mirror))
    assert refused.returncode == 1
    (message,) = refused.stderr.strip().splitlines()
    assert message.startswith(f"fleetstate: error: cannot lock the warehouse's guard {guard}: ")
    assert fs(db, "status").returncode == 0


def _open_on(path: Path) -> int:
    """How many of this process's descriptors have the file at `path` open."""
    fds = os.listdir("/proc/self/fd")
    return sum(1 for fd in fds if os.path.realpath(f"/proc/self/fd/{fd}") == str(path))


def test_a_removed_lock_file_never_lets_two_holders_in(tmp_path: Path) -> None:
    """locks.holding(remove=True) removes its file before letting the lock go (the demo's
    `.<mirror>.lock` was left beside the mirror, a real one too when the demo refused it).
    A waiter that had opened the removed file must not hold that orphan while a newcomer
    locks a new file at the same path: each holder checks that the path still names what
    it locked, and starts again if not."""
    import threading

    from pipeline import locks

    path = tmp_path / ".m.lock"
    far = time.monotonic() + 3600
    held = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]

    def holder(i: int) -> None:
        with locks.holding(path, far, "busy", remove=True):
            held[i].set()
            release[i].wait(3600)

    first = threading.Thread(target=holder, args=(0,))
    first.start()
    assert held[0].wait(3600)
    second = threading.Thread(target=holder, args=(1,))
    second.start()
    try:
        while _open_on(path) < 2:  # the second has the file open, waiting for its lock
            time.sleep(0.01)
        release[0].set()  # the first removes the file and lets go
        first.join(3600)
        assert held[1].wait(3600)
        assert path.exists()  # the second holds the file the path names now
        with pytest.raises(locks.Busy), locks.holding(path, time.monotonic(), "busy", True):
            pass  # a newcomer waits for the second
    finally:
        for e in release:
            e.set()
        first.join(3600)
        second.join(3600)
    assert not path.exists()


def test_a_refused_demo_leaves_nothing_beside_the_mirror(tmp_path: Path) -> None:
    """The demo refuses a mirror it did not make; it left its `.<mirror>.lock` beside the
    operator's real mirror."""
    mirror = tmp_path / "real"
    write_history(mirror, "h1", line(record()))
    before = sorted(p.name for p in tmp_path.iterdir())
    refused = fs(tmp_path / "demo.duckdb", "demo", "--mirror", str(mirror))
    assert refused.returncode == 1 and "not a demo mirror" in refused.stderr, refused.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
