"""The SQL names at their edges (contract sections 1 and 3, docs/sql.md, docs/analytics.md):
a reader in another time zone, fractional windows, an empty scope, a worker listed by
two pools. Each test builds a real DuckDB warehouse with the real views and macros; each
failed on the code before the fix.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
from factories import SHA_A, ago, line, record, write_history, write_observation

from pipeline import activity, load, warehouse


def runs(mirror: Path, host: str, *recs: dict[str, object]) -> None:
    write_history(mirror, host, b"".join(line(dict(r, host=host)) for r in recs))


def test_drift_daily_days_are_utc_days_in_any_session_time_zone(tmp_path: Path) -> None:
    """docs/analytics.md: drift_daily is "per UTC day"; docs/sql.md invites users to query
    the warehouse "with DuckDB itself", whose session time zone is the machine's. A run at
    02:00 UTC on Nov 20 belongs to 2026-11-20 whatever the reader's zone; drift_daily
    casts ts to DATE in the session zone (queries/60_drift_daily.sql:18,23,30)."""
    db = tmp_path / "fleet.duckdb"
    m = tmp_path / "m"
    runs(m, "h1", record("2026-11-20T02:00:00Z"))
    con = warehouse.connect(db)
    load.load_mirror(con, m)
    assert con.execute("SELECT day FROM drift_daily").fetchall() == [
        (datetime(2026, 11, 20).date(),)
    ]
    con.close()

    # the same file, opened the way a user of "DuckDB itself" in New York would
    user = duckdb.connect(str(db), read_only=True)
    try:
        user.execute("SET TimeZone = 'America/New_York'")
        days = user.execute("SELECT day, hosts FROM drift_daily").fetchall()
    finally:
        user.close()
    assert days == [(datetime(2026, 11, 20).date(), 1)], days


def test_rollout_curve_hours_are_utc_hours_in_any_session_time_zone(tmp_path: Path) -> None:
    """rollout_curve's points are whole UTC hours also for a reader in a zone whose offset
    is not whole hours (Asia/Kolkata, +05:30): date_trunc in the session zone put them at
    hh:30 UTC."""
    db = tmp_path / "fleet.duckdb"
    m = tmp_path / "m"
    runs(m, "h1", record(ago(hours=3), git_sha=SHA_A))
    con = warehouse.connect(db)
    load.load_mirror(con, m)
    con.close()
    user = duckdb.connect(str(db), read_only=True)
    try:
        user.execute("SET TimeZone = 'Asia/Kolkata'")
        points = user.execute(
            "SELECT minute(timezone('UTC', hour)), converged FROM rollout_curve(?)", [SHA_A]
        ).fetchall()
    finally:
        user.close()
    assert len(points) >= 3
    assert {p[0] for p in points} == {0}, points
    assert points[-1][1] == 1


def test_rollout_summary_names_its_sha_when_no_host_is_in_scope(
    con: duckdb.DuckDBPyConnection,
) -> None:
    """Contract section 3: rollout_summary(sha) is one row with the column `sha`. With no
    host known (a fresh warehouse, or before the first ingest) the row must still say
    which commit it is about; `any_value(lower(target))` over zero rollout rows is NULL
    (queries/50_rollout_summary.sql:5)."""
    row = con.execute(
        "SELECT sha, hosts, converged FROM rollout_summary(?)", [SHA_A.upper()]
    ).fetchone()
    assert row == (SHA_A, 0, 0), row


def test_rollout_stale_hours_is_not_rounded_to_whole_hours(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Contract section 3: `unreported` = no run in the staleness window, "configurable";
    docs/sql.md: rollout(sha, stale_hours := 24). A window of half an hour must make a
    host silent for 45 minutes unreported; the macro casts stale_hours to BIGINT
    (queries/40_rollout.sql:58), so 0.5 h becomes 1 h and the host stays pending."""
    m = tmp_path / "m"
    runs(m, "h1", record(ago(minutes=45), git_sha="b" * 40))
    load.load_mirror(con, m)
    status = con.execute("SELECT status FROM rollout(?, stale_hours := 0.5)", [SHA_A]).fetchall()
    assert status == [("unreported",)], status


def test_healthy_ignores_a_stale_quarantine_in_the_pool_the_worker_left(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """docs/sql.md: a worker moved to another pool is still listed, stale, by the old one;
    HEALTHY is Y when the worker was active within the last hour and is not quarantined
    now. A worker quarantined in its old pool (typically why it was re-imaged into a new
    one) and active 5 minutes ago in the new pool, unquarantined there, is healthy. One
    `ingest-workers --pool new --pool old` gives both rows one fetch time, and
    latest_activity takes "the larger" quarantine of that fetch, the old pool's
    (queries/10_latest_runs.sql:45-46), so the host reads HEALTHY N forever."""
    host = "t-linux64-ms-001.test.releng.mdc1.mozilla.com"
    m = tmp_path / "m"
    runs(m, host, record(ago(minutes=20)))
    write_observation(m, host)
    load.load_mirror(con, m)
    now = datetime.now(UTC)
    new = activity.Worker("releng-hardware/talos-new", "mdc1", "t-linux64-ms-001",
                          now - timedelta(minutes=5), None, {})  # fmt: skip
    old = activity.Worker("releng-hardware/talos-old", "mdc1", "t-linux64-ms-001",
                          now - timedelta(days=3), now + timedelta(days=300), {})  # fmt: skip
    # what `fleetstate ingest-workers --pool .../talos-new --pool .../talos-old` stores
    activity.save_activity(con, "http://q", new.pool, [new], observed_at=now)
    activity.save_activity(con, "http://q", old.pool, [old], observed_at=now)
    got = con.execute("SELECT applied, healthy FROM host_state").fetchall()
    assert got == [("-", "Y")], got


def test_healthy_sees_a_quarantine_whatever_pool_was_fetched_last(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The mirror image: the worker is quarantined now in the pool it works in; its stale
    entry in the old pool is not. With one cron job per pool (`ingest-workers --pool new`
    at 10:00, `--pool old` at 10:01), "the quarantine of the latest fetch" is the old
    pool's NULL (queries/10_latest_runs.sql:45-46), so HEALTHY says Y for a quarantined
    worker; fetched in the other order it says N. docs/sql.md: Y only when "not
    quarantined now"."""
    host = "t-linux64-ms-002.test.releng.mdc1.mozilla.com"
    m = tmp_path / "m"
    runs(m, host, record(ago(minutes=20)))
    write_observation(m, host)
    load.load_mirror(con, m)
    now = datetime.now(UTC)
    new = activity.Worker("releng-hardware/talos-new", "mdc1", "t-linux64-ms-002",
                          now - timedelta(minutes=5), now + timedelta(days=7), {})  # fmt: skip
    old = activity.Worker("releng-hardware/talos-old", "mdc1", "t-linux64-ms-002",
                          now - timedelta(days=3), None, {})  # fmt: skip
    activity.save_activity(con, "http://q", new.pool, [new], observed_at=now - timedelta(minutes=1))
    activity.save_activity(con, "http://q", old.pool, [old], observed_at=now)
    got = con.execute("SELECT healthy, quarantined_until IS NOT NULL FROM host_state").fetchall()
    assert got == [("N", True)], got


def test_healthy_of_a_worker_listed_twice_alike_takes_the_quarantine(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Two listings of one worker, equally fresh and fetched at once, one quarantined: the
    quarantine is taken (was: whichever arg_max met first)."""
    host = "t-linux64-ms-003.test.releng.mdc1.mozilla.com"
    m = tmp_path / "m"
    runs(m, host, record(ago(minutes=20)))
    write_observation(m, host)
    load.load_mirror(con, m)
    now = datetime.now(UTC)
    seen = now - timedelta(minutes=5)
    for pool, q in (("p/b", None), ("p/a", now + timedelta(days=1))):
        w = activity.Worker(pool, "mdc1", "t-linux64-ms-003", seen, q, {})
        activity.save_activity(con, "http://q", pool, [w], observed_at=now)
    assert con.execute("SELECT healthy FROM host_state").fetchall() == [("N",)]
