"""host_state APPLIED/HEALTHY and rollout statuses on hand-built fleets, one case per value."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from factories import (
    OVR_1,
    OVR_2,
    SHA_A,
    SHA_B,
    SHA_C,
    ago,
    line,
    record,
    write_history,
    write_observation,
)

from pipeline import load, warehouse


def runs(mirror: Path, host: str, *recs: dict[str, object]) -> None:
    write_history(mirror, host, b"".join(line(dict(r, host=host)) for r in recs))


def state(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str]]:
    return {
        h: (a, k)
        for h, a, k in con.execute("SELECT host, applied, healthy FROM host_state").fetchall()
    }


def test_every_query_file_answers_on_an_empty_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    names = [p.stem.split("_", 1)[1] for p in sorted(warehouse.queries_dir().glob("*.sql"))]
    assert names, "queries/ is empty"
    for view in ("host_state", "drift_daily", "latest_run"):
        assert con.execute(f"SELECT count(*) FROM {view}").fetchall() == [(0,)]  # noqa: S608
    assert con.execute("SELECT count(*) FROM rollout(?)", [SHA_A]).fetchall() == [(0,)]
    summary = con.execute("SELECT hosts, pct_converged FROM rollout_summary(?)", [SHA_A]).fetchall()
    assert summary == [(0, None)]
    objects = {
        r[0]
        for r in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal UNION "
            "SELECT function_name FROM duckdb_functions() WHERE function_type = 'table_macro'"
        ).fetchall()
    }
    for contract_name in ("host_state", "rollout", "rollout_summary", "drift_daily"):
        assert contract_name in objects


def test_applied_values(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    m = tmp_path / "m"
    # Y: override present, latest run succeeded with the same override
    runs(m, "y", record(ago(hours=1), override_sha=OVR_1))
    write_observation(m, "y", override_present=True, override_sha=OVR_1)
    # N: the latest run failed
    runs(m, "n-failed", record(ago(hours=2)), record(ago(hours=1), success=False, exit_code=6))
    write_observation(m, "n-failed")
    # N: a new override that puppet has not applied yet
    runs(m, "n-new", record(ago(hours=1), override_sha=OVR_1))
    write_observation(m, "n-new", override_present=True, override_sha=OVR_2)
    # N: override set, but the last run applied none
    runs(m, "n-set", record(ago(hours=1)))
    write_observation(m, "n-set", override_present=True, override_sha=OVR_1)
    # N: override removed, but the last run still applied it
    runs(m, "n-removed", record(ago(hours=1), override_sha=OVR_1))
    write_observation(m, "n-removed", override_present=False, override_sha=None)
    # -: no override now, and none applied
    runs(m, "dash", record(ago(hours=1)))
    write_observation(m, "dash")
    # ?: a host seen but with no run data
    write_observation(m, "unknown")
    # never contacted: judged by what its latest run read
    runs(m, "no-contact", record(ago(hours=1), override_sha=OVR_1))
    load.load_mirror(con, m)
    applied = {h: a for h, (a, _) in state(con).items()}
    assert applied == {
        "y": "Y", "n-failed": "N", "n-new": "N", "n-set": "N", "n-removed": "N",
        "dash": "-", "unknown": "?", "no-contact": "Y",
    }  # fmt: skip


def test_current_override_comes_from_the_last_successful_contact(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    runs(m, "h", record(ago(hours=1), override_sha=OVR_1))
    write_observation(
        m, "h", observed_at=ago(minutes=30), override_present=True, override_sha=OVR_1
    )
    write_observation(
        m,
        "h",
        observed_at=ago(minutes=5),
        reachable=False,
        error="timed out",
        override_present=None,
        override_sha=None,
        vault_sha=None,
        os=None,
        role=None,
    )
    load.load_mirror(con, m)
    row = con.execute("SELECT applied, reachable, last_error FROM host_state").fetchall()
    assert row == [("Y", False, "timed out")]


def test_healthy_values(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    m = tmp_path / "m"
    for host in ("active", "idle", "failing", "quarantined", "no-data"):
        ok = host != "failing"
        runs(m, host, record(ago(hours=1), success=ok, exit_code=0 if ok else 1))
        write_observation(m, host)
    load.load_mirror(con, m)
    con.executemany(
        "INSERT INTO worker_activity (host, observed_at, last_active, quarantined_until) "
        "VALUES (?, now(), ?, ?)",
        [
            ("active", ago(minutes=10), None),
            ("idle", ago(hours=3), None),
            ("failing", ago(minutes=10), None),
            ("quarantined", ago(minutes=10), ago(hours=-5)),
        ],
    )
    healthy = {h: k for h, (_, k) in state(con).items()}
    assert healthy == {
        "active": "Y",
        "idle": "N",
        "failing": "N",
        "quarantined": "N",
        "no-data": "-",
    }


def rollout(con: duckdb.DuckDBPyConnection, sha: str) -> dict[str, str]:
    return dict(con.execute("SELECT host, status FROM rollout(?)", [sha]).fetchall())


def test_rollout_statuses(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    m = tmp_path / "m"
    runs(m, "converged", record(ago(hours=5), git_sha=SHA_A), record(ago(hours=1), git_sha=SHA_B))
    runs(
        m,
        "converged-after-failure",
        record(ago(hours=3), git_sha=SHA_B, success=False, exit_code=1),
        record(ago(hours=1), git_sha=SHA_B),
    )
    runs(
        m,
        "failed",
        record(ago(hours=3), git_sha=SHA_A),
        record(ago(hours=1), git_sha=SHA_B, success=False, exit_code=6),
    )
    runs(m, "regressed", record(ago(hours=3), git_sha=SHA_B), record(ago(hours=1), git_sha=SHA_A))
    runs(m, "pending", record(ago(hours=1), git_sha=SHA_A))
    runs(
        m,
        "pending-prepare-failed",
        record(ago(hours=2), git_sha=SHA_A),
        record(ago(hours=1), git_sha=None, success=False, exit_code=None, stage="prepare"),
    )
    runs(m, "unreported", record(ago(hours=30), git_sha=SHA_A))
    runs(m, "silent-but-converged", record(ago(days=5), git_sha=SHA_B))
    write_observation(m, "never-ran")
    load.load_mirror(con, m)
    assert rollout(con, SHA_B) == {
        "converged": "converged", "converged-after-failure": "converged", "failed": "failed",
        "regressed": "regressed", "pending": "pending", "pending-prepare-failed": "pending",
        "unreported": "unreported", "silent-but-converged": "converged", "never-ran": "unreported",
    }  # fmt: skip
    summary = con.execute("SELECT * FROM rollout_summary(?)", [SHA_B]).fetchall()[0]
    assert summary[1:7] == (9, 3, 1, 2, 1, 2)
    assert summary[7] == pytest.approx(100 * 3 / 9)
    # a shorter staleness window turns the pending host unreported
    short = dict(
        con.execute("SELECT host, status FROM rollout(?, stale_hours := 0)", [SHA_B]).fetchall()
    )
    assert short["pending"] == "unreported" and short["converged"] == "converged"


def test_converged_at_is_the_start_of_the_current_stretch(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    t1, t2, t3, t4 = ago(hours=10), ago(hours=8), ago(hours=6), ago(hours=4)
    runs(
        m,
        "h",
        record(t1, git_sha=SHA_B),
        record(t2, git_sha=SHA_A),
        record(t3, git_sha=SHA_B),
        record(t4, git_sha=SHA_B),
    )
    load.load_mirror(con, m)
    got = con.execute("SELECT status, converged_at FROM rollout(?)", [SHA_B]).fetchall()
    assert got == [("converged", t3)]


def test_descendants_count_as_at_the_target_once_the_graph_is_known(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    runs(m, "on-child", record(ago(hours=1), git_sha=SHA_C))
    load.load_mirror(con, m)
    assert rollout(con, SHA_B) == {"on-child": "pending"}
    con.execute(
        "INSERT INTO git_commits (sha, parents) VALUES (?, []), (?, [?]), (?, [?])",
        [SHA_A, SHA_B, SHA_A, SHA_C, SHA_B],
    )
    assert rollout(con, SHA_B) == {"on-child": "converged"}
    assert rollout(con, SHA_C) == {"on-child": "converged"}


@pytest.mark.parametrize("day_hosts", [3])
def test_drift_daily_counts(con: duckdb.DuckDBPyConnection, tmp_path: Path, day_hosts: int) -> None:
    m = tmp_path / "m"
    day = "2026-11-10"
    runs(
        m,
        "h0",
        record(f"{day}T01:00:00Z", git_sha=SHA_A),
        record(f"{day}T05:00:00Z", git_sha=SHA_B),
    )
    runs(m, "h1", record(f"{day}T02:00:00Z", git_sha=SHA_B, override_sha=OVR_1))
    runs(m, "h2", record(f"{day}T03:00:00Z", git_sha=SHA_A, success=False, exit_code=1))
    load.load_mirror(con, m)
    rows = con.execute(
        "SELECT day::VARCHAR, role, hosts, distinct_shas, modal_sha, off_modal, failing, "
        "with_override "
        "FROM drift_daily"
    ).fetchall()
    assert rows == [(day, "gecko_t_linux_talos", day_hosts, 2, SHA_B, 1, 1, 1)]


def test_docs_sql_names_every_view_and_macro_in_queries(con: duckdb.DuckDBPyConnection) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "sql.md").read_text()
    names = {r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' UNION "
        "SELECT function_name FROM duckdb_functions() "
        "WHERE function_type IN ('table_macro', 'macro') AND schema_name = 'main' AND NOT internal"
    ).fetchall()}  # fmt: skip
    assert "host_state" in names
    missing = sorted(n for n in names if f"`{n}" not in doc)
    assert missing == []


def test_queries_are_applied_again_only_when_their_text_changed(tmp_path: Path) -> None:
    from pipeline import warehouse

    db = tmp_path / "w.duckdb"
    warehouse.connect(db).close()
    con = warehouse.connect(db)
    assert warehouse.apply_queries(con) == []  # same text: nothing to do
    con.execute("UPDATE meta SET value = 'older release' WHERE key = 'queries_sha256'")
    con.execute("DROP VIEW host_state")
    applied = warehouse.apply_queries(con)
    assert "20_host_state.sql" in applied
    assert con.execute("SELECT count(*) FROM host_state").fetchall() == [(0,)]
    con.close()
