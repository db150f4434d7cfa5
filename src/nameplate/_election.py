"""Leader election on fenced leases (etcd's ``concurrency.Election``, Consul's leader election guide).

An election ``NAME`` is an entry of kind ``election``. The leader is the holder of its lease, and the
lease's fencing token is the leader's term: it grows by one at every new leader and is never reused,
so anything the leader writes elsewhere can carry the term and a stale leader's writes can be told
apart. The transaction that grants the lease also writes ``{"leader": value, "term": term}`` into the
entry's metadata (logged as a fenced ``update``), so the leader's value and its term change together.

Campaigners queue in arrival order (fair waiting). A leader whose process dies is replaced as soon as
the next campaigner's attempt finds it dead; one that hangs (``SIGSTOP``) loses its lease after its
session's ttl and the lock-delay, and learns it when it resumes (``lost``, ``on_lost``, :class:`LeaseLost`
from fenced writes), as every lease holder does. :meth:`Elections.leader` judges the holder alive
before naming it, so a dead leader is never reported as leading.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ._lease import Lease, find_holder
from ._leasing import Leasing, WorkspaceOf, check_wait
from ._liveness import verdict
from ._records import utc
from ._session import Session
from ._store import LocalRow, Store
from ._validation import canonical_json, check_json_value, check_name, check_seconds, encode_object
from ._waiting import pause
from .backends.base import Backend, Tx
from .errors import EntryNotFoundError, InvalidInputError, InvalidMetadataError, LeaseHeldError

KIND = "election"
_METADATA = "SELECT metadata FROM entry WHERE pk = ?"


@dataclass(frozen=True, slots=True)
class Leader:
    """Who leads an election: its ``value``, its ``term`` (the lease's fencing token) and its process."""

    name: str
    value: Any
    term: int
    pid: int
    hostname: str
    session_id: str
    since: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "term": self.term, "pid": self.pid,
                "hostname": self.hostname, "session_id": self.session_id, "since": self.since.isoformat()}


class Leadership:
    """This process leads an election. Use as a context manager (resigning on exit) or call :meth:`resign`.

    ``term`` is the fencing token of the leadership: stamp it on what the leader writes elsewhere.
    ``lost`` becomes true the moment the leadership is found gone (``lost_event`` can be waited on,
    ``on_lost`` is called once); :meth:`check` raises :class:`LeaseLost` then. ``lease`` is the
    underlying :class:`Lease`, for fenced writes (``registry.update(..., lease=leadership.lease)``).
    """

    def __init__(self, elections: Elections, lease: Lease, value: Any, workspace: str) -> None:
        self._elections = elections
        self.lease = lease
        self.name = lease.name
        self.value = value
        self.term = lease.token
        self.workspace = workspace

    @property
    def lost(self) -> bool:
        return self.lease.lost

    @property
    def lost_event(self) -> threading.Event:
        return self.lease.lost_event

    @property
    def held(self) -> bool:
        """True while neither resigned nor lost (as far as this process knows; :meth:`check` asks the db)."""
        return self.lease.held

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the database still shows this leadership."""
        self.lease.check()

    def refresh(self) -> float | None:
        """Renew a leadership taken with ``campaign(..., ttl=S)`` for S seconds from now (see
        :meth:`Lease.refresh`); return the seconds left (None without a ttl of its own)."""
        return self.lease.refresh()

    def proclaim(self, value: Any) -> None:
        """Change the leader's value without a new election (etcd's Proclaim); fenced: :class:`LeaseLost`
        if the leadership is gone, and then nothing is written."""
        check_value(value)
        self._elections.proclaim(self, value)
        self.value = value

    def resign(self) -> bool:
        """Give up the leadership (the next campaigner in line takes over); False if already gone."""
        return self.lease.release()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.resign()

    def __repr__(self) -> str:
        state = "held" if self.held else ("lost" if self.lost else "resigned")
        return f"<Leadership {self.name!r} term={self.term} value={self.value!r} {state}>"


class Elections:
    """``campaign``, ``leader``, ``observe``: leader election on the leases of ``election`` entries."""

    def __init__(self, backend: Backend, store: Store, leasing: Leasing, workspace_of: WorkspaceOf) -> None:
        self._backend = backend
        self._store = store
        self._leasing = leasing
        self._ws = workspace_of

    def campaign(self, name: str, value: Any, *, timeout: float | None, workspace: str | None,
                 ttl: float | None, on_lost: Callable[[Lease], Any] | None) -> Leadership:
        ws = self._ws(workspace)
        name = check_name(name)
        check_value(value)
        check_wait(timeout)
        if ttl is not None:
            ttl = check_seconds(ttl, "ttl")
        self._store.resolve(ws, name, KIND, None, guard=self._leasing.guard)
        rows: list[LocalRow] = []

        def prepare(tx: Tx, session: Session) -> LocalRow:
            row = self._store.visible_row(tx, ws, name, KIND, "campaign in")
            rows[:] = [row]
            return row

        def announce(tx: Tx, lease: Lease) -> None:
            self._store.update_metadata(tx, rows[0], rows[0].workspace, name, {"leader": value, "term": lease.token},
                                        merge=False, token=lease.token)

        try:
            lease = self._leasing.hold(name, math.inf if timeout is None else timeout, prepare, after=announce,
                                       ttl=ttl, on_lost=on_lost)
        except LeaseHeldError as error:
            current = self.leader(name, workspace=ws)
            led = ("nobody leads it right now (a leader just left, or earlier campaigners are taking over)"
                   if current is None else f"it is led by pid {current.pid} on {current.hostname} in term "
                   f"{current.term}")
            raise LeaseHeldError(f"not leading election {name!r} after waiting {timeout:g} s: {led}; campaign "
                                 "again, or with a longer timeout", name=name, holder=error.facts.get("holder"),
                                 leader=None if current is None else current.to_dict()) from None
        return Leadership(self, lease, value, ws)

    def proclaim(self, leadership: Leadership, value: Any) -> None:
        with self._backend.write() as tx:
            leadership.lease.fence(tx)
            row = self._store.visible_row(tx, leadership.workspace, leadership.name, KIND, "proclaim in")
            self._store.update_metadata(tx, row, row.workspace, leadership.name,
                                        {"leader": value, "term": leadership.term}, merge=False,
                                        token=leadership.term)

    def leader(self, name: str, *, workspace: str | None) -> Leader | None:
        ws = self._ws(workspace)
        name = check_name(name)
        with self._backend.read() as tx:
            return _current(tx, self._store, ws, name)

    def observe(self, name: str, *, workspace: str | None, stop: Callable[[], bool] | None,
                timeout: float | None) -> Iterator[Leader]:
        ws = self._ws(workspace)
        name = check_name(name)
        if timeout is not None:
            check_seconds(timeout, "timeout", zero=True)
        if stop is not None and not callable(stop):
            raise InvalidInputError(f"stop must be a callable returning a bool, not {stop!r}", stop=repr(stop))
        return self._observe(ws, name, stop, None if timeout is None else time.monotonic() + timeout)

    def _observe(self, ws: str, name: str, stop: Callable[[], bool] | None,
                 deadline: float | None) -> Iterator[Leader]:
        last_term: int | None = None
        while stop is None or not stop():
            self._ws(None)  # a closed registry ends the observation with RegistryClosedError
            with self._backend.read() as tx:
                current = _current(tx, self._store, ws, name)
            if current is not None and current.term != last_term:
                last_term = current.term
                yield current
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return
            # A new leader commits its term; a dead one commits nothing, so look again at least every
            # quarter second (the next campaigner's attempt reaps it and commits then).
            pause(self._backend, left)


def check_value(value: Any) -> None:
    """A leader's value is any JSON value (stored in the election entry's metadata, within its size limit)."""
    check_json_value(value, "value")
    try:
        canonical_json(value)
    except (TypeError, ValueError) as error:
        raise InvalidMetadataError(f"value is not JSON-serialisable: {error}; use strings, numbers, booleans, "
                                   "None, lists and dicts", what="value") from None
    encode_object({"leader": value, "term": 0}, "value")


def _current(tx: Tx, store: Store, ws: str, name: str) -> Leader | None:
    try:
        row = store.visible_row(tx, ws, name, KIND, "find the leader of")
    except EntryNotFoundError:
        return None  # nobody ever campaigned here
    holder = find_holder(tx, row.pk)
    now_wall = store.backend.clock(tx)
    if holder is None or holder.overdue(now_wall) or verdict(
            holder.owner, now_wall=now_wall, one_host=store.backend.one_host) is not None:
        return None
    metadata: Mapping[str, Any] = json.loads(tx.execute(_METADATA, (row.pk,)).fetchone()[0])
    if metadata.get("term") != holder.token:
        return None  # held, but not through campaign()
    return Leader(name=name, value=metadata.get("leader"), term=holder.token, pid=holder.owner.pid,
                  hostname=holder.owner.hostname, session_id=holder.session_id, since=utc(holder.acquired_at))
