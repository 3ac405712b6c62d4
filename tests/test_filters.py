"""The status filter language, compiled to SQL and run against a real warehouse."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from factories import SHA_A, SHA_B, ago, line, record, write_history, write_observation

from pipeline import filters, load, monitor
from pipeline.errors import FleetstateError


@pytest.fixture
def fleet(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    m = tmp_path / "m"
    write_history(m, "web1", line(record(ago(hours=30), git_sha=SHA_A, role="web")))
    write_history(m, "web2", line(record(ago(minutes=5), git_sha=SHA_B, role="web")))
    write_history(m, "db1", line(record(ago(hours=2), git_sha=SHA_B, role="db", success=False,
                                        exit_code=6)))  # fmt: skip
    write_observation(m, "db1", role="db")
    write_observation(m, "lost", role=None, reachable=False, error="timed out")
    load.load_mirror(con, m)
    return con


def hosts(con: duckdb.DuckDBPyConnection, text: str) -> list[str]:
    rows = monitor.status(con, filters.parse(text))
    return [r["host"] for r in rows.iter_rows(named=True)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["db1", "web1", "web2", "lost"]),
        ("role=web", ["web1", "web2"]),
        ("role=web|db", ["db1", "web1", "web2"]),
        ("role!=web|db", []),
        ("role=", ["lost"]),
        ("role!=", ["db1", "web1", "web2"]),
        ("role~^W", ["web1", "web2"]),
        ("pp_last>1d", ["web1"]),
        ("pp_last<=3h", ["db1", "web2"]),
        ("pp_success=false", ["db1"]),
        ("exit_code>=6", ["db1"]),
        (f"pp_sha={SHA_B[:7]}", ["db1", "web2"]),
        (f"pp_sha!={SHA_B[:7]}", ["web1"]),
        ("applied=?", ["lost"]),
        ("reachable=false", ["lost"]),
        ("role=web sort:pp_last:desc", ["web1", "web2"]),
        ("role=web sort:pp_last:asc", ["web2", "web1"]),
        ("role=web pp_last<1h", ["web2"]),
    ],
)
def test_filter_terms(fleet: duckdb.DuckDBPyConnection, text: str, expected: list[str]) -> None:
    assert hosts(fleet, text) == expected


def test_values_are_parameters_never_sql(fleet: duckdb.DuckDBPyConnection) -> None:
    query = filters.parse("role=x');DROP")
    assert "DROP" not in " ".join(query.where)
    assert query.params == ["x');DROP"]
    assert hosts(fleet, "role=web');DROP|db") == ["db1"]
    assert hosts(fleet, "role~'OR'1'='1") == []
    assert fleet.execute("SELECT count(*) FROM runs").fetchall() == [(3,)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nosuch=1", "unknown filter column"),
        ("role", "cannot read filter term"),
        ("pp_last>soon", "not a duration"),
        ("exit_code=one", "not an integer"),
        ("reachable=maybe", "not true/false"),
        ("role~(", "bad pattern"),
        ("role>", "only goes with = or !="),
        ("sort:nosuch", "unknown filter column"),
    ],
)
def test_bad_terms_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(FleetstateError, match=message):
        filters.parse(text)
