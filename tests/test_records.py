"""The record parser, through the real loader: every malformed class becomes a reject with its
bytes and a precise reason, while its neighbours load."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from factories import SHA_A, line, record, seed_record, write_history

from pipeline import load

HOST = "h1.example.com"


def load_lines(con: duckdb.DuckDBPyConnection, mirror: Path, *lines: bytes) -> None:
    write_history(mirror, HOST, b"".join(lines))
    load.load_mirror(con, mirror)


def rejects(con: duckdb.DuckDBPyConnection) -> list[tuple[int, str, bytes]]:
    return con.execute(
        "SELECT byte_offset, reason, line FROM rejects ORDER BY byte_offset"
    ).fetchall()


def run_count(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT count(*) FROM runs").fetchone()[0]  # type: ignore[index]


BAD_LINES: list[tuple[bytes, str]] = [
    (b"{not json", "invalid JSON: Expecting property name"),
    (b'{"schema_version":1,"ts":"2026-11-20T10:00:00Z"', "invalid JSON"),
    (b"\xff\xfe\xfd", "invalid UTF-8 at byte 0"),
    (b'{"schema_version":1,\x00"ts":"2026-11-20T10:00:00Z","success":true}', "NUL byte"),
    (b"", "empty line"),
    (b"[1, 2, 3]", "not a JSON object: array"),
    (b'"just a string"', "not a JSON object: varchar"),
    (b"\xef\xbb\xbf" + line(record())[:-1], "byte order mark"),
    (line(record())[:-1] + b"\r", "CRLF line ending"),
    (line(record(success="yes"))[:-1], "success: expected true or false, got varchar"),
    (line(record(exit_code="2"))[:-1], "exit_code: expected an integer, got varchar"),
    (line(record(exit_code=999))[:-1], "exit_code: 999 (outside 0..255)"),
    (line(record(duration_s=1.5))[:-1], "duration_s: expected an integer, got double"),
    (line(record(git_sha="abc123"))[:-1], "git_sha: not a 40-hex commit sha: abc123"),
    (line(record(vault_sha="x" * 64))[:-1], "vault_sha: not a 64-hex sha256"),
    (line(record(ts="2026-11-20 10:00:00"))[:-1], "ts: not an ISO 8601 timestamp"),
    (line(record(ts="2026-02-30T10:00:00Z"))[:-1], "ts: impossible date or time"),
    (line(record(schema_version=2))[:-1], "unsupported schema_version 2"),
    (line(record(role=["a"]))[:-1], "role: expected a string, got array"),
    (
        json.dumps({k: v for k, v in record().items() if k != "ts"}).encode(),
        "missing required field ts",
    ),
    (
        json.dumps({k: v for k, v in record().items() if k != "success"}).encode(),
        "missing required field success",
    ),
    (line(record(success=None))[:-1], "success is null"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_LINES, ids=[r for _, r in BAD_LINES])
def test_malformed_line_is_rejected_with_reason_and_bytes_while_neighbours_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, raw: bytes, reason: str
) -> None:
    before = line(record(ts="2026-11-20T10:00:00Z", run_id="before"))
    after = line(record(ts="2026-11-20T11:00:00Z", run_id="after"))
    load_lines(con, tmp_path / "m", before, raw + b"\n", after)
    assert [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY ts").fetchall()] == [
        "before",
        "after",
    ]
    ((offset, got_reason, got_line),) = rejects(con)
    assert offset == len(before)
    assert reason in got_reason
    assert got_line == raw


def test_five_megabyte_line_is_rejected_with_its_first_two_megabytes(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A line longer than a record may be is never held whole (docs/record-format.md):
    its reason counts all of it, `rejects.line` keeps its first 2 MiB, and the mirror
    keeps the rest at its offset."""
    huge = line(record(role="r" * (5 << 20)))
    load_lines(con, tmp_path / "m", huge, line(record(run_id="ok")))
    ((offset, reason, raw),) = rejects(con)
    assert offset == 0 and reason == f"line too long: {len(huge) - 1} bytes (limit 1048576)"
    assert raw == huge[: 2 << 20]
    assert run_count(con) == 1


def test_several_reasons_are_all_named(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    load_lines(con, tmp_path / "m", line(record(success="yes", git_sha="1", exit_code=-1)))
    ((_, reason, _),) = rejects(con)
    assert "success: expected true or false" in reason
    assert "git_sha: not a 40-hex" in reason
    assert "exit_code: -1" in reason


def test_seed_format_record_loads_with_new_fields_null(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    load_lines(con, tmp_path / "m", line(seed_record()))
    row = con.execute(
        "SELECT git_sha, duration_s, git_dirty, stage, attempt, reported_host, run_id FROM runs"
    ).fetchone()
    assert row is not None
    assert row[:6] == (SHA_A, 42, None, None, None, None)
    assert row[6].startswith("derived-")


def test_nulls_and_empty_strings_read_as_null(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    load_lines(con, tmp_path / "m", line(record(git_branch="", override_sha="null", role=None)))
    assert con.execute("SELECT git_branch, override_sha, role FROM runs").fetchone() == (
        None,
        None,
        None,
    )


def test_timestamp_offsets_are_normalised_to_utc(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    load_lines(con, tmp_path / "m", line(record(ts="2026-11-20T12:30:45+02:00", run_id="x")))
    got = con.execute("SELECT strftime(ts, '%Y-%m-%dT%H:%M:%S') FROM runs").fetchone()
    assert got == ("2026-11-20T10:30:45",)


def test_unknown_fields_are_kept_in_extra(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    rec = record(run_id="x", future={"nested": [1, "two"]}, **{"a/b~c": 3})
    load_lines(con, tmp_path / "m", line(rec))
    extra = json.loads(con.execute("SELECT extra FROM runs").fetchone()[0])  # type: ignore[index]
    assert extra == {"future": {"nested": [1, "two"]}, "a/b~c": 3}


def test_pretty_state_file_and_history_line_are_one_run(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    rec = seed_record(ts="2026-11-20T10:00:00Z")
    write_history(mirror, HOST, line(rec))
    (mirror / HOST / "last_run_metadata.json").write_text(json.dumps(rec, indent=4) + "\n")
    stats = load.load_mirror(con, mirror)
    assert stats.runs_added == 1
    assert con.execute("SELECT source FROM runs").fetchone() == ("history",)
    # the same record with its sha in upper case and the timestamp as an offset is still one run
    rec2 = dict(rec, git_sha=SHA_A.upper(), ts="2026-11-20T11:00:00+01:00")
    (mirror / HOST / "last_run_metadata.json").write_text(json.dumps(rec2, indent=2))
    assert load.load_mirror(con, mirror).runs_added == 0
    assert run_count(con) == 1


def test_state_file_inside_an_observation_becomes_a_run(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    obs = {
        "host": HOST,
        "observed_at": "2026-11-20T12:00:00Z",
        "reachable": True,
        "state_file": json.dumps(record(run_id="from-state"), indent=2),
    }
    (mirror / HOST).mkdir(parents=True)
    (mirror / HOST / "observations.jsonl").write_text(json.dumps(obs) + "\n")
    load.load_mirror(con, mirror)
    assert con.execute("SELECT run_id, source FROM runs").fetchall() == [
        ("from-state", "state_file")
    ]
    assert con.execute("SELECT count(*) FROM observations").fetchone() == (1,)


def test_legacy_summary_becomes_a_run(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    mirror = tmp_path / "m"
    summary = (
        "---\nversion:\n  config: " + SHA_A + "\n  puppet: 7.28.0\nresources:\n  failed: 0\n"
        "time:\n  last_run: 1763632800\nevents:\n  failure: 2\n  success: 10\n"
    )
    obs = {
        "host": HOST,
        "observed_at": "2026-11-20T12:00:00Z",
        "reachable": True,
        "legacy_summary": summary,
    }
    (mirror / HOST).mkdir(parents=True)
    (mirror / HOST / "observations.jsonl").write_text(json.dumps(obs) + "\n")
    load.load_mirror(con, mirror)
    row = con.execute("SELECT ts, success, git_sha, source FROM runs").fetchone()
    assert row is not None
    assert row[0].isoformat() == "2025-11-20T10:00:00+00:00"
    assert row[1:] == (False, SHA_A, "legacy_summary")


def test_malformed_observation_is_rejected(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    mirror = tmp_path / "m"
    (mirror / HOST).mkdir(parents=True)
    good = {"host": HOST, "observed_at": "2026-11-20T12:00:00Z", "reachable": True}
    (mirror / HOST / "observations.jsonl").write_text(
        json.dumps(good) + "\n" + '{"observed_at": "yesterday", "reachable": true}\n'
    )
    load.load_mirror(con, mirror)
    assert con.execute("SELECT count(*) FROM observations").fetchone() == (1,)
    ((_, reason, _),) = rejects(con)
    assert "observed_at" in reason
