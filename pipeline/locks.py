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
def holding(path: Path, deadline: float, busy: str, remove: bool = False) -> Iterator[None]:
    """Hold an exclusive flock on the file `path` (made when missing; opened without
    blocking, so a FIFO there cannot hang it), trying until `deadline`; Busy(`busy`)
    when another process still holds it then.

    With `remove`, the file is removed before the lock is let go, so none is left behind.
    Every holder of such a file must pass `remove`: each checks, once it holds the lock,
    that `path` still names the file it locked, and starts again on the new one if not
    (a waiter may have opened the file the last holder then removed)."""
    while True:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        try:
            if not flock_until(fd, exclusive=True, deadline=deadline):
                raise Busy(busy)
            if remove and not _names(path, fd):
                continue  # the finally closes it; open what the path names now
            try:
                yield
            finally:
                if remove:
                    path.unlink(missing_ok=True)
            return
        finally:
            os.close(fd)  # releases the lock


def _names(path: Path, fd: int) -> bool:
    """Whether `path` is (still) the file open as `fd`."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


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
