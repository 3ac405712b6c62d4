"""Shared helpers for the benchmarks: timing, child processes, and the one-line report.

Every figure is printed as one line, `FIGURE <name>: <value> | baseline <name> <value> |
ratio <r> | target <t> | MET` (or `NOT MET`), so run_all.py can collect them and a
reader can grep them. Figures are ratios against a baseline measured in the same run,
because absolute times on a shared 2-core machine move by 2x from minute to minute.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_DATA = ROOT / "bench-data"
BIN = Path(sys.executable).parent
FLEETSTATE = str(BIN / "fleetstate")


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline: float
    target: str
    met: bool | None  # None: reported, no target

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")

    def line(self) -> str:
        verdict = "REPORTED" if self.met is None else ("MET" if self.met else "NOT MET")
        return (
            f"FIGURE {self.name}: {_fmt(self.value, self.unit)} | baseline {self.baseline_name} "
            f"{_fmt(self.baseline, self.unit)} | ratio {self.ratio:.2f} | target {self.target} "
            f"| {verdict}"
        )


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "MB":
        return f"{value:,.0f} MB"
    return f"{value:g} {unit}"


def emit(fig: Figure) -> None:
    print(fig.line(), flush=True)


def note(message: str) -> None:
    """Context (sizes, growth tables) that is not a figure; goes to stdout for the log."""
    print(f"  {message}", flush=True)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_timed(
    cmd: Sequence[str], env: dict[str, str] | None = None, check: bool = True
) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one child process, measured by wait4."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024


def best_of(n: int, fn: Callable[[], float]) -> float:
    """The fastest of n runs: the least disturbed by other processes on the machine."""
    return min(fn() for _ in range(n))


def median_of(n: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(n))


def compile_bytecode() -> None:
    """Compile the environment's Python files once, as pip does at install time (uv:
    `uv sync --compile-bytecode`). With PYTHONDONTWRITEBYTECODE set and no bytecode,
    every command would compile typer's, duckdb's and polars' sources again."""
    import compileall
    import sysconfig

    for path in (sysconfig.get_paths()["purelib"], str(ROOT / "pipeline")):
        compileall.compile_dir(path, quiet=2, workers=2)


def env_with_db(db: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLEETSTATE_DB"] = str(db)
    return env


def read_json_ctas(mirror: Path, db: Path) -> tuple[float, float]:
    """(wall, CPU seconds of all threads) of the baseline of figure 1, in this process:
    `CREATE TABLE t AS SELECT * FROM read_json(...)` over the mirror's histories into a
    fresh DuckDB file `db`, which is removed afterwards."""
    import duckdb

    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    wall, cpu = time.perf_counter(), time.process_time()
    con.execute(
        "CREATE TABLE t AS SELECT * FROM read_json(?, format = 'newline_delimited', "
        "ignore_errors = true)",
        [str(mirror / "*" / "history.jsonl")],
    )
    con.close()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    db.unlink(missing_ok=True)
    return wall, cpu
