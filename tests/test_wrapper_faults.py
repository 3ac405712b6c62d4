"""Faults on the host never break the puppet run: the wrapper still exits with
puppet's code, the library returns 0 and logs to stderr, and what can be
recorded is. Includes concurrent writers and rotation at the cap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from wrapper_helpers import (
    BASH,
    FIELDS,
    LIB,
    LINUX_SCRIPT,
    Host,
    check_record,
    git,
    make_host,
    restricted_bin,
    write_exe,
)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path)


def test_read_only_state_directory(host: Host) -> None:
    """A real read-only mount (root ignores permission bits) in a private namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    ro = host.root / "ro"
    ro.mkdir()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a mount namespace here")
    script = f'mount -t tmpfs -o ro tmpfs "{ro}" || exit 99\nexec {BASH} "{LINUX_SCRIPT}"'
    env = {
        **host.env,
        "PUPPET_STATE_FILE": str(ro / "last_run_metadata.json"),
        "FAKE_PUPPET_RC": "2",
    }
    proc = subprocess.run(
        ["unshare", "-m", BASH, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "state file not written" in proc.stderr
    (rec,) = host.history_records()  # the history still gets the attempt
    check_record(rec, host, exit_code=2)


def test_state_file_rename_fails_when_target_is_a_directory(host: Host) -> None:
    host.state.mkdir(parents=True)
    proc = host.run(FAKE_PUPPET_RC="0")
    assert proc.returncode == 0
    assert "cannot rename" in proc.stderr
    assert [p.name for p in host.state.parent.iterdir() if p.name.startswith(".")] == []


def test_missing_git_at_record_time(host: Host) -> None:
    path = restricted_bin(host.root / "nogit", {"git"})
    proc = host.bash(
        'set -eu\nwrite_puppet_state "$@"\necho survived',
        str(host.upstream),
        "r",
        "0",
        "3",
        str(host.override),
        str(host.vault),
        PATH=str(path),
    )
    assert proc.returncode == 0 and proc.stdout == b"survived\n"
    assert b"git not found" in proc.stderr
    rec = host.state_record()
    assert [rec[k] for k in ("git_repo", "git_sha", "git_dirty")] == [None, None, None]
    assert rec["git_branch"] == "main"  # from the override file
    assert rec["exit_code"] == 0


def test_missing_git_in_the_wrapper_is_a_prepare_failure(host: Host) -> None:
    path = restricted_bin(host.root / "nogit", {"git"})
    proc = host.run(FAKE_PUPPET_RC="0", PATH=f"{host.bin}:{path}")
    assert proc.returncode == 1
    (rec,) = host.history_records()
    assert rec["stage"] == "prepare" and rec["exit_code"] is None
    assert rec["git_sha"] is None


def test_missing_sha_tools(host: Host) -> None:
    path = restricted_bin(host.root / "nosha", {"sha256sum", "shasum", "openssl"})
    proc = host.run(FAKE_PUPPET_RC="2", PATH=f"{host.bin}:{path}")
    assert proc.returncode == 2, proc.stderr
    rec = host.state_record()
    assert rec["override_sha"] is None and rec["vault_sha"] is None
    assert rec["git_sha"] == host.upstream_sha and rec["exit_code"] == 2
    assert "no sha256sum, shasum or openssl" in proc.stderr


def test_no_history_directory(host: Host) -> None:
    proc = host.run(
        FAKE_PUPPET_RC="4", PUPPET_RUN_HISTORY=str(host.root / "missing" / "history.jsonl")
    )
    assert proc.returncode == 4
    assert "history not written" in proc.stderr
    check_record(host.state_record(), host, exit_code=4)


def test_history_that_is_a_device_is_not_written(host: Host) -> None:
    """Only a regular file is appended to (a FIFO would block): /dev/full is skipped
    with a warning, before the lock is taken. A full disk: test_wrapper_adverse.py."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    proc = host.run(
        FAKE_PUPPET_RC="0",
        PUPPET_RUN_HISTORY="/dev/full",
        PUPPET_RUN_HISTORY_LOCK=str(host.root / "lock"),
    )
    assert proc.returncode == 0
    assert "history /dev/full is not a regular file; history not written" in proc.stderr
    check_record(host.state_record(), host, exit_code=0)
    assert not (host.root / "lock").exists()


def test_torn_last_line_does_not_swallow_the_next(host: Host) -> None:
    host.history.write_text('{"schema_version":1,"ts":"2026-01-0')  # died mid-write
    host.run(FAKE_PUPPET_RC="0")
    lines = host.history.read_text().splitlines()
    assert len(lines) == 2
    check_record(json.loads(lines[1]), host, exit_code=0)


def test_concurrent_writers_never_interleave(host: Host) -> None:
    """2 x 50 writers at the same moment: 100 whole lines, none lost or torn."""
    launch = (
        "for i in $(seq 1 50); do\n"
        f'  write_puppet_state "{host.working_dir}" "w$1-$i" 0 1 /o /v &\n'
        "done\nwait"
    )
    procs = [
        subprocess.Popen(
            [BASH, "-c", f'. "{LIB}"\n{launch}', "x", str(n)],
            env={**host.env, "PUPPET_STATE_LOCK_TIMEOUT_S": "30"},
            stderr=subprocess.PIPE,
        )
        for n in (1, 2)
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(b"not acquired" not in e for e in errs), errs
    lines = host.history.read_text().split("\n")
    assert lines[-1] == ""
    records = [json.loads(line) for line in lines[:-1]]
    assert len(records) == 100
    assert all(list(r) == FIELDS for r in records)
    assert {r["role"] for r in records} == {f"w{n}-{i}" for n in (1, 2) for i in range(1, 51)}
    assert len({r["run_id"] for r in records}) == 100
    assert json.loads(host.state.read_text())["role"].startswith("w")
    assert not Path(f"{host.history}.lock").exists()
    assert [p.name for p in host.state.parent.iterdir() if p.name.startswith(".")] == []


def test_two_wrappers_at_once(host: Host) -> None:
    env = {**host.env, "FAKE_PUPPET_RC": "2"}
    other = {**env, "PUPPET_WORKING_DIR": str(host.root / "wd2"), "FAKE_PUPPET_RC": "6"}
    procs = [
        subprocess.Popen(
            [BASH, str(LINUX_SCRIPT)], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for e in (env, other)
    ]
    assert sorted(p.wait(timeout=60) for p in procs) == [2, 6]
    assert sorted(r["exit_code"] for r in host.history_records()) == [2, 6]


def test_rotation_at_the_cap(host: Host) -> None:
    cap = 2500
    for _ in range(7):
        proc = host.run(FAKE_PUPPET_RC="2", PUPPET_RUN_HISTORY_MAX_BYTES=str(cap))
        assert proc.returncode == 2
    rotated = Path(f"{host.history}.1")
    assert rotated.exists()
    assert 0 < host.history.stat().st_size <= cap
    assert rotated.stat().st_size <= cap
    current = host.history_records()
    old = [json.loads(line) for line in rotated.read_text().splitlines()]
    assert current[-1] == host.state_record()
    assert old[-1]["ts"] <= current[0]["ts"]
    assert host.history.stat().st_mode & 0o777 == 0o644


def test_stale_lock_from_a_dead_holder_is_broken(host: Host) -> None:
    lock = Path(f"{host.history}.lock")
    lock.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (lock / "owner").write_text(f"{dead.pid} {int(time.time())}\n")
    # an hour's wait for a live holder: only breaking the dead one's lock ends it in time
    proc = host.bash(
        f'write_puppet_state "{host.working_dir}" r 0 1 /o /v', PUPPET_STATE_LOCK_TIMEOUT_S="3600"
    )
    assert b"breaking stale history lock" in proc.stderr
    assert len(host.history_records()) == 1 and not lock.exists()


def test_lock_wait_is_bounded(host: Host) -> None:
    lock = Path(f"{host.history}.lock")
    lock.mkdir()
    (lock / "owner").write_text(f"{os.getpid()} {int(time.time())}\n")  # alive, fresh
    proc = host.bash(  # the holder stays for good: only the bound ends the wait
        f'write_puppet_state "{host.working_dir}" r 0 1 /o /v', PUPPET_STATE_LOCK_TIMEOUT_S="1"
    )
    assert proc.returncode == 0 and b"appending without it" in proc.stderr
    assert len(host.history_records()) == 1 and lock.exists()  # the holder's lock stays


def test_library_survives_strict_caller_with_everything_broken(host: Host) -> None:
    path = restricted_bin(
        host.root / "bare", {"git", "sha256sum", "shasum", "openssl", "hostname", "uname"}
    )
    snippet = (
        'set -euo pipefail\ntrap "echo ERR-trap" ERR\nIFS=:\n'
        'write_puppet_state "" "" "" "" "" ""\necho "still here IFS=[$IFS]"'
    )
    proc = host.bash(
        snippet,
        PATH=str(path),
        PUPPET_STATE_FILE="/proc/nope/state.json",
        PUPPET_RUN_HISTORY="/proc/nope/h.jsonl",
    )
    assert proc.returncode == 0
    assert proc.stdout == b"still here IFS=[:]\n"


def test_wrapper_without_the_library_still_runs_puppet(host: Host) -> None:
    lone = host.root / "lone" / "run-puppet-linux.sh"
    lone.parent.mkdir()
    shutil.copy(LINUX_SCRIPT, lone)
    shutil.copy(LINUX_SCRIPT.parent / "run-puppet.sh", lone.parent)  # the driver, not the library
    proc = host.run(lone, FAKE_PUPPET_RC="2")
    assert proc.returncode == 2
    assert "runs will not be recorded" in proc.stderr
    assert host.marker.exists() and not host.history.exists()
    assert (host.working_dir / "manifests" / "site.pp").exists()  # the override's repo


def test_record_overhead_is_well_under_100ms(host: Host) -> None:
    """Median in-process cost of one seed-style call on a real checkout."""
    git("clone", "-q", str(host.upstream), str(host.working_dir))
    snippet = (
        '[ -n "${EPOCHREALTIME:-}" ] || { echo skip; exit 0; }\n'
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do\n"
        "  t0=${EPOCHREALTIME/[.,]/}\n"
        f'  write_puppet_state "{host.working_dir}" r 0 1 "{host.override}" "{host.vault}"\n'
        "  t1=${EPOCHREALTIME/[.,]/}\n"
        "  echo $((t1 - t0))\n"
        "done"
    )
    out = host.bash(snippet).stdout.decode().split()
    if out == ["skip"]:
        pytest.skip("bash without EPOCHREALTIME")
    micros = sorted(int(x) for x in out)
    assert len(micros) == 15 and micros[7] < 100_000, micros


def test_begin_and_override_value_survive_a_strict_caller(host: Host) -> None:
    path = restricted_bin(host.root / "bare", {"sha256sum", "shasum", "openssl", "date", "od"})
    snippet = (
        "set -euo pipefail\n"
        'puppet_state_begin --attempt 2 --override /nonexistent --vault "$1"\n'
        "puppet_state_override_value /nonexistent PUPPET_BRANCH\n"
        'puppet_state_override_value "$2" PUPPET_BRANCH\n'
        'echo "branch=$PUPPET_STATE_VALUE attempt=$PUPPET_STATE_ATTEMPT"'
    )
    proc = host.bash(snippet, str(host.vault), str(host.override), PATH=str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"branch=main attempt=2\n"


def test_caller_ifs_does_not_change_the_record(host: Host) -> None:
    wd = host.working_dir
    git("clone", "-q", str(host.upstream), str(wd))
    (wd / "r10k_modules").mkdir()
    (wd / "r10k_modules" / "m.pp").write_text("x")
    proc = host.bash(f'IFS=:\nwrite_puppet_state "{wd}" "a b:c" 0 1 /o /v')
    assert proc.returncode == 0
    rec = host.state_record()
    assert rec["git_dirty"] is False and rec["role"] == "a b:c"


def test_lock_names_the_writer_not_its_exited_parent_shell(host: Host) -> None:
    """40 writers each backgrounded by a shell that exits at once, with rotation.

    The lock's owner pid must be the writing process (a subshell), not its parent
    shell's $$: a dead parent made waiters break live locks, and two writers
    rotating at once lost the lines of the first rotation.
    """
    one = host.bash("write_puppet_state /nonexistent r00 0 1 /o /v")
    assert one.returncode == 0
    line_len = len(host.history.read_bytes())
    host.history.unlink()
    launch = (
        "for i in $(seq 10 49); do\n"
        '  bash -c \'. "$0"; write_puppet_state /nonexistent "r$1" 0 1 /o /v &\' "$1" "$i"\n'
        "done"
    )
    proc = subprocess.Popen(
        [BASH, "-c", launch, "x", str(LIB)],
        env={
            **host.env,
            "PUPPET_STATE_LOCK_TIMEOUT_S": "60",
            "PUPPET_RUN_HISTORY_MAX_BYTES": str(line_len * 30),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # The pipes reach EOF once every orphaned writer has exited.
    _, err = proc.communicate(timeout=120)
    assert b"breaking stale" not in err and b"not acquired" not in err, err
    rotated = Path(f"{host.history}.1")
    assert rotated.exists()  # one rotation happened (cap: 30 lines)
    lines = rotated.read_text().splitlines() + host.history.read_text().splitlines()
    assert sorted(json.loads(line)["role"] for line in lines) == [f"r{i}" for i in range(10, 50)]
    assert not Path(f"{host.history}.lock").exists()


SLOW_WC = """#!/bin/bash
sleep 1.5
exec {wc} "$@"
"""


def test_two_writers_rotating_at_once_lose_no_line(host: Host) -> None:
    """As if a broken lock let two writers hold it: B measures the full history,
    A rotates it and appends, then B rotates: B must not move A's new, short
    history over the .1 that A just made."""
    old = [json.dumps({"n": i, "pad": "x" * 300}) for i in range(20)]  # cap: 20 lines, 3+ records
    host.history.write_text("".join(f"{line}\n" for line in old))
    cap = str(host.history.stat().st_size + 10)
    slow = host.root / "slowbin"
    slow.mkdir()
    write_exe(slow / "wc", SLOW_WC.format(wc=shutil.which("wc")))
    writer = f'write_puppet_state "{host.working_dir}" "$1" 0 1 /o /v'
    env = {"PUPPET_RUN_HISTORY_MAX_BYTES": cap}
    b = subprocess.Popen(
        [BASH, "-c", f'. "{LIB}"\n{writer}', "x", "B"],
        env={
            **host.env,
            **env,
            "PATH": f"{slow}:{host.env['PATH']}",
            "PUPPET_RUN_HISTORY_LOCK": str(host.root / "lock-b"),
        },
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)  # B is in its (slow) wc of the full history
    a = host.bash(writer, "A", PUPPET_RUN_HISTORY_LOCK=str(host.root / "lock-a"), **env)
    assert a.returncode == 0 and b.wait(timeout=30) == 0
    rotated = Path(f"{host.history}.1")
    assert rotated.read_text().splitlines() == old
    assert sorted(r["role"] for r in host.history_records()) == ["A", "B"]
    assert sorted(p.name for p in host.history.parent.iterdir()) == [
        host.history.name,
        rotated.name,
    ]  # no temp file left


def test_long_lines_appended_without_the_lock_do_not_interleave(host: Host) -> None:
    """The lock is held by a live process: 40 writers of 30,000-byte roles give up
    at once (timeout 0) and append together, each line in one write.

    The writers are lined up on a FIFO passed as their override file (each one
    blocks opening it to hash it) and released together just before they append.
    """
    lock = Path(f"{host.history}.lock")
    lock.mkdir()
    (lock / "owner").write_text(f"{os.getpid()} {int(time.time())}\n")  # alive, fresh
    gate = host.root / "gate"
    os.mkfifo(gate)
    launch = (
        'role=$(printf "%030000d" 0)\n'
        "for i in $(seq 10 49); do\n"
        f'  write_puppet_state /nonexistent "$i$role" 0 1 "{gate}" /v 2>/dev/null &\n'
        "done\nwait"
    )
    proc = subprocess.Popen(
        [BASH, "-c", f'. "{LIB}"\n{launch}'],
        env={**host.env, "PUPPET_STATE_LOCK_TIMEOUT_S": "0"},
    )
    time.sleep(1)  # every writer is blocked opening the gate
    hold = os.open(gate, os.O_RDWR)  # lets them open it
    plain = host.root / "gate.plain"
    plain.write_text("")
    plain.replace(gate)  # a late writer opens a plain file
    os.close(hold)  # the FIFO's readers see EOF together
    assert proc.wait(timeout=120) == 0
    records = host.history_records()  # every line parses
    assert sorted(r["role"][:2] for r in records) == [str(i) for i in range(10, 50)]
    assert all(len(r["role"]) == 30_002 for r in records)
    assert lock.exists()  # the holder's lock stays; no temp file is left
    assert sorted(p.name for p in host.history.parent.iterdir()) == [host.history.name, lock.name]


def test_each_history_line_is_one_write(host: Host) -> None:
    """strace: with and without the lock, a 30,000-byte line is one write(2)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not available")
    trace = host.root / "trace"
    lock = Path(f"{host.history}.lock")
    snippet = (
        'write_puppet_state /nonexistent "a$1" 0 1 /o /v\n'
        f'mkdir "{lock}" && echo "$$ $(date +%s)" > "{lock}/owner"\n'
        'write_puppet_state /nonexistent "b$1" 0 1 /o /v\n'
    )
    proc = subprocess.run(
        [strace, "-f", "-y", "-e", "trace=write", "-o", str(trace), BASH, "-c"]
        + [f'. "{LIB}"\n{snippet}', "x", "r" * 30_000],
        env={**host.env, "PUPPET_STATE_LOCK_TIMEOUT_S": "0"},
        capture_output=True,
        timeout=60,
    )
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert proc.returncode == 0, proc.stderr
    assert b"appending without it" in proc.stderr
    writes = [line for line in trace.read_text().splitlines() if f"<{host.history}>" in line]
    sizes = [len(line) + 1 for line in host.history.read_text().splitlines()]
    assert [int(w.rsplit("=", 1)[1]) for w in writes] == sizes
    assert len(sizes) == 2 and min(sizes) > 30_000


TRACING_WC = """#!/bin/bash
echo "enter $ROLE $(date +%s.%N)" >> {trace}
sleep "${{HOLD:-1.5}}"
{wc} "$@"
echo "exit $ROLE $(date +%s.%N)" >> {trace}
"""


def test_a_lock_released_and_taken_again_meanwhile_is_not_broken(host: Host) -> None:
    """Y holds the lock; W reads Y's pid, and (held up by strace for 3 s) checks it only
    after Y has released the lock and exited and Z has taken it. W must not break Z's
    lock: the writers' times inside the lock (a wc that takes 1.5 s, 4 s for Z) never
    overlap, and nobody reports breaking a lock."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not available")
    host.history.parent.mkdir(parents=True, exist_ok=True)
    host.history.write_text('{"seed":1}\n')  # each writer measures it (wc) under the lock
    trace = host.root / "trace"
    slow = host.root / "tracebin"
    slow.mkdir()
    write_exe(slow / "wc", TRACING_WC.format(trace=trace, wc=shutil.which("wc")))
    env = {**host.env, "PATH": f"{slow}:{host.env['PATH']}", "PUPPET_STATE_LOCK_TIMEOUT_S": "30"}
    writer = [BASH, "-c", f'. "{LIB}"; write_puppet_state /nonexistent "$ROLE" 0 1 /o /v']
    delay = [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=kill",
             "-e", "inject=kill:delay_enter=3000000"]  # fmt: skip
    procs = [subprocess.Popen(writer, env={**env, "ROLE": "Y"}, stderr=subprocess.PIPE)]
    time.sleep(0.5)  # Y is inside the lock
    procs.append(subprocess.Popen(delay + writer, env={**env, "ROLE": "W"}, stderr=subprocess.PIPE))
    time.sleep(0.5)  # W has read Y's pid and is held up before checking it
    procs.append(
        subprocess.Popen(writer, env={**env, "ROLE": "Z", "HOLD": "4"}, stderr=subprocess.PIPE)
    )
    errors = b"".join(p.communicate(timeout=60)[1] for p in procs)
    assert b"breaking stale" not in errors, errors
    spans: dict[str, list[float]] = {}
    for entry in trace.read_text().splitlines():
        _, role, when = entry.split()
        spans.setdefault(role, []).append(float(when))
    inside = sorted(spans.values())
    assert sorted(spans) == ["W", "Y", "Z"], (spans, errors)
    for (_, left), (right, _) in zip(inside, inside[1:], strict=False):
        assert left <= right  # one writer inside the lock at a time
    assert sorted(r.get("role", "") for r in host.history_records()) == ["", "W", "Y", "Z"]


def test_a_line_that_fits_the_disk_is_appended_when_its_temp_copy_does_not(host: Host) -> None:
    """12 KB free: the temp copy (6 KB) leaves too little for dd to append it; the line is
    then appended directly once the copy is gone."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare not available")
    small = host.root / "small"
    small.mkdir()
    script = (
        f'mount -t tmpfs -o size=64k tmpfs "{small}" && mkdir "{small}/log" && '
        f'head -c 53248 /dev/zero > "{small}/filler" && '
        f'. "{LIB}" && PUPPET_RUN_HISTORY="{small}/log/h.jsonl" '
        'write_puppet_state /nonexistent "$(printf "q%.0s" $(seq 1 6000))" 0 1 /o /v && '
        f'cat "{small}/log/h.jsonl"'
    )
    done = subprocess.run(
        ["unshare", "-m", BASH, "-c", script], env=host.env, capture_output=True, text=True
    )
    if done.returncode != 0 and "Operation not permitted" in done.stderr:
        pytest.skip("cannot mount a tmpfs here")
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert record["role"] == "q" * 6000
    assert "cannot append" not in done.stderr


def test_a_resolver_that_hangs_does_not_hold_up_the_record(host: Host) -> None:
    """`hostname -f` asks the resolver, which can hang for long when DNS is down; the run's
    record waited for it. With timeout(1) it waits 2 s at most, then takes the short name.
    (The fake hostname hangs for good on -f: only the bound ends the run in time.)"""
    write_exe(
        host.bin / "hostname",
        '#!/bin/sh\nif [ "$1" = -f ]; then exec sleep 600; fi\necho shortname\n',
    )
    proc = host.run(timeout=120)
    assert proc.returncode == 0, proc.stderr
    (record,) = host.history_records()
    assert record["host"] == "shortname"
