"""Start-up of `fleetstate --help` and `fleetstate status` (figure 4), next to `python -c pass`.

Every command imports its heavy modules (duckdb, polars, pyarrow) inside the function
that needs them, so `--help` imports typer only. The figures are medians of several
runs of the installed console script. Python's bytecode is compiled first, as pip
does at install time (uv: `uv sync --compile-bytecode`); without it every run
compiles typer, duckdb's and polars' Python sources again, which is reported too.
`status` is measured on warehouses of three sizes.

    uv run python tests/benchmarks/bench_startup.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import (
    BENCH_DATA,
    FLEETSTATE,
    ROOT,
    Figure,
    compile_bytecode,
    emit,
    env_with_db,
    median_of,
    note,
    run_timed,
)  # fmt: skip
from gen_history import ensure

RUNS = 7
TARGET_S = 0.3


def median_wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    run_timed(cmd, env=env)  # warm the page cache
    return median_of(RUNS, lambda: run_timed(cmd, env=env)[0])


def warehouse(mirror: Path, db: Path) -> Path:
    if not db.exists():
        run_timed([FLEETSTATE, "ingest", "--from", str(mirror)], env=env_with_db(db))
    return db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer and smaller warehouses")
    args = ap.parse_args()
    compile_bytecode()
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        mirrors = [("sample fleet, 44 hosts", ROOT / "data" / "sample-fleet")]
        mirrors.append(("100 hosts x 100 runs", ensure(BENCH_DATA / "m100x100", 100, 100)))
        if not args.quick:
            mirrors.append(("1000 hosts x 250 runs", ensure(BENCH_DATA / "m1000x250", 1000, 250)))
        python = median_wall([sys.executable, "-c", "pass"])
        help_s = median_wall([FLEETSTATE, "--help"])
        cold_env = dict(os.environ, PYTHONPYCACHEPREFIX=str(work / "no-bytecode"))
        help_cold = median_wall([FLEETSTATE, "--help"], env=cold_env)
        status = []
        for i, (label, mirror) in enumerate(mirrors):
            db = warehouse(mirror, work / f"w{i}.duckdb")
            status.append((label, median_wall([FLEETSTATE, "status"], env=env_with_db(db))))
            note(f"status on {label}: {status[-1][1]:.3f} s")
        db0 = work / "w0.duckdb"
        status_cold = median_wall([FLEETSTATE, "status"], env=env_with_db(db0) | cold_env)
        note(f"without compiled bytecode: --help {help_cold:.3f} s, status {status_cold:.3f} s")
        emit(Figure("start-up: fleetstate --help", help_s, "s", "python -c pass", python,
                    f"< {TARGET_S} s", help_s < TARGET_S))  # fmt: skip
        first = status[0][1]
        emit(Figure("start-up: fleetstate status (sample fleet)", first, "s",
                    "python -c pass", python, f"< {TARGET_S} s", first < TARGET_S))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
