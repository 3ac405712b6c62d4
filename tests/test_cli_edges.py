"""The command at its edges: demo and rebuild never destroy what they did not make, foreign
warehouses, strict json, option ranges, Ctrl-C, help at 80 columns. Each failed before its fix.

A real process and a real warehouse, as tests/test_cli.py does.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from clirun import REPO, cli_env, fs
from factories import SHA_A, SHA_B, ago, line, record, write_history, write_observation


def interrupted(
    db: Path, *args: str, after: float, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run the command, send SIGINT (Ctrl-C) after `after` seconds; rc, stdout, stderr.
    A command that has not ended 120 s after the signal fails the test (give it timeouts
    of hours, so that only stopping on the signal ends it in that time)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--db", str(db), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd or REPO, env=cli_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )  # fmt: skip
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{args[0]} did not stop on Ctrl-C")
    return proc.returncode, out, err


def _two_hosts(tmp_path: Path) -> tuple[Path, Path]:
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    for host, sha in (("h1", SHA_A), ("h2", SHA_B)):
        write_history(mirror, host, line(record(ago(hours=1), git_sha=sha, run_id=host)))
        write_observation(mirror, host)
    done = fs(db, "ingest", "--from", str(mirror))
    assert done.returncode == 0, done.stderr
    return mirror, db


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says anything (not sshd)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _ssh_args(tmp_path: Path, port: int, timeout: str, connect_timeout: str) -> list[str]:
    config = tmp_path / "ssh_config"
    config.write_text("")
    return [
        "--ssh-config", str(config), "--known-hosts", str(tmp_path / "known_hosts"),
        "--user", "nobody", "--port", str(port), "--mirror", str(tmp_path / "mirror"),
        "--timeout", timeout, "--connect-timeout", connect_timeout, "--retries", "0",
    ]  # fmt: skip


# --- demo -------------------------------------------------------------------------------


def test_demo_progress_lines_have_no_literal_backslash_n(tmp_path: Path) -> None:
    """demo.py passes '...\\n' and '\\nnext: ...' to cli._progress, which escapes control
    characters: stderr shows a literal backslash-n."""
    done = fs(tmp_path / "d.duckdb", "demo", "--mirror", str(tmp_path / "demo"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\\n" not in done.stderr, done.stderr


def test_demo_does_not_delete_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """`demo --mirror DIR` runs shutil.rmtree(DIR) on whatever DIR is (data/mirror, the
    only copy of collected history, say); the warehouse is guarded, the mirror is not."""
    precious = tmp_path / "mirror"
    (precious / "host-a").mkdir(parents=True)
    (precious / "host-a" / "history.jsonl").write_bytes(line(record(run_id="real")))
    (precious / "notes.txt").write_text("keep me\n")
    fs(tmp_path / "d.duckdb", "demo", "--mirror", str(precious), cwd=tmp_path)
    assert (precious / "notes.txt").exists()
    assert (precious / "host-a" / "history.jsonl").exists()


# --- warehouse integrity ---------------------------------------------------------------


def test_a_writable_open_restores_a_dropped_view(tmp_path: Path) -> None:
    """README/docs/sql.md: queries/ are 're-applied on every writable open'. They are
    re-applied only when their text's fingerprint in `meta` changed, so a dropped view stays
    dropped; only `rebuild` (which loses the commit graph and worker activity) brings it
    back."""
    mirror, db = _two_hosts(tmp_path)
    con = duckdb.connect(str(db))
    con.execute("DROP VIEW host_state")
    con.close()
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    done = fs(db, "status", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 2


def test_rebuild_refuses_a_warehouse_another_process_has_open(tmp_path: Path) -> None:
    """rebuild unlinks the file before opening it, so it never meets the lock: the other
    process keeps writing to a deleted file."""
    mirror, db = _two_hosts(tmp_path)
    holder = duckdb.connect(str(db))
    try:
        (tmp_path / "empty").mkdir()
        done = fs(db, "rebuild", "--mirror", str(tmp_path / "empty"))
        assert done.returncode == 1 and "locked" in done.stderr, done.stderr
    finally:
        holder.close()
    assert json.loads(fs(db, "sql", "SELECT count(*) AS n FROM runs", "-f", "json").stdout) == [
        {"n": 2}
    ]


def test_a_duckdb_file_that_is_not_a_warehouse_is_named_and_left_alone(tmp_path: Path) -> None:
    """A DuckDB file of something else: read commands say 'Catalog Error: Table with name
    host_state does not exist!' and ingest silently adds fleetstate's tables to it."""
    other = tmp_path / "analytics.duckdb"
    con = duckdb.connect(str(other))
    con.execute("CREATE TABLE foo (a INT)")
    con.close()
    status = fs(other, "status")
    assert status.returncode == 1
    assert "Catalog Error" not in status.stderr, status.stderr
    (tmp_path / "m").mkdir()
    fs(other, "ingest", "--from", str(tmp_path / "m"))
    con = duckdb.connect(str(other), read_only=True)
    found = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    tables = {r[0] for r in found}
    con.close()
    assert tables == {"foo"}


# --- json / csv --------------------------------------------------------------------------


def test_sql_json_is_strict_json(tmp_path: Path) -> None:
    """json.dumps writes NaN and Infinity, which are not JSON (jq prints NaN as null,
    strict parsers refuse)."""
    _, db = _two_hosts(tmp_path)
    done = fs(db, "sql", "SELECT 'NaN'::DOUBLE AS n, 1/0 AS i", "--format", "json")
    assert done.returncode == 0, done.stderr

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    json.loads(done.stdout, parse_constant=refuse)


def test_sql_json_keeps_every_column_of_a_join(tmp_path: Path) -> None:
    """Two result columns with one name (r.role, o.role) become one json key: the first
    value is silently lost (csv keeps both)."""
    _, db = _two_hosts(tmp_path)
    query = "SELECT 1 AS a, 2 AS a"
    rows = json.loads(fs(db, "sql", query, "--format", "json").stdout)
    assert 1 in rows[0].values() and 2 in rows[0].values(), rows


# --- option validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("--min", "nan"), ("--min", "-5"), ("--stale-hours", "-1")],
)
def test_rollout_refuses_meaningless_gate_and_window(tmp_path: Path, args: tuple[str, str]) -> None:
    """--min nan prints 'gate not met: ... < nan%' and exits 3; --min -5 always passes;
    --stale-hours -1 makes every pending host unreported."""
    _, db = _two_hosts(tmp_path)
    done = fs(db, "rollout", SHA_A, *args, "--format", "json")
    assert done.returncode == 2, (args, done.returncode, done.stderr)


def test_drift_since_zero_is_refused(tmp_path: Path) -> None:
    """--since 0d is accepted and answers with today's rows ('drift over the last 0d')."""
    _, db = _two_hosts(tmp_path)
    done = fs(db, "drift", "--since", "0d", "--format", "json")
    assert done.returncode in (1, 2), done.stdout


def test_a_missing_host_list_file_is_an_error_not_a_host(tmp_path: Path) -> None:
    """README's `fleetstate ingest hosts.txt`, with hosts.txt missing (a typo, wrong cwd):
    'hosts.txt' is a valid host name, so it is collected, fails, and stays in the warehouse
    as a host forever (status shows it)."""
    db = tmp_path / "wh.duckdb"
    args = _ssh_args(tmp_path, 22, "5", "1")
    fs(db, "ingest", "hosts.txt", *args, cwd=tmp_path)
    done = fs(db, "sql", "SELECT host FROM host_state", "--format", "json")
    hosts = [r["host"] for r in json.loads(done.stdout)] if done.returncode == 0 else []
    assert "hosts.txt" not in hosts


# --- SSH collection: no traceback, Ctrl-C -----------------------------------------------


def test_a_port_that_is_not_sshd_gives_no_traceback(tmp_path: Path, silent_port: int) -> None:
    """paramiko's transport thread logs 'Exception (client): Error reading SSH protocol
    banner' with a full traceback; no handler is set on the 'paramiko' logger, so Python's
    last-resort handler writes it to stderr."""
    db = tmp_path / "wh.duckdb"
    done = fs(db, "ingest", "localhost", *_ssh_args(tmp_path, silent_port, "6", "2"))
    assert done.returncode == 4, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_ctrl_c_during_collection_stops_promptly_with_one_line(
    tmp_path: Path, silent_port: int
) -> None:
    """SIGINT reaches the main thread in as_completed(); the ThreadPoolExecutor's exit then
    waits for every host to time out (--timeout, 60 s by default), and exits 130 silently
    (typer turns KeyboardInterrupt into Exit(130), so cli.main's 'fleetstate: interrupted'
    is never printed)."""
    db = tmp_path / "wh.duckdb"
    # a day per host, an hour to connect: only stopping on Ctrl-C ends it in time
    rc, _, err = interrupted(
        db, "ingest", "localhost", *_ssh_args(tmp_path, silent_port, "86400", "3600"), after=3
    )
    assert rc != 0 and "Traceback" not in err, err
    assert "interrupted" in err, err


def test_ctrl_c_says_so(tmp_path: Path) -> None:
    _, db = _two_hosts(tmp_path)
    rc, _, err = interrupted(
        db, "rollout", SHA_A, "--watch", "--interval", "100", "--format", "json", after=3
    )
    assert rc != 0
    assert "interrupted" in err, (rc, err)


def test_ctrl_c_in_a_json_watch_still_writes_the_last_refresh(tmp_path: Path) -> None:
    """docs/analytics.md: --watch 'stops ... on Ctrl-C'; 'with --format json or csv stdout
    gets one document, of the last refresh'. On Ctrl-C stdout is empty."""
    _, db = _two_hosts(tmp_path)
    _, out, _ = interrupted(
        db, "rollout", SHA_A, "--watch", "--interval", "100", "--format", "json", after=3
    )
    assert isinstance(json.loads(out), list)


# --- help --------------------------------------------------------------------------------


def test_ingest_help_names_every_option_at_80_columns(tmp_path: Path) -> None:
    """At 80 columns (a pipe, a default terminal) typer cuts option names and help text:
    '--accept-new-hos…', 'UserKnownHostsFi…', '/etc/ssh/ssh_kno…'. tests/test_cli.py runs
    with COLUMNS=200 and does not see it."""
    done = fs(tmp_path / "x.duckdb", "ingest", "--help", columns="80")
    assert done.returncode == 0
    assert "…" not in done.stdout, done.stdout
    assert "--accept-new-host-keys" in done.stdout


# --- small output defects ------------------------------------------------------------------


def test_sql_takes_one_query(tmp_path: Path) -> None:
    """'' answered [] and 'SELECT 1; SELECT 2' showed only the last answer."""
    _, db = _two_hosts(tmp_path)
    for query, found in (("", "no statement"), ("SELECT 1; SELECT 2", "2 statements")):
        done = fs(db, "sql", query)
        assert done.returncode == 1 and found in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert fs(db, "sql", "SELECT 1 AS a -- a comment;", "-f", "json").stdout.strip() == (
        '[\n  {\n    "a": 1\n  }\n]'
    )


def test_status_counts_read_as_english(tmp_path: Path) -> None:
    """An empty warehouse said '0 hosts; applied: ' and one host '1 hosts'."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    (mirror).mkdir()
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    assert fs(db, "status").stderr.splitlines()[-1] == "0 hosts"
    write_history(mirror, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="h1")))
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    assert fs(db, "status").stderr.splitlines()[-1].startswith("1 host; applied: ")


def test_metrics_out_errors_name_the_file_asked_for(tmp_path: Path) -> None:
    _, db = _two_hosts(tmp_path)
    target = tmp_path / "no-such-dir" / "fleet.prom"
    done = fs(db, "metrics", "--out", str(target))
    assert done.returncode == 1
    assert f"cannot write {target}" in done.stderr and ".fleet.prom." not in done.stderr


@pytest.mark.parametrize(
    "option",
    [["--timeout", "5"], ["--ssh-config", "cfg"], ["--jobs", "2"], ["--accept-new-host-keys"]],
)
def test_rollout_ssh_options_without_watch_ingest_are_usage_errors(
    tmp_path: Path, option: list[str]
) -> None:
    """`rollout` takes ingest's SSH options for `--watch --ingest`; given anywhere else they
    would do nothing, so they are refused (exit 2) as `--mirror` is, with or without
    `--watch --from`."""
    mirror = tmp_path / "m"
    write_history(mirror, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="h1")))
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    for watch in ([], ["--watch", "--from", str(mirror), "--iterations", "1"]):
        out = fs(db, "rollout", SHA_A, *watch, *option)
        assert out.returncode == 2, (watch, out.returncode, out.stderr)
        assert "only with --watch --ingest" in out.stderr and option[0] in out.stderr
