"""The less-trodden outputs and maintenance commands: csv of values from hosts, warehouses
of older and newer releases, rebuild's promises, demo over a warehouse that became real,
mirror names that are not UTF-8. Each test failed on the code before its fix; real
DuckDB files and the command as a real process (tests/clirun.py), no mocks."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
from clirun import REPO, cli_env, fs
from factories import ago, line, record, write_history, write_observation

from pipeline import activity, warehouse

MIGRATIONS = REPO / "pipeline" / "migrations"


def _csv_rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


# --- --format csv ------------------------------------------------------------------------


def test_csv_quotes_a_value_holding_a_carriage_return(tmp_path: Path) -> None:
    """RFC 4180: a field holding CR (or LF) is quoted. render.to_csv's csv.writer has
    lineterminator="\\n", and Python's QUOTE_MINIMAL quotes only the characters of the line
    terminator, so a bare CR (in a role, or a reject's raw line, as hosts write them) goes
    out unquoted and every csv reader splits the row there."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(minutes=5), role="talos\rlinux")))
    write_history(mirror, "h2", line(record(ago(minutes=5))) + b"junk\rmore\n")
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0

    done = fs(db, "sql", "SELECT line FROM rejects", "--format", "csv")
    assert done.returncode == 0, done.stderr
    # a BLOB's control bytes are shown escaped, as DuckDB shows them (render.blob_text)
    assert _csv_rows(done.stdout) == [["line"], ["junk\\x0dmore"]]

    # read as bytes: text mode would turn the CR into LF
    raw = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "status", "--format", "csv"],
        capture_output=True, cwd=REPO, env=cli_env(), check=True,
    ).stdout.decode()  # fmt: skip
    rows = _csv_rows(raw)
    assert len(rows) == 3, rows  # header and two hosts
    got = sorted(r[:2] for r in rows[1:])
    assert got == [["h1", "talos\rlinux"], ["h2", "gecko_t_linux_talos"]]


def test_csv_of_a_reject_with_nul_bytes_has_no_raw_nul(tmp_path: Path) -> None:
    """A history file that a crash left NUL-padded (the usual artefact of a host losing
    power mid-append) gives a reject whose raw line starts with NUL bytes; `sql ... --format
    csv` writes them raw (render._jsonable decodes bytes, keeping control characters), and
    csv readers refuse the file (Python's: "line contains NUL"). json writes \\u0000; csv
    should write an escape (as DuckDB's own BLOB text does: \\x00)."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(run_id="a")) + b"\0" * 16 + line(record(run_id="b")))
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    done = fs(db, "sql", "SELECT host, line FROM rejects", "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert "\0" not in done.stdout
    assert len(_csv_rows(done.stdout)) == 2


# --- warehouses of other releases --------------------------------------------------------

# queries/60_drift_daily.sql as the release before migration 002 shipped it (9074dbb~1):
# the columns override_differs, vault_differs, config_differs came later.
OLD_DRIFT_DAILY = """
CREATE OR REPLACE VIEW drift_daily AS
WITH daily AS (
    SELECT host, CAST(ts AS DATE) AS day,
        arg_max(role, ts) AS role, arg_max(git_sha, ts) AS sha, arg_max(success, ts) AS ok,
        arg_max(override_sha, ts) AS override_sha, arg_max(git_dirty, ts) AS dirty
    FROM runs GROUP BY host, CAST(ts AS DATE)
), sha_counts AS (
    SELECT day, role, sha, count(*) AS n FROM daily WHERE sha IS NOT NULL GROUP BY ALL
), modal AS (
    SELECT day, role, arg_max(sha, n * 1e12 - hash(sha) % 1000000) AS modal_sha
    FROM sha_counts GROUP BY day, role
)
SELECT
    d.day,
    d.role,
    count(*)                                                    AS hosts,
    count(DISTINCT d.sha)                                       AS distinct_shas,
    m.modal_sha,
    count(*) FILTER (WHERE d.sha IS DISTINCT FROM m.modal_sha)  AS off_modal,
    count(*) FILTER (WHERE NOT d.ok)                            AS failing,
    count(*) FILTER (WHERE d.override_sha IS NOT NULL)          AS with_override,
    count(*) FILTER (WHERE d.dirty)                             AS dirty
FROM daily d LEFT JOIN modal m USING (day, role)
GROUP BY d.day, d.role, m.modal_sha
ORDER BY d.day, d.role;
"""


def _old_release_warehouse(db: Path) -> None:
    """A warehouse as the release before migration 002 left it: 001 applied and recorded,
    that release's drift_daily, and a run of today."""
    con = duckdb.connect(str(db))
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        "CREATE TABLE schema_migrations "
        "(name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    con.execute((MIGRATIONS / "001_initial.sql").read_text())
    con.execute("INSERT INTO schema_migrations (name) VALUES ('001_initial.sql')")
    con.execute(
        "INSERT INTO runs (host, run_id, ts, success, exit_code, role, git_sha, source, "
        "loaded_at) VALUES ('h1', 'r1', ?, true, 0, 'web', ?, 'history', now())",
        [ago(minutes=30), "a" * 40],
    )
    con.execute(OLD_DRIFT_DAILY)
    con.close()


def test_read_only_command_on_an_older_release_warehouse_is_not_a_traceback(
    tmp_path: Path,
) -> None:
    """After an upgrade, the first command is often a read (status, drift, a metrics cron).
    warehouse.connect(read_only=True) neither migrates nor re-applies queries/, so the new
    code runs against the old release's views: `drift` dies in polars with a traceback
    (ColumnNotFoundError: override_differs), `rollout` with "Table Function with name
    rollout_hosts does not exist". Expected: the current views (upgrade first, or read
    through them), or one clear line saying the warehouse needs upgrading."""
    db = tmp_path / "old.duckdb"
    _old_release_warehouse(db)
    done = fs(db, "drift", "--format", "json")
    assert "Traceback" not in done.stderr, done.stderr[-600:]
    assert done.returncode == 0, done.stderr
    assert "override_differs" in json.loads(done.stdout)[0]


def test_an_older_release_warehouse_upgrades_on_a_writable_open_without_loss(
    tmp_path: Path,
) -> None:
    """Counterpart of the test above (passes): a writable open applies 002 and keeps data,
    after which the reads work. Kept to show the upgrade path exists but reads skip it."""
    db = tmp_path / "old.duckdb"
    _old_release_warehouse(db)
    (tmp_path / "empty").mkdir()
    assert fs(db, "ingest", "--from", str(tmp_path / "empty")).returncode == 0
    names = json.loads(fs(db, "sql", "SELECT name FROM schema_migrations ORDER BY 1", "-f",
                          "json").stdout)  # fmt: skip
    assert [n["name"] for n in names] == ["001_initial.sql", "002_analytics.sql", "003_recency.sql"]
    runs = json.loads(fs(db, "sql", "SELECT run_id FROM runs", "-f", "json").stdout)
    assert runs == [{"run_id": "r1"}]
    done = fs(db, "drift", "--format", "json")
    assert done.returncode == 0 and "override_differs" in json.loads(done.stdout)[0]


def test_a_warehouse_from_a_newer_release_is_refused_not_rewritten(tmp_path: Path) -> None:
    """A warehouse that a newer fleetstate migrated (schema_migrations names a migration
    this release does not have) is opened for writing without a word: migrate() applies
    only what is missing, apply_queries() replaces the newer release's views and macros
    with this release's (the fingerprint in meta differs), and ingest writes rows into
    tables whose meaning it does not know. Expected: exit 1 with one line naming the newer
    schema, and the warehouse left as it was."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(minutes=5))))
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_migrations (name) VALUES ('900_from_the_future.sql')")
    con.execute("CREATE OR REPLACE VIEW host_state AS SELECT 'newer' AS made_by")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('queries_sha256', 'newer release')")
    con.close()

    write_history(mirror, "h2", line(record(ago(minutes=5))))
    done = fs(db, "ingest", "--from", str(mirror))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT * FROM host_state").fetchall() == [("newer",)]
        assert con.execute("SELECT DISTINCT host FROM runs").fetchall() == [("h1",)]
    finally:
        con.close()


# --- rebuild -----------------------------------------------------------------------------


def test_rebuild_does_not_silently_drop_runs_loaded_from_outside_the_mirror(
    tmp_path: Path,
) -> None:
    """README: rebuild loads the warehouse again from the mirror, "no run, observation or
    reject is lost". Runs loaded with `ingest --from OTHER` (or collected into another
    --mirror than rebuild's default data/mirror) are dropped without a word, though
    load_cursors names every file the warehouse was loaded from. Expected: rebuild keeps
    them, or refuses (exit 1) naming the files its mirror does not hold."""
    a, b, db = tmp_path / "a", tmp_path / "b", tmp_path / "wh.duckdb"
    write_history(a, "ha", line(record(ago(minutes=5), run_id="ra")))
    write_history(b, "hb", line(record(ago(minutes=5), run_id="rb")))
    assert fs(db, "ingest", "--from", str(a)).returncode == 0
    assert fs(db, "ingest", "--from", str(b)).returncode == 0

    done = fs(db, "rebuild", "--mirror", str(a))
    runs = json.loads(fs(db, "sql", "SELECT run_id FROM runs ORDER BY 1", "-f", "json").stdout)
    assert runs == [{"run_id": "ra"}, {"run_id": "rb"}], (
        f"rebuild exited {done.returncode}, runs now {runs}; stderr: {done.stderr}"
    )
    assert done.returncode == 1
    assert "of host hb)" in done.stderr and "--force" in done.stderr
    assert "Traceback" not in done.stderr

    # --force: rebuilt from `a` alone, as asked
    done = fs(db, "rebuild", "--mirror", str(a), "--force")
    assert done.returncode == 0, done.stderr
    runs = json.loads(fs(db, "sql", "SELECT run_id FROM runs ORDER BY 1", "-f", "json").stdout)
    assert runs == [{"run_id": "ra"}]


def test_rebuild_keeps_what_the_mirror_does_not_hold(tmp_path: Path) -> None:
    """The commit graph, branch tips and their history, worker activity and its fetches
    come from `ingest-git` and `ingest-workers`, not the mirror: a rebuild copies them from
    the old warehouse (re-running those commands would bring back only the present). A
    rebuilt demo warehouse holds real data: the demo no longer replaces it."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    host = "t-linux64-ms-001.test.releng.mdc1.mozilla.com"
    write_history(mirror, host, line(record(ago(minutes=5), run_id="r1", host=host)))
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    con = warehouse.connect(db)
    con.execute("INSERT INTO git_commits (sha, parents, subject) VALUES (?, [], 's')", ["c" * 40])
    con.execute("INSERT INTO git_refs VALUES ('main', ?, now())", ["c" * 40])
    con.execute("INSERT INTO git_ref_history VALUES ('main', ?, now())", ["c" * 40])
    con.execute("INSERT INTO meta VALUES ('git_shallow', 'false'), ('made_by', 'demo')")
    worker = activity.Worker("p/t", "mdc1", "t-linux64-ms-001", ago(minutes=3), None, {})
    activity.save_activity(con, "http://q", worker.pool, [worker])
    con.close()

    done = fs(db, "rebuild", "--mirror", str(mirror))
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr  # DuckDB's DB-API arrow copy warning
    counts = "SELECT (SELECT count(*) FROM {}) AS n"
    for table in warehouse.NOT_FROM_MIRROR[:-1]:
        got = json.loads(fs(db, "sql", counts.format(table), "-f", "json").stdout)
        assert got == [{"n": 1}], table
    meta = fs(db, "sql", "SELECT key FROM meta ORDER BY key", "-f", "csv").stdout.split()
    assert "git_shallow" in meta and "made_by" not in meta and "queries_sha256" in meta
    status = json.loads(fs(db, "status", "-f", "json").stdout)
    assert [(s["host"], s["healthy"]) for s in status] == [(host, "Y")]


def _scratch(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}."))


def test_a_killed_rebuild_leaves_the_old_warehouse_and_no_scratch_behind(tmp_path: Path) -> None:
    """SIGKILL mid-rebuild (real process): the old warehouse is intact (passes). But the
    scratch file `.NAME.XXXX.rebuild` and its WAL stay for good: rebuilding() makes a new
    uniquely named scratch each time and removes only its own, so every interrupted rebuild
    leaves a warehouse-sized file in the data directory."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    for h in range(20):
        body = b"".join(line(record(run_id=f"{h}-{i}", duration_s=i)) for i in range(400))
        write_history(mirror, f"host{h}.example.com", body)
        write_observation(mirror, f"host{h}.example.com")
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    before = fs(db, "sql", "SELECT count(*) AS n FROM runs", "-f", "json").stdout

    env = {**cli_env(), "FLEETSTATE_BATCH_BYTES": "4096", "FLEETSTATE_LOAD_WORKERS": "1"}
    cmd = [sys.executable, "-m", "pipeline", "--db", str(db), "rebuild", "--mirror", str(mirror)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    try:
        while not any(n.endswith(".rebuild.wal") for n in _scratch(tmp_path, db.name)):
            assert proc.poll() is None, "rebuild finished before it could be interrupted"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    assert fs(db, "sql", "SELECT count(*) AS n FROM runs", "-f", "json").stdout == before
    assert _scratch(tmp_path, db.name)  # what the killed rebuild left
    done = fs(db, "rebuild", "--mirror", str(mirror))
    assert done.returncode == 0, done.stderr
    assert _scratch(tmp_path, db.name) == []


def test_demo_does_not_replace_a_demo_warehouse_that_real_hosts_were_ingested_into(
    tmp_path: Path,
) -> None:
    """README: demo "refuses to replace a warehouse that holds real data". The check
    (demo._refuse_real_warehouse) trusts meta.made_by = 'demo', which only a rebuild clears:
    `demo`, then `ingest` of real hosts into the same (default) warehouse, then `demo` again
    deletes the real runs without a word."""
    db, real = tmp_path / "wh.duckdb", tmp_path / "real"
    assert fs(db, "demo", "--mirror", str(tmp_path / "demo")).returncode == 0
    write_history(real, "real-host.example.com", line(record(ago(minutes=5), run_id="mine")))
    assert fs(db, "ingest", "--from", str(real)).returncode == 0

    again = fs(db, "demo", "--mirror", str(tmp_path / "demo"))
    kept = json.loads(fs(db, "sql", "SELECT run_id FROM runs WHERE run_id = 'mine'", "-f",
                         "json").stdout)  # fmt: skip
    assert kept == [{"run_id": "mine"}], f"demo exited {again.returncode}: {again.stderr[-300:]}"
    assert again.returncode == 1


# --- seen in passing ---------------------------------------------------------------------


def test_a_mirror_directory_whose_name_is_not_utf8_is_not_a_traceback(tmp_path: Path) -> None:
    """`ingest --from DIR` where a host directory's name is not UTF-8 (bytes from another
    system): the name reaches pyarrow as a str with a surrogate escape and the load dies with
    a UnicodeEncodeError traceback, stopping the other hosts of its group too. Expected: the
    directory skipped and named on stderr (exit 4, like other unreadable files), or one line."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "ok.example.com", line(record(ago(minutes=5))))
    odd = os.fsencode(mirror) + b"/h\xffx"
    os.makedirs(odd)
    with open(odd + b"/history.jsonl", "wb") as fh:
        fh.write(line(record(ago(minutes=5))))
    done = fs(db, "ingest", "--from", str(mirror))
    assert "Traceback" not in done.stderr, done.stderr[-400:]
    assert done.returncode == 4, done.stderr  # loaded what it could, named what it could not
    assert "h\\xffx: its name is not UTF-8; skipped" in done.stderr
    hosts = json.loads(fs(db, "sql", "SELECT DISTINCT host FROM runs", "-f", "json").stdout)
    assert {"host": "ok.example.com"} in hosts


def test_a_read_only_command_on_an_empty_file_says_there_is_no_warehouse(
    tmp_path: Path,
) -> None:
    db = tmp_path / "wh.duckdb"
    db.touch()
    done = fs(db, "status")
    assert done.returncode == 1 and "no warehouse at" in done.stderr
    assert db.stat().st_size == 0  # not turned into a warehouse by a read


def test_a_mirror_whose_own_path_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path) + b"/m\xff"
    os.makedirs(root + b"/h1.example.com")
    with open(root + b"/h1.example.com/history.jsonl", "wb") as fh:
        fh.write(line(record(ago(minutes=5))))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(tmp_path / "wh.duckdb"), "ingest",
         "--from", root],
        capture_output=True, text=True, cwd=REPO, env=cli_env(),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "m\\xff: its path is not UTF-8" in done.stderr and "Traceback" not in done.stderr
