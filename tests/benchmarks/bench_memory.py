"""Peak memory of `fleetstate ingest --from` on one big history file (figure 3).

The loader reads a file in BATCH_BYTES pieces and commits each, so its peak resident
memory should not depend on the file's size. Each size is loaded by a child process
and its peak RSS read from wait4; the baseline is the peak RSS of DuckDB's own
read_json over the same file, in a child process too. Target: under 1 GB at 2 GB.

    uv run python tests/benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import (
    BENCH_DATA,
    FLEETSTATE,
    Figure,
    compile_bytecode,
    emit,
    env_with_db,
    note,
    run_timed,
)
from gen_history import ensure

FULL = [500_000_000, 1_000_000_000, 2_000_000_000]
QUICK = [50_000_000, 100_000_000, 200_000_000]
READ_JSON = (
    "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
    "con.execute(\"CREATE TABLE t AS SELECT * FROM read_json(?, format = 'newline_delimited', "
    'ignore_errors = true)", [sys.argv[2]])'
)


def measure(size: int, work: Path) -> tuple[int, int, float, float]:
    """(fleetstate peak RSS, read_json peak RSS, fleetstate s, read_json s) for one file."""
    mirror = ensure(BENCH_DATA / f"one{size // 1_000_000}mb", 1, 0, size)
    db = work / "fleet.duckdb"
    for p in (db, db.with_name(db.name + ".wal")):
        p.unlink(missing_ok=True)
    wall, rss = run_timed([FLEETSTATE, "ingest", "--from", str(mirror)], env=env_with_db(db))
    history = next(mirror.glob("*/history.jsonl"))
    base_db = work / "read_json.duckdb"
    base_db.unlink(missing_ok=True)
    b_wall, b_rss = run_timed([sys.executable, "-c", READ_JSON, str(base_db), str(history)])
    base_db.unlink(missing_ok=True)
    return rss, b_rss, wall, b_wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50-200 MB instead of 0.5-2 GB")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    compile_bytecode()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        result = (0, 0, 0.0, 0.0)
        for size in sizes:
            result = measure(size, work)
            rss, b_rss, wall, b_wall = result
            note(
                f"one {size / 1e9:.1f} GB history: ingest peak {rss / 1e6:,.0f} MB "
                f"({wall:.1f} s), read_json peak {b_rss / 1e6:,.0f} MB ({b_wall:.1f} s)"
            )
        rss, b_rss, _, _ = result
        emit(Figure(f"peak memory, one {sizes[-1] / 1e9:.1f} GB history", rss / 1e6, "MB",
                    "read_json peak", b_rss / 1e6, "< 1,000 MB", rss < 1e9))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
