"""Rollout in depth on a hand-built history over a real git graph (merge, revert, override branch).

Every expected value below was worked out by hand from the picture in
analytics_support.build_repo and the runs written in `fleet`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from analytics_support import at, build_repo, hour_base, open_db, write_fleet

from pipeline import analytics, gitgraph

H = 3600
Fleet = tuple[duckdb.DuckDBPyConnection, dict[str, str], datetime]


@pytest.fixture()
def fleet(tmp_path: Path) -> Fleet:
    shas = build_repo(tmp_path / "puppet")
    con = open_db(tmp_path)
    base = hour_base(20)
    write_fleet(con, shas, base)
    return con, shas, base


def statuses(con: duckdb.DuckDBPyConnection, sha: str) -> dict[str, str]:
    return dict(con.execute("SELECT host, status FROM rollout(?)", [sha]).fetchall())


def test_without_graph_only_the_exact_commit_counts(fleet: Fleet) -> None:
    con, s, _ = fleet
    assert statuses(con, s["T"]) == {
        "h1": "converged", "h2": "regressed", "h3": "regressed", "h4": "converged",
        "h5": "pending", "h6": "unreported", "h7": "pending", "h8": "pending", "h9": "pending",
    }  # fmt: skip


def test_with_graph_descendants_count(fleet: Fleet, tmp_path: Path) -> None:
    con, s, _ = fleet
    gitgraph.load_graph(con, tmp_path / "puppet")
    assert statuses(con, s["T"]) == {
        "h1": "converged", "h2": "converged", "h3": "regressed", "h4": "failed",
        "h5": "pending", "h6": "unreported", "h7": "converged", "h8": "converged", "h9": "pending",
    }  # fmt: skip
    summary = con.execute("SELECT * FROM rollout_summary(?)", [s["T"]]).fetchone()
    assert summary is not None
    assert summary[1:7] == (9, 4, 1, 2, 1, 1)
    assert summary[7] == pytest.approx(100 * 4 / 9)
    by_role = con.execute("SELECT role, hosts, converged, pct_converged FROM rollout_by_role(?)",
                          [s["T"]]).fetchall()  # fmt: skip
    assert by_role == [("db", 5, 1, 20.0), ("web", 4, 3, 75.0)]


def test_rollout_in_depth(fleet: Fleet, tmp_path: Path) -> None:
    con, s, base = fleet
    gitgraph.load_graph(con, tmp_path / "puppet")
    r = analytics.rollout(con, s["T"])
    summ = r.summary.row(0, named=True)
    assert summ["first_seen"] == at(base, 0)
    assert summ["subject"] == "T"
    assert summ["branches"] == ["main"]
    # time to converge since first seen: h1 0 h, h2 2 h, h7 8 h, h8 10 h (nearest rank)
    assert (summ["p50_converge_s"], summ["p90_converge_s"], summ["max_converge_s"]) == (
        2 * H, 10 * H, 10 * H,
    )  # fmt: skip
    hosts = {row["host"]: row for row in r.hosts.iter_rows(named=True)}
    ttc = {h: row["time_to_converge_s"] for h, row in hosts.items() if row["status"] == "converged"}
    assert ttc == {"h1": 0, "h2": 2 * H, "h7": 8 * H, "h8": 10 * H}
    assert hosts["h2"]["converged_at"] == at(base, 2)
    # behind/ahead of T: anc(T) = {A, B, T}
    distance = {h: (row["behind"], row["ahead"]) for h, row in hosts.items()}
    assert distance == {
        "h1": (0, 0), "h2": (0, 4), "h3": (1, 1), "h4": (0, 5), "h5": (1, 1),
        "h6": (1, 0), "h7": (0, 1), "h8": (0, 5), "h9": (1, 0),
    }  # fmt: skip
    # the curve: +h1@0 +h3,h4@1 +h2@2 -h3@3 -h4@4 +h7@8 +h8@10, flat to the current hour
    # (20 or 21 hours later: the test may straddle an hour boundary)
    assert r.curve["hour"].to_list() == [base + timedelta(hours=i) for i in range(r.curve.height)]
    assert r.curve.height in (21, 22)
    assert r.curve["converged"].to_list() == [1, 3, 4, 3, 2, 2, 2, 2, 3, 3] + [4] * (
        r.curve.height - 10
    )
    assert r.curve["converged"][-1] == summ["converged"]
    roles = {row["role"]: row for row in r.roles.iter_rows(named=True)}
    web = roles["web"]
    assert (web["hosts"], web["converged"], web["regressed"]) == (4, 3, 1)
    assert (roles["db"]["hosts"], roles["db"]["converged"], roles["db"]["pending"]) == (5, 1, 2)
    assert roles["db"]["pct_converged"] == 20.0
    # stragglers: longest waiting first; h3 left T at +3 h, h4 at +4 h
    strag = [(x["host"], x["waiting_since"], x["failures"], x["failure_exit_codes"])
             for x in r.stragglers.iter_rows(named=True)]  # fmt: skip
    assert strag == [
        ("h9", at(base, 0), 1, [4]), ("h5", at(base, 0), 0, []), ("h6", at(base, 0), 0, []),
        ("h3", at(base, 3), 0, []), ("h4", at(base, 4), 2, [1, 1]),
    ]  # fmt: skip
    assert not r.complete


def test_role_filter_and_branch_of_override(fleet: Fleet, tmp_path: Path) -> None:
    con, s, _ = fleet
    gitgraph.load_graph(con, tmp_path / "puppet")
    r = analytics.rollout(con, s["T"], role="web")
    summ = r.summary.row(0, named=True)
    assert (summ["hosts"], summ["converged"], summ["pct_converged"]) == (4, 3, 75.0)
    # web curve: h1@0, h3@1, h2@2, -h3@3, h8@10
    assert r.curve["converged"].to_list()[:4] == [1, 2, 3, 2]
    assert r.curve["converged"][-1] == 3
    branches = dict(con.execute("SELECT sha, branches FROM commit_branches").fetchall())
    assert branches[s["H"]] == ["hotfix"]
    assert branches[s["E"]] == ["feature", "main"]
    assert branches[s["B"]] == ["feature", "hotfix", "main"]


def test_every_analytics_name_answers_on_an_empty_warehouse(tmp_path: Path) -> None:
    con = open_db(tmp_path)
    sha = "0" * 40
    for query in (
        "SELECT * FROM commit_ancestry([?])", "SELECT * FROM commit_branches WHERE ? IS NOT NULL",
        "SELECT * FROM commit_distance(?, [])", "SELECT rollout_first_seen(?)",
        "SELECT * FROM rollout_events(?)", "SELECT * FROM rollout_hosts(?)",
        "SELECT * FROM rollout_curve(?)", "SELECT * FROM rollout_by_role(?)",
        "SELECT * FROM drift_daily WHERE ? IS NOT NULL",
        "SELECT * FROM host_intervals WHERE ? IS NOT NULL",
    ):  # fmt: skip
        con.execute(query, [sha]).fetchall()
    r = analytics.rollout(con, sha)
    assert r.hosts.is_empty() and r.curve.is_empty() and r.summary["hosts"][0] == 0
    assert not r.complete
