"""The questions operators ask, as queries over the warehouse, answered as polars DataFrames
(ad-hoc `sql` as plain rows, so that any DuckDB type can be shown).

Rendering (table, json, csv) lives in render.py; this module only asks.
"""

from __future__ import annotations

import re

import duckdb
import polars as pl

from pipeline.errors import FleetstateError
from pipeline.render import Rows

_HEX = re.compile(r"[0-9a-fA-F]{7,40}")


def resolve_sha(con: duckdb.DuckDBPyConnection, prefix: str) -> str:
    """A full sha from a unique prefix of 7+ hex digits of a commit seen in runs or the graph;
    a full sha is taken as it is when no host has run it yet (a commit just pushed)."""
    if not _HEX.fullmatch(prefix):
        raise FleetstateError(f"not a commit sha or prefix of 7+ hex digits: {prefix!r}")
    rows = con.execute(
        """
        SELECT sha FROM (
            SELECT DISTINCT git_sha AS sha FROM runs WHERE git_sha IS NOT NULL
            UNION SELECT sha FROM git_commits
        ) WHERE starts_with(sha, lower(?)) ORDER BY sha LIMIT 6
        """,
        [prefix],
    ).fetchall()
    if not rows and len(prefix) == 40:
        return prefix.lower()  # a commit no host has run yet: every host is not at it yet
    if not rows:
        raise FleetstateError(f"no commit starting with {prefix} has been seen in the fleet")
    if len(rows) > 1:
        names = ", ".join(r[0][:12] for r in rows[:5])
        raise FleetstateError(
            f"{prefix} is ambiguous: it starts {names}{' ...' if len(rows) > 5 else ''}"
        )
    return str(rows[0][0])


def resolve_host(con: duckdb.DuckDBPyConnection, name: str) -> str:
    """The warehouse's name for host `name`: itself, the same name in another case, or the
    one host whose name starts with `name` and a dot (a short name); else a clear error."""
    rows = con.execute(
        """
        SELECT host FROM (SELECT host FROM runs UNION SELECT host FROM observations)
        WHERE lower(host) = lower($1) OR starts_with(lower(host), lower($1) || '.')
        ORDER BY host <> $1, lower(host) <> lower($1), host LIMIT 6
        """,
        [name],
    ).fetchall()
    if not rows:
        raise FleetstateError(f"host {name!r} is not in the warehouse")
    hosts = [str(r[0]) for r in rows]
    same = [h for h in hosts if h.lower() == name.lower()]
    if name in hosts:
        return name
    if len(same) == 1:  # the name in another case
        return same[0]
    if not same and len(hosts) == 1:  # a short name
        return hosts[0]
    names = ", ".join((same or hosts)[:5])
    raise FleetstateError(f"{name!r} is ambiguous: {names}{' ...' if len(hosts) > 5 else ''}")


def history(con: duckdb.DuckDBPyConnection, host: str, limit: int | None = None) -> pl.DataFrame:
    """The runs of one host, newest first (the newest `limit`, or all)."""
    host = resolve_host(con, host)
    return _frame(
        con,
        """
        SELECT ts, success, exit_code, stage, git_sha, git_branch, role, duration_s,
               override_sha, vault_sha, git_dirty, attempt, source, run_id
        FROM runs WHERE host = ?
        -- queries/10_latest_runs.sql's run_recency, newest first, written out: a warehouse
        -- opened read-only may predate that macro
        ORDER BY epoch_us(coalesce(recency_ts, ts)) DESC,
            CASE source WHEN 'history' THEN 0 WHEN 'state_file' THEN 1 ELSE 2 END,
            least(greatest(coalesce(byte_offset, 0), 0), 1099511627775) DESC,
            hash(run_id) >> 38 DESC
        LIMIT ?
        """,
        [host, limit],
    )


def drift(con: duckdb.DuckDBPyConnection, since_s: int, role: str | None = None) -> pl.DataFrame:
    """drift_daily for the days within `since_s` seconds of now."""
    return _frame(
        con,
        """
        SELECT * FROM drift_daily
        WHERE day >= CAST(now() - to_seconds(?) AS DATE) AND (? IS NULL OR role = ?)
        ORDER BY day, role
        """,
        [since_s, role, role],
    )


def sql(con: duckdb.DuckDBPyConnection, query: str) -> Rows:
    """The answer to any query, as plain Python values (so every DuckDB type, intervals and
    unions included, can be shown); an error is one line."""
    try:
        statements = con.extract_statements(query)
        if len(statements) != 1:  # DuckDB would show the last answer only, or none
            found = "no statement" if not statements else f"{len(statements)} statements"
            raise FleetstateError(f"one query at a time, please: found {found}")
        rel = con.sql(query)
        if rel is None:  # a statement without a result
            return Rows([], [])
        return Rows(list(rel.columns), rel.fetchall())
    except duckdb.Error as exc:
        raise FleetstateError(_one_line(exc)) from exc
    except (ValueError, OverflowError) as exc:  # a value Python cannot hold
        raise FleetstateError(f"cannot show a value of the result: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _frame(
    con: duckdb.DuckDBPyConnection, query: str, params: list[object] | None = None
) -> pl.DataFrame:
    frame: pl.DataFrame = con.sql(query, params=params).pl()
    return frame
