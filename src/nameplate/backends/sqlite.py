"""SQLite in WAL mode: connections, pragmas, ``BEGIN IMMEDIATE`` with a fair busy wait, fork safety.

Why our own busy loop: SQLite's busy handler sleeps in growing steps (1, 2, 5 … 100 ms), so under
contention an unlucky writer sleeps 100 ms at a time while others keep winning the lock. We run with a
zero busy timeout and retry ``BEGIN IMMEDIATE`` ourselves with short jittered sleeps (50 µs doubling to
2 ms) until the caller's timeout; ``scripts/bench.py --contention`` shows the tail before and after.
"""

from __future__ import annotations

import mmap
import os
import random
import sqlite3
import sys
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import peewee

from .. import _fork
from .._paths import Location, location_error, prepare
from ..errors import (
    DatabaseError,
    DatabaseLocationError,
    ForeignDatabaseError,
    NameplateError,
    RegistryBusyError,
    RegistryClosedError,
    StorageError,
)
from . import _held_files
from ._writer_line import Place, WriterLine
from .base import Backend, Checkpoint, Tx

T = TypeVar("T")

SYNCHRONOUS_MODES = ("NORMAL", "FULL")

#: ``PRAGMA application_id`` of every nameplate database ("NMPL"), set by migration 2: how a file is
#: known to be ours before anything writes to it (SQLite's own convention; see its magic.txt).
APPLICATION_ID = 0x4E4D504C
_SQLITE_MAGIC = b"SQLite format 3\x00"
#: Tables of a nameplate database from before migration 2 set the application id.
_LEGACY_TABLES = frozenset({"workspace", "workspace_ancestor", "kind", "session", "entry", "entry_capability",
                            "lease", "lock_delay", "selection_cursor", "event", "schema_migration",
                            "sqlite_sequence"})

#: Declared once, applied on every connection (see ``test_database.py`` which reads them back).
#: The page cache (in KiB, as SQLite's negative cache_size) of a bulk pass: export, import.
_BULK_CACHE_KIB = -8192


def connection_pragmas(synchronous: str) -> list[tuple[str, Any]]:
    return [
        ("foreign_keys", 1),
        ("synchronous", synchronous),
        ("journal_size_limit", 32 * 1024 * 1024),  # a pinned reader let the WAL grow past 30 MB
        ("cache_size", -65536),  # 64 MiB
        # Reads straight from the OS page cache instead of copying pages into SQLite's: random
        # lookups over 1M entries cost 1.4x those over 1k with it, 1.6-1.8x without
        # (interleaved rounds, scripts/bench.py's scale section). Writes still go through the WAL.
        ("mmap_size", 1 << 30),
        ("temp_store", "MEMORY"),
        # SQLite's automatic checkpoint runs inside the commit that crosses 1,000 frames, fdatasync
        # included: 30 % of a resolve-create's time and its whole p99 (2.6 ms; 0.25 ms without it).
        # This process's Checkpointer thread does it instead (see there).
        ("wal_autocheckpoint", 0),
    ]


_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_FIRST_SLEEP = 0.00005
_MAX_SLEEP = 0.002

# Handles inherited across fork: closing them in the child could checkpoint or unlink the parent's
# WAL, so the child keeps them referenced, unused, until it exits.
_inherited_after_fork: list[Any] = []
_open_backends: weakref.WeakSet[SqliteBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    backends = list(_open_backends)
    for backend in backends:
        backend._forget_connections()
    _held_files.reset_after_fork([backend._file_key for backend in backends if not backend._closed])


_fork.in_child("connections", _after_fork_in_child)


def is_busy(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    text = str(error)
    return "locked" in text or "busy" in text


class _TrackedSqliteDatabase(peewee.SqliteDatabase):
    """peewee's database, remembering every connection it opens so ``close()`` reaches all threads."""

    def __init__(self, *args: Any, on_connect: Callable[[sqlite3.Connection], None], **kwargs: Any):
        self._on_connect = on_connect
        self._all_connections: list[sqlite3.Connection] = []
        self._tracking_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._connect()  # type: ignore[misc]  # peewee's stubs omit _connect
        try:
            self._on_connect(conn)
        except BaseException:
            conn.close()
            raise
        with self._tracking_lock:
            self._all_connections.append(conn)
        return conn


#: WAL frames not yet checkpointed past which a commit wakes the checkpointer: SQLite's own
#: automatic threshold. Counting the backlog, not the log's length, matters: under a writer that never
#: pauses the log does not start over after a PASSIVE checkpoint (each one ends a commit or two
#: behind), and waking on its length ran a checkpoint, fsync included, after every other commit
#: (1,442 in 3,000 creates, 40 % of a create's time).
CHECKPOINT_FRAMES = 1000
#: How long after meeting a busy write lock a process checks the writer line before trying the lock.
_CONTENDED_FOR = 0.1
#: WAL frames past which the checkpointer resets the log even while writers keep appending (about
#: 32 MiB with 4 KiB pages, journal_size_limit's size): a PASSIVE checkpoint never lets a log restart
#: under a continuous writer (an earlier attempt with PASSIVE only let the WAL reach 295 MB).
RESTART_FRAMES = 8000
#: How long the checkpointer keeps trying a RESTART checkpoint (writers and readers in the way).
_RESTART_WAIT = 0.25
#: How long an explicit checkpoint (``nameplate checkpoint``, vacuum) retries one that reports busy.
_EXPLICIT_CHECKPOINT_WAIT = 0.5
#: Offset of mxFrame (the last valid frame, native u32) in the WAL-index header.
_MX_FRAME = 16
#: Offset of nBackfill (frames already copied back into the database, native u32): the checkpoint
#: info that follows the header's two copies.
_N_BACKFILL = 96
#: A -wal file's header, and one frame of a 4 KiB page (SQLite's default page size, and ours).
_WAL_HEADER_BYTES = 32
_FRAME_BYTES = 24 + 4096


class Checkpointer:
    """This process's WAL checkpoints of one database, run by a daemon thread on its own connection,
    so that no caller's commit pays for them.

    A commit that leaves the log past :data:`CHECKPOINT_FRAMES` wakes the thread (setting an event,
    about 0.1 us); the thread runs a PASSIVE checkpoint, which copies frames back without blocking
    anyone, and when the log is past :data:`RESTART_FRAMES` a RESTART one, tried for up to
    :data:`_RESTART_WAIT` until no writer or old reader is in the way, so that the next writer starts
    the log over. The
    log therefore stays bounded while anyone writes: the process that appends is the one that wakes
    its checkpointer. SQLite lets one checkpoint run at a time (others report busy at once), so many
    processes doing this is safe; a process that exits closes its connections, and the last one to
    close checkpoints and removes the log itself.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        #: Held while the thread is inside SQLite: a fork waits for it (see _hold_checkpoints_for_fork),
        #: since a child inheriting SQLite's mutexes mid-checkpoint hangs on its first statement.
        self.in_sqlite = threading.Lock()
        #: Checkpoints run, for tests and stats.
        self.runs = 0
        _checkpointers.add(self)

    def wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._guard:
                if self._stop:
                    return
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name=f"nameplate-checkpoint {self._path.name}",
                                                    daemon=True)
                    self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        with self.in_sqlite:
            conn = sqlite3.connect(str(self._path), isolation_level=None, timeout=0, check_same_thread=False)
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop:
                    return
                self._checkpoint(conn)
        finally:
            with self.in_sqlite:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            with self.in_sqlite:
                _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise
            return  # another connection's checkpoint runs: the next commit past the mark wakes us again
        self.runs += 1
        if frames < RESTART_FRAMES:
            return
        # RESTART needs a moment without a writer and with every reader on the newest snapshot. SQLite's
        # own busy handler sleeps in growing steps and lost that race to writers retrying every 50 us
        # (the log reached 57 MiB with three writers); retrying in short jittered steps, as writers do,
        # wins it. Each attempt fails at once when busy (timeout 0), so no writer waits on a pending one.
        deadline = time.monotonic() + _RESTART_WAIT
        sleep = _FIRST_SLEEP
        while True:
            try:
                with self.in_sqlite:
                    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            except sqlite3.OperationalError as error:
                if not is_busy(error):
                    raise
                busy = 1
            if not busy or time.monotonic() >= deadline:
                return
            time.sleep(sleep * random.uniform(0.5, 1.5))
            sleep = min(sleep * 2, _MAX_SLEEP)

    def stop(self) -> None:
        """End the thread (it closes its connection); waits for a checkpoint in progress."""
        with self._guard:
            self._stop = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


_checkpointers: weakref.WeakSet[Checkpointer] = weakref.WeakSet()
_held_for_fork: list[Checkpointer] = []


def _hold_checkpoints_for_fork() -> None:
    for checkpointer in list(_checkpointers):
        checkpointer.in_sqlite.acquire()
        _held_for_fork.append(checkpointer)


def _release_checkpoints_after_fork() -> None:
    # In the parent the threads go on; in the child the backends replace their checkpointers, and
    # these (held) locks belong to objects nothing uses any more.
    while _held_for_fork:
        _held_for_fork.pop().in_sqlite.release()


def _drop_checkpoints_in_child() -> None:
    # The held ones are the parent's (the backends made new ones already, in _fork's step); a later
    # fork of this child must not wait for their locks.
    while _held_for_fork:
        _checkpointers.discard(_held_for_fork.pop())


os.register_at_fork(before=_hold_checkpoints_for_fork, after_in_parent=_release_checkpoints_after_fork,
                    after_in_child=_drop_checkpoints_in_child)


class SqliteBackend(Backend):
    dialect = "sqlite"
    peewee: _TrackedSqliteDatabase
    #: Use SQLite's own busy handler instead of our loop: only ``scripts/bench.py`` sets it, to show
    #: the latency tail that our loop removes.
    use_sqlite_busy_handler = False

    def __init__(self, location: Location, *, timeout: float = 10.0, synchronous: str = "NORMAL",
                 writer_line: bool = True) -> None:
        if location.path is None:
            raise ValueError("SqliteBackend needs a file path")
        sync = synchronous.upper() if isinstance(synchronous, str) else None
        if sync not in SYNCHRONOUS_MODES:
            from ..errors import InvalidInputError

            raise InvalidInputError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                                    f"not {synchronous!r}", synchronous=repr(synchronous))
        self.location = location
        self.path = location.path
        self.timeout = float(timeout)
        self.synchronous = sync
        path = self.path

        def first_open() -> None:
            prepare(location)
            identify(path)

        self._file_key = _held_files.enter(path, first_open)
        self._pragmas = connection_pragmas(sync)
        self._closed = False
        self._pid = os.getpid()
        #: Commits made through this backend (any thread); part of commit_signal().
        self.commits = 0
        self._wal_index: mmap.mmap | None = None
        self.checkpointer = Checkpointer(self.path)
        self.writer_line = WriterLine(self.path, enabled=writer_line)
        self._contended_until = 0.0
        self.peewee = _TrackedSqliteDatabase(
            str(self.path),
            timeout=self.timeout if self.use_sqlite_busy_handler else 0,  # see the module docstring
            check_same_thread=False,  # so close() can close every thread's connection
            cached_statements=256,
            on_connect=self._configure,
        )
        _open_backends.add(self)

    # -- connections ------------------------------------------------------------------------------

    def _configure(self, conn: sqlite3.Connection) -> None:
        # On a brand-new file another process may hold the lock while it switches to WAL; even
        # pragmas then meet SQLITE_BUSY, so each one waits like a write would.
        for name, value in self._pragmas:
            statement = f"PRAGMA {name} = {value}"
            self._retry(partial(conn.execute, statement), what="the new database's lock")
        mode = self._retry(lambda: conn.execute("PRAGMA journal_mode").fetchone()[0])
        if str(mode).lower() != "wal":
            self._retry(lambda: conn.execute("PRAGMA journal_mode = wal").fetchone())

    def connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RegistryClosedError(f"the registry on {self.path} is closed; open a new Registry")
        if self._pid != os.getpid():
            self._forget_connections()
        try:
            conn: sqlite3.Connection = self.peewee.connection()  # type: ignore[no-untyped-call]  # untyped in peewee
            return conn
        except peewee.PeeweeException as error:
            raise self.translate(error) from None
        except sqlite3.Error as error:
            raise self.translate(error) from None

    def _forget_connections(self) -> None:
        """In a forked child: drop inherited handles without closing them, reconnect lazily."""
        self._pid = os.getpid()
        self._wal_index = None  # the parent's mapping; _held_files drops it in the child too
        self.checkpointer = Checkpointer(self.path)  # the parent's thread is not here; its handle stays unused
        db = self.peewee
        db._lock = threading.Lock()  # type: ignore[attr-defined]  # peewee's own; the parent may have held it at fork time
        db._tracking_lock = threading.Lock()
        _inherited_after_fork.extend(db._all_connections)
        db._all_connections = []
        db.dispose()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wal_index = None
        _open_backends.discard(self)
        if self._pid != os.getpid():
            return
        self.checkpointer.stop()
        self.writer_line.close()
        if self._close_connections():
            _held_files.leave(self._file_key)
        # else a handle stays open, and may hold locks: the file stays counted as held for good.

    def _close_connections(self) -> bool:
        """Close every thread's connection; False if one could not be closed yet."""
        db = self.peewee
        with db._tracking_lock:
            connections, db._all_connections = db._all_connections, []
        all_closed = True
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                # A thread still inside a statement keeps its handle; SQLite closes it when freed.
                _inherited_after_fork.append(conn)
                all_closed = False
        db.dispose()
        return all_closed

    # -- transactions -----------------------------------------------------------------------------

    def _retry(self, operation: Callable[[], T], what: str = "the write lock") -> T:
        started: float | None = None
        sleep = _FIRST_SLEEP
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as error:
                if not is_busy(error):
                    raise
                if self.use_sqlite_busy_handler:
                    raise self._busy_past_sqlite_handler() from None
                now = time.monotonic()
                if started is None:
                    started = now
                waited = now - started
                if waited >= self.timeout:
                    raise RegistryBusyError(
                        f"{self.path} stayed busy for {waited:.2f} s waiting for {what} (timeout "
                        f"{self.timeout:g} s): another process holds a long transaction; retry, or "
                        "raise the timeout with Registry(timeout=...)",
                        path=str(self.path), waited=waited, timeout=self.timeout) from None
                time.sleep(min(sleep * random.uniform(0.5, 1.5), self.timeout - waited))
                sleep = min(sleep * 2, _MAX_SLEEP)

    def _busy_past_sqlite_handler(self) -> RegistryBusyError:
        return RegistryBusyError(f"{self.path} stayed busy past SQLite's busy timeout", path=str(self.path),
                                 waited=self.timeout, timeout=self.timeout)

    def _once(self, conn: sqlite3.Connection, statement: str) -> bool:
        """Run ``statement`` once, without the retry loop's frames (the uncontended case): False if the
        database was busy (in the busy-handler mode, where SQLite already waited, that raises)."""
        try:
            conn.execute(statement)
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise
            if self.use_sqlite_busy_handler:  # SQLite's handler already waited the whole timeout
                raise self._busy_past_sqlite_handler() from None
            return False
        return True

    def _execute_retrying(self, conn: sqlite3.Connection, statement: str, what: str) -> None:
        """``_retry`` of one statement, tried once first by :meth:`_once`."""
        if not self._once(conn, statement):
            self._retry(lambda: conn.execute(statement), what=what)

    def _begin_immediate(self, conn: sqlite3.Connection) -> Place | None:
        """Take the write lock: at once when it is free (no line, no system call of ours), else in
        this host's line of writers (``_writer_line``), retrying until the turn comes and the lock is
        free. Returns the place in the line, to give back after the transaction."""
        line = self.writer_line
        # Only a process that met a busy lock lately looks at the line first (two system calls); one
        # that writes alone pays nothing for it.
        if (time.monotonic() >= self._contended_until or not line.occupied()) and self._once(conn, "BEGIN IMMEDIATE"):
            return None
        place = line.enter()
        try:
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"), what="the write lock")
        except BaseException:
            self.writer_line.leave(place)
            raise
        self._contended_until = time.monotonic() + _CONTENDED_FOR  # from when the contention ended
        return place

    @contextmanager
    def write(self) -> Iterator[Tx]:
        conn = self.connection()
        if conn.in_transaction:
            raise RuntimeError("nameplate write transactions do not nest")
        place = None
        try:
            try:
                place = self._begin_immediate(conn)
            except sqlite3.Error as error:
                raise self.translate(error) from None
            try:
                yield conn
                self._execute_retrying(conn, "COMMIT", "the commit")
                self.commits += 1  # read caches of this process's other threads compare it (commit_signal)
            except BaseException as error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(error, sqlite3.Error):
                    raise self.translate(error) from error
                raise
        finally:
            self.writer_line.leave(place)
        if self._wal_backlog() >= CHECKPOINT_FRAMES:
            self.checkpointer.wake()

    @contextmanager
    def read(self) -> Iterator[Tx]:
        conn = self.connection()
        if conn.in_transaction:  # already inside our own write: it is a snapshot too
            yield conn
            return
        try:
            self._retry(lambda: conn.execute("BEGIN"), what="a read snapshot")
            yield conn
        except (sqlite3.Error, peewee.PeeweeException) as error:  # peewee wraps sqlite3's errors in the models
            raise self.translate(error) from error
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        conn = self.connection()
        try:
            return conn.execute(sql, params).fetchone()
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise self.translate(error) from error
            return self._retry(lambda: conn.execute(sql, params).fetchone(), what="a read")
        except sqlite3.Error as error:
            raise self.translate(error) from error

    def query_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self.connection()
        try:
            return self._retry(lambda: conn.execute(sql, params).fetchall(), what="a read")
        except sqlite3.Error as error:
            raise self.translate(error) from error

    def translate(self, error: BaseException) -> Exception:
        return translate_error(error, self.path, self.timeout)

    # -- schema bookkeeping -----------------------------------------------------------------------

    def schema_version(self, tx: Tx | None = None) -> int:
        if tx is None:
            return int(self.query_one("PRAGMA user_version")[0])
        return int(tx.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, tx: Tx, version: int) -> None:
        tx.execute(f"PRAGMA user_version = {int(version)}")

    def foreign_tables(self, tx: Tx) -> list[str]:
        rows = tx.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                          "AND name NOT LIKE 'sqlite_%'").fetchall()
        return [row[0] for row in rows]

    def ddl_vocabulary(self) -> dict[str, str]:
        return {
            "pk": "INTEGER PRIMARY KEY",
            "rev_pk": "INTEGER PRIMARY KEY AUTOINCREMENT",  # revisions are never reused, even after gc
            "ref": "INTEGER",
            "float": "REAL",
            "table_opts": " WITHOUT ROWID",
        }

    def change_counter(self) -> int:
        return int(self.query_one("PRAGMA data_version")[0])

    def commit_signal(self) -> Hashable:
        # Every commit rewrites the WAL-index header in -shm, SQLite's documented, stable WAL format
        # (https://www.sqlite.org/walformat.html); reading its 48 bytes from a shared mapping costs
        # about 0.1 us, PRAGMA data_version about 2 us, as much as the point select a cache saves.
        # The mapping stays valid while this process holds a connection (its shared lock on -shm
        # keeps others from deleting it), so one is opened first. Writes of this process are also
        # counted in self.commits. Without a usable -shm: data_version, with the connection's
        # identity (a reconnected thread starts a new data_version sequence).
        index = self._wal_index
        if index is None:
            conn = self.connection()
            index = self._wal_index = _held_files.wal_index(self._file_key, self.path)
            if index is None:
                try:
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error as error:
                    raise self.translate(error) from error
                return (id(conn), version, self.commits)
        return (index[:_held_files.WAL_INDEX_HEADER], self.commits)

    def _wal_frames(self) -> int:
        """Frames in the write-ahead log now: mxFrame of the WAL-index header (a read of shared memory);
        from the -wal file's size where there is no usable -shm (an overestimate after a restart,
        which only wakes the checkpointer more often)."""
        return self._wal_frames_and_backfill()[0]

    def _wal_backlog(self) -> int:
        """Frames of the log not yet copied back into the database (mxFrame - nBackfill)."""
        frames, backfilled = self._wal_frames_and_backfill()
        return frames - backfilled

    def _wal_frames_and_backfill(self) -> tuple[int, int]:
        index = self._wal_index
        if index is None:
            index = self._wal_index = _held_files.wal_index(self._file_key, self.path)
        if index is not None:
            frames = int.from_bytes(index[_MX_FRAME:_MX_FRAME + 4], sys.byteorder)
            backfilled = int.from_bytes(index[_N_BACKFILL:_N_BACKFILL + 4], sys.byteorder)
            return frames, min(backfilled, frames)
        try:
            return max(0, os.path.getsize(f"{self.path}-wal") - _WAL_HEADER_BYTES) // _FRAME_BYTES, 0
        except OSError:
            return 0, 0

    def integrity_problems(self) -> list[str]:
        return [r[0] for r in self.connection().execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]

    def foreign_key_problems(self) -> list[str]:
        return [f"{r[0]} row {r[1]} points at a missing {r[2]} row"
                for r in self.connection().execute("PRAGMA foreign_key_check").fetchall()]

    def vacuum(self) -> None:
        conn = self.connection()
        self._retry(lambda: conn.execute("VACUUM"), what="an exclusive lock for VACUUM")

    def checkpoint(self) -> Checkpoint:
        conn = self.connection()
        # A checkpoint of the background Checkpointer (this process's or another's) makes this one
        # report busy for its few milliseconds: try again briefly before blaming a reader.
        deadline = time.monotonic() + min(self.timeout, _EXPLICIT_CHECKPOINT_WAIT)
        while True:
            busy, log, done = self._retry(
                lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone(), what="a checkpoint")
            if not busy or time.monotonic() >= deadline:
                return Checkpoint(bool(busy), int(log), int(done))
            time.sleep(_MAX_SLEEP)

    def storage_sizes(self) -> dict[str, int]:
        return self._file_sizes()

    @contextmanager
    def bulk(self) -> Iterator[None]:
        # A pass over a million rows would otherwise fill the 64 MiB page cache, map the whole file
        # (mapped pages count in the process's RSS) and sort in memory: a streamed export of 1M
        # entries peaked at 192 MiB with the connection's own settings, 49 MiB with these.
        conn = self.connection()
        saved = [(name, conn.execute(f"PRAGMA {name}").fetchone()[0])
                 for name in ("cache_size", "mmap_size", "temp_store")]
        conn.execute(f"PRAGMA cache_size = {_BULK_CACHE_KIB}")
        conn.execute("PRAGMA mmap_size = 0")
        conn.execute("PRAGMA temp_store = FILE")  # a sort too big for the cache spills to disk
        try:
            yield
        finally:
            for name, value in saved:
                conn.execute(f"PRAGMA {name} = {int(value)}")

    def _file_sizes(self) -> dict[str, int]:
        sizes = {}
        for suffix, key in (("", "file_bytes"), ("-wal", "wal_bytes"), ("-shm", "shm_bytes")):
            try:
                sizes[key] = os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                sizes[key] = 0
        return sizes


def identify(path: Path) -> str:
    """Decide whether ``path`` is ours before any connection could change it; return ``"new"`` (empty
    file or empty database), ``"ours"`` or ``"legacy"`` (ours, from before the application id).

    Reads the 100-byte header with plain file I/O; a file without our application id is inspected
    through a read-only (``mode=ro``) or, for WAL files, an ``immutable`` connection, which neither
    writes the file nor leaves ``-wal``/``-shm`` files beside it. Everything else is refused:
    :class:`DatabaseError` for a file that is not SQLite, :class:`ForeignDatabaseError` for another
    application's database; the file is not touched either way.
    """
    header = _read_header(path)
    if not header:
        return "new"
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise DatabaseError(f"{path} is not a SQLite database (it does not start with SQLite's header); "
                            "nothing was changed. Point nameplate at its own file", path=str(path))
    application_id = int.from_bytes(header[68:72], "big")
    if application_id == APPLICATION_ID:
        return "ours"
    if application_id != 0:
        raise ForeignDatabaseError(
            f"{path} belongs to another application (SQLite application id 0x{application_id:08X}); nameplate "
            "refused it without changing it. Point nameplate at its own file", path=str(path),
            application_id=application_id)
    wal = header[18] == 2
    tables = _table_names(path, wal)
    if not tables:
        return "new"
    if tables <= _LEGACY_TABLES and "schema_migration" in tables and _has_initial_migration(path, wal):
        return "legacy"
    shown = ", ".join(sorted(tables - _LEGACY_TABLES)[:5] or sorted(tables)[:5])
    raise ForeignDatabaseError(f"{path} holds tables nameplate did not create ({shown}); nameplate refused it "
                               "without changing it. Point nameplate at its own file", path=str(path),
                               tables=sorted(tables))


#: How long a header that looks half-written (zeros, or a short prefix of SQLite's) is read again before
#: the file is judged: another process may be creating the database at this very moment.
_HEADER_SETTLE = 2.0


def _read_header(path: Path) -> bytes:
    """The file's first 100 bytes, once they no longer look like a database being created by another
    process: a file another opener has just extended but not yet filled reads as zeros or as part of
    SQLite's header for a moment, and must not be refused as "not a SQLite database" for that."""
    deadline = time.monotonic() + _HEADER_SETTLE
    while True:
        try:
            with open(path, "rb") as handle:
                header = handle.read(100)
        except OSError as error:
            raise location_error(error, path) from None
        if header.startswith(_SQLITE_MAGIC):
            settling = len(header) < 100  # the rest of the first page is on its way
        else:  # zeros, or the start of SQLite's magic followed by zeros
            settling = _SQLITE_MAGIC.startswith(header.rstrip(b"\0")[:len(_SQLITE_MAGIC)])
        if not header or not settling or time.monotonic() >= deadline:
            return header
        time.sleep(0.005)


def _inspect(path: Path, wal: bool) -> sqlite3.Connection:
    # immutable=1 skips locks and the WAL (a read-only connection would create -wal and -shm files and
    # leave them behind); a committed change still only in a WAL is invisible, which at worst makes a
    # foreign file look empty: migrate() then refuses its tables from inside the write lock, unchanged.
    flag = "immutable=1" if wal else "mode=ro"
    uri = f"file:{urllib.parse.quote(str(path))}?{flag}"
    return sqlite3.connect(uri, uri=True)


def _table_names(path: Path, wal: bool) -> frozenset[str]:
    try:
        conn = _inspect(path, wal)
        try:
            return frozenset(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
        finally:
            conn.close()
    except sqlite3.Error as error:
        raise translate_error(error, path, 0.0) from None


def _has_initial_migration(path: Path, wal: bool) -> bool:
    try:
        conn = _inspect(path, wal)
        try:
            row = conn.execute("SELECT name FROM schema_migration WHERE version = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == "initial schema"


def _sqlite_code(error: BaseException) -> int | None:
    for candidate in (error, getattr(error, "orig", None), error.__cause__, error.__context__):
        code = getattr(candidate, "sqlite_errorcode", None)
        if code is not None:
            return int(code) & 0xFF
    return None


def translate_error(error: BaseException, path: Path | None, timeout: float) -> NameplateError:
    """The specific :class:`NameplateError` for a ``sqlite3`` (or peewee-wrapped) error on ``path``."""
    text = str(error)
    code = _sqlite_code(error)
    if code in _BUSY_CODES or (code is None and ("locked" in text or "busy" in text)):
        return RegistryBusyError(f"{path} is busy: {text}; retry or raise the timeout",
                                 path=str(path), waited=0.0, timeout=timeout)
    if code == sqlite3.SQLITE_FULL or "disk is full" in text:
        return StorageError(f"cannot write {path}: the disk is full ({text}); free disk space and retry (the "
                            "transaction was rolled back)", path=str(path))
    if code == sqlite3.SQLITE_IOERR or "disk I/O" in text:
        return StorageError(f"the disk failed to read or write {path} ({text}); check the device and its free "
                            "space (the transaction was rolled back)", path=str(path))
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT) or "file is not a database" in text \
            or "malformed" in text:
        return DatabaseError(f"{path} is not a usable SQLite database ({text}); restore it from an export or "
                             "point nameplate at another file", path=str(path))
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM) or "readonly" in text \
            or "unable to open" in text:
        return DatabaseLocationError(f"cannot write {path} ({text}); check its permissions and those of its "
                                     "directory", path=str(path))
    return DatabaseError(f"database error on {path}: {text}", path=str(path))
