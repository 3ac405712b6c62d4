"""Adverse hosts and callers: the record stays valid JSON the collector accepts,
and puppet's run and exit code are untouched.

Odd clocks (no date, before 1970, past 9999), integers out of the collector's
ranges, sha256 repositories, a working dir inside another repository, prepare
records after a failed fetch, callers with errexit, digits in IFS or another
locale, a stdout reader that goes away, stale locks with an unknown owner,
numeric settings with leading zeros, umask 077, a full disk mid-append, FIFOs
and directories where files are expected, and the timeout watchdog's clean-up.
Tests that mount a tmpfs need root (unshare -m) and skip without it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from wrapper_helpers import (
    BASH,
    ISO_RE,
    LINUX_SCRIPT,
    Host,
    git,
    make_host,
    write_exe,
)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    h = make_host(tmp_path)
    # no timeout watchdog: with a fake puppet that ends at once its `sleep` can be
    # left behind, and under errexit the watchdog itself is (see the errexit test)
    h.env["PUPPET_TIMEOUT_S"] = "0"
    return h


def _need_mount_namespace() -> None:
    """Skip unless a private mount namespace (for a small tmpfs) can be had: root."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a small tmpfs in a private mount namespace")
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot create a mount namespace here (unshare -m failed)")


def _fake_date(host: Host, body: str) -> str:
    """A PATH entry whose `date` runs `body` (sh); returns the new PATH."""
    d = host.root / "fakedate"
    d.mkdir(exist_ok=True)
    write_exe(d / "date", "#!/bin/sh\n" + body + "\n")
    return f"{d}:{host.env['PATH']}"


def test_ts_is_recorded_when_date_fails(host: Host) -> None:
    """ts is required by the collector ("ts is null" rejects the whole record); bash
    itself can tell the time ($EPOCHSECONDS / printf %(%s)T) when date(1) cannot."""
    proc = host.run(FAKE_PUPPET_RC="2", PATH=_fake_date(host, "exit 1"))
    assert proc.returncode == 2
    rec = host.state_record()
    assert rec["ts"] is not None and ISO_RE.match(rec["ts"]), rec["ts"]


def test_git_sha_is_40_hex_or_null_in_a_sha256_repo(host: Host) -> None:
    """Contract and collector: git_sha is a 40-hex commit (else null); a 64-hex sha
    makes the collector reject the whole record."""
    wd = host.working_dir
    git("init", "-q", "--object-format=sha256", "-b", "main", str(wd))
    (wd / "f").write_text("x")
    git("add", ".", cwd=wd)
    git("commit", "-q", "-m", "x", cwd=wd)
    proc = host.bash('write_puppet_state "$1" r 0 1 /o /v', str(wd))
    assert proc.returncode == 0
    sha = host.state_record()["git_sha"]
    assert sha is None or len(sha) == 40, sha


def test_prepare_record_does_not_pair_the_new_repo_with_the_old_commit(host: Host) -> None:
    """A fetch failure after a good run: the record names the new repo and branch
    (remote set-url ran) next to the old checkout's sha, a commit of neither."""
    assert host.run(FAKE_PUPPET_RC="0").returncode == 0
    new_repo = f"file://{host.root}/other-repo"
    host.override.write_text(f'PUPPET_REPO="{new_repo}"\nPUPPET_BRANCH="feature"\n')
    assert host.run(FAKE_PUPPET_RC="0").returncode == 1
    rec = host.history_records()[-1]
    assert rec["stage"] == "prepare"
    assert not (rec["git_repo"] == new_repo and rec["git_sha"] == host.upstream_sha), rec


def _etckeeper(host: Host) -> Path:
    """/etc as a git repository (etckeeper) holding a plain, not yet fetched working dir."""
    outer = host.root / "etc"
    git("init", "-q", "-b", "etc", str(outer))
    git("-C", str(outer), "remote", "add", "origin", "https://etckeeper.example/etc.git")
    git("-C", str(outer), "add", "-A")
    git("-C", str(outer), "commit", "-q", "-m", "etc")
    wd = outer / "puppet" / "environments" / "ronin_puppet"
    wd.mkdir(parents=True)
    return wd


def test_working_dir_inside_another_repo_gives_no_git_facts(host: Host) -> None:
    """The checkout dir exists but is not a repository (not fetched yet) and sits
    inside another repository (etckeeper's /etc): its git facts are not ours. The
    prepare record names the repo and branch asked for (the override's)."""
    wd = _etckeeper(host)
    host.role_file.unlink()  # prepare failure before checkout_code runs
    proc = host.run(PUPPET_WORKING_DIR=str(wd))
    assert proc.returncode == 1
    rec = host.state_record()
    assert (rec["git_sha"], rec["git_dirty"]) == (None, None), rec
    assert (rec["git_repo"], rec["git_branch"]) == (f"file://{host.upstream}", "main")
    # the library itself, given that directory: nothing of etckeeper's
    assert host.bash('write_puppet_state "$1" r 0 1 /o /v', str(wd)).returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"], rec["git_dirty"]) == (None, None, None), rec


def test_caller_ifs_with_digits_does_not_break_begin(host: Host) -> None:
    """puppet_state_begin runs in the caller's shell: unquoted $# and $((...)) split
    on an IFS holding digits (attempt lost, started_at malformed)."""
    snippet = (
        "IFS=0123456789\n"
        'puppet_state_begin --attempt 3 --override "$1" --vault "$2"\n'
        "IFS=$' \\t\\n'\n"
        "puppet_state_record --exit-code 0 --role r"
    )
    proc = host.bash(snippet, str(host.override), str(host.vault))
    assert proc.returncode == 0
    rec = host.state_record()
    assert rec["attempt"] == 3
    assert ISO_RE.match(rec["started_at"]), rec["started_at"]


def test_override_value_does_not_depend_on_the_callers_locale(host: Host) -> None:
    """[[:blank:]] matches U+3000 in a UTF-8 locale; sh does not split on it."""
    host.override.write_bytes(b"PUPPET_BRANCH=feat\xe3\x80\x80x\n")
    sh = subprocess.run(
        ["sh", "-c", '. "$1"; printf %s "$PUPPET_BRANCH"', "sh", str(host.override)],
        capture_output=True,
    )
    got = {}
    for loc in ("C", "C.UTF-8"):
        proc = host.bash(
            'puppet_state_override_value "$1" PUPPET_BRANCH; printf %s "$PUPPET_STATE_VALUE"',
            str(host.override),
            LC_ALL=loc,
        )
        got[loc] = proc.stdout
    assert got == {"C": sh.stdout, "C.UTF-8": sh.stdout}


def test_driver_started_with_errexit_still_records(host: Host) -> None:
    """errexit inherited through an exported SHELLOPTS: puppet's 4 ends the driver at
    the pipeline, before puppet_state_record (and before any retry). With the default
    PUPPET_TIMEOUT_S the watchdog subshell is also left running for an hour."""
    proc = host.run(FAKE_PUPPET_RC="4", SHELLOPTS="errexit")
    assert proc.returncode == 4
    assert [r["exit_code"] for r in host.history_records()] == [4]


def test_old_lock_with_an_empty_owner_file_is_broken(host: Host) -> None:
    """A writer that died after creating an empty owner (disk full, or killed between
    open and write) leaves a lock that is never broken: every later record waits the
    full timeout and rotation never happens again."""
    lock = Path(f"{host.history}.lock")
    lock.mkdir()
    (lock / "owner").write_text("")
    old = time.time() - 7200
    os.utime(lock / "owner", (old, old))
    os.utime(lock, (old, old))
    proc = host.bash('write_puppet_state "" r 0 1 /o /v')
    assert b"not acquired" not in proc.stderr, proc.stderr  # it would wait the full 5 s
    assert b"breaking stale history lock" in proc.stderr
    assert not lock.exists()


@pytest.mark.parametrize(
    "knob", ["PUPPET_RUN_HISTORY_MAX_BYTES=0800", "PUPPET_STATE_LOCK_TIMEOUT_S=08"]
)
def test_numeric_knob_with_a_leading_zero_does_not_lose_the_line(host: Host, knob: str) -> None:
    """The knobs pass a digits-only check, then $((...)) reads 08 as bad octal and the
    record's subshell dies: no history line, the lock left behind."""
    host.history.write_text('{"old":1}\n' * 100)  # 1000 bytes: past a cap of 800
    name, value = knob.split("=")
    host.env[name] = value
    proc = host.bash('write_puppet_state "" newline 0 1 /o /v')
    assert proc.returncode == 0
    assert '"role":"newline"' in host.history.read_text().splitlines()[-1], proc.stderr
    assert not Path(f"{host.history}.lock").exists()


def test_state_directory_created_under_umask_077_is_readable(host: Host) -> None:
    """The collector may log in as a non-root user; a 0644 state file in a 0700
    directory it created is unreadable to it."""
    state = host.root / "new" / "puppet" / "last_run_metadata.json"
    proc = subprocess.run(
        [BASH, "-c", f'umask 077; exec {BASH} "{LINUX_SCRIPT}"'],
        env={**host.env, "PUPPET_STATE_FILE": str(state), "FAKE_PUPPET_RC": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert state.stat().st_mode & 0o777 == 0o644
    for d in (state.parent, state.parent.parent):
        assert d.stat().st_mode & 0o005 == 0o005, oct(d.stat().st_mode)


def test_rotation_onto_a_directory_does_not_hide_history_inside_it(host: Host) -> None:
    rotated = Path(f"{host.history}.1")
    rotated.mkdir()
    for i in range(4):
        host.bash(f'write_puppet_state "" r{i} 0 1 /o /v', PUPPET_RUN_HISTORY_MAX_BYTES="700")
    assert list(rotated.iterdir()) == []


def test_history_path_that_is_a_fifo_does_not_hang_the_wrapper(host: Host) -> None:
    fifo = host.history
    os.mkfifo(fifo)
    try:
        proc = host.run(FAKE_PUPPET_RC="2", timeout=60)  # a hang raises TimeoutExpired
        assert proc.returncode == 2
        assert "is not a regular file; history not written" in proc.stderr
    finally:  # release a dd still blocked opening the FIFO
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        time.sleep(0.5)
        os.close(fd)


def test_puppet_is_not_killed_when_the_wrappers_stdout_reader_goes_away(host: Host) -> None:
    """`run-puppet.sh | head -1`, or a log shipper that restarts: tee dies of SIGPIPE,
    then puppet does, mid-apply (recorded as 141)."""
    write_exe(
        host.bin / "puppet",
        '#!/bin/bash\nfor i in $(seq 1 100); do echo "Notice: $i"; sleep 0.01; done\n'
        'echo done >> "$FAKE_PUPPET_MARKER"\nexit 2\n',
    )
    p = subprocess.Popen(
        [BASH, str(LINUX_SCRIPT)],
        env=host.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=host.root,
    )
    assert p.stdout is not None
    p.stdout.readline()
    p.stdout.close()
    rc = p.wait(timeout=60)
    assert host.marker.exists(), "puppet was killed before it finished"
    assert rc == 2 and host.history_records()[-1]["exit_code"] == 2


def test_integers_the_collector_rejects_are_not_written(host: Host) -> None:
    """exit_code 0..255, attempt >= 1, duration_s 0..2^31-1, started_at ISO: out of
    range, the collector rejects the whole line; the contract says null when unknown."""
    snippet = "puppet_state_record --exit-code 256 --attempt 0 --duration 3000000000 --role r"
    assert host.bash(snippet).returncode == 0
    rec = host.state_record()
    assert rec["exit_code"] in (None, *range(256))
    assert rec["attempt"] is None or rec["attempt"] >= 1
    assert rec["duration_s"] is None or rec["duration_s"] < 2**31
    assert rec["started_at"] is None or ISO_RE.match(rec["started_at"]), rec["started_at"]


def test_disk_full_mid_append_leaves_every_history_line_valid(host: Host) -> None:
    """Room for part of the line only: the torn part stays as an invalid line for good
    (README documents it; the brief requires valid JSON on every line)."""
    _need_mount_namespace()
    log = host.root / "small"
    log.mkdir()
    hist = log / "h.jsonl"
    first = json.dumps({"schema_version": 1, "pad": "x" * 3900}, separators=(",", ":"))
    script = (
        f'mount -t tmpfs -o size=12k tmpfs "{log}" || exit 99\n'
        f"printf '%s\\n' '{first}' > \"{hist}\"\n"
        f'dd if=/dev/zero of="{log}/fill" bs=1k count=100 2>/dev/null\n'
        f'{BASH} "{LINUX_SCRIPT}" >/dev/null 2>&1; echo "rc1=$?"\n'
        f'rm -f "{log}/fill"\n'
        f'{BASH} "{LINUX_SCRIPT}" >/dev/null 2>&1; echo "rc2=$?"\n'
        f'cat "{hist}" > "{host.root}/copy.jsonl"\n'
    )
    env = {**host.env, "PUPPET_RUN_HISTORY": str(hist), "PUPPET_RUN_LOG": "/dev/null"}
    proc = subprocess.run(
        ["unshare", "-m", BASH, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert "rc1=0" in proc.stdout and "rc2=0" in proc.stdout, proc.stdout + proc.stderr
    lines = (host.root / "copy.jsonl").read_text().splitlines()
    bad = []
    for line in lines:
        try:
            json.loads(line)
        except ValueError:
            bad.append(line[:60])
    assert bad == []


# --- clocks and the collector's ranges ---------------------------------------------


@pytest.mark.parametrize(
    "date_body",
    ["exit 1", "echo -86400", "echo 99999999999999", "echo 253402300800"],
    ids=["fails", "before-1970", "far-future", "after-9999"],
)
def test_ts_is_a_time_the_collector_accepts_whatever_date_says(host: Host, date_body: str) -> None:
    """date(1) failing or out of 1970..9999: bash's own clock gives the time; a
    year of 1969 or 3170843 is never written."""
    proc = host.run(FAKE_PUPPET_RC="2", PATH=_fake_date(host, date_body))
    assert proc.returncode == 2
    rec = host.state_record()
    for key in ("ts", "started_at"):
        assert rec[key] is not None and ISO_RE.match(rec[key]), rec[key]
        assert "1970" <= rec[key][:4] <= "9999"
    assert rec["started_at"] <= rec["ts"]


ISO_UTC = '_ps_iso_utc "$1"; echo "rc=$? iso=$_PS_ISO"'


@pytest.mark.parametrize(
    "epoch",
    [0, 1, 86399, 951782400, 1790000000, 4107542400, 253402300799],
)
def test_iso_utc_agrees_with_python(host: Host, epoch: int) -> None:
    proc = host.bash(ISO_UTC, str(epoch))
    expected = datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert proc.stdout.decode() == f"rc=0 iso={expected}\n"


@pytest.mark.parametrize("epoch", ["-1", "-86400", "253402300800", "99999999999999", "", "x1"])
def test_iso_utc_gives_nothing_outside_1970_to_9999(host: Host, epoch: str) -> None:
    """No malformed or pre-1970 time (the collector rejects both): status 1, empty."""
    assert host.bash(ISO_UTC, epoch).stdout == b"rc=1 iso=\n"


def test_started_at_before_1970_is_null(host: Host) -> None:
    """No puppet_state_begin: started_at is ts minus --duration; 2e9 s (a valid
    duration_s) before now is 1963, which the collector rejects."""
    assert host.bash("puppet_state_record --exit-code 0 --duration 2000000000").returncode == 0
    rec = host.state_record()
    assert rec["duration_s"] == 2_000_000_000
    assert rec["started_at"] is None and ISO_RE.match(rec["ts"])


@pytest.mark.parametrize(
    ("args", "field", "value"),
    [
        ("--exit-code 255", "exit_code", 255),
        ("--exit-code 256", "exit_code", None),
        ("--exit-code 007", "exit_code", 7),
        ("--attempt 2147483647", "attempt", 2147483647),
        ("--attempt 2147483648", "attempt", None),
        ("--attempt 0", "attempt", None),
        ("--duration 0", "duration_s", 0),
        ("--duration 2147483648", "duration_s", None),
        ("--duration 0000000000000000000000042", "duration_s", 42),
    ],
)
def test_integer_range_edges(host: Host, args: str, field: str, value: int | None) -> None:
    assert host.bash(f"puppet_state_record --role r {args}").returncode == 0
    assert host.state_record()[field] == value


# --- git facts ---------------------------------------------------------------------


def test_repo_asked_for_that_is_not_the_checkouts_gives_no_commit(host: Host) -> None:
    """--repo names the repo an attempt asked for; a checkout of another repo holds a
    commit of neither (the fetch failed), so git_sha and git_dirty are null."""
    wd = host.working_dir
    git("clone", "-q", str(host.upstream), str(wd))
    record = 'puppet_state_record --exit-code "" --stage prepare --working-dir "$1" --repo "$2"'
    assert host.bash(record, str(wd), "https://other.example/x.git").returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"], rec["git_dirty"]) == (
        "https://other.example/x.git",
        None,
        None,
    )
    assert host.bash(record, str(wd), str(host.upstream)).returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"]) == (str(host.upstream), host.upstream_sha)


def test_failed_fetch_leaves_origin_naming_the_checked_out_commit(host: Host) -> None:
    """origin is set to the new repo only once its commit is checked out: a later
    record of the checkout (seed-style) pairs the old commit with the old repo."""
    assert host.run(FAKE_PUPPET_RC="0").returncode == 0
    host.override.write_text(f'PUPPET_REPO="file://{host.root}/missing"\nPUPPET_BRANCH="x"\n')
    assert host.run(FAKE_PUPPET_RC="0").returncode == 1
    url = git("-C", str(host.working_dir), "config", "--get", "remote.origin.url")
    assert url == f"file://{host.upstream}"


def test_prepare_failure_after_the_checkout_keeps_its_commit(host: Host) -> None:
    """The commit asked for is checked out, then installing the vault fails: the
    prepare record names that commit (the checkout got there), with the repo asked."""
    secrets = host.working_dir / "data" / "secrets"
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    secrets.parent.mkdir()
    secrets.write_text("a file where the directory goes\n")
    proc = host.run(FAKE_PUPPET_RC="0")
    assert proc.returncode == 1 and "could not install the vault" in proc.stderr
    rec = host.state_record()
    assert rec["stage"] == "prepare" and rec["git_sha"] == host.upstream_sha
    assert rec["git_repo"] == f"file://{host.upstream}" and rec["git_branch"] == "main"


def test_subdirectory_of_a_checkout_gives_no_git_facts(host: Host) -> None:
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    sub = host.working_dir / "manifests"
    assert host.bash('write_puppet_state "$1" r 0 1 /o /v', str(sub)).returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"], rec["git_dirty"]) == (None, None, None)


def test_working_dir_reached_through_a_symlink_keeps_its_git_facts(host: Host) -> None:
    """The top-level check compares physical paths: a symlinked path is the checkout."""
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    link = host.root / "link"
    link.symlink_to(host.working_dir)
    assert host.bash('write_puppet_state "$1" r 0 1 /o /v', "link").returncode == 0
    rec = host.state_record()
    assert (rec["git_repo"], rec["git_sha"]) == (str(host.upstream), host.upstream_sha)


# --- the caller's shell, settings, locks and files ---------------------------------


def test_caller_ifs_with_digits_does_not_break_the_other_functions(host: Host) -> None:
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    snippet = (
        "IFS=0123456789\n"
        'puppet_state_override_value "$1" PUPPET_BRANCH\n'
        'printf "%s" "$PUPPET_STATE_VALUE"\n'
        'write_puppet_state "$2" r 0 120 "$1" /v\n'
    )
    proc = host.bash(snippet, str(host.override), str(host.working_dir))
    assert proc.returncode == 0 and proc.stdout == b"main"
    rec = host.state_record()
    assert (rec["duration_s"], rec["git_sha"]) == (120, host.upstream_sha)
    assert ISO_RE.match(rec["started_at"])


def test_lock_owner_epoch_with_leading_zeros(host: Host) -> None:
    """A live holder's owner epoch of 08 (garbled): read as decimal 8, far past the
    stale limit, so the lock is broken; $((now - 08)) ended the record before."""
    lock = Path(f"{host.history}.lock")
    lock.mkdir()
    (lock / "owner").write_text(f"{os.getpid()} 0000000008\n")
    proc = host.bash('write_puppet_state "" r 0 1 /o /v')
    assert b"breaking stale history lock" in proc.stderr
    assert len(host.history_records()) == 1 and not lock.exists()


def test_fresh_lock_with_an_empty_owner_file_is_not_broken(host: Host) -> None:
    """An empty owner file may be a live writer between its mkdir and its write: a
    young lock with an unknown owner is waited for, not broken."""
    lock = Path(f"{host.history}.lock")
    lock.mkdir()
    (lock / "owner").write_text("")
    proc = host.bash('write_puppet_state "" r 0 1 /o /v', PUPPET_STATE_LOCK_TIMEOUT_S="1")
    assert b"appending without it" in proc.stderr
    assert b"breaking" not in proc.stderr
    assert lock.exists() and len(host.history_records()) == 1


def test_lock_age_of_a_lock_released_meanwhile_is_not_old(host: Host) -> None:
    """test's -nt/-ot are true when the other file does not exist: a lock released
    between a waiter's look and its age check must not count as old (the waiter
    would move a new holder's lock aside)."""
    snippet = (
        "_ps_now\n"
        '_ps_older_than "$1/gone" 60; echo "gone=$?"\n'
        'mkdir "$1/fresh"; _ps_older_than "$1/fresh" 60; echo "fresh=$?"\n'
        'touch -t 200001010000 "$1/old"; _ps_older_than "$1/old" 60; echo "old=$?"\n'
    )
    proc = host.bash(snippet, str(host.root))
    assert proc.stdout == b"gone=1\nfresh=1\nold=0\n", proc.stderr


def test_old_lock_without_an_owner_file_is_broken(host: Host) -> None:
    lock = Path(f"{host.history}.lock")
    lock.mkdir()
    old = time.time() - 7200
    os.utime(lock, (old, old))
    proc = host.bash('write_puppet_state "" r 0 1 /o /v')
    assert b"not acquired" not in proc.stderr
    assert len(host.history_records()) == 1 and not lock.exists()


@pytest.mark.parametrize("which", ["vault", "override", "role"])
def test_fifo_input_does_not_hang_the_wrapper(host: Host, which: str) -> None:
    """The vault and override are hashed, the role read: opening a FIFO that no one
    writes blocks forever. Each is skipped: a vault or role that is not a file is a
    prepare failure, an override that is not a file means the defaults."""
    path = {"vault": host.vault, "override": host.override, "role": host.role_file}[which]
    path.unlink()
    os.mkfifo(path)
    defaults = {"PUPPET_DEFAULT_REPO": f"file://{host.upstream}", "PUPPET_DEFAULT_BRANCH": "main"}
    try:
        proc = host.run(FAKE_PUPPET_RC="2", timeout=30, **defaults)
    finally:  # release an open still blocked on the FIFO
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    rec = host.state_record()
    if which == "override":
        assert proc.returncode == 2 and rec["override_sha"] is None
    else:
        assert proc.returncode == 1 and rec["stage"] == "prepare"
    if which != "role":
        assert f"{path} is not a regular file; its sha256 is null" in proc.stderr


def test_rotation_target_that_is_not_a_file_stops_rotation_with_a_warning(host: Host) -> None:
    rotated = Path(f"{host.history}.1")
    rotated.mkdir()
    (rotated / "keep").write_text("")
    for i in range(3):
        proc = host.bash(
            f'write_puppet_state "" r{i} 0 1 /o /v', PUPPET_RUN_HISTORY_MAX_BYTES="700"
        )
    assert b"is not a regular file" in proc.stderr
    assert [r["role"] for r in host.history_records()] == ["r0", "r1", "r2"]
    assert sorted(p.name for p in rotated.iterdir()) == ["keep"]


# --- the driver: errexit, the watchdog, puppet's output ----------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"FAKE_PUPPET_RC": "6", "PUPPET_SINGLE_RUN": "0", "PUPPET_MAX_ATTEMPTS": "2"},
        {"FAKE_PUPPET_RC": "0", "PUPPET_ROLE_FILE": "/nonexistent/role"},
    ],
    ids=["retry", "prepare"],
)
def test_driver_with_errexit_records_every_attempt(host: Host, extra: dict[str, str]) -> None:
    proc = host.run(SHELLOPTS="errexit", **extra)
    history = host.history_records()
    if "PUPPET_MAX_ATTEMPTS" in extra:
        assert proc.returncode == 6 and [r["attempt"] for r in history] == [1, 2]
    else:
        assert proc.returncode == 1 and [r["stage"] for r in history] == ["prepare"]


def _sleeps(seconds: str) -> list[int]:
    """Pids of running `sleep SECONDS` processes."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", seconds.encode()]:
            found.append(int(entry.name))
    return found


@pytest.fixture
def watchdog_seconds(host: Host) -> Iterator[str]:
    """A timeout no other test uses, so that its watchdog's `sleep` can be found."""
    seconds = str(3600 + os.getpid() % 50000)
    host.env["PUPPET_TIMEOUT_S"] = seconds
    yield seconds
    for pid in _sleeps(seconds):
        os.kill(pid, signal.SIGTERM)


def _await_no_sleeps(seconds: str) -> list[int]:
    """The watchdog's sleep still running after its driver has gone (up to 5 s)."""
    for _ in range(50):
        left = _sleeps(seconds)
        if not left:
            return left
        time.sleep(0.1)
    return left


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_errexit_driver_leaves_no_watchdog_behind(host: Host, watchdog_seconds: str) -> None:
    """Under errexit a failed `wait` ended with_timeout before it stopped its watchdog,
    which then slept an hour and killed the process group puppet's pid named then."""
    assert host.run(FAKE_PUPPET_RC="4", SHELLOPTS="errexit").returncode == 4
    assert _await_no_sleeps(watchdog_seconds) == []


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_watchdog_sleep_never_outlives_a_fast_puppet(host: Host, watchdog_seconds: str) -> None:
    """Puppet ending at once: the watchdog is told to stop right after it started its
    sleep, before it kept the sleep's pid (a race that left about 1 sleep in 15)."""
    for _ in range(3):
        procs = [
            subprocess.Popen(
                [BASH, str(LINUX_SCRIPT)],
                env={**host.env, "PUPPET_WORKING_DIR": str(host.root / f"wd{i}")},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(8)
        ]
        assert [p.wait(timeout=120) for p in procs] == [0] * 8
    assert _await_no_sleeps(watchdog_seconds) == []


def test_timeout_of_zeros_is_no_limit(host: Host) -> None:
    """PUPPET_TIMEOUT_S=00 is 0, no limit (it was `sleep 00`: puppet killed at once)."""
    write_exe(host.bin / "puppet", "#!/bin/bash\nsleep 1\nexit 2\n")
    assert host.run(PUPPET_TIMEOUT_S="00").returncode == 2


TALKATIVE_PUPPET = (
    '#!/bin/bash\nfor i in $(seq 1 100); do echo "Notice: $i"; sleep 0.01; done\n'
    'echo done >> "$FAKE_PUPPET_MARKER"\nexit 2\n'
)

# A tee that gives up at its first failed write, stdout included (the strictest a
# tee may be; GNU tee drops a broken stdout and goes on, BSD tee warns and goes on).
STRICT_TEE = """#!/usr/bin/env python3
import os, sys
out = [1] + [os.open(f, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) for f in sys.argv[2:]]
while chunk := os.read(0, 8192):
    for fd in out:
        os.write(fd, chunk)
"""


@pytest.mark.parametrize("strict_tee", [False, True], ids=["tee", "strict-tee"])
@pytest.mark.parametrize("stderr_too", [False, True], ids=["stdout", "stdout+stderr"])
def test_reader_going_away_leaves_puppet_and_its_log_alone(
    host: Host, strict_tee: bool, stderr_too: bool
) -> None:
    """`run-puppet.sh | head -1` (or `2>&1 | head -1`): puppet runs to its end, its
    exit code is recorded and returned, and the run log gets every line."""
    write_exe(host.bin / "puppet", TALKATIVE_PUPPET)
    if strict_tee:
        write_exe(host.bin / "tee", STRICT_TEE)
    p = subprocess.Popen(
        [BASH, str(LINUX_SCRIPT)],
        env=host.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if stderr_too else subprocess.DEVNULL,
        cwd=host.root,
    )
    assert p.stdout is not None
    p.stdout.readline()
    p.stdout.close()
    assert p.wait(timeout=60) == 2
    assert host.marker.exists(), "puppet was killed before it finished"
    assert host.history_records()[-1]["exit_code"] == 2
    notices = [
        x for x in Path(host.env["PUPPET_RUN_LOG"]).read_text().splitlines() if "Notice" in x
    ]
    assert len(notices) == 100
