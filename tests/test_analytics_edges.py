"""Analytics against the contract's exact definitions, on adversarial hand-built fleets:
runs in the same second, roles, unknown hashes, unseen commits, odd git data.

Each test states the contract/docs rule it checks; all of them failed before their fix.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import duckdb
from factories import (
    OVR_1,
    OVR_2,
    SHA_A,
    SHA_B,
    ago,
    line,
    record,
    write_history,
    write_observation,
)
from typer.testing import CliRunner

from pipeline import gitgraph, load, warehouse
from pipeline.cli import app

DAY = "2026-11-10"


def runs(mirror: Path, host: str, *recs: dict[str, object]) -> None:
    write_history(mirror, host, b"".join(line(dict(r, host=host)) for r in recs))


def cli(db: Path, *args: str, catch: bool = False) -> Any:
    """The command as `fleetstate` runs it; with `catch`, a domain error (which main() turns
    into exit 1) is returned as the result's exception instead of raised."""
    return CliRunner().invoke(app, ["--db", str(db), *args], catch_exceptions=catch)


def tie_host(m: Path, host: str = "tie") -> None:
    """Two runs finishing in the same second: the successful one first in the file, the failed
    one appended later. run_recency (history, then the line appended later) makes the
    failed run the latest."""
    runs(
        m, host,
        record(f"{DAY}T11:00:00Z", run_id="b-ok", git_sha=SHA_A),
        record(f"{DAY}T11:00:00Z", run_id="a-fail", git_sha=SHA_A, success=False, exit_code=1),
    )  # fmt: skip


# --- equal timestamps: every "latest" must be the same run -------------------------------


def test_runs_in_the_same_second_are_ordered_as_appended_not_by_run_id(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The wrapper appends a host's runs as they finish: of two in the same second, the
    line appended later is the later run, whatever the uuids say."""
    m = tmp_path / "m"
    runs(
        m, "h",
        record(f"{DAY}T11:00:00Z", run_id="b-first", git_sha=SHA_A),
        record(f"{DAY}T11:00:00Z", run_id="c-second", git_sha=SHA_B, success=False, exit_code=1),
    )  # fmt: skip
    load.load_mirror(con, m)
    assert con.execute("SELECT pp_run_id FROM host_state").fetchall() == [("c-second",)]
    assert con.execute("SELECT hosts, failing FROM drift_daily").fetchall() == [(1, 1)]
    ordered = con.execute(
        "SELECT run_id FROM runs ORDER BY run_recency(ts, source, byte_offset, run_id) DESC"
    ).fetchall()
    assert ordered == [("c-second",), ("b-first",)]


def test_drift_daily_last_run_of_the_day_breaks_ties_like_latest_run(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    tie_host(m)
    load.load_mirror(con, m)
    assert con.execute("SELECT pp_run_id, pp_success FROM host_state").fetchall() == [
        ("a-fail", False)
    ]
    # the host's last run of the day is the one status calls its latest: it failed
    assert con.execute("SELECT hosts, failing FROM drift_daily").fetchall() == [(1, 1)]


def test_history_newest_first_puts_the_latest_run_first(db_path: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    tie_host(m)
    con = warehouse.connect(db_path)
    load.load_mirror(con, m)
    latest = con.execute("SELECT pp_run_id FROM host_state").fetchall()[0][0]
    con.close()
    result = cli(db_path, "history", "tie", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["run_id"] == latest


def tie_converged(m: Path) -> None:
    """Ok elsewhere 6 h ago, then two successful runs in the same second: elsewhere (b1)
    and at B (a1), appended in that order. The tie-break (the line appended later) makes
    a1 the latest successful run: converged on B."""
    t = ago(hours=2)
    runs(
        m, "h",
        record(ago(hours=6), git_sha=SHA_A, run_id="z0"),
        record(t, git_sha=SHA_A, run_id="b1"),
        record(t, git_sha=SHA_B, run_id="a1"),
    )  # fmt: skip


def test_converged_host_has_a_converged_at_when_the_other_commit_ran_in_the_same_second(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    tie_converged(m)
    load.load_mirror(con, m)
    status, converged_at = con.execute(
        "SELECT status, converged_at FROM rollout(?)", [SHA_B]
    ).fetchall()[0]
    assert status == "converged"
    # docs: converged_at is "set whenever the latest successful run is at the target"
    assert converged_at is not None
    ttc = con.execute("SELECT time_to_converge_s FROM rollout_hosts(?)", [SHA_B]).fetchall()
    assert ttc[0][0] is not None


def test_host_intervals_current_commit_is_the_latest_successful_runs(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    tie_converged(m)
    load.load_mirror(con, m)
    last_ok = con.execute("SELECT last_ok_sha FROM host_state").fetchall()[0][0]
    assert last_ok == SHA_B
    current = con.execute("SELECT git_sha FROM host_intervals WHERE to_ts IS NULL").fetchall()
    assert current == [(SHA_B,)]


# --- roles: rollout's scope is host_state's ------------------------------------------------


def test_rollout_role_is_host_state_role(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    m = tmp_path / "m"
    write_observation(m, "obs-role", observed_at=ago(hours=2), role="X")
    write_observation(m, "obs-role", observed_at=ago(hours=1), role=None)
    runs(
        m, "prep-role",
        record(ago(hours=3), role="X", git_sha=SHA_A),
        record(ago(hours=1), role=None, git_sha=None, success=False, exit_code=None,
               stage="prepare"),
    )  # fmt: skip
    write_observation(m, "prep-role", observed_at=ago(hours=2), role="X")
    write_observation(m, "prep-role", observed_at=ago(minutes=30), role=None)
    load.load_mirror(con, m)
    mismatched = con.execute(
        "SELECT host, h.role, r.role FROM host_state h JOIN rollout(?) r USING (host) "
        "WHERE h.role IS DISTINCT FROM r.role ORDER BY host",
        [SHA_A],
    ).fetchall()
    assert mismatched == []


# --- drift: an unknown current hash is not a difference ------------------------------------


def test_drift_does_not_count_unknown_current_hashes_as_differences(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    # the collector could not read the vault (no sudo): current vault hash unknown
    runs(m, "v-nosudo", record(f"{DAY}T10:00:00Z", role="A"))
    write_observation(m, "v-nosudo", observed_at=f"{DAY}T12:00:00Z", vault_sha=None,
                      vault_status="no_sudo", role="A")  # fmt: skip
    # override present but its hash could not be read (host_state: APPLIED '?')
    runs(m, "o-unreadable", record(f"{DAY}T10:00:00Z", role="A", override_sha=OVR_1))
    write_observation(m, "o-unreadable", observed_at=f"{DAY}T12:00:00Z", override_present=True,
                      override_sha=None, role="A")  # fmt: skip
    load.load_mirror(con, m)
    applied = dict(con.execute("SELECT host, applied FROM host_state").fetchall())
    assert applied["o-unreadable"] == "?"
    assert con.execute("SELECT override_differs, vault_differs FROM drift_daily").fetchall() == [
        (0, 0)
    ]


def test_drift_chart_config_not_applied_counts_hosts(db_path: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    runs(m, "both", record(f"{DAY}T10:00:00Z", role="A", override_sha=OVR_1))
    write_observation(m, "both", observed_at=f"{DAY}T12:00:00Z", override_present=True,
                      override_sha=OVR_2, vault_sha="e" * 64, role="A")  # fmt: skip
    con = warehouse.connect(db_path)
    load.load_mirror(con, m)
    con.close()
    out = cli(db_path, "drift", "--since", "3650d").stdout
    assert "0/1 off modal" in out
    assert "2 config not applied" not in out  # one host cannot have two hosts' worth


# --- rollout: sha resolution, gate message, labels -----------------------------------------


def test_rollout_of_a_full_sha_no_host_ran_yet_is_a_report_not_an_error(
    db_path: Path, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    runs(m, "h1", record(ago(hours=1), git_sha=SHA_A))
    con = warehouse.connect(db_path)
    load.load_mirror(con, m)
    con.close()
    new = "c" * 40  # just pushed: a full sha is a valid SHA per the contract
    result = cli(db_path, "rollout", new, "--min", "50", "--format", "json", "--part", "summary",
                 catch=True)  # fmt: skip
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 3, result.output  # gate not met, not "error"
    summary = json.loads(result.stdout)[0]
    assert (summary["hosts"], summary["pending"], summary["converged"]) == (1, 1, 0)


def test_gate_message_does_not_say_a_share_is_below_itself(db_path: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    for i, sha in enumerate((SHA_B, SHA_B, SHA_A)):
        runs(m, f"h{i}", record(ago(hours=1), git_sha=sha))
    con = warehouse.connect(db_path)
    load.load_mirror(con, m)
    con.close()
    result = cli(db_path, "rollout", SHA_B, "--min", "66.67")
    assert result.exit_code == 3
    assert "(66.67%) < 66.67%" not in result.output


def test_rollout_table_does_not_label_hosts_without_a_role_as_none(
    db_path: Path, tmp_path: Path
) -> None:
    m = tmp_path / "m"
    runs(m, "h1", record(ago(hours=1), git_sha=SHA_B))
    write_observation(m, "unreachable", reachable=False, error="timed out", role=None, os=None,
                      vault_sha=None)  # fmt: skip
    con = warehouse.connect(db_path)
    load.load_mirror(con, m)
    con.close()
    out = cli(db_path, "rollout", SHA_B).stdout
    by_role = out.split("converged by role", 1)[1].split("stragglers", 1)[0]
    assert "None" not in by_role  # status shows such a host's role as empty


def test_negative_stale_hours_is_a_usage_error(db_path: Path, tmp_path: Path) -> None:
    m = tmp_path / "m"
    runs(m, "h1", record(ago(hours=1), git_sha=SHA_A))
    con = warehouse.connect(db_path)
    load.load_mirror(con, m)
    con.close()
    result = cli(db_path, "rollout", SHA_A, "--stale-hours", "-5")
    assert result.exit_code == 2


# --- commit graph ------------------------------------------------------------------------


def test_ingest_git_reads_a_subject_holding_the_record_separator(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "-C", str(repo), "init", "-q", "-b", "main"], check=True)
    subprocess.run(
        ["git", "-C", str(repo), *env, "commit", "-q", "--allow-empty", "-m", "odd \x1e subject"],
        check=True,
    )
    stats = gitgraph.load_graph(con, repo)  # ValueError on main (traceback from the CLI)
    assert stats.commits_added == 1
