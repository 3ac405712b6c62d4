"""Do the README, docs/*.md, CHANGELOG and --help tell the truth?

Each test runs what a document says, as a user would (a real `fleetstate` process on a
real DuckDB file, or DuckDB itself on the warehouse file); each failed on the code
before its fix.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from clirun import REPO, cli_env, fs
from factories import SHA_A, SHA_B, ago, line, record, write_history, write_observation


def _refused_port_ssh_options(tmp_path: Path) -> list[str]:
    """SSH options that make every connection fail at once (nothing listens on port 1)
    and read nothing of the developer's ~/.ssh."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text("")
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    return [
        "--ssh-config", str(cfg), "--known-hosts", str(kh), "--port", "1",
        "--retries", "0", "--connect-timeout", "2", "--timeout", "5",
    ]  # fmt: skip


def _small_mirror(mirror: Path, host: str = "h1.example.com", sha: str = SHA_A) -> None:
    write_history(mirror, host, line(record(ago(minutes=10), host=host, git_sha=sha)))
    write_observation(mirror, host)


def _count(db: Path, table: str) -> int:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])
    finally:
        con.close()


# --- 1. `ingest HOST --from DIR`: --from is silently dropped --------------------------


def test_ingest_with_targets_and_from_does_not_silently_drop_from(tmp_path: Path) -> None:
    """README/contract: `--from DIR` loads a mirror-layout directory *instead of* using SSH.
    Given together with a host, the command SSHes to the host, loads --mirror, and never
    reads DIR, with no word about it (exit 4 for the host). Either refuse the mix (usage,
    exit 2) or load DIR."""
    src = tmp_path / "src"
    _small_mirror(src)
    db = tmp_path / "wh.duckdb"
    other = tmp_path / "collector-mirror"
    done = fs(db, "ingest", "localhost", "--from", str(src), "--mirror", str(other),
              *_refused_port_ssh_options(tmp_path))  # fmt: skip
    if done.returncode == 2:  # refused as a usage error: fine
        assert "--from" in done.stderr
        return
    assert not (other / "localhost").exists(), "SSH was used although --from was given"
    assert db.exists() and _count(db, "runs") == 1, (done.returncode, done.stderr)


def test_rollout_watch_with_from_and_ingest_does_not_silently_drop_from(
    tmp_path: Path,
) -> None:
    """docs/analytics.md: `--watch [--from DIR | --ingest TARGET ...]` (one or the other).
    With both, --from is ignored without a word: the watch collects over SSH and never
    loads DIR."""
    src = tmp_path / "src"
    _small_mirror(src)
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(src)).returncode == 0
    write_history(src, "h2.example.com",
                  line(record(ago(minutes=5), host="h2.example.com", git_sha=SHA_A)))  # fmt: skip
    # run from tmp_path: a watch's SSH collection writes to ./data/mirror
    done = fs(db, "rollout", SHA_A, "--watch", "--interval", "0", "--iterations", "1",
              "--from", str(src), "--ingest", "localhost", "--format", "json",
              cwd=tmp_path)  # fmt: skip
    if done.returncode == 2:
        assert "--from" in done.stderr
        return
    assert not (tmp_path / "data" / "mirror").exists(), "SSH was used although --from was given"
    assert _count(db, "runs") == 2, (done.returncode, done.stderr)


# --- 2. demo replaces a warehouse that holds real (non-run) data ---------------------


def test_demo_refuses_a_warehouse_holding_real_observations(tmp_path: Path) -> None:
    """README: `fleetstate demo` "refuses to replace a warehouse that holds real data".
    A first collection where every host was down (observations, no runs yet), or a
    warehouse holding only rejects / the commit graph / worker activity, is replaced:
    demo.py looks at runs only."""
    mirror = tmp_path / "mirror"
    for n in range(3):
        write_observation(mirror, f"h{n}.example.com", reachable=False,
                          error="connection refused", os=None, role=None)  # fmt: skip
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    assert _count(db, "observations") == 3
    done = fs(db, "demo", "--mirror", str(tmp_path / "demo"))
    assert done.returncode == 1, "the demo replaced a warehouse holding collected data"
    assert "real data" in done.stderr
    assert _count(db, "observations") == 3


# --- 3. exit codes: a malformed option value is sometimes 2, sometimes 1 -------------


@pytest.mark.parametrize("since", ["abc", "1y", "-1d", "0"])
def test_drift_since_malformed_is_a_usage_error_like_0d(tmp_path: Path, since: str) -> None:
    """README: exit 2 = usage; CHANGELOG: `--since 0d` is a usage error (and it exits 2).
    `--since abc` (the same option, a worse value) exits 1 as a domain error, so a script
    cannot tell a typo from a broken warehouse."""
    src = tmp_path / "src"
    _small_mirror(src)
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(src)).returncode == 0
    assert fs(db, "drift", "--since", "0d").returncode == 2  # as documented
    done = fs(db, "drift", "--since", since)
    assert done.returncode == 2, (done.returncode, done.stderr)


# --- 4. rollout --part: documented as "one part", not what table and csv do ----------


@pytest.fixture(scope="module")
def rollout_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    mirror = root / "mirror"
    write_history(mirror, "h1.example.com",
                  line(record(ago(hours=3), host="h1.example.com", git_sha=SHA_B))
                  + line(record(ago(hours=1), host="h1.example.com", git_sha=SHA_A)))  # fmt: skip
    write_history(mirror, "h2.example.com",
                  line(record(ago(hours=2), host="h2.example.com", git_sha=SHA_B)))  # fmt: skip
    db = root / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    return db


@pytest.mark.parametrize(
    ("part", "other_parts"),
    [
        ("summary", ["converged hosts by hour", "converged by role"]),
        ("roles", ["converged hosts by hour", "HOST "]),
        ("curve", ["converged by role", "HOST "]),
    ],
)
def test_rollout_part_in_table_shows_that_part(
    rollout_db: Path, part: str, other_parts: list[str]
) -> None:
    """`rollout --help`: "--part ... One part (default hosts)". As a table (the default
    format) --part summary/roles/curve all print the same header + curve + role chart;
    the option does not select a part."""
    done = fs(rollout_db, "rollout", SHA_A, "--part", part)
    assert done.returncode == 0, done.stderr
    for words in other_parts:
        assert words not in done.stdout, f"--part {part} also printed {words!r}"


def test_rollout_part_report_with_csv_is_not_silently_the_hosts(rollout_db: Path) -> None:
    """docs/analytics.md: `--part report` prints the whole report as one object (json).
    With `--format csv` it silently prints the hosts part instead; it should be refused
    (usage) rather than answer another question."""
    report = fs(rollout_db, "rollout", SHA_A, "--part", "report", "--format", "csv")
    hosts = fs(rollout_db, "rollout", SHA_A, "--part", "hosts", "--format", "csv")
    assert report.returncode == 2 or report.stdout != hosts.stdout, report.stdout


# --- 5. status --filter: `~` is documented as a regular expression -------------------


@pytest.fixture(scope="module")
def roles_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("roles")
    mirror = root / "mirror"
    for host, role in [("a1.example.com", "gecko_t_linux_talos"),
                       ("a2.example.com", "gecko_t_linux_netperf"),
                       ("a3.example.com", "gecko_t_osx_1400_r8")]:  # fmt: skip
        write_history(mirror, host, line(record(ago(minutes=30), host=host, role=role)))
        write_observation(mirror, host, role=role)
    db = root / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    return db


def test_filter_regex_with_alternation_in_a_group(roles_db: Path) -> None:
    """README: "`~` is a case-insensitive regular expression". A regular expression with
    a group, `linux_(talos|netperf)`, is cut at the `|` (the "either" separator) into
    two broken patterns: `bad pattern 'linux_(talos': missing )`."""
    done = fs(roles_db, "status", "--filter", "role~linux_(talos|netperf)$", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + 2


def test_filter_regex_is_checked_in_the_dialect_that_runs_it(roles_db: Path) -> None:
    """The pattern is validated with Python's `re` but run by DuckDB (RE2): `\\p{L}`
    (a letter, valid RE2) is refused as `bad escape \\p`."""
    done = fs(roles_db, "status", "--filter", r"role~^\p{L}+_t_osx", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 + 1


def test_filter_regex_leaves_no_python_warning_on_stderr(roles_db: Path) -> None:
    """`role~[[:alpha:]]+_talos` works, but Python's FutureWarning with a source path
    (`pipeline/filters.py:87: FutureWarning: Possible nested set`) reaches stderr."""
    done = fs(roles_db, "status", "--filter", "role~[[:alpha:]]+_talos", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "filters.py" not in done.stderr, done.stderr


# --- 6. a mirror path that is a file is said not to exist ---------------------------


@pytest.mark.parametrize("command", [["ingest", "--from"], ["rebuild", "--mirror"]])
def test_mirror_path_that_is_a_file_is_not_called_missing(
    tmp_path: Path, command: list[str]
) -> None:
    """`ingest --from hosts.txt` (an easy slip for `ingest hosts.txt`) says
    `mirror directory hosts.txt does not exist` although it exists: a misleading message."""
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("h1.example.com\n")
    done = fs(tmp_path / "wh.duckdb", *command, str(hosts))
    assert done.returncode == 1
    assert "does not exist" not in done.stderr, done.stderr
    assert "not a directory" in done.stderr, done.stderr


# --- 7. a mirror file that is not a regular file is skipped without a word ----------


def test_unreadable_mirror_entry_is_named_and_exit_4(tmp_path: Path) -> None:
    """README: exit 4 when ingest "could not read some mirror files (each is named on
    stderr; everything else was loaded)". A `history.jsonl` that is a directory (or any
    non-regular file) is skipped silently, exit 0: the host's history is never loaded
    and nobody is told."""
    mirror = tmp_path / "mirror"
    _small_mirror(mirror, "good.example.com")
    (mirror / "bad.example.com" / "history.jsonl").mkdir(parents=True)
    done = fs(tmp_path / "wh.duckdb", "ingest", "--from", str(mirror))
    assert done.returncode == 4, (done.returncode, done.stderr)
    assert "bad.example.com" in done.stderr


# --- 8. an empty FLEETSTATE_LOCK_WAIT_S is an error, unlike the other two ------------


def test_empty_lock_wait_env_reads_as_unset(tmp_path: Path) -> None:
    """FLEETSTATE_BATCH_BYTES= and FLEETSTATE_LOAD_WORKERS= (empty) mean "unset"; an empty
    FLEETSTATE_LOCK_WAIT_S= stops every command with `must be seconds, not ''`."""
    src = tmp_path / "src"
    _small_mirror(src)
    db = tmp_path / "wh.duckdb"
    env = {**cli_env(), "FLEETSTATE_BATCH_BYTES": "", "FLEETSTATE_LOAD_WORKERS": ""}
    ok = subprocess.run([sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "--from",
                         str(src)], capture_output=True, text=True, cwd=REPO, env=env)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    env = {**cli_env(), "FLEETSTATE_LOCK_WAIT_S": ""}
    done = subprocess.run([sys.executable, "-m", "pipeline", "--db", str(db), "status"],
                          capture_output=True, text=True, cwd=REPO, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
