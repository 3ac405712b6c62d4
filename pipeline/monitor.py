"""`fleetstate status`, the monitor: host_state filtered in SQL and shown without polars.

Operators run it dozens of times a day, so it imports only duckdb: the filter compiles
to SQL (filters.py), rows come back as plain tuples, and render.py writes the table
itself.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import duckdb

from pipeline import filters, render

STATUS_SQL = """
SELECT *, CAST(epoch(now()) - epoch(last_seen) AS BIGINT) AS last_seen_age_s FROM host_state
"""
DEFAULT_ORDER = "role NULLS LAST, host"
_FLAG_STYLE = {"Y": "green", "N": "bold red", "?": "yellow", "-": "dim"}


def status(con: duckdb.DuckDBPyConnection, query: filters.Query | None = None) -> render.Rows:
    """host_state, one row per host, with ages in seconds, narrowed and sorted by `query`."""
    query = query or filters.Query()
    cur = con.execute(query.sql(STATUS_SQL, DEFAULT_ORDER), query.params)
    columns = [d[0] for d in cur.description or []]
    return render.Rows(columns, cur.fetchall())


def status_table(rows: render.Rows) -> render.Rows:
    """The monitor's columns: 7-char sha, age of the last run (FAIL when it failed)."""
    shown = []
    for r in rows.iter_rows(named=True):
        age = r["pp_age_s"]
        pp_last = "" if age is None else render.age(age) + ("" if r["pp_success"] else " FAIL")
        seen = "never" if r["last_seen_age_s"] is None else render.age(r["last_seen_age_s"])
        sha = r["pp_sha"][:7] if r["pp_sha"] else None
        shown.append(
            (r["host"], r["role"], r["os"], sha, pp_last, r["applied"], r["healthy"], seen)
        )
    names = ["host", "role", "os", "pp_sha", "pp_last", "applied", "healthy", "last_seen"]
    return render.Rows(names, shown)


def _flag_style(value: Any) -> str | None:
    return _FLAG_STYLE.get(value) if isinstance(value, str) else None


def emit_status(rows: render.Rows, fmt: str) -> None:
    if fmt != "table":
        keep = [c for c in rows.columns if c != "last_seen_age_s"]
        idx = [rows.columns.index(c) for c in keep]
        render.emit(render.Rows(keep, [tuple(r[i] for i in idx) for r in rows.rows]), fmt)
        return
    styles = {
        "applied": _flag_style,
        "healthy": _flag_style,
        "pp_last": lambda v: "bold red" if v and v.endswith("FAIL") else None,
    }
    render.emit(status_table(rows), fmt, styles=styles)
    counts = Counter(r["applied"] for r in rows.iter_rows(named=True))
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
    hosts = "1 host" if rows.height == 1 else f"{rows.height} hosts"
    print(f"{hosts}; applied: {summary}" if summary else hosts, file=sys.stderr)
