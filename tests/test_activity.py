"""Worker activity from a real HTTP server on loopback serving listWorkers-shaped pages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from analytics_support import add_run, open_db
from factories import JsonHandler
from typer.testing import CliRunner

from pipeline import activity
from pipeline.cli import app

POOL = "releng-hardware/gecko-t-linux-talos"
PATH = "/api/queue/v1/provisioners/releng-hardware/worker-types/gecko-t-linux-talos/workers"
NOW = datetime.now(UTC).replace(microsecond=0)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def worker(name: str, active_ago: timedelta, quarantine: datetime | None = None) -> dict[str, Any]:
    w: dict[str, Any] = {
        "workerGroup": "mdc1", "workerId": name, "firstClaim": iso(NOW - timedelta(days=30)),
        "latestTask": {"taskId": "fN3QYZz5TTaH6v0rE1Ud3g", "runId": 0},
        "lastDateActive": iso(NOW - active_ago),
    }  # fmt: skip
    if quarantine is not None:
        w["quarantineUntil"] = iso(quarantine)
    return w


# The queue answers in pages; the second is reached through continuationToken.
PAGES = {
    None: {"workers": [worker("t-linux64-ms-001", timedelta(minutes=10)),
                       worker("t-linux64-ms-002", timedelta(hours=3))],
           "continuationToken": "page-2"},
    "page-2": {"workers": [worker("t-linux64-ms-003", timedelta(minutes=5),
                                  quarantine=NOW + timedelta(days=1)),
                           worker("t-linux64-ms-999", timedelta(minutes=1))]},
}  # fmt: skip


class Queue(JsonHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        Queue.requests.append(self.path)
        token = parse_qs(url.query).get("continuationToken", [None])[0]
        if url.path != PATH or token not in PAGES:
            self.send_error(404, "no such worker type")
            return
        self.send_json(PAGES[token])


@pytest.fixture()
def root_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Queue)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Queue.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_follows_continuation_tokens(root_url: str) -> None:
    workers = activity.fetch_workers(root_url, POOL)
    assert [w.worker_id for w in workers] == [
        "t-linux64-ms-001", "t-linux64-ms-002", "t-linux64-ms-003", "t-linux64-ms-999",
    ]  # fmt: skip
    assert workers[0].last_active == NOW - timedelta(minutes=10)
    assert workers[2].quarantined_until == NOW + timedelta(days=1)
    assert len(Queue.requests) == 2 and "continuationToken=page-2" in Queue.requests[1]


def test_errors_are_one_line(root_url: str) -> None:
    with pytest.raises(activity.ActivityError, match="HTTP 404"):
        activity.fetch_workers(root_url, "releng-hardware/nope")
    with pytest.raises(activity.ActivityError, match="provisionerId/workerType"):
        activity.fetch_workers(root_url, "just-a-name")


def test_ingest_workers_sets_healthy_and_keeps_history(root_url: str, tmp_path: Path) -> None:
    con = open_db(tmp_path)
    for n in range(1, 5):
        add_run(con, f"t-linux64-ms-00{n}.test.releng.mdc1.mozilla.com",
                NOW - timedelta(minutes=30), "a" * 40)  # fmt: skip
    con.close()
    args = ["--db", str(tmp_path / "fleet.duckdb"), "ingest-workers", "--root-url", root_url,
            "--pool", POOL]  # fmt: skip
    for _ in range(2):
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0
    assert "4 workers, 3 matched a host, unmatched: t-linux64-ms-999" in result.stderr
    con = open_db(tmp_path)
    rows = con.execute("SELECT split_part(host, '.', 1), healthy FROM host_state").fetchall()
    healthy = dict(rows)
    # active 10 min ago: Y; 3 h ago: N; quarantined: N; no worker data: -
    assert healthy == {"t-linux64-ms-001": "Y", "t-linux64-ms-002": "N",
                       "t-linux64-ms-003": "N", "t-linux64-ms-004": "-"}  # fmt: skip
    counts = con.execute("SELECT count(*), count(DISTINCT observed_at) FROM worker_activity")
    assert counts.fetchall() == [(6, 2)]  # history: each fetch appends
    assert con.execute("SELECT workers, matched FROM worker_fetches").fetchall() == [(4, 3)] * 2
