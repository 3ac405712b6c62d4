"""`fleetstate demo`: the whole pipeline on a generated sample fleet, ages live.

The sample is generated with its last collection at the current minute, so ages
and staleness look as they would on a real fleet, then loaded by the real loader
into a fresh warehouse. A warehouse holding real data is never overwritten.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline import activity, analytics, load, monitor, samplefleet, views, warehouse
from pipeline.errors import FleetstateError


def run(db: Path, mirror: Path, say: Callable[[str], None]) -> None:
    _refuse_real_warehouse(db)
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    if mirror.exists():
        shutil.rmtree(mirror)
    summary = samplefleet.generate(mirror, end)
    say(f"generated a sample fleet of {len(summary.hosts)} hosts in {mirror}")
    warehouse.remove(db)
    con = warehouse.connect(db)
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
    say(
        f"loaded {stats.runs_added:,} runs, {stats.observations_added:,} observations, "
        f"{stats.rejects_added} rejects (malformed lines kept in the rejects table) into {db}\n"
    )
    monitor.emit_status(monitor.status(con), "table")
    print()
    sha = summary.newest_sha
    views.emit_rollout_depth(analytics.rollout(con, sha), "table")
    say(
        "\nnext: fleetstate status --filter 'applied=N|?'   fleetstate rollout "  # noqa: S608
        f"{sha[:7]}   fleetstate drift   fleetstate sql 'SELECT * FROM rejects'"
    )


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


def _refuse_real_warehouse(db: Path) -> None:
    if not db.exists():
        return
    con = warehouse.connect(db, read_only=True)
    try:
        found = con.execute("SELECT value FROM meta WHERE key = 'made_by'").fetchall()
        made_by = found[0] if found else None
        runs = con.execute("SELECT count(*) FROM runs").fetchall()[0]
    except Exception:  # noqa: BLE001 -- an unreadable or foreign file is not ours to delete
        made_by, runs = None, (1,)
    finally:
        con.close()
    if (made_by is None or made_by[0] != "demo") and runs and runs[0]:
        raise FleetstateError(
            f"{db} holds real data; run the demo elsewhere: fleetstate --db demo.duckdb demo"
        )
