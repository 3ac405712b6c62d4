"""Terminal charts in plain unicode blocks: no colour, no curses, safe in a pipe or a log.

Each function returns lines of text; the caller decides where they go.
"""

from __future__ import annotations

from collections.abc import Sequence

_EIGHTHS = " ▏▎▍▌▋▊▉█"
_LEVELS = " ▁▂▃▄▅▆▇█"


def bar(value: float, top: float, width: int) -> str:
    """A horizontal bar of `width` cells at most, in eighths of a cell."""
    if top <= 0 or value <= 0:
        return ""
    eighths = round(min(value, top) / top * width * 8)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def hbars(labels: Sequence[str], values: Sequence[float], width: int = 40,
          top: float | None = None, notes: Sequence[str] | None = None) -> list[str]:  # fmt: skip
    """One line per label: `label  bar  note` (note defaults to the value)."""
    peak = top if top is not None else max(values, default=0)
    pad = max((len(x) for x in labels), default=0)
    lines = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        note = notes[i] if notes is not None else f"{value:g}"
        lines.append(f"{label:<{pad}}  {bar(value, peak, width):<{width}}  {note}")
    return lines


def downsample(values: Sequence[float], width: int) -> list[float]:
    """At most `width` points: each the last value of its bucket."""
    if len(values) <= width:
        return list(values)
    step = len(values) / width
    return [values[min(len(values) - 1, int((i + 1) * step) - 1)] for i in range(width)]


def columns(values: Sequence[float], top: float, height: int = 8) -> list[str]:
    """A column chart `height` rows tall, one column per value, rows top to bottom."""
    if top <= 0:
        top = 1
    rows = []
    for level in range(height, 0, -1):
        row = []
        for v in values:
            eighths = round(min(max(v, 0), top) / top * height * 8)
            filled = eighths - (level - 1) * 8
            row.append("█" if filled >= 8 else _LEVELS[max(filled, 0)])
        rows.append("".join(row).rstrip())
    return rows


def curve(values: Sequence[float], top: float, first_label: str, last_label: str,
          width: int = 72, height: int = 8) -> list[str]:  # fmt: skip
    """A cumulative curve as columns, with the y scale on the left and time labels below."""
    points = downsample(values, width)
    body = columns(points, top, height)
    scale = len(f"{top:g}")
    lines = []
    for i, row in enumerate(body):
        label = f"{top:g}" if i == 0 else ("0" if i == height - 1 else "")
        lines.append(f"{label:>{scale}} │{row}")
    axis = "─" * max(len(points), 1)
    lines.append(f"{'':>{scale}} └{axis}")
    gap = max(len(points) - len(first_label) - len(last_label), 1)
    lines.append(f"{'':>{scale}}  {first_label}{' ' * gap}{last_label}")
    return lines
