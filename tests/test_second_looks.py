"""Second looks at rebuild, demo, Ctrl-C, ties and host names: each test states what the code
promises and failed, before its fix, on the case named in its docstring."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from clirun import REPO, fs
from factories import SHA_A, ago, line, record, write_history, write_observation

from pipeline import load, report, warehouse
from pipeline.errors import FleetstateError

HOST = "h1.example.com"


# --- collect: Ctrl-C ---------------------------------------------------------------------


@pytest.fixture
def blackhole_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a TCP connect to it hangs (SYN dropped)
    until the connect timeout, like a host that is down behind a firewall."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:
        yield port
    finally:
        filler.close()
        sock.close()


def test_ctrl_c_stops_a_host_that_is_still_connecting(tmp_path: Path, blackhole_port: int) -> None:
    """README: 'Ctrl-C: hosts being collected stop at once'. Abort.fire() calls run_script's
    kill(), which closes only what is already in `closers`; a socket still in
    socket.create_connection() is not there yet, and nothing checks `fired` afterwards, so the
    host goes on until --connect-timeout (and, had it connected, through the whole session)."""
    (tmp_path / "ssh_config").write_text("")
    args = [
        "ingest",
        "localhost",
        "--ssh-config",
        str(tmp_path / "ssh_config"),
        "--known-hosts",
        str(tmp_path / "known_hosts"),
        "--user",
        "nobody",
        "--port",
        str(blackhole_port),
        "--mirror",
        str(tmp_path / "mirror"),
        "--timeout",
        "86400",
        "--connect-timeout",
        "3600",
        "--retries",
        "0",
    ]  # fmt: skip  (a day, an hour: only stopping on Ctrl-C ends it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--db", str(tmp_path / "wh.duckdb"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )  # fmt: skip
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the ingest did not stop on Ctrl-C while its host was connecting")
    assert proc.returncode == 130 and "interrupted" in err, err


# --- load: observations of one instant ---------------------------------------------------


def test_latest_observation_of_one_instant_is_the_line_appended_later(tmp_path: Path) -> None:
    """_insert_observations now keeps two different observations of one instant (content
    identity), but latest_observation (queries/10_latest_runs.sql) takes
    arg_max(o, observed_at) with no tie-break: whichever row is stored first wins (the line
    appended earlier for some contents, the later one for others, varying from run to run
    with the INSERT's QUALIFY window), so host_state's reachable/last_error are arbitrary,
    while runs break the same tie by 'the line appended later' (run_recency)."""
    wrong = []
    for i in range(12):
        mirror = tmp_path / f"m{i}"
        write_history(mirror, HOST, line(record(ago(hours=1), run_id="a", host=HOST)))
        when = "2026-11-20T10:00:00Z"
        reachable = {"observed_at": when, "reachable": True, "role": f"role{i}"}
        unreachable = {"observed_at": when, "reachable": False, "error": "ssh: timeout"}
        unreachable_last = i % 2 == 0
        for obs in (reachable, unreachable) if unreachable_last else (unreachable, reachable):
            write_observation(mirror, HOST, **obs)
        con = warehouse.connect(tmp_path / f"w{i}.duckdb")
        load.load_mirror(con, mirror)
        assert con.execute("SELECT count(*) FROM observations").fetchone() == (2,)
        last = con.execute("SELECT reachable FROM latest_observation").fetchone()
        con.close()
        if last != (not unreachable_last,):
            wrong.append(i)
    assert not wrong, f"the earlier line won in cases {wrong} of 12"


# --- load: the collector's cursor --------------------------------------------------------


def test_a_corrupt_collector_cursor_does_not_stop_the_load(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """committed_sizes() treats an unreadable .cursor.json as 'no cursor' (OSError, ValueError,
    TypeError, KeyError), but int() of a JSON number too large for a double (1e999 -> inf)
    raises OverflowError, which escapes load_mirror (and cli._run: a traceback)."""
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a", host=HOST)))
    (mirror / HOST / ".cursor.json").write_text(
        '{"inode": 1, "offset": 0, "window": "", "history_size": 1e999, "observations_size": 0}'
    )
    stats = load.load_mirror(con, mirror)
    assert stats.runs_added == 1


# --- report.resolve_host -----------------------------------------------------------------


def test_resolve_host_names_hosts_that_differ_only_in_case_as_ambiguous(
    con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """`history` takes 'any case', but with Web1.example.com and web1.example.com both in the
    warehouse (loaded from two mirrors), WEB1.EXAMPLE.COM silently resolves to
    whichever sorts first instead of being reported as ambiguous."""
    for i, host in enumerate(("Web1.example.com", "web1.example.com")):
        # two mirrors: one mirror's directories differing only in case are one host
        write_history(tmp_path / f"m{i}", host, line(record(run_id=host, host=host)))
        load.load_mirror(con, tmp_path / f"m{i}")
    assert report.resolve_host(con, "web1.example.com") == "web1.example.com"
    with pytest.raises(FleetstateError, match="ambiguous"):
        report.resolve_host(con, "WEB1.EXAMPLE.COM")


# --- warehouse.rebuilding ----------------------------------------------------------------


def test_two_rebuilds_of_a_new_warehouse_do_not_share_a_scratch_file(tmp_path: Path) -> None:
    """rebuilding() holds no lock when `path` does not exist yet, and every rebuild of `path`
    builds in the same `.NAME.rebuild`, which it first deletes: a second rebuild (or demo)
    started meanwhile unlinks the first one's file under it; one of the two then fails with
    a raw errno message and the other's result is what stays."""
    db = tmp_path / "wh.duckdb"
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a", host=HOST)))
    first = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from pipeline import warehouse\n"
         "with warehouse.rebuilding(Path(sys.argv[1])) as con:\n"
         "    con.execute(\"INSERT INTO meta VALUES ('who', 'first')\")\n"
         "    print('ready', flush=True); time.sleep(4)\n",
         str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    assert first.stdout is not None and first.stdout.readline().strip() == "ready"
    second = fs(db, "rebuild", "--mirror", str(mirror))
    _, first_err = first.communicate(timeout=30)
    outcomes = (first.returncode, second.returncode)
    # one of them may be refused (locked / in progress); neither may fail half-way
    assert "No such file or directory" not in first_err + second.stderr, (
        outcomes,
        first_err,
        second.stderr,
    )
    if outcomes == (0, 0):
        who = (
            duckdb.connect(str(db), read_only=True)
            .execute("SELECT value FROM meta WHERE key = 'who'")
            .fetchall()
        )
        assert who == [("first",)] or not who


def test_rebuild_through_a_symlink_rebuilds_the_warehouse_it_points_to(tmp_path: Path) -> None:
    """`--db link.duckdb` where link.duckdb -> real.duckdb: rebuilding() os.replace()s the
    link itself with a new regular file; real.duckdb keeps the old data, so every user of the
    real path (or of another link to it) goes on reading the warehouse that was 'rebuilt'."""
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a", host=HOST)))
    real, link = tmp_path / "real.duckdb", tmp_path / "link.duckdb"
    assert fs(real, "ingest", "--from", str(mirror)).returncode == 0
    con = duckdb.connect(str(real))  # a rejects row the mirror does not hold: a rebuild drops it
    con.execute("INSERT INTO rejects VALUES (?, 'x', 0, 'old', 'old', now())", [HOST])
    con.close()
    link.symlink_to(real.name)
    done = fs(link, "rebuild", "--mirror", str(mirror))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink(), "the link was replaced by a regular file"
    con = duckdb.connect(str(real), read_only=True)
    assert con.execute("SELECT * FROM rejects WHERE reason = 'old'").fetchall() == []


# --- demo --------------------------------------------------------------------------------


def test_demo_mirror_is_readable_like_any_directory_it_makes(tmp_path: Path) -> None:
    """_replace_mirror builds the sample in tempfile.mkdtemp() and renames it into place, so
    the demo mirror is now mode 0700 (it was 0755, the umask's, before): other users (a
    teammate, a web server reading data/demo) can no longer read it."""
    old = os.umask(0o022)
    try:
        done = fs(tmp_path / "d.duckdb", "demo", "--mirror", str(tmp_path / "demo"), cwd=tmp_path)
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "demo").stat().st_mode & 0o777 == 0o755


def test_demo_replaces_an_empty_warehouse_file(tmp_path: Path) -> None:
    """rebuilding() replaces a 0-byte file (and `rebuild` does), but demo's
    _refuse_real_warehouse opens it read-only first: 'cannot open warehouse ...: IO Error:
    The file ... exists, but it is not a valid DuckDB database file!' although it holds
    no data at all."""
    db = tmp_path / "d.duckdb"
    db.write_bytes(b"")
    done = fs(db, "demo", "--mirror", str(tmp_path / "demo"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_rebuild_waits_for_a_short_lock_like_every_writable_open(tmp_path: Path) -> None:
    """warehouse.connect() waits FLEETSTATE_LOCK_WAIT_S for a lock another process holds
    (a `status` or a metrics cron reading for a moment); rebuilding() calls duckdb.connect
    once and refuses at once, so `rebuild`/`demo` fail where `ingest` would have waited."""
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(run_id="a", host=HOST)))
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
         "print('ready', flush=True); time.sleep(1.5); c.close()",
         str(db)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "--db", str(db), "rebuild", "--mirror", str(mirror)],
            capture_output=True, text=True, cwd=REPO,
            env={**os.environ, "FLEETSTATE_LOCK_WAIT_S": "10"},
        )  # fmt: skip
    finally:
        holder.wait(timeout=30)
    assert done.returncode == 0, done.stderr


# --- cli ---------------------------------------------------------------------------------


def test_ctrl_c_during_a_collection_leaves_the_terminal_as_it_was(tmp_path: Path) -> None:
    """On a terminal, rich's progress bar hides the cursor; collect_fleet emits 'finish' (which
    stops it) only on a normal end, so after Ctrl-C the bar is drawn again under
    'fleetstate: interrupted' and the cursor stays hidden (no ESC[?25h) in the user's shell."""
    import pty
    import select

    (tmp_path / "ssh_config").write_text("")
    server = socket.socket()  # accepts and says nothing: the host is 'in flight'
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    args = [
        sys.executable, "-m", "pipeline", "--db", str(tmp_path / "wh.duckdb"), "ingest",
        "localhost", "--ssh-config", str(tmp_path / "ssh_config"),
        "--known-hosts", str(tmp_path / "kh"), "--user", "nobody",
        "--port", str(server.getsockname()[1]), "--mirror", str(tmp_path / "mirror"),
        "--timeout", "20", "--connect-timeout", "10", "--retries", "0",
    ]  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on a terminal
        os.chdir(REPO)
        os.execv(sys.executable, args)
    out, start, sent = b"", time.monotonic(), False
    while time.monotonic() - start < 40:
        if not sent and time.monotonic() - start > 3:
            os.kill(pid, signal.SIGINT)
            sent = True
        if select.select([fd], [], [], 0.2)[0]:
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    os.waitpid(pid, 0)
    server.close()
    assert b"interrupted" in out
    assert out.count(b"\x1b[?25l") == out.count(b"\x1b[?25h"), out[-200:]


def test_rollout_interval_without_watch_is_a_usage_error(tmp_path: Path) -> None:
    """'options that only apply elsewhere are usage errors': --from/--ingest/--iterations
    without --watch are, but --interval (which only paces a watch) is silently ignored."""
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(ago(hours=1), run_id="a", host=HOST)))
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    assert fs(db, "rollout", SHA_A, "--iterations", "2").returncode == 2
    assert fs(db, "rollout", SHA_A, "--interval", "5").returncode == 2


# --- render ------------------------------------------------------------------------------


def test_a_negative_interval_in_a_table_reads_as_itself() -> None:
    """render._cell shows an interval as str(timedelta) 'as people read them (1:30:00)'; a
    negative one (a clock-skewed host, `ts - started_at`) reads '-1 day, 23:59:55' for -5 s."""
    from datetime import timedelta

    from pipeline import render

    assert render._cell(timedelta(seconds=-5)) in ("-0:00:05", "-5s", "-00:00:05")


def test_an_infinite_interval_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    """The new option ranges give floats a minimum only: `--interval inf` passes and
    time.sleep(inf) raises OverflowError, a traceback (cli._run maps only FleetstateError,
    OSError and DuckDB's errors); `ingest --connect-timeout inf` likewise fails every host
    with 'OverflowError ... timestamp out of range' instead of a usage error."""
    mirror = tmp_path / "m"
    write_history(mirror, HOST, line(record(ago(hours=1), run_id="a", host=HOST)))
    write_history(
        mirror,
        "h2.example.com",
        line(record(ago(hours=1), run_id="b", host="h2.example.com", git_sha="b" * 40)),
    )
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    done = fs(db, "rollout", SHA_A, "--watch", "--interval", "inf", "--iterations", "2")
    assert "Traceback" not in done.stderr, done.stderr[-300:]
    assert done.returncode == 2, done.stderr[-300:]
