"""ingest-workers and ingest-git at their edges: a queue answering badly or a worker in two
pools, shallow clones, odd dates, very many branches. Each test failed before its fix."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from analytics_support import add_run, git, open_db
from factories import JsonHandler
from typer.testing import CliRunner

from pipeline import activity, gitgraph
from pipeline.cli import app

NOW = datetime.now(UTC).replace(microsecond=0)
BASE = "/api/queue/v1/provisioners/releng-hardware/worker-types/"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


class Queue(JsonHandler):
    """Answers by worker type: a page (dict, serialised), raw bytes, or a misbehaviour."""

    answers: dict[str, Any] = {}
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        Queue.requests.append(self.path)
        answer = Queue.answers.get(url.path.removeprefix(BASE).removesuffix("/workers"))
        if answer == "bad-status-line":
            self.wfile.write(b"HELLO THERE\r\n\r\n")
            return
        if answer == "truncated":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"workers": [')
            return
        if answer == "same-token":
            answer = {"workers": [], "continuationToken": "again"}
        if answer is None:
            self.send_error(404, "no such worker type")
            return
        self.send_json(answer)


@pytest.fixture()
def root_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Queue)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Queue.requests = []
    Queue.answers = {}
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- ingest-workers -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:abc", "http://exa mple.com", "http://[::1"])
def test_bad_root_url_is_an_activity_error(url: str) -> None:
    # observed: http.client.InvalidURL / ValueError escape, a traceback from the CLI
    with pytest.raises(activity.ActivityError):
        activity.fetch_workers(url, "releng-hardware/talos")


@pytest.mark.parametrize(
    "answer", [b'{"workers": [], "x": "\xff\xfe"}', "truncated", "bad-status-line"]
)
def test_garbled_answer_is_an_activity_error(root_url: str, answer: Any) -> None:
    # observed: UnicodeDecodeError / http.client.IncompleteRead / http.client.BadStatusLine
    Queue.answers = {"talos": answer}
    with pytest.raises(activity.ActivityError):
        activity.fetch_workers(root_url, "releng-hardware/talos", timeout=5)


def test_worker_entries_that_are_not_objects_are_an_activity_error(root_url: str) -> None:
    # observed: AttributeError: 'str' object has no attribute 'get'
    Queue.answers = {"talos": {"workers": ["t-linux64-ms-001", 1]}}
    with pytest.raises(activity.ActivityError):
        activity.fetch_workers(root_url, "releng-hardware/talos")


def test_repeated_continuation_token_is_not_followed_ten_thousand_times(root_url: str) -> None:
    # observed: 10,000 identical requests, then "more than 10000 pages"
    Queue.answers = {"talos": "same-token"}
    with pytest.raises(activity.ActivityError):
        activity.fetch_workers(root_url, "releng-hardware/talos")
    assert len(Queue.requests) < 100


def test_worker_in_two_pools_healthy_reads_the_fresh_activity(
    root_url: str, tmp_path: Path
) -> None:  # fmt: skip
    """A worker moved from one pool to another is still listed, stale, by the old pool.
    HEALTHY must say Y (active 5 minutes ago), whatever the order of --pool."""
    con = open_db(tmp_path)
    add_run(con, "t-linux64-ms-001.test.releng.mdc1.mozilla.com", NOW - timedelta(minutes=30),
            "a" * 40)  # fmt: skip
    con.close()
    fresh = {"workerGroup": "mdc1", "workerId": "t-linux64-ms-001",
             "lastDateActive": iso(NOW - timedelta(minutes=5))}  # fmt: skip
    stale = {**fresh, "lastDateActive": iso(NOW - timedelta(days=3))}
    Queue.answers = {"talos-new": {"workers": [fresh]}, "talos-old": {"workers": [stale]}}
    args = ["--db", str(tmp_path / "fleet.duckdb"), "ingest-workers", "--root-url", root_url,
            "--pool", "releng-hardware/talos-new",
            "--pool", "releng-hardware/talos-old"]  # fmt: skip
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    con = open_db(tmp_path)
    assert con.execute("SELECT healthy FROM host_state").fetchall() == [("Y",)]  # observed: N


def test_same_worker_twice_in_one_pool_healthy_reads_the_fresh_activity(
    root_url: str, tmp_path: Path
) -> None:  # fmt: skip
    """The same workerId in two workerGroups of one pool: both rows get one observed_at and
    latest_activity picks one of them arbitrarily (observed: the stale one)."""
    con = open_db(tmp_path)
    add_run(con, "t-linux64-ms-001.test.releng.mdc1.mozilla.com", NOW - timedelta(minutes=30),
            "a" * 40)  # fmt: skip
    con.close()
    stale = {"workerGroup": "mdc1", "workerId": "t-linux64-ms-001",
             "lastDateActive": iso(NOW - timedelta(hours=5))}  # fmt: skip
    fresh = {**stale, "workerGroup": "mdc2", "lastDateActive": iso(NOW - timedelta(minutes=5))}
    Queue.answers = {"talos": {"workers": [stale, fresh]}}
    args = ["--db", str(tmp_path / "fleet.duckdb"), "ingest-workers", "--root-url", root_url,
            "--pool", "releng-hardware/talos"]  # fmt: skip
    for _ in range(5):  # the pick is arbitrary: give it several chances to be wrong
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        con = open_db(tmp_path)
        assert con.execute("SELECT healthy FROM host_state").fetchall() == [("Y",)]
        con.close()


def test_timestamp_without_zone_is_not_read_as_local_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # observed with TZ=America/New_York: 10:00 becomes 15:00Z (5 h in the future -> HEALTHY Y)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        got = activity._when("2026-01-01T10:00:00")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert got in (None, datetime(2026, 1, 1, 10, 0, tzinfo=UTC))


@pytest.mark.parametrize("pools", [[""], [","]])
def test_no_pool_is_a_usage_error(root_url: str, tmp_path: Path, pools: list[str]) -> None:
    # observed: exit 0, nothing fetched, nothing printed
    open_db(tmp_path).close()
    args = ["--db", str(tmp_path / "fleet.duckdb"), "ingest-workers", "--root-url", root_url]
    for p in pools:
        args += ["--pool", p]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output


# --- ingest-git -----------------------------------------------------------------------


def _linear_repo(repo: Path, n: int) -> list[str]:
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for i in range(n):
        git(repo, "commit", "-q", "--allow-empty", "-m", f"c{i}", when=i)
    return git(repo, "rev-list", "--reverse", "main").split()


def test_deepened_shallow_clone_completes_the_graph(tmp_path: Path) -> None:
    """A shallow clone, loaded, then `git fetch --unshallow`, loaded again: the graph must
    hold every commit reachable from the branches (docs/analytics.md). Observed: the 17
    older commits are never read (the known tips exclude them) and the old boundary commit
    keeps parents [] for good."""
    shas = _linear_repo(tmp_path / "up", 20)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "3", f"file://{tmp_path / 'up'}", str(clone))
    con = open_db(tmp_path)
    assert gitgraph.load_graph(con, clone).commits_added == 3
    git(clone, "fetch", "-q", "--unshallow")
    gitgraph.load_graph(con, clone)
    assert con.execute("SELECT count(*) FROM git_commits").fetchall() == [(20,)]
    at_first = con.execute("SELECT count(*) FROM commits_at(?)", [shas[0]]).fetchall()
    assert at_first == [(20,)]
    # so a host on the tip counts as at an older target
    add_run(con, "h1", NOW - timedelta(hours=1), shas[-1])
    status = con.execute("SELECT status FROM rollout(?)", [shas[5]]).fetchall()
    assert status == [("converged",)]


def test_commit_dated_after_year_9999_is_no_traceback(tmp_path: Path) -> None:
    # observed: ValueError: year 10000 is out of range (a traceback from `ingest-git`)
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    stream = b"commit refs/heads/main\ncommitter T <t@e> 253402300800 +0000\ndata 1\nx\n\n"
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=stream, check=True,
                   env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"})  # fmt: skip
    con = open_db(tmp_path)
    try:
        gitgraph.load_graph(con, repo)
    except gitgraph.GitError:
        pass  # a clear one-line error is fine too


def test_incremental_load_with_many_branches(tmp_path: Path) -> None:
    """26,000 branches on distinct commits: the second (incremental) load passes every tip
    twice on git's command line. Observed: [Errno 7] Argument list too long: 'git'."""
    n = 26_000
    repo = tmp_path / "many"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    lines = []
    for i in range(1, n + 1):
        lines += ["commit refs/heads/main", f"mark :{i}",
                  f"committer T <t@e> {1767225600 + i} +0000", "data 1", "x"]  # fmt: skip
        lines += [f"from :{i - 1}"] if i > 1 else []
        lines += [""]
    for i in range(1, n + 1):
        lines += [f"reset refs/heads/b{i}", f"from :{i}", ""]
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"],
                   input="\n".join(lines).encode(), check=True,
                   env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"})  # fmt: skip
    con = open_db(tmp_path)
    assert gitgraph.load_graph(con, repo).commits_added == n
    git(repo, "commit", "-q", "--allow-empty", "-m", "one more", when=n + 1)
    assert gitgraph.load_graph(con, repo).commits_added == 1


def test_a_lifted_quarantine_is_not_read_from_an_older_fetch(tmp_path: Path) -> None:
    """The latest fetch shows no quarantine (NULL): an older fetch's quarantine is over."""
    con = open_db(tmp_path)
    host = "t-linux64-ms-001.test.releng.mdc1.mozilla.com"
    add_run(con, host, NOW - timedelta(minutes=30), "a" * 40)
    for age, until in ((timedelta(hours=2), NOW + timedelta(days=1)), (timedelta(0), None)):
        worker = activity.Worker("p/t", "mdc1", "t-linux64-ms-001", NOW - timedelta(minutes=5),
                                 until, {})  # fmt: skip
        activity.save_activity(con, "http://q", "p/t", [worker], observed_at=NOW - age)
    assert con.execute("SELECT healthy FROM host_state").fetchall() == [("Y",)]
