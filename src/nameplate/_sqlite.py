"""SQLite in WAL mode: connections, pragmas, ``BEGIN IMMEDIATE`` with a fair busy wait, fork safety.

Why our own busy loop: SQLite's busy handler sleeps in growing steps (1, 2, 5 … 100 ms), so under
contention an unlucky writer sleeps 100 ms at a time while others keep winning the lock. We run with a
zero busy timeout and retry ``BEGIN IMMEDIATE`` ourselves with short jittered sleeps (50 µs doubling to
2 ms) until the caller's timeout; ``scripts/bench.py --contention`` shows the tail before and after.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import peewee

from ._backend import Backend, Tx
from ._paths import Location, prepare
from .errors import DatabaseError, RegistryBusyError, RegistryClosedError

T = TypeVar("T")

SYNCHRONOUS_MODES = ("NORMAL", "FULL")

#: Declared once, applied on every connection (see ``test_database.py`` which reads them back).
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
    ]


_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
_FIRST_SLEEP = 0.00005
_MAX_SLEEP = 0.002

# Handles inherited across fork: closing them in the child could checkpoint or unlink the parent's
# WAL, so the child keeps them referenced, unused, until it exits.
_inherited_after_fork: list[Any] = []
_open_backends: weakref.WeakSet[SqliteBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_open_backends):
        backend._forget_connections()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
        conn = super()._connect()
        try:
            self._on_connect(conn)
        except BaseException:
            conn.close()
            raise
        with self._tracking_lock:
            self._all_connections.append(conn)
        return conn


class SqliteBackend(Backend):
    dialect = "sqlite"
    #: Use SQLite's own busy handler instead of our loop: only ``scripts/bench.py`` sets it, to show
    #: the latency tail that our loop removes.
    use_sqlite_busy_handler = False

    def __init__(self, location: Location, *, timeout: float = 10.0, synchronous: str = "NORMAL") -> None:
        if location.path is None:
            raise ValueError("SqliteBackend needs a file path")
        sync = synchronous.upper()
        if sync not in SYNCHRONOUS_MODES:
            from .errors import InvalidInputError

            raise InvalidInputError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                                    f"not {synchronous!r}", synchronous=synchronous)
        self.location = location
        self.path = location.path
        self.timeout = float(timeout)
        self.synchronous = sync
        prepare(location)
        self._pragmas = connection_pragmas(sync)
        self._closed = False
        self._pid = os.getpid()
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
            self._retry(lambda: conn.execute(f"PRAGMA {name} = {value}"), what="the new database's lock")
        mode = self._retry(lambda: conn.execute("PRAGMA journal_mode").fetchone()[0])
        if str(mode).lower() != "wal":
            self._retry(lambda: conn.execute("PRAGMA journal_mode = wal").fetchone())

    def connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RegistryClosedError(f"the registry on {self.path} is closed; open a new Registry")
        if self._pid != os.getpid():
            self._forget_connections()
        try:
            return self.peewee.connection()
        except peewee.PeeweeException as error:
            raise self._translate(error) from None
        except sqlite3.Error as error:
            raise self._translate(error) from None

    def _forget_connections(self) -> None:
        """In a forked child: drop inherited handles without closing them, reconnect lazily."""
        self._pid = os.getpid()
        db = self.peewee
        db._lock = threading.Lock()  # the parent may have held it at fork time
        db._tracking_lock = threading.Lock()
        _inherited_after_fork.extend(db._all_connections)
        db._all_connections = []
        db.dispose()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _open_backends.discard(self)
        if self._pid != os.getpid():
            return
        db = self.peewee
        with db._tracking_lock:
            connections, db._all_connections = db._all_connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                # A thread still inside a statement keeps its handle; SQLite closes it when freed.
                _inherited_after_fork.append(conn)
        db.dispose()

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
                    raise RegistryBusyError(f"{self.path} stayed busy past SQLite's busy timeout",
                                            path=str(self.path), waited=self.timeout,
                                            timeout=self.timeout) from None
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

    @contextmanager
    def write(self) -> Iterator[Tx]:
        conn = self.connection()
        if conn.in_transaction:
            raise RuntimeError("nameplate write transactions do not nest")
        try:
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as error:
            raise self._translate(error) from None
        try:
            yield conn
            self._retry(lambda: conn.execute("COMMIT"), what="the commit")
        except BaseException as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise self._translate(error) from error
            raise

    @contextmanager
    def read(self) -> Iterator[Tx]:
        conn = self.connection()
        if conn.in_transaction:  # already inside our own write: it is a snapshot too
            yield conn
            return
        try:
            self._retry(lambda: conn.execute("BEGIN"), what="a read snapshot")
            yield conn
        except sqlite3.Error as error:
            raise self._translate(error) from error
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        conn = self.connection()
        try:
            return conn.execute(sql, params).fetchone()
        except sqlite3.OperationalError as error:
            if not is_busy(error):
                raise self._translate(error) from error
            return self._retry(lambda: conn.execute(sql, params).fetchone(), what="a read")
        except sqlite3.Error as error:
            raise self._translate(error) from error

    def query_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self.connection()
        try:
            return self._retry(lambda: conn.execute(sql, params).fetchall(), what="a read")
        except sqlite3.Error as error:
            raise self._translate(error) from error

    def _translate(self, error: BaseException) -> Exception:
        text = str(error)
        if isinstance(error, (sqlite3.OperationalError, peewee.OperationalError)) and is_busy(error):
            return RegistryBusyError(f"{self.path} is busy: {text}; retry or raise the timeout",
                                     path=str(self.path), waited=0.0, timeout=self.timeout)
        if "file is not a database" in text or "malformed" in text:
            return DatabaseError(f"{self.path} is not a usable SQLite database ({text}); restore it from "
                                 "an export or point nameplate at another file", path=str(self.path))
        if "readonly" in text or "unable to open" in text:
            return DatabaseError(f"cannot write {self.path} ({text}); check its permissions and those "
                                 "of its directory", path=str(self.path))
        if "disk is full" in text or "disk I/O" in text:
            return DatabaseError(f"cannot write {self.path} ({text}); free disk space and retry",
                                 path=str(self.path))
        return DatabaseError(f"database error on {self.path}: {text}", path=str(self.path))

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

    def maintenance(self, action: str) -> dict[str, Any]:
        conn = self.connection()
        if action == "integrity":
            return {"problems": [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()
                                 if r[0] != "ok"]}
        if action == "foreign_keys":
            return {"problems": [f"{r[0]} row {r[1]} points at a missing {r[2]} row"
                                 for r in conn.execute("PRAGMA foreign_key_check").fetchall()]}
        if action == "vacuum":
            before = self._file_sizes()
            self._retry(lambda: conn.execute("VACUUM"), what="an exclusive lock for VACUUM")
            return {"before": before, "after": self._file_sizes()}
        if action == "checkpoint":
            busy, log, done = self._retry(
                lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone(), what="a checkpoint")
            return {"busy": bool(busy), "wal_frames": log, "checkpointed_frames": done}
        if action == "sizes":
            return self._file_sizes()
        raise ValueError(f"unknown maintenance action {action!r}")

    def _file_sizes(self) -> dict[str, int]:
        sizes = {}
        for suffix, key in (("", "file_bytes"), ("-wal", "wal_bytes"), ("-shm", "shm_bytes")):
            try:
                sizes[key] = os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                sizes[key] = 0
        return sizes
