"""Time at its edges: host clocks far ahead, and times beyond what Python's datetime holds.
Found by a review of time handling; each test failed before its fix.

Real parts only: a real DuckDB file in tmp_path, the real loader (`ingest --from`), the
real `fleetstate` process (tests/clirun.py) and, for ingest-workers, a local HTTP server
standing in for the queue. No test depends on wall time beyond "a run an hour ago is
within the 24 h window".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from clirun import fs
from factories import (
    SHA_A,
    SHA_B,
    JsonHandler,
    ago,
    iso,
    line,
    record,
    write_history,
    write_observation,
)


def _ingest(db: Path, mirror: Path) -> None:
    done = fs(db, "ingest", "--from", str(mirror))
    assert done.returncode == 0, done.stderr


def _sql(db: Path, query: str) -> list[dict[str, Any]]:
    done = fs(db, "sql", query, "--format", "json")
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def test_rollout_curve_ends_at_the_current_hour_when_a_host_clock_is_ahead(
    tmp_path: Path,
) -> None:
    """docs/analytics.md: the curve is "converged hosts at the end of each hour from
    first_seen's hour to now" (queries/52_rollout_curve.sql: "to the current hour").
    HEAD's series runs to utc_hour(greatest(now(), (SELECT max(ts) FROM runs))): the
    newest ts of *any* run of *any* commit. One host whose clock is 30 days ahead, on
    another commit, adds 720 hourly points to every rollout; a ts in year 9999 (which
    the loader accepts) makes `fleetstate rollout` of any commit enumerate ~70 M hours
    (measured: 24 s and 9.4 GB of memory for a 2-host warehouse)."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(hours=3), git_sha=SHA_A, run_id="h1-a")))
    skewed = ago(hours=-30 * 24)  # this host's clock is 30 days ahead
    write_history(mirror, "h2", line(record(skewed, git_sha=SHA_B, run_id="h2-b")))
    _ingest(db, mirror)

    [row] = _sql(
        db,
        f"SELECT count(*) AS points, max(hour) <= utc_hour(now()) AS ends_by_now "
        f"FROM rollout_curve('{SHA_A}')",
    )
    # first seen 3 h ago: 4 (or 5, across an hour boundary) points up to the current hour
    assert row["ends_by_now"] and row["points"] <= 5, row


def test_a_converging_run_dated_after_now_counts_in_the_current_hour(tmp_path: Path) -> None:
    """The curve ends at the current hour, and its last point is still rollout_summary's
    `converged`: a host whose clock is ahead converged on the target (first seen by it, a
    day in the future) counts in the current hour, not in an hour past the curve's end."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(hours=-24), git_sha=SHA_A, run_id="ahead")))
    write_history(mirror, "h2", line(record(ago(hours=2), git_sha=SHA_B, run_id="behind")))
    _ingest(db, mirror)
    curve = _sql(
        db, f"SELECT hour = utc_hour(now()) AS now_hour, converged FROM rollout_curve('{SHA_A}')"
    )
    [summary] = _sql(db, f"SELECT converged FROM rollout_summary('{SHA_A}')")
    assert [(p["now_hour"], p["converged"]) for p in curve] == [(True, 1)], curve
    assert summary["converged"] == 1


def test_a_run_appended_after_a_future_dated_one_is_the_latest(tmp_path: Path) -> None:
    """Contract 3: host_state, rollout() and history are about the host's *latest* run;
    contract 1: `ts` is when the run finished, and the wrapper appends each run to the
    history as it finishes. A host whose clock ran 2 days ahead for one run and was then
    corrected (NTP) appends a run that finished later but carries an earlier ts. Runs
    were ordered by ts alone, so the stale run stayed "latest" for 2 days: status showed
    the old commit with age "future", and rollout of the commit the host actually runs
    said `regressed` instead of `converged`."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(
        mirror, "h1",
        line(record(ago(hours=-48), git_sha=SHA_B, run_id="r-skewed"))  # clock 2 days ahead
        + line(record(ago(hours=1), git_sha=SHA_A, run_id="r-after-ntp")),  # appended later
    )  # fmt: skip
    write_observation(mirror, "h1")
    _ingest(db, mirror)

    status = json.loads(fs(db, "status", "--format", "json").stdout)
    rollout = json.loads(fs(db, "rollout", SHA_A, "--format", "json").stdout)
    assert (status[0]["pp_sha"], status[0]["pp_run_id"]) == (SHA_A, "r-after-ntp"), status
    assert rollout[0]["status"] == "converged", rollout


class _Queue(JsonHandler):
    """A queue answering every listWorkers with one worker whose quarantine is given with
    an offset at the very end of the representable range."""

    def do_GET(self) -> None:  # noqa: N802
        self.send_json({"workers": [{
            "workerGroup": "mdc1", "workerId": "h1",
            "lastDateActive": iso(ago(minutes=5)),
            "quarantineUntil": "9999-12-31T23:00:00-05:00",  # 10000-01-01T04:00Z
        }]})  # fmt: skip


@pytest.fixture()
def queue_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Queue)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_ingest_workers_time_beyond_9999_in_utc_is_not_a_traceback(
    tmp_path: Path, queue_url: str
) -> None:
    """Contract 2: exit 1 is "a clear one-line message, no traceback". A worker time with
    an offset that lands outside Python's datetime range once converted to UTC
    (`9999-12-31T23:00:00-05:00`, or `0001-01-01T00:00:00+01:00`) raises OverflowError in
    activity._when (`when.astimezone(UTC)`; only ValueError is caught), and the CLI dies
    with a Python traceback. Such a time should read as unknown (as an unparsable one
    does) or be a one-line error."""
    mirror, db = tmp_path / "m", tmp_path / "wh.duckdb"
    write_history(mirror, "h1", line(record(ago(hours=1), git_sha=SHA_A, run_id="h1-a")))
    _ingest(db, mirror)

    done = fs(db, "ingest-workers", "--root-url", queue_url, "--pool", "releng-hardware/talos")
    assert "Traceback" not in done.stderr, done.stderr[-400:]
    assert done.returncode == 0, done.stderr
    # as late as a time can be: the worker stays quarantined, as the queue meant
    [row] = _sql(db, "SELECT CAST(quarantined_until AS VARCHAR) AS q FROM worker_activity")
    assert row["q"].startswith("9999-12-31 23:59:59"), row
    [state] = json.loads(fs(db, "status", "--format", "json").stdout)
    assert state["healthy"] == "N", state
