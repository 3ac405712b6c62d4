"""Second look at the day's fixes: rotations racing a read, read-only opens of warehouses
other releases made, demo and rebuild under the lock, csv and blob text, DST days. Each
test failed on the code before its fix.

Real parts only: real sshd hosts (tests/sshfleet.py) where SSH matters, real DuckDB files,
the command as a process (tests/clirun.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from clirun import REPO, cli_env, fs  # noqa: E402
from factories import line, record, write_history, write_observation  # noqa: E402
from sshfleet import (  # noqa: E402
    HISTORY,
    Fleet,
    collect_options,
    install_rotating_tail,
    lines,
    skip_reason,
)

from pipeline import load, warehouse  # noqa: E402
from pipeline.collect import FleetResult, collect_fleet  # noqa: E402
from pipeline.mirror import Mirror  # noqa: E402

SKIP = skip_reason()
needs_fleet = pytest.mark.skipif(SKIP is not None, reason=f"simulated fleet unavailable: {SKIP}")
ROTATED = HISTORY + ".1"

NAMES = ["dblrot"]


def fqdn(short: str) -> str:
    return f"{short}.review5.test"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if SKIP is not None:
        pytest.skip(f"simulated fleet unavailable: {SKIP}")
    f = Fleet(tmp_path_factory.mktemp("review5-fleet"))
    for short in NAMES:
        h = f.add(fqdn(short))
        h.write("/etc/puppet_role", f"{short}-role\n")
        install_rotating_tail(h)
    f.start()
    yield f
    f.stop()


def collect(fleet: Fleet, mirror: Path, names: list[str]) -> FleetResult:
    return collect_fleet([fqdn(n) for n in names], Mirror(mirror), collect_options(fleet))


def run_ids(data: bytes) -> list[str]:
    out = []
    for x in data.splitlines():
        try:
            out.append(json.loads(x)["run_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out)


def history_run_ids(db: Path, host: str) -> set[str]:
    con = warehouse.connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT run_id FROM runs WHERE host = ? AND source = 'history'", [host]
        ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def pause_when(cmd: list[str], ready: Any, env: dict[str, str]) -> subprocess.Popen[bytes] | None:
    """Start `cmd` and stop it (SIGSTOP) at a moment `ready()` holds while it is stopped;
    None when it ran to its end first."""
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    while proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGSTOP)
            if ready():
                return proc
            os.kill(proc.pid, signal.SIGCONT)
    proc.wait()
    return None


# --- 1. remote.py: a rotation that replaces .1 while it is being read -----------------------


@needs_fleet
@pytest.mark.usefixtures("no_operator_ssh")
def test_a_rotation_that_replaces_dot1_while_it_is_read_loses_lines_of_the_new_dot1(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The cursor is in B at O; B was rotated to .1 and C is the live history. While the
    collection reads .1 (after the anchor check, before `bsec rot`), the wrapper rotates
    again: C becomes .1 (B is gone) and D starts. The script stat'ed .1 (B's inode and size)
    before, so `bsec rot` reads C from B's offset O; only the history's inode is checked
    again (hist_ino_after), so interpret() takes the "rotating" branch that KEEPS the rot
    part and moves the cursor to (B's inode, O + len) with a window made of C's bytes
    (remote.py interpret, the `return Pull(history, inode, offset, new_window, "rotating"...`
    line). The next collection finds that window in C at that offset: "rotated" mode from
    there, so C's lines before O are never pulled, though C is still on the host as .1.
    (B's unread tail is gone from the host: that loss is the host's, not asserted.)"""
    h = fleet.hosts[fqdn("dblrot")]
    for p in (h.path(HISTORY), h.path(ROTATED)):
        p.unlink(missing_ok=True)
    b0 = lines(3, start=0)
    h.append(HISTORY, b0)
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    assert collect(fleet, mirror, ["dblrot"]).hosts_ok  # cursor: B at len(b0)
    b1 = lines(4, start=10, pad=300)  # > 1 KiB, not collected before B is rotated
    h.append(HISTORY, b1)
    h.path(HISTORY).rename(h.path(ROTATED))
    c = lines(12, start=100, pad=300)
    assert len(c) > len(b0) + len(b1)
    h.append(HISTORY, c)
    d = lines(1, start=200)
    h.write("/root/next-history", d)
    h.write("/root/rotate-after", ROTATED)  # right after the anchor check's tail of .1
    try:
        assert collect(fleet, mirror, ["dblrot"]).hosts_ok
    finally:
        h.path("/root/rotate-after").unlink(missing_ok=True)
    assert h.path(ROTATED).read_bytes() == c  # the second rotation did land mid-collection
    assert h.path(HISTORY).read_bytes() == d
    for _ in range(2):  # C stays on the host as .1 for both
        assert collect(fleet, mirror, ["dblrot"]).hosts_ok
    con = warehouse.connect(db)
    try:
        load.load_mirror(con, mirror)
    finally:
        con.close()
    have = history_run_ids(db, fqdn("dblrot"))
    missing = sorted(set(run_ids(c + d)) - have)
    assert not missing, f"lines of the .1 still on the host were never pulled: {missing}"


# --- 3. warehouse.py: a read-only command on an older release's warehouse it cannot write ----


def _older_release_warehouse(tmp_path: Path) -> tuple[Path, str]:
    """A warehouse with one host whose views an older release applied (another queries/
    text, so `_outdated` is true), as `fleetstate ingest` of that release leaves it."""
    host = "h1.example.com"
    mirror = tmp_path / "m"
    write_history(mirror, host, line(record(host=host, run_id="r-1")))
    store = tmp_path / "store"
    store.mkdir()
    db = store / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0
    con = duckdb.connect(str(db))
    con.execute(
        "UPDATE meta SET value = 'queries of an older release' WHERE key = 'queries_sha256'"
    )
    con.close()
    return db, host


def _chattr(flag: str, path: Path) -> bool:
    return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("frozen", ["file", "directory"])
@pytest.mark.parametrize("command", [("status",), ("sql", "SELECT host FROM runs")])
def test_a_read_only_command_works_on_an_older_warehouse_it_cannot_write(
    tmp_path: Path, frozen: str, command: tuple[str, ...]
) -> None:
    """Contract: `fleetstate sql` is "ad-hoc SQL against the warehouse, read-only", and
    status/history/... only read. Before this change they worked on any warehouse the user
    can read. warehouse.connect(read_only=True) now first does a writable open of a
    warehouse an older release made (warehouse.py connect: `connect(path, read_only=False)`)
    and gives up when that fails: an immutable file (a read-only share or snapshot, or a
    reader without write permission) makes every read command exit 1 ("upgraded on first
    use, which needs to write to it"); a read-only directory makes it exit 1 with DuckDB's
    "cannot rollback - no transaction is active" (apply_queries' ROLLBACK after the failed
    COMMIT). The views could be applied as TEMP objects of the read-only session instead."""
    db, host = _older_release_warehouse(tmp_path)
    target = db if frozen == "file" else db.parent
    if not _chattr("+i", target):
        pytest.skip("chattr +i does not work on this file system")
    try:
        proc = fs(db, *command)
    finally:
        _chattr("-i", target)
    assert proc.returncode == 0, proc.stderr
    assert host in proc.stdout


# --- 3. demo: the check that the warehouse is the demo's is made before the lock is held ----


def test_demo_does_not_replace_a_warehouse_ingested_into_while_it_generated(
    tmp_path: Path,
) -> None:
    """CHANGELOG: "demo no longer replaces a demo warehouse that was ingested into". demo.run
    checks `meta.made_by` on a read-only connection it then closes (_refuse_real_warehouse),
    generates the sample (no lock held), and only then opens the warehouse for
    warehouse.rebuilding(db) with no `check=`: an ingest that lands in between (a cron job)
    marks the warehouse written and adds real runs, and the demo then replaces it anyway,
    discarding them. The demo is paused (SIGSTOP) while its sample directory exists, i.e.
    after its check and before its rebuild; the ingest runs to its end meanwhile."""
    db = tmp_path / "wh.duckdb"
    demo_mirror = tmp_path / "demo"
    first = fs(db, "demo", "--mirror", str(demo_mirror))
    assert first.returncode == 0, first.stderr
    real, host = tmp_path / "real", "real-001.example.com"
    write_history(real, host, line(record(host=host, run_id="real-run")))

    env = {**cli_env(), "FLEETSTATE_LOCK_WAIT_S": "60"}
    cmd = [sys.executable, "-m", "pipeline", "--db", str(db), "demo", "--mirror", str(demo_mirror)]

    def generating() -> bool:  # its sample directory: checked, not yet rebuilding
        return any(p.name.startswith(".demo.") for p in tmp_path.iterdir())

    paused = None
    for _ in range(5):
        paused = pause_when(cmd, generating, env)
        if paused is not None:
            break
    assert paused is not None, "could not pause the demo while it generated"
    try:
        ingested = fs(db, "ingest", "--from", str(real))
    finally:
        os.kill(paused.pid, signal.SIGCONT)
        _, err = paused.communicate(timeout=120)
    assert ingested.returncode == 0, ingested.stderr
    con = duckdb.connect(str(db), read_only=True)
    try:
        runs = con.execute("SELECT count(*) FROM runs WHERE host = ?", [host]).fetchall()
    finally:
        con.close()
    assert runs == [(1,)], f"the demo replaced a warehouse holding real runs (demo: {err!r})"


# --- 4. render.py: csv and json ---------------------------------------------------------------


def test_csv_keeps_a_row_whose_only_field_is_empty(tmp_path: Path) -> None:
    """to_csv now writes fields itself. csv.writer wrote a row made of one empty field (a
    NULL or '' in a one-column answer) as `""`; _csv_field writes nothing, so that row is a
    blank line, which csv readers (csv.DictReader, pandas, DuckDB's read_csv) skip: rows
    of `fleetstate sql ... --format csv` silently vanish."""
    db = tmp_path / "wh.duckdb"
    warehouse.connect(db).close()
    proc = fs(
        db, "sql", "SELECT x FROM (VALUES (1, 'a'), (2, NULL), (3, '')) t(n, x) ORDER BY n",
        "--format", "csv",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert [r["x"] for r in rows] == ["a", "", ""], repr(proc.stdout)


def test_json_blob_text_tells_a_control_byte_from_its_escape_written_out(
    tmp_path: Path,
) -> None:
    """render.blob_text says it shows a BLOB "as DuckDB shows a BLOB", control bytes as
    \\xNN. DuckDB also escapes the backslash itself (\\x5C), so its text is unambiguous;
    blob_text leaves a backslash as is, so a reject line holding a TAB byte and one holding
    the four characters `\\x09` print the same in --format json and csv: the output no
    longer says which bytes the host wrote."""
    host = "h1.example.com"
    mirror = tmp_path / "m"
    write_history(mirror, host, b"bad\tline\n" + b"bad\\x09line\n")
    db = tmp_path / "wh.duckdb"
    assert fs(db, "ingest", "--from", str(mirror)).returncode in (0, 4)
    proc = fs(db, "sql", "SELECT line FROM rejects ORDER BY byte_offset", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    shown = [r["line"] for r in json.loads(proc.stdout)]
    assert len(shown) == 2
    assert shown[0] != shown[1], f"two different lines print alike: {shown}"


# --- 5. queries/60_drift_daily.sql: day_end in the reader's time zone ------------------------


def test_drift_daily_day_end_is_the_utc_midnight_on_a_dst_day_of_the_reader(
    tmp_path: Path,
) -> None:
    """docs/sql.md (this change): days "are UTC days whatever the reader's TimeZone
    setting". drift_daily's override_differs takes "the last reachable observation by the
    end of the day", day_end = timezone('UTC', day) + INTERVAL 1 DAY; adding a DAY to a
    TIMESTAMPTZ keeps the wall clock of the session's zone, so for a reader in New York the
    UTC day 2026-03-08 (DST starts) ends at 23:00 UTC: an override changed at 23:30 UTC
    counts for a UTC session and not for the New York one (queries/60_drift_daily.sql:31)."""
    host = "h1.example.com"
    mirror = tmp_path / "m"
    write_history(
        mirror, host,
        line(record("2026-03-08T10:00:00Z", host=host, override_sha="1" * 64, run_id="r1")),
    )  # fmt: skip
    write_observation(
        mirror, host, observed_at="2026-03-08T09:00:00Z", override_present=True,
        override_sha="1" * 64,
    )  # fmt: skip
    write_observation(
        mirror, host, observed_at="2026-03-08T23:30:00Z", override_present=True,
        override_sha="2" * 64,
    )  # fmt: skip
    db = tmp_path / "wh.duckdb"
    con = warehouse.connect(db)
    load.load_mirror(con, mirror)
    con.close()
    query = "SELECT day, override_differs FROM drift_daily ORDER BY day"
    seen = {}
    for zone in ("UTC", "America/New_York"):
        user = duckdb.connect(str(db), read_only=True)
        try:
            user.execute(f"SET TimeZone = '{zone}'")
            seen[zone] = user.execute(query).fetchall()
        finally:
            user.close()
    assert seen["UTC"] == [(datetime(2026, 3, 8, tzinfo=UTC).date(), 1)], seen
    assert seen["America/New_York"] == seen["UTC"], seen


# --- 3. warehouse.rebuilding: "scratch files of rebuilds that were killed go" ----------------


def test_a_rebuild_does_not_delete_the_live_scratch_of_another_warehouse(tmp_path: Path) -> None:
    """warehouse.rebuilding deletes `.{name}.*.rebuild*` beside the warehouse, "a killed
    rebuild's (we hold the lock)". The lock held is that of `name` only, and the glob also
    matches the scratch of a warehouse whose name starts with `name.`: a rebuild of
    wh.duckdb deletes the scratch (`.wh.duckdb.b.XXXX.rebuild`) that a demo of wh.duckdb.b
    is writing at that moment, and that demo then fails at its os.replace. The demo is
    paused (SIGSTOP) while its scratch file exists."""
    store = tmp_path / "store"
    store.mkdir()
    db = store / "wh.duckdb"
    mirror = tmp_path / "m"
    write_history(mirror, "h1.example.com", line(record(run_id="r-1")))
    assert fs(db, "ingest", "--from", str(mirror)).returncode == 0

    other = store / "wh.duckdb.b"
    cmd = [sys.executable, "-m", "pipeline", "--db", str(other), "demo",
           "--mirror", str(tmp_path / "demo")]  # fmt: skip

    def building() -> bool:  # its scratch database is open and being loaded
        for p in store.glob(".wh.duckdb.b.*.rebuild"):
            try:
                if p.stat().st_size:
                    return True
            except FileNotFoundError:
                continue
        return False

    paused = None
    for _ in range(5):
        paused = pause_when(cmd, building, cli_env())
        if paused is not None:
            break
        other.unlink(missing_ok=True)
    assert paused is not None, "could not pause the demo while it built its scratch file"
    try:
        rebuilt = fs(db, "rebuild", "--mirror", str(mirror))
    finally:
        os.kill(paused.pid, signal.SIGCONT)
        _, err = paused.communicate(timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert paused.returncode == 0, f"the other warehouse's demo failed: {err.decode()[-300:]}"
    assert other.exists()
