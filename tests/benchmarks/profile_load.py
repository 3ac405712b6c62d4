"""Where the bulk load's time goes, step by step, next to read_json on the same files.

Figure 1 compares the whole `ingest --from` command with DuckDB's read_json. This
profile explains the ratio: it runs the loader's own code (pipeline.load, one group of
hosts, its batches and statements unchanged) in this process on a connection that
times every statement, and prints the wall time and the CPU time (all threads) of each
step. Python's share is what is left: reading files, finding lines, building Arrow.

The last line is the loader's floor on this machine: its CPU time divided by the
cores, that is the wall time if its steps overlapped perfectly, as a ratio of
read_json's wall time. When the floor is above 1.3, figure 1's target cannot be met
by scheduling alone; only less work per line can meet it.

    uv run python tests/benchmarks/profile_load.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
from common import BENCH_DATA, ROOT, Figure, emit, note, read_json_ctas
from gen_history import ensure

sys.path.insert(0, str(ROOT))
from pipeline import load, warehouse  # noqa: E402

# a statement's step, by how its text starts (the loader's statements, in order)
STEPS = (
    ("CREATE OR REPLACE TEMP TABLE fast", "parse, prove canonical, apply rules"),
    ("CREATE OR REPLACE TEMP TABLE slow", "slow path (lines not taken)"),
    ("CREATE OR REPLACE TEMP TABLE repeats", "find repeats"),
    ("SELECT file_idx, byte_offset, epoch_us(ts)", "recency (clock set back)"),
    ("INSERT INTO runs", "write runs"),
    ("COMMIT", "commit"),
)


class TimedConnection:
    """A DuckDB connection that adds each statement's wall and CPU time to its step."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self.spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def execute(self, sql: str, *args: Any) -> Any:
        text = sql.lstrip()
        step = next((name for prefix, name in STEPS if text.startswith(prefix)), "other SQL")
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return self.con.execute(sql, *args)
        finally:
            spent = self.spent[step]
            spent[0] += time.perf_counter() - wall
            spent[1] += time.process_time() - cpu

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def loader(mirror: Path, work: Path) -> tuple[float, float, dict[str, list[float]]]:
    con = warehouse.connect(work / "fleet.duckdb")
    timed = TimedConnection(con)
    wall, cpu = time.perf_counter(), time.process_time()
    files, _, _ = load._claim_files(load.discover(mirror))
    load._load_hosts(timed, files, {}, None, threading.Event())  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    con.close()
    return wall, cpu, timed.spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 hosts x 400 runs")
    args = ap.parse_args()
    hosts, runs = (100, 400) if args.quick else (1000, 1000)
    mirror = ensure(BENCH_DATA / f"m{hosts}x{runs}", hosts, runs)
    size = sum(p.stat().st_size for p in mirror.glob("*/history.jsonl"))
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="profile-load-"))
    try:
        base_wall, base_cpu = read_json_ctas(mirror, work / "read_json.duckdb")
        wall, cpu, spent = loader(mirror, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    note(f"{hosts * runs:,} records, {size / 1e6:,.0f} MB, {cores} cores, one group of hosts")
    note(f"{'step':<48} {'wall s':>7} {'CPU s':>7}")
    note(f"{'read_json CTAS (the baseline)':<48} {base_wall:7.2f} {base_cpu:7.2f}")
    sql_wall = sql_cpu = 0.0
    for _, step in (*STEPS, ("", "other SQL")):
        if step in spent:
            w, c = spent[step]
            sql_wall, sql_cpu = sql_wall + w, sql_cpu + c
            note(f"  loader: {step:<38} {w:7.2f} {c:7.2f}")
    python = "Python (read, split, stage)"
    note(f"  loader: {python:<38} {wall - sql_wall:7.2f} {cpu - sql_cpu:7.2f}")
    note(f"{'loader, all steps':<48} {wall:7.2f} {cpu:7.2f}")
    floor = cpu / cores
    emit(Figure("loader floor (its CPU time / cores)", floor, "s", "read_json CTAS", base_wall,
                "reported: figure 1 needs <= 1.3", None))  # fmt: skip


if __name__ == "__main__":
    main()
