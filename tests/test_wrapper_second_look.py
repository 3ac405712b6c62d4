"""The wrapper's fault handling, looked at again: a cut-back must not take another writer's
line, xtrace from SHELLOPTS, an owner file missing, a closed stderr. Each failed before its fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from wrapper_helpers import BASH, LIB, LINUX_SCRIPT, make_host, write_exe

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare -m"
)

# dd shim: on the history append (if=TMP), another writer's line lands first, as a
# writer that timed out on the lock appends without it; then the real dd runs.
DD_SHIM = """#!/bin/bash
case " $* " in
*" if=/dev/null "*) ;;
*" if="*) printf '{"other":"writer B, appended without the lock"}\\n' >>"$PUPPET_RUN_HISTORY" ;;
esac
exec "$REAL_DD" "$@"
"""


@needs_root
def test_cut_back_after_disk_full_removes_a_lockless_writers_line(tmp_path: Path) -> None:
    """_ps_cut_back (dd seek=) truncates to the size measured under the lock, but a
    writer that timed out on the lock may have appended after that measurement."""
    shim = tmp_path / "shim"
    shim.mkdir()
    write_exe(shim / "dd", DD_SHIM)
    seed = ""
    while len(seed) < 3950 - 400:
        seed += json.dumps({"pad": "x" * 300}) + "\n"
    rest = 3950 - len(seed) - len(json.dumps({"pad": ""})) - 1
    seed += json.dumps({"pad": "y" * rest}) + "\n"
    (tmp_path / "seed.jsonl").write_text(seed)  # 3950 bytes: the next ~700 cross a page
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "state").mkdir()
    script = f"""
set -u
mount -t tmpfs -o size=40k tmpfs {mnt} || exit 99
cp {tmp_path}/seed.jsonl {mnt}/h.jsonl
# fill the tmpfs, then free exactly 2 pages: the lock's owner file and dd's temp copy
dd if=/dev/zero of={mnt}/fill bs=4096 2>/dev/null; truncate -s -8192 {mnt}/fill
PATH={shim}:$PATH {BASH} -c '. {LIB}; puppet_state_record --exit-code 0 --role r --duration 1'
cp {mnt}/h.jsonl {tmp_path}/out.jsonl
umount {mnt}
"""
    env = {
        **os.environ,
        "PUPPET_RUN_HISTORY": str(mnt / "h.jsonl"),
        "PUPPET_STATE_FILE": str(tmp_path / "state" / "s.json"),
        "PUPPET_STATE_HOST": "h",
        "REAL_DD": shutil.which("dd") or "/bin/dd",
    }
    p = subprocess.run(
        ["unshare", "-m", BASH, "-c", script], env=env, capture_output=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    out = (tmp_path / "out.jsonl").read_text()
    # observed: the shim's line is gone (cut off by dd seek=3950), our record is there
    assert "writer B" in out, "a line another writer appended was truncated away"


def test_xtrace_from_shellopts_and_closed_stderr_kill_the_driver(tmp_path: Path) -> None:
    """run-puppet.sh resets errexit/pipefail/... from SHELLOPTS but not xtrace/verbose:
    trace lines to a stderr whose reader went away end the driver by SIGPIPE."""
    host = make_host(tmp_path)
    cmd = f'{BASH} {LINUX_SCRIPT} 2>&1 | head -1 >/dev/null; echo "rc=${{PIPESTATUS[0]}}"'
    p = subprocess.run(
        [BASH, "-c", cmd],
        env={**host.env, "SHELLOPTS": "xtrace", "FAKE_PUPPET_RC": "2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    # observed: rc=141 and no record at all
    assert p.stdout.strip() == "rc=2"
    assert [r["exit_code"] for r in host.history_records()] == [2]


def test_lock_with_missing_owner_file_is_not_broken_before_the_documented_age(
    tmp_path: Path,
) -> None:
    """README: an unknown owner (owner file missing, empty or garbled) is broken only
    when the lock dir is older than max(4 x timeout, stale, 60 s). A missing owner
    file is still broken after ~1 s (absent > 20 tries), whatever the lock's age."""
    host = make_host(tmp_path)
    lock = Path(str(host.history) + ".lock")
    lock.mkdir()  # fresh: a writer between its mkdir and its owner file looks like this
    p = host.bash("puppet_state_record --exit-code 0 --duration 1", PUPPET_STATE_LOCK_TIMEOUT_S="2")
    assert p.returncode == 0
    # observed: "breaking stale history lock ... (holder unknown)" after ~1 s, lock gone
    assert b"breaking stale history lock" not in p.stderr
    assert lock.is_dir()


def test_closed_stderr_means_no_record(tmp_path: Path) -> None:
    """Pre-existing (also in 32117c3~6): puppet_state_record's subshell is run
    `>&2`; with fd 2 closed that redirection fails and the record is never built."""
    host = make_host(tmp_path)
    done = subprocess.run(
        [BASH, "-c", f'. "{LIB}"; puppet_state_record --exit-code 0 --duration 1 2>&-'],
        env={**host.env, "PUPPET_STATE_FILE": str(tmp_path / "s2.json")},
        timeout=60,
    )
    # observed: neither state file nor history written
    assert done.returncode == 0
    assert (tmp_path / "s2.json").exists()
