"""The status filter language: `applied=N role~talos pp_last>20h sort:pp_last:desc`.

Each space-separated term is `column OP value` (OP one of = != ~ > < >= <=) and all
must hold; `a|b` means either; an empty value means missing; on age columns a value
is a duration (`20h`, `2d`). After `~` the whole value is one regular expression in
DuckDB's dialect (RE2), which is where `|` means either. Terms compile to a SQL WHERE
clause over host_state's typed columns: column names come from the fixed table below,
values are always `?` parameters, never text pasted into SQL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pipeline.durations import parse_duration
from pipeline.errors import FleetstateError

_TERM = re.compile(r"^([a-z_]+)(!=|>=|<=|=|~|>|<)(.*)$")
_SORT = re.compile(r"^sort:([a-z_]+)(?::(asc|desc))?$")

# filter name -> (SQL expression over the status query, kind); ages are in seconds
COLUMNS: dict[str, tuple[str, str]] = {
    "host": ("host", "str"),
    "role": ("role", "str"),
    "os": ("os", "str"),
    "pp_sha": ("pp_sha", "sha"),
    "pp_last": ("pp_age_s", "age"),
    "pp_success": ("pp_success", "bool"),
    "applied": ("applied", "str"),
    "healthy": ("healthy", "str"),
    "last_seen": ("last_seen_age_s", "age"),
    "reachable": ("reachable", "bool"),
    "exit_code": ("pp_exit_code", "int"),
    "branch": ("pp_branch", "str"),
}
_OPS = {"=": "=", "!=": "<>", ">": ">", "<": "<", ">=": ">=", "<=": "<="}


@dataclass
class Query:
    where: list[str] = field(default_factory=list)  # SQL, all must hold
    params: list[Any] = field(default_factory=list)
    order_by: list[str] = field(default_factory=list)

    def sql(self, base: str, default_order: str) -> str:
        where = " AND ".join(self.where) or "true"
        order = ", ".join([*self.order_by, default_order])
        return f"SELECT * FROM ({base}) WHERE {where} ORDER BY {order}"  # noqa: S608


def parse(text: str) -> Query:
    query = Query()
    for term in text.split():
        m = _SORT.match(term)
        if m:
            direction = "DESC" if m.group(2) == "desc" else "ASC"
            query.order_by.append(f"{_column(m.group(1))[0]} {direction} NULLS LAST")
            continue
        m = _TERM.match(term)
        if not m:
            raise FleetstateError(
                f"cannot read filter term {term!r}: expected column OP value "
                "(OP one of = != ~ > < >= <=) or sort:column[:asc|desc]"
            )
        name, op, raw = m.groups()
        column, kind = _column(name)
        values = [raw] if op == "~" else raw.split("|")  # a pattern has its own `|`
        parts = [_alternative(column, kind, op, v, query.params) for v in values]
        joiner = " AND " if op == "!=" else " OR "
        query.where.append("coalesce(" + joiner.join(parts) + ", false)")
    return query


def _column(name: str) -> tuple[str, str]:
    if name not in COLUMNS:
        raise FleetstateError(f"unknown filter column {name!r}; known: {', '.join(COLUMNS)}")
    return COLUMNS[name]


def _alternative(column: str, kind: str, op: str, raw: str, params: list[Any]) -> str:
    if raw == "":
        if op not in ("=", "!="):
            raise FleetstateError(f"an empty value (missing) only goes with = or != ({column})")
        return f"({column} IS {'NOT ' if op == '!=' else ''}NULL)"
    if op == "~":
        _check_pattern(raw)
        params.append(raw)
        return f"regexp_matches(CAST({column} AS VARCHAR), ?, 'i')"
    params.append(_typed(kind, raw))
    if kind == "sha" and op in ("=", "!="):
        return f"({'NOT ' if op == '!=' else ''}starts_with({column}, ?))"
    return f"({column} {_OPS[op]} ?)"


def _check_pattern(raw: str) -> None:
    """The pattern compiled by the engine that runs it (RE2, not Python's re)."""
    import duckdb

    try:
        duckdb.connect().execute("SELECT regexp_matches('', ?, 'i')", [raw])
    except duckdb.Error as exc:
        reason = str(exc).split("\n")[0].split(": ", 1)[-1]
        raise FleetstateError(f"bad pattern {raw!r}: {reason}") from None


def _typed(kind: str, raw: str) -> Any:
    if kind == "age":
        return parse_duration(raw)
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise FleetstateError(f"not an integer: {raw!r}") from None
    if kind == "bool":
        lowered = raw.lower()
        if lowered not in ("true", "false", "y", "n", "yes", "no"):
            raise FleetstateError(f"not true/false: {raw!r}")
        return lowered in ("true", "y", "yes")
    if kind == "sha":
        return raw.lower()
    return raw
