"""Second look at the day's changes (f5832ae..HEAD): one test per defect, each failing on
HEAD for the reason its docstring names, passing at f5832ae where the behaviour existed.

Real parts only: real DuckDB files, the real `fleetstate` command in its own process.
Nothing here asserts on wall time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from clirun import REPO, cli_env  # noqa: E402

from pipeline import warehouse  # noqa: E402

CSV = b"host,role\nweb1.example.com,web\nweb2.example.com,web\n"


def test_a_non_duckdb_file_at_an_inode_this_process_saw_as_a_warehouse_is_still_refused(
    tmp_path: Path,
) -> None:
    """`_is_duckdb_file` trusts any file whose (device, inode) the process once saw as a
    DuckDB file (`_SEEN_DUCKDB`, warehouse.py), and never reads its header again. An inode
    is not a file's identity over time: a file system gives a deleted file's inode to the
    next file made (ext4 does so at once), and a file rewritten in place (`cp x.csv
    fleet.duckdb`) keeps its inode. Here a warehouse this process opened is rewritten in
    place with CSV text and renamed `hosts.csv` (the same (device, inode), as a reused one
    would be). At f5832ae both calls below say 'is not a DuckDB warehouse'. On HEAD the
    check is skipped: `rebuilding` (`rebuild`, `demo`; no --force needed) replaces the
    user's CSV with a new warehouse (DuckDB opens a `.csv` path as an in-memory database
    with a view over it, so nothing refuses it), and `connect` returns an in-memory
    database in which an ingest would be written nowhere."""
    db = tmp_path / "fleet.duckdb"
    warehouse.connect(db).close()  # seen by this process: (device, inode) cached
    ino = db.stat().st_ino
    with open(db, "r+b") as fh:  # the same inode, other contents
        fh.truncate(0)
        fh.write(CSV)
    csv = tmp_path / "hosts.csv"
    os.rename(db, csv)
    assert csv.stat().st_ino == ino

    refused = None
    try:
        with warehouse.rebuilding(csv):
            pass
    except warehouse.WarehouseError as exc:
        refused = str(exc)
    assert csv.read_bytes() == CSV, (
        "a rebuild replaced a CSV file: its header was never read, because "
        "its inode had once been a warehouse's in this process"
    )
    assert refused is not None and "is not a DuckDB warehouse" in refused, refused

    try:
        con = warehouse.connect(csv)
    except warehouse.WarehouseError as exc:
        assert "is not a DuckDB warehouse" in str(exc), str(exc)
    else:
        where = con.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
        con.close()
        raise AssertionError(f"a CSV file was opened as the warehouse (database path {where})")


def _readme_json_after(marker: str) -> list[dict]:
    text = (REPO / "README.md").read_text()
    at = text.index(marker)
    block = re.search(r"```json\n(.*?)```", text[at:], re.S)
    assert block is not None, f"no JSON example after {marker!r}"
    return json.loads(block.group(1))


def test_readme_rollout_summary_example_shows_pct_converged_as_now_emitted() -> None:
    """436aa9e made `pct_converged` converged / hosts x 100, not rounded (CHANGELOG,
    docs/sql.md, docs/analytics.md's example now 44.44444444444444). README's
    `--part summary` JSON example still shows 26 of 44 hosts as 59.1, the old rounded
    value: `fleetstate rollout SHA --format json --part summary` now prints
    59.09090909090909 for those counts."""
    (summary,) = _readme_json_after("`--part summary`:")
    assert summary["pct_converged"] == 100.0 * summary["converged"] / summary["hosts"], summary


def test_rollout_mirror_without_watch_is_a_usage_error(tmp_path: Path) -> None:
    """081cf38 gave `rollout` a `--mirror` that only `--watch --ingest` uses (its help:
    '--watch --ingest: where collected bytes are kept'). The other watch-only options
    (`--from`, `--ingest`, `--iterations`, `--interval`) are a usage error without
    `--watch` (exit 2: 'only with --watch'); `--mirror` given on the command line without
    them is taken and silently ignored (exit 0), so an operator who passes it believes it
    did something. (FLEETSTATE_MIRROR from the environment is rightly ignored.)"""
    db = tmp_path / "wh.duckdb"
    env = cli_env()
    env.pop("FLEETSTATE_MIRROR", None)
    mirror = tmp_path / "m" / "h1.example.com"
    mirror.mkdir(parents=True)
    (mirror / "history.jsonl").write_bytes(b"")
    made = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "--from", str(mirror.parent)],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    sha = "a" * 40  # a full sha is taken even when no host ran it
    interval = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "rollout", sha, "--interval", "5"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert interval.returncode == 2, (interval.returncode, interval.stderr)  # as designed
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "rollout", sha,
         "--mirror", str(tmp_path / "elsewhere")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2, (
        f"--mirror without --watch --ingest was accepted and ignored (exit {out.returncode})"
    )
    assert "--watch" in out.stderr, out.stderr
