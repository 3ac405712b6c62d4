"""A host whose clock ran ahead and was set back (NTP): the history's order decides.

The wrapper appends each run as it finishes, so a line is at least as recent as every line
appended before it to the same history; `recency_ts` (migrations/003_recency.sql) is ts
raised to the newest ts before it, and run_recency orders by it. These tests load real
mirrors into a real warehouse through the real command, in one ingest, across ingests, in
many small transactions and by `rebuild`, and upgrade a warehouse made before 003.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from clirun import fs, fs_json, ingest_from
from factories import SHA_A, SHA_B, SHA_C, ago, line, record, write_history, write_observation

AHEAD = ago(hours=-48)  # what the host's clock said while it ran two days ahead


def _skewed_history(mirror: Path, host: str = "h1", spaced: str = "") -> None:
    """Runs at SHA_C, then one while the clock ran ahead (SHA_B), then, after NTP set it
    back, two at SHA_A: appended in that order. The runs named in `spaced` are written
    with spaces after the separators (valid JSON the wrapper does not write: the loader's
    slow path reads them)."""
    for ts, sha, run_id in [
        (ago(hours=6), SHA_C, "before"), (AHEAD, SHA_B, "ahead"),
        (ago(hours=2), SHA_A, "set-back"), (ago(hours=1), SHA_A, "latest"),
    ]:  # fmt: skip
        rec = record(ts, git_sha=sha, run_id=run_id)
        text = json.dumps(rec).encode() + b"\n" if run_id in spaced.split() else line(rec)
        write_history(mirror, host, text)
    write_observation(mirror, host)


def _views(db: Path) -> tuple[str, list[str], str]:
    status = fs_json(db, "status")
    history = fs_json(db, "history", "h1")
    rollout = fs_json(db, "rollout", SHA_A)
    return status[0]["pp_run_id"], [r["run_id"] for r in history], rollout[0]["status"]


EXPECTED = ("latest", ["latest", "set-back", "ahead", "before"], "converged")


def test_the_run_appended_last_is_the_latest_across_ingests(tmp_path: Path) -> None:
    """The run dated ahead is loaded by one ingest, the runs after NTP by the next: the
    second ingest raises them from what the warehouse holds, not only from its own batch."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(hours=6), git_sha=SHA_C, run_id="before")))
    write_history(mirror, "h1", line(record(AHEAD, git_sha=SHA_B, run_id="ahead")))
    write_observation(mirror, "h1")
    ingest_from(db, mirror)
    assert fs_json(db, "status")[0]["pp_run_id"] == "ahead"
    write_history(mirror, "h1", line(record(ago(hours=2), git_sha=SHA_A, run_id="set-back")))
    write_history(mirror, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="latest")))
    ingest_from(db, mirror)
    assert _views(db) == EXPECTED
    # ts stays as the host wrote it: the age shown is the latest run's own
    status = fs_json(db, "status")[0]
    assert 3000 < status["pp_age_s"] < 4 * 3600, status


@pytest.mark.parametrize("spaced", ["", "before", "set-back", "ahead latest"])
def test_small_transactions_and_a_rebuild_give_the_same_order(tmp_path: Path, spaced: str) -> None:
    """The same history in one transaction per line, and rebuilt from the mirror: the same
    recency for every run, and the same views. Lines the slow path reads come after the
    others, out of the history's order: they get the same recency."""
    mirror = tmp_path / "m"
    _skewed_history(mirror, spaced=spaced)
    write_history(mirror, "h2", line(record(ago(hours=3), git_sha=SHA_A, run_id="other")))
    one, each, few = (tmp_path / f"{name}.duckdb" for name in ("one", "each", "few"))
    ingest_from(one, mirror)
    # a transaction per line; and a few lines per transaction, each line a piece of its own
    ingest_from(each, mirror, FLEETSTATE_BATCH_BYTES="1", FLEETSTATE_LOAD_WORKERS="2")
    ingest_from(few, mirror, FLEETSTATE_BATCH_BYTES="2000", FLEETSTATE_LOAD_WORKERS="1")
    rebuilt = fs(one, "rebuild", "--mirror", str(mirror))
    assert rebuilt.returncode == 0, rebuilt.stderr
    query = "SELECT run_id, ts, recency_ts FROM runs ORDER BY run_id"
    rows = [fs_json(db, "sql", query) for db in (one, each, few)]
    assert rows[0] == rows[1] == rows[2]
    raised = {r["run_id"]: r["recency_ts"] for r in rows[0] if r["recency_ts"] is not None}
    ahead = next(r["ts"] for r in rows[0] if r["run_id"] == "ahead")
    assert raised == {"set-back": ahead, "latest": ahead}  # NULL: the run's own ts
    for db in (one, each, few):
        assert _views(db) == EXPECTED


def test_two_histories_of_one_host_do_not_raise_each_other(tmp_path: Path) -> None:
    """Two mirrors loaded with `ingest --from` into one warehouse hold two histories of h1:
    a line is raised only by the lines before it in its own file."""
    first, second, db = tmp_path / "a", tmp_path / "b", tmp_path / "wh.duckdb"
    write_history(first, "h1", line(record(AHEAD, git_sha=SHA_B, run_id="ahead")))
    write_history(second, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="elsewhere")))
    ingest_from(db, first)
    ingest_from(db, second)
    rows = fs_json(db, "sql", "SELECT run_id, recency_ts FROM runs ORDER BY 1")
    assert rows == [{"run_id": "ahead", "recency_ts": None},
                    {"run_id": "elsewhere", "recency_ts": None}]  # fmt: skip


def test_a_warehouse_made_before_the_recency_column_is_upgraded_in_place(tmp_path: Path) -> None:
    """A warehouse the release before 003 made (no recency_ts) gets the column filled from
    the runs it holds on its first open, and the views then follow the history's order."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    _skewed_history(mirror)
    ingest_from(db, mirror)
    con = duckdb.connect(str(db))  # back to what the release before 003 left
    con.execute("ALTER TABLE runs DROP COLUMN recency_ts")
    con.execute("ALTER TABLE load_cursors DROP COLUMN recency_ts")
    con.execute("DELETE FROM schema_migrations WHERE name = '003_recency.sql'")
    con.close()
    assert _views(db) == EXPECTED  # a read-only command: upgraded by a writable open first
    names = fs_json(db, "sql", "SELECT name FROM schema_migrations ORDER BY 1")
    assert names[-1]["name"] == "003_recency.sql"
    raised = fs_json(db, "sql", "SELECT run_id FROM runs WHERE recency_ts IS NOT NULL ORDER BY 1")
    assert raised == [{"run_id": "latest"}, {"run_id": "set-back"}]


@pytest.mark.parametrize("batch_bytes", ["", "1", "2000"])
def test_a_repeat_not_stored_raises_like_any_line(tmp_path: Path, batch_bytes: str) -> None:
    """A line that repeats another run's run_id with other content is a reject, not a run;
    it is still a line the host appended, with what its clock said: the lines after it
    are raised to its ts, whatever the batches (a mirror moved or copied makes every old
    line a repeat, and must order as a fresh load does)."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(hours=6), git_sha=SHA_C, run_id="before")))
    write_history(mirror, "h1", line(record(AHEAD, git_sha=SHA_B, run_id="ahead")))
    conflict = record(ago(hours=-72), git_sha=SHA_C, run_id="before")  # not stored
    write_history(mirror, "h1", line(conflict))
    write_history(mirror, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="latest")))
    env = {"FLEETSTATE_BATCH_BYTES": batch_bytes} if batch_bytes else {}
    ingest_from(db, mirror, **env)
    rows = fs_json(db, "sql", "SELECT run_id, recency_ts FROM runs ORDER BY ts")
    assert [r["run_id"] for r in rows] == ["before", "latest", "ahead"]
    assert rows[1]["recency_ts"] == conflict["ts"]  # raised by the reject's ts
    rejects = fs_json(db, "sql", "SELECT reason FROM rejects")
    assert len(rejects) == 1 and "already another record's" in rejects[0]["reason"]
