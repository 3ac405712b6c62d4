"""Durations as operators type them: 45s, 20m, 12h, 30d, 2w, 2d12h."""

from __future__ import annotations

import re

from pipeline.errors import FleetstateError

_PART = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_S = 100 * 365 * 86400  # beyond: a typo, and past what SQL intervals hold


def parse_duration(text: str) -> int:
    """'30d', '12h', '1w', '2d12h' -> seconds."""
    parts = _PART.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.lower()):
        raise FleetstateError(f"not a duration: {text!r} (examples: 45s, 20m, 12h, 30d, 2w)")
    seconds = sum(int(n) * _UNIT_S[u] for n, u in parts)
    if seconds > MAX_S:
        raise FleetstateError(f"duration too long: {text!r} (at most 100 years)")
    return seconds
