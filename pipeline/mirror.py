"""The local append-only copy of every host's history, its observations, and cursors.

Appends are fsynced before the cursor that covers them is saved (temp file,
fsync, rename). A cursor records the mirror's file sizes at commit time, so
bytes appended by a run that died before committing are cut off the next time
the cursor is read, and the re-pull appends them exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipeline import locks
from pipeline.targets import validate_host

HISTORY = "history.jsonl"
OBSERVATIONS = "observations.jsonl"
CURSOR = ".cursor.json"


@dataclass(frozen=True)
class Cursor:
    """How far a host's remote history has been pulled into the mirror."""

    inode: int = 0  # remote history file (or its rotated .1) last read from
    offset: int = 0  # bytes of that file already in the mirror
    window: bytes = b""  # the last min(WINDOW, offset) bytes before offset (remote.WINDOW)
    history_size: int = 0  # mirror history.jsonl size when committed
    observations_size: int = 0  # mirror observations.jsonl size when committed
    # the last rotated file pulled to its end (a restart does not pull it again)
    done_inode: int = 0
    done_offset: int = 0
    done_window: bytes = b""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["window"] = self.window.hex()
        data["done_window"] = self.done_window.hex()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cursor:
        return cls(
            inode=int(data["inode"]),
            offset=int(data["offset"]),
            window=bytes.fromhex(data["window"]),
            history_size=int(data["history_size"]),
            observations_size=int(data["observations_size"]),
            done_inode=int(data.get("done_inode", 0)),  # absent in cursors saved before
            done_offset=int(data.get("done_offset", 0)),
            done_window=bytes.fromhex(data.get("done_window", "")),
        )

    @property
    def done(self) -> tuple[int, int, bytes]:
        return (self.done_inode, self.done_offset, self.done_window)


class Mirror:
    """`root/<host>/{history.jsonl, observations.jsonl, .cursor.json}`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def host_dir(self, host: str) -> Path:
        path = self.root / validate_host(host)
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            _fsync_dir(path.parent)
            # A cursor from the start: bytes of a first collection that dies before its
            # commit are then cut off, and a directory with data but no cursor is one whose
            # cursor was removed by hand (read_cursor keeps what it holds).
            self.save_cursor(host, Cursor())
        return path

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on the mirror: one collector at a time (another waits
        FLEETSTATE_LOCK_WAIT_S for it, as for the warehouse)."""
        self.root.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + locks.wait_s()
        busy = f"another collector is using the mirror {self.root}; try again when it has finished"
        with locks.holding(self.root / ".lock", deadline, busy):
            yield

    def read_cursor(self, host: str) -> Cursor:
        """The committed cursor; rolls back appends that were never committed."""
        d = self.host_dir(host)
        try:
            cursor = Cursor.from_json(json.loads((d / CURSOR).read_text()))
        except FileNotFoundError:
            # removed by hand (or a mirror laid out by hand): the mirror keeps every byte
            # it holds, and the host is read afresh (its runs are not stored twice)
            cursor = Cursor(
                history_size=_size(d / HISTORY), observations_size=_size(d / OBSERVATIONS)
            )
            self.save_cursor(host, cursor)  # committed now: a pull that dies is cut from here
        if _size(d / HISTORY) < cursor.history_size:
            # The mirror lost bytes the cursor covers (deleted by hand): pull again.
            cursor = Cursor(observations_size=cursor.observations_size)
        cursor = replace(
            cursor, observations_size=min(_size(d / OBSERVATIONS), cursor.observations_size)
        )
        self.truncate_uncommitted(host, cursor)
        return cursor

    def truncate_uncommitted(self, host: str, cursor: Cursor) -> None:
        """Cut appends made after `cursor` was committed (a run that died or failed)."""
        d = self.host_dir(host)
        for name, size in (
            (HISTORY, cursor.history_size),
            (OBSERVATIONS, cursor.observations_size),
        ):
            if _size(d / name) > size:
                _truncate(d / name, size)

    def append_history(self, host: str, data: bytes) -> None:
        if data and not data.endswith(b"\n"):
            raise ValueError("history appends must be whole lines")
        if data:
            _append(self.host_dir(host) / HISTORY, data)

    def append_observation(self, host: str, obs: dict[str, Any]) -> None:
        line = json.dumps(obs, ensure_ascii=False, separators=(",", ":")) + "\n"
        _append(self.host_dir(host) / OBSERVATIONS, line.encode("utf-8"))

    def save_cursor(self, host: str, cursor: Cursor) -> Cursor:
        """Commit `cursor` together with the current (already fsynced) mirror sizes."""
        d = self.host_dir(host)
        committed = replace(
            cursor, history_size=_size(d / HISTORY), observations_size=_size(d / OBSERVATIONS)
        )
        tmp = d / (CURSOR + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(committed.to_json(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, d / CURSOR)
        _fsync_dir(d)
        return committed


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _append(path: Path, data: bytes) -> None:
    created = not path.exists()
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if created:
        _fsync_dir(path.parent)


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(size)
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
