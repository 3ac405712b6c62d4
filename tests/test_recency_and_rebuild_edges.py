"""A second look at runs.recency_ts, `ingest --from`'s mirror check and `rebuild`'s file
check (040f19c..HEAD): one test per finding; each fails on that code for the reason named.

Real parts only: a real DuckDB file in tmp_path, the real loader (`ingest --from`), the
collector's own Mirror class for its directory layout, and the real `fleetstate` process
(tests/clirun.py). No network; no assertion on wall time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest
from clirun import REPO, cli_env, fs, fs_json, ingest_from
from factories import SHA_A, SHA_B, SHA_C, ago, line, record, write_history, write_observation

AHEAD = ago(hours=-48)  # what the host's clock said while it ran two days ahead


def _recency(db: Path) -> list[dict[str, Any]]:
    return fs_json(db, "sql", "SELECT run_id, ts, recency_ts FROM runs ORDER BY run_id")


# --- 1. repeats skipped raise nothing ------------------------------------------------------


def test_a_moved_mirror_keeps_the_run_appended_last_the_latest(tmp_path: Path) -> None:
    """migrations/003_recency.sql: a history line's recency_ts is ts raised to the newest ts
    of the lines appended before it to the same history file. load.py `_raise_recency`
    drops the lines `repeats` marks skip before it computes ("repeats are not stored, so
    they raise nothing"). A mirror moved to another directory (README: "loading the same
    mirror from another directory" adds nothing) is read as new files whose every old line
    is a repeat: the runs appended after the move are raised by nothing, and the run dated
    ahead stays the host's latest, the bug 003 fixed. A rebuild from the moved mirror gets
    it right, so the same mirror gives two warehouses."""
    first, moved = tmp_path / "mirror", tmp_path / "srv-mirror"
    db, rebuilt = tmp_path / "wh.duckdb", tmp_path / "rebuilt.duckdb"
    write_history(first, "h1", line(record(ago(hours=6), git_sha=SHA_C, run_id="before")))
    write_history(first, "h1", line(record(AHEAD, git_sha=SHA_B, run_id="ahead")))
    write_observation(first, "h1")
    ingest_from(db, first)
    shutil.move(first, moved)  # the operator moves the mirror (FLEETSTATE_MIRROR=...)
    write_history(moved, "h1", line(record(ago(hours=2), git_sha=SHA_A, run_id="set-back")))
    write_history(moved, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="latest")))
    ingest_from(db, moved)
    ingest_from(rebuilt, moved)  # what `rebuild --mirror srv-mirror` makes

    assert fs_json(rebuilt, "status")[0]["pp_run_id"] == "latest"  # the rule, from scratch
    assert fs_json(db, "status")[0]["pp_run_id"] == "latest", "the run dated ahead is latest"


# --- 2. a replaced history: the result depends on FLEETSTATE_BATCH_BYTES ------------------


def test_a_replaced_history_gets_one_recency_whatever_the_batch_size(tmp_path: Path) -> None:
    """A history the loader finds replaced (its fingerprint differs: the collector pulled a
    host again after its mirror file was deleted, README "survives ... reimaged hosts") is
    read again from byte 0. `_raise_recency` takes a `floor` from the stored rows of the
    same path before the batch's first offset only when that offset is above 0: in one
    batch the new lines are raised by nothing stored; with FLEETSTATE_BATCH_BYTES small,
    every batch after the first is raised by the rows of the old content at lower offsets.
    The same mirror then gives two warehouses with different `status`."""
    mirror = tmp_path / "m"
    one, each = tmp_path / "one.duckdb", tmp_path / "each.duckdb"
    write_history(mirror, "h1", line(record(AHEAD, git_sha=SHA_B, run_id="ahead")))
    write_observation(mirror, "h1")
    ingest_from(one, mirror)
    ingest_from(each, mirror)
    fresh = line(record(ago(hours=2), git_sha=SHA_A, run_id="again-1")) + line(
        record(ago(hours=1), git_sha=SHA_A, run_id="again-2")
    )
    write_history(mirror, "h1", fresh, append=False)  # replaced: read again from 0
    ingest_from(one, mirror)
    ingest_from(each, mirror, FLEETSTATE_BATCH_BYTES="1")  # a transaction per line

    assert _recency(one) == _recency(each)
    assert fs_json(one, "status")[0]["pp_run_id"] == fs_json(each, "status")[0]["pp_run_id"]


# --- 3. migration 003 on a warehouse holding a replaced history ---------------------------


def test_migration_003_is_one_answer_for_a_history_read_again_from_0(tmp_path: Path) -> None:
    """Migration 003 filled recency_ts with a window over (source_path ORDER BY byte_offset)
    and an UPDATE ... FROM joined on (source_path, byte_offset). A history replaced and
    read again from 0 (by this or any earlier release) leaves two runs at the same
    (source_path, byte_offset): the window ordered the tie arbitrarily and the UPDATE
    matched each of them twice. Now the tie is broken by rowid (the order the runs were
    stored in) and the join is on rowid: two upgrades of the same warehouse agree, and
    the old content counts before the new, as its comment says. (The loader, which knows
    the file was read again from 0, raises the new content by nothing; the migration
    cannot tell, and says so.)"""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(AHEAD, git_sha=SHA_B, run_id="ahead")))
    write_observation(mirror, "h1")
    ingest_from(db, mirror)
    fresh = line(record(ago(hours=2), git_sha=SHA_A, run_id="again-1")) + line(
        record(ago(hours=1), git_sha=SHA_A, run_id="again-2")
    )
    write_history(mirror, "h1", fresh, append=False)
    ingest_from(db, mirror)
    assert [r["recency_ts"] for r in _recency(db)] == [None, None, None]  # read from 0

    con = duckdb.connect(str(db))  # back to what the release before 003 left
    con.execute("ALTER TABLE runs DROP COLUMN recency_ts")
    con.execute("ALTER TABLE load_cursors DROP COLUMN recency_ts")
    con.execute("DELETE FROM schema_migrations WHERE name = '003_recency.sql'")
    con.close()
    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    for each in (db, copy):
        upgrade = fs(each, "ingest", "--from", str(mirror))  # any writable open migrates
        assert upgrade.returncode == 0, upgrade.stderr
    upgraded = _recency(db)
    assert upgraded == _recency(copy)
    ahead = next(r["ts"] for r in upgraded if r["run_id"] == "ahead")
    assert {r["run_id"]: r["recency_ts"] for r in upgraded} == {
        "ahead": None, "again-1": ahead, "again-2": ahead,
    }  # fmt: skip


# --- 4. rollout_events cuts by ts what it orders by recency --------------------------------


def test_rollout_curve_ends_at_the_summary_after_a_clock_set_back(tmp_path: Path) -> None:
    """queries/52_rollout_curve.sql: "the last point equals the `converged` count of
    rollout_summary" (docs/analytics.md: the curve counts converged hosts by the contract's
    rule as of each hour). rollout_events orders a host's runs by recency (recency_ts) but
    keeps only runs with `ts >= rollout_first_seen(target)`: a run appended after NTP set
    the clock back has a ts before the run dated ahead that first ran the target, so it is
    cut out. Here the host ran the target with its clock ahead, then (clock corrected)
    went back to another commit: `rollout` says regressed, 0 converged; the curve, which
    never sees the later run, ends at 1 converged."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(AHEAD, git_sha=SHA_A, run_id="ahead")))
    write_history(mirror, "h1", line(record(ago(hours=1), git_sha=SHA_B, run_id="set-back")))
    write_observation(mirror, "h1")
    ingest_from(db, mirror)

    report = fs_json(db, "rollout", SHA_A, "--part", "report")
    host = report["hosts"][0]
    assert (host["status"], report["summary"]["converged"]) == ("regressed", 0), host
    assert report["curve"][-1]["converged"] == report["summary"]["converged"], report["curve"]


# --- 5. host_intervals: ordered by recency, measured by ts ---------------------------------


def test_host_intervals_never_end_before_they_start(tmp_path: Path) -> None:
    """docs/analytics.md host_intervals: "`to_ts` is the start of the next interval;
    `duration_s` runs to `to_ts`". 70_host_intervals.sql now numbers intervals by recency
    (recency_ts) but takes from_ts as min(ts): after a clock set back, the interval of the
    run dated ahead is followed by one whose from_ts is two days earlier, so it ends
    before it starts (negative duration_s) and `drift --part intervals` (ORDER BY from_ts)
    lists the intervals out of their order."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    for ts, sha, run_id in [
        (ago(hours=6), SHA_C, "before"), (AHEAD, SHA_B, "ahead"),
        (ago(hours=2), SHA_A, "set-back"), (ago(hours=1), SHA_A, "latest"),
    ]:  # fmt: skip
        write_history(mirror, "h1", line(record(ts, git_sha=sha, run_id=run_id)))
    write_observation(mirror, "h1")
    ingest_from(db, mirror)

    rows = fs_json(db, "drift", "--part", "intervals", "--host", "h1")
    negative = [(r["git_sha"][:7], r["from_ts"], r["to_ts"], r["duration_s"])
                for r in rows if r["duration_s"] < 0]  # fmt: skip
    assert not negative, negative
    shas = [r["git_sha"] for r in rows]
    assert shas == [SHA_C, SHA_B, SHA_A], shas  # the history's order; the last is current


# --- 6. ingest --from refuses a collector's mirror ------------------------------------------


def test_ingest_from_a_mirror_whose_first_collection_was_cut_short(tmp_path: Path) -> None:
    """The collector makes each host's directory with only its `.cursor.json` before it
    pulls (pipeline/mirror.py `host_dir`); a first collection stopped then (Ctrl-C, or
    `ingest --from` run while it is still connecting) leaves a mirror of such directories.
    load.py `check_mirror` takes it for "the directory above the mirror" and exits 1
    (`rollout --watch --from` dies on it too); the load would find nothing and exit 0."""
    from pipeline.mirror import Mirror

    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    collector = Mirror(mirror)
    for host in ("h1.example.com", "h2.example.com"):
        collector.host_dir(host)  # what collect_host does first
    done = fs(db, "ingest", "--from", str(mirror))
    assert done.returncode == 0, done.stderr


# --- 7. ingest --from: one host link it may not enter stops every host ---------------------

needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
CAPS = "-dac_override,-dac_read_search"


def _without_dac(*args: str) -> subprocess.CompletedProcess[str]:
    """`fleetstate ARGS` as root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: held to the
    permission bits, as an operator's own account is (tests/test_load.py does the same)."""
    cmd = ["setpriv", f"--inh-caps={CAPS}", f"--bounding-set={CAPS}",
           sys.executable, "-m", "pipeline", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=cli_env())


@needs_setpriv
def test_ingest_from_a_mirror_with_a_host_link_it_may_not_enter(tmp_path: Path) -> None:
    """load.py `discover` takes a host directory link it may not follow for a directory
    ("_claim_files names it"), and the load goes on with the other hosts (exit 4, "not
    read: ..."; tests/test_load.py). The new `check_mirror` calls Path.is_dir() on every
    entry unguarded; on Python 3.11 (this venv) it raises PermissionError for such a link, so
    `ingest --from` ends with "error: [Errno 13] Permission denied" (exit 1) and loads no
    host at all."""
    mirror, db, secret = tmp_path / "m", tmp_path / "wh.duckdb", tmp_path / "secret"
    write_history(mirror, "a", line(record(run_id="a-1")))
    write_history(secret, "b", line(record(run_id="b-1")))
    (mirror / "b").symlink_to(secret / "b")
    secret.chmod(0)
    try:
        done = _without_dac("--db", str(db), "ingest", "--from", str(mirror))
    finally:
        secret.chmod(0o755)
    assert done.returncode == 4, done.stderr
    assert "not read:" in done.stderr, done.stderr


# --- 8. rebuild: the file check passes, runs are dropped -----------------------------------


def test_rebuild_refuses_rather_than_drop_the_runs_of_a_replaced_history(
    tmp_path: Path,
) -> None:
    """README (rebuild): "no run, observation or reject is lost"; a file the warehouse
    loaded that the mirror does not hold "would be dropped, so rebuild refuses". The check
    (cli.py `keeps_every_file`) compares file paths only: a history replaced in the mirror
    (the collector pulls a host again after its mirror file was deleted, and the host has
    rotated its log) keeps its path, so the runs only the old content held are dropped in
    silence, exit 0. The cursor's fingerprint (load_cursors.head_sha) would tell."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(days=3), git_sha=SHA_B, run_id="old-1")))
    write_history(mirror, "h1", line(record(ago(days=2), git_sha=SHA_B, run_id="old-2")))
    ingest_from(db, mirror)
    write_history(
        mirror, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="new-1")), append=False
    )
    ingest_from(db, mirror)

    done = fs(db, "rebuild", "--mirror", str(mirror))
    kept = [r["run_id"] for r in fs_json(db, "sql", "SELECT run_id FROM runs ORDER BY 1")]
    assert done.returncode != 0 or kept == ["new-1", "old-1", "old-2"], (
        f"rebuild exit {done.returncode}, runs left: {kept}"
    )


@needs_setpriv
def test_rebuild_does_not_drop_the_runs_of_a_file_it_cannot_read(tmp_path: Path) -> None:
    """`mirror_files` lists a file it may not read (its name is in the directory), so the
    check passes; the load names it in `stats.unreadable` (an ingest exits 4 on that), but
    `rebuild` ignores it and replaces the warehouse without that file's runs, exit 0."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "a", line(record(run_id="a-1")))
    history = write_history(mirror, "b", line(record(run_id="b-1")))
    ingest_from(db, mirror)
    history.chmod(0)  # a umask, a restore from backup as another user...
    try:
        done = _without_dac("--db", str(db), "rebuild", "--mirror", str(mirror))
    finally:
        history.chmod(0o644)
    kept = [r["run_id"] for r in fs_json(db, "sql", "SELECT run_id FROM runs ORDER BY 1")]
    assert done.returncode != 0 or kept == ["a-1", "b-1"], (
        f"rebuild exit {done.returncode}, runs left: {kept}; {done.stderr}"
    )
