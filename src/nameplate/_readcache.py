"""The read cache: repeated lookups and resolves of existing names answered without a query.

Guarantee (DESIGN's terms): an answer from the cache is never older than the last commit that a
fresh read, made at the start of the call, would see. Before every hit the cache asks the backend's
commit signal (on SQLite the WAL-index header that every commit rewrites, read from a shared mapping
of ``-shm`` in about 0.1 us; ``PRAGMA data_version``, about 2 us, where there is no usable ``-shm``);
when anything committed since, it reads the event log's newest revision, and empties itself only if
that moved, and moved by more than the thread's own last commit when that one left every kept answer
true (a create of a name with no cached miss, a metadata merge; ``ReadCache.wrote``). Every change to
which name maps to which id (create, rename, delete, hide, unhide, promote, import, a reaped session's
ephemeral entries, kind and workspace changes) logs an event in its own transaction, so an unchanged
revision means unchanged answers; heartbeats, lease renewals and usage stamps log none and leave the
cache warm.

What is cached: ids (``lookup``), the probe row of ``resolve`` (id, stored metadata, usage stamp) and
the name pattern a create checks outside the lock (confirmed under it),
never a full ``Entry`` (``get`` returns ``last_seen_at``, which changes without an event). Per
process and per thread (each thread's connection has its own ``data_version``), bounded to
``capacity`` answers per thread, emptied in a forked child, off with ``Registry(cache=False)``, and off
on backends whose commit signal costs a round trip (PostgreSQL: ``Backend.cheap_commit_signal``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Hashable
from typing import Any

from . import _fork
from .backends.base import Backend

#: The newest revision; an indexed max over the event table's primary key (one page read).
_REVISION = "SELECT max(rev) FROM event"

#: Answers kept per thread before the oldest are dropped.
DEFAULT_CAPACITY = 4096

_caches: weakref.WeakSet[ReadCache] = weakref.WeakSet()


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.answers: dict[Hashable, Any] = {}
        self.signal: Hashable = None
        self.revision: Any = -1
        #: The newest revision written by this thread's own last commit, when that commit was the only
        #: change since ``revision`` and left every kept answer true (see ReadCache.wrote).
        self.own: Any = None
        #: Names with an answer that a create of the name would falsify: a cached miss, or a lookup
        #: without a kind (a second kind makes it ambiguous).
        self.fragile: set[str] = set()

    def clear(self) -> None:
        self.answers.clear()
        self.fragile.clear()


class ReadCache:
    """Answers of this process's threads, each checked against the commit signal before use."""

    def __init__(self, backend: Backend, capacity: int = DEFAULT_CAPACITY) -> None:
        self._backend = backend
        self._capacity = capacity
        self._state = _ThreadState()
        _caches.add(self)

    def answers(self) -> dict[Hashable, Any]:
        """This thread's answers, valid now: emptied first if an entry-changing commit happened."""
        state = self._state
        signal = self._backend.commit_signal()
        if signal != state.signal:
            # Revision after the signal: a commit in between makes the revision newer than the signal,
            # so the next call looks again (and finds the revision unchanged), never the reverse.
            revision = self._backend.query_one(_REVISION)[0]
            if revision != state.revision:
                if revision != state.own:
                    state.clear()
                state.revision = revision
            state.own = None
            state.signal = signal
        return state.answers

    def remember(self, answers: dict[Hashable, Any], key: Hashable, value: Any,
                 fragile: str | None = None) -> None:
        """Keep ``value`` for ``key`` in ``answers`` (from :meth:`answers` of this same call);
        ``fragile`` names the entry name whose creation would make the answer false."""
        state = self._state
        if len(answers) >= self._capacity:
            # Start over rather than evict one by one: deleting a dict's oldest keys leaves holes that
            # the next search for the oldest walks again (over 10k names cycling through 4,096 slots a
            # resolve cost 4x the floor); a working set that fits never gets here.
            state.clear()
        answers[key] = value
        if fragile is not None:
            state.fragile.add(fragile)

    def wrote(self, revision: int, created: str | None) -> None:
        """This thread just committed one event, ``revision``: the create of the name ``created``, or
        (``None``) a change that no kept answer shows (a metadata merge, whose probe the writer dropped).

        When the event directly follows the revision the answers are valid at (nobody else's event
        came in between), the answers stay: the next :meth:`answers` finds the log at ``revision``
        and keeps them, unless another event landed meanwhile. Otherwise that call empties them.
        """
        state = self._state
        if revision == (state.revision or 0) + 1 and (created is None or created not in state.fragile):
            state.own = revision

    def _forget_after_fork(self) -> None:
        self._state = _ThreadState()


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._forget_after_fork()


_fork.in_child("connections", _after_fork_in_child)
