"""The audit log: reading changes since a revision, pruning old ones (following them: ``_watch``).

A cold path, so it goes through the peewee models (``_models.Event``), run on the backend's own
connection: inside ``backend.write()`` a model query joins the open transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

import peewee

from ._models import Event as EventRow
from ._models import Session as SessionRow
from ._records import Event, utc
from ._store import Store
from .backends.base import Backend
from .errors import InvalidInputError

T = TypeVar("T")


def _decode(row: EventRow) -> Event:
    return Event(rev=int(row.rev), at=utc(row.at), action=row.action, workspace=row.workspace,
                 kind=row.kind, name=row.name, entry_id=row.entry_id, session_id=row.session_id, actor=row.actor,
                 detail=json.loads(row.detail))


MAX_REVISION = 2**63 - 1


def _check_revision(value: object, what: str) -> int:
    # Revisions are SQLite integers: 64-bit signed. A bigger one would overflow in the query.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REVISION:
        raise InvalidInputError(f"{what} must be a revision number >= 0, not {value!r}", **{what: value})
    return value


def changes(backend: Backend, since: int = 0, limit: int | None = None) -> list[Event]:
    """Events with ``rev > since``, oldest first, at most ``limit`` (``None``: all)."""
    _check_revision(since, "since")
    if limit is not None:
        _check_revision(limit, "limit")
    query = EventRow.select().where(EventRow.rev > since).order_by(EventRow.rev)
    if limit is not None:
        query = query.limit(limit)
    with backend.read():  # the backend's snapshot (and busy wait); the model query reads inside it
        return _run(backend, lambda: [_decode(row) for row in query.execute(backend.peewee)])


def revision(backend: Backend) -> int:
    """The newest revision (0 when the log is empty and was never written)."""
    return int(backend.query_one("SELECT coalesce(max(rev), 0) FROM event")[0])


def gc(backend: Backend, store: Store, keep_days: float) -> dict[str, int]:
    """Delete events and ended sessions older than ``keep_days``; revisions are never reused.

    The prune is itself logged, so the log never goes empty and its newest revision only grows.
    """
    if isinstance(keep_days, bool) or not isinstance(keep_days, (int, float)) or not keep_days >= 0:
        raise InvalidInputError(f"keep_days must be a number >= 0, not {keep_days!r}", keep_days=keep_days)
    cutoff = time.time() - float(keep_days) * 86400
    with backend.write() as tx:
        # Revisions are plain rowids on SQLite (max + 1): the newest event outlives every prune, so
        # the next revision never repeats a pruned one.
        newest = int(tx.execute("SELECT coalesce(max(rev), 0) FROM event").fetchone()[0])
        events = _run(backend, lambda: EventRow.delete().where(
            (EventRow.at < cutoff) & (EventRow.rev < newest)).execute(backend.peewee))
        sessions = _run(backend, lambda: SessionRow.delete().where(
            (SessionRow.state != "live") & (peewee.fn.coalesce(SessionRow.ended_at, SessionRow.beat_at) < cutoff)
        ).execute(backend.peewee))
        store.record(tx, "gc", keep_days=keep_days, events_deleted=events, sessions_deleted=sessions)
    return {"events_deleted": int(events), "sessions_deleted": int(sessions)}


def _run(backend: Backend, query: Callable[[], T]) -> T:
    """Run a model query; peewee wraps sqlite3's errors in its own classes, which the backend's
    transaction helpers do not translate, so translate them here (busy, corrupt, read-only...)."""
    try:
        return query()
    except peewee.PeeweeException as error:
        raise backend.translate(error) from None
