"""End-to-end integrity of collect + load under adverse host behaviour (each test failed on
the code before its fix).

Every history line must end up exactly once in `runs` or in `rejects`, nothing from a
rotated file may be lost or counted twice. Real sshd hosts (tests/sshfleet.py), a real
DuckDB file, the real command as a process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sshfleet import (  # noqa: E402
    HISTORY,
    Fleet,
    SimHost,
    collect_options,
    install_rotating_tail,
    lines,
    skip_reason,
)

from pipeline import warehouse  # noqa: E402
from pipeline.collect import FleetResult, collect_fleet  # noqa: E402
from pipeline.load import load_mirror  # noqa: E402
from pipeline.mirror import Mirror  # noqa: E402

SKIP = skip_reason()
needs_fleet = pytest.mark.skipif(SKIP is not None, reason=f"simulated fleet unavailable: {SKIP}")

REPO = Path(__file__).resolve().parent.parent
ROTATED = HISTORY + ".1"

NAMES = ["restart", "reused", "midread", "bad", "latin1", "badstate", "cursor", "ok", "file"]


def fqdn(short: str) -> str:
    return f"{short}.review.test"


pytestmark = pytest.mark.usefixtures("no_operator_ssh")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if SKIP is not None:
        pytest.skip(f"simulated fleet unavailable: {SKIP}")
    f = Fleet(tmp_path_factory.mktemp("review-fleet"))
    for short in NAMES:
        h = f.add(fqdn(short))
        h.write("/etc/puppet_role", f"{short}-role\n")
        install_rotating_tail(h)
    f.start()
    yield f
    f.stop()


def host(fleet: Fleet, short: str) -> SimHost:
    return fleet.hosts[fqdn(short)]


def collect(fleet: Fleet, mirror: Path, names: list[str], **kw: Any) -> FleetResult:
    return collect_fleet([fqdn(n) for n in names], Mirror(mirror), collect_options(fleet, **kw))


def mirrored(mirror: Path, short: str) -> bytes:
    p = mirror / fqdn(short) / "history.jsonl"
    return p.read_bytes() if p.exists() else b""


def fresh_history(h: SimHost) -> None:
    for p in (h.path(HISTORY), h.path(ROTATED)):
        p.unlink(missing_ok=True)


def accounted(db: Path, short: str) -> tuple[list[str], list[bytes]]:
    """(run_ids in runs, reject lines) of one host."""
    con = warehouse.connect(db, read_only=True)
    try:
        runs = [
            r[0]
            for r in con.execute(
                "SELECT run_id FROM runs WHERE host = ? AND source = 'history' ORDER BY run_id",
                [fqdn(short)],
            ).fetchall()
        ]
        rejects = [
            bytes(r[0])
            for r in con.execute(
                "SELECT line FROM rejects WHERE host = ? ORDER BY line", [fqdn(short)]
            ).fetchall()
        ]
    finally:
        con.close()
    return runs, rejects


def load(mirror: Path, db: Path) -> None:
    con = warehouse.connect(db)
    try:
        load_mirror(con, mirror)
    finally:
        con.close()


def run_ids(data: bytes) -> list[str]:
    """run_ids of the valid record lines in `data`, sorted."""
    out = []
    for x in data.splitlines():
        try:
            out.append(json.loads(x)["run_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return sorted(out)


# --- the collector pulls a rotated file a second time ------------------------------------


@needs_fleet
def test_restart_does_not_pull_again_what_the_mirror_already_has(
    fleet: Fleet, tmp_path: Path
) -> None:
    """docs/collector.md, `restart`: "what the mirror already has is not pulled again".
    A history truncated in place (an operator's `: > file`) after a rotation whose .1 was
    already collected makes the next collection a restart, which pulls .1 whole again.
    Its runs are absorbed by run identity, but its rejected line is rejected twice."""
    h = host(fleet, "restart")
    fresh_history(h)
    bad = b"this is not a record\n"
    h.append(HISTORY, lines(2, start=0) + bad + lines(1, start=2))
    h.path(HISTORY).rename(h.path(ROTATED))
    h.append(HISTORY, lines(2, start=3))
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    assert collect(fleet, mirror, ["restart"]).hosts_ok
    load(mirror, db)
    assert accounted(db, "restart")[1] == [bad[:-1]]

    with open(h.path(HISTORY), "r+b") as fh:  # truncated in place, then a new run
        fh.truncate(0)
    h.append(HISTORY, lines(1, start=5))
    r = collect(fleet, mirror, ["restart"])
    assert r.hosts_ok
    load(mirror, db)

    runs, rejects = accounted(db, "restart")
    assert runs == [f"run-{i:06d}" for i in range(6)]
    assert rejects == [bad[:-1]], "the one bad line of .1 is now rejected twice"
    assert mirrored(mirror, "restart").count(bad) == 1, "the .1 file was pulled again"


@needs_fleet
def test_restart_pulls_a_dot1_whose_bytes_changed_though_its_inode_did_not(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The counterpart: the cursor remembers the .1 it pulled by inode, size and the cksum
    of its last bytes. A .1 with that inode but other bytes (a reused inode, or rewritten
    in place) is pulled whole: nothing is skipped on the inode alone."""
    h = host(fleet, "reused")
    fresh_history(h)
    h.append(HISTORY, lines(2, start=0))
    h.path(HISTORY).rename(h.path(ROTATED))
    h.append(HISTORY, lines(1, start=2))
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    assert collect(fleet, mirror, ["reused"]).hosts_ok
    inode = h.path(ROTATED).stat().st_ino
    with open(h.path(ROTATED), "r+b") as fh:  # same inode, same size, other runs
        fh.write(lines(2, start=10))
    assert h.path(ROTATED).stat().st_ino == inode
    with open(h.path(HISTORY), "r+b") as fh:
        fh.truncate(0)
    h.append(HISTORY, lines(1, start=3))
    assert collect(fleet, mirror, ["reused"]).hosts_ok
    load(mirror, db)
    assert accounted(db, "reused")[0] == [f"run-{i:06d}" for i in (0, 1, 2, 3, 10, 11)]


# --- a rotation that lands while the host is being read -----------------------------------


def arm_rotation(h: SimHost, after_reading: str, new_history: bytes) -> None:
    h.write("/root/next-history", new_history)
    h.write("/root/rotate-after", after_reading)


def rejects_with_reasons(db: Path, short: str) -> list[tuple[bytes, str]]:
    con = warehouse.connect(db, read_only=True)
    try:
        rows = con.execute(
            "SELECT line, reason FROM rejects WHERE host = ? ORDER BY line", [fqdn(short)]
        ).fetchall()
    finally:
        con.close()
    return [(bytes(r[0]), r[1]) for r in rows]


@needs_fleet
def test_a_rotation_while_dot1_is_read_pulls_the_new_history_twice(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The host has .1 (A) and the live history (B). While the first collection reads .1,
    the wrapper rotates once: B becomes .1 and a new history C starts. The script stat'ed
    the history (B's inode and size) before reading .1, then reads the path again, which is
    now C: the mirror gets A + C under B's inode. The next collection finds B as .1, which
    does not match that cursor, restarts, and pulls B and C again: C is in the mirror twice,
    and a bad line of C is rejected twice."""
    h = host(fleet, "midread")
    fresh_history(h)
    bad = b'{"schema_version":1,"truncated\n'
    a, b, c = lines(3, start=100), lines(3, start=200), lines(1, start=300) + bad
    h.append(ROTATED, a)
    h.append(HISTORY, b)
    arm_rotation(h, ROTATED, c)
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    try:
        assert collect(fleet, mirror, ["midread"]).hosts_ok
    finally:
        h.path("/root/rotate-after").unlink(missing_ok=True)
    assert h.path(ROTATED).read_bytes() == b  # the rotation did land mid-collection
    h.append(HISTORY, lines(1, start=301))
    for _ in range(2):
        assert collect(fleet, mirror, ["midread"]).hosts_ok
    load(mirror, db)
    runs, rejects = accounted(db, "midread")
    assert runs == run_ids(a + b + c + lines(1, start=301))
    assert rejects == [bad[:-1]], "a line of the new history is rejected twice"
    assert mirrored(mirror, "midread").count(c) == 1, "the new history was pulled twice"


@needs_fleet
def test_a_rotation_between_the_anchor_check_and_the_read_invents_a_line(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Append mode: the script stats the history (inode, size), checks the 1 KiB anchor,
    then reads `tail -c +OFFSET` of the path. A rotation between the check and the read
    (B -> .1, new history C, larger than the cursor's offset) makes it read C from B's
    offset: the middle of one of C's lines up to a newline goes to the mirror as if it were
    B's next line. The loader rejects that fragment, bytes that were never a line of any
    file on the host."""
    h = host(fleet, "bad")
    fresh_history(h)
    b = lines(2, start=400)
    h.append(HISTORY, b)
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    assert collect(fleet, mirror, ["bad"]).hosts_ok
    b2 = lines(1, start=402)
    h.append(HISTORY, b2)  # not yet collected
    c = lines(6, start=500, pad=100)  # lines of another length than B's
    assert len(c) > len(b) + len(b2)
    arm_rotation(h, HISTORY, c)  # after the anchor check's tail of the history
    try:
        assert collect(fleet, mirror, ["bad"]).hosts_ok
    finally:
        h.path("/root/rotate-after").unlink(missing_ok=True)
    assert h.path(ROTATED).read_bytes() == b + b2  # the rotation did land mid-collection
    for _ in range(2):
        assert collect(fleet, mirror, ["bad"]).hosts_ok
    load(mirror, db)
    real = set((b + b2 + c).splitlines())
    invented = [x for x in mirrored(mirror, "bad").splitlines() if x not in real]
    assert rejects_with_reasons(db, "bad") == [], "a reject of bytes the host never wrote"
    assert not invented, f"the mirror holds a line no host file has: {invented[0][:80]!r}"
    assert accounted(db, "bad")[0] == run_ids(b + b2 + c)


# --- the state file, carried by the observation ---------------------------------------------


@needs_fleet
def test_a_state_file_that_is_not_utf8_is_rejected_with_its_bytes_not_transcoded(
    fleet: Fleet, tmp_path: Path
) -> None:
    """docs/record-format.md: "A `state_file` becomes a run judged like a history line",
    and a line that is not UTF-8 is rejected (`invalid UTF-8 at byte N`) with its raw
    bytes. The collector decodes the state file with errors="replace" before it goes into
    the observation, so the loader sees U+FFFD where the host has byte 0xE9: the run loads
    with a role the host never wrote, and nothing is rejected."""
    h = host(fleet, "latin1")
    fresh_history(h)
    rec = json.dumps(
        {**json.loads(lines(1, start=900)), "role": "caf\u00e9", "run_id": "latin1-state"},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    state = rec.replace("café".encode(), b"caf\xe9") + b"\n"  # a Latin-1 role, as on disk
    assert b"\xe9" in state
    h.write("/etc/puppet/last_run_metadata.json", state)
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    try:
        assert collect(fleet, mirror, ["latin1"]).hosts_ok
    finally:
        h.path("/etc/puppet/last_run_metadata.json").unlink()
    load(mirror, db)
    con = warehouse.connect(db, read_only=True)
    try:
        roles = con.execute("SELECT role FROM runs WHERE host = ?", [fqdn("latin1")]).fetchall()
        rejects = con.execute(
            "SELECT reason, line FROM rejects WHERE host = ?", [fqdn("latin1")]
        ).fetchall()
    finally:
        con.close()
    assert roles == [], f"a run with a role the host never wrote: {roles}"
    where = state.index(b"\xe9")
    assert [(r, bytes(x)) for r, x in rejects] == [
        (f"invalid UTF-8 at byte {where}", state.rstrip(b"\n"))
    ]


@needs_fleet
def test_an_unchanged_bad_state_file_is_one_reject_not_one_per_collection(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A host whose state file is not a valid record (here: cut short) and that is collected
    three times without any change. A valid state file gives one run however often it is
    collected (run identity); the invalid one gives a new reject at every collection, since
    each observation carries it again under a new source_path (`...#OFFSET:state_file`)."""
    h = host(fleet, "badstate")
    fresh_history(h)
    state = lines(1, start=950)[:-40] + b"\n"  # a torn state file
    h.write("/etc/puppet/last_run_metadata.json", state)
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    try:
        for _ in range(3):
            assert collect(fleet, mirror, ["badstate"]).hosts_ok
            load(mirror, db)
    finally:
        h.path("/etc/puppet/last_run_metadata.json").unlink()
    assert accounted(db, "badstate")[1] == [state.rstrip(b"\n")]


# --- the remedy for an unreadable mirror cursor wipes the mirror ------------------------------


@needs_fleet
def test_removing_an_unreadable_cursor_as_advised_keeps_the_mirrored_history(
    fleet: Fleet, tmp_path: Path
) -> None:
    """docs/collector.md: an unreadable cursor "fails that host only, with the file named:
    removing it collects the host afresh"; the error says "its mirrored history and
    observations are read again from the host". But with no cursor, Mirror.read_cursor
    commits sizes 0 and truncate_uncommitted cuts history.jsonl and observations.jsonl to
    nothing: history the host no longer keeps (an older file, gone) and every past
    observation are erased from the mirror, the append-only copy `rebuild` starts from."""
    h = host(fleet, "cursor")
    fresh_history(h)
    old, new = lines(3, start=1000), lines(2, start=1100)
    h.append(HISTORY, old)
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    assert collect(fleet, mirror, ["cursor"]).hosts_ok
    h.path(HISTORY).unlink()  # the host's retention removed the old file
    h.append(HISTORY, new)
    assert collect(fleet, mirror, ["cursor"]).hosts_ok
    hdir = mirror / fqdn("cursor")
    assert mirrored(mirror, "cursor") == old + new
    observed = (hdir / "observations.jsonl").read_bytes()

    (hdir / ".cursor.json").write_text("{")  # damaged
    err = collect(fleet, mirror, ["cursor"]).hosts_failed[fqdn("cursor")]
    assert "removing it collects this host afresh" in err
    (hdir / ".cursor.json").unlink()  # as the message advises
    assert collect(fleet, mirror, ["cursor"]).hosts_ok

    assert set(old.splitlines()) <= set(mirrored(mirror, "cursor").splitlines()), (
        "history the host no longer has was erased from the mirror"
    )
    assert (hdir / "observations.jsonl").read_bytes().startswith(observed), (
        "past observations were erased from the mirror"
    )
    rebuilt = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "rebuild", "--mirror", str(mirror)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert accounted(db, "cursor")[0] == run_ids(old + new)


# --- host names and host directories ----------------------------------------------------------


@needs_fleet
def test_one_host_dir_that_cannot_be_made_fails_that_host_only(
    fleet: Fleet, tmp_path: Path
) -> None:
    """docs/collector.md: every failure is an observation of its host, and `fleetstate
    ingest` exits 4 when any host failed, "the others are still mirrored and loaded". A
    regular file where one host's mirror directory should be makes Mirror.host_dir raise
    (FileExistsError) from collect_host's own error handler: the whole ingest stops with
    exit 1 and `[Errno 17] File exists`, and the healthy host is neither loaded nor kept."""
    fresh_history(host(fleet, "ok"))
    host(fleet, "ok").append(HISTORY, lines(2, start=1200))
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    mirror.mkdir()
    (mirror / fqdn("file")).write_text("not a directory\n")
    proc = subprocess.run(
        [
            sys.executable, "-m", "pipeline", "--db", str(db), "ingest", fqdn("ok"), fqdn("file"),
            "--mirror", str(mirror), "--ssh-config", str(fleet.ssh_config),
            "--known-hosts", str(fleet.known_hosts), "--retries", "0",
        ],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 4, proc.stderr[-400:]
    assert fqdn("file") in proc.stderr
    assert accounted(db, "ok")[0] == run_ids(lines(2, start=1200))


def test_a_host_directory_named_in_other_case_is_the_same_host(tmp_path: Path) -> None:
    """The collector lower-cases host names (docs/collector.md) and writes
    `MIRROR/web1.example.com`; a mirror laid out by hand for `--from` (contract: "the
    directory name is the host's name") may say `Web1.Example.com`. Host names are
    case-insensitive, but the loader takes directory names as they are: the same host, and
    its same run, count twice (two rows in status, two hosts in a rollout)."""
    mirror, db = tmp_path / "mirror", tmp_path / "wh.duckdb"
    for name in ("Web1.Example.com", "web1.example.com"):
        (mirror / name).mkdir(parents=True)
        (mirror / name / "history.jsonl").write_bytes(lines(1, start=1300))
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "--db", str(db), "ingest", "--from", str(mirror)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr  # loaded one, named the other
    assert "Web1.Example.com: the same host as web1.example.com" in proc.stderr
    con = warehouse.connect(db, read_only=True)
    try:
        hosts = con.execute("SELECT DISTINCT host FROM runs ORDER BY 1").fetchall()
        runs = con.execute("SELECT count(*) FROM runs").fetchall()
    finally:
        con.close()
    assert (len(hosts), runs[0][0]) == (1, 1), f"one host counted as {hosts}"
