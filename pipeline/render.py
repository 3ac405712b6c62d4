"""Rows -> what the user sees: a table on a terminal (colour only there), json or csv.

stdout carries only data; anything else goes to stderr. Anything with `columns` and
`iter_rows(named=True)` renders: a polars DataFrame, or the plain `Rows` that `status`
uses so that it starts without importing polars.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeAlias


def age(seconds: int | float | None) -> str:
    """45s, 12m 05s, 3h 05m, 2d 04h."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 0:
        return "future"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    return value


@dataclass
class Rows:
    """A query's answer as plain Python: column names and tuples."""

    columns: list[str]
    rows: list[tuple[Any, ...]]

    def iter_rows(self, *, named: bool = False) -> Iterator[Any]:
        for row in self.rows:
            yield dict(zip(self.columns, row, strict=True)) if named else row

    @property
    def height(self) -> int:
        return len(self.rows)


if TYPE_CHECKING:
    import polars as pl

    Frame: TypeAlias = Rows | pl.DataFrame


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return " ".join(str(_csv_value(v)) for v in value)
    return _jsonable(value)


def to_json(frame: Frame) -> str:
    rows = [{k: _jsonable(v) for k, v in row.items()} for row in frame.iter_rows(named=True)]
    return json.dumps(rows, indent=2, default=str)


def to_csv(frame: Frame) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(frame.columns)
    for row in frame.iter_rows(named=False):
        writer.writerow([_csv_value(v) for v in row])
    return out.getvalue()


def emit(
    frame: Frame, fmt: str, title: str | None = None, styles: dict[str, Any] | None = None
) -> None:
    """Write `frame` to stdout in `fmt`; `styles` maps column -> function(value) -> rich style."""
    if fmt == "json":
        sys.stdout.write(to_json(frame) + "\n")
    elif fmt == "csv":
        sys.stdout.write(to_csv(frame))
    else:
        print_table(frame, title, styles or {})


def print_table(frame: Frame, title: str | None, styles: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(width=None if sys.stdout.isatty() else 10_000)
    table = Table(title=title, header_style="bold", box=None, pad_edge=False)
    for name in frame.columns:
        table.add_column(name.upper(), no_wrap=True, overflow="ignore")
    for row in frame.iter_rows(named=True):
        cells = []
        for name, value in row.items():
            text = "" if value is None else str(_jsonable(value))
            style = styles[name](value) if name in styles else None
            cells.append(Text(text, style=style or ""))
        table.add_row(*cells)
    console.print(table, soft_wrap=True)
    if table.row_count == 0:
        Console(stderr=True).print("(no rows)")
