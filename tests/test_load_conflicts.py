"""Two different records with one run_id: the first is the run, the other is not dropped in
silence but kept in `rejects` with its exact bytes and the place of the run it collides
with. An identical repeat (a line pulled twice, a state file and its history line) is no
conflict. Real DuckDB files through the real loader."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from factories import SHA_B, line, record, write_history, write_observation

from pipeline import load


def _rejects(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, str, bytes]]:
    rows = con.execute(
        "SELECT regexp_extract(source_path, '[^/]*$'), byte_offset, reason, line "
        "FROM rejects ORDER BY byte_offset"
    ).fetchall()
    return [(p, o, r, bytes(x)) for p, o, r, x in rows]


def test_a_second_record_with_the_run_id_of_another_is_a_reject(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    first = line(record("2026-11-20T10:00:00Z", run_id="r-1"))
    other = line(record("2026-11-20T11:00:00Z", run_id="r-1", git_sha=SHA_B))
    same = first  # an identical repeat: absorbed, no reject
    write_history(tmp_path, "h1", first + other + same)
    stats = load.load_mirror(con, tmp_path)
    assert (stats.runs_added, stats.rejects_added) == (1, 1)
    assert con.execute("SELECT run_id, ts::VARCHAR FROM runs").fetchall() == [
        ("r-1", "2026-11-20 10:00:00+00")
    ]
    [(name, offset, reason, raw)] = _rejects(con)
    assert (name, offset, raw) == ("history.jsonl", len(first), other.rstrip(b"\n"))
    assert "run_id r-1 is already another record's, with other content" in reason
    assert f"(kept: byte 0 of {tmp_path / 'h1' / 'history.jsonl'})" in reason

    # loading again (or the same mirror elsewhere) adds nothing
    assert load.load_mirror(con, tmp_path).rejects_added == 0
    assert len(_rejects(con)) == 1


def test_a_conflict_with_a_run_stored_by_an_earlier_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    first = line(record("2026-11-20T10:00:00Z", run_id="r-1"))
    write_history(tmp_path, "h1", first)
    load.load_mirror(con, tmp_path)
    other = line(record("2026-11-20T10:00:00Z", run_id="r-1", exit_code=6, success=False))
    write_history(tmp_path, "h1", other)
    stats = load.load_mirror(con, tmp_path)
    assert (stats.runs_added, stats.rejects_added) == (0, 1)
    assert con.execute("SELECT exit_code FROM runs").fetchall() == [(0,)]
    [(_, offset, _, raw)] = _rejects(con)
    assert (offset, raw) == (len(first), other.rstrip(b"\n"))


def test_a_state_file_that_differs_from_its_history_line_is_a_reject(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The history line wins; the state file the collector carried in an observation,
    same run_id, other content, is a reject with the state file's own bytes."""
    hist = record("2026-11-20T10:00:00Z", run_id="r-1")
    write_history(tmp_path, "h1", line(hist))
    state = json.dumps(dict(hist, role="another_role"), separators=(",", ":"))
    write_observation(tmp_path, "h1", state_file=state + "\n")
    stats = load.load_mirror(con, tmp_path)
    assert (stats.runs_added, stats.rejects_added) == (1, 1)
    assert con.execute("SELECT source, role FROM runs").fetchall() == [("history", hist["role"])]
    [(name, _, reason, raw)] = _rejects(con)
    assert name.endswith(":state_file") and "run_id r-1" in reason
    assert raw == state.encode()


def test_a_state_file_equal_to_its_history_line_is_no_conflict(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    hist = record("2026-11-20T10:00:00Z", run_id="r-1")
    write_history(tmp_path, "h1", line(hist))
    write_observation(tmp_path, "h1", state_file=line(hist).decode())
    stats = load.load_mirror(con, tmp_path)
    assert (stats.runs_added, stats.rejects_added) == (1, 0)
