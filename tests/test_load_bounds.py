"""Pathological inputs against the loader's resource bounds (each failed before its fix).

Each test runs `fleetstate ingest --from DIR` as a real process on a real warehouse and
measures what it used with wait4 (the child's own peak RSS), never wall time. The bound
asserted is the documented one: "peak memory under 1 GB for a 2 GB history"
(README, docs/performance.md figure 3); every input here is far smaller than 2 GB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
from clirun import REPO, cli_env
from factories import line, record, write_history

GB = 1 << 30
MIB = 1 << 20
HOST = "h1.example.com"


def ingest_measured(db: Path, mirror: Path, tmp: Path, **env: str) -> tuple[int, int, str]:
    """(exit code, peak RSS in bytes, stderr) of `fleetstate --db DB ingest --from MIRROR`."""
    out, err = tmp / "ingest.out", tmp / "ingest.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "--from", str(mirror)],
            stdout=o, stderr=e, cwd=REPO, env={**cli_env(), **env},
        )  # fmt: skip
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, err.read_text(errors="replace")


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_one_long_line_is_rejected_within_the_memory_bound(tmp_path: Path) -> None:
    """An 80 MB history that is one (newline-terminated) line: a reject 'line too long'.
    HEAD: about 19 bytes of memory per byte of the line (a 200 MB line peaked at 3.8 GB,
    400 MB at 6.7 GB): the line is assembled whole, then copied through Arrow, the fast
    and slow temp tables, a Python str, its bytes and a pyarrow table."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    path = write_history(mirror, HOST, b"")
    size = 80 * MIB
    with path.open("r+b") as fh:  # sparse: NUL bytes cost no disk
        fh.truncate(size - 1)
        fh.seek(size - 1)
        fh.write(b"\n")
    rc, peak, err = ingest_measured(db, mirror, tmp_path)
    assert rc == 0, err
    got = rows(db, "SELECT count(*), min(reason) FROM rejects")
    assert got[0][0] == 1 and str(got[0][1]).startswith("line too long"), got
    assert peak < 1 * GB, f"peak RSS {peak / GB:.2f} GB for one {size // MIB} MiB line"


def test_a_megabyte_of_empty_lines_stays_within_the_memory_bound(tmp_path: Path) -> None:
    """1 MiB of '\\n' is 1,048,576 'empty line' rejects. HEAD: 1.5 GB peak (2 MiB: 2.9 GB,
    4 MiB: 5.5 GB, 100 MiB: killed by the kernel at 24 GB): batches are bounded by bytes
    only, and every reject of a batch becomes Python objects (_reject_slow_lines fetchall,
    the rows list, _insert_rejects' set and pyarrow lists), about 1.3 KB per line."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, HOST, b"\n" * MIB)
    rc, peak, err = ingest_measured(db, mirror, tmp_path)
    assert rc == 0, err
    assert rows(db, "SELECT count(*) FROM rejects WHERE reason = 'empty line'") == [(MIB,)]
    assert peak < 1 * GB, f"peak RSS {peak / GB:.2f} GB for a 1 MiB history of empty lines"


def test_an_unterminated_history_is_not_held_in_memory(tmp_path: Path) -> None:
    """A 600 MB history without a newline loads nothing (its bytes wait for the next load).
    HEAD: _new_chunks reads the whole line into one bytes object, growing it by
    `data += more` (old and new copy alive at once): about 2.2x the file size (200 MB:
    0.5 GB, 400 MB: 0.9 GB), on every ingest, for bytes it then throws away."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    path = write_history(mirror, HOST, b"")
    size = 600 * MIB
    with path.open("r+b") as fh:  # sparse: no disk
        fh.truncate(size)
    rc, peak, err = ingest_measured(db, mirror, tmp_path)
    assert rc == 0, err
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]
    shown = f"{peak / GB:.2f} GB to learn a {size // MIB} MiB file has no newline"
    assert peak < 1 * GB, f"peak RSS {shown}"


def _record_of_bytes(n: int, i: int) -> bytes:
    """A valid record (slow path: an unknown field) whose line is exactly n bytes + '\\n'."""
    rec = record(run_id=f"run-{i}", host=HOST, ts=f"2026-11-20T10:{i // 60:02d}:{i % 60:02d}Z")
    rec["pad"] = ""
    rec["pad"] = "y" * (n - len(line(rec)) + 1)
    out = line(rec)
    assert len(out) == n + 1
    return out


def test_records_of_the_accepted_length_stay_within_the_memory_bound(tmp_path: Path) -> None:
    """100 records of exactly MAX_LINE_BYTES (1 MiB, accepted: 100 runs), 100 MB in all.
    HEAD: 1.76 GB peak (400 such lines: 2.87 GB; 1 MiB + 1 lines, rejected: 2.37 GB):
    one 128 MiB batch of long lines is one DuckDB vector, and each string expression of
    the fast and slow paths holds its own copy of it; the planner assumes 4 bytes of
    memory per batch byte (PEAK_PER_BATCH_BYTE), this is about 14."""
    from pipeline.records import MAX_LINE_BYTES

    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    path = write_history(mirror, HOST, b"")
    with path.open("ab") as fh:
        for i in range(100):
            fh.write(_record_of_bytes(MAX_LINE_BYTES, i))
    rc, peak, err = ingest_measured(db, mirror, tmp_path)
    assert rc == 0, err
    assert rows(db, "SELECT count(*) FROM runs") == [(100,)]
    assert peak < 1 * GB, f"peak RSS {peak / GB:.2f} GB for a 100 MiB history"


def test_conflicting_repeats_stay_within_the_memory_bound(tmp_path: Path) -> None:
    """120,000 records with one run_id and different content (70 MB): one run, 119,999
    conflict rejects, each read back from the mirror a slice at a time. Before: the
    conflicts were fetched into Python all at once, each file opened per conflict
    (200,000 such records: 1.45 GB; after the fix about 0.9 to 1.0 GB, the rejects of the
    transaction and DuckDB's retained buffers: that case is above the bound at times, and
    is named in docs/performance.md rather than asserted here)."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    path = write_history(mirror, HOST, b"")
    with path.open("ab") as fh:
        for i in range(120_000):
            fh.write(line(record(duration_s=i, run_id="same-run", host=HOST)))
    rc, peak, err = ingest_measured(db, mirror, tmp_path)
    assert rc == 0, err
    assert rows(db, "SELECT count(*) FROM runs") == [(1,)]
    assert rows(db, "SELECT count(*) FROM rejects") == [(119_999,)]
    assert peak < 1 * GB, f"peak RSS {peak / GB:.2f} GB for a 70 MB history"


def test_an_oversized_record_gets_one_verdict_whichever_file_carries_it(tmp_path: Path) -> None:
    """A 1.5 MiB record is 'line too long' as a history line, but the same record as the
    state file is stored as a run: the warehouse then depends on how the bytes arrived
    (README: "The warehouse is the same however the bytes arrived"). slow_sql checks the
    length only for source = 'history', and the state file is read whole at any size
    (a 50 MB state file peaked at 1.1 GB)."""
    rec_line = _record_of_bytes(3 * MIB // 2, 1)
    rec = json.loads(rec_line)

    by_history = tmp_path / "a"
    write_history(by_history, HOST, rec_line)
    by_state = tmp_path / "b"
    (by_state / HOST).mkdir(parents=True)
    (by_state / HOST / "last_run_metadata.json").write_text(json.dumps(rec, indent=2))

    db_a, db_b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    for db, mirror in ((db_a, by_history), (db_b, by_state)):
        rc, _, err = ingest_measured(db, mirror, tmp_path)
        assert rc == 0, err
    runs_a = rows(db_a, "SELECT count(*) FROM runs")
    runs_b = rows(db_b, "SELECT count(*) FROM runs")
    assert rows(db_a, "SELECT count(*) FROM rejects WHERE reason LIKE 'line too long%'") == [(1,)]
    assert runs_a == runs_b, f"history: {runs_a[0][0]} runs; state file: {runs_b[0][0]} runs"


def test_an_observation_line_longer_than_a_read_piece_is_named_too_long(tmp_path: Path) -> None:
    """An observations.jsonl line longer than what the loader reads at once is followed to
    its end without being held: `observation too long` (not a JSON error about a cut
    line), its first 2 MiB kept, and the next observation loads."""
    obs = tmp_path / "m" / HOST / "observations.jsonl"
    obs.parent.mkdir(parents=True)
    big = {"host": HOST, "observed_at": "2026-11-20T10:00:00Z", "reachable": True}
    with obs.open("w") as fh:
        fh.write(json.dumps(big | {"pad": "x" * (6 * MIB)}) + "\n")
        fh.write(json.dumps(big | {"observed_at": "2026-11-20T11:00:00Z"}) + "\n")
    db = tmp_path / "wh.duckdb"
    rc, _, err = ingest_measured(db, tmp_path / "m", tmp_path, FLEETSTATE_BATCH_BYTES="4M")
    assert rc == 0, err
    [(reason, kept)] = rows(db, "SELECT reason, octet_length(line) FROM rejects")
    assert str(reason).startswith("observation too long: ") and kept == 2 * MIB
    assert rows(db, "SELECT count(*) FROM observations") == [(1,)]
