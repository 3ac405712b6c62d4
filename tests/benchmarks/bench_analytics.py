"""How long `status`, `rollout` and `drift` take on a big warehouse, next to a plain scan.

Generates a warehouse of HOSTS hosts x DAYS days of puppet runs every 30 minutes straight
into DuckDB (INSERT ... SELECT FROM range(): no JSON, no loader), with a new commit on main
every day that each host picks up 0-12 h later, ~3 % failed runs, a few overrides and
dirty checkouts, a daily observation per host and worker activity. Then times each
command's core query (best of --repeat) against `SELECT ... FROM runs GROUP BY host`, the
baseline, and prints one line per figure: name, seconds, baseline seconds, ratio.

    uv run python tests/benchmarks/bench_analytics.py --hosts 2000 --days 90
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from pipeline import analytics, monitor, warehouse

GENERATE = """
INSERT INTO git_commits (sha, parents, author_time, commit_time, subject, author, loaded_at)
SELECT substr(sha256('commit-' || i), 1, 40),
    CASE WHEN i = 0 THEN [] ELSE [substr(sha256('commit-' || (i - 1)), 1, 40)] END,
    $start + to_days(i), $start + to_days(i), 'change ' || i, 'bench', now()
FROM range($days) t(i);

INSERT INTO git_refs VALUES ('main', substr(sha256('commit-' || ($days - 1)), 1, 40), now());

INSERT INTO runs (host, run_id, ts, started_at, duration_s, success, exit_code, role, git_repo,
                  git_branch, git_sha, git_dirty, override_sha, vault_sha, stage, attempt, os,
                  source, loaded_at)
WITH hosts AS (
    SELECT h, 't-linux64-ms-' || lpad(CAST(h AS VARCHAR), 5, '0') || '.test.releng.mdc1.mozilla.com'
               AS host,
        'gecko_t_role_' || (h % 8) AS role,
        to_minutes(CAST(hash(h, 'lag') % 720 AS BIGINT)) AS lag,
        to_seconds(CAST(hash(h, 'jitter') % 1800 AS BIGINT)) AS jitter
    FROM range($hosts) t(h)
), slots AS (
    SELECT h, host, role, lag, $start + to_minutes(k * 30) + jitter AS ts, k
    FROM hosts, range($days * 48) s(k)
), runs AS (
    SELECT *, greatest(0, CAST(floor(epoch(ts - $start - lag) / 86400) AS BIGINT)) AS c,
        hash(h, k) % 100 < 97 AS ok
    FROM slots
)
SELECT host, h || '-' || k, ts, ts - INTERVAL 3 MINUTE, 180, ok,
    CASE WHEN ok THEN (CASE WHEN k % 48 = 0 THEN 2 ELSE 0 END)
         ELSE [1, 4, 6][CAST(1 + hash(k) % 3 AS BIGINT)] END,
    role, 'https://github.com/mozilla-platform-ops/ronin_puppet.git',
    CASE WHEN h % 50 = 0 THEN 'relops-test' ELSE 'master' END,
    substr(sha256('commit-' || least(c, $days - 1)), 1, 40),
    h % 97 = 0,
    CASE WHEN h % 50 = 0 THEN sha256('override-' || h) END,
    sha256('vault-' || role), 'puppet', 1, 'Linux', 'history', now()
FROM runs WHERE ts <= now();

INSERT INTO observations (host, observed_at, reachable, os, role, override_present,
                          override_sha, vault_sha, loaded_at)
SELECT host, max(ts) + INTERVAL 1 MINUTE, true, 'Linux', any_value(role), h_override IS NOT NULL,
    h_override, sha256('vault-' || any_value(role)), now()
FROM (SELECT host, ts, role, override_sha AS h_override FROM runs
      WHERE ts >= now() - INTERVAL 1 DAY)
GROUP BY host, h_override;

INSERT INTO worker_activity (host, observed_at, worker_pool, worker_id, last_active)
SELECT host, now(), 'releng-hardware/gecko-t-linux-talos', split_part(host, '.', 1),
    now() - to_minutes(CAST(hash(host) % 120 AS BIGINT))
FROM (SELECT DISTINCT host FROM runs);
"""

BASELINE = "SELECT host, count(*), max(ts), sum(CAST(success AS INTEGER)) FROM runs GROUP BY host"


def generate(path: Path, hosts: int, days: int) -> float:
    warehouse.remove(path)
    started = time.perf_counter()
    con = warehouse.connect(path)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=days)
    params = {"start": start, "days": days, "hosts": hosts}
    for statement in GENERATE.split(";\n\n"):
        con.execute(statement, {k: v for k, v in params.items() if f"${k}" in statement})
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - started


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def size_on_disk(path: Path) -> int:
    wal = path.with_name(path.name + ".wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", type=Path, help="[default: bench-data/bench-HOSTSxDAYS.duckdb]")
    parser.add_argument("--reuse", action="store_true", help="Keep an existing warehouse.")
    args = parser.parse_args()
    path = args.db or Path(f"bench-data/bench-{args.hosts}x{args.days}.duckdb")
    if not (args.reuse and path.exists()):
        print(f"# generating {path} ...", flush=True)
        print(f"# generated in {generate(path, args.hosts, args.days):.1f} s", flush=True)
    warehouse.connect(path).close()  # (re)apply queries/: a reused file may hold older SQL
    con = warehouse.connect(path, read_only=True)
    runs = con.execute("SELECT count(*), count(DISTINCT host) FROM runs").fetchall()[0]
    sha = con.execute("SELECT sha FROM git_refs WHERE name = 'main'").fetchall()[0][0]
    week_old = con.execute(
        "SELECT sha FROM git_commits ORDER BY commit_time DESC LIMIT 1 OFFSET 7"
    ).fetchall()
    print(f"# {runs[0]:,} runs, {runs[1]:,} hosts, {size_on_disk(path) / 2**20:,.0f} MiB on disk,"
          f" duckdb {duckdb.__version__}, best of {args.repeat}")  # fmt: skip
    baseline = best(lambda: con.execute(BASELINE).fetchall(), args.repeat)
    figures: dict[str, Callable[[], object]] = {
        "baseline_scan": lambda: con.execute(BASELINE).fetchall(),
        "status": lambda: monitor.status(con),
        "rollout_summary": lambda: con.execute(
            "SELECT * FROM rollout_summary(?)", [sha]
        ).fetchall(),  # fmt: skip
        "rollout": lambda: analytics.rollout(con, sha),
        "drift_30d": lambda: analytics.drift(con, 30 * 86400),
    }
    if week_old:
        figures["rollout_week_old"] = lambda: analytics.rollout(con, week_old[0][0])
    print(f"{'name':<18} {'seconds':>8} {'baseline':>9} {'ratio':>7}")
    for name, fn in figures.items():
        seconds = baseline if name == "baseline_scan" else best(fn, args.repeat)
        print(f"{name:<18} {seconds:>8.3f} {baseline:>9.3f} {seconds / baseline:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
