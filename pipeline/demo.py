"""`fleetstate demo`: the whole pipeline on a generated sample fleet, ages live.

The sample is generated with its last collection at the current minute, so ages
and staleness look as they would on a real fleet, then loaded by the real loader
into a fresh warehouse. A warehouse holding real data is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline import activity, analytics, load, locks, monitor, samplefleet, views, warehouse
from pipeline.errors import FleetstateError

if TYPE_CHECKING:
    import duckdb

MARKER = ".fleetstate-demo"  # in a mirror the demo made: the next demo may replace it


def run(db: Path, mirror: Path, say: Callable[[str], None]) -> None:
    named = Path(os.path.realpath(mirror))  # `--mirror .` or a link: the directory it names
    if not named.name:
        raise FleetstateError(f"{mirror} is not a demo mirror: fleetstate demo --mirror data/demo")
    deadline = time.monotonic() + locks.wait_s()  # one wait for the whole demo
    _refuse_real_warehouse(db, deadline)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    with _one_demo_at_a_time(named, deadline):
        summary = _replace_mirror(mirror, end)
        say(f"generated a sample fleet of {len(summary.hosts)} hosts in {mirror}")
        # checked again under the warehouse's lock: an ingest may have landed meanwhile
        with warehouse.rebuilding(
            db, check=lambda old: _refuse_real_data(old, db), deadline=deadline
        ) as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('made_by', 'demo')")
            stats = load.load_mirror(con, mirror)
            # the sample's commit graph, as `ingest-git` would load it from a clone
            con.executemany(
                "INSERT INTO git_commits (sha, parents, author_time, commit_time, subject) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (c.sha, [c.parent] if c.parent else [], c.time, c.time, c.subject)
                    for c in summary.commits
                ],
            )
            for pool, workers in _sample_workers(summary, end).items():
                activity.save_activity(con, SAMPLE_QUEUE, pool, workers, observed_at=end)
    con = warehouse.connect(db, read_only=True, wait_s=locks.left(deadline))
    say(
        f"loaded {stats.runs_added:,} runs, {stats.observations_added:,} observations, "
        f"{stats.rejects_added} rejects (malformed lines kept in the rejects table) into {db}"
    )
    say("")
    monitor.emit_status(monitor.status(con), "table")
    print()
    sha = summary.newest_sha
    views.emit_rollout_depth(analytics.rollout(con, sha), "table")
    say("")
    say(
        "next: fleetstate status --filter 'applied=N|?'   fleetstate rollout "  # noqa: S608
        f"{sha[:7]}   fleetstate drift   fleetstate sql 'SELECT * FROM rejects'"
    )
    con.close()


@contextmanager
def _one_demo_at_a_time(mirror: Path, deadline: float) -> Iterator[None]:
    """Hold `.<mirror>.lock` beside the mirror while a demo replaces and loads it (removed
    when the demo is done), waiting FLEETSTATE_LOCK_WAIT_S for another demo to finish;
    then remove the sample directories of demos that were killed (`.<mirror>.XXXXXXXX/`
    holding the demo's marker, or nothing)."""
    mirror.parent.mkdir(parents=True, exist_ok=True)
    lock = mirror.with_name(f".{mirror.name}.lock")
    busy = f"another demo is writing {mirror}; try again when it has finished"
    with locks.holding(lock, deadline, busy, remove=True):  # nothing left beside the mirror
        scratch = re.compile(rf"\.{re.escape(mirror.name)}\.[a-z0-9_]{{8}}")
        for stale in mirror.parent.iterdir():
            if not scratch.fullmatch(stale.name) or stale.is_symlink() or not stale.is_dir():
                continue
            if (stale / MARKER).is_file():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    stale.rmdir()  # killed before its marker: empty, or not the demo's
        yield


def _replace_mirror(mirror: Path, end: datetime) -> samplefleet.SampleSummary:
    """Generate the sample beside `mirror`, then put it in its place. A directory the demo
    did not make (a real mirror, the only copy of collected history) is never removed:
    only one with the demo's marker, or (made before the marker) holding nothing but the
    sample's host directories."""
    mirror.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{mirror.name}.", dir=mirror.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    fresh.chmod(0o777 & ~umask)  # as mkdir makes it (mkdtemp's is private)
    try:
        (fresh / MARKER).write_text("generated by `fleetstate demo`; replaced on each run\n")
        summary = samplefleet.generate(fresh, end)
        if mirror.exists() or mirror.is_symlink():
            if not _made_by_demo(mirror, set(summary.hosts)):
                raise FleetstateError(
                    f"{mirror} is not a demo mirror (it holds other files); the demo replaces "
                    "only its own: fleetstate demo --mirror data/demo"
                )
            shutil.rmtree(mirror)
        fresh.rename(mirror)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return summary


def _made_by_demo(mirror: Path, sample_hosts: set[str]) -> bool:
    if mirror.is_symlink() or not mirror.is_dir():
        return False
    if (mirror / MARKER).is_file():
        return True
    return all(e.is_dir() and e.name in sample_hosts for e in mirror.iterdir())


SAMPLE_QUEUE = "https://queue.sample-fleet.invalid"


def _sample_workers(
    summary: samplefleet.SampleSummary, end: datetime
) -> dict[str, list[activity.Worker]]:
    """Worker activity for the sample, as `ingest-workers` would fetch it from Taskcluster:
    busy workers active minutes ago, silent hosts idle since they went silent, and one
    failing worker quarantined, so HEALTHY shows each of its values."""
    pools: dict[str, list[activity.Worker]] = {}
    failing = sorted(h for h, s in summary.expected_status.items() if s == "failed")
    for i, host in enumerate(summary.hosts):
        status = summary.expected_status[host]
        idle = (
            timedelta(days=2 + i % 3) if status == "unreported" else timedelta(minutes=3 + i % 40)
        )
        quarantine = end + timedelta(days=1) if failing and host == failing[0] else None
        pool = "releng-hardware/" + summary.roles[host].replace("_", "-")
        worker = activity.Worker(
            pool, "mdc1", activity.short_name(host), end - idle, quarantine, {}
        )
        pools.setdefault(pool, []).append(worker)
    return pools


# the tables whose rows only an ingest brings (names from this list, not input)
_REAL_DATA = (
    "runs", "observations", "rejects", "load_cursors", "git_commits", "worker_activity",
)  # fmt: skip


def _refuse_real_warehouse(db: Path, deadline: float) -> None:
    """Before any work: a warehouse holding real data is never replaced."""
    if not db.exists() or (db.is_file() and db.stat().st_size == 0):
        return  # nothing in it to lose
    con = warehouse.connect(db, read_only=True, wait_s=locks.left(deadline))
    try:
        _refuse_real_data(con, db)
    finally:
        con.close()


def _refuse_real_data(con: duckdb.DuckDBPyConnection, db: Path) -> None:
    try:
        found = con.execute("SELECT value FROM meta WHERE key = 'made_by'").fetchall()
        made_by = found[0][0] if found else None
        # anything collected or loaded: observations of hosts never reached, rejects, ...
        held = con.execute(
            " UNION ALL ".join(f"SELECT count(*) FROM (FROM {t} LIMIT 1)" for t in _REAL_DATA)  # noqa: S608
        ).fetchall()
        has_data = any(n for (n,) in held)
    except Exception:  # noqa: BLE001 -- an unreadable or foreign file is not ours to delete
        made_by, has_data = None, True
    if made_by != "demo" and has_data:
        raise FleetstateError(
            f"{db} holds real data; run the demo elsewhere: fleetstate --db demo.duckdb demo"
        )
