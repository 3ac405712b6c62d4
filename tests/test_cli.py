"""The fleetstate command end to end, as a user runs it: a real process, a real warehouse."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from clirun import REPO, fs
from factories import SHA_A, SHA_B, ago, line, record, write_history, write_observation

from pipeline import samplefleet

COMMANDS = ("ingest", "status", "rollout", "history", "drift", "sql", "rebuild", "demo")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, samplefleet.SampleSummary]:
    """The sample fleet, generated to end now, ingested through the command."""
    root = tmp_path_factory.mktemp("sample")
    summary = samplefleet.generate(root / "mirror", datetime.now(UTC).replace(microsecond=0))
    db = root / "wh.duckdb"
    done = fs(db, "ingest", "--from", str(root / "mirror"))
    assert done.returncode == 0, done.stderr
    return db, summary


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str, tmp_path: Path) -> None:
    done = fs(tmp_path / "x.duckdb", command, "--help")
    assert done.returncode == 0
    assert "Example:" in done.stdout
    assert "%%" not in done.stdout  # click does not unescape it: it was shown as is


def test_command_list_shows_each_summary_whole(tmp_path: Path) -> None:
    """typer's rich command list kept the line breaks of a two-line docstring summary
    (`rollout` read "how far behind or ahead each" and "host is" on separate rows, cut
    by the box); click's own cuts a summary to fit with '...'."""
    top = " ".join(fs(tmp_path / "x.duckdb", "--help").stdout.split())
    from pipeline.cli import app

    for info in app.registered_commands:
        summary = (info.callback.__doc__ or "").split("\n\n")[0] if info.callback else ""
        assert " ".join(summary.split()) in top, info.callback


def test_help_shows_the_defaults_of_paths(tmp_path: Path) -> None:
    """Defaults written in square brackets were taken for rich markup and vanished."""
    top = fs(tmp_path / "x.duckdb", "--help").stdout
    assert "data/fleetstate.duckdb" in top
    ingest = " ".join(fs(tmp_path / "x.duckdb", "ingest", "--help").stdout.split())
    for words in ("~/.ssh/config", "~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts"):
        assert words in ingest.replace("│ ", "").replace(" │", ""), words


def test_status_json_has_one_object_per_host_with_stable_keys(
    sample: tuple[Path, samplefleet.SampleSummary],
) -> None:
    db, summary = sample
    done = fs(db, "status", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert sorted(r["host"] for r in rows) == sorted(summary.hosts)
    for key in (
        "host",
        "role",
        "os",
        "pp_sha",
        "pp_ts",
        "pp_success",
        "applied",
        "healthy",
        "last_seen",
        "reachable",
    ):
        assert key in rows[0]
    assert {r["applied"] for r in rows} <= {"Y", "N", "-", "?"}


def test_status_table_shows_short_sha_and_ages(
    sample: tuple[Path, samplefleet.SampleSummary],
) -> None:
    db, summary = sample
    done = fs(db, "status")
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header == ["HOST", "ROLE", "OS", "PP_SHA", "PP_LAST", "APPLIED", "HEALTHY", "LAST_SEEN"]
    assert summary.newest_sha[:7] in done.stdout and summary.newest_sha[:8] not in done.stdout
    assert "FAIL" in done.stdout
    assert "\x1b[" not in done.stdout  # no colour when not a terminal
    assert "hosts; applied:" in done.stderr


def test_status_filter_on_typed_values(sample: tuple[Path, samplefleet.SampleSummary]) -> None:
    db, summary = sample
    failing = json.loads(fs(db, "status", "-f", "json", "--filter", "pp_success=false").stdout)
    assert failing and all(r["pp_success"] is False for r in failing)
    stale = json.loads(fs(db, "status", "-f", "json", "--filter", "pp_last>1d").stdout)
    expected = {h for h, s in summary.expected_status.items() if s == "unreported"}
    assert {r["host"] for r in stale} == expected
    either = json.loads(
        fs(db, "status", "-f", "json", "--filter", "os=Darwin|Linux applied!=?").stdout
    )
    assert len(either) == len(summary.hosts)
    talos = json.loads(
        fs(db, "status", "-f", "json", "--filter", "role~TALOS sort:pp_last:desc").stdout
    )
    assert talos and all("talos" in r["role"] for r in talos)
    ages = [r["pp_age_s"] for r in talos]
    assert ages == sorted(ages, reverse=True)
    bad = fs(db, "status", "--filter", "nosuch=1")
    assert bad.returncode == 2 and "unknown filter column" in bad.stderr  # usage


def test_rollout_matches_the_sample_ground_truth(
    sample: tuple[Path, samplefleet.SampleSummary],
) -> None:
    db, summary = sample
    done = fs(db, "rollout", summary.newest_sha[:9], "--format", "json")
    assert done.returncode == 0, done.stderr
    hosts = json.loads(done.stdout)  # the contract's json: an array of objects, one per host
    assert {h["host"]: h["status"] for h in hosts} == summary.expected_status
    (counts,) = json.loads(
        fs(db, "rollout", summary.newest_sha, "-f", "json", "--part", "summary").stdout
    )
    for status in ("converged", "failed", "pending", "regressed", "unreported"):
        assert counts[status] == list(summary.expected_status.values()).count(status)
    assert counts["sha"] == summary.newest_sha


def test_rollout_gate_exit_codes(sample: tuple[Path, samplefleet.SampleSummary]) -> None:
    db, summary = sample
    assert fs(db, "rollout", summary.newest_sha, "--min", "99").returncode == 3
    assert fs(db, "rollout", summary.newest_sha, "--min", "10").returncode == 0
    role = sorted(set(summary.roles.values()))[0]
    done = fs(db, "rollout", summary.newest_sha, "--role", role, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert rows and {r["role"] for r in rows} == {role}


def test_rollout_prefix_errors_name_the_problem(tmp_path: Path) -> None:
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    twins = ("abcdef1" + "0" * 33, "abcdef1" + "1" * 33)
    write_history(
        mirror,
        "h",
        line(record(ago(hours=1), git_sha=twins[0], run_id="1"))
        + line(record(ago(hours=1), git_sha=twins[1], run_id="2")),
    )
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    ambiguous = fs(db, "rollout", "abcdef1")
    assert ambiguous.returncode == 1 and "ambiguous" in ambiguous.stderr
    assert "abcdef100000" in ambiguous.stderr and "abcdef111111" in ambiguous.stderr
    unknown = fs(db, "rollout", "1234567")
    assert unknown.returncode == 1 and "no commit starting with 1234567" in unknown.stderr
    short = fs(db, "rollout", "abc")
    assert short.returncode == 2 and "7+ hex" in short.stderr  # usage
    assert "Traceback" not in ambiguous.stderr + unknown.stderr + short.stderr


def test_history_newest_first(tmp_path: Path) -> None:
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(
        mirror,
        "h",
        line(record(ago(hours=2), git_sha=SHA_A, run_id="old"))
        + line(record(ago(hours=1), git_sha=SHA_B, run_id="new")),
    )
    fs(db, "ingest", "--from", str(mirror))
    rows = json.loads(fs(db, "history", "h", "--format", "json").stdout)
    assert [r["run_id"] for r in rows] == ["new", "old"]
    missing = fs(db, "history", "nope")
    assert missing.returncode == 1 and "not in the warehouse" in missing.stderr


def test_drift_json_and_since(sample: tuple[Path, samplefleet.SampleSummary]) -> None:
    db, _ = sample
    week = json.loads(fs(db, "drift", "--since", "7d", "--format", "json").stdout)
    month = json.loads(fs(db, "drift", "--since", "40d", "--format", "json").stdout)
    assert 0 < len(week) < len(month)
    assert {"day", "role", "hosts", "distinct_shas", "modal_sha", "off_modal", "failing"} <= set(
        week[0]
    )
    bad = fs(db, "drift", "--since", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr  # usage


def test_sql_is_read_only(sample: tuple[Path, samplefleet.SampleSummary]) -> None:
    db, summary = sample
    done = fs(db, "sql", "SELECT count(*) AS n FROM host_state", "--format", "json")
    assert json.loads(done.stdout) == [{"n": len(summary.hosts)}]
    for write in (
        "DELETE FROM runs",
        "CREATE TABLE x (i INT)",
        "INSERT INTO meta VALUES ('a', 'b')",
        "ATTACH '/tmp/other.duckdb' AS o",
        "COPY runs TO '/tmp/leak.csv'",
    ):
        refused = fs(db, "sql", write)
        assert refused.returncode == 1, write
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert not Path("/tmp/leak.csv").exists()
    assert (
        json.loads(fs(db, "sql", "SELECT count(*) AS n FROM runs", "-f", "json").stdout)[0]["n"] > 0
    )


def test_rejects_are_queryable_with_their_bytes(
    sample: tuple[Path, samplefleet.SampleSummary],
) -> None:
    db, summary = sample
    rows = json.loads(
        fs(db, "sql", "SELECT host, byte_offset, reason FROM rejects", "-f", "json").stdout
    )
    assert sorted((r["host"], r["byte_offset"]) for r in rows) == sorted(
        (m.host, m.byte_offset) for m in summary.malformed
    )


def test_demo_runs_and_refuses_to_overwrite_real_data(tmp_path: Path) -> None:
    db = tmp_path / "data" / "fleetstate.duckdb"
    done = fs(db, "demo", "--mirror", str(tmp_path / "demo-mirror"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "converged" in done.stdout and "HOST" in done.stdout
    flags = json.loads(
        fs(db, "sql", "SELECT DISTINCT applied, healthy FROM host_state", "-f", "json").stdout
    )
    assert {f["healthy"] for f in flags} == {"Y", "N"}  # the sample's worker activity
    assert {f["applied"] for f in flags} >= {"Y", "N", "-"}
    again = fs(db, "demo", "--mirror", str(tmp_path / "demo-mirror"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    real = tmp_path / "real.duckdb"
    write_history(tmp_path / "m", "h", line(record(run_id="x")))
    write_observation(tmp_path / "m", "h")
    fs(real, "ingest", "--from", str(tmp_path / "m"))
    refused = fs(real, "demo", "--mirror", str(tmp_path / "demo-mirror"))
    assert refused.returncode == 1 and "holds real data" in refused.stderr


def test_demo_leaves_the_checkout_as_it_was(tmp_path: Path) -> None:
    """The demo regenerates its sample each run (ages are live): into a git-ignored
    directory, never over tracked files (a copy of one run was once committed)."""
    done = fs(tmp_path / "data" / "fleetstate.duckdb", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = {p.name for p in (tmp_path / "data").iterdir()} - {"fleetstate.duckdb.wal"}
    # the warehouse's guard stays, empty, beside the warehouse; the demo's lock is removed
    assert written == {"demo", "fleetstate.duckdb", "fleetstate.duckdb.lock"}
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert {"/data/demo/", "/data/.demo*", "/data/fleetstate.duckdb*"} <= set(ignored)


def test_rebuild_from_the_mirror_gives_the_same_warehouse(tmp_path: Path) -> None:
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h", line(record(run_id="a")) + b"bad\n" + line(record(run_id="b")))
    fs(db, "ingest", "--from", str(mirror))
    before = fs(db, "sql", "SELECT run_id FROM runs ORDER BY 1", "-f", "json").stdout
    done = fs(db, "rebuild", "--mirror", str(mirror))
    assert done.returncode == 0, done.stderr
    assert fs(db, "sql", "SELECT run_id FROM runs ORDER BY 1", "-f", "json").stdout == before
    assert json.loads(fs(db, "sql", "SELECT count(*) n FROM rejects", "-f", "json").stdout) == [
        {"n": 1}
    ]


def test_missing_warehouse_is_a_clear_error(tmp_path: Path) -> None:
    done = fs(tmp_path / "none.duckdb", "status")
    assert done.returncode == 1 and "no warehouse" in done.stderr


def test_sql_shows_every_type_and_names_what_it_cannot(
    sample: tuple[Path, samplefleet.SampleSummary],
) -> None:
    db, _ = sample
    done = fs(
        db, "sql", "SELECT host, now() - max(ts) AS age, INTERVAL 3 HOUR AS three, "
        "union_value(k := 1) AS u, 1.50::DECIMAL(5, 2) AS d FROM runs GROUP BY host", "-f", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert rows and rows[0]["three"] == "PT3H" and rows[0]["u"] == 1 and rows[0]["d"] == "1.50"
    table = fs(db, "sql", "SELECT INTERVAL 90 MINUTE AS i")
    assert table.returncode == 0 and "1:30:00" in table.stdout
    bc = fs(db, "sql", "SELECT '0000-01-01'::TIMESTAMP AS t, 1 AS n")
    assert bc.returncode == 0, bc.stderr  # shown as DuckDB writes it
    assert "0001-01-01 (BC)" in bc.stdout
    for query in ("SELECT 1 +", "SELECT * FROM nowhere"):
        bad = fs(db, "sql", query)
        assert bad.returncode == 1 and bad.stderr.count("\n") == 1, query
        assert "Traceback" not in bad.stderr


def _three_hosts(tmp_path: Path) -> Path:
    """h1 and h2 applied SHA_A an hour ago, h3 SHA_B: 66.67% converged on SHA_A."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    for host, sha in (("h1", SHA_A), ("h2", SHA_A), ("h3", SHA_B)):
        write_history(mirror, host, line(record(ago(hours=1), git_sha=sha, run_id=host)))
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    return db


def test_rollout_gate_compares_the_exact_share(tmp_path: Path) -> None:
    db = _three_hosts(tmp_path)
    assert fs(db, "rollout", SHA_A, "--min", "66.66").returncode == 0
    # the summary shows 66.7, the share is 66.666...: shown with the digits that make it
    # read as below the gate
    for above, shown in (("66.67", "66.667"), ("66.7", "66.67")):
        done = fs(db, "rollout", SHA_A, "--min", above)
        assert done.returncode == 3, above
        assert f"2 of 3 hosts converged ({shown}%) < {above}%" in done.stderr
    none = fs(db, "rollout", SHA_A, "--role", "no-such-role", "--min", "0")
    assert none.returncode == 3 and "no hosts in scope" in none.stderr


def test_rollout_watch_as_json_writes_one_document(tmp_path: Path) -> None:
    db = _three_hosts(tmp_path)
    done = fs(
        db, "rollout", SHA_A, "--watch", "--from", str(tmp_path / "m"), "--interval", "0",
        "--iterations", "3", "--part", "summary", "--format", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (summary,) = json.loads(done.stdout)  # one array, of the last refresh
    assert summary["converged"] == 2
    assert done.stderr.count("2 of 3 hosts converged") == 2  # the refreshes before it


def test_a_file_that_is_not_a_warehouse_is_named(tmp_path: Path) -> None:
    for name in ("hosts.csv", "notes.txt"):
        path = tmp_path / name
        path.write_text("a,b\n1,2\n")
        for command in (("status",), ("ingest", "--from", str(tmp_path))):
            done = fs(path, *command)
            assert done.returncode == 1 and "is not a DuckDB warehouse" in done.stderr, done.stderr
        assert path.read_text() == "a,b\n1,2\n"


def test_text_from_hosts_and_git_reaches_the_terminal_escaped(tmp_path: Path) -> None:
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    evil = "web\x1b[2J\x1b]0;pwned\x07\nnext"
    write_history(mirror, "h", line(record(ago(hours=1), git_sha=SHA_A, role=evil, run_id="1")))
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    rollout = fs(db, "rollout", SHA_A)  # the role chart and the header are not table cells
    assert rollout.returncode == 0 and r"web\x1b[2J\x1b]0;pwned\x07\nnext" in rollout.stdout
    error = fs(db, "sql", "SELECT CAST('\x1b[2J' AS INTEGER)")
    assert error.returncode == 1 and r"\x1b[2J" in error.stderr
    for out in (rollout.stdout, rollout.stderr, error.stdout, error.stderr):
        assert "\x1b" not in out and "\x07" not in out
