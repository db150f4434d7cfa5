"""The last load error of each entry, kept so that every process (and ``nameplate show``) can see it.

``load`` imports user code, so nothing here runs while an import is in progress: the import happens
first, with no transaction open, and its outcome is written after, in a short transaction of its own.
A failure is recorded (one row per entry, replacing the previous one); the next successful import in
any process deletes it. A success costs one point read only when the target is actually imported (the
first ``load`` in a process), never on the cached loads after it.

Like a session's heartbeat, a load error is the state of a process, not of the registry's data: it
writes no event, so it moves neither the revision nor an export, and stays out of both.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._liveness import HOSTNAME
from ._records import Entry, utc
from .backends.base import Backend, Tx

_UPSERT = ("INSERT INTO entry_load_error (entry_pk, entry_id, target, error_type, message, failed_at, pid, hostname) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (entry_pk) DO UPDATE SET entry_id = excluded.entry_id, "
           "target = excluded.target, error_type = excluded.error_type, message = excluded.message, "
           "failed_at = excluded.failed_at, pid = excluded.pid, hostname = excluded.hostname")
_PK_OF = "SELECT pk FROM entry WHERE id = ?"
_HAS = "SELECT 1 FROM entry_load_error WHERE entry_pk = ? AND entry_id = ?"
_CLEAR = "DELETE FROM entry_load_error WHERE entry_pk = ? AND entry_id = ?"
_READ = ("SELECT l.target, l.error_type, l.message, l.failed_at, l.pid, l.hostname FROM entry_load_error AS l "
         "JOIN entry AS e ON e.pk = l.entry_pk AND e.id = l.entry_id AND e.target = l.target WHERE e.id = ?")


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """Why loading an entry's target failed, as recorded for every process to see.

    ``error_type`` is the class name of what the import raised (``ModuleNotFoundError``,
    ``AttributeError``, or whatever the module's own code raised); ``message`` is nameplate's one-line
    account of it, naming the entry and the target. ``pid`` and ``hostname`` say which process failed:
    an import that fails in one Python environment may work in another.
    """

    entry_id: str
    name: str
    kind: str
    target: str
    error_type: str
    message: str
    at: datetime
    pid: int
    hostname: str

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "name": self.name, "kind": self.kind, "target": self.target,
                "error_type": self.error_type, "message": self.message, "at": self.at.isoformat(),
                "pid": self.pid, "hostname": self.hostname}


def error_type_of(error: BaseException) -> str:
    """The name of what the import itself raised (the cause nameplate's own error wraps)."""
    cause = error.__cause__ if error.__cause__ is not None else error
    return type(cause).__name__


def failure_of(entry: Entry, error: BaseException) -> LoadFailure:
    """The record of ``error``, raised now in this process while loading ``entry``."""
    return LoadFailure(entry.id, entry.name, entry.kind, entry.target or "", error_type_of(error), str(error),
                       utc(time.time()), os.getpid(), HOSTNAME)


def record_failure(backend: Backend, entry: Entry, error: BaseException) -> LoadFailure:
    """Write ``error`` as the last load error of ``entry`` (one short transaction; no-op if the entry is
    gone meanwhile) and return the record."""
    failure = failure_of(entry, error)
    with backend.write() as tx:
        row = tx.execute(_PK_OF, (entry.id,)).fetchone()
        if row is None:
            return failure
        tx.execute(_UPSERT, (row[0], entry.id, failure.target, failure.error_type, failure.message,
                             failure.at.timestamp(), failure.pid, failure.hostname))
    return failure


def clear_failure(backend: Backend, entry_pk: int, entry: Entry) -> bool:
    """Forget the last load error of ``entry`` after a successful import; return whether there was one.

    The read comes first so that the common case, no error on record, takes no write lock.
    """
    if backend.query_one(_HAS, (entry_pk, entry.id)) is None:
        return False
    with backend.write() as tx:
        return bool(tx.execute(_CLEAR, (entry_pk, entry.id)).rowcount)


def read_failure(tx: Tx, entry: Entry) -> LoadFailure | None:
    """The last load error on record for ``entry``'s current target, or ``None``: once the target is
    replaced, an error about the old one no longer describes the entry (the next load overwrites or
    clears the row)."""
    row = tx.execute(_READ, (entry.id,)).fetchone()
    if row is None:
        return None
    target, error_type, message, failed_at, pid, hostname = row
    return LoadFailure(entry.id, entry.name, entry.kind, str(target), str(error_type), str(message),
                       utc(float(failed_at)), int(pid), str(hostname))
