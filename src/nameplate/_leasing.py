"""Sessions, leases and the process registry (guarantees 3 and 4), and the lease guard of entry writes."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from . import _fork
from ._lease import Delayed, HeldByThread, Holder, Lease, Queued, ReapFirst, find_holder, reap_holder, try_acquire
from ._records import Entry
from ._session import (
    HeldLease,
    Session,
    SessionInfo,
    default_label,
    list_leases,
    list_sessions,
    reap,
)
from ._store import _PROBE_KIND as _PROBE_NAME
from ._store import ENTRY_COLUMNS, Guard, LocalRow, Resolved, Store, decode_entry
from ._validation import check_kind_name, check_name, check_seconds
from ._waiting import NO_TICKET, Ticket, enqueue, free_and_first, leave, pause, still_waiting, waiter_ahead
from .backends.base import Backend, Tx
from .errors import (
    ConflictError,
    InvalidInputError,
    LeaseHeldError,
    NameplateError,
    NotLeaseHolderError,
)

DEFAULT_TTL = 15.0
DEFAULT_LOCK_DELAY = 15.0  # Consul's default lock-delay
#: A guarded write meets a dead holder's ephemeral row at most once per such holder; a few suffice.
_REAP_ATTEMPTS = 3
T = TypeVar("T")

log = logging.getLogger("nameplate.lease")


@dataclass(frozen=True, slots=True)
class Slots:
    """A semaphore as one attempt sees it: the entry that holds its limit and queue, and its slots."""

    anchor: LocalRow
    name: str
    limit: int
    slots: list[LocalRow]
    names: list[str]


#: What one attempt comes back with (None: our own session was ended meanwhile).
Attempt = Lease | Holder | Delayed | HeldByThread | Queued | None


_open_leasings: weakref.WeakSet[Leasing] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread may have been inside session() when the process forked; that thread does not
    # exist in the child, so the lock would never be released. (Sessions themselves are abandoned
    # by _session's own at-fork handler.)
    for leasing in list(_open_leasings):
        leasing._session_lock = threading.Lock()


_fork.in_child("locks", _after_fork_in_child)

#: Picks the workspace of a call (the explicit one, else the active one) and refuses a closed
#: registry: the Registry's rule, handed to each feature.
WorkspaceOf = Callable[[str | None], str]


class Leasing:
    """Sessions (this process, alive), leases (exclusive and fenced) and the process registry, and
    the lease guard that every other feature's entry writes go through."""

    def __init__(self, backend: Backend, store: Store, workspace_of: WorkspaceOf, *, ttl: float,
                 lock_delay: float, label: str | None) -> None:
        # ttl, lock_delay and label arrive checked: Registry refuses bad ones before opening the file.
        self._backend = backend
        self._store = store
        self._ws = workspace_of
        self._ttl = ttl
        self._lock_delay = lock_delay
        self._label = label or default_label()
        self._session_obj: Session | None = None
        self._session_lock = threading.Lock()
        self._beat_hooks: list[Callable[[], None]] = []
        _open_leasings.add(self)

    def on_beat(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` in the heartbeat thread after every renewal of this process's session."""
        self._beat_hooks.append(hook)

    def close(self) -> None:
        """End this process's session (its leases and ephemeral entries go with it)."""
        _open_leasings.discard(self)
        session, self._session_obj = self._session_obj, None
        if session is not None:
            session.close()

    def session_id(self) -> str | None:
        """The id of the open, usable session, if any (the actor of the event log)."""
        session = self._session_obj
        return session.id if session is not None and session.usable else None

    # -- sessions --------------------------------------------------------------------------------

    def session(self, *, label: str | None = None, ttl: float | None = None, status: str = "starting",
                info: Mapping[str, Any] | None = None) -> Session:
        self._ws(None)  # refuses a closed registry
        with self._session_lock:
            current = self._session_obj
            if current is not None and current.usable:
                return current
            if current is not None and not current.closed and current.pid == os.getpid():
                current.close()  # lost: end it cleanly (it frees nothing it no longer holds)
            self._session_obj = Session(
                self._backend, self._store, label=label or self._label,
                ttl=self._ttl if ttl is None else check_seconds(ttl, "ttl"), status=status, info=info or {},
                lock_delay=self._lock_delay, beat_hooks=self._beat_hooks)
            return self._session_obj

    def sessions(self, alive: bool = True) -> list[SessionInfo]:
        self._ws(None)
        with self._backend.read():
            return list_sessions(self._backend, alive=alive)

    def reap(self) -> list[str]:
        self._ws(None)
        return reap(self._backend, self._store, lock_delay=self._lock_delay)

    # -- leases ----------------------------------------------------------------------------------

    def acquire(self, name: str, kind: str | None = None, wait: float | None = None, *,
                workspace: str | None = None, on_lost: Callable[[Lease], Any] | None = None,
                ttl: float | None = None) -> Lease:
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        check_wait(wait)
        if ttl is not None:
            ttl = check_seconds(ttl, "ttl")
        current = self._session_obj
        if current is None or not current.usable:
            # Opening a session is a write of its own: refuse an unknown name before making it.
            with self._backend.read() as tx:
                self._store.visible_row(tx, ws, name, kind, "lease")
        lease = self._acquire(name, wait, on_lost, lambda tx, session: self._store.visible_row(
            tx, ws, name, kind, "lease"), ttl=ttl)
        assert lease is not None, "visible_row raises rather than returning None"
        return lease

    def resolve_locked(self, ws: str, name: str, kind: str, metadata: dict[str, Any] | None,
                        wait: float | None, ephemeral: bool, sole_name: bool = False) -> str:
        """``resolve(..., lock=True)``: find or create the entry, take its lease and merge the metadata,
        all in one transaction, so that a caller who cannot get the lease changes nothing."""
        check_wait(wait)
        pattern = None
        if self._store.backend.query_one(_PROBE_NAME, (ws, name, kind)) is None:
            pattern = self._store.checked_pattern(ws, kind, name)  # user input: outside the lock
        found: list[Resolved] = []

        def prepare(tx: Tx, session: Session) -> LocalRow | None:
            resolved = self._store.find_or_create(tx, ws, name, kind, metadata, pattern,
                                                  owner_session_id=session.id if ephemeral else None,
                                                  ephemeral=ephemeral, sole_name=sole_name)
            if resolved is None:
                return None
            found[:] = [resolved]
            return self._store.visible_row(tx, ws, name, kind, "lease")

        def merge(tx: Tx, lease: Lease) -> None:
            if not found[0].created:  # the lease is ours now: the guard has nothing to refuse
                self._store.refresh(tx, found[0], ws, name, kind, metadata, guard=None)

        for _ in range(3):
            lease = self._acquire(name, wait, None, prepare, after=merge)
            if lease is not None:
                return lease.entry_id
            pattern = self._store.checked_pattern(ws, kind, name)  # the kind changed meanwhile
        raise ConflictError(f"kind {kind!r} kept changing while {name!r} was being created; retry", kind=kind)

    def _acquire(self, name: str, wait: float | None, on_lost: Callable[[Lease], Any] | None,
                 prepare: Callable[[Tx, Session], LocalRow | Slots | None],
                 after: Callable[[Tx, Lease], None] | None = None, ttl: float | None = None) -> Lease | None:
        """The acquire loop: ``prepare`` names the row (or a semaphore's slots) inside each attempt's write
        transaction (None: give up, nothing written), ``after`` runs in the transaction that took (or
        re-entered) the lease.

        Fair: a caller that is going to wait takes a ticket in the queue of the entry (or semaphore) in
        its first failed attempt, and a free lease goes to the oldest live ticket (see ``_waiting``).
        Between attempts it waits outside any transaction, waking when anything commits.
        """
        deadline = None if wait is None else time.monotonic() + wait
        ticket: Ticket | None = None
        try:
            while True:
                session = self.session()
                if ticket is not None and ticket.session_id != session.id:
                    ticket = None  # that session ended, and its tickets with it: queue again
                try:
                    with self._backend.write() as tx:
                        target = prepare(tx, session)
                        if target is None:
                            return None
                        anchor = target.anchor if isinstance(target, Slots) else target
                        seq = None if ticket is None else ticket.seq
                        ahead = self._queue_check(tx, anchor.pk, NO_TICKET if seq is None else seq)
                        if isinstance(target, Slots):
                            outcome, mine = self._attempt_slots(tx, session, name, target, on_lost, ttl, ahead, seq)
                        else:
                            outcome, mine = self._attempt_one(tx, session, name, target, on_lost, ttl, ahead, seq)
                        if isinstance(outcome, Lease):
                            if after is not None:
                                try:
                                    after(tx, outcome)
                                except BaseException:
                                    if outcome is mine:
                                        mine.leave()
                                    raise
                            if ticket is not None:
                                leave(tx, ticket)
                        elif outcome is not None and deadline is not None and deadline > time.monotonic():
                            if ticket is None:
                                ticket = enqueue(tx, anchor.pk, session.id, self._store.backend.clock(tx))
                            else:
                                still_waiting(tx, ticket, session.ttl, self._store.backend.clock(tx))
                except ReapFirst as first:  # a dead holder's ephemeral row: reap it on its own, then retry
                    self._reap_first(first)
                    continue
                if isinstance(outcome, Lease):
                    ticket = None  # served: its row went in the committed transaction
                    if outcome is not mine:
                        session.track(outcome)
                        outcome.schedule_expiry()
                    return outcome
                if outcome is None:  # our session was ended under us: the next round opens a new one
                    session._mark_lost("the session was ended by another process")
                    continue
                # Held by a live session or another thread, promised to an earlier waiter, or in
                # lock-delay: wait outside any transaction, or give up.
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is None or remaining <= 0:
                    raise _held_error(name, target, outcome, wait)
                if isinstance(outcome, Delayed):
                    # Nothing a commit could change; wake in time to keep the ticket fresh.
                    time.sleep(min(outcome.seconds, remaining, session.ttl / 4))
                else:
                    rows = target.slots if isinstance(target, Slots) else [target]
                    pause(self._backend, remaining, functools.partial(
                        free_and_first, self._backend, [row.pk for row in rows], anchor.pk,
                        NO_TICKET if ticket is None else ticket.seq))
        finally:
            if ticket is not None:
                self._leave_queue(ticket)

    def _attempt_one(self, tx: Tx, session: Session, name: str, row: LocalRow,
                     on_lost: Callable[[Lease], Any] | None, ttl: float | None,
                     ahead: Callable[[], bool], ticket: int | None) -> tuple[Attempt, Lease | None]:
        """One attempt on one entry's lease, inside the write transaction; also returns this session's own
        lease on it, if any (a re-entry returns that very object)."""
        mine = session.held(row.pk)
        if mine is not None and mine.held and mine.remaining() == 0.0:
            mine.mark_lost(f"its own ttl of {mine.ttl:g} s ran out (refresh() keeps it)")  # before its timer
        if mine is not None and mine.held and mine.owned_here():
            mine.reenter()
            return mine, mine
        if mine is not None and mine.held and mine.owner_thread.is_alive():
            return HeldByThread(mine), mine
        if mine is not None and mine.held:  # its thread ended without releasing it
            self._end_abandoned(tx, session, mine)
        return try_acquire(tx, self._store, session, entry_pk=row.pk, entry_id=row.id, name=name,
                           kind=row.kind, workspace=row.workspace, lock_delay=self._lock_delay,
                           releaser=self._release_lease, on_lost=on_lost, ttl=ttl, waiter_ahead=ahead,
                           ticket=ticket), mine

    def _attempt_slots(self, tx: Tx, session: Session, name: str, slots: Slots,
                       on_lost: Callable[[Lease], Any] | None, ttl: float | None,
                       ahead: Callable[[], bool], ticket: int | None) -> tuple[Attempt, Lease | None]:
        """One attempt at any free slot of a semaphore. A slot this process holds is not free to it (a
        thread may hold several slots; each acquisition takes a new one)."""
        first: Attempt = None
        for slot, slot_name in zip(slots.slots, slots.names, strict=True):
            mine = session.held(slot.pk)
            if mine is not None and mine.held:
                if mine.owner_thread.is_alive():
                    first = first or HeldByThread(mine)
                    continue
                self._end_abandoned(tx, session, mine)
            outcome = try_acquire(tx, self._store, session, entry_pk=slot.pk, entry_id=slot.id, name=slot_name,
                                  kind=slot.kind, workspace=slot.workspace, lock_delay=self._lock_delay,
                                  releaser=self._release_lease, on_lost=on_lost, ttl=ttl, waiter_ahead=ahead,
                                  ticket=ticket)
            if outcome is None or isinstance(outcome, (Lease, Queued)):
                return outcome, None
            first = first or outcome
        return first, None

    def _queue_check(self, tx: Tx, entry_pk: int, seq: int) -> Callable[[], bool]:
        """``waiter_ahead`` for this attempt, asked at most once (a semaphore's slots share the answer)."""
        answer: list[bool] = []

        def ahead() -> bool:
            if not answer:
                answer.append(waiter_ahead(tx, self._store, entry_pk, seq, lock_delay=self._lock_delay))
            return answer[0]

        return ahead

    def _leave_queue(self, ticket: Ticket) -> None:
        """A waiting call ends without the lease: give up its place (if this fails, the place lapses after
        the session's ttl, see ``_waiting``)."""
        try:
            with self._backend.write() as tx:
                leave(tx, ticket)
        except NameplateError as error:
            log.warning("nameplate: could not leave the queue of entry %d: %s", ticket.entry_pk, error)

    def hold(self, name: str, wait: float | None, prepare: Callable[[Tx, Session], LocalRow | Slots], *,
             after: Callable[[Tx, Lease], None] | None = None, ttl: float | None = None,
             on_lost: Callable[[Lease], Any] | None = None) -> Lease:
        """The acquire loop for the features built on leases (semaphores, elections): fenced, fair, and
        freed with dead holders, as every lease."""
        lease = self._acquire(name, wait, on_lost, prepare, after, ttl)
        assert lease is not None, "prepare never gives up here"
        return lease

    def _reap_first(self, first: ReapFirst) -> None:
        reap(self._backend, self._store, lock_delay=self._lock_delay, only=first.session_id)

    def reaping_first(self, operation: Callable[[], T]) -> T:
        """Run a guarded write; if its guard found the row to be a dead holder's ephemeral entry
        (:class:`ReapFirst`), reap that session in its own transaction and run the write again."""
        for _ in range(_REAP_ATTEMPTS):
            try:
                return operation()
            except ReapFirst as first:
                self._reap_first(first)
        return operation()

    def _end_abandoned(self, tx: Tx, session: Session, lease: Lease) -> None:
        """Inside a write transaction: give up a lease whose owning thread ended without releasing it
        (a new acquisition follows, with a new token)."""
        tx.execute("DELETE FROM lease WHERE entry_pk = ? AND session_id = ? AND token = ?",
                   (lease.entry_pk, session.id, lease.token))
        self._store.record(tx, "lease.release", workspace=lease.workspace, kind=lease.kind, name=lease.name,
                           entry_id=lease.entry_id, token=lease.token, session=session.id,
                           reason=f"its thread {lease.owner_thread.name!r} ended without releasing it")
        session.forget(lease)
        lease.mark_lost(f"its thread {lease.owner_thread.name!r} ended without releasing it", notify=False)

    def _release_lease(self, lease: Lease) -> bool:
        if lease.released or lease.lost:
            return False
        session = self._session_obj
        with self._backend.write() as tx:
            gone = tx.execute("DELETE FROM lease WHERE entry_pk = ? AND session_id = ? AND token = ?",
                              (lease.entry_pk, lease.session_id, lease.token)).rowcount
            if gone:
                self._store.record(tx, "lease.release", workspace=lease.workspace, kind=lease.kind,
                                   name=lease.name, entry_id=lease.entry_id, token=lease.token,
                                   session=lease.session_id)
        if session is not None:
            session.forget(lease)
        if not gone:
            lease.mark_lost("the lease was already gone when released (expired or released by force)")
            return False
        lease.mark_released()
        return True

    def lease(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> Lease | None:
        ws = self._ws(workspace)
        session = self._session_obj
        if session is None or not session.usable:
            return None
        with self._backend.read() as tx:
            row = self._store.visible_row(tx, ws, name, kind, "find the lease of")
        held = session.held(row.pk)
        return held if held is not None and held.held and held.owned_here() else None

    def release(self, name: str, kind: str | None = None, *, force: bool = False,
                workspace: str | None = None) -> bool:
        ws = self._ws(workspace)
        name = check_name(name)
        own = self.lease(name, kind, workspace=ws)
        if own is not None:
            return own.release()
        with self._backend.write() as tx:
            row = self._store.visible_row(tx, ws, name, kind, "release")
            holder = tx.execute("SELECT l.session_id, l.token, s.pid, s.hostname, s.label FROM lease AS l "
                                "JOIN session AS s ON s.id = l.session_id WHERE l.entry_pk = ?", (row.pk,)).fetchone()
            if holder is None:
                return False
            session = self._session_obj
            ours = session.held(row.pk) if session is not None and holder[0] == session.id else None
            if not force:
                who = (HeldByThread(ours).describe() if ours is not None else
                       f"pid {holder[2]} on {holder[3]} ({holder[4]}), not by this process")
                raise NotLeaseHolderError(
                    f"{row.kind} {name!r} is held by {who}; only the holder releases (operators: release(..., "
                    "force=True) or `nameplate release --force`)", name=name, kind=row.kind,
                    holder_session=holder[0])
            tx.execute("DELETE FROM lease WHERE entry_pk = ?", (row.pk,))
            self._store.record(tx, "lease.break", workspace=row.workspace, kind=row.kind, name=name,
                               entry_id=row.id, token=int(holder[1]), session=holder[0], holder_pid=int(holder[2]),
                               holder_host=holder[3])
        if ours is not None:  # broken from another thread of this process: tell the holder now
            session.forget(ours)  # type: ignore[union-attr]
            ours.mark_lost("released by force from another thread of this process")
        return True

    def locks(self) -> list[HeldLease]:
        self._ws(None)
        with self._backend.read():
            return list_leases(self._backend)

    def guard(self, tx: Tx, entry_pk: int, entry_id: str, kind: str, lease: Lease | None = None) -> None:
        """The one lease guard of every write that changes an existing entry (see ``Store.Guard``).

        Passes when nobody holds the entry, when the holder's process is gone (reaped here, in this
        transaction), or when this session holds it and the caller is the owning thread or brings the
        lease (a fenced write, checked by the caller). Raises :class:`LeaseHeldError` otherwise.
        """
        holder = find_holder(tx, entry_pk)
        if holder is None:
            return
        session = self._session_obj
        if session is not None and holder.session_id == session.id and session.usable:
            mine = session.held(entry_pk)
            if lease is not None or mine is None or mine.owned_here() or not mine.owner_thread.is_alive():
                return
            raise LeaseHeldError(
                f"{kind} {entry_id} is leased by {HeldByThread(mine).describe()}; only the thread holding it may "
                "change it (pass lease= to write with it from this thread)", holder=HeldByThread(mine).describe())
        # A holder that died (or stopped beating) must not pin the entry: free it in this transaction.
        if reap_holder(tx, self._store, entry_pk, holder, lock_delay=self._lock_delay):
            return
        described = holder.describe()
        raise LeaseHeldError(
            f"{kind} {entry_id} is leased by pid {described['pid']} on {described['host']} "
            f"({described['label']}) since {described['since']}; only the holder may change it (wait for its "
            "release, or break it with release(..., force=True))", holder=described)

    def guard_removal(self, ended: list[Lease]) -> Guard:
        """The lease guard of a write that removes the entry row (``delete``): the holder may delete its
        own leased entry, and the lease then ends in the same transaction with a ``lease.release`` event,
        so the log never shows a lease that vanished with its row. The ended leases are appended to
        ``ended``, to be marked released once the transaction commits."""

        def guard_and_end(tx: Tx, entry_pk: int, entry_id: str, kind: str) -> None:
            self.guard(tx, entry_pk, entry_id, kind)
            row = tx.execute("SELECT session_id, token FROM lease WHERE entry_pk = ?", (entry_pk,)).fetchone()
            if row is None:
                return
            session_id, token = str(row[0]), int(row[1])
            named = tx.execute("SELECT w.name, e.name FROM entry AS e JOIN workspace AS w ON w.id = e.workspace_id "
                               "WHERE e.pk = ?", (entry_pk,)).fetchone()
            tx.execute("DELETE FROM lease WHERE entry_pk = ?", (entry_pk,))
            self._store.record(tx, "lease.release", workspace=named[0], kind=kind, name=named[1],
                               entry_id=entry_id, token=token, session=session_id, reason="its entry was deleted")
            session = self._session_obj
            mine = session.held(entry_pk) if session is not None and session.id == session_id else None
            if mine is not None:
                ended.append(mine)

        return guard_and_end

    def finish_removal(self, ended: list[Lease]) -> None:
        session = self._session_obj
        for lease in ended:
            if session is not None:
                session.forget(lease)
            lease.mark_released()

    # -- stale entries ---------------------------------------------------------------------------

    def clean_stale(self, older_than: timedelta = timedelta(days=7), dry_run: bool = False,
                    kinds: Sequence[str] | None = None) -> list[Entry]:
        self._ws(None)
        if not isinstance(older_than, timedelta) or older_than.total_seconds() <= 0:
            raise InvalidInputError(f"older_than must be a positive timedelta, not {older_than!r}",
                                    older_than=str(older_than))
        cutoff = time.time() - older_than.total_seconds()
        select = (f"SELECT {ENTRY_COLUMNS} FROM entry AS r JOIN kind AS k ON k.id = r.kind_id "
                  "JOIN workspace AS w ON w.id = r.workspace_id WHERE r.hidden = 0 AND r.last_seen_at < ? "
                  "AND NOT EXISTS (SELECT 1 FROM lease AS l WHERE l.entry_pk = r.pk)")
        params: tuple[Any, ...] = (cutoff,)
        if kinds is not None:
            select += f" AND k.name IN ({','.join('?' * len(kinds))})"
            params += tuple(kinds)
        select += " ORDER BY w.name, k.name, r.name"
        if dry_run:
            with self._backend.read() as tx:
                return [decode_entry(row) for row in tx.execute(select, params).fetchall()]
        with self._backend.write() as tx:
            rows = tx.execute(select, params).fetchall()
            for row in rows:
                tx.execute("DELETE FROM entry WHERE pk = ?", (row[0],))
                self._store.record(tx, "delete", workspace=row[4], kind=row[3], name=row[2], entry_id=row[1],
                                   reason=f"stale: not seen for over {_human_duration(older_than)}")
        return [decode_entry(row) for row in rows]


def check_wait(wait: object) -> None:
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0):
        raise InvalidInputError(f"wait must be None or a number of seconds >= 0, not {wait!r}", wait=wait)


def _held_error(name: str, target: LocalRow | Slots, outcome: Holder | Delayed | HeldByThread | Queued,
                wait: float | None) -> LeaseHeldError:
    waited = "" if wait is None else f" after waiting {wait:g} s"
    if isinstance(target, Slots):
        return LeaseHeldError(
            f"all {target.limit} slots of semaphore {target.name!r} are taken{waited}"
            + (" (one is in lock-delay)" if isinstance(outcome, Delayed) else "")
            + ("; earlier waiters come first" if isinstance(outcome, Queued) else "")
            + "; pass wait=seconds to wait for one", name=name, holder=None)
    if isinstance(outcome, Queued):
        return LeaseHeldError(f"{target.kind} {name!r} is free but promised to an earlier waiter{waited} (waiters "
                              "are served in arrival order); pass wait=seconds to wait for your turn", name=name,
                              holder=None)
    if isinstance(outcome, HeldByThread):
        return LeaseHeldError(f"{target.kind} {name!r} is held by {outcome.describe()}{waited}; a lease is exclusive "
                              "between threads too (pass wait=seconds to wait for it)", name=name,
                              holder=outcome.describe())
    if isinstance(outcome, Delayed):
        return LeaseHeldError(
            f"{target.kind} {name!r} is in lock-delay for {outcome.seconds:.1f} s more{waited}: its last holder's "
            "session expired (it may be hung, not dead); retry later or pass wait=", name=name, holder=None,
            delay_remaining=outcome.seconds)
    holder = outcome.describe()
    return LeaseHeldError(
        f"{target.kind} {name!r} is held by pid {holder['pid']} on {holder['host']} ({holder['label']}) since "
        f"{holder['since']}{waited}; pass wait=seconds to wait for it", name=name, holder=holder)


def _human_duration(span: timedelta) -> str:
    """``7 days``, ``12 h``, ``90 s``: how an operator wrote it, not timedelta's ``7 days, 0:00:00``."""
    seconds = span.total_seconds()
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"
