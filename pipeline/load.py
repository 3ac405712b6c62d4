"""Mirror -> warehouse: incremental, idempotent, atomic, lossless.

Each input file has a byte cursor in `load_cursors`. New bytes up to the last
newline are split into lines with numpy, handed to DuckDB as Arrow (no Python
object per line) and parsed there: records.fast_sql takes the lines the wrapper
writes, records.slow_sql judges the rest. The rows of a batch and the advance of
its cursors commit in one transaction, so a crash leaves the warehouse as it was
before or after a batch, never between. Groups of hosts load side by side, each on
its own connection (load_mirror). docs/performance.md has the numbers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import duckdb

from pipeline import records, warehouse
from pipeline.errors import FleetstateError

if TYPE_CHECKING:
    import pyarrow as pa

HISTORY = "history.jsonl"
OBSERVATIONS = "observations.jsonl"
STATE_FILE = "last_run_metadata.json"
# bytes of input per transaction (None: FLEETSTATE_BATCH_BYTES, else default_plan decides
# when a load starts); tests lower it to make many small transactions
BATCH_BYTES: int | None = None
LARGE_BATCH, SMALL_BATCH = 128 << 20, 64 << 20
PEAK_PER_BATCH_BYTE = 4  # a group holding a 128 MiB batch peaks at about 0.5 GB


def default_plan(
    cpus: int | None, available: int | None, workers: int | None = None
) -> tuple[int, int]:
    """(groups of hosts, batch bytes) for a load: two groups on two or more cores, each with
    128 MiB batches, unless memory is short. The groups together may use at most half of
    the memory available when the load starts; when two groups of 128 MiB do not fit,
    64 MiB batches do before one group does (measured on 1,000 hosts: 12% slower at
    0.75 GB, where one group is 40% slower at 0.7 GB). `workers` fixes the groups."""
    by_cpu = workers or min(2, cpus or 1)
    if available is None:
        return by_cpu, LARGE_BATCH
    budget = available // 2
    choices = [(by_cpu, LARGE_BATCH), (by_cpu, SMALL_BATCH)]
    if workers is None:
        choices += [(1, LARGE_BATCH)]
    for n, batch in choices:
        if n * batch * PEAK_PER_BATCH_BYTE <= budget:
            return n, batch
    return (workers or 1), SMALL_BATCH


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where there is none."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# groups of hosts loaded at once, each holding one batch in memory (see load_mirror);
# None: FLEETSTATE_LOAD_WORKERS, else default_plan decides when a load starts
WORKERS: int | None = None
_SIZE_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _env_count(name: str, sizes: bool = False) -> int | None:
    """A positive whole number from the environment (`sizes`: with K, M or G for KiB, MiB,
    GiB, as in 64M); None when unset; a clear error when it is not one."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    digits, suffix = (raw[:-1], raw[-1].lower()) if sizes and raw[-1:].isalpha() else (raw, "")
    if not (digits.isascii() and digits.isdigit()) or suffix not in _SIZE_SUFFIX or not int(digits):
        what = "a number of bytes (as 67108864 or 64M)" if sizes else "a whole number above 0"
        raise LoadError(f"{name} must be {what}, not {raw!r}")
    return int(digits) * _SIZE_SUFFIX[suffix]


# a file's fingerprint covers its first bytes and the bytes before the cursor, so a file
# replaced (not appended to) is noticed even when its start is unchanged
HEAD_BYTES = 4096
FINGERPRINT = "v2:"  # cursors saved before carry the sha256 of the first bytes only


# Memory follows rows and line width, not only bytes: a piece of a history holds at most
# MAX_PIECE_LINES lines (128 MiB of empty lines would be 134 M rows), a batch at most
# MAX_BATCH_LINES, and when its lines are WIDE_LINE long on average (DuckDB works on
# vectors of 2,048 rows, each expression a copy of them) at most WIDE_BATCH bytes.
MAX_PIECE_LINES = 1 << 16
MAX_BATCH_LINES = 1 << 18
WIDE_LINE = 8 << 10
WIDE_BATCH = 4 << 20
# of a line longer than a record may be (and than a read piece), the first bytes are kept
# in `rejects`: the whole line stays in the mirror at its offset
KEPT_OF_LONG_LINE = 2 * records.MAX_LINE_BYTES
MAX_OBSERVATION_BYTES = 4 * records.MAX_LINE_BYTES  # with a state file escaped inside


@dataclass(frozen=True)
class Piece:
    """Bytes of a file read at `offset`, ending at a newline (`ends`: where each line ends,
    for a history). A line too long to hold comes as its first bytes only, with `ends`
    None and its whole `length`."""

    offset: int
    data: memoryview
    ends: Any = None  # numpy array of line ends within `data`
    length: int = -1  # bytes of the file it covers, when not len(data)

    @property
    def size(self) -> int:
        return len(self.data) if self.length < 0 else self.length


class LoadError(FleetstateError):
    """The mirror cannot be read (missing directory, unreadable file)."""


class _Stopped(Exception):
    """A group of hosts stopped early because another group failed."""


@dataclass
class LoadStats:
    files: int = 0
    bytes_read: int = 0
    lines: int = 0
    runs_added: int = 0
    rejects_added: int = 0
    observations_added: int = 0
    pending_bytes: int = 0  # an unterminated final line, left for the next load
    aliases_skipped: int = 0  # files reached again through another host's directory (links)
    unreadable: list[str] = field(default_factory=list)  # "path: why" of files not read

    def merge(self, other: LoadStats) -> None:
        for name in self.__dataclass_fields__:  # numbers add up, lists join
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Batch:
    """Lines and rows waiting to be committed together."""

    files: list[tuple[int, str, str, str]] = field(default_factory=list)
    chunks: list[pa.Table] = field(default_factory=list)
    raw_rejects: dict[tuple[int, int], bytes] = field(default_factory=dict)
    observations: list[dict[str, Any]] = field(default_factory=list)
    obs_rejects: list[tuple[str, str, int, str, bytes]] = field(default_factory=list)
    cursors: list[tuple[str, str, int, str]] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)  # history -> its first offset here
    # history -> the newest ts (epoch us) of its lines loaded so far (_raise_recency): this
    # load's, shared by a group's batches; and as its cursor saved it at the load's start
    newest: dict[str, int] = field(default_factory=dict)
    stored_newest: dict[str, int] = field(default_factory=dict)
    nbytes: int = 0
    wide: bool = False  # holds a piece of WIDE_LINE lines: closes at WIDE_BATCH bytes
    stats: LoadStats = field(default_factory=LoadStats)

    def full(self, batch_bytes: int) -> bool:
        limit = min(batch_bytes, WIDE_BATCH) if self.wide else batch_bytes
        return self.nbytes >= limit or self.stats.lines >= MAX_BATCH_LINES

    def add_file(self, host: str, source: str, path: str) -> int:
        self.files.append((len(self.files), host, source, path))
        return len(self.files) - 1


ProgressFn = Callable[[LoadStats], None]


# what a host's directory holds: the loader's inputs, or the collector's cursor (a first
# collection cut short leaves only that; mirror.CURSOR, named here because the loader does
# not import the collector's side: tests/test_layers.py)
HOST_FILES = (HISTORY, OBSERVATIONS, STATE_FILE, ".cursor.json")


def check_mirror(mirror_dir: Path) -> None:
    """Refuse, before a warehouse is made or opened, a `--from` that is surely not a
    mirror: a missing directory, one host's own directory (it holds history.jsonl itself),
    or the directory above a mirror (none of its subdirectories is a host's, and one of
    them holds hosts: data/ for data/mirror). A load of those would find nothing, exit 0
    and leave an empty warehouse behind. Anything it cannot look into is left to the
    load, which names what it cannot read."""
    _check_dir(mirror_dir)
    own = [n for n in HOST_FILES[:3] if _holds(mirror_dir, n)]
    if own:
        raise LoadError(
            f"{mirror_dir} holds {own[0]} itself: it is one host's directory, not a mirror; "
            f"give the directory above it (a mirror holds <host>/{HISTORY})"
        )
    subdirs = _subdirs(mirror_dir)
    if subdirs is None or any(_holds(d, n) is not False for d in subdirs for n in HOST_FILES):
        return  # a host's directory (or one it cannot tell)
    for d in subdirs:
        for host in _subdirs(d) or []:
            if any(_holds(host, n) for n in HOST_FILES):
                raise LoadError(
                    f"no host's files in {mirror_dir}, but {host} is a host's directory: "
                    f"give the mirror that holds it (--from {d})"
                )


def _subdirs(directory: Path) -> list[Path] | None:
    """The directories in `directory` a load would take for hosts; None if unreadable."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return None
    found = []
    for d in entries:
        if d.name.startswith((".", "_")):
            continue
        try:
            if d.is_dir():
                found.append(d)
        except OSError:  # a link into a directory it may not enter: cannot tell
            return None
    return found


def _holds(directory: Path, name: str) -> bool | None:
    """Whether `directory/name` exists; None where that cannot be told (no permission)."""
    try:
        (directory / name).lstat()
    except FileNotFoundError:
        return False
    except OSError:
        return None
    return True


def _check_dir(mirror_dir: Path) -> None:
    if not _is_utf8_name(str(mirror_dir.resolve())):
        shown = os.fsencode(mirror_dir).decode("utf-8", "backslashreplace")
        raise LoadError(f"mirror directory {shown}: its path is not UTF-8; rename it")
    if not mirror_dir.is_dir():
        what = "is not a directory" if mirror_dir.exists() else "does not exist"
        raise LoadError(f"mirror directory {mirror_dir} {what}")


def discover(mirror_dir: Path, hosts: list[str] | None = None) -> list[tuple[str, Path]]:
    """(host, host directory) for every host directory in the mirror, sorted."""
    _check_dir(mirror_dir)
    wanted = set(hosts) if hosts is not None else None
    found = []
    for d in sorted(mirror_dir.iterdir()):
        if d.name.startswith((".", "_")) or (wanted is not None and d.name not in wanted):
            continue
        try:
            is_dir = d.is_dir()
        except OSError:  # a link into a directory we may not enter: _claim_files names it
            is_dir = True
        if is_dir:
            found.append((d.name, d))
    return found


def load_mirror(
    con: duckdb.DuckDBPyConnection,
    mirror_dir: Path,
    hosts: list[str] | None = None,
    progress: ProgressFn | None = None,
) -> LoadStats:
    """Load every new byte of the mirror at `mirror_dir` into the warehouse behind `con`.

    Hosts are split into WORKERS contiguous groups of about equal size, each loaded in
    its own thread on its own connection (`con.cursor()`), so one group's INSERT (which
    DuckDB runs on one thread at this batch size) overlaps another's parse. A host's
    files stay in one group, so repeats never cross groups, and every transaction still
    commits its rows with their cursors."""
    found = discover(mirror_dir, hosts)
    files, aliases, problems = _claim_files(found)
    cursors, newest = _read_cursors(con)
    fixed = WORKERS or _env_count("FLEETSTATE_LOAD_WORKERS")
    workers, batch_bytes = default_plan(os.cpu_count(), _available_memory(), fixed)
    batch_bytes = BATCH_BYTES or _env_count("FLEETSTATE_BATCH_BYTES", sizes=True) or batch_bytes
    groups = _split(files, workers)
    if len(groups) <= 1:
        stats = _load_hosts(con, files, cursors, progress, threading.Event(), batch_bytes, newest)
    else:
        stats = _load_groups(con, groups, cursors, progress, batch_bytes, newest)
    stats.aliases_skipped = aliases
    stats.unreadable = problems + stats.unreadable
    return stats


MIRROR_CURSOR = ".cursor.json"  # the collector's (pipeline/mirror.py), in each host directory


def mirror_files(mirror_dir: Path) -> set[str]:
    """The files a load of `mirror_dir` reads, as their cursors name them (resolved)."""
    found, _, _ = _claim_files(discover(mirror_dir))
    return {key for _host, files in found for _path, key, _limit in files}


def rows_lost(
    old: duckdb.DuckDBPyConnection, new: duckdb.DuckDBPyConnection
) -> tuple[str, str, int, int] | None:
    """What a warehouse rebuilt from the mirror (`new`) would lose of `old`: (table,
    source_path, rows before, rows after) of the first file with fewer rows in `new`.
    Runs of any file; observations and rejects of the append-only files (a state file's
    rejects come and go with its content)."""
    appended = f"source_path LIKE '%/{HISTORY}' OR source_path LIKE '%/{OBSERVATIONS}'"
    for table, where in (("runs", "true"), ("observations", "true"), ("rejects", appended)):
        count = (  # names from this list, not input
            f"SELECT source_path, count(*) FROM {table} WHERE {where} GROUP BY source_path"  # noqa: S608
        )
        after = dict(new.execute(count).fetchall())
        for path, before in sorted(old.execute(count).fetchall()):
            if after.get(path, 0) < before:
                return table, path, before, after.get(path, 0)
    return None


def committed_sizes(host_dir: Path) -> dict[str, int] | None:
    """{file name: size} of a collector's host directory when its cursor was last committed
    (`history_size`, `observations_size` of mirror.Cursor): the loader reads no further,
    since bytes past it belong to a collection that has not finished (or died, and will be
    cut). None when there is no readable cursor (a mirror the collector did not write):
    the files are whole. Read here, not through mirror.py: the loader stays off the SSH
    side (tests/test_layers.py); tests/test_load_consistency.py writes it with Mirror."""
    try:
        data = json.loads((host_dir / MIRROR_CURSOR).read_text())
        sizes = {HISTORY: int(data["history_size"]), OBSERVATIONS: int(data["observations_size"])}
    except (OSError, ValueError, TypeError, KeyError, OverflowError):
        return None
    return sizes if min(sizes.values()) >= 0 else None


# a host's input files: (host, [(path, cursor key = the resolved path, bytes to read at
# most: the collector's committed size, or None)])
HostFiles = tuple[str, list[tuple[Path, str, int | None]]]


def _claim_files(found: list[tuple[str, Path]]) -> tuple[list[HostFiles], int, list[str]]:
    """Each host's input files, every file under exactly one host; how many were left out;
    and "path: why" of the host directories and files that cannot be examined.

    A file reached through two host directories (a symbolic link to another host's
    directory or file) is loaded once: under the host whose path to it has no link, or
    else the first host by name. Loading it twice would store its runs under both names,
    and two groups of hosts would race for its cursor."""
    owners: dict[str, tuple[bool, str]] = {}
    listed: list[tuple[str, list[tuple[Path, str, bool, int | None]]]] = []
    problems: list[str] = []
    # Host names are case-insensitive: of directories naming one host in two cases, the
    # one in lower case (the collector's) or else the first is loaded, the others named.
    chosen: dict[str, str] = {}
    for host, _ in found:
        if host.lower() not in chosen or host == host.lower():
            chosen[host.lower()] = host
    for host, hdir in found:
        mine = []
        if chosen[host.lower()] != host:
            problems.append(
                f"{hdir}: the same host as {chosen[host.lower()]} (host names are "
                "case-insensitive); skipped: merge the two directories"
            )
            continue
        if not _is_utf8_name(host):  # the warehouse's names are text: renamed, it loads
            shown = os.fsencode(hdir).decode("utf-8", "backslashreplace")
            problems.append(f"{shown}: its name is not UTF-8; skipped")
            continue
        try:
            names = set(os.listdir(hdir))
        except OSError as exc:
            problems.append(f"{hdir}: {exc.strerror or exc}")
            names = set()
        committed = committed_sizes(hdir) if MIRROR_CURSOR in names else None
        for path in (hdir / HISTORY, hdir / OBSERVATIONS, hdir / STATE_FILE):
            if path.name not in names:
                continue
            try:
                if not path.is_file():  # a directory or FIFO where a file should be
                    problems.append(f"{path}: not a regular file")
                    continue
                key = str(path.resolve())
                linked = hdir.is_symlink() or path.is_symlink()
            except OSError as exc:
                problems.append(f"{path}: {exc.strerror or exc}")
                continue
            mine.append((path, key, linked, committed.get(path.name) if committed else None))
            best = owners.get(key)
            if best is None or (best[0] and not linked):
                owners[key] = (linked, host)
        listed.append((host, mine))
    files: list[HostFiles] = []
    skipped = 0
    for host, mine in listed:
        kept = [(path, key, limit) for path, key, _, limit in mine if owners[key][1] == host]
        skipped += len(mine) - len(kept)
        files.append((host, kept))
    return files, skipped, problems


def _is_utf8_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, read as surrogate escapes
        return False
    return True


def _load_groups(
    con: duckdb.DuckDBPyConnection,
    groups: list[list[HostFiles]],
    cursors: dict[str, tuple[int, str | None]],
    progress: ProgressFn | None,
    batch_bytes: int,
    stored_newest: dict[str, int],
) -> LoadStats:
    """Each group in its own thread and on its own connection; progress shows their sum."""
    from concurrent.futures import ThreadPoolExecutor, wait

    lock = threading.Lock()
    latest = [LoadStats() for _ in groups]
    stop = threading.Event()  # set when one group fails: the others stop after a batch

    def report(i: int) -> ProgressFn:
        def shown(stats: LoadStats) -> None:
            with lock:
                latest[i] = stats
                if progress:
                    progress(_sum(latest))

        return shown

    def run(i: int, group: list[HostFiles]) -> LoadStats:
        worker = warehouse.cursor(con)  # with the session's time zone: identities use it
        try:
            return _load_hosts(worker, group, cursors, report(i), stop, batch_bytes, stored_newest)
        except BaseException:
            stop.set()
            raise
        finally:
            worker.close()

    # the groups share the cores: DuckDB threads per query, restored afterwards
    row = con.execute("SELECT current_setting('threads')").fetchall()
    con.execute(f"SET threads = {max(1, (os.cpu_count() or 1) // len(groups))}")
    try:
        with ThreadPoolExecutor(len(groups), thread_name_prefix="load") as pool:
            futures = [pool.submit(run, i, g) for i, g in enumerate(groups)]
            try:
                wait(futures)
            except BaseException:  # interrupted: the groups stop after their current batch
                stop.set()
                raise
    finally:
        con.execute(f"SET threads = {int(row[0][0])}")
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None and not isinstance(error, _Stopped):
            raise error  # the failure itself, not the groups it stopped
    return _sum([f.result() for f in futures])


def _split(found: list[HostFiles], n: int) -> list[list[HostFiles]]:
    """At most n contiguous groups of hosts with about equal history bytes each."""
    if n <= 1 or len(found) <= 1:
        return [found]
    sizes = []
    for _, files in found:
        size = 0
        for path, _, _ in files:
            if path.name == HISTORY:
                try:
                    size = path.stat().st_size
                except OSError:
                    pass
        sizes.append(size)
    share = sum(sizes) / n
    groups: list[list[HostFiles]] = [[]]
    filled = 0
    for entry, size in zip(found, sizes, strict=True):
        if filled >= share * len(groups) and len(groups) < n:
            groups.append([])
        groups[-1].append(entry)
        filled += size
    return [g for g in groups if g]


def _sum(parts: list[LoadStats]) -> LoadStats:
    total = LoadStats()
    for part in parts:
        total.merge(part)
    return total


def _load_hosts(
    con: duckdb.DuckDBPyConnection,
    found: list[HostFiles],
    cursors: dict[str, tuple[int, str | None]],
    progress: ProgressFn | None,
    stop: threading.Event,
    batch_bytes: int = LARGE_BATCH,
    stored_newest: dict[str, int] | None = None,
) -> LoadStats:
    total = LoadStats()
    # bytes read and unfinished lines are counted per file, and a file can span batches
    read = LoadStats()
    newest: dict[str, int] = {}
    stored = stored_newest or {}
    batch = Batch(newest=newest, stored_newest=stored)
    for host, files in found:
        for path, key, limit in files:
            batch.stats.files += 1
            chunks = _readable_chunks(path, cursors.get(key), read, batch_bytes, limit)
            for piece, end, mark in chunks:
                _stage(batch, host, path.name, key, piece)
                batch.cursors.append((key, host, end, mark))
                if batch.full(batch_bytes):
                    if stop.is_set():
                        raise _Stopped
                    _commit(con, batch)
                    _add_committed(total, read, batch.stats, progress)
                    batch = Batch(newest=newest, stored_newest=stored)
    _commit(con, batch)
    _add_committed(total, read, batch.stats, progress)
    total.bytes_read, total.pending_bytes = read.bytes_read, read.pending_bytes
    total.unreadable = read.unreadable
    return total


def _readable_chunks(
    path: Path,
    cursor: tuple[int, str | None] | None,
    read: LoadStats,
    batch_bytes: int,
    limit: int | None = None,
) -> Iterator[tuple[Piece, int, str]]:
    """_new_chunks with each piece's end and fingerprint. A file that cannot be read (no
    permission, an I/O error) ends early and is named in `read.unreadable`: what was read
    of it loads, its cursor stays there, and the other files load as usual."""
    chunks = _new_chunks(path, cursor, read, batch_bytes, limit)
    while True:
        try:
            piece = next(chunks)
            end = piece.offset + piece.size
            mark = _fingerprint(path, end)
        except StopIteration:
            return
        except OSError as exc:
            read.unreadable.append(f"{path}: {exc.strerror or exc}")
            return
        yield piece, end, mark


def _add_committed(
    total: LoadStats, read: LoadStats, committed: LoadStats, progress: ProgressFn | None
) -> None:
    total.merge(committed)
    if progress:
        shown = LoadStats()
        shown.merge(total)
        shown.bytes_read, shown.pending_bytes = read.bytes_read, read.pending_bytes
        progress(shown)


def _read_cursors(
    con: duckdb.DuckDBPyConnection,
) -> tuple[dict[str, tuple[int, str | None]], dict[str, int]]:
    """Each file's cursor (offset, fingerprint), and each history's newest ts (epoch us)
    as its cursor saved it (_raise_recency)."""
    rows = con.execute(
        "SELECT source_path, byte_offset, head_sha, epoch_us(recency_ts) FROM load_cursors"
    ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}, {r[0]: r[3] for r in rows if r[3] is not None}


def _fingerprint(path: Path, end: int) -> str:
    """The sha256 of the file's first HEAD_BYTES and of the HEAD_BYTES before `end`."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        head = fh.read(min(end, HEAD_BYTES))
        digest.update(head)
        if end > len(head):
            fh.seek(max(len(head), end - HEAD_BYTES))
            digest.update(fh.read(end - fh.tell()))
    return FINGERPRINT + digest.hexdigest()


def _unchanged(path: Path, offset: int, saved: str | None) -> bool:
    """Whether the first `offset` bytes still look like those the cursor was saved after."""
    if saved is not None and saved.startswith(FINGERPRINT):
        return _fingerprint(path, offset) == saved
    with path.open("rb") as fh:  # a cursor saved before fingerprints covered the tail
        return hashlib.sha256(fh.read(min(offset, HEAD_BYTES))).hexdigest() == saved


def _new_chunks(
    path: Path,
    cursor: tuple[int, str | None] | None,
    stats: LoadStats,
    batch_bytes: int,
    limit: int | None = None,
) -> Iterator[Piece]:
    """Pieces after the cursor, each ending at a newline.

    Each byte is read once into the piece that holds it, and the piece is handed out as
    a view (no copy); the unterminated tail of a piece is read again as the start of the
    next. A line that does not end within a piece is followed in bounded reads, keeping
    at most a record's worth of it. The state file is a whole document (often
    pretty-printed): it is read whole whenever it changed (its first bytes only when it
    is longer than a record may be), and its cursor is its size.
    """
    size = path.stat().st_size
    if limit is not None:  # the collector's committed size: what lies past it may be cut
        size = min(size, limit)
    offset, saved = cursor if cursor else (0, None)
    if offset > size or (offset and not _unchanged(path, offset, saved)):
        offset = 0  # replaced or truncated: read again; run identity absorbs repeats
    if path.name == STATE_FILE:
        if offset != size or cursor is None:
            with path.open("rb") as fh:
                data = fh.read(min(size, KEPT_OF_LONG_LINE + 1))
            stats.bytes_read += size
            whole = len(data) <= records.MAX_LINE_BYTES
            yield Piece(0, memoryview(data), length=-1 if whole else size)
        return
    # a batch overshoots by a piece at most; read() allocates what it is asked for
    piece_bytes = max(1, min(batch_bytes // 4, size - offset))
    history = path.name == HISTORY
    with path.open("rb") as fh:
        fh.seek(offset)
        while offset < size:  # bytes appended since the stat wait for the next load
            data = fh.read(min(piece_bytes, size - offset))
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # no line ends in this piece
                length, head = _follow_line(fh, data, size - offset, piece_bytes)
                if length is None:  # unfinished: left for the next load, not held
                    stats.pending_bytes += size - offset
                    return
                if length > records.MAX_LINE_BYTES + 1:
                    stats.bytes_read += length
                    yield Piece(offset, memoryview(head), length=length)
                    offset += length
                    fh.seek(offset)
                    continue
                fh.seek(offset)  # a record-sized line longer than a (small) piece
                data = fh.read(length)
                cut = length
            stats.bytes_read += cut
            view = memoryview(data)[:cut]
            if history:
                yield from _split_lines(offset, view)
            else:
                yield Piece(offset, view)
            offset += cut
            if cut < len(data):
                fh.seek(offset)


def _follow_line(
    fh: BinaryIO, head: bytes, left: int, piece_bytes: int
) -> tuple[int | None, bytes]:
    """A line that does not end within `head` (read from where it starts): read on in
    pieces, keeping at most KEPT_OF_LONG_LINE + 1 bytes of it, to its newline. Its length
    with the newline (None when the bytes up to `left` hold none) and its first bytes."""
    kept = bytearray(head[: KEPT_OF_LONG_LINE + 1])
    length = len(head)
    while length < left:
        more = fh.read(min(max(piece_bytes, 1 << 20), left - length))
        if not more:
            break
        nl = more.find(b"\n")
        end = len(more) if nl < 0 else nl + 1
        if len(kept) <= KEPT_OF_LONG_LINE:
            kept += more[: min(end, KEPT_OF_LONG_LINE + 1 - len(kept))]
        length += end
        if nl >= 0:
            return length, bytes(kept)
    return None, b""


def _split_lines(offset: int, view: memoryview) -> Iterator[Piece]:
    """A history's piece as pieces of at most MAX_PIECE_LINES lines, and of at most
    WIDE_BATCH bytes when its lines are WIDE_LINE long on average; a line longer than a
    record may be as its first bytes only. `ends` are found once here (the newline scan
    staging needs anyway)."""
    import numpy as np

    ends = np.flatnonzero(np.frombuffer(view, dtype=np.uint8) == 10) + 1
    too_long = np.flatnonzero(np.diff(ends, prepend=0) > records.MAX_LINE_BYTES + 1)
    first = 0
    for k in [*too_long.tolist(), len(ends)]:
        if k > first:
            yield from _line_pieces(offset, view, ends, first, k)
        if k < len(ends):
            start, stop = (int(ends[k - 1]) if k else 0), int(ends[k])
            yield Piece(
                offset + start, view[start : start + KEPT_OF_LONG_LINE], length=stop - start
            )
        first = k + 1


def _line_pieces(
    offset: int, view: memoryview, ends: Any, first: int, last: int
) -> Iterator[Piece]:
    """Lines first..last-1 of `view` (ends[i] is where line i ends) as pieces."""
    import numpy as np

    start = int(ends[first - 1]) if first else 0
    wide = int(ends[last - 1]) - start > WIDE_LINE * (last - first)
    i = first
    while i < last:
        j = min(i + MAX_PIECE_LINES, last)
        if wide:  # at least one line, however long
            j = max(i + 1, min(j, int(np.searchsorted(ends, start + WIDE_BATCH, "right"))))
        stop = int(ends[j - 1])
        yield Piece(offset + start, view[start:stop], ends[i:j] - start)
        start, i = stop, j


def _stage(batch: Batch, host: str, name: str, key: str, piece: Piece) -> None:
    batch.nbytes += len(piece.data)
    start, data = piece.offset, piece.data
    if name == HISTORY:
        idx = batch.add_file(host, "history", key)
        batch.starts.setdefault(key, start)
        if piece.length >= 0:  # ends with its newline (_follow_line)
            batch.chunks.append(_too_long_table(batch, idx, piece, 1))
        else:
            batch.wide = batch.wide or len(data) > WIDE_LINE * len(piece.ends)
            batch.chunks.append(_lines_table(batch, idx, start, data, piece.ends))
    elif name == STATE_FILE:
        idx = batch.add_file(host, "state_file", key)
        if piece.length >= 0:  # a whole document: counted as it is
            batch.chunks.append(_too_long_table(batch, idx, piece, 0))
        else:
            batch.chunks.append(_text_table(batch, idx, [(start, bytes(data))]))
    elif piece.length >= 0:  # an observation line longer than a read piece
        batch.stats.lines += 1
        why = f"observation too long: {piece.size - 1} bytes (limit {MAX_OBSERVATION_BYTES})"
        batch.obs_rejects.append((host, key, start, why, bytes(data[:KEPT_OF_LONG_LINE])))
    else:
        _stage_observations(batch, host, key, start, bytes(data))


def _too_long_table(batch: Batch, idx: int, piece: Piece, newline: int) -> pa.Table:
    """A line (or state file) longer than a record may be, judged without holding it:
    its first bytes go to `rejects`; the whole of it stays in the mirror."""
    import pyarrow as pa

    size = piece.size - newline  # as the run parser counts a line: without its newline
    raw = bytes(piece.data[:KEPT_OF_LONG_LINE])
    batch.raw_rejects[(idx, piece.offset)] = raw[:size]  # the newline is not the line's
    batch.stats.lines += 1
    reason = f"line too long: {size} bytes (limit {records.MAX_LINE_BYTES})"
    return pa.table(
        {
            "file_idx": pa.array([idx], pa.int32()),
            "byte_offset": pa.array([piece.offset], pa.int64()),
            "line": pa.array([""], pa.large_string()),
            "pre_reason": pa.array([reason], pa.string()),
        }
    )


def _lines_table(batch: Batch, idx: int, start: int, data: memoryview, ends: Any) -> pa.Table:
    """Arrow table of the newline-terminated lines in `data`, without copying them."""
    import numpy as np
    import pyarrow as pa

    n = len(ends)
    batch.stats.lines += n
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[0] = 0
    offsets[1:] = ends
    lines = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    whole = data.obj  # the piece read; `data` is its newline-terminated start
    if (isinstance(whole, bytes) and whole.isascii()) or _is_utf8(lines):
        return pa.table(
            {
                "file_idx": pa.array(np.full(n, idx, dtype=np.int32)),
                "byte_offset": pa.array(offsets[:-1] + start),
                "line": lines,
                "pre_reason": pa.nulls(n, pa.string()),
            }
        )
    pieces = [
        (start + int(a), bytes(data[a:b])) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]
    batch.stats.lines -= n  # counted again by _text_table
    return _text_table(batch, idx, pieces)


def _is_utf8(lines: pa.LargeStringArray) -> bool:
    """Arrow checks the bytes in place (no Python string of the whole piece)."""
    import pyarrow as pa

    try:
        lines.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _text_table(batch: Batch, idx: int, pieces: list[tuple[int, bytes]]) -> pa.Table:
    """The slow path, for lines that may not be UTF-8: one Python object per line."""
    import pyarrow as pa

    texts: list[str] = []
    reasons: list[str | None] = []
    for off, raw in pieces:
        try:
            texts.append(raw.decode("utf-8"))
            reasons.append(None)
        except UnicodeDecodeError as exc:
            texts.append("")
            reasons.append(f"invalid UTF-8 at byte {exc.start}")
            batch.raw_rejects[(idx, off)] = raw[:-1] if raw.endswith(b"\n") else raw
    batch.stats.lines += len(pieces)
    return pa.table(
        {
            "file_idx": pa.array([idx] * len(pieces), pa.int32()),
            "byte_offset": pa.array([off for off, _ in pieces], pa.int64()),
            "line": pa.array(texts, pa.large_string()),
            "pre_reason": pa.array(reasons, pa.string()),
        }
    )


def _stage_observations(batch: Batch, host: str, key: str, start: int, data: bytes) -> None:
    from pipeline.observations import parse_observation

    pos = start
    # lines end at LF only, as a history's do (not at CR, which splitlines would split at);
    # each is judged without its newline, so the same bytes get the same reason as there
    for text in data.split(b"\n")[:-1]:  # `data` ends with a newline
        raw = text + b"\n"
        batch.stats.lines += 1
        if len(raw) > MAX_OBSERVATION_BYTES:  # a state file of a record's size fits in one
            why = f"observation too long: {len(raw)} bytes (limit {MAX_OBSERVATION_BYTES})"
            batch.obs_rejects.append((host, key, pos, why, raw[:KEPT_OF_LONG_LINE]))
            pos += len(raw)
            continue
        obs, reason = parse_observation(text, host) if text else (None, "empty line")
        if obs is None:
            batch.obs_rejects.append((host, key, pos, reason or "invalid", text))
        else:
            obs["source_path"], obs["byte_offset"] = key, pos
            batch.observations.append(obs)
            for source, data in obs.pop("_embedded"):
                idx = batch.add_file(host, source, f"{key}#{pos}:{source}")
                batch.chunks.append(_text_table(batch, idx, [(pos, data)]))
        pos += len(raw)


def _commit(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    """Parse staged lines; write runs, rejects, observations and cursors in one transaction."""
    if not batch.cursors:
        return
    now = datetime.now(UTC)
    has_lines = bool(batch.chunks)  # _parse releases the chunks
    try:
        if has_lines:
            _parse(con, batch)  # before the transaction: it writes only temp tables
        con.execute("BEGIN TRANSACTION")
        try:
            if has_lines:
                _insert_runs(con, batch, now)
            _insert_observations(con, batch, now)
            _flush_rejects(con, now, batch.stats)
            _save_cursors(con, batch, now)
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass  # a failed COMMIT has ended the transaction: the first error is shown
            raise
    finally:
        for name in ("staged", "staged_files", "cursor_rows"):
            try:
                con.unregister(name)
            except duckdb.Error:
                pass


def _save_cursors(con: duckdb.DuckDBPyConnection, batch: Batch, now: datetime) -> None:
    """One statement for all of a batch's cursors (executemany costs a statement per file),
    each history's with the newest ts of its lines so far (_raise_recency)."""
    import pyarrow as pa

    last = {c[0]: c for c in batch.cursors}  # a file read in several pieces: its final cursor
    newest = [batch.newest.get(key, batch.stored_newest.get(key)) for key in last]
    table = pa.table(
        {
            "source_path": [c[0] for c in last.values()],
            "host": [c[1] for c in last.values()],
            "byte_offset": pa.array([c[2] for c in last.values()], pa.int64()),
            "head_sha": [c[3] for c in last.values()],
            "recency_ts": pa.array(newest, pa.timestamp("us", tz="UTC")),
        }
    )
    con.register("cursor_rows", table)
    con.execute(
        "INSERT OR REPLACE INTO load_cursors "
        "(source_path, host, byte_offset, head_sha, updated_at, recency_ts) "
        "SELECT source_path, host, byte_offset, head_sha, ?, recency_ts FROM cursor_rows",
        [now],
    )
    con.unregister("cursor_rows")


def _parse(con: duckdb.DuckDBPyConnection, batch: Batch) -> None:
    """The fast path over the staged lines, into the temp table `fast` (before the batch's
    transaction: it writes nothing of the warehouse).

    It runs first without TRY around from_json, which costs 0.2 to 0.3 s of CPU per
    1,000,000 lines even when every line parses; a line that passed the guard but is not
    JSON makes that fail, and the batch is parsed again with TRY (the same rows)."""
    import pyarrow as pa

    staged = pa.concat_tables(batch.chunks)
    files = pa.table(
        {
            "file_idx": pa.array([f[0] for f in batch.files], pa.int32()),
            "host": [f[1] for f in batch.files],
            "source": [f[2] for f in batch.files],
            "source_path": [f[3] for f in batch.files],
        }
    )
    con.register("staged", staged)
    con.register("staged_files", files)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE fast AS " + records.fast_sql("staged", False))
    except duckdb.InterruptException:
        raise  # Ctrl-C, not a line that is not JSON
    except duckdb.Error:
        con.execute("CREATE OR REPLACE TEMP TABLE fast AS " + records.fast_sql("staged"))
    # `fast` keeps the lines it did not take: the input can go before the insert needs memory
    con.unregister("staged")
    del staged
    batch.chunks.clear()


def _insert_runs(con: duckdb.DuckDBPyConnection, batch: Batch, now: datetime) -> None:
    """Judge the lines `fast` did not take (the slow path) and insert the runs not yet in
    the warehouse, the first of each identity in the batch winning."""
    left = con.execute("SELECT count(*) FROM fast WHERE NOT ok").fetchone()
    if left and left[0]:
        lines = (
            "(SELECT f.file_idx, f.host, sf.source, sf.source_path, f.byte_offset, f.line, "
            "f.pre_reason FROM fast f JOIN staged_files sf USING (file_idx) WHERE NOT f.ok)"
        )
        con.execute("CREATE OR REPLACE TEMP TABLE slow AS " + records.slow_sql(lines))
    else:  # planning the slow query costs ~25 ms; an empty table with its columns does not
        con.execute(
            "CREATE OR REPLACE TEMP TABLE slow AS SELECT f.*, sf.source, sf.source_path "
            "FROM fast f JOIN staged_files sf USING (file_idx) WHERE false"
        )
    hosts = [f[1] for f in batch.files]
    batch.stats.runs_added += _insert_new_runs(con, batch, now, min(hosts), max(hosts))
    _reject_slow_lines(con, batch, now)
    _reject_conflicts(con, now, batch.stats)
    con.execute("DROP TABLE repeats")
    con.execute("DROP TABLE fast")
    con.execute("DROP TABLE slow")


def _insert_new_runs(
    con: duckdb.DuckDBPyConnection, batch: Batch, now: datetime, first_host: str, last_host: str
) -> int:
    """Insert the valid rows of `fast` and `slow` whose (host, run_id) is new; return how
    many runs the warehouse gained. The temp table `repeats` it leaves marks the records
    not stored because their run_id is another record's with other content (`differs`).

    Of one identity, the history line wins over the state file, and that over puppet's
    summary, then the first by offset: within the batch, and against a copy already
    stored (a state file read before its history line arrived is replaced by the line),
    so the warehouse is the same however the bytes arrived.

    Repeats are rare, so they are looked for by a hash of the identity: hashes seen twice
    in the batch or already in `runs` (within the batch's host range, given as constants
    so DuckDB skips row groups of other hosts). Only rows with such a hash are compared
    exactly; when there are none the batch is inserted without any join."""
    cols = ", ".join(records.RUN_COLUMNS)
    from_file = ("source", "source_path")
    fast_cols = ", ".join(("sf." if c in from_file else "f.") + c for c in records.RUN_COLUMNS)
    # column names come from records.RUN_COLUMNS, not input
    valid = (
        f"SELECT {fast_cols}, f.h, f.file_idx FROM fast f JOIN staged_files sf USING (file_idx) "  # noqa: S608
        f"WHERE f.ok UNION ALL "
        f"SELECT {cols}, hash(host, run_id) AS h, file_idx FROM slow WHERE reason IS NULL"
    )
    rank = "CASE source WHEN 'history' THEN 0 WHEN 'state_file' THEN 1 ELSE 2 END"
    content = f"hash({', '.join(CONTENT_COLUMNS)})"  # names from records, not input
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE repeats AS
        WITH hashes AS MATERIALIZED (SELECT h FROM ({valid})),
        suspect AS (
            SELECT h FROM hashes GROUP BY h HAVING count(*) > 1
            UNION
            SELECT hash(host, run_id) FROM runs
            WHERE host BETWEEN ? AND ? AND hash(host, run_id) IN (SELECT h FROM hashes)
        ),
        candidates AS (
            SELECT host, run_id, source_path, byte_offset, {rank} AS rank, {content} AS content,
                row_number() OVER first AS nth,
                first_value({{'content': {content}, 'path': source_path, 'offset': byte_offset}})
                    OVER first AS winner
            FROM ({valid}) WHERE h IN (SELECT h FROM suspect)
            WINDOW first AS (PARTITION BY host, run_id ORDER BY {rank}, byte_offset, source_path)
        ),
        stored AS (
            SELECT host, run_id, {rank} AS rank, {content} AS content, source_path, byte_offset
            FROM runs
            WHERE host BETWEEN ? AND ? AND hash(host, run_id) IN (SELECT h FROM suspect)
        )
        SELECT c.host, c.run_id, c.source_path, c.byte_offset,
            c.nth > 1 OR coalesce(s.rank <= c.rank, false) AS skip,
            c.nth = 1 AND coalesce(s.rank > c.rank, false) AS replaces,
            CASE WHEN coalesce(s.rank <= c.rank, false) THEN s.content ELSE c.winner.content END
                <> c.content AS differs,
            CASE WHEN coalesce(s.rank <= c.rank, false) THEN s.source_path
                 ELSE c.winner.path END AS kept_path,
            CASE WHEN coalesce(s.rank <= c.rank, false) THEN s.byte_offset
                 ELSE c.winner.offset END AS kept_offset
        FROM candidates c LEFT JOIN stored s USING (host, run_id)
        """,  # noqa: S608 -- column names come from records.RUN_COLUMNS, not input
        [first_host, last_host, first_host, last_host],
    )
    counts = con.execute(
        "SELECT count(*) FILTER (WHERE skip), count(*) FILTER (WHERE replaces) FROM repeats"
    ).fetchone()
    skip, replaced = (int(counts[0]), int(counts[1])) if counts else (0, 0)
    if replaced:
        con.execute(
            "DELETE FROM runs WHERE host BETWEEN ? AND ? AND (host, run_id) IN "
            "(SELECT (host, run_id) FROM repeats WHERE replaces)",
            [first_host, last_host],
        )
    where = (
        ""
        if not skip
        else "WHERE NOT EXISTS (SELECT 1 FROM repeats k WHERE k.skip "
        "AND k.source_path = v.source_path AND k.byte_offset = v.byte_offset)"
    )
    values = ", ".join("v." + c for c in records.RUN_COLUMNS)
    if _raise_recency(con, batch):
        recency = "r.recency_ts"
        raised = "LEFT JOIN raised r ON r.file_idx = v.file_idx AND r.byte_offset = v.byte_offset"
    else:  # NULL: the run's own ts (migrations/003_recency.sql)
        recency, raised = "NULL", ""
    row = con.execute(
        f"INSERT INTO runs ({cols}, loaded_at, recency_ts) SELECT {values}, ?, {recency} "  # noqa: S608
        f"FROM ({valid}) v {raised} {where}",
        [now],
    ).fetchone()
    if raised:
        con.unregister("raised")
    return (int(row[0]) if row else 0) - replaced


def _raise_recency(con: duckdb.DuckDBPyConnection, batch: Batch) -> bool:
    """Register `raised` (file_idx, byte_offset, recency_ts): the history lines about to be
    stored whose recency_ts is later than their ts, because a line is at least as recent as
    the lines appended before it to the same history (migrations/003_recency.sql): every
    valid record line counts, stored or a repeat, so a moved or copied mirror gives what a
    fresh load gives. Return whether there are any (rarely: a clock set back); when there
    are none, nothing is registered.

    The lines before this batch are summed up by `batch.newest` (this load's earlier
    batches) or by the file's cursor (`batch.stored_newest`, when this load reads on from
    where the last one stopped; a file read again from 0 starts afresh).

    The lines are staged history by history in offset order, so one pass in that order
    (a streaming window, no sort) finds whether any ts goes back: 0.06 s per 1,000,000
    lines, where a window partitioned by history sorts them for 0.3 s. The same pass checks
    that the lines came in that order. Only when a ts goes back, the order is not kept, or
    the slow path took some lines are they fetched (and sorted when they must be) and
    raised in numpy."""
    import numpy as np

    paths: dict[str, int] = {}  # a history's pieces have their own file_idx: one id each
    path_id = [-1] * len(batch.files)
    for idx, _host, source, path in batch.files:
        if source == "history":
            path_id[idx] = paths.setdefault(path, len(paths))
    if not paths:
        return False
    lowest = np.iinfo(np.int64).min
    floor = [lowest] * len(paths)
    for path, i in paths.items():
        if path not in batch.newest and batch.starts.get(path, 0) > 0:
            if path in batch.stored_newest:  # read on from the cursor: what it summed up
                batch.newest[path] = batch.stored_newest[path]
        if path in batch.newest:
            floor[i] = batch.newest[path]
    lines = (  # a history line of this batch: its piece, its history's id, offset and ts
        "SELECT file_idx, $ids[file_idx + 1] AS p, byte_offset, epoch_us(ts) AS us FROM {table} "
        "WHERE {valid} AND $ids[file_idx + 1] >= 0"
    )
    fast = lines.format(table="fast", valid="ok")
    slow = lines.format(table="slow", valid="reason IS NULL")
    names = list(paths)
    top = "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"
    found = con.execute(
        f"""
        WITH k AS (
            SELECT p, us, (CAST(p AS HUGEINT) << 64) + byte_offset AS place,
                (CAST(p AS HUGEINT) << 64) + us AS key FROM ({fast})
        )
        SELECT count(*) FILTER (WHERE place < seen OR key < newest OR us < $floor[p + 1])
        FROM (SELECT *, max(place) OVER ({top}) AS seen, max(key) OVER ({top}) AS newest FROM k)
        """,  # noqa: S608 -- no input in the text
        {"ids": path_id, "floor": floor},
    ).fetchone()
    taken = con.execute(f"SELECT count(*) FROM ({slow})", {"ids": path_id}).fetchone()  # noqa: S608
    if found == (0,) and taken == (0,):  # in order and no ts goes back: nothing is raised
        newest_sql = f"SELECT p, max(us) FROM ({fast}) GROUP BY p"  # noqa: S608
        for i, newest in con.execute(newest_sql, {"ids": path_id}).fetchall():
            batch.newest[names[i]] = max(newest, floor[i])
        return False
    return _raise_in_numpy(con, batch, names, path_id, floor, fast, slow)


def _raise_in_numpy(
    con: duckdb.DuckDBPyConnection,
    batch: Batch,
    names: list[str],
    path_id: list[int],
    floor_of: list[int],
    fast: str,
    slow: str,
) -> bool:
    """_raise_recency's lines fetched in (history, offset) order, each raised to the newest
    ts before it (and its history's `floor_of`)."""
    import numpy as np
    import pyarrow as pa

    parts = [con.execute(q, {"ids": path_id}).fetchnumpy() for q in (fast, slow)]
    piece = np.concatenate([np.asarray(p["file_idx"], dtype=np.int32) for p in parts])
    pid = np.concatenate([np.asarray(p["p"], dtype=np.int64) for p in parts])
    offset = np.concatenate([np.asarray(p["byte_offset"], dtype=np.int64) for p in parts])
    us = np.concatenate([np.asarray(p["us"], dtype=np.int64) for p in parts])
    del parts
    place = (pid << 40) | offset  # offsets stay under 1 TiB (the key of run_recency too)
    del offset
    if len(place) > 1 and bool(np.any(np.diff(place) < 0)):
        by_place = np.argsort(place, kind="stable")
        piece, pid, place, us = piece[by_place], pid[by_place], place[by_place], us[by_place]
    if not len(us):
        return False
    floor = np.array(floor_of, dtype=np.int64)
    same = pid[1:] == pid[:-1]
    firsts = np.flatnonzero(np.concatenate(([True], ~same)))
    for i, newest in zip(
        pid[firsts], np.maximum(np.maximum.reduceat(us, firsts), floor[pid[firsts]]), strict=True
    ):
        batch.newest[names[i]] = int(newest)
    back = np.flatnonzero(same & (us[1:] < us[:-1])) + 1  # a ts before the line above's
    below = np.flatnonzero(us < floor[pid])
    if not len(back) and not len(below):
        return False
    ends = np.append(firsts[1:], len(pid))
    recency = us.copy()
    for seg in np.unique(np.searchsorted(firsts, np.concatenate((back, below)), "right") - 1):
        lo, hi = firsts[seg], ends[seg]
        recency[lo:hi] = np.maximum.accumulate(np.maximum(us[lo:hi], floor[pid[lo]]))
    up = np.flatnonzero(recency > us)
    con.register(
        "raised",
        pa.table({
            "file_idx": pa.array(piece[up], pa.int32()),
            "byte_offset": pa.array(place[up] & ((1 << 40) - 1), pa.int64()),
            "recency_ts": pa.array(recency[up], pa.timestamp("us", tz="UTC")),
        }),
    )  # fmt: skip
    return True


# What a run is, beyond where it was read: two records of one (host, run_id) that differ
# in these are two runs, and the one not stored is a reject (`extra` is left out: the
# same unknown fields may be written in another order).
CONTENT_COLUMNS = tuple(
    c
    for c in records.RUN_COLUMNS
    if c not in ("host", "run_id", "source", "source_path", "byte_offset", "extra")
)


def _reject_conflicts(con: duckdb.DuckDBPyConnection, now: datetime, stats: LoadStats) -> None:
    """A record whose run_id another record with other content already has is not lost:
    it goes to rejects with its bytes, read back from the mirror (in slices, each file
    opened once per slice)."""
    conflicts = (
        "SELECT host, run_id, source_path, byte_offset, kept_path, kept_offset "
        "FROM repeats WHERE skip AND differs"
    )
    for chunk in _in_slices(con, conflicts):
        found = _records_bytes([(path, offset) for _, _, path, offset, _, _ in chunk])
        rows = []
        for host, run_id, path, offset, kept_path, kept_offset in chunk:
            reason = (
                f"run_id {run_id[:80]} is already another record's, with other content "
                f"(kept: byte {kept_offset} of {kept_path})"
            )
            rows.append((host, path, offset, reason, found.get((path, offset), b"")))
        _stage_rejects(con, rows, now, stats)


def _records_bytes(places: list[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    """_record_bytes of many places, each file opened once."""
    found: dict[tuple[str, int], bytes] = {}
    by_file: dict[str, list[tuple[str, int]]] = {}
    for source_path, offset in places:
        by_file.setdefault(source_path.partition("#")[0], []).append((source_path, offset))
    for path, wanted in by_file.items():
        try:
            with open(path, "rb") as fh:
                for source_path, offset in sorted(wanted, key=lambda w: w[1]):
                    found[(source_path, offset)] = _record_bytes(source_path, offset, fh)
        except OSError:
            continue
    return found


def _record_bytes(source_path: str, offset: int, fh: BinaryIO) -> bytes:
    """The bytes of the record at `offset` of a mirror file (`fh`, open): a line, a whole
    state file, or the state file an observation carries
    (`...observations.jsonl#OFFSET:state_file`)."""
    path, _, embedded = source_path.partition("#")
    fh.seek(offset)
    if not embedded and Path(path).name == STATE_FILE:
        return fh.read(records.MAX_LINE_BYTES + 1).rstrip(b"\n")
    raw = fh.readline(records.MAX_LINE_BYTES * 4)
    if not embedded:
        return raw.rstrip(b"\n")
    kind = embedded.partition(":")[2]  # state_file or legacy_summary
    try:
        obs = json.loads(raw)
        if isinstance(obs.get(kind), str):
            return str(obs[kind]).encode("utf-8").rstrip(b"\n")
        return base64.b64decode(obs.get(f"{kind}_b64") or "").rstrip(b"\n")
    except (ValueError, AttributeError):
        return b""


REJECTS_AT_ONCE = 10_000  # rejects go through Python (exact bytes, refined reasons) in slices


def _in_slices(con: duckdb.DuckDBPyConnection, select: str) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of `select` (a constant query over temp tables), REJECTS_AT_ONCE at a time.
    Numbered here (rowids of a table made in a transaction are not 0, 1, ...), and each
    slice fetched whole, so the caller may write between slices in the same transaction."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE sliced AS SELECT row_number() OVER () - 1 AS n, * "  # noqa: S608
        f"FROM ({select})"
    )
    count = con.execute("SELECT count(*) FROM sliced").fetchall()[0][0]
    for first in range(0, count, REJECTS_AT_ONCE):
        yield con.execute(
            "SELECT * EXCLUDE (n) FROM sliced WHERE n BETWEEN ? AND ? ORDER BY n",
            [first, first + REJECTS_AT_ONCE - 1],
        ).fetchall()
    con.execute("DROP TABLE sliced")


def _reject_slow_lines(con: duckdb.DuckDBPyConnection, batch: Batch, now: datetime) -> None:
    bad = (
        "SELECT host, source_path, byte_offset, reason, line, file_idx FROM slow "
        "WHERE reason IS NOT NULL"
    )
    for chunk in _in_slices(con, bad):
        rows = []
        for host, path, off, reason, line, idx in chunk:
            raw = batch.raw_rejects.get((idx, off))
            if raw is None:
                raw = line.encode("utf-8")
                raw = raw[:-1] if raw.endswith(b"\n") else raw
            if reason == "invalid JSON":
                reason = records.refine_json_reason(raw)
            rows.append((host, path, off, reason, raw))
        _stage_rejects(con, rows, now, batch.stats)


REJECTS_PER_FLUSH = 20_000  # staged rejects are stored this many at a time, at most


def _stage_rejects(
    con: duckdb.DuckDBPyConnection,
    rows: list[tuple[str, str, int, str, bytes]],
    now: datetime,
    stats: LoadStats,
) -> None:
    """Add rejects (host, source path, offset, reason, bytes) to the batch's temp table
    `new_rejects`; _flush_rejects stores the new ones, at the batch's end or once
    REJECTS_PER_FLUSH are waiting (DuckDB keeps what a statement used: the flush of a
    whole batch of rejects cost 0.6 GB)."""
    import pyarrow as pa

    if not rows:
        return
    table = pa.table(
        {
            "host": pa.array([r[0] for r in rows], pa.string()),
            "source_path": [r[1] for r in rows],
            "byte_offset": pa.array([r[2] for r in rows], pa.int64()),
            "reason": [r[3] for r in rows],
            "line": pa.array([r[4] for r in rows], pa.binary()),
        }
    )
    con.register("reject_rows", table)
    try:
        con.execute("CREATE TEMP TABLE IF NOT EXISTS new_rejects AS FROM reject_rows WITH NO DATA")
        con.execute("INSERT INTO new_rejects FROM reject_rows")
    finally:
        con.unregister("reject_rows")
    if con.execute("SELECT count(*) FROM new_rejects").fetchall()[0][0] >= REJECTS_PER_FLUSH:
        _flush_rejects(con, now, stats)


_EMBEDDED_KIND = "regexp_extract({}.source_path, '#[0-9]+:([a-z_]+)$', 1)"
_FILE_NAME = "regexp_extract({}.source_path, '[^/]*$')"


def _flush_rejects(con: duckdb.DuckDBPyConnection, now: datetime, stats: LoadStats) -> None:
    """Store the batch's rejects not already stored, once per batch (one anti-join against
    `rejects`, not one per slice). Keyed by host, file name, offset and bytes: re-reading
    a replaced file, or the same mirror from another directory (moved, copied), does not
    repeat them. A state file carried by an observation
    (`...observations.jsonl#OFFSET:state_file`) is keyed by host, kind and bytes: the
    same bad state file seen at every collection is one reject."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = 'new_rejects'"
    ).fetchall()  # all: a result left open stops register() (DuckDB 2)
    if not exists[0][0]:
        return
    kind_t, kind_r = _EMBEDDED_KIND.format("t"), _EMBEDDED_KIND.format("r")
    name_t, name_r = _FILE_NAME.format("t"), _FILE_NAME.format("r")
    # Equality only, so DuckDB joins on a hash (an OR in the key compared every pair).
    # A batch reads each file once, so its lines' keys are distinct; the documents
    # embedded in observations (few) may repeat: the first of each is kept.
    for rows, same in (
        (
            f"new_rejects t WHERE {kind_t} = ''",
            f"r.byte_offset = t.byte_offset AND {name_r} = {name_t}",
        ),
        (
            f"(SELECT DISTINCT ON (t.host, {kind_t}, t.line) t.* FROM new_rejects t "  # noqa: S608
            f"WHERE {kind_t} <> '' ORDER BY t.host, {kind_t}, t.line, t.byte_offset) t WHERE true",
            f"{kind_r} = {kind_t}",
        ),
    ):
        sql = (  # pieces are the constants above, not input
            "INSERT INTO rejects SELECT t.host, t.source_path, t.byte_offset, t.reason, "  # noqa: S608
            f"t.line, ? FROM {rows} AND NOT EXISTS (SELECT 1 FROM rejects r "
            f"WHERE r.host IS NOT DISTINCT FROM t.host AND r.line = t.line AND {same})"
        )
        added = con.execute(sql, [now]).fetchall()
        stats.rejects_added += int(added[0][0]) if added else 0
    con.execute("DROP TABLE new_rejects")


OBS_COLUMNS = (
    "host", "observed_at", "reachable", "error", "os", "role", "override_present",
    "override_sha", "vault_sha", "override_repo", "override_branch", "vault_status",
    "uptime_s", "source_path", "byte_offset", "extra",
)  # fmt: skip


def _insert_observations(con: duckdb.DuckDBPyConnection, batch: Batch, now: datetime) -> None:
    import pyarrow as pa

    if batch.obs_rejects:
        _stage_rejects(con, batch.obs_rejects, now, batch.stats)
    if not batch.observations:
        return
    rows = [tuple(o.get(c) for c in OBS_COLUMNS) for o in batch.observations]
    table = pa.table(
        {c: [r[i] for r in rows] for i, c in enumerate(OBS_COLUMNS) if c != "observed_at"}
        | {
            "observed_at": pa.array(
                [o["observed_at"] for o in batch.observations], pa.timestamp("us", tz="UTC")
            )
        }
    )
    con.register("obs_rows", table)
    cols = ", ".join(OBS_COLUMNS)
    # an observation is its content: the same line twice (in one batch or two, or in two
    # places of the mirror) is one observation, whatever the batching; two different
    # observations of one instant both stay
    content = ", ".join(
        f"CAST({c} AS VARCHAR)" if c == "extra" else c
        for c in OBS_COLUMNS
        if c not in ("host", "observed_at", "source_path", "byte_offset")
    )
    row = con.execute(
        f"""
        INSERT INTO observations ({cols}, loaded_at)
        SELECT {cols}, ? FROM (SELECT *, hash({content}) AS h FROM obs_rows) o
        WHERE NOT EXISTS (SELECT 1 FROM observations x WHERE x.host = o.host
                          AND x.observed_at = o.observed_at AND hash({content}) = o.h)
        QUALIFY row_number() OVER (PARTITION BY host, observed_at, h
                                   ORDER BY source_path, byte_offset) = 1
        """,  # noqa: S608 -- fixed column names
        [now],
    ).fetchone()
    con.unregister("obs_rows")
    batch.stats.observations_added += int(row[0]) if row else 0
