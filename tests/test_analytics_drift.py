"""Drift over a constructed month, checked day by day, and the intervals view.

The month (30 days, two roles) is written by `month` below; the expected figures
are read off that description by hand, not computed by the code under test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from analytics_support import add_run, open_db
from typer.testing import CliRunner

from pipeline.cli import app

C1, C2 = "1" * 40, "2" * 40
OV, V1, V2 = "a" * 64, "b" * 64, "c" * 64
START = datetime.now(UTC).date() - timedelta(days=40)


def t(day: int, hour: int) -> datetime:
    d = START + timedelta(days=day - 1)
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


def sha_of(host: str, day: int) -> str:
    first_c2 = {"w1": 11, "w2": 15, "w3": 16, "w4": 99, "d1": 99, "d2": 21}[host]
    return C2 if day >= first_c2 else C1


def month(con: duckdb.DuckDBPyConnection) -> None:
    """Runs at 06:00 and 18:00 every day unless noted.
    w1 C2 from day 11, w2 from 15, w3 from 16, w4 stays on C1 and its 18:00 run fails on
    days 18-20; d1 stays on C1 and is silent days 5-6, d2 moves to C2 on day 21.
    w2 runs with an override days 21-25 from a dirty checkout days 22-23. w3 applies
    vault V2 from day 26, but the collector saw V2 on day 24 at 12:00. d2 was seen with
    an override on day 27 that no run applied."""
    for host in ("w1", "w2", "w3", "w4", "d1", "d2"):
        role = "web" if host.startswith("w") else "db"
        for day in range(1, 31):
            if host == "d1" and day in (5, 6):
                continue
            for hour in (6, 18):
                ok = not (host == "w4" and hour == 18 and 18 <= day <= 20)
                add_run(con, host, t(day, hour), sha_of(host, day), ok=ok, role=role,
                        override_sha=OV if host == "w2" and 21 <= day <= 25 else None,
                        git_dirty=host == "w2" and day in (22, 23),
                        vault_sha=V2 if host == "w3" and day >= 26 else V1)  # fmt: skip
    observe(con, "w3", t(1, 0), None, V1)
    observe(con, "w3", t(24, 12), None, V2)
    observe(con, "d2", t(27, 12), OV, V1)


def observe(con: duckdb.DuckDBPyConnection, host: str, when: datetime, override: str | None,
            vault: str) -> None:  # fmt: skip
    con.execute(
        "INSERT INTO observations (host, observed_at, reachable, override_present, override_sha, "
        "vault_sha, loaded_at) VALUES (?, ?, true, ?, ?, ?, ?)",
        [host, when, override is not None, override, vault, when],
    )


# (hosts, distinct_shas, modal_sha, off_modal, failing, with_override, dirty,
#  override_differs, vault_differs) per day, by hand from the description above
def expected_web(day: int) -> tuple[object, ...]:
    if day <= 10:
        return (4, 1, C1, 0, 0, 0, 0, 0, 0)
    if day <= 14:
        return (4, 2, C1, 1, 0, 0, 0, 0, 0)
    if day == 15:
        return (4, 2, C1, 2, 0, 0, 0, 0, 0)  # 2-2 tie: the smaller sha is modal
    if day <= 17:
        return (4, 2, C2, 1, 0, 0, 0, 0, 0)
    if day <= 20:
        return (4, 2, C2, 1, 1, 0, 0, 0, 0)
    if day == 21:
        return (4, 2, C2, 1, 0, 1, 0, 0, 0)
    if day <= 23:
        return (4, 2, C2, 1, 0, 1, 1, 0, 0)
    if day <= 25:
        return (4, 2, C2, 1, 0, 1, 0, 0, 1)
    return (4, 2, C2, 1, 0, 0, 0, 0, 0)


def expected_db(day: int) -> tuple[object, ...]:
    if day in (5, 6):
        return (1, 1, C1, 0, 0, 0, 0, 0, 0)
    if day <= 20:
        return (2, 1, C1, 0, 0, 0, 0, 0, 0)
    if day <= 26:
        return (2, 2, C1, 1, 0, 0, 0, 0, 0)
    return (2, 2, C1, 1, 0, 0, 0, 1, 0)


@pytest.fixture()
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    c = open_db(tmp_path)
    month(c)
    return c


def test_drift_daily_day_by_day(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(
        "SELECT day, role, hosts, distinct_shas, modal_sha, off_modal, failing, with_override, "
        "dirty, override_differs, vault_differs FROM drift_daily ORDER BY day, role"
    ).fetchall()
    got = {(r[0], r[1]): r[2:] for r in rows}
    want = {}
    for day in range(1, 31):
        d = START + timedelta(days=day - 1)
        want[(d, "web")] = expected_web(day)
        want[(d, "db")] = expected_db(day)
    for key in sorted(want):
        assert got[key] == want[key], key
    assert len(got) == 60


def test_host_intervals(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute(
        "SELECT host, git_sha, from_ts, to_ts, last_ts, runs FROM host_intervals "
        "WHERE host IN ('w1', 'w4') ORDER BY host, from_ts"
    ).fetchall()
    assert rows == [
        ("w1", C1, t(1, 6), t(11, 6), t(10, 18), 20),
        ("w1", C2, t(11, 6), None, t(30, 18), 40),
        ("w4", C1, t(1, 6), None, t(30, 18), 57),  # three failed runs apply nothing
    ]


def test_drift_command_json_and_chart(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    con.close()
    db = str(tmp_path / "fleet.duckdb")
    out = CliRunner().invoke(app, ["--db", db, "drift", "--since", "60d", "-f", "json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert list(rows[0]) == [
        "day", "role", "hosts", "distinct_shas", "modal_sha", "off_modal", "failing",
        "with_override", "dirty", "override_differs", "vault_differs", "config_differs",
    ]  # fmt: skip
    assert len(rows) == 60 and rows[0]["day"] == START.isoformat()
    table = CliRunner().invoke(app, ["--db", db, "drift", "--since", "60d"]).stdout
    day15 = (START + timedelta(days=14)).isoformat()
    assert any(line.startswith(day15) and "2/6 off modal" in line for line in table.splitlines())
    intervals = CliRunner().invoke(
        app, ["--db", db, "drift", "--since", "60d", "--part", "intervals", "--host", "w1",
              "-f", "csv"])  # fmt: skip
    assert len(intervals.stdout.splitlines()) == 3


def test_a_day_is_judged_by_its_last_run_even_where_that_run_knows_little(
    tmp_path: Path,
) -> None:
    """h1 applied C1 with an override from a dirty checkout in the morning, then failed
    before puppet ran (no commit, no override, no role known) in the evening: the day
    counts its evening run, in the role the host reported that day."""
    con = open_db(tmp_path)
    add_run(con, "h1", t(1, 8), C1, override_sha=OV, git_dirty=True)
    add_run(con, "h1", t(1, 20), None, ok=False, role=None, stage="prepare")
    add_run(con, "h2", t(1, 9), C1)
    row = con.execute(
        "SELECT role, hosts, distinct_shas, modal_sha, off_modal, failing, with_override, dirty "
        "FROM drift_daily"
    ).fetchall()
    assert row == [("web", 2, 1, C1, 1, 1, 0, 0)]
