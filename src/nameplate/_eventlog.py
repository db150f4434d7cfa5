"""The audit log: reading changes since a revision, following new ones, pruning old ones."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

from ._backend import Backend
from ._records import Event, utc
from ._store import Store

_COLUMNS = "rev, at, action, workspace, kind, name, entry_id, session_id, actor, detail"


def _decode(row: tuple) -> Event:  # type: ignore[type-arg]
    return Event(rev=int(row[0]), at=utc(row[1]), action=row[2], workspace=row[3], kind=row[4], name=row[5],
                 entry_id=row[6], session_id=row[7], actor=row[8], detail=json.loads(row[9]))  # type: ignore[arg-type]


def changes(backend: Backend, since: int = 0, limit: int | None = None) -> list[Event]:
    sql = f"SELECT {_COLUMNS} FROM event WHERE rev > ? ORDER BY rev" + (" LIMIT ?" if limit else "")
    params = (since, limit) if limit else (since,)
    return [_decode(row) for row in backend.query_all(sql, params)]


def revision(backend: Backend) -> int:
    return int(backend.query_one("SELECT coalesce(max(rev), 0) FROM event")[0])


def follow(backend: Backend, since: int | None = None, *, interval: float = 0.25,
           stop: Callable[[], bool] | None = None) -> Iterator[Event]:
    """Yield events after ``since`` (default: from now on) as they are committed, until ``stop()``.

    Between polls it asks SQLite's ``data_version`` (microseconds) and reads the log only when
    another connection has committed.
    """
    last = revision(backend) if since is None else since
    for event in changes(backend, last):
        last = event.rev
        yield event
    counter = backend.change_counter()
    while stop is None or not stop():
        time.sleep(interval)
        now = backend.change_counter()
        if now == counter:
            continue
        counter = now
        for event in changes(backend, last):
            last = event.rev
            yield event


def gc(backend: Backend, store: Store, keep_days: float) -> dict[str, int]:
    """Delete events and ended sessions older than ``keep_days``; revisions are never reused."""
    cutoff = time.time() - keep_days * 86400
    with backend.write() as tx:
        events = tx.execute("DELETE FROM event WHERE at < ?", (cutoff,)).rowcount
        sessions = tx.execute("DELETE FROM session WHERE state != 'live' AND coalesce(ended_at, beat_at) < ?",
                              (cutoff,)).rowcount
        store.record(tx, "gc", keep_days=keep_days, events_deleted=events, sessions_deleted=sessions)
    return {"events_deleted": events, "sessions_deleted": sessions}
