"""Rollout in depth and drift over time: the queries in queries/4x-7x, answered as frames.

The SQL owns the meaning (statuses, convergence, drift figures, all documented in
docs/analytics.md); this module only narrows by role, runs each question once and
hands polars frames to views.py. The per-host rollout is computed once and the
summary, role breakdown and percentiles are aggregated from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import polars as pl

# Statuses in the order stragglers and hosts are listed (worst first).
STATUS_ORDER = ("failed", "regressed", "unreported", "pending", "converged")


@dataclass
class Rollout:
    summary: pl.DataFrame  # one row: the contract's rollout_summary + the commit + percentiles
    hosts: pl.DataFrame  # rollout_hosts rows
    roles: pl.DataFrame  # rollout_by_role rows
    curve: pl.DataFrame  # hour, converged
    stragglers: pl.DataFrame  # hosts not converged, longest waiting first

    @property
    def pct_converged(self) -> float | None:
        value = self.summary["pct_converged"][0]
        return None if value is None else float(value)

    def meets(self, min_pct: float) -> bool:
        """At least `min_pct` percent of the hosts in scope converged, compared exactly (in
        integers: pct_converged is a float); never with no hosts in scope."""
        s = self.summary.row(0, named=True)
        return bool(s["hosts"]) and s["converged"] * 100 >= min_pct * s["hosts"]

    @property
    def complete(self) -> bool:
        """Nobody who still reports is left to converge."""
        s = self.summary.row(0, named=True)
        return bool(s["hosts"]) and s["converged"] + s["unreported"] == s["hosts"]


_HOSTS = """
    SELECT * FROM rollout_hosts(?, stale_hours := ?)
    WHERE ? IS NULL OR role = ?
    ORDER BY list_position(?, status), host
"""

_SUMMARY = """
    SELECT
        ? AS sha,
        unnest(status_counts(status)),
        rollout_first_seen(?) AS first_seen,
        (SELECT subject FROM git_commits WHERE sha = ?) AS subject,
        (SELECT author_time FROM git_commits WHERE sha = ?) AS author_time,
        (SELECT list(name ORDER BY name) FROM git_refs
         WHERE sha IN (SELECT sha FROM commits_at(?))) AS branches,
        (SELECT count(*) FROM git_commits) > 0 AS graph_known,
        quantile_disc(time_to_converge_s, 0.5) AS p50_converge_s,
        quantile_disc(time_to_converge_s, 0.9) AS p90_converge_s,
        max(time_to_converge_s) AS max_converge_s
    FROM rollout_hosts_frame
"""

_STRAGGLERS = """
    SELECT host, role, status, waiting_since,
        CAST(epoch(now()) - epoch(waiting_since) AS BIGINT) AS waiting_s,
        failures, failure_exit_codes, latest_sha, latest_ts, latest_exit_code, behind, ahead
    FROM rollout_hosts_frame
    WHERE status <> 'converged'
    ORDER BY waiting_since NULLS FIRST, failures DESC, host
"""


# rollout_by_role(), from the per-host rows already computed
_ROLES = """
    SELECT role, unnest(status_counts(status))
    FROM rollout_hosts_frame GROUP BY role ORDER BY role NULLS LAST
"""


def rollout(
    con: duckdb.DuckDBPyConnection, sha: str, role: str | None = None, stale_hours: int = 24
) -> Rollout:
    """Everything `fleetstate rollout` shows, for a full sha, optionally one role."""
    hosts = con.sql(_HOSTS, params=[sha, stale_hours, role, role, list(STATUS_ORDER)]).pl()
    con.register("rollout_hosts_frame", hosts)
    try:
        summary = con.sql(_SUMMARY, params=[sha, sha, sha, sha, sha]).pl()
        stragglers = con.sql(_STRAGGLERS).pl()
        roles = con.sql(_ROLES).pl()
    finally:
        con.unregister("rollout_hosts_frame")
    curve = con.sql("SELECT * FROM rollout_curve(?, only_role := ?)", params=[sha, role]).pl()
    return Rollout(summary=summary, hosts=hosts, roles=roles, curve=curve, stragglers=stragglers)


def drift(con: duckdb.DuckDBPyConnection, since_s: int, role: str | None = None) -> pl.DataFrame:
    """drift_daily rows for the days within `since_s` seconds of now, optionally one role."""
    frame: pl.DataFrame = con.sql(
        """
        SELECT * FROM drift_daily
        WHERE day >= CAST(now() - to_seconds(?) AS DATE) AND (? IS NULL OR role = ?)
        ORDER BY day, role
        """,
        params=[since_s, role, role],
    ).pl()
    return frame


def drift_by_day(daily: pl.DataFrame) -> pl.DataFrame:
    """drift_daily summed over roles: one row per day for the chart (modal is per role, so
    off_modal here is the hosts off their own role's modal commit)."""
    counts = ["hosts", "off_modal", "failing", "with_override", "dirty",
              "override_differs", "vault_differs", "config_differs"]  # fmt: skip
    return daily.group_by("day").agg([pl.col(c).sum() for c in counts]).sort("day")


def intervals(
    con: duckdb.DuckDBPyConnection, since_s: int, host: str | None = None,
    role: str | None = None,
) -> pl.DataFrame:  # fmt: skip
    """host_intervals overlapping the last `since_s` seconds."""
    frame: pl.DataFrame = con.sql(
        """
        SELECT * FROM host_intervals
        WHERE coalesce(to_ts, now()) >= now() - to_seconds(?)
          AND (? IS NULL OR host = ?) AND (? IS NULL OR role = ?)
        ORDER BY host, from_ts
        """,
        params=[since_s, host, host, role, role],
    ).pl()
    return frame
