"""The DuckDB warehouse: one place that opens it, migrates it and applies queries/.

Table changes are numbered migrations applied once and recorded in
`schema_migrations`; views and macros in queries/ are re-applied on a writable
open whenever their text differs from what the warehouse last applied
(`CREATE OR REPLACE`), so a new release's SQL always wins.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from importlib import resources
from pathlib import Path

import duckdb

from pipeline import locks
from pipeline.errors import FleetstateError

DEFAULT_DB = Path("data/fleetstate.duckdb")


class WarehouseError(FleetstateError):
    """A warehouse problem the user can act on (locked, missing, corrupt)."""


def _sql_dir(name: str) -> Path:
    """queries/ and migrations/ live beside the package in a checkout, inside it in a wheel."""
    packaged = Path(str(resources.files("pipeline"))) / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name


def queries_dir() -> Path:
    return _sql_dir("queries")


def migrations_dir() -> Path:
    return Path(__file__).resolve().parent / "migrations"


def connect(
    path: Path, read_only: bool = False, wait_s: float | None = None, guard: bool = True
) -> duckdb.DuckDBPyConnection:
    """Open (and, when writable, migrate) the warehouse at `path`.

    Another process holding the write lock gets a short wait, then a clear error. One of
    a newer release (a migration this one does not know) is refused, never rewritten. A
    read-only open never writes the views: when queries/ differ from what the warehouse
    holds (another release applied them), this release's views and macros are created as
    TEMP objects of the session, so reports run on them. Only tables an older release
    lacks need an upgrade: a writable open, once, before the read-only one. All waits of
    one call share `wait_s` (FLEETSTATE_LOCK_WAIT_S).
    """
    deadline = time.monotonic() + _lock_wait(wait_s)
    if read_only and holds_no_warehouse(path):
        raise WarehouseError(f"no warehouse at {path}: run `fleetstate ingest` (or `demo`) first")
    _refuse_non_duckdb(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
        if guard:
            _drop_empty_file(path, deadline)
    con = _open_checked(path, read_only, deadline, guard)
    try:
        if not read_only:
            migrate(con)
            apply_queries(con)
            return con
        pending = _pending_migrations(con)
        if not pending:
            if _queries_differ(con):
                _apply_queries_in_session(con)
            return con
    except BaseException:
        con.close()
        raise
    con.close()
    try:
        connect(path, read_only=False, wait_s=locks.left(deadline), guard=guard).close()
    except (WarehouseError, duckdb.Error) as exc:
        raise WarehouseError(
            f"{path} was made by an older fleetstate (without {pending[0]}) and must be "
            f"upgraded by a command that can write to it (any ingest, by its owner): {exc}"
        ) from exc
    return connect(path, read_only=True, wait_s=locks.left(deadline), guard=guard)


def _drop_empty_file(path: Path, deadline: float) -> None:
    """A 0-byte file at the warehouse's path (touched, or left by a full disk) holds
    nothing, and DuckDB refuses it; a writable open makes the warehouse in its place, as a
    read-only one says ("no warehouse ... run ingest"). Removed under the guard held
    exclusively: an open that is creating the file holds it shared until DuckDB has
    written its header, so a file that is only new is never taken for an empty one."""
    real = Path(os.path.realpath(path))
    if not _empty_file(real) or os.path.lexists(f"{real}.wal"):  # a log: DuckDB judges it
        return
    with _guard(real, exclusive=True, deadline=deadline):
        if _empty_file(real):
            real.unlink()


def holds_no_warehouse(path: Path) -> bool:
    """Nothing at `path`, or an empty file: no warehouse, and nothing in it to lose."""
    return not path.exists() or _empty_file(path)


def _empty_file(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _open_checked(
    path: Path, read_only: bool, deadline: float, guard: bool
) -> duckdb.DuckDBPyConnection:
    try:
        con = _open_waiting(path, read_only, deadline, guard)
    except duckdb.IOException as exc:
        raise WarehouseError(f"cannot open warehouse {path}: {exc}") from exc
    _hold(path, con)  # while it is open, the file's header is not read again
    _session(con)
    try:
        _refuse_foreign(con, path)
        _refuse_newer(con, path)
    except BaseException:
        con.close()
        raise
    return con


def _open_waiting(
    path: Path, read_only: bool, deadline: float, guard: bool = True
) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, trying until `deadline` (time.monotonic()) while another process
    holds the file's lock, then a clear error; other failures are DuckDB's.

    Each attempt holds the warehouse's guard (`_guard`) shared, so no open lands while a
    `rebuild` or `demo` puts a new file in place; `guard=False` is for the one holding it."""
    while True:
        with _guard(path, exclusive=False, deadline=deadline) if guard else nullcontext():
            try:
                return duckdb.connect(str(path), read_only=read_only)
            except duckdb.IOException as exc:
                if not _LOCKED.search(str(exc)):  # DuckDB's words; its text holds the path
                    raise
                if time.monotonic() >= deadline:
                    raise _locked(path) from exc
        time.sleep(0.2)


_LOCKED = re.compile(r"Could not set lock on file|Conflicting lock is held")


def _lock_wait(wait_s: float | None) -> float:
    """`wait_s`, or FLEETSTATE_LOCK_WAIT_S."""
    return locks.wait_s() if wait_s is None else wait_s


class WarehouseLocked(WarehouseError, locks.Busy):
    """Another process kept the warehouse locked longer than FLEETSTATE_LOCK_WAIT_S."""


def _locked(path: Path) -> WarehouseLocked:
    return WarehouseLocked(
        f"warehouse {path} is locked by another fleetstate process; try again when it has finished"
    )


def guard_path(path: Path) -> Path:
    """The warehouse's guard file, `<db>.lock` beside the file a --db link names."""
    real = Path(os.path.realpath(path))
    return real.with_name(real.name + ".lock")


@contextmanager
def _guard(path: Path, exclusive: bool, deadline: float) -> Iterator[None]:
    """Hold the warehouse's guard file locked (flock), waiting until `deadline`.

    DuckDB's own lock lives and dies with a connection, so it cannot cover the moment a
    rebuilt file is renamed over the old one: `rebuilding` holds the guard exclusively
    from before it opens the old file until after the rename, and every other open holds
    it shared while it connects. The guard is made readable by all, whoever's umask made
    it. The exclusive holder never goes on without it; a shared open whose user cannot
    open it (a warehouse in a directory it may not write) goes on unguarded."""
    guard = guard_path(path)
    fd = _open_guard(guard, exclusive)
    if fd is None:
        yield
        return
    try:
        if not locks.flock_until(fd, exclusive, deadline):
            raise _locked(path)
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_guard(guard: Path, exclusive: bool) -> int | None:
    """The guard open (made when missing), or None where a shared open goes on without."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK  # non-blocking: a FIFO there must not hang
    fd = None
    try:
        try:
            fd = os.open(guard, flags | os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            os.fchmod(fd, 0o644)  # readable by all whatever the umask: flock needs no more
        except FileExistsError:
            try:  # read-write where allowed (flock over NFS wants it), else read-only
                fd = os.open(guard, flags | os.O_RDWR)
            except PermissionError:
                fd = os.open(guard, flags | os.O_RDONLY)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(f"{guard} is not a regular file")
        return fd
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        if exclusive:
            raise WarehouseError(f"cannot lock the warehouse's guard {guard}: {exc}") from exc
        return None


def _refuse_foreign(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """A DuckDB database of something else (tables, no `schema_migrations`) is named, not
    read as a broken warehouse nor given fleetstate's tables; an empty one becomes one."""
    found = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE table_name = 'schema_migrations') "
        "FROM duckdb_tables() WHERE database_name = current_database()"
    ).fetchall()[0]
    if found[0] and not found[1]:
        raise WarehouseError(
            f"{path} is a DuckDB database but not a fleetstate warehouse "
            "(wrong --db or FLEETSTATE_DB?)"
        )


def _refuse_newer(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """A warehouse a newer release migrated (a migration this one does not know) is
    refused: this release's views and writes would not mean what that one's tables do."""
    unknown = sorted(_done_migrations(con) - set(_known_migrations()))
    if unknown:
        raise WarehouseError(
            f"{path} was written by a newer fleetstate (migration {unknown[-1]}); "
            "upgrade fleetstate to use it"
        )


def _done_migrations(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The migrations recorded in the warehouse (none in a new, empty file)."""
    if not con.execute(
        "SELECT count(*) FROM duckdb_tables() "
        "WHERE database_name = current_database() AND table_name = 'schema_migrations'"
    ).fetchall()[0][0]:
        return set()
    return {row[0] for row in con.execute("SELECT name FROM schema_migrations").fetchall()}


def _known_migrations() -> list[str]:
    return sorted(f.name for f in migrations_dir().glob("[0-9][0-9][0-9]_*.sql"))


def _pending_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The migrations of this release the warehouse has not had (an older release made it)."""
    done = _done_migrations(con)
    return [name for name in _known_migrations() if name not in done]


def _queries_differ(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the warehouse's views and macros are not this release's queries/ (another
    release applied its own), or one of them is gone."""
    texts, digest = _queries()
    row = con.execute("SELECT value FROM meta WHERE key = 'queries_sha256'").fetchall()
    return not row or row[0][0] != digest or _missing_objects(con, texts)


def _apply_queries_in_session(con: duckdb.DuckDBPyConnection) -> None:
    """This release's views and macros as TEMP objects: they shadow the warehouse's own for
    this connection only, and a read-only connection may create them."""
    for _, text in _queries()[0]:
        con.execute(
            _DEFINES.sub(lambda m: f"CREATE OR REPLACE TEMP {m.group(1)} {m.group(2)}", text)
        )


def _refuse_non_duckdb(path: Path) -> None:
    """A file that is not DuckDB's (a .csv given as --db, say), or no file at all (a
    directory), is named, never replaced."""
    if path.exists() and not path.is_file():
        raise WarehouseError(f"{path} is not a warehouse file (wrong --db or FLEETSTATE_DB?)")
    if path.is_file() and path.stat().st_size and not _is_duckdb_file(path):
        raise WarehouseError(f"{path} is not a DuckDB warehouse (wrong --db or FLEETSTATE_DB?)")


def _is_duckdb_file(path: Path) -> bool:
    """DuckDB's files carry `DUCK` at byte 8 (DuckDB would open a .csv as a view instead).

    Not read while this process holds a connection to the file: closing any descriptor
    of a file releases every POSIX lock the process holds on it, DuckDB's included (a
    second open, as each refresh of `rollout --watch` makes, would let other writers in).
    An open connection keeps its file, so the (device, inode) it is known by cannot be
    another file's meanwhile; one closed but not yet collected (a command's connections
    live until it ends) could, if its file is replaced in that time."""
    st = path.stat()
    if _HELD.get((st.st_dev, st.st_ino)):
        return True
    with path.open("rb") as fh:
        return fh.read(12)[8:12] == b"DUCK"


# (device, inode) -> connections of this process to that file not yet garbage-collected
_HELD: dict[tuple[int, int], int] = {}


def _hold(path: Path, con: duckdb.DuckDBPyConnection) -> None:
    """Count `con` as holding the file at `path` until the connection object is gone."""
    try:
        st = path.stat()
    except OSError:
        return
    key = (st.st_dev, st.st_ino)
    _HELD[key] = _HELD.get(key, 0) + 1
    weakref.finalize(con, _let_go, key)


def _let_go(key: tuple[int, int]) -> None:
    left = _HELD.get(key, 0) - 1
    if left > 0:
        _HELD[key] = left
    else:
        _HELD.pop(key, None)


def _session(con: duckdb.DuckDBPyConnection) -> None:
    """Settings every connection to the warehouse runs with: timestamps are read, compared
    and formatted in UTC (derived run identities depend on it), whatever the machine's zone."""
    con.execute("SET TimeZone = 'UTC'")


def cursor(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """Another connection to the warehouse behind `con` (for a thread), with the same session
    settings: DuckDB's `cursor()` shares the database but not the SET of its parent."""
    worker = con.cursor()
    _session(worker)
    return worker


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the numbered migrations not yet recorded; return the names applied."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    done = _done_migrations(con)
    applied = []
    for name in _known_migrations():
        if name in done:
            continue
        sql_file = migrations_dir() / name
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(sql_file.read_text())
            con.execute("INSERT INTO schema_migrations (name) VALUES (?)", [sql_file.name])
            con.execute("COMMIT")
        except Exception:
            _rollback(con)
            raise
        applied.append(sql_file.name)
    return applied


def apply_queries(con: duckdb.DuckDBPyConnection) -> list[str]:
    """(Re)create every view and macro in queries/, in file-name order, unless the
    warehouse already holds this exact text (applying takes ~30 ms; ingest runs often).
    The text and its fingerprint in `meta` commit together."""
    texts, digest = _queries()
    row = con.execute("SELECT value FROM meta WHERE key = 'queries_sha256'").fetchall()
    if row and row[0][0] == digest and not _missing_objects(con, texts):
        return []
    con.execute("BEGIN TRANSACTION")
    try:
        for _, text in texts:
            con.execute(text)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('queries_sha256', ?)", [digest])
        con.execute("COMMIT")
    except Exception:
        _rollback(con)
        raise
    return [name for name, _ in texts]


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """ROLLBACK after a failure, which a failed COMMIT has already done: the first error
    is the one shown."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def _queries() -> tuple[list[tuple[str, str]], str]:
    """The files of queries/ (name, text) in order, and their fingerprint."""
    texts = [(f.name, f.read_text()) for f in sorted(queries_dir().glob("*.sql"))]
    return texts, hashlib.sha256(repr(texts).encode()).hexdigest()


_DEFINES = re.compile(r"CREATE OR REPLACE (VIEW|MACRO) (\w+)", re.IGNORECASE)


def _missing_objects(con: duckdb.DuckDBPyConnection, texts: list[tuple[str, str]]) -> bool:
    """Whether a view or macro of queries/ is gone (dropped by hand, say) though the
    warehouse holds this text's fingerprint: then the text is applied again."""
    names = {m.group(2).lower() for _, text in texts for m in _DEFINES.finditer(text)}
    have = con.execute(
        "SELECT lower(view_name) FROM duckdb_views() WHERE NOT internal "
        "UNION SELECT lower(function_name) FROM duckdb_functions() "
        "WHERE function_type IN ('macro', 'table_macro') AND NOT internal"
    ).fetchall()
    return bool(names - {r[0] for r in have})


# Tables not derived from the mirror (`ingest-git`, `ingest-workers`): a rebuild copies
# them from the old warehouse, or their history would be gone for good.
NOT_FROM_MIRROR = (
    "git_commits", "git_refs", "git_ref_history", "worker_activity", "worker_fetches", "meta",
)  # fmt: skip


@contextmanager
def rebuilding(
    path: Path,
    carry: Sequence[str] = (),
    check: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
    replace_unreadable: bool = False,
    deadline: float | None = None,
    verify: Callable[[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection], None] | None = None,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A new, empty warehouse that takes the place of the one at `path` when the block ends
    without an error (`rebuild`, `demo`); `verify(old, new)` may still refuse (raise) then.

    The guard (`_guard`) is held exclusively from before the old warehouse is opened until
    the new one is in its place, and the old one is held open while the new one is built:
    another process is refused (locked) rather than writing into a file about to be
    replaced. A crash or an error leaves the old one as it was. `check(old)` may refuse
    (raise) before anything is built; the tables in `carry` are copied from the old one
    (the columns both have). An old file DuckDB cannot open (a release whose storage it
    does not read, a log that is not its own) is refused unless `replace_unreadable`: its
    carried tables would be lost. Scratch files of rebuilds that were killed go. Its waits
    share one `deadline` (default: FLEETSTATE_LOCK_WAIT_S from now)."""
    path = Path(os.path.realpath(path))  # --db a symbolic link: the file it names
    path.parent.mkdir(parents=True, exist_ok=True)
    if deadline is None:
        deadline = time.monotonic() + _lock_wait(None)
    with _guard(path, exclusive=True, deadline=deadline):
        old = _open_old(path, replace_unreadable, deadline)
        try:
            if old is not None and check is not None:
                check(old)
            scratch_name = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.rebuild(\.wal)?")
            for stale in path.parent.iterdir():  # a killed rebuild's (we hold the guard)
                if scratch_name.fullmatch(stale.name):
                    stale.unlink(missing_ok=True)
            fd, scratch = tempfile.mkstemp(
                prefix=f".{path.name}.", suffix=".rebuild", dir=path.parent
            )
            os.close(fd)
            new = Path(scratch)
            try:
                remove(new)
                con = connect(new, guard=False)
                try:
                    if old is not None:
                        _copy_tables(old, con, carry)
                    yield con
                    if old is not None and verify is not None:
                        verify(old, con)
                    con.execute("CHECKPOINT")
                finally:
                    con.close()
                if old is not None:
                    old.close()  # checkpoints: its log is empty and goes before the rename
                    old = None
                path.with_name(path.name + ".wal").unlink(missing_ok=True)
                os.replace(new, path)
            finally:
                remove(new)
        finally:
            if old is not None:
                old.close()


def _open_old(
    path: Path, replace_unreadable: bool, deadline: float
) -> duckdb.DuckDBPyConnection | None:
    """The warehouse `rebuilding` replaces, open and checked (None: there is none, or it is
    unreadable and may be replaced). The caller holds the guard."""
    if holds_no_warehouse(path):
        return None  # an empty file is no warehouse (as for `connect`)
    _refuse_non_duckdb(path)
    try:
        old = _open_waiting(path, read_only=False, deadline=deadline, guard=False)
    except duckdb.Error as exc:
        if replace_unreadable:
            return None
        raise WarehouseError(
            f"cannot open the warehouse {path} to replace it ({exc}); `rebuild "
            "--force` replaces it, losing what only it holds (git_commits, worker_activity)"
        ) from exc
    try:
        _session(old)
        _refuse_foreign(old, path)
        _refuse_newer(old, path)
    except BaseException:
        old.close()
        raise
    return old


def _copy_tables(
    old: duckdb.DuckDBPyConnection, new: duckdb.DuckDBPyConnection, tables: Sequence[str]
) -> None:
    """Copy `tables` from `old` (any release's) into `new`, by column name, streaming."""
    for table in tables:
        cols = [
            r[0]
            for r in old.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
                "AND table_name = ? ORDER BY column_index",
                [table],
            ).fetchall()
        ]
        have = {
            r[0]
            for r in new.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]
            ).fetchall()
        }
        shared = ", ".join(f'"{c}"' for c in cols if c in have)  # names from the catalog
        if not shared:
            continue
        keyed = new.execute(
            "SELECT count(*) FROM duckdb_constraints() WHERE table_name = ? "
            "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
            [table],
        ).fetchall()[0][0]
        verb = "INSERT OR IGNORE" if keyed else "INSERT"  # meta: the new warehouse's own keys win
        reader = old.sql(f"SELECT {shared} FROM {table}").to_arrow_reader()  # noqa: S608
        new.register("carried", reader)
        try:
            new.execute(f"{verb} INTO {table} ({shared}) SELECT {shared} FROM carried")  # noqa: S608
        finally:
            new.unregister("carried")


def mark_written(con: duckdb.DuckDBPyConnection) -> None:
    """A command other than the demo writes into the warehouse: from now on it holds real
    data, and `demo` refuses to replace it (`meta.made_by` goes)."""
    con.execute("DELETE FROM meta WHERE key = 'made_by'")


def remove(path: Path) -> None:
    """Delete a warehouse file and its write-ahead log."""
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)
