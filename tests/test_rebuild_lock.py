"""`rebuild` and `demo` hold the warehouse's guard (`<db>.lock`) until the new file is in place.

warehouse.rebuilding closes the old warehouse (releasing DuckDB's lock on it), deletes
`<db>.wal` and only then renames the scratch file over the warehouse. Before the guard, a
process that opened the warehouse in between was not refused: it wrote into the old file,
which the rename then discarded (its command exited 0, its data was gone), and if it died
after a commit, the write-ahead log it left beside the *new* file stopped every later
command ("WAL does not match database file"). Two demos at once, and demos that were
killed, are here too.

Real parts only: the command as a process on a real DuckDB file. The races are made to land
by pausing a process with SIGSTOP at a named point: the command runs under a small launcher
that adds a Python audit hook and stops itself (SIGSTOP, after writing a flag file) at the
first audit event of a given name whose arguments contain a given text, e.g. the rebuild's
`os.replace` of its scratch file (audit event `os.rename`). No product code is replaced.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from clirun import REPO, cli_env, fs  # noqa: E402
from factories import SHA_A, line, record, write_history  # noqa: E402

# Stops the process at audit events: PAUSE_AT is `event=text;event=text;...`, taken in order;
# at the first event named like the next item with an argument containing its text, the file
# `PAUSE_FLAG.<i>` is written and the process sends itself SIGSTOP.
LAUNCHER = r"""
import os, signal, sys
points = [p.split("=", 1) for p in os.environ.get("PAUSE_AT", "").split(";") if p]
flag = os.environ["PAUSE_FLAG"]
done = []
def hook(event, args):
    if len(done) < len(points):
        name, text = points[len(done)]
        if event == name and any(text in str(a) for a in args):
            with open(f"{flag}.{len(done)}", "w") as fh:
                fh.write(repr(args))
            done.append(1)
            os.kill(os.getpid(), signal.SIGSTOP)
sys.addaudithook(hook)
from pipeline.cli import main
sys.argv[0] = "fleetstate"
main()
"""


def paused(
    tmp_path: Path,
    name: str,
    db: Path,
    args: list[str],
    at: list[str],
    prelude: str = "",
    **env: str,
) -> tuple[subprocess.Popen[bytes], Path]:
    """`fleetstate --db DB ARGS` started under the launcher (after `prelude`, Python run
    first); returns the process and the flag prefix (the flag `<prefix>.<i>` appears
    when it stops at item i of `at`)."""
    launcher = tmp_path / f"launcher-{name}.py"
    launcher.write_text(prelude + LAUNCHER)
    flag = tmp_path / f"{name}-paused"
    proc = subprocess.Popen(
        [sys.executable, str(launcher), "--db", str(db), *args],
        cwd=REPO,
        env={
            **cli_env(),
            "PYTHONPATH": str(REPO),
            "PAUSE_AT": ";".join(at),
            "PAUSE_FLAG": str(flag),
            **env,
        },  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return proc, flag


def wait_stopped(proc: subprocess.Popen[bytes], flag: Path) -> None:
    """Until the process has written `flag` and is stopped (or has ended: then fail)."""
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"ended (rc {proc.returncode}) before its pause point: {err[-500:]}")
        if flag.exists() and _state(proc.pid) == "T":
            return
        time.sleep(0.01)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return ""


def resume(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode()


def foreign_wal(db: Path, scratch: Path) -> None:
    """Put a write-ahead log of another database beside `db` (DuckDB then cannot open it)."""
    other = scratch / "other.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE t (x INT)")
    con.execute("CHECKPOINT")
    con.execute("SET checkpoint_threshold = '1TB'")
    con.execute("INSERT INTO t VALUES (1)")
    db.with_name(db.name + ".wal").write_bytes(other.with_name(other.name + ".wal").read_bytes())
    con.close()


def runs_of(db: Path, host: str) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute("SELECT count(*) FROM runs WHERE host = ?", [host]).fetchall()[0][0])
    finally:
        con.close()


def _warehouse(tmp_path: Path, command: str) -> tuple[Path, list[str]]:
    """A warehouse and the command (rebuild or demo) that will replace it."""
    db = tmp_path / "store" / "wh.duckdb"
    db.parent.mkdir()
    if command == "rebuild":
        mirror = tmp_path / "mirror"
        for i in range(3):
            host = f"h{i}.example.com"
            write_history(mirror, host, line(record(host=host, run_id=f"h{i}-r1")))
        assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
        return db, ["rebuild", "--mirror", str(mirror)]
    demo_mirror = tmp_path / "demo"
    first = fs(db, "demo", "--mirror", str(demo_mirror))
    assert first.returncode == 0, first.stderr
    return db, ["demo", "--mirror", str(demo_mirror)]


@pytest.mark.parametrize("command", ["rebuild", "demo"])
def test_an_ingest_that_opens_the_warehouse_while_it_is_being_replaced_is_not_lost(
    tmp_path: Path, command: str
) -> None:
    """warehouse.rebuilding (warehouse.py, after the `yield`): `old.close()` releases the lock,
    then `<db>.wal` is unlinked, then `os.replace(new, path)`. Its docstring promises "the old
    one is held open meanwhile, so another process using it is refused (locked) instead of
    writing on into a deleted file". The replacing command is stopped right before its
    os.replace (old already closed); an `ingest --from` of another host runs meanwhile: it
    gets the lock, loads, exits 0. The rename then puts the rebuilt file in place and the
    ingest's runs are gone, though it reported them loaded. For `demo` this is also a
    warehouse holding real data replaced by the demo ("never overwritten"); for `rebuild` a
    host not in its mirror dropped without --force. Expected: the ingest is refused (locked,
    exit 1) or its runs are in the warehouse afterwards."""
    db, replace = _warehouse(tmp_path, command)
    other = tmp_path / "other"
    host = "late-001.example.com"
    write_history(other, host, line(record(host=host, run_id="late-run")))

    proc, flag = paused(tmp_path, command, db, replace, ["os.rename=.rebuild"])
    try:
        wait_stopped(proc, Path(f"{flag}.0"))
        ingested = fs(db, "ingest", "--from", str(other))
    finally:
        rc, err = resume(proc)
    assert rc == 0, err[-500:]
    assert ingested.returncode != 0 or runs_of(db, host) == 1, (
        f"`ingest` exited 0 having loaded {host}, and the {command} that replaced the "
        f"warehouse afterwards discarded its runs (now {runs_of(db, host)})"
    )


def test_a_crash_of_an_ingest_that_waited_out_a_rebuild_leaves_the_warehouse_usable(
    tmp_path: Path,
) -> None:
    """README: "a crash at any point leaves the warehouse consistent and the next run picks up
    where the last stopped". Before the guard, an ingest that opened the warehouse in the
    rebuild's unlocked moment held the OLD file; once the rebuild had renamed the new file
    in place, the ingest's first commit created `<db>.wal` by name, a log of the old file
    beside the new one, and a crash after that commit stopped every later command ("WAL
    does not match database file"). Now the ingest waits on the guard (it is stopped at
    its second try, so the first found the guard held), opens the rebuilt file, and is
    killed (SIGKILL) after its first commit: `status` works and shows that commit."""
    db, replace = _warehouse(tmp_path, "rebuild")
    other = tmp_path / "other"
    for name in ("aa-late.example.com", "bb-late.example.com"):
        write_history(other, name, line(record(host=name, run_id=f"{name}-r1")))

    rebuild, rflag = paused(tmp_path, "rebuild", db, replace, ["os.rename=.rebuild"])
    ingest = None
    try:
        wait_stopped(rebuild, Path(f"{rflag}.0"))  # old warehouse closed, not yet replaced
        ingest, iflag = paused(
            tmp_path, "ingest", db, ["ingest", "--from", str(other)],
            ["fcntl.flock=", "fcntl.flock=", "open=aa-late.example.com/history",
             "open=bb-late.example.com/history"],
            FLEETSTATE_LOAD_WORKERS="1", FLEETSTATE_BATCH_BYTES="1", FLEETSTATE_LOCK_WAIT_S="120",
        )  # fmt: skip
        wait_stopped(ingest, Path(f"{iflag}.0"))  # about to try the guard
        os.kill(ingest.pid, signal.SIGCONT)
        wait_stopped(ingest, Path(f"{iflag}.1"))  # its first try found the guard held
        rc, err = resume(rebuild)
        assert rc == 0, err[-500:]
        os.kill(ingest.pid, signal.SIGCONT)
        wait_stopped(ingest, Path(f"{iflag}.2"))  # it has the warehouse
        os.kill(ingest.pid, signal.SIGCONT)
        wait_stopped(ingest, Path(f"{iflag}.3"))  # its first host committed
        ingest.kill()  # a crash (OOM killer, power cut of the process, kill -9)
        ingest.communicate(timeout=60)
    finally:
        for p in (rebuild, ingest):
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)
                p.kill()
                p.communicate(timeout=60)
    status = fs(db, "status", "--format", "json")
    assert status.returncode == 0, (
        f"the warehouse cannot be opened after the crash: {status.stderr.strip()[-400:]}"
    )
    assert runs_of(db, "aa-late.example.com") == 1  # the committed host, in the new file
    assert runs_of(db, "h0.example.com") == 1  # and the rebuilt warehouse's own


def test_two_demos_at_once_do_not_fail_on_each_others_mirror_removal(tmp_path: Path) -> None:
    """demo._replace_mirror removes the previous demo mirror (`shutil.rmtree(mirror)`) before
    it takes any lock. Two demos at once (one from a terminal, one from a script) both remove
    it: the first is stopped at its first unlink inside the mirror, the second runs to its
    end (removes the rest, puts its sample in place, exit 0); the first then fails on the
    next entry of the directory it was removing, with one line that names no path:
    "fleetstate: error: [Errno 2] No such file or directory: 'history.jsonl'" (exit 1; seen
    in 1 of 12 unpaused trials too). Expected: both demos succeed (the sample is the same),
    or the second is told clearly that another demo is running: it is, after waiting
    FLEETSTATE_LOCK_WAIT_S for the first."""
    db, mirror = tmp_path / "wh.duckdb", tmp_path / "demo"
    first = fs(db, "demo", "--mirror", str(mirror))
    assert first.returncode == 0, first.stderr

    a, flag = paused(tmp_path, "demo-a", db, ["demo", "--mirror", str(mirror)], ["os.remove="])
    try:
        wait_stopped(a, Path(f"{flag}.0"))  # in its rmtree of the previous mirror
        b = fs(db, "demo", "--mirror", str(mirror))  # waits FLEETSTATE_LOCK_WAIT_S (1 s)
    finally:
        rc, err = resume(a)
    assert rc == 0, f"the first demo failed: {err.strip().splitlines()[-1:]}"
    assert b.returncode == 1 and b.stderr.strip() == (
        f"fleetstate: error: another demo is writing {mirror}; try again when it has finished"
    ), b.stderr[-300:]
    assert fs(db, "status").returncode == 0


@pytest.mark.parametrize(
    "stop_at",
    [
        "open=.fleetstate-demo",  # its sample directory made, still empty
        "open=history.jsonl",  # generating the sample
        "open=/demo/",  # building its scratch warehouse from the sample, now in place
    ],
)
def test_a_killed_demo_leaves_no_scratch_behind_once_the_demo_has_run_again(
    tmp_path: Path, stop_at: str
) -> None:
    """warehouse.rebuilding promised "Scratch files of rebuilds that were killed go", but only
    when an old warehouse existed and opened (the cleanup was inside `if old is not None`),
    and demo._replace_mirror's sample directory (`.demo.XXXXXXXX`, ~6 MB, mkdtemp beside the
    mirror) was removed only by its own `finally`. A first demo killed (SIGKILL, stopped
    first at a named point) leaves them; the next demo succeeds and must remove them."""
    db, mirror = tmp_path / "wh.duckdb", tmp_path / "demo"
    proc, flag = paused(tmp_path, "demo", db, ["demo", "--mirror", str(mirror)], [stop_at])
    try:
        wait_stopped(proc, Path(f"{flag}.0"))
        scratch = [*tmp_path.glob(".demo.????????"), *tmp_path.glob(".wh.duckdb.*.rebuild*")]
        assert scratch, "the killed demo had made no scratch yet: the test proves nothing"
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    again = fs(db, "demo", "--mirror", str(mirror))
    assert again.returncode == 0, again.stderr[-300:]
    left = [p.name for p in scratch if p.exists()]
    assert not left, f"scratch of the killed demo still there after a successful demo: {left}"


def test_rebuild_refuses_an_old_warehouse_it_cannot_open_unless_forced(tmp_path: Path) -> None:
    """A warehouse DuckDB cannot open (here: a write-ahead log that is not its own beside
    it) used to be replaced in silence, losing git_commits and worker_activity, which only
    it holds, and skipping the check that no host is dropped. Now `rebuild` names the
    problem and replaces it only with --force."""
    mirror = tmp_path / "mirror"
    write_history(mirror, "h1.example.com", line(record(host="h1.example.com", run_id="r1")))
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    foreign_wal(db, tmp_path)
    assert fs(db, "status").returncode == 1  # what the user sees first

    refused = fs(db, "rebuild", "--mirror", str(mirror))
    assert refused.returncode == 1
    assert f"cannot open the warehouse {db}" in refused.stderr
    assert "`rebuild --force` replaces it" in refused.stderr
    assert (tmp_path / "wh.duckdb.wal").exists()  # nothing replaced

    forced = fs(db, "rebuild", "--mirror", str(mirror), "--force")
    assert forced.returncode == 0, forced.stderr
    assert runs_of(db, "h1.example.com") == 1
    assert fs(db, "status").returncode == 0


def test_a_watch_skips_a_refresh_while_another_process_holds_the_warehouse(
    tmp_path: Path,
) -> None:
    """`rollout --watch --from DIR` alongside a cron ingest: a refresh that finds the
    warehouse locked beyond FLEETSTATE_LOCK_WAIT_S used to end the watch (exit 1); now it is
    skipped with a line on stderr and the watch goes on to complete once the lock is gone."""
    db, replace = _warehouse(tmp_path, "rebuild")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "sys.stdin.readline(); c.close()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    watch = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--db", str(db), "rollout", SHA_A, "--watch",
         "--from", replace[-1], "--interval", "0.2", "--iterations", "100000",
         "--format", "json", "--part", "summary"],
        cwd=REPO, env={**cli_env(), "FLEETSTATE_LOCK_WAIT_S": "0.1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert watch.stderr is not None
    skipped = watch.stderr.readline()
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(60)
    out, err = watch.communicate(timeout=120)
    assert "is locked by another fleetstate process" in skipped and "(refresh 1 skipped)" in skipped
    assert watch.returncode == 0, err[-500:]
    (summary,) = json.loads(out)
    assert summary["hosts"] == 3 and summary["converged"] == 3
