"""Leases: an exclusive, fenced hold on an entry by a session.

The fencing token is the entry's ``fence`` counter, bumped by one in the acquiring transaction, so it
grows at every acquisition of that entry and is never reused (Consul's LockIndex, ZooKeeper's zxid).
A write made under a lease checks ``(entry, session, token)`` against the lease row inside its own
transaction: a holder that lost its lease cannot write, whatever its clocks say.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._liveness import BOOT_ID, Owner, delay_active, owner_columns
from ._records import utc
from ._session import expire_lease, lease_overdue, reap_if_gone
from .backends.base import Tx
from .errors import LeaseLost

if TYPE_CHECKING:
    from ._session import Session
    from ._store import Store

log = logging.getLogger("nameplate.lease")

_HOLDER = (f"SELECT l.session_id, l.token, l.acquired_at, {owner_columns('s')}, s.label, l.ttl, l.expires_wall,"
           " l.expires_mono FROM lease AS l JOIN session AS s ON s.id = l.session_id WHERE l.entry_pk = ?")
_DELAY = "SELECT until_mono, boot_id, until_wall FROM lock_delay WHERE entry_pk = ?"
_BUMP_FENCE = "UPDATE entry SET fence = fence + 1 WHERE pk = ? RETURNING fence"
_INSERT_LEASE = ("INSERT INTO lease (entry_pk, session_id, token, acquired_at, ttl, expires_wall, expires_mono)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?)")
_CLEAR_DELAY = "DELETE FROM lock_delay WHERE entry_pk = ?"
#: The lease is this session's, with this token, on a live session, and its own ttl (if any) has not run
#: out: on the monotonic clock of the holder's boot, else the wall clock (parameters: entry, session,
#: token, then :func:`_clock_params`).
_FENCE_CHECK = ("SELECT 1 FROM lease AS l JOIN session AS s ON s.id = l.session_id WHERE l.entry_pk = ?"
                " AND l.session_id = ? AND l.token = ? AND s.state = 'live' AND (l.expires_mono IS NULL"
                " OR (s.boot_id = ? AND l.expires_mono > ?) OR (s.boot_id <> ? AND l.expires_wall > ?))")
_REFRESH = ("UPDATE lease SET expires_wall = ?, expires_mono = ? WHERE entry_pk = ? AND session_id = ? AND token = ?"
            " AND EXISTS (SELECT 1 FROM session AS s WHERE s.id = lease.session_id AND s.state = 'live' AND"
            " ((s.boot_id = ? AND lease.expires_mono > ?) OR (s.boot_id <> ? AND lease.expires_wall > ?)))")

_SESSION_LIVE = "SELECT 1 FROM session WHERE id = ? AND state = 'live'"


def _clock_params(now_wall: float) -> tuple[str, float, str, float]:
    """The judge's clocks for the ttl test of :data:`_FENCE_CHECK` and :data:`_REFRESH`: this boot's
    monotonic clock, and ``now_wall`` from the backend (the server's, for a database shared by hosts)."""
    return (BOOT_ID, time.monotonic(), BOOT_ID, now_wall)


class ReapFirst(Exception):
    """Internal, never escapes the registry: reaping a dead holder inside this transaction removed the
    very row being written (it was that session's ephemeral entry). The transaction rolls back; the
    caller reaps the session in a transaction of its own and runs the operation again, which then
    finds the row gone (or, for a resolve, creates a fresh entry)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(session_id)
        self.session_id = session_id


_ROW_EXISTS = "SELECT 1 FROM entry WHERE pk = ?"


def reap_holder(tx: Tx, store: Store, entry_pk: int, holder: Holder, *, lock_delay: float) -> bool:
    """Inside a write transaction: reap ``holder`` if its process is gone or its ttl ran out, or end its
    lease if the lease's own ttl ran out; return whether the lease is gone. Raises :class:`ReapFirst`
    when reaping removed the row ``entry_pk`` itself."""
    if reap_if_gone(tx, store, holder.session_id, holder.owner, lock_delay=lock_delay) is None:
        return expire_if_overdue(tx, store, entry_pk, holder, lock_delay=lock_delay)
    if tx.execute(_ROW_EXISTS, (entry_pk,)).fetchone() is None:
        raise ReapFirst(holder.session_id)
    return True


def expire_if_overdue(tx: Tx, store: Store, entry_pk: int, holder: Holder, *, lock_delay: float) -> bool:
    """Inside a write transaction: end ``holder``'s lease if its own ttl ran out; return whether it did."""
    if holder.ttl is None or not holder.overdue(store.backend.clock(tx)):
        return False
    return expire_lease(tx, store, entry_pk, holder.session_id, holder.token, holder.ttl, lock_delay=lock_delay)


class Lease:
    """An exclusive hold on one entry. Use as a context manager, or call :meth:`release`.

    ``token`` is the fencing token. ``lost`` becomes true the moment the heartbeat thread (or any
    check) finds the lease gone; ``lost_event`` can be waited on, and ``on_lost`` (if given) is
    called once from the thread that noticed. :meth:`check` raises :class:`LeaseLost` when lost.

    A lease belongs to the thread that acquired it, like a ``threading.RLock``: that thread may
    acquire it again (each acquisition needs its own release; the last one gives the lease up),
    while another thread of the process waits for it or gets :class:`LeaseHeldError`. The object
    itself is a capability: a thread handed it may pass it to fenced writes or release it.

    ``ttl`` is the lease's own ttl (``acquire(..., ttl=S)``) or None: such a lease ends S seconds after
    it was taken or last :meth:`refresh`-ed, or when its session ends, whichever comes first; the
    session's heartbeat does not refresh it (it vouches for the process, the refresh for the work).
    :meth:`remaining` says how long it has left.
    """

    def __init__(self, session: Session, *, entry_pk: int, entry_id: str, name: str, kind: str, workspace: str,
                 token: int, acquired_at: float, releaser: Callable[[Lease], bool],
                 on_lost: Callable[[Lease], Any] | None = None, ttl: float | None = None,
                 expires_mono: float | None = None) -> None:
        self._session = session
        self._releaser = releaser
        self.entry_pk = entry_pk
        self.entry_id = entry_id
        self.name = name
        self.kind = kind
        self.workspace = workspace
        self.token = token
        self.acquired_at = utc(acquired_at)
        self.on_lost = on_lost
        self.lost_event = threading.Event()
        self.lost_reason: str | None = None
        self.released = False
        self._notify_lock = threading.Lock()
        self._owner = threading.current_thread()
        self._depth = 1  # acquisitions by the owning thread not yet released
        self.ttl = ttl
        self._expires_mono = expires_mono
        self._expiry: threading.Timer | None = None
        self._refresh_lock = threading.Lock()

    # -- the lease's own ttl ---------------------------------------------------------------------

    def remaining(self) -> float | None:
        """Seconds left before the lease's own ttl runs out (0.0 once released or lost), or None for a
        lease bounded by its session alone."""
        if self._expires_mono is None:
            return None
        if not self.held:
            return 0.0
        return max(0.0, self._expires_mono - time.monotonic())

    def refresh(self) -> float | None:
        """Keep the lease for its whole ttl again, from now (etcd's KeepAliveOnce, Consul's session renew);
        return :meth:`remaining`. Fenced: :class:`LeaseLost` if it is gone or its ttl already ran out. A
        lease without a ttl of its own is only checked (:meth:`check`)."""
        if self.ttl is None:
            self.check()
            return None
        if self.released or self.lost:
            self.check()
        with self._refresh_lock:
            with self._session.backend.write() as tx:
                now_wall, now_mono = self._session.backend.clock(tx), time.monotonic()
                refreshed = tx.execute(_REFRESH, (now_wall + self.ttl, now_mono + self.ttl, self.entry_pk,
                                                  self.session_id, self.token, *_clock_params(now_wall))).rowcount
            if refreshed:
                self._expires_mono = now_mono + self.ttl
        if not refreshed:
            self.mark_lost("the database no longer shows this lease, or its own ttl had run out")
            raise self._lost_error()
        self.schedule_expiry()
        return self.remaining()

    def schedule_expiry(self) -> None:
        """Tell the holder at the deadline, not at the next beat: a timer marks the lease lost then
        (started once the acquiring transaction committed, and again at each refresh)."""
        if self._expires_mono is None:
            return
        if self._expiry is not None:
            self._expiry.cancel()
        deadline = self._expires_mono
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._expire_locally, (deadline,))
        timer.daemon = True
        timer.name = f"nameplate-lease-ttl-{self.name}"
        self._expiry = timer
        timer.start()

    def _expire_locally(self, deadline: float) -> None:
        with self._refresh_lock:  # a refresh in flight decides first
            if self._expires_mono != deadline or time.monotonic() < deadline:
                return
        self.mark_lost(f"its own ttl of {self.ttl:g} s ran out (refresh() keeps it)")

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()

    @property
    def session_id(self) -> str:
        return self._session.id

    @property
    def lost(self) -> bool:
        return self.lost_event.is_set()

    @property
    def held(self) -> bool:
        """True while neither released nor lost (as far as this process knows; :meth:`check` asks the db)."""
        return not self.released and not self.lost

    def mark_lost(self, reason: str, *, notify: bool = True) -> None:
        """Set ``lost`` (once) and call ``on_lost`` unless ``notify`` is false."""
        with self._notify_lock:
            if self.released or self.lost_event.is_set():
                return
            self.lost_reason = reason
            self.lost_event.set()
        self._cancel_expiry()
        if notify and self.on_lost is not None:
            try:
                self.on_lost(self)
            except Exception:
                # The callback usually runs on the heartbeat thread: an error in user code must not
                # stop the beats that keep this process's other leases alive. Logged with traceback.
                log.exception("on_lost callback of lease on %s %r (token %d) failed", self.kind, self.name,
                              self.token)

    def mark_released(self) -> None:
        self.released = True
        self._cancel_expiry()

    @property
    def owner_thread(self) -> threading.Thread:
        """The thread that acquired the lease (the only one :meth:`Registry.acquire` returns it to)."""
        return self._owner

    def owned_here(self) -> bool:
        """Whether the calling thread is the one that acquired the lease."""
        return self._owner is threading.current_thread()

    def reenter(self) -> None:
        """The owning thread acquired it once more: one more release before it is given up."""
        with self._notify_lock:
            self._depth += 1

    def leave(self) -> bool:
        """One release by the owner: True when that was the last acquisition (give the lease up now)."""
        with self._notify_lock:
            self._depth -= 1
            return self._depth <= 0

    def _reset_after_fork(self) -> None:
        # In a forked child, before anything else: the heartbeat thread may have held these locks
        # at fork time, and it does not exist here to release them. (``_at_fork_reinit`` is what the
        # standard library's own at-fork handlers use.)
        self._notify_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._expiry = None  # its thread does not exist in the child
        self.lost_event._at_fork_reinit()  # type: ignore[attr-defined]

    def _lost_error(self) -> LeaseLost:
        return LeaseLost(f"lease on {self.kind} {self.name!r} (token {self.token}) is lost: {self.lost_reason}; "
                         "stop acting on it and acquire again", name=self.name, kind=self.kind, token=self.token,
                         reason=self.lost_reason)

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the database still shows this exact lease on a live session."""
        if self.released:
            raise LeaseLost(f"lease on {self.kind} {self.name!r} (token {self.token}) was released; acquire again",
                            name=self.name, kind=self.kind, token=self.token, reason="released")
        if not self.lost:
            backend = self._session.backend
            row = backend.query_one(_FENCE_CHECK, (self.entry_pk, self.session_id, self.token,
                                                   *_clock_params(backend.clock())))
            if row is None:
                self.mark_lost(self._gone_reason())
        if self.lost:
            raise self._lost_error()

    def fence(self, tx: Tx) -> None:
        """Inside a write transaction: raise :class:`LeaseLost` (rolling it back) unless still held."""
        if self.released or self.lost:
            self.check()
        clocks = _clock_params(self._session.backend.clock(tx))
        if tx.execute(_FENCE_CHECK, (self.entry_pk, self.session_id, self.token, *clocks)).fetchone() is None:
            self.mark_lost(self._gone_reason())
            raise self._lost_error()

    def _gone_reason(self) -> str:
        if self._expires_mono is not None and time.monotonic() >= self._expires_mono:
            return f"its own ttl of {self.ttl:g} s ran out (refresh() keeps it)"
        return "the database no longer shows this lease (expired, reaped or released by force)"

    def release(self) -> bool:
        """Release one acquisition; the last one gives the lease up. Return False if it had already
        been released or lost."""
        if self.released or self.lost:
            return False
        if not self.leave():
            return True
        return self._releaser(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else ("lost" if self.lost else "held")
        return f"<Lease {self.kind} {self.name!r} token={self.token} {state} by thread {self._owner.name}>"


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease another session asked for."""

    session_id: str
    token: int
    acquired_at: float
    owner: Owner
    label: str
    ttl: float | None = None
    expires_wall: float | None = None
    expires_mono: float | None = None

    def overdue(self, now_wall: float) -> bool:
        """Whether the lease's own ttl ran out (never, for a lease bounded by its session alone);
        ``now_wall`` is the backend's clock."""
        if self.expires_mono is None or self.expires_wall is None:
            return False
        return lease_overdue(self.expires_mono, self.expires_wall, self.owner.boot_id, now_wall)

    def describe(self) -> dict[str, Any]:
        return {"session": self.session_id, "pid": self.owner.pid, "host": self.owner.hostname,
                "label": self.label, "since": utc(self.acquired_at).isoformat(), "token": self.token}


@dataclass(frozen=True, slots=True)
class Delayed:
    seconds: float


@dataclass(frozen=True, slots=True)
class Queued:
    """Free, but promised to an earlier waiter (fair waiting, see ``_waiting``)."""


@dataclass(frozen=True, slots=True)
class HeldByThread:
    """Another thread of this very process holds the lease."""

    lease: Lease

    def describe(self) -> str:
        owner = self.lease.owner_thread
        return f"thread {owner.name!r} (ident {owner.ident}) of this process (pid {os.getpid()})"


def find_holder(tx: Tx, entry_pk: int) -> Holder | None:
    """Inside a transaction: who holds the lease on ``entry_pk``, if anyone."""
    held = tx.execute(_HOLDER, (entry_pk,)).fetchone()
    if held is None:
        return None
    ttl, expires_wall, expires_mono = held[11:14]
    return Holder(held[0], int(held[1]), float(held[2]), Owner.from_row(held, 3), held[10],
                  None if ttl is None else float(ttl), None if expires_wall is None else float(expires_wall),
                  None if expires_mono is None else float(expires_mono))


def try_acquire(tx: Tx, store: Store, session: Session, *, entry_pk: int, entry_id: str, name: str, kind: str,
                workspace: str, lock_delay: float, releaser: Callable[[Lease], bool],
                on_lost: Callable[[Lease], Any] | None, ttl: float | None = None,
                waiter_ahead: Callable[[], bool] | None = None,
                ticket: int | None = None) -> Lease | Holder | Delayed | Queued | None:
    """One attempt inside a write transaction. ``None`` means our own session is no longer live.

    A holder whose process is gone is reaped right here, so its lease is ours in this same
    transaction; one whose ttl ran out is reaped too, leaving the entry in lock-delay, and so is a
    lease whose own ttl ran out (ours included: this session forgot to refresh it). ``ttl`` gives the
    new lease a ttl of its own. A free entry is refused (:class:`Queued`) while ``waiter_ahead()`` says
    an earlier waiter is owed it; ``ticket`` is the caller's place in that queue, logged with the grant.
    """
    if tx.execute(_SESSION_LIVE, (session.id,)).fetchone() is None:
        return None
    holder = find_holder(tx, entry_pk)
    if holder is not None:
        if holder.session_id == session.id:
            # Our own lease, past its ttl: no lock-delay, this process is plainly not hung.
            if not expire_if_overdue(tx, store, entry_pk, holder, lock_delay=0.0):
                return holder
            forgotten = session.held(entry_pk)
            if forgotten is not None:
                session.forget(forgotten)
                forgotten.mark_lost(f"its own ttl of {holder.ttl:g} s ran out (refresh() keeps it)")
        elif not reap_holder(tx, store, entry_pk, holder, lock_delay=lock_delay):
            return holder
    delay = tx.execute(_DELAY, (entry_pk,)).fetchone()
    if delay is not None:
        remaining = delay_active(float(delay[0]), delay[1], float(delay[2]), store.backend.clock(tx))
        if remaining > 0:
            return Delayed(remaining)
    if waiter_ahead is not None and waiter_ahead():
        return Queued()
    token = int(tx.execute(_BUMP_FENCE, (entry_pk,)).fetchone()[0])
    now, now_mono = store.backend.clock(tx), time.monotonic()
    expires_wall, expires_mono = (None, None) if ttl is None else (now + ttl, now_mono + ttl)
    tx.execute(_INSERT_LEASE, (entry_pk, session.id, token, now, ttl, expires_wall, expires_mono))
    tx.execute(_CLEAR_DELAY, (entry_pk,))
    store.record(tx, "lease.acquire", workspace=workspace, kind=kind, name=name, entry_id=entry_id, at=now,
                 token=token, session=session.id, **({} if ttl is None else {"ttl": ttl}),
                 **({} if ticket is None else {"ticket": ticket}))
    return Lease(session, entry_pk=entry_pk, entry_id=entry_id, name=name, kind=kind, workspace=workspace,
                 token=token, acquired_at=now, releaser=releaser, on_lost=on_lost, ttl=ttl,
                 expires_mono=expires_mono)
