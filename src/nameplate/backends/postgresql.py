"""PostgreSQL through psycopg 3: one registry shared by processes on many hosts.

The guarantees of the SQLite backend, carried over:

- Writes are serialised per registry by a transaction-level advisory lock taken first thing in the
  transaction (``pg_advisory_xact_lock``, the analogue of ``BEGIN IMMEDIATE``): measured with 8
  processes racing over 300 names, row-level ``ON CONFLICT`` alone gave 9-12 names several ids; the
  lock gave none, and fencing tokens exactly 1..N. ``lock_timeout`` bounds the wait
  (:class:`RegistryBusyError`). The statements inside run at READ COMMITTED, so each sees every
  commit made before the lock was granted, as under SQLite's write lock.
- Serialisation failures and deadlocks cannot arise between nameplate's own transactions: every write
  takes the one advisory lock before any row lock, at READ COMMITTED, and read-only REPEATABLE READ
  snapshots never fail to serialise. Should another client's locks cause one, the transaction is
  rolled back whole and :class:`RegistryBusyError` says so (nothing was written; retrying is safe).
- ``synchronous=`` is accepted as on SQLite; durability is the server's (``synchronous_commit``).
- Reads that span statements run in ``REPEATABLE READ READ ONLY`` snapshots; single reads in
  autocommit. The event revision is an identity column assigned under the write lock, so it grows in
  commit order.
- A registry is a schema: the connection's ``current_schema()`` (set with ``?options=-csearch_path=x``
  or the role's default) in the URL's database. Lock keys and the notification channel derive from
  the database and schema names, so two registries on one server never wait for each other.
- Never share a connection across fork: a child that closed an inherited libpq connection would send
  the server a Terminate message on the parent's socket and end the parent's session. The child
  points each inherited socket descriptor at ``/dev/null`` (whatever libpq later writes there is
  lost harmlessly) and reconnects lazily.
- Commits send ``NOTIFY``; :meth:`change_counter` counts notifications on a listening connection
  (followers poll it instead of the log). :meth:`commit_signal` cannot use them: a notification
  arrives after the commit is visible to others, so for an instant it would report "nothing changed"
  for a change a fresh read sees. It therefore changes on every call, and a read-cache hit would cost
  a round trip for the event revision, as much as the lookup it saves (measured: 78 µs per cached
  lookup against 36 µs uncached), so the store runs without a read cache here (``cheap_commit_signal``).

The repository writes SQL with ``?`` placeholders as SQLite does; :func:`dialect_sql` turns it into
psycopg's (``%s``, literal ``%`` doubled) and spells SQLite's join-order hint ``CROSS JOIN ... ON`` as
a plain ``JOIN``. Every ``INTEGER`` of the migrations becomes ``BIGINT``: SQLite's integers are 64-bit.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
import time
import weakref
from collections.abc import Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import peewee

from .. import _fork
from .._paths import Location, redacted
from ..errors import (
    DatabaseError,
    DatabaseLocationError,
    InvalidInputError,
    NameplateError,
    RegistryBusyError,
    RegistryClosedError,
    StorageError,
)
from .base import Backend, Checkpoint, Cursor, Tx

SYNCHRONOUS_MODES = ("NORMAL", "FULL")
#: The URL schemes this backend opens (``postgresql+psycopg`` as SQLAlchemy spells it).
URL_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
#: The extra that installs the driver, named in the error when it is missing.
EXTRA = "pip install 'nameplate[postgres]'"

_TOKEN = re.compile(r"'(?:[^']|'')*'|\?|%|\bCROSS JOIN\b")
_translated: dict[str, str] = {}


def _token(match: re.Match[str]) -> str:
    text = match.group()
    if text == "?":
        return "%s"
    if text == "%":
        return "%%"
    if text == "CROSS JOIN":
        return "JOIN"
    return text.replace("%", "%%")  # a quoted literal: psycopg reads placeholders even there


def dialect_sql(sql: str) -> str:
    """``sql`` as written for SQLite (``?`` placeholders), in psycopg's spelling; cached."""
    done = _translated.get(sql)
    if done is None:
        done = _translated[sql] = _TOKEN.sub(_token, sql)
    return done


def _lock_key(*parts: str) -> int:
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_inherited_after_fork: list[Any] = []
_open_backends: weakref.WeakSet[PostgresqlBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_open_backends):
        backend._forget_connections()


_fork.in_child("connections", _after_fork_in_child)


def _disarm(conn: Any) -> None:
    """Make an inherited connection's socket descriptor lead to ``/dev/null`` (see the module docstring)."""
    if conn.closed:
        return  # no socket left to protect
    fd = conn.pgconn.socket
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


class _PgTx:
    """The repository's view of a psycopg connection: ``execute`` with ``?`` placeholders."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        cursor: Cursor = self._conn.execute(dialect_sql(sql), params)
        return cursor


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise DatabaseLocationError(
            f"PostgreSQL registries need the psycopg driver, which is not installed; {EXTRA}",
            extra="postgres") from None
    return psycopg


class _TrackedPostgresqlDatabase(peewee.PostgresqlDatabase):
    """peewee's database, remembering every connection it opens so ``close()`` reaches all threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._all_connections: list[Any] = []
        self._tracking_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _connect(self) -> Any:
        conn = super()._connect()  # type: ignore[misc]  # peewee's stubs omit _connect
        with self._tracking_lock:
            self._all_connections.append(conn)
        return conn


class PostgresqlBackend(Backend):
    dialect = "postgresql"
    peewee: _TrackedPostgresqlDatabase
    one_host = False
    cheap_commit_signal = False

    def __init__(self, location: Location, *, timeout: float = 10.0, synchronous: str = "NORMAL",
                 writer_line: bool = True) -> None:
        # writer_line: the server's lock manager queues waiters for the advisory write lock itself.
        if location.url is None:
            raise ValueError("PostgresqlBackend needs a postgresql:// URL")
        sync = synchronous.upper() if isinstance(synchronous, str) else None
        if sync not in SYNCHRONOUS_MODES:
            raise InvalidInputError(f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                                    f"not {synchronous!r}", synchronous=repr(synchronous))
        self._psycopg = _driver()
        self.location = location
        self.timeout = float(timeout)
        self.synchronous = sync
        self.shown = redacted(location.url)
        self._password = urlsplit(location.url).password
        conninfo = "postgresql://" + location.url.split("://", 1)[1]
        params: dict[str, Any] = {"prepare_threshold": 2}
        query = dict(parse_qsl(urlsplit(conninfo).query))
        if "connect_timeout" not in query and "PGCONNECT_TIMEOUT" not in os.environ:
            params["connect_timeout"] = max(2, int(self.timeout))
        if "application_name" not in query and "PGAPPNAME" not in os.environ:
            params["application_name"] = "nameplate"
        self._closed = False
        self._pid = os.getpid()
        self._keys: tuple[int, int, str] | None = None
        self._signal = itertools.count()
        self._listener: Any = None
        self._listener_broken = False
        self._notifications = 0
        self._listener_lock = threading.Lock()
        self.peewee = _TrackedPostgresqlDatabase(conninfo, autoconnect=True, **params)
        _open_backends.add(self)

    # -- connections ------------------------------------------------------------------------------

    def connection(self) -> Any:
        if self._closed:
            raise RegistryClosedError(f"the registry on {self.shown} is closed; open a new Registry")
        if self._pid != os.getpid():
            self._forget_connections()
        try:
            conn = self.peewee.connection()  # type: ignore[no-untyped-call]  # untyped in peewee
        except (peewee.PeeweeException, self._psycopg.Error) as error:
            raise self.translate(error) from None
        if conn.closed or conn.broken:  # the server ended the session: start a new one
            self.peewee.close()
            conn = self.peewee.connection()  # type: ignore[no-untyped-call]
        return conn

    def _forget_connections(self) -> None:
        """In a forked child: disarm inherited connections without closing them, reconnect lazily."""
        self._pid = os.getpid()
        db = self.peewee
        db._lock = threading.Lock()  # type: ignore[attr-defined]  # peewee's own; a parent thread may have held it
        db._tracking_lock = threading.Lock()
        inherited = db._all_connections + ([self._listener] if self._listener is not None else [])
        for conn in inherited:
            _disarm(conn)
        _inherited_after_fork.extend(inherited)
        db._all_connections = []
        self._listener = None
        self._listener_lock = threading.Lock()
        db.dispose()  # peewee forgets this thread's connection without closing it

    def _registry_keys(self, conn: Any) -> tuple[int, int, str]:
        """The write-lock key, the migration-lock key and the channel of this registry (database + schema)."""
        if self._keys is None:
            row = conn.execute("SELECT current_database(), current_schema()").fetchone()
            database, schema = row
            if schema is None:
                raise DatabaseLocationError(
                    f"{self.shown}: the connection's search_path names no existing schema; create the schema "
                    "(CREATE SCHEMA ...) or fix search_path in the URL's options", url=self.shown)
            channel = "nameplate_" + hashlib.blake2b(f"{database}\x00{schema}".encode(), digest_size=8).hexdigest()
            self._keys = (_lock_key(database, schema, "write"), _lock_key(database, schema, "migrate"), channel)
        return self._keys

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
        if self._listener is not None:
            connections.append(self._listener)
            self._listener = None
        for conn in connections:
            conn.close()
        db.dispose()  # every connection is closed above, whichever thread had it

    # -- transactions -----------------------------------------------------------------------------

    @contextmanager
    def _locked(self, migrating: bool) -> Iterator[Tx]:
        conn = self.connection()
        if conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
            raise RuntimeError("nameplate write transactions do not nest")
        started = time.monotonic()
        try:
            write_key, migrate_key, _ = self._registry_keys(conn)
            # Migrations take their own lock, then the write lock, so no write interleaves with them.
            locks = f"pg_advisory_xact_lock({migrate_key}); SELECT " if migrating else ""
            # One round trip: the lock wait is bounded by lock_timeout, then the lock is ours until COMMIT.
            conn.execute(f"BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = "
                         f"'{max(1, int(self.timeout * 1000))}ms'; SELECT {locks}pg_advisory_xact_lock({write_key})")
        except self._psycopg.Error as error:
            self._rollback(conn)
            raise self._busy_or_translate(error, started) from None
        try:
            yield _PgTx(conn)
            conn.execute(f"NOTIFY {self._registry_keys(conn)[2]}; COMMIT")
        except BaseException as error:
            self._rollback(conn)
            if isinstance(error, (self._psycopg.Error, peewee.PeeweeException)):
                raise self._busy_or_translate(error, started) from error
            raise

    def write(self) -> AbstractContextManager[Tx]:
        return self._locked(False)

    def schema_lock(self) -> AbstractContextManager[Tx]:
        return self._locked(True)

    def _rollback(self, conn: Any) -> None:
        if conn.closed or conn.broken:
            return
        if conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")

    def _busy_or_translate(self, error: BaseException, started: float) -> Exception:
        translated = self.translate(error)
        if isinstance(translated, RegistryBusyError) and _sqlstate(error) == "55P03":  # lock_timeout ran out
            waited = time.monotonic() - started
            return RegistryBusyError(
                f"{self.shown} stayed busy for {waited:.2f} s waiting for the write lock (timeout "
                f"{self.timeout:g} s): another process holds a long transaction; retry, or raise the timeout "
                "with Registry(timeout=...)", url=self.shown, waited=waited, timeout=self.timeout)
        return translated

    @contextmanager
    def read(self) -> Iterator[Tx]:
        conn = self.connection()
        if conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
            yield _PgTx(conn)  # already inside our own write: it is a snapshot too
            return
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _PgTx(conn)
        except (self._psycopg.Error, peewee.PeeweeException) as error:
            self._rollback(conn)
            raise self.translate(error) from error
        except BaseException:
            self._rollback(conn)
            raise
        else:
            conn.execute("COMMIT")

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        conn = self.connection()
        try:
            return conn.execute(dialect_sql(sql), params).fetchone()
        except self._psycopg.Error as error:
            raise self.translate(error) from error

    def query_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self.connection()
        try:
            rows: list[Any] = conn.execute(dialect_sql(sql), params).fetchall()
            return rows
        except self._psycopg.Error as error:
            raise self.translate(error) from error

    def translate(self, error: BaseException) -> Exception:
        return translate_error(error, self.shown, self.timeout, self._password)

    # -- schema bookkeeping -----------------------------------------------------------------------

    def _has_table(self, run: Any, name: str) -> bool:
        # information_schema, not to_regclass(): right after waiting for the migration lock, to_regclass
        # answered from a catalog snapshot older than the migration that had just committed.
        row = run("SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                  "AND table_name = ?", (name,)).fetchone()
        return row is not None

    def schema_version(self, tx: Tx | None = None) -> int:
        if tx is None:
            try:
                return self._schema_version(_PgTx(self.connection()).execute)
            except self._psycopg.Error as error:
                raise self.translate(error) from error
        return self._schema_version(tx.execute)

    def _schema_version(self, run: Any) -> int:
        if not self._has_table(run, "schema_migration"):
            return 0
        return int(run("SELECT coalesce(max(version), 0) FROM schema_migration").fetchone()[0])

    def set_schema_version(self, tx: Tx, version: int) -> None:
        # The version is the newest row of schema_migration, written in the same transaction. Explicit
        # ids (the core workspace of migration 1, rows restored by import) leave identity sequences
        # behind their columns: bring every sequence of this schema up to its column's maximum.
        self.realign_sequences(tx)

    def realign_sequences(self, tx: Tx) -> None:
        """Move every identity sequence of the registry's tables past the highest id stored."""
        rows = tx.execute("SELECT table_name, column_name FROM information_schema.columns "
                          "WHERE table_schema = current_schema() AND is_identity = 'YES'").fetchall()
        for table, column in rows:
            tx.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                       f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)")

    def foreign_tables(self, tx: Tx) -> list[str]:
        rows = tx.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                          ).fetchall()
        return [row[0] for row in rows]

    def ddl_vocabulary(self) -> dict[str, str]:
        return {
            "pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
            "rev_pk": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",  # sequences never go back
            "ref": "BIGINT",
            "float": "DOUBLE PRECISION",
            "table_opts": "",
        }

    def adapt_ddl(self, sql: str) -> str:
        return re.sub(r"\bINTEGER\b", "BIGINT", sql)

    # -- change signals ---------------------------------------------------------------------------

    def _notified(self, wait: float) -> int | None:
        """Notifications received so far, after waiting up to ``wait`` seconds for one; ``None`` when
        this backend cannot listen (a pooler in transaction mode, say: then callers poll)."""
        with self._listener_lock:
            if self._pid != os.getpid():
                self._forget_connections()
            if self._listener_broken:
                return None
            try:
                listener = self._listener
                if listener is None:
                    channel = self._registry_keys(self.connection())[2]
                    listener = self._psycopg.connect(self.peewee.database, autocommit=True,
                                                     **self.peewee.connect_params)
                    listener.execute(f"LISTEN {channel}")
                    self._listener = listener
                got = sum(1 for _ in listener.notifies(timeout=wait, stop_after=1))
                if got:
                    got += sum(1 for _ in listener.notifies(timeout=0))
                self._notifications += got
                return self._notifications
            except self._psycopg.Error:
                self._listener_broken = True
                self._listener = None
                return None

    def change_counter(self) -> int:
        """Notifications received since this backend began listening; the revision when it cannot listen."""
        count = self._notified(0.0)
        if count is not None:
            return count
        return int(self.query_one("SELECT coalesce(max(rev), 0) FROM event")[0])

    def commit_signal(self) -> Hashable:
        # Every commit notifies; a notification can arrive just after its commit is visible, so this
        # is late by that much (why no read cache trusts it here, see the module docstring) but never
        # misses a commit: watchers that read after taking it wake for any commit after their read.
        count = self._notified(0.0)
        return ("polled", next(self._signal)) if count is None else ("notified", count)

    def wait_for_commit(self, signal: Hashable, timeout: float) -> Hashable:
        """Block on LISTEN until a commit notifies (in slices of at most 50 ms, so that the threads of
        this process sharing the listening connection take turns), or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            count = self._notified(max(0.0, min(remaining, _WAIT_SLICE)))
            if count is None:  # cannot listen: sleep out the timeout, then report "maybe changed"
                time.sleep(max(0.0, deadline - time.monotonic()))
                return ("polled", next(self._signal))
            now = ("notified", count)
            if now != signal or deadline - time.monotonic() <= 0:
                return now

    # -- housekeeping -----------------------------------------------------------------------------

    def integrity_problems(self) -> list[str]:
        return []  # PostgreSQL checks pages itself (checksums, WAL); there is no integrity_check to run

    def foreign_key_problems(self) -> list[str]:
        return []  # enforced on every statement; no row can point at a missing one

    def not_applicable(self) -> tuple[str, ...]:
        return ("integrity", "foreign_key", "permissions", "checkpoint", "wal_bytes", "shm_bytes")

    def vacuum(self) -> None:
        conn = self.connection()
        try:
            tables = [row[0] for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                "AND table_type = 'BASE TABLE'").fetchall()]
            for table in tables:
                conn.execute(f'VACUUM (ANALYZE) "{table}"')
        except self._psycopg.Error as error:
            raise self.translate(error) from error

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(busy=False, wal_frames=0, checkpointed_frames=0)  # the server checkpoints itself

    def storage_sizes(self) -> dict[str, int]:
        row = self.query_one("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class AS c "
                             "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
                             "WHERE n.nspname = current_schema() AND c.relkind = 'r'")
        return {"file_bytes": int(row[0]), "wal_bytes": 0, "shm_bytes": 0}

    def clock(self, tx: Tx | None = None) -> float:
        """The server's clock (``clock_timestamp()``, which moves within a transaction, unlike ``now()``),
        one for every host: sessions' beats and lock-delays are stamped and judged on it."""
        sql = "SELECT extract(epoch FROM clock_timestamp())"
        row = tx.execute(sql).fetchone() if tx is not None else self.query_one(sql)
        return float(row[0])


#: The longest a waiter holds the listening connection before letting another thread look.
_WAIT_SLICE = 0.05

_BUSY_STATES = frozenset({"55P03", "40001", "40P01", "57014"})
_LOCATION_STATES = ("28", "3D", "42501", "25006", "08")


def _driver_error(error: BaseException) -> BaseException:
    """The psycopg error behind ``error`` (peewee wraps them), or ``error`` itself."""
    for candidate in (error, getattr(error, "orig", None), error.__cause__, error.__context__):
        if candidate is not None and hasattr(candidate, "sqlstate"):
            return candidate
    return error


def _sqlstate(error: BaseException) -> str:
    return getattr(_driver_error(error), "sqlstate", None) or ""


def translate_error(error: BaseException, shown: str, timeout: float, password: str | None = None) -> NameplateError:
    """The specific :class:`NameplateError` for a psycopg (or peewee-wrapped) error on ``shown``."""
    found = _driver_error(error)
    state = _sqlstate(error)
    text = str(found).strip().splitlines()[0] if str(found).strip() else type(found).__name__
    if password:
        text = text.replace(password, "***")
    if state in _BUSY_STATES:
        return RegistryBusyError(f"{shown} is busy: {text}; the transaction was rolled back whole, nothing was "
                                 "written: retry, or raise the timeout", url=shown, waited=0.0, timeout=timeout)
    if state.startswith("53") or state == "58030":
        return StorageError(f"the server cannot write {shown} ({text}); free space on the server and retry (the "
                            "transaction was rolled back)", url=shown)
    if not state and type(found).__name__ == "OperationalError":
        return DatabaseLocationError(f"cannot connect to {shown}: {text}; check that the server runs and the URL, "
                                     "PG* environment variables, .pgpass or service file", url=shown)
    if state.startswith(_LOCATION_STATES):
        return DatabaseLocationError(f"cannot use {shown}: {text}; check the role's privileges and the URL",
                                     url=shown)
    return DatabaseError(f"database error on {shown}: {text}", url=shown)
