"""Watching the log: filtered changes, following them, and waiting for one entry to change.

etcd's ``Watch(key, WithPrefix(), WithRev(r))`` and Consul's blocking query (``?index=``), on the audit
log. Filters (name, name prefix, kind, the event's workspace) are applied in SQL, except one thing SQL
cannot see portably: a rename is logged under its new name, with the old one in its JSON detail, so a
rename event is fetched whenever a name filter is set and kept if either name matches.

Waiting sleeps on the backend's :meth:`~nameplate.backends.base.Backend.wait_for_commit` and reads the
log only after a commit; each read covers the revisions committed since the last one (up to the newest
revision read in the same snapshot), so a waiter never rescans what it has already judged.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import _layers
from ._eventlog import _check_revision
from ._records import Event, utc
from ._store import Store
from ._validation import check_kind_name, check_name, check_seconds, check_workspace_name
from .backends.base import Backend, Tx
from .errors import InvalidInputError

_COLUMNS = "rev, at, action, workspace, kind, name, entry_id, session_id, actor, detail"
_NEWEST = "SELECT coalesce(max(rev), 0) FROM event"
#: Events read per query while catching up.
_PAGE = 500


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a watcher wants; ``None`` fields match everything. ``workspaces`` is a set of
    event workspaces (one for ``follow(workspace=)``, the ancestry chain for ``wait_for_change``)."""

    name: str | None = None
    prefix: str | None = None
    kind: str | None = None
    workspaces: tuple[str, ...] | None = None

    @property
    def everything(self) -> bool:
        return self.name is None and self.prefix is None and self.kind is None and self.workspaces is None

    def sql(self) -> tuple[str, list[object]]:
        """The WHERE clause after ``rev > ? AND rev <= ?``, and its parameters."""
        clauses: list[str] = []
        params: list[object] = []
        if self.name is not None:
            clauses.append("(name = ? OR action = 'rename')")
            params.append(self.name)
        if self.prefix is not None:
            # substr() counts characters on SQLite and PostgreSQL alike; a range on the name would
            # depend on the database's collation.
            clauses.append("(substr(name, 1, ?) = ? OR action = 'rename')")
            params.extend([len(self.prefix), self.prefix])
        if self.kind is not None:
            clauses.append("kind = ?")
            params.append(self.kind)
        if self.workspaces is not None:
            clauses.append(f"workspace IN ({', '.join('?' for _ in self.workspaces)})")
            params.extend(self.workspaces)
        return "".join(f" AND {c}" for c in clauses), params

    def matches_names(self, event: Event) -> bool:
        """The part SQL leaves to Python: a rename matches by its new or its old name."""
        names = [event.name]
        if event.action == "rename":
            names.append(event.detail.get("old_name"))
        if self.name is not None and self.name not in names:
            return False
        return self.prefix is None or any(isinstance(n, str) and n.startswith(self.prefix) for n in names)


def event_filter(name: str | None = None, prefix: str | None = None, kind: str | None = None,
                 workspace: str | None = None) -> EventFilter:
    """A checked filter (names in NFC, as entries store them)."""
    if prefix is not None:
        if not isinstance(prefix, str) or not prefix:
            raise InvalidInputError(f"prefix must be a non-empty string, not {prefix!r}", prefix=repr(prefix))
        prefix = unicodedata.normalize("NFC", prefix)
    return EventFilter(
        name=None if name is None else check_name(name),
        prefix=prefix,
        kind=None if kind is None else check_kind_name(kind),
        workspaces=None if workspace is None else (check_workspace_name(workspace),),
    )


def _decode(row: Sequence[Any]) -> Event:
    rev, at, action, workspace, kind, name, entry_id, session_id, actor, detail = row
    return Event(rev=int(rev), at=utc(float(at)), action=action, workspace=workspace, kind=kind, name=name,
                 entry_id=entry_id, session_id=session_id, actor=actor, detail=json.loads(detail))


def _read(tx: Tx, after: int, upto: int, flt: EventFilter, limit: int) -> list[Event]:
    where, params = flt.sql()
    rows = tx.execute(f"SELECT {_COLUMNS} FROM event WHERE rev > ? AND rev <= ?{where} ORDER BY rev LIMIT ?",
                      [after, upto, *params, limit]).fetchall()
    return [_decode(row) for row in rows]


def scan(backend: Backend, after: int, flt: EventFilter) -> tuple[list[Event], int, bool]:
    """Matching events after ``after`` committed by now (at most a page), the revision up to which the
    log was judged (the next scan starts there), and whether that is the newest revision."""
    with backend.read() as tx:
        newest = int(tx.execute(_NEWEST).fetchone()[0])
        if newest <= after:
            return [], after, True
        events = _read(tx, after, newest, flt, _PAGE)
    judged = events[-1].rev if len(events) == _PAGE else newest
    return [e for e in events if flt.matches_names(e)], judged, judged == newest


def changes(backend: Backend, since: int, limit: int | None, flt: EventFilter) -> list[Event]:
    """Matching events with a revision above ``since``, oldest first, at most ``limit``."""
    _check_revision(since, "since")
    if limit is not None:
        _check_revision(limit, "limit")
    found: list[Event] = []
    after, caught_up = since, False
    while not caught_up and (limit is None or len(found) < limit):
        events, after, caught_up = scan(backend, after, flt)
        found.extend(events)
    return found if limit is None else found[:limit]


def _newest(backend: Backend) -> int:
    return int(backend.query_one(_NEWEST)[0])


def follow(backend: Backend, since: int | None, *, interval: float, stop: Callable[[], bool] | None,
           flt: EventFilter) -> Iterator[Event]:
    """Yield matching events after ``since`` (default: from now on) as they commit, until ``stop()``.

    Arguments are checked at the call, not at the first ``next()``.
    """
    interval = check_seconds(interval, "interval")
    if since is not None:
        _check_revision(since, "since")
    return _follow(backend, since, interval, stop, flt)


def _follow(backend: Backend, since: int | None, interval: float, stop: Callable[[], bool] | None,
            flt: EventFilter) -> Iterator[Event]:
    signal = backend.commit_signal()  # before the first read: a commit after it changes the signal
    after = _newest(backend) if since is None else since
    while True:
        events, after, caught_up = scan(backend, after, flt)
        yield from events
        if not caught_up:
            continue  # more than a page behind: catch up before sleeping
        while True:  # the log is read again only after a commit
            if stop is not None and stop():
                return
            now = backend.wait_for_commit(signal, interval)
            if now != signal:
                signal = now
                break


def wait_for_change(backend: Backend, store: Store, workspace: str, name: str, kind: str, since: int | None,
                    timeout: float | None) -> Event | None:
    """The first event after ``since`` that changes ``(kind, name)`` as ``workspace`` sees it (in that
    workspace or an ancestor it inherits from), waiting up to ``timeout`` seconds; ``None`` if none came."""
    if since is not None:
        _check_revision(since, "since")
    if timeout is not None:
        timeout = check_seconds(timeout, "timeout", zero=True)
    signal = backend.commit_signal()
    with backend.read() as tx:
        store.kind_id(tx, kind)  # unknown kinds and workspaces are errors, not an endless wait
        chain = tuple(_layers.chain(tx, store, workspace))
        after = int(tx.execute(_NEWEST).fetchone()[0]) if since is None else since
    flt = EventFilter(name=name, kind=kind, workspaces=chain)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        events, after, caught_up = scan(backend, after, flt)
        if events:
            return events[0]
        if not caught_up:
            continue
        remaining = 3600.0 if deadline is None else deadline - time.monotonic()
        if remaining <= 0:
            return None
        signal = backend.wait_for_commit(signal, remaining)
