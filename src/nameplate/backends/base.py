"""The storage contract the repository is written against.

The repository speaks SQL with ``?`` placeholders through a transaction object whose only method it
uses is ``execute(sql, params) -> cursor`` (``fetchone``/``fetchall``/``rowcount``). A backend supplies
that object, the transaction shapes (short write transactions, consistent read snapshots), schema-version
bookkeeping and the DDL vocabulary of its dialect. SQLite is the default; a PostgreSQL backend slots in
behind the same contract without touching the Registry or the repository.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import peewee

from .._paths import Location

#: wait_for_commit's first and longest pause between two looks at the commit signal (seconds).
_FIRST_PAUSE = 0.001
_LONGEST_PAUSE = 0.005


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """What the repository may do inside a transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ..., /) -> Cursor: ...


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's outcome: ``busy`` when readers kept it from finishing."""

    busy: bool
    wal_frames: int
    checkpointed_frames: int


class Backend(ABC):
    """One database, opened by one process, used by any number of its threads."""

    dialect: str
    location: Location
    #: The peewee database the models run on (cold paths: listings, maintenance).
    peewee: peewee.Database
    #: Seconds a writer waits for the write lock before :class:`RegistryBusyError`.
    timeout: float
    #: Whether every process using this database runs on this host (a SQLite file on a local disk).
    #: Then a session of another boot is one from before this host rebooted: dead. A server database
    #: is shared by hosts, so another boot id is another host, judged by its ttl alone.
    one_host: bool = True
    #: Whether :meth:`commit_signal` costs far less than a point select; if not, a read cache saves
    #: nothing and the store runs without one.
    cheap_commit_signal: bool = True

    def clock(self, tx: Tx | None = None) -> float:
        """The wall clock sessions' ttl and lock-delay are judged on across hosts (seconds since the
        epoch): this host's here, the server's on a server database."""
        return time.time()

    @abstractmethod
    def write(self) -> AbstractContextManager[Tx]:
        """A short write transaction (``BEGIN IMMEDIATE`` on SQLite). Commits on success."""

    def schema_lock(self) -> AbstractContextManager[Tx]:
        """The transaction migrations run in; a write transaction unless a backend has a lock of its own."""
        return self.write()

    @abstractmethod
    def read(self) -> AbstractContextManager[Tx]:
        """A read-only transaction: every statement inside sees one snapshot."""

    @abstractmethod
    def query_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """One row (or ``None``) of a single-statement read, outside any transaction: the hot path."""

    @abstractmethod
    def query_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of a single-statement read, outside any transaction."""

    @abstractmethod
    def schema_version(self, tx: Tx | None = None) -> int:
        """The schema version recorded in the database (0 for a new one)."""

    @abstractmethod
    def set_schema_version(self, tx: Tx, version: int) -> None: ...

    @abstractmethod
    def foreign_tables(self, tx: Tx) -> list[str]:
        """Tables present that nameplate did not create (to refuse someone else's database)."""

    @abstractmethod
    def ddl_vocabulary(self) -> dict[str, str]:
        """Dialect words for migration templates: ``pk``, ``ref``, ``float``, ``rev_pk``, ``table_opts``."""

    def adapt_ddl(self, sql: str) -> str:
        """A migration's DDL (vocabulary filled in) in this dialect, where a word must differ."""
        return sql

    @abstractmethod
    def change_counter(self) -> int:
        """A number that changes whenever another connection commits (cheap; for followers and caches)."""

    @abstractmethod
    def commit_signal(self) -> Hashable:
        """A value that differs from the one this thread got last time whenever anything committed in
        between: another process, another thread of this one, or this very thread. Cheap (read caches
        ask it on every hit); never a false "nothing changed"."""

    def wait_for_commit(self, signal: Hashable, timeout: float) -> Hashable:
        """Block until :meth:`commit_signal` differs from ``signal`` (something committed since it was
        read) or ``timeout`` seconds passed; return the signal as it is then.

        What watchers (``Registry.follow``, ``Registry.wait_for_change``) sleep on, so they wake on a
        commit rather than on a fixed poll. This default asks :meth:`commit_signal` (cheap by contract:
        on SQLite a 48-byte read of the WAL-index in shared memory) every millisecond, backing off to
        every 5 ms while nothing commits: a waiter wakes within 5 ms of a commit and costs about 200
        tiny reads a second while idle. A backend with real notifications (PostgreSQL's LISTEN/NOTIFY)
        overrides it to block until notified.
        """
        deadline = time.monotonic() + timeout
        pause = _FIRST_PAUSE
        while True:
            now = self.commit_signal()
            remaining = deadline - time.monotonic()
            if now != signal or remaining <= 0:
                return now
            time.sleep(min(pause, remaining))
            pause = min(pause * 1.5, _LONGEST_PAUSE)

    @abstractmethod
    def translate(self, error: BaseException) -> Exception:
        """The nameplate error for a driver's (or peewee's) exception: busy, corrupt, read-only, full..."""

    # -- housekeeping ------------------------------------------------------------------------------

    @abstractmethod
    def integrity_problems(self) -> list[str]:
        """What the database's own integrity check reports (empty when it is sound)."""

    @abstractmethod
    def foreign_key_problems(self) -> list[str]:
        """Rows that point at missing rows, one sentence each."""

    def not_applicable(self) -> tuple[str, ...]:
        """Checks and figures that mean nothing on this database (``check``/``stats`` say so)."""
        return ()

    @abstractmethod
    def vacuum(self) -> None:
        """Rebuild the database compactly (waits for other writers like a write does)."""

    @abstractmethod
    def checkpoint(self) -> Checkpoint:
        """Move what the write-ahead log holds into the database and reset the log."""

    @abstractmethod
    def storage_sizes(self) -> dict[str, int]:
        """Bytes on disk: ``file_bytes``, ``wal_bytes``, ``shm_bytes`` (0 where a backend has no such file)."""

    def bulk(self) -> AbstractContextManager[None]:
        """Memory-frugal settings for one long pass over many rows (export, import) in this thread;
        by default nothing changes."""
        return nullcontext()

    @abstractmethod
    def close(self) -> None:
        """Close every connection this backend opened in this process."""
