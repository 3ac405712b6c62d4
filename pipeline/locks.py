"""Waiting for a lock another fleetstate process holds: FLEETSTATE_LOCK_WAIT_S, then give up.

The warehouse's guard and the demo's mirror lock are flock(2) locks on a small file; they
wait the same time as an open of a DuckDB file locked by another process."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import FleetstateError


class Busy(FleetstateError):
    """Another fleetstate process held a lock longer than FLEETSTATE_LOCK_WAIT_S."""


def wait_s() -> float:
    """FLEETSTATE_LOCK_WAIT_S in seconds (5 when unset or empty)."""
    raw = os.environ.get("FLEETSTATE_LOCK_WAIT_S", "").strip() or "5"  # empty: unset
    try:
        wait = float(raw)
    except ValueError:
        raise FleetstateError(f"FLEETSTATE_LOCK_WAIT_S must be seconds, not {raw!r}") from None
    if not 0 <= wait < float("inf"):
        raise FleetstateError(f"FLEETSTATE_LOCK_WAIT_S must be seconds, not {raw!r}")
    return wait


def left(deadline: float) -> float:
    """The seconds of a wait left until `deadline` (none: one more try)."""
    return max(0.0, deadline - time.monotonic())


@contextmanager
def holding(path: Path, deadline: float, busy: str) -> Iterator[None]:
    """Hold an exclusive flock on the file `path` (made when missing; opened without
    blocking, so a FIFO there cannot hang it), trying until `deadline`; Busy(`busy`)
    when another process still holds it then."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        if not flock_until(fd, exclusive=True, deadline=deadline):
            raise Busy(busy)
        yield
    finally:
        os.close(fd)  # releases the lock


def flock_until(fd: int, exclusive: bool, deadline: float) -> bool:
    """Lock `fd` (flock, shared or exclusive), trying until `deadline` (time.monotonic());
    False if another process still holds it then. Closing `fd` releases it."""
    mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    while True:
        try:
            fcntl.flock(fd, mode)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
