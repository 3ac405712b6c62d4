"""The loader under interruption and odd arrival orders: the warehouse is the same however
the bytes arrived or the load was cut (each test failed before its fix)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from clirun import REPO
from factories import line, record, write_history, write_observation

from pipeline import load, warehouse

HOST = "h1.example.com"


def _obs_rows(con: duckdb.DuckDBPyConnection) -> list[tuple[object, ...]]:
    return con.execute(
        "SELECT host, observed_at, reachable, error FROM observations ORDER BY ALL"
    ).fetchall()


def test_repeated_observation_lines_load_the_same_whatever_the_batching(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two observation lines with one (host, observed_at): the result must not depend on
    whether they fall in one transaction (both inserted) or two (the second dropped,
    silently, without a reject)."""
    mirror = tmp_path / "m"
    write_observation(mirror, HOST, observed_at="2026-11-20T10:00:00Z", reachable=True)
    write_observation(
        mirror, HOST, observed_at="2026-11-20T10:00:00Z", reachable=False, error="ssh: timeout"
    )
    results = []
    for batch in (None, 1):  # one transaction; one transaction per line
        monkeypatch.setattr(load, "BATCH_BYTES", batch)
        con = warehouse.connect(tmp_path / f"b{batch}.duckdb")
        load.load_mirror(con, mirror)
        results.append((_obs_rows(con), con.execute("SELECT count(*) FROM rejects").fetchall()))
        con.close()
    assert results[0] == results[1]


def test_the_same_observation_line_twice_is_one_observation_like_runs(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """Loading a file in one go vs. in two steps (the second line appended later) must agree."""
    mirror = tmp_path / "m"
    write_observation(mirror, HOST, observed_at="2026-11-20T10:00:00Z")
    write_observation(mirror, HOST, observed_at="2026-11-20T10:00:00Z")
    load.load_mirror(con, mirror)
    once = _obs_rows(con)

    other = warehouse.connect(tmp_path / "incremental.duckdb")
    step = tmp_path / "step"
    write_observation(step, HOST, observed_at="2026-11-20T10:00:00Z")
    load.load_mirror(other, step)
    write_observation(step, HOST, observed_at="2026-11-20T10:00:00Z")
    load.load_mirror(other, step)
    assert _obs_rows(other) == once
    other.close()


def test_a_run_seen_in_the_state_file_before_its_history_line_loads_as_a_clean_load_does(
    tmp_path: Path,
) -> None:
    """The state file (here carried by an observation) is ahead of the mirrored history by one
    run; one collection later the history line arrives. The incremental warehouse must equal a
    clean load of the final mirror (source 'history', its file and offset)."""
    mirror = tmp_path / "m"
    a, b = record(run_id="a"), record(run_id="b", ts="2026-11-20T11:00:00Z")
    write_history(mirror, HOST, line(a))
    write_observation(mirror, HOST, observed_at="2026-11-20T11:00:05Z", state_file=json.dumps(b))
    inc = warehouse.connect(tmp_path / "inc.duckdb")
    load.load_mirror(inc, mirror)
    write_history(mirror, HOST, line(b))
    load.load_mirror(inc, mirror)
    clean = warehouse.connect(tmp_path / "clean.duckdb")
    load.load_mirror(clean, mirror)
    q = "SELECT run_id, source, source_path, byte_offset FROM runs ORDER BY run_id"
    assert inc.execute(q).fetchall() == clean.execute(q).fetchall()
    inc.close()
    clean.close()


def test_rebuild_of_a_warehouse_in_use_is_refused_and_keeps_its_data(
    db_path: Path, tmp_path: Path
) -> None:
    """`rebuild` deletes the file and its WAL before taking the lock: another process's
    warehouse (an ingest in progress) is unlinked under it and its writes are lost."""
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a")))
    warehouse.connect(db_path).close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb,sys,time; c=duckdb.connect(sys.argv[1]); "
         "c.execute(\"INSERT INTO meta VALUES ('held', 'yes')\"); "
         "print('ready', flush=True); time.sleep(30)",
         str(db_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        inode = db_path.stat().st_ino
        cli = subprocess.run(
            [sys.executable, "-m", "pipeline", "--db", str(db_path), "rebuild",
             "--mirror", str(mirror)],
            capture_output=True, text=True, env={**os.environ, "FLEETSTATE_LOCK_WAIT_S": "0.5"},
        )  # fmt: skip
        assert cli.returncode == 1 and "locked" in cli.stderr
        assert db_path.stat().st_ino == inode  # the file in use was not replaced
    finally:
        holder.kill()
        holder.wait()


def _interrupt(cmd: list[str], after_s: float, env: dict[str, str]) -> tuple[int, str]:
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's Ctrl-C
    )  # fmt: skip
    time.sleep(after_s)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_ctrl_c_during_a_query_is_interrupted_not_a_traceback(tmp_path: Path) -> None:
    """DuckDB turns SIGINT during a query into a builtins RuntimeError('Query interrupted'),
    which cli.main neither maps to `interrupted` (130) nor to a one-line error."""
    db = tmp_path / "wh.duckdb"
    warehouse.connect(db).close()
    cmd = [sys.executable, "-m", "pipeline", "--db", str(db), "sql",
           "SELECT count(*) FROM range(100000000000) t(x) WHERE x % 7 = 3"]  # fmt: skip
    rc, err = _interrupt(cmd, 2.0, dict(os.environ))
    assert "Traceback" not in err, err[-400:]
    assert rc == 130 and "interrupted" in err


def test_ctrl_c_during_an_ingest_never_shows_a_traceback(tmp_path: Path) -> None:
    """The same during `ingest` (small batches: most of the time is spent in DuckDB)."""
    mirror = tmp_path / "m"
    for h in range(4):
        body = b"".join(line(record(run_id=f"{h}-{i}")) for i in range(1500))
        write_history(mirror, f"host{h}.example.com", body)
    env = {**os.environ, "FLEETSTATE_BATCH_BYTES": "20000", "FLEETSTATE_LOAD_WORKERS": "1"}
    for attempt in range(8):
        db = tmp_path / f"i{attempt}.duckdb"
        cmd = [sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "--from", str(mirror)]
        rc, err = _interrupt(cmd, 1.0 + attempt * 0.25, env)
        assert "Traceback" not in err, err[-400:]
        assert rc in (0, 130)


def test_bytes_of_a_collection_that_died_are_not_kept_once_the_mirror_retracts_them(
    tmp_path: Path,
) -> None:
    """A collection appends, then dies before committing its mirror cursor; a load of the
    mirror runs in between (the loader takes no mirror lock and ignores .cursor.json); the
    next collection cuts the uncommitted bytes. The warehouse keeps what the mirror no longer
    has, so it differs from a clean load (or `rebuild`) of the same mirror."""
    from pipeline.collect import observation
    from pipeline.mirror import Cursor, Mirror

    root = tmp_path / "m"
    mirror = Mirror(root)
    mirror.append_history(HOST, line(record(run_id="a")))
    mirror.append_observation(HOST, observation(HOST, {"os": "Linux"}))
    mirror.save_cursor(HOST, Cursor(1, 10, b""))
    mirror.append_history(HOST, line(record(run_id="b")))  # never committed
    mirror.append_observation(HOST, observation(HOST, {"os": "Linux"}))
    inc = warehouse.connect(tmp_path / "inc.duckdb")
    load.load_mirror(inc, root)
    mirror.read_cursor(HOST)  # the next collection: uncommitted appends are cut
    mirror.append_history(HOST, line(record(run_id="c")))
    mirror.append_observation(HOST, observation(HOST, {"os": "Linux"}))
    mirror.save_cursor(HOST, Cursor(2, 10, b""))
    load.load_mirror(inc, root)
    clean = warehouse.connect(tmp_path / "clean.duckdb")
    load.load_mirror(clean, root)
    q = (
        "SELECT (SELECT list(run_id ORDER BY run_id) FROM runs), "
        "(SELECT count(*) FROM observations)"
    )
    assert inc.execute(q).fetchall() == clean.execute(q).fetchall()
    inc.close()
    clean.close()


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("FLEETSTATE_BATCH_BYTES", "64 MB", 1),
        ("FLEETSTATE_BATCH_BYTES", "0", 1),
        ("FLEETSTATE_BATCH_BYTES", "64M", 0),  # MiB, as the docs write it
        ("FLEETSTATE_LOAD_WORKERS", "two", 1),
        ("FLEETSTATE_LOCK_WAIT_S", "5s", 1),
    ],
)
def test_settings_from_the_environment_are_checked_in_one_line(
    tmp_path: Path, name: str, value: str, code: int
) -> None:
    """A bad value was a ValueError traceback (read at import, or by float())."""
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a")))
    cli = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(tmp_path / "w.duckdb"), "ingest",
         "--from", str(mirror)],
        capture_output=True, text=True, env={**os.environ, name: value},
    )  # fmt: skip
    assert cli.returncode == code, cli.stderr
    assert "Traceback" not in cli.stderr
    if code:
        assert name in cli.stderr and len(cli.stderr.strip().splitlines()) == 1, cli.stderr


def test_ctrl_c_as_the_command_exits_is_not_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C that lands after the command is done, while Python shuts down (CI saw it
    at the end of an ingest: "Exception ignored in ... KeyboardInterrupt" with a traceback
    of importlib's). Here it lands in an atexit callback, deterministically."""
    script = (
        "import atexit, os, signal, sys\n"
        "sys.argv = ['fleetstate', '--help']\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
        "from pipeline.cli import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=3600,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr
    assert done.returncode == 0 and "Usage" in done.stdout
