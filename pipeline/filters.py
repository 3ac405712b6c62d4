"""The status filter language: `applied=N role~talos pp_last>20h sort:pp_last:desc`.

Each space-separated term is `column OP value` (OP one of = != ~ > < >= <=) and all
must hold; `a|b` means either; an empty value means missing; on age columns a value
is a duration (`20h`, `2d`). Terms are evaluated on typed values, not on rendered text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import polars as pl

from pipeline.errors import FleetstateError
from pipeline.report import parse_duration

_TERM = re.compile(r"^([a-z_]+)(!=|>=|<=|=|~|>|<)(.*)$")
_SORT = re.compile(r"^sort:([a-z_]+)(?::(asc|desc))?$")

# filter name -> (frame column, kind); age columns hold seconds since the event
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


@dataclass
class Query:
    predicate: pl.Expr | None
    sort: list[tuple[str, bool]]  # (frame column, descending)


def parse(text: str) -> Query:
    predicate: pl.Expr | None = None
    sort: list[tuple[str, bool]] = []
    for term in text.split():
        m = _SORT.match(term)
        if m:
            sort.append((_column(m.group(1))[0], m.group(2) == "desc"))
            continue
        m = _TERM.match(term)
        if not m:
            raise FleetstateError(
                f"cannot read filter term {term!r}: expected column OP value "
                "(OP one of = != ~ > < >= <=) or sort:column[:asc|desc]"
            )
        expr = _term(*m.groups())
        predicate = expr if predicate is None else predicate & expr
    return Query(predicate, sort)


def apply(frame: pl.DataFrame, query: Query) -> pl.DataFrame:
    if query.predicate is not None:
        frame = frame.filter(query.predicate)
    if query.sort:
        frame = frame.sort(
            [c for c, _ in query.sort], descending=[d for _, d in query.sort], nulls_last=True
        )
    return frame


def _column(name: str) -> tuple[str, str]:
    if name not in COLUMNS:
        raise FleetstateError(f"unknown filter column {name!r}; known: {', '.join(COLUMNS)}")
    return COLUMNS[name]


def _term(name: str, op: str, raw: str) -> pl.Expr:
    column, kind = _column(name)
    alternatives = [_alternative(column, kind, op, v) for v in raw.split("|")]
    expr = alternatives[0]
    for alt in alternatives[1:]:
        expr = expr & alt if op == "!=" else expr | alt
    return expr.fill_null(False)


def _alternative(column: str, kind: str, op: str, raw: str) -> pl.Expr:
    col = pl.col(column)
    if raw == "":
        if op not in ("=", "!="):
            raise FleetstateError(f"an empty value (missing) only goes with = or != ({column})")
        return col.is_null() if op == "=" else col.is_not_null()
    if op == "~":
        try:
            re.compile(raw)
        except re.error as exc:
            raise FleetstateError(f"bad pattern {raw!r}: {exc}") from exc
        return col.cast(pl.Utf8).str.contains(f"(?i){raw}")
    value = _typed(kind, raw)
    if kind == "sha" and op in ("=", "!="):
        match = col.str.starts_with(str(value))
        return match if op == "=" else ~match
    ops = {
        "=": col == value, "!=": col != value, ">": col > value,
        "<": col < value, ">=": col >= value, "<=": col <= value,
    }  # fmt: skip
    result: pl.Expr = ops[op]
    return result


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
