"""Counting semaphores: at most N holders at once, each holding a fenced lease.

A semaphore ``NAME`` is an entry of kind ``semaphore`` whose metadata holds its ``limit``, and N slot
entries ``NAME#1`` .. ``NAME#N``. Holding the semaphore is holding the lease of one slot, so everything
a lease guarantees holds for each holder: a fencing token (per slot), ``lost`` and ``on_lost`` when it
goes, a dead holder's slot free at once, a hung one's after its ttl and lock-delay, a ttl of its own
(``ttl=``). Waiters queue on the semaphore entry in arrival order and take whichever slot frees first.

The limit is fixed when the semaphore is first used: asking with another limit raises
:class:`SemaphoreLimitError`, as Consul's semaphore refuses a limit conflict.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ._lease import Lease
from ._leasing import Leasing, Slots, WorkspaceOf, check_wait
from ._session import Session
from ._store import LocalRow, Store
from ._validation import check_name, check_seconds
from .backends.base import Backend, Tx
from .errors import ConflictError, InvalidInputError, InvalidNameError, SemaphoreLimitError

KIND = "semaphore"
#: More slots than this is a pool, not a semaphore: every attempt reads each slot under the write lock.
MAX_LIMIT = 256
_METADATA = "SELECT metadata FROM entry WHERE pk = ?"


def slot_names(name: str, limit: int) -> list[str]:
    return [f"{name}#{index}" for index in range(1, limit + 1)]


class Semaphores:
    """``registry.semaphore(name, limit=N)``: one slot of N, as a fenced lease."""

    def __init__(self, backend: Backend, store: Store, leasing: Leasing, workspace_of: WorkspaceOf) -> None:
        self._backend = backend
        self._store = store
        self._leasing = leasing
        self._ws = workspace_of

    def acquire(self, name: str, limit: int, wait: float | None, *, workspace: str | None,
                ttl: float | None, on_lost: Callable[[Lease], Any] | None) -> Lease:
        ws = self._ws(workspace)
        name = check_name(name)
        if "#" in name:
            raise InvalidNameError(f"semaphore name {name!r} contains '#', which names its slots; choose another",
                                   name=name)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidInputError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}",
                                    limit=repr(limit))
        check_wait(wait)
        if ttl is not None:
            ttl = check_seconds(ttl, "ttl")
        self._create(ws, name, limit)

        def prepare(tx: Tx, session: Session) -> Slots:
            anchor = self._store.visible_row(tx, ws, name, KIND, "take a slot of")
            _check_limit(name, _stored_limit(tx, anchor), limit)
            names = slot_names(name, limit)
            slots = [self._store.visible_row(tx, ws, slot, KIND, "take") for slot in names]
            return Slots(anchor, name, limit, slots, names)

        return self._leasing.hold(name, wait, prepare, ttl=ttl, on_lost=on_lost)

    def _create(self, ws: str, name: str, limit: int) -> None:
        """Make the semaphore's entries that do not exist yet, in one transaction; a semaphore made with
        another limit is refused before anything is written."""
        names = [name, *slot_names(name, limit)]
        probe = self._store.lookup
        existing = probe(ws, name, KIND)
        if existing is not None and all(probe(ws, slot, KIND) is not None for slot in names[1:]):
            return  # every attempt checks the stored limit under the write lock
        patterns = {entry: self._store.checked_pattern(ws, KIND, entry) for entry in names}
        with self._backend.write() as tx:
            for entry in names:
                found = self._store.find_or_create(tx, ws, entry, KIND, {"limit": limit} if entry == name else None,
                                                   patterns[entry])
                if found is None:
                    raise ConflictError(f"kind {KIND!r} changed while semaphore {name!r} was being created; retry",
                                        kind=KIND)
                if entry == name:
                    _check_limit(name, _limit_of(found.metadata, limit), limit)


def _stored_limit(tx: Tx, anchor: LocalRow) -> int | None:
    return _limit_of(tx.execute(_METADATA, (anchor.pk,)).fetchone()[0], None)


def _limit_of(metadata_text: str | None, default: int | None) -> int | None:
    if metadata_text is None:
        return default  # just created, with the limit asked for
    limit = json.loads(metadata_text).get("limit")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def _check_limit(name: str, stored: int | None, asked: int) -> None:
    if stored != asked:
        raise SemaphoreLimitError(
            f"semaphore {name!r} has limit {stored!r}, not {asked}; every holder must ask with the same limit "
            "(to change it, delete its entries while nobody holds a slot)", name=name, limit=stored, asked=asked)
