"""Review 13 (soak): defects a day of concurrent use showed, each reproduced deterministically.

1. `rollout --watch --ingest/--from` keeps the writable connection of its ingest open
   between refreshes (cli.py ingest: `con = _open(read_only=False)` is closed only when
   the command ends), so a cron `ingest` that runs while the watch sleeps fails.
2. A second `warehouse.connect` in a process that already holds a connection drops the
   process's DuckDB lock on the file: `_is_duckdb_file` opens and closes the warehouse file,
   and closing any descriptor of a file releases the process's POSIX (fcntl) locks on it.
   Another process then opens the warehouse for writing while the first still writes to
   it (its commit fails on the WAL's lock with DuckDB's raw error), and `rebuild` replaces
   the file under the live writer.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from clirun import REPO, cli_env, fs  # noqa: E402
from sshfleet import record  # noqa: E402

from pipeline import warehouse  # noqa: E402

NOBODY_RAN = "b" * 40  # a full sha no host has run: the rollout stays pending, the watch goes on


def _mirror(root: Path, host: str, n: int, start: int = 0) -> Path:
    d = root / host
    now = datetime.now(UTC)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "history.jsonl", "ab") as fh:
        for i in range(start, start + n):
            # recent runs (the last hour): the host reports, so a rollout it has not
            # reached stays pending
            ts = (now - timedelta(seconds=3600 - i)).strftime("%Y-%m-%dT%H:%M:%SZ")
            rec = record(ts, host=host, run_id=f"{host}-run-{i:04d}")
            fh.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
    return root


def _runs(db: Path) -> int:
    out = fs(db, "sql", "SELECT count(*) AS n FROM runs", "--format", "json")
    assert out.returncode == 0, out.stderr
    return int(json.loads(out.stdout)[0]["n"])


def _wait_for_line(proc: subprocess.Popen[str], needle: str) -> list[str]:
    """stderr lines of `proc` up to the first holding `needle` (the watch's first refresh)."""
    seen: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"the watch ended before {needle!r}: {''.join(seen)[-2000:]}")


def test_cron_ingest_succeeds_while_a_watch_sleeps_between_refreshes(tmp_path: Path) -> None:
    """README: commands may run at once (a cron ingest, operators' reports); a watch is
    meant to be the one that waits ("a cron ingest, say: a watch tries again next time").
    Seen in the soak: with `rollout --watch --ingest` running, every cron ingest for the
    whole watch failed with `TransactionContext Error: Failed to commit: Could not set lock
    on file ".../fs.duckdb.wal": Conflicting lock is held in ... (PID <the watch>)`."""
    db = tmp_path / "wh.duckdb"
    watched = _mirror(
        tmp_path / "watched", "w1.example.com", 3
    )  # the watch's first ingest loads it
    watch = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--db", str(db), "rollout", NOBODY_RAN, "--watch",
         "--from", str(watched), "--interval", "600", "--iterations", "2", "--format", "json"],
        cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for_line(watch, "hosts converged")  # refresh 1 done: the watch now sleeps
        cron = _mirror(tmp_path / "cron", "c1.example.com", 5)
        out = fs(db, "ingest", "--from", str(cron))
        assert out.returncode == 0, out.stderr
        fd_dir = Path(f"/proc/{watch.pid}/fd")
        if fd_dir.is_dir():  # Linux: what the sleeping watch still has open
            held = sorted(
                {os.readlink(fd_dir / f) for f in os.listdir(fd_dir)} & {str(db), str(db) + ".wal"}
            )
            assert held == [], f"the sleeping watch still holds {held}"
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(60)
    assert _runs(db) == 8


def _writer_that_opened_twice(db: Path) -> object:
    """A process's writable connection, after the same process opened the warehouse once
    more and closed that (what `rollout --watch --ingest` does on every refresh)."""
    assert (
        fs(db, "ingest", "--from", str(_mirror(db.parent / "m0", "h0.example.com", 2))).returncode
        == 0
    )
    held = warehouse.connect(db)
    warehouse.connect(db).close()
    return held


def test_a_second_open_in_the_same_process_keeps_other_writers_out(tmp_path: Path) -> None:
    """While a process holds the warehouse writable, another process's ingest waits
    FLEETSTATE_LOCK_WAIT_S and stops with the one-line 'locked' error (README). After the
    holder opened and closed a second connection, the other process gets in instead: here
    its load fails at commit with DuckDB's raw 'TransactionContext Error' (exit 1); a
    writer that takes no WAL lock first would write a file another process is writing."""
    db = tmp_path / "wh.duckdb"
    held = _writer_that_opened_twice(db)
    try:
        probe = subprocess.run(
            [sys.executable, "-c",
             "import duckdb, sys; duckdb.connect(sys.argv[1]).close(); print('opened')", str(db)],
            capture_output=True, text=True, cwd=REPO,
        )  # fmt: skip
        assert "opened" not in probe.stdout, "another process opened the held warehouse read-write"
        out = fs(db, "ingest", "--from", str(_mirror(tmp_path / "m1", "h1.example.com", 2)))
        assert out.returncode == 1, out.stderr
        assert "is locked by another fleetstate process" in out.stderr, out.stderr
        assert "TransactionContext" not in out.stderr
    finally:
        held.close()  # type: ignore[attr-defined]


def test_rebuild_does_not_replace_a_warehouse_a_live_process_writes(tmp_path: Path) -> None:
    """README: rebuild holds the guard 'so nothing is written into a file about to be
    replaced'; a warehouse another process holds open for writing is refused (locked).
    After the holder's second open it is replaced under it (rebuild exits 0), and what the
    holder writes afterwards goes into the unlinked old file."""
    db = tmp_path / "wh.duckdb"
    held = _writer_that_opened_twice(db)
    try:
        before = os.stat(db).st_ino
        out = fs(db, "rebuild", "--mirror", str(tmp_path / "m0"))
        assert out.returncode == 1 and "locked" in out.stderr, (out.returncode, out.stderr)
        assert os.stat(db).st_ino == before, "the warehouse file was replaced under a live writer"
    finally:
        held.close()  # type: ignore[attr-defined]


def test_reading_the_file_header_drops_the_lock(tmp_path: Path) -> None:
    """The same with a plain open()/close() of the warehouse file, which is all
    `_is_duckdb_file` does: any descriptor closed releases the process's fcntl locks."""
    db = tmp_path / "wh.duckdb"
    assert (
        fs(db, "ingest", "--from", str(_mirror(tmp_path / "m0", "h0.example.com", 2))).returncode
        == 0
    )
    held = warehouse.connect(db)
    try:
        assert warehouse._is_duckdb_file(db)  # noqa: SLF001 - the call connect() makes
        out = fs(db, "sql", "SELECT 1")
        assert out.returncode == 1 and "locked" in out.stderr, (out.returncode, out.stderr)
    finally:
        held.close()


def test_a_warehouse_this_process_made_is_not_read_again_while_held(tmp_path: Path) -> None:
    """The first open of a new warehouse makes the file (no header to read then); a second
    open in the same process must not read its header either, or the first connection's
    lock goes: another process would be let in."""
    db = tmp_path / "new.duckdb"
    held = warehouse.connect(db)  # creates it
    try:
        warehouse.connect(db, read_only=False).close()  # as `rollout --watch` refreshes
        out = fs(db, "sql", "SELECT 1")
        assert out.returncode == 1 and "locked" in out.stderr, (out.returncode, out.stderr)
    finally:
        held.close()
