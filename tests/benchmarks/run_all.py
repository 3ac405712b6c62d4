"""Run every benchmark and print one line per figure.

    uv run python tests/benchmarks/run_all.py [--quick]

Each benchmark runs as its own process (so start-up and memory are its own), in this
order: load (bulk and no-op), the loader's profile, memory, start-up, wrapper, then
the collector's and the analytics' benchmarks when their files exist. Every `FIGURE`
line gives the figure, its baseline measured in the same run, the ratio and whether
the target is met; the summary at the end repeats them. --quick uses small sizes
(about a minute); the full run takes about ten minutes on 2 cores. Generated data is
kept in bench-data/ (git-ignored) and reused by later runs.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OURS = [
    "bench_load.py", "profile_load.py", "bench_memory.py", "bench_startup.py", "bench_wrapper.py",
]  # fmt: skip
OTHERS = {  # other issues' benchmarks: their own arguments for a quick run
    "bench_collect.py": ["10", "4"],
    "bench_analytics.py": ["--hosts", "100", "--days", "14"],
}


def machine() -> str:
    import os

    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1024 / 1024:.1f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}){mem}, Python {platform.python_version()}"


def run(script: str, args: list[str]) -> list[str]:
    print(f"== {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *args], cwd=HERE.parents[1],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    print(proc.stdout, end="", flush=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FIGURE", "SKIP"))]
    if proc.returncode != 0:
        lines.append(f"FAILED {script}: exit {proc.returncode}")
    elif script in OTHERS:
        lines.append(f"(figures of {script} are above, in its own format)")
    print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    args = ap.parse_args()
    print(f"# {machine()}", flush=True)
    summary: list[str] = []
    for script in OURS:
        summary += run(script, ["--quick"] if args.quick else [])
    for script, quick_args in OTHERS.items():
        if (HERE / script).exists():
            summary += run(script, quick_args if args.quick else [])
        else:
            summary.append(f"SKIP {script}: not here yet")
    print("\n# summary")
    for line in summary:
        print(line)
    sys.exit(1 if any(s.startswith("FAILED") for s in summary) else 0)


if __name__ == "__main__":
    main()
