"""Worker activity from Taskcluster's queue: when each worker was last active, and whether
it is quarantined. HEALTHY (host_state) needs it.

Fetching (urllib, no duckdb) and saving (plain inserts, history kept) are separate; only
the command joins them. Workers are matched to hosts by short host name: worker
`t-linux64-ms-001` is host `t-linux64-ms-001.test.releng.mdc1.mozilla.com`.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.errors import FleetstateError

if TYPE_CHECKING:
    import duckdb

PAGE_LIMIT = 1000
MAX_PAGES = 10_000


class ActivityError(FleetstateError):
    """The queue could not be asked (bad root URL, HTTP error, unexpected answer)."""


@dataclass(frozen=True)
class Worker:
    pool: str  # provisionerId/workerType
    worker_group: str
    worker_id: str
    last_active: datetime | None
    quarantined_until: datetime | None
    raw: dict[str, Any]


@dataclass
class SaveStats:
    workers: int = 0
    matched: int = 0
    unmatched: list[str] = field(default_factory=list)


def workers_url(root_url: str, pool: str, token: str | None = None) -> str:
    """The queue's listWorkers URL for a pool `provisionerId/workerType`."""
    if pool.count("/") != 1 or not all(pool.split("/")):
        raise ActivityError(f"worker pool {pool!r} is not provisionerId/workerType")
    provisioner, worker_type = (urllib.parse.quote(p, safe="") for p in pool.split("/"))
    query: dict[str, str | int] = {"limit": PAGE_LIMIT}
    if token:
        query["continuationToken"] = token
    return (
        f"{root_url.rstrip('/')}/api/queue/v1/provisioners/{provisioner}"
        f"/worker-types/{worker_type}/workers?{urllib.parse.urlencode(query)}"
    )


MAX_ANSWER_BYTES = 64 << 20  # a page of 1,000 workers is about 1 MB


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    if not url.startswith(("http://", "https://")):
        raise ActivityError(f"not an http(s) URL: {url}")
    try:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            raw = response.read(MAX_ANSWER_BYTES + 1)
        if len(raw) > MAX_ANSWER_BYTES:
            raise ActivityError(f"GET {url}: answer larger than {MAX_ANSWER_BYTES >> 20} MiB")
        body = json.loads(raw.decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise ActivityError(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ActivityError(f"GET {url}: {getattr(exc, 'reason', exc)}") from exc
    except UnicodeDecodeError as exc:
        raise ActivityError(f"GET {url}: not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise ActivityError(f"GET {url}: not JSON ({exc.msg})") from exc
    except (http.client.HTTPException, ValueError) as exc:  # a bad URL or a garbled answer
        raise ActivityError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("workers"), list):
        raise ActivityError(f"GET {url}: no `workers` list in the answer")
    if not all(isinstance(w, dict) for w in body["workers"]):
        raise ActivityError(f"GET {url}: a `workers` entry is not an object")
    return body


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # no zone: UTC, as the queue means it (astimezone would take the machine's zone)
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # the offset carries it past year 9999 (or before year 1) in UTC
        edge = datetime.max if when.year == datetime.max.year else datetime.min
        return edge.replace(tzinfo=UTC)  # a quarantine "until 9999" still quarantines


def fetch_workers(root_url: str, pool: str, timeout: float = 30.0) -> list[Worker]:
    """Every worker of a pool, following continuationToken to the last page."""
    workers: list[Worker] = []
    token: str | None = None
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        page = _get_json(workers_url(root_url, pool, token), timeout)
        for w in page["workers"]:
            workers.append(Worker(
                pool=pool, worker_group=str(w.get("workerGroup", "")),
                worker_id=str(w.get("workerId", "")),
                last_active=_when(w.get("lastDateActive")),
                quarantined_until=_when(w.get("quarantineUntil")), raw=w,
            ))  # fmt: skip
        token = page.get("continuationToken") or None
        if token is None:
            return workers
        if not isinstance(token, str) or token in seen:
            raise ActivityError(f"{pool}: the queue sent continuationToken {token!r} again")
        seen.add(token)
    raise ActivityError(f"{pool}: more than {MAX_PAGES} pages of workers; giving up")


def short_name(host: str) -> str:
    return host.split(".", 1)[0].lower()


def save_activity(
    con: duckdb.DuckDBPyConnection, root_url: str, pool: str, workers: list[Worker],
    observed_at: datetime | None = None,
) -> SaveStats:  # fmt: skip
    """Append one worker_activity row per worker matched to a known host; record the fetch."""
    when = observed_at or datetime.now(UTC)
    known = con.execute("SELECT host FROM runs UNION SELECT host FROM observations").fetchall()
    by_short: dict[str, list[str]] = {}
    for (host,) in known:
        by_short.setdefault(short_name(str(host)), []).append(str(host))
    stats = SaveStats(workers=len(workers))
    con.execute("BEGIN TRANSACTION")
    try:
        for w in workers:
            hosts = by_short.get(short_name(w.worker_id), [])
            if len(hosts) != 1:  # unknown, or ambiguous: never guess which host it is
                stats.unmatched.append(w.worker_id)
                continue
            con.execute(
                "INSERT INTO worker_activity VALUES (?, ?, ?, ?, ?, ?, ?)",
                [hosts[0], when, pool, w.worker_id, w.last_active, w.quarantined_until,
                 json.dumps(w.raw)],
            )  # fmt: skip
            stats.matched += 1
        con.execute(
            "INSERT INTO worker_fetches VALUES (?, ?, ?, ?, ?)",
            [when, root_url, pool, stats.workers, stats.matched],
        )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return stats
