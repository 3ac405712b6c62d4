"""An operator following the README: the mistakes and edges a review found, one test each;
each failed before its fix.

Real parts only: a real DuckDB file in tmp_path, the real loader (`ingest --from`) or
plain inserts through pipeline.warehouse, and the real `fleetstate` process
(tests/clirun.py). No network; no assertion on wall time.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clirun import fs
from factories import SHA_A, SHA_B, ago, line, record, write_history, write_observation

from pipeline import warehouse


def _ingest(db: Path, mirror: Path) -> None:
    done = fs(db, "ingest", "--from", str(mirror))
    assert done.returncode == 0, done.stderr


def test_demo_never_deletes_a_mirror_of_real_history(tmp_path: Path) -> None:
    """CHANGELOG: "`demo --mirror DIR` removed any existing DIR (a real mirror, say); it now
    replaces only a mirror it made"; `demo --help`: the mirror is "replaced on each run".
    pipeline/demo.py `_made_by_demo` also takes for the demo's any directory holding only
    directories named like sample hosts, and the sample's names are real releng host names
    (t-linux64-ms-001.test.releng.mdc1.mozilla.com). A mirror-layout directory (contract
    2) of real collected history for such a host, without the collector's `.lock` (made
    with cp/rsync, or `data/sample-fleet` itself), is deleted and replaced by the sample."""
    mirror, db = tmp_path / "collected", tmp_path / "demo.duckdb"
    host = "t-linux64-ms-001.test.releng.mdc1.mozilla.com"
    real = line(record(ago(hours=1), git_sha=SHA_A, run_id="real-run-1", host=host))
    history = write_history(mirror, host, real)

    done = fs(db, "demo", "--mirror", str(mirror))
    assert history.read_bytes() == real, (
        f"demo (exit {done.returncode}) replaced the real history in {mirror}"
    )
    assert done.returncode == 1, done.stderr


def test_rollout_csv_keeps_every_failure_exit_code(tmp_path: Path) -> None:
    """docs/analytics.md: `failures` and `failure_exit_codes` (in order) count every failed
    run since first_seen; csv prints lists space-separated. A failed run whose puppet never
    started (stage prepare, exit_code null: contract 1) vanishes from the csv list
    (pipeline/views.py `_flat`, and `_stragglers_table` for the table, join with polars'
    list.join, which drops nulls): 3 failures show as `1 4`, the json says [1, null, 4]."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h0", line(record(ago(hours=6), git_sha=SHA_B, run_id="h0-1")))
    write_history(
        mirror, "h1",
        line(record(ago(hours=5), git_sha=SHA_A, run_id="r1"))
        + line(record(ago(hours=3), git_sha=SHA_B, run_id="r2", success=False, exit_code=1))
        + line(record(ago(hours=2), git_sha=SHA_B, run_id="r3", success=False,
                      exit_code=None, stage="prepare"))
        + line(record(ago(hours=1), git_sha=SHA_B, run_id="r4", success=False, exit_code=4)),
    )  # fmt: skip
    _ingest(db, mirror)

    as_json = fs(db, "rollout", SHA_B, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    (h1,) = [h for h in json.loads(as_json.stdout) if h["host"] == "h1"]
    assert h1["failures"] == 3 and h1["failure_exit_codes"] == [1, None, 4]

    for part in ("hosts", "stragglers"):
        done = fs(db, "rollout", SHA_B, "--format", "csv", "--part", part)
        assert done.returncode == 0, done.stderr
        (row,) = [r for r in csv.DictReader(io.StringIO(done.stdout)) if r["host"] == "h1"]
        codes = row["failure_exit_codes"].split(" ")
        assert row["failures"] == "3"
        assert codes == ["1", "-", "4"], (
            f"--part {part}: 3 failures, exit codes {row['failure_exit_codes']!r}"
        )
    table = fs(db, "rollout", SHA_B, "--part", "stragglers")
    assert table.returncode == 0 and " 1 - 4 " in table.stdout, table.stdout


def test_rollout_summary_never_reads_100_percent_while_a_host_is_left(tmp_path: Path) -> None:
    """Contract 3: pct_converged = converged / hosts x 100; the rollout is complete only
    when nobody who reports is left. pipeline/views.py `_summary_lines` prints the share
    with `:.1f`, so 2,000 converged of 2,001 hosts reads "100.0% converged" (the gate's
    message already shows enough digits to read as below: cli._share_below)."""
    db = tmp_path / "wh.duckdb"
    con = warehouse.connect(db)
    now = datetime.now(UTC).replace(microsecond=0)
    con.execute(
        """
        INSERT INTO runs (host, run_id, ts, success, exit_code, role, git_sha, source,
                          loaded_at, stage)
        SELECT 'h' || i, 'r' || i, ?::TIMESTAMPTZ, true, 0, 'web',
               CASE WHEN i = 0 THEN ? ELSE ? END, 'history', ?::TIMESTAMPTZ, 'puppet'
        FROM range(2001) t(i)
        """,
        [now - timedelta(hours=1), SHA_B, SHA_A, now],
    )
    con.close()

    done = fs(db, "rollout", SHA_A, "--part", "summary")
    assert done.returncode == 0, done.stderr
    assert "2000 of 2001 hosts" in done.stdout, done.stdout
    assert "100.0% converged" not in done.stdout, done.stdout.splitlines()[2]


def test_observation_rejects_give_the_reason_a_history_line_gets(tmp_path: Path) -> None:
    """docs/record-format.md: observations.jsonl lines are "rejected to the same table, with
    the same whole-line reasons (... `invalid JSON: ...`)", and reasons describe the line
    without its newline. pipeline/load.py `_stage_observations` hands the parser the line
    with its newline (splitlines(keepends=True)), so the same truncated line reads
    "Invalid control character at column 11" as an observation and "Unterminated string
    starting at column 2" as a history line (an empty line: "Expecting value at line 2
    column 1" against "empty line")."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    (mirror / "h1").mkdir(parents=True)
    # a truncated line, an empty line, and a CR inside a string (not a line end)
    lines = b'{"bad json\n' + b"\n" + b'{"a":"x\ry"\n'
    (mirror / "h1" / "history.jsonl").write_bytes(lines)
    (mirror / "h1" / "observations.jsonl").write_bytes(lines)
    _ingest(db, mirror)

    done = fs(
        db, "sql", "SELECT source_path, byte_offset, reason, line FROM rejects "
        "ORDER BY source_path, byte_offset", "-f", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    by_file: dict[str, list[tuple[int, str, str]]] = {}
    for r in rows:
        by_file.setdefault(Path(r["source_path"]).name, []).append(
            (r["byte_offset"], r["reason"], r["line"])
        )
    history, observations = by_file["history.jsonl"], by_file["observations.jsonl"]
    assert history[0][1].startswith("invalid JSON: Unterminated string"), history
    assert history[1][1] == "empty line", history
    assert observations == history


def test_ingest_from_a_missing_directory_leaves_no_empty_warehouse(tmp_path: Path) -> None:
    """README: a command on no warehouse says so ("no warehouse at DB: run `fleetstate
    ingest` (or `demo`) first", exit 1). `ingest --from` with a mistyped directory fails
    (exit 1) but only after pipeline/cli.py `ingest` has opened the warehouse for writing:
    an empty warehouse is left at --db, and `status` then reports an empty fleet, exit 0,
    as if the hosts had vanished."""
    db = tmp_path / "wh.duckdb"
    typo = fs(db, "ingest", "--from", str(tmp_path / "sampel-fleet"))
    assert typo.returncode == 1 and "does not exist" in typo.stderr, typo.stderr

    after = fs(db, "status")
    assert after.returncode == 1 and "no warehouse" in after.stderr, (
        f"status after a failed ingest: exit {after.returncode}, {after.stderr!r}"
    )


def test_ingest_from_a_host_directory_is_not_a_silent_success(tmp_path: Path) -> None:
    """Contract 2: `--from DIR` reads `DIR/<host>/history.jsonl`. Given one level too deep
    (a host's own directory, which holds history.jsonl itself, the easy slip with a
    collector's mirror), the loader finds no host directory and `ingest` exits 0 with
    "0 files" and nothing loaded: a cron ingest would report success forever."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="a1")))
    write_observation(mirror, "h1")

    done = fs(db, "ingest", "--from", str(mirror / "h1"))
    assert done.returncode != 0, done.stderr


def test_an_empty_warehouse_file_is_what_status_says_it_is(tmp_path: Path) -> None:
    """A 0-byte file at --db (touched, or left by a full disk) is "no warehouse" to `status`
    ("run `fleetstate ingest` (or `demo`) first") and to `demo` (nothing to lose), but the
    advised `ingest` then fails with "cannot open warehouse ...: not a valid DuckDB
    database file" (pipeline/warehouse.py `connect`: the 0-byte case is handled only for
    read-only opens). Following the message must work."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="a1")))
    db.touch()

    status = fs(db, "status")
    assert status.returncode == 1 and "run `fleetstate ingest`" in status.stderr

    done = fs(db, "ingest", "--from", str(mirror))
    assert done.returncode == 0, done.stderr


def test_rebuild_does_not_drop_runs_loaded_from_another_directory(tmp_path: Path) -> None:
    """README (rebuild): it loads the warehouse again from the mirror "(...: no run,
    observation or reject is lost)"; what the mirror lacks "(loaded with `ingest --from`
    another directory) would be dropped, so rebuild refuses and names it". The check
    (pipeline/cli.py `rebuild`, `keeps_every_host`) compares host names only: a host the
    mirror has, whose older runs were loaded from another directory (an archive of its
    history from before the collector), loses those runs in silence, exit 0."""
    collected, archive, db = tmp_path / "mirror", tmp_path / "archive", tmp_path / "wh.duckdb"
    write_history(collected, "h1", line(record(ago(hours=2), git_sha=SHA_A, run_id="new")))
    write_history(archive, "h1", line(record(ago(days=40), git_sha=SHA_B, run_id="archived")))
    _ingest(db, collected)
    _ingest(db, archive)

    done = fs(db, "rebuild", "--mirror", str(collected))
    runs = fs(db, "sql", "SELECT run_id FROM runs ORDER BY run_id", "-f", "json")
    kept = [r["run_id"] for r in json.loads(runs.stdout)]
    assert done.returncode != 0 or kept == ["archived", "new"], (
        f"rebuild exit {done.returncode}, runs left: {kept}"
    )


def test_ingest_from_the_directory_above_the_mirror_names_the_mirror(tmp_path: Path) -> None:
    """`ingest --from data` (for data/mirror) loaded nothing and exited 0. It is refused,
    naming the mirror; a mirror whose hosts hold only the collector's cursor (a first
    collection cut short) and an empty one are not."""
    data, db = tmp_path / "data", tmp_path / "wh.duckdb"
    write_history(data / "mirror", "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="a")))
    (data / "notes").mkdir()
    above = fs(db, "ingest", "--from", str(data))
    assert above.returncode == 1 and f"--from {data / 'mirror'}" in above.stderr, above.stderr
    assert not db.exists()
    cut_short = tmp_path / "new-mirror"
    (cut_short / "h2").mkdir(parents=True)
    (cut_short / "h2" / ".cursor.json").write_text("{}")
    (cut_short / "lost+found").mkdir()
    for mirror in (cut_short, tmp_path / "empty"):
        mirror.mkdir(exist_ok=True)
        done = fs(db, "ingest", "--from", str(mirror))
        assert done.returncode == 0, done.stderr
