"""What the state writer adds to a puppet run (figure 5): wrapper/puppet_state.sh.

One bash process sources the library and calls `write_puppet_state` many times on a
real git checkout, timing each call with EPOCHREALTIME; the figure is the median. The
baseline is the median wall time of starting `bash -c true` (one process start), so
the ratio reads "the writer costs N process starts". Measured with existing history
files of three sizes to show that appending does not grow with the history. Skips
with a message while wrapper/puppet_state.sh is absent. Target: under 100 ms.

    uv run python tests/benchmarks/bench_wrapper.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from common import ROOT, Figure, emit, median_of, note, run_timed

WRAPPER = ROOT / "wrapper" / "puppet_state.sh"
LOOP = """
source "$1"
for i in $(seq "$2"); do
  t0=${EPOCHREALTIME/[.,]/}
  write_puppet_state "$3" gecko_t_linux_talos 0 187 "$4" "$5"
  t1=${EPOCHREALTIME/[.,]/}
  echo $((t1 - t0))
done
"""


def git(*args: str) -> None:
    subprocess.run(["git", *args], check=True, capture_output=True)


def checkout(root: Path) -> Path:
    work = root / "ronin_puppet"
    git("init", "-q", "-b", "master", str(work))
    (work / "site.pp").write_text("node default {}\n")
    git("-C", str(work), "add", ".")
    git("-C", str(work), "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "c")
    git("-C", str(work), "remote", "add", "origin", "https://github.com/x/ronin_puppet.git")
    return work


def call_times(root: Path, work: Path, history_bytes: int, calls: int) -> list[float]:
    hist = root / f"history-{history_bytes}.jsonl"
    line = b'{"schema_version":1,"ts":"2026-01-29T10:30:45Z","success":true}\n'
    hist.write_bytes(line * (history_bytes // len(line)))
    override, vault = root / "ronin_settings", root / "vault.yaml"
    override.write_text('PUPPET_REPO="https://github.com/x/ronin_puppet.git"\n')
    vault.write_text("k: v\n")
    env = dict(os.environ, PUPPET_STATE_FILE=str(root / "state.json"),
               PUPPET_RUN_HISTORY=str(hist), PUPPET_RUN_HISTORY_MAX_BYTES=str(1 << 30))  # fmt: skip
    out = subprocess.run(
        ["bash", "-c", LOOP, "bench", str(WRAPPER), str(calls), str(work), str(override),
         str(vault)],
        check=True, capture_output=True, env=env,
    ).stdout.split()  # fmt: skip
    written = hist.read_bytes().count(b"\n") - history_bytes // len(line)
    assert written == calls, f"the wrapper appended {written} records, not {calls}"
    return [int(x) / 1e6 for x in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer calls")
    args = ap.parse_args()
    if not WRAPPER.exists():
        print(f"SKIP wrapper overhead: {WRAPPER.relative_to(ROOT)} is not here yet", flush=True)
        return
    calls = 15 if args.quick else 60
    root = Path(tempfile.mkdtemp(prefix="bench-wrapper-"))
    try:
        work = checkout(root)
        medians = []
        for size in (0, 1 << 20, 64 << 20):
            times = call_times(root, work, size, calls)
            medians.append(statistics.median(times))
            note(f"history of {size >> 20} MiB: median {medians[-1] * 1000:.1f} ms "
                 f"over {calls} calls (max {max(times) * 1000:.1f} ms)")  # fmt: skip
        base = median_of(15, lambda: run_timed(["bash", "-c", "true"])[0])
        worst = max(medians)  # of the three history sizes
        emit(Figure("wrapper: write_puppet_state per run", worst, "s",
                    "bash -c true", base, "< 0.100 s", worst < 0.1))  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
