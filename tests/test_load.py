"""The loader's promises: incremental, idempotent, atomic under kill -9, clear when locked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
from factories import line, record, seed_record, write_history, write_observation

from pipeline import load, warehouse
from pipeline.warehouse import WarehouseError

HOST = "h1.example.com"


def counts(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    row = con.execute(
        "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM rejects), "
        "(SELECT count(*) FROM observations)"
    ).fetchall()[0]
    return (row[0], row[1], row[2])


def runs_fingerprint(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return con.execute(
        "SELECT host, run_id, ts, success, git_sha, byte_offset FROM runs ORDER BY host, run_id"
    ).fetchall()


def test_reload_adds_nothing_and_reads_nothing(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    write_history(
        mirror, HOST, b"".join(line(record(run_id=f"r{i}")) for i in range(50)) + b"oops\n"
    )
    first = load.load_mirror(con, mirror)
    assert (first.runs_added, first.rejects_added) == (50, 1)
    second = load.load_mirror(con, mirror)
    assert (second.bytes_read, second.runs_added, second.rejects_added) == (0, 0, 0)
    assert counts(con) == (50, 1, 0)


def test_only_new_bytes_are_read(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    mirror = tmp_path / "m"
    first = line(record(run_id="a"))
    write_history(mirror, HOST, first)
    load.load_mirror(con, mirror)
    more = line(record(run_id="b"))
    write_history(mirror, HOST, more)
    stats = load.load_mirror(con, mirror)
    assert stats.bytes_read == len(more) and stats.runs_added == 1
    offsets = con.execute("SELECT byte_offset FROM runs ORDER BY byte_offset").fetchall()
    assert offsets == [(0,), (len(first),)]


def test_partial_final_line_waits_for_its_newline(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    whole, half = line(record(run_id="a")), line(record(run_id="b"))
    write_history(mirror, HOST, whole + half[:30])
    stats = load.load_mirror(con, mirror)
    assert stats.runs_added == 1 and stats.pending_bytes == 30 and counts(con)[1] == 0
    write_history(mirror, HOST, half[30:])
    assert load.load_mirror(con, mirror).runs_added == 1
    assert counts(con) == (2, 0, 0)


def test_the_same_bytes_twice_are_one_run(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    mirror = tmp_path / "m"
    dup = line(record())  # no run_id: identity is derived from content
    write_history(mirror, HOST, dup + dup + line(record(run_id="x")) + line(record(run_id="x")))
    load.load_mirror(con, mirror)
    # the same bytes in a second mirror directory (another copy of the archive)
    write_history(tmp_path / "copy", HOST, dup)
    load.load_mirror(con, tmp_path / "copy")
    assert counts(con) == (2, 0, 0)


def test_replaced_file_is_read_again_without_duplicates(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a")) + line(record(run_id="b")))
    load.load_mirror(con, mirror)
    # a rebuilt mirror: different first bytes, one old run and one new one
    write_history(mirror, HOST, line(record(run_id="b")) + line(record(run_id="c")), append=False)
    load.load_mirror(con, mirror)
    assert [r[1] for r in runs_fingerprint(con)] == ["a", "b", "c"]


def test_locked_warehouse_is_a_clear_error(db_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); "
         "print('ready', flush=True); time.sleep(30)",
         str(db_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(WarehouseError, match="locked by another fleetstate process"):
            warehouse.connect(db_path, wait_s=0.5)
        cli = subprocess.run(
            [sys.executable, "-m", "pipeline", "--db", str(db_path), "status"],
            capture_output=True, text=True, env={**os.environ, "FLEETSTATE_LOCK_WAIT_S": "0.5"},
        )  # fmt: skip
        assert cli.returncode == 1
        assert cli.stderr.count("\n") == 1 and "locked" in cli.stderr
        assert "Traceback" not in cli.stderr
    finally:
        holder.kill()
        holder.wait()


def _big_mirror(root: Path, hosts: int = 6, runs: int = 3000) -> None:
    for h in range(hosts):
        lines = [
            line(
                record(
                    ts=f"2026-{1 + i % 12:02d}-01T00:00:{i % 60:02d}Z",
                    run_id=f"{h}-{i}",
                    role=f"role-{i % 7}",
                )
            )
            for i in range(runs)
        ]
        lines.insert(runs // 2, b"garbage line\n")
        write_history(root, f"host{h}.example.com", b"".join(lines))


def _consistent(con: duckdb.DuckDBPyConnection) -> None:
    """Rows exist exactly for the lines before each file's cursor."""
    bad = con.execute(
        """
        SELECT c.source_path FROM load_cursors c
        LEFT JOIN (SELECT source_path, max(byte_offset) AS last FROM
                   (SELECT source_path, byte_offset FROM runs UNION ALL
                    SELECT source_path, byte_offset FROM rejects) GROUP BY source_path) r
          USING (source_path)
        WHERE r.last >= c.byte_offset
        """
    ).fetchall()
    assert bad == []
    orphans = con.execute(
        "SELECT count(*) FROM runs WHERE source_path NOT IN (SELECT source_path FROM load_cursors)"
    ).fetchall()
    assert orphans == [(0,)]


@pytest.mark.parametrize("kill_after_s", [0.35, 0.6, 0.9])
def test_kill_9_mid_load_then_rerun_equals_one_clean_load(
    tmp_path: Path, kill_after_s: float
) -> None:
    mirror = tmp_path / "m"
    _big_mirror(mirror)
    clean_db = tmp_path / "clean.duckdb"
    clean = warehouse.connect(clean_db)
    load.load_mirror(clean, mirror)
    expected, expected_runs = counts(clean), runs_fingerprint(clean)
    clean.close()

    db = tmp_path / "killed.duckdb"
    # two groups of hosts commit side by side, whatever the machine's core count
    env = {**os.environ, "FLEETSTATE_BATCH_BYTES": "200000", "FLEETSTATE_LOAD_WORKERS": "2"}
    cmd = [sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "--from", str(mirror)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    time.sleep(kill_after_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    con = warehouse.connect(db)
    _consistent(con)
    partial = counts(con)
    con.close()
    print("partial", partial, "of", expected)
    assert partial[0] <= expected[0]
    done = subprocess.run(cmd, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr
    con = warehouse.connect(db)
    assert counts(con) == expected
    assert runs_fingerprint(con) == expected_runs
    _consistent(con)


def _fleet_mirror(root: Path) -> None:
    """Hosts of unequal size with repeats, rejects, old-format lines, state files and
    observations: everything a group of hosts must get right on its own."""
    for h, runs in enumerate([400, 20, 900, 5, 300, 60]):
        host = f"host{h}.example.com"
        body = [line(record(run_id=f"{h}-{i}", duration_s=i)) for i in range(runs)]
        body += [body[0], b"not json\n", line(seed_record(duration_s=h))]
        write_history(root, host, b"".join(body))
        (root / host / "last_run_metadata.json").write_bytes(body[-1])
        write_observation(root, host)


def _everything(con: duckdb.DuckDBPyConnection) -> list[list[tuple[object, ...]]]:
    return [
        runs_fingerprint(con),
        con.execute(
            "SELECT source_path, byte_offset, reason FROM rejects ORDER BY 1, 2"
        ).fetchall(),
        con.execute("SELECT host, reachable FROM observations ORDER BY 1").fetchall(),
        con.execute("SELECT source_path, byte_offset FROM load_cursors ORDER BY 1").fetchall(),
    ]


def test_groups_of_hosts_load_what_one_loader_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "m"
    _fleet_mirror(mirror)
    monkeypatch.setattr(load, "BATCH_BYTES", 50_000)  # several transactions per group
    results = []
    for workers in (1, 3):
        monkeypatch.setattr(load, "WORKERS", workers)
        con = warehouse.connect(tmp_path / f"w{workers}.duckdb")
        threads = con.execute("SELECT current_setting('threads')").fetchall()
        stats = load.load_mirror(con, mirror)
        assert con.execute("SELECT current_setting('threads')").fetchall() == threads
        assert (stats.runs_added, stats.rejects_added, stats.observations_added) == (1691, 6, 6)
        assert load.load_mirror(con, mirror).bytes_read == 0
        results.append(_everything(con))
        con.close()
    assert results[0] == results[1]


def test_split_keeps_hosts_contiguous_and_balanced(tmp_path: Path) -> None:
    sizes = [900, 10, 10, 10, 400, 400, 100]
    for i, size in enumerate(sizes):
        write_history(tmp_path, f"h{i}", b"x" * size)
    found, skipped, problems = load._claim_files(load.discover(tmp_path))
    assert skipped == 0 and problems == []
    groups = load._split(found, 2)
    # 930 and 900 bytes: a group closes once it holds its share (915)
    assert [[h for h, _ in g] for g in groups] == [["h0", "h1", "h2"], ["h3", "h4", "h5", "h6"]]
    assert load._split(found, 1) == [found] and load._split(found[:1], 4) == [found[:1]]
    assert sum(len(g) for g in load._split(found, 5)) == len(found)


def test_a_failing_group_stops_the_others_and_leaves_the_warehouse_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "m"
    _big_mirror(mirror, hosts=4, runs=2000)
    monkeypatch.setattr(load, "BATCH_BYTES", 100_000)
    monkeypatch.setattr(load, "WORKERS", 2)
    real_stage = load._stage
    staged: list[str] = []

    def failing_stage(batch: load.Batch, host: str, *args: object) -> None:
        staged.append(host)
        if host == "host3.example.com" and staged.count(host) == 3:
            raise OSError("disk went away")
        real_stage(batch, host, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(load, "_stage", failing_stage)
    con = warehouse.connect(tmp_path / "w.duckdb")
    with pytest.raises(OSError, match="disk went away"):
        load.load_mirror(con, mirror)
    _consistent(con)
    partial = counts(con)[0]
    assert 0 < partial < 8000
    monkeypatch.setattr(load, "_stage", real_stage)
    stats = load.load_mirror(con, mirror)
    assert counts(con) == (8000, 4, 0) and stats.runs_added == 8000 - partial
    _consistent(con)


def test_default_plan_follows_cores_and_available_memory() -> None:
    gib, large, small = 1 << 30, load.LARGE_BATCH, load.SMALL_BATCH
    assert load.default_plan(8, 16 * gib) == (2, large)
    assert load.default_plan(1, 16 * gib) == (1, large)  # one core: one group
    assert load.default_plan(None, None) == (1, large)
    assert load.default_plan(4, None) == (2, large)  # no /proc/meminfo (macOS): by cores
    assert load.default_plan(4, 2 * gib) == (2, large)  # two groups use at most 1 GiB
    assert load.default_plan(4, 2 * gib - 1) == (2, small)  # less: smaller batches first
    assert load.default_plan(4, gib - 1) == (1, small)  # then one group
    assert load.default_plan(1, gib) == (1, large)
    assert load.default_plan(4, 100 << 20) == (1, small)  # never none
    assert load.default_plan(4, 16 * gib, workers=3) == (3, large)  # FLEETSTATE_LOAD_WORKERS
    assert load.default_plan(4, gib, workers=3) == (3, small)


def test_derived_identities_do_not_depend_on_the_time_zone_or_the_groups(tmp_path: Path) -> None:
    """Records without run_id get an identity derived from their values; the groups' own
    connections must format timestamps in UTC like the main one, or one mirror loaded with
    one and with two groups (on a machine outside UTC) gives two identities per run."""
    mirror = tmp_path / "m"
    for h in range(4):
        body = b"".join(
            line(seed_record(ts=f"2026-11-0{d + 1}T23:30:00Z", duration_s=h)) for d in range(5)
        )
        write_history(mirror, f"host{h}", body)
    found = []
    for workers in ("1", "2"):
        db = tmp_path / f"w{workers}.duckdb"
        env = {**os.environ, "TZ": "America/New_York", "FLEETSTATE_LOAD_WORKERS": workers}
        cmd = [sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "--from", str(mirror)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        con = warehouse.connect(db, read_only=True)
        found.append(con.execute("SELECT host, run_id FROM runs ORDER BY ALL").fetchall())
        con.close()
    assert len(found[0]) == 20 and found[0] == found[1]
    assert all(run_id.startswith("derived-") for _, run_id in found[0])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_reached_through_a_link_is_loaded_once_under_its_own_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    mirror = tmp_path / "m"
    for host in ("a-host", "z-host"):
        write_history(mirror, host, b"".join(line(record(run_id=f"{host}-{i}")) for i in range(30)))
    (mirror / "b-alias").symlink_to("z-host")  # sorts before the directory it points to
    (mirror / "c-host").mkdir()
    (mirror / "c-host" / "history.jsonl").symlink_to(mirror / "a-host" / "history.jsonl")
    monkeypatch.setattr(load, "WORKERS", workers)
    con = warehouse.connect(tmp_path / "w.duckdb")
    stats = load.load_mirror(con, mirror)
    assert (stats.runs_added, stats.aliases_skipped) == (60, 2)
    hosts = con.execute("SELECT host, count(*) FROM runs GROUP BY host ORDER BY host").fetchall()
    assert hosts == [("a-host", 30), ("z-host", 30)]
    write_history(mirror, "z-host", line(record(run_id="z-host-new")))
    again = load.load_mirror(con, mirror)
    assert (again.runs_added, again.bytes_read) == (1, len(line(record(run_id="z-host-new"))))
    _consistent(con)


def test_a_failed_commit_reports_its_own_error_not_the_rollback(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a")))

    def broken_cursors(con: duckdb.DuckDBPyConnection, *args: object) -> None:
        con.execute("COMMIT")  # ends the transaction early, as a failed COMMIT does
        raise duckdb.ConstraintException("the real problem")

    monkeypatch.setattr(load, "_save_cursors", broken_cursors)
    with pytest.raises(duckdb.ConstraintException, match="the real problem"):
        load.load_mirror(con, mirror)


def test_moving_the_mirror_repeats_no_rejects(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a")) + b"oops\n" + line(record(run_id="b")))
    write_observation(mirror, HOST, observed_at="not a time")
    assert load.load_mirror(con, mirror).rejects_added == 2
    moved = mirror.rename(tmp_path / "elsewhere")
    stats = load.load_mirror(con, moved)
    assert stats.bytes_read > 0  # a new path: read again, and nothing added twice
    assert (stats.runs_added, stats.rejects_added) == (0, 0)
    assert counts(con) == (2, 2, 0)


def test_a_file_replaced_after_an_unchanged_start_is_read_again(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    mirror = tmp_path / "m"
    first = [line(record(run_id=f"same-{i}", duration_s=i)) for i in range(10)]
    assert sum(map(len, first)) > load.HEAD_BYTES  # the start alone cannot tell them apart
    before = [line(record(run_id=f"old-{i}")) for i in range(10)]
    path = write_history(mirror, HOST, b"".join(first + before))
    assert load.load_mirror(con, mirror).runs_added == 20
    after = [line(record(run_id=f"new-{i}")) for i in range(10)]  # same length, new runs
    assert sum(map(len, after)) == sum(map(len, before))
    path.write_bytes(b"".join(first + after))
    stats = load.load_mirror(con, mirror)
    assert stats.runs_added == 10
    assert counts(con)[0] == 30


def test_a_cursor_saved_with_the_old_fingerprint_is_still_trusted(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    import hashlib

    mirror = tmp_path / "m"
    path = write_history(mirror, HOST, line(record(run_id="a")))
    load.load_mirror(con, mirror)
    old = hashlib.sha256(path.read_bytes()[: load.HEAD_BYTES]).hexdigest()
    con.execute("UPDATE load_cursors SET head_sha = ?", [old])
    write_history(mirror, HOST, line(record(run_id="b")))
    stats = load.load_mirror(con, mirror)
    assert (stats.bytes_read, stats.runs_added) == (len(line(record(run_id="b"))), 1)
    saved = con.execute("SELECT head_sha FROM load_cursors").fetchall()
    assert saved[0][0].startswith(load.FINGERPRINT)


def test_an_unreadable_file_is_named_and_the_others_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads any file, so the failure is injected where the loader opens the file."""
    mirror = tmp_path / "m"
    for host in ("a", "b", "c"):
        write_history(mirror, host, line(record(run_id=f"{host}-1")))
    real_open = Path.open

    def open_(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.parent.name == "b" and self.name == "history.jsonl":
            raise PermissionError(13, "Permission denied")
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    con = warehouse.connect(tmp_path / "w.duckdb")
    stats = load.load_mirror(con, mirror)
    assert stats.runs_added == 2
    (problem,) = stats.unreadable
    assert "b/history.jsonl: Permission denied" in problem
    monkeypatch.setattr(Path, "open", real_open)
    later = load.load_mirror(con, mirror)  # readable again: it loads, nothing else repeats
    assert (later.runs_added, later.unreadable) == (1, [])
    _consistent(con)


def test_a_line_that_looks_like_a_record_but_is_not_json_is_rejected_alone(
    con: duckdb.DuckDBPyConnection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path parses a batch without TRY first; a line that starts and ends like a
    record but is not JSON makes it parse the batch again with TRY: same rows."""
    from pipeline import records

    tries: list[bool] = []
    real = records.fast_sql

    def fast_sql(staged: str, tolerant: bool = True) -> str:
        tries.append(tolerant)
        return real(staged, tolerant)

    monkeypatch.setattr(records, "fast_sql", fast_sql)
    mirror = tmp_path / "m"
    good = [line(record(run_id=f"r{i}")) for i in range(3)]
    torn = line(record(run_id="t"))[:40] + line(record(run_id="u"))  # a write cut short
    write_history(mirror, HOST, good[0] + torn + good[1] + good[2])
    stats = load.load_mirror(con, mirror)
    assert (stats.runs_added, stats.rejects_added) == (3, 1)
    (reason,) = con.execute("SELECT reason FROM rejects").fetchone() or ("",)
    assert reason.startswith("invalid JSON")
    assert tries == [False, True]  # the batch was parsed again, with TRY


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_host_directories_and_files_that_cannot_be_entered_are_named(tmp_path: Path) -> None:
    """Root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH is held to the permission bits,
    as an operator's own account is."""
    mirror, db = tmp_path / "m", tmp_path / "w.duckdb"
    for host in ("a", "b", "c", "d"):
        write_history(mirror, host, line(record(run_id=f"{host}-1")))
    (mirror / "c" / "history.jsonl").chmod(0)
    (mirror / "b").chmod(0)  # cannot be listed
    (mirror / "d").chmod(0o644)  # listed, but its files cannot be reached
    caps = "-dac_override,-dac_read_search"
    cmd = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-m",
           "pipeline", "--db", str(db), "ingest", "--from", str(mirror)]  # fmt: skip
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        for host in ("b", "d"):
            (mirror / host).chmod(0o755)
    assert done.returncode == 4, done.stderr
    assert f"not read: {mirror / 'b'}: Permission denied" in done.stderr
    assert f"not read: {mirror / 'c' / 'history.jsonl'}: Permission denied" in done.stderr
    assert f"not read: {mirror / 'd' / 'history.jsonl'}: Permission denied" in done.stderr
    assert "Traceback" not in done.stderr
    con = warehouse.connect(db, read_only=True)
    assert con.execute("SELECT host FROM runs").fetchall() == [("a",)]
