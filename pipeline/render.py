"""Rows -> what the user sees: a table on a terminal (colour only there), json or csv.

stdout carries only data; anything else goes to stderr. Anything with `columns` and
`iter_rows(named=True)` renders: a polars DataFrame, or the plain `Rows` that `status`
uses so that it starts without importing polars.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
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


def percent(share: float) -> str:
    """A share of 0 to 100 to one decimal, with as many more digits as it takes not to read
    as 100 or 0 when it is not (2,000 converged of 2,001 is 99.95, not 100.0)."""
    for digits in range(1, 18):
        text = f"{share:.{digits}f}"
        if (float(text) < 100 or share >= 100) and (float(text) > 0 or share <= 0):
            return text
    return repr(share)


def _jsonable(value: Any) -> Any:
    """A value json.dumps writes as strict JSON: times as ISO 8601, NaN and infinities
    (which JSON has no numbers for) as null, inside lists and structs too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, timedelta):  # an INTERVAL: ISO 8601, as "P3DT4H5M6S"
        return _iso_duration(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bytes):
        return blob_text(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


# C0 controls and DEL as \xNN (a blob's NUL would end a csv reader's line, a CR split it)
_BLOB_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def blob_text(value: bytes) -> str:
    """A BLOB (a reject's raw line) as text: UTF-8 kept, bytes that are not UTF-8, control
    characters and the backslash as \\xNN, as DuckDB shows a BLOB (so the text tells
    every byte)."""
    escaped = value.replace(b"\\", b"\\x5c")  # a backslash too: `\x09` is not a TAB
    return escaped.decode("utf-8", errors="backslashreplace").translate(_BLOB_CONTROL)


def _iso_duration(span: timedelta) -> str:
    sign, span = ("-", -span) if span < timedelta(0) else ("", span)
    hours, rest = divmod(span.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    secs = f"{seconds}.{span.microseconds:06d}".rstrip("0").rstrip(".")
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M")) if n)
    time += f"{secs}S" if secs != "0" or not (time or span.days) else ""
    return f"{sign}P{f'{span.days}D' if span.days else ''}{'T' + time if time else ''}"


def _unique(names: list[str]) -> list[str]:
    """Column names as distinct JSON keys: a second `role` (a join) becomes `role_2`."""
    seen: set[str] = set()
    out = []
    for name in names:
        key, n = name, 1
        while key in seen:
            n += 1
            key = f"{name}_{n}"
        seen.add(key)
        out.append(key)
    return out


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
    if isinstance(value, dict):  # a struct or map: its JSON text, not Python's repr
        return json.dumps(_jsonable(value), default=str, allow_nan=False)
    return _jsonable(value)


def to_json(frame: Frame) -> str:
    keys = _unique(list(frame.columns))
    rows = [
        {k: _jsonable(v) for k, v in zip(keys, row, strict=True)}
        for row in frame.iter_rows(named=False)
    ]
    return json.dumps(rows, indent=2, default=str, allow_nan=False)


def to_csv(frame: Frame) -> str:
    """RFC 4180 fields, LF line ends: a field holding a comma, a quote, CR or LF is quoted
    (Python's writer with LF line ends leaves a bare CR unquoted); a NUL, which no csv
    reader takes, as \\x00."""
    out = io.StringIO()
    for fields in (
        [str(n) for n in frame.columns],
        *([str(_csv_value(v)) for v in row] for row in frame.iter_rows(named=False)),
    ):
        line = ",".join(_csv_field(f) for f in fields)
        out.write((line or '""') + "\n")  # one empty field: "", not a blank line readers skip
    return out.getvalue()


def _csv_field(text: str) -> str:
    text = text.replace("\0", "\\x00")
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


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
    """Columns padded to their widest cell, two spaces apart, header in capitals.

    Written directly rather than with rich's Table, which took 0.3 s for the 1,000 rows
    of a fleet's `status` (the command operators run most). Colour (the `styles`, as
    rich style words) only on a terminal, and not with NO_COLOR or TERM=dumb. Control
    characters in values are shown escaped, so data from hosts cannot drive the
    terminal."""
    color = (
        sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    )
    names = list(frame.columns)
    header = [printable(str(n).upper()) for n in names]  # names can come from data (PIVOT)
    lines: list[list[str]] = []
    looks: list[list[str | None]] = []
    for row in frame.iter_rows(named=False):  # one pass: a polars frame converts each time
        lines.append([_cell(v) for v in row])
        pairs = zip(names, row, strict=True)
        looks.append([styles[n](v) if n in styles else None for n, v in pairs])
    widths = [_width(h) for h in header]
    for cells in lines:
        widths = [max(w, _width(c)) for w, c in zip(widths, cells, strict=True)]
    out = [_paint(title, "bold", color)] if title else []
    out.append(_join(header, widths, ["bold"] * len(names), color))
    out += [_join(cells, widths, look, color) for cells, look in zip(lines, looks, strict=True)]
    sys.stdout.write("\n".join(out) + "\n")
    if not lines:
        sys.stderr.write("(no rows)\n")


def _join(cells: list[str], widths: list[int], looks: list[str | None], color: bool) -> str:
    """One line: every cell but the last padded to its column's width."""
    parts = []
    for i, (cell, width, look) in enumerate(zip(cells, widths, looks, strict=True)):
        pad = "" if i == len(cells) - 1 else " " * (width - _width(cell))
        parts.append(_paint(cell, look, color) + pad)
    return "  ".join(parts).rstrip()


# rich style words -> ANSI SGR codes (the words the views use)
_SGR = {
    "bold": "1", "dim": "2", "italic": "3", "underline": "4", "red": "31", "green": "32",
    "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36", "white": "37",
}  # fmt: skip


def _paint(text: str, look: str | None, color: bool) -> str:
    if not color or not look or not text:
        return text
    codes = ";".join(_SGR[w] for w in look.split() if w in _SGR)
    return f"\x1b[{codes}m{text}\x1b[0m" if codes else text


# C0 and C1 control characters and DEL, shown as escapes: \n, \t, \x1b, ...
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r",
}  # fmt: skip


def printable(text: str) -> str:
    """`text` with every character Python does not call printable shown escaped (\\x1b,
    \\n, \\u202e, ...): controls, and the format and separator characters that would
    reorder or break a line (bidi overrides, U+2028). For anything from hosts, git or
    APIs written to a terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    if code in _CONTROL:
        return _CONTROL[code]
    return (
        f"\\x{code:02x}"
        if code < 0x100
        else f"\\u{code:04x}"
        if code < 0x10000
        else f"\\U{code:08x}"
    )


def _cell(value: Any) -> str:
    if isinstance(value, timedelta):  # for people: 1:30:00, 3 days, 4:05:06, -0:00:05
        return str(value) if value >= timedelta(0) else f"-{-value}"
    return printable("" if value is None else str(_jsonable(value)))


def _width(text: str) -> int:
    """Terminal columns: wide (East Asian) characters take two, combining ones none."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )
