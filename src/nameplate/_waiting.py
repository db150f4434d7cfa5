"""Fair waiting: callers of ``acquire(..., wait=...)`` are served in arrival order.

A caller that cannot have the lease at once and means to wait takes a ticket, a ``lease_waiter`` row
whose ``seq`` grows with every arrival and is never reused (etcd orders its lock waiters by revision
the same way). Every attempt, waiting or not, is refused while an older ticket on the same entry
belongs to a live waiter, so a newcomer never overtakes the queue and a released lease goes to the
oldest waiter. A ticket counts while its session is live (a dead or expired owner is reaped on the
spot, as a holder would be) and its waiter looked within its session's ttl: a ticket left behind by a
waiter that stopped waiting without removing it cannot block the queue for longer than that.

Tickets are taken, refreshed and removed inside the attempt's own write transaction; the waiting
itself happens outside any transaction, and wakes on the backend's commit signal (a release, a
departing waiter) rather than a timer alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._lease import ReapFirst
from ._liveness import BOOT_ID, PROCESS_TABLE, Owner, owner_columns
from ._session import reap_if_gone
from .backends.base import Backend, Tx

if TYPE_CHECKING:
    from ._store import Store

_ENQUEUE = ("INSERT INTO lease_waiter (entry_pk, session_id, arrived_at, seen_wall, seen_mono) VALUES (?, ?, ?, ?, ?)"
            " RETURNING seq")
_SEEN = "UPDATE lease_waiter SET seen_wall = ?, seen_mono = ? WHERE seq = ?"
_LEAVE = "DELETE FROM lease_waiter WHERE seq = ?"
_AHEAD = (f"SELECT w.seq, w.session_id, w.seen_wall, w.seen_mono, s.state, {owner_columns('s')} "
          "FROM lease_waiter AS w JOIN session AS s ON s.id = w.session_id WHERE w.entry_pk = ? AND w.seq < ? "
          "ORDER BY w.seq LIMIT 1")
_ROW_EXISTS = "SELECT 1 FROM entry WHERE pk = ?"

#: A ticket number above every real one: the caller holds no ticket, so every live waiter is ahead.
NO_TICKET = 2**62
#: Tickets dropped per attempt at most (each a waiter gone since); the next attempt goes on.
_DROPS_PER_ATTEMPT = 16
#: Between attempts: how often the commit signal is read, and the longest sleep without a commit (a
#: holder that dies commits nothing; its death is noticed by the next attempt).
SIGNAL_POLL = 0.003
MAX_PAUSE = 0.25


@dataclass(slots=True)
class Ticket:
    """A place in the queue of one entry, held by one waiting call."""

    seq: int
    entry_pk: int
    session_id: str
    seen_mono: float


def enqueue(tx: Tx, entry_pk: int, session_id: str, now_wall: float) -> Ticket:
    """Inside a write transaction: join the back of ``entry_pk``'s queue (``now_wall``: the backend's clock)."""
    now_mono = time.monotonic()
    seq = int(tx.execute(_ENQUEUE, (entry_pk, session_id, now_wall, now_wall, now_mono)).fetchone()[0])
    return Ticket(seq, entry_pk, session_id, now_mono)


def still_waiting(tx: Tx, ticket: Ticket, ttl: float, now_wall: float) -> None:
    """Inside a write transaction: say the waiter is still there, when a third of its ttl has passed since
    it last said so (a write every attempt would wake every other waiter)."""
    now_mono = time.monotonic()
    if now_mono - ticket.seen_mono >= ttl / 3:
        tx.execute(_SEEN, (now_wall, now_mono, ticket.seq))
        ticket.seen_mono = now_mono


def leave(tx: Tx, ticket: Ticket) -> None:
    """Inside a write transaction: give up the place (served, or no longer waiting)."""
    tx.execute(_LEAVE, (ticket.seq,))


def waiter_ahead(tx: Tx, store: Store, entry_pk: int, seq: int, *, lock_delay: float) -> bool:
    """Inside a write transaction: whether a live waiter holds an older ticket than ``seq`` on ``entry_pk``.

    Tickets of waiters that are gone are dropped on the way (their sessions reaped if their process is
    dead or their ttl ran out). Raises :class:`ReapFirst` when reaping removed the entry itself.
    """
    for _ in range(_DROPS_PER_ATTEMPT):
        row = tx.execute(_AHEAD, (entry_pk, seq)).fetchone()
        if row is None:
            return False
        ticket_seq, session_id, seen_wall, seen_mono, state = row[:5]
        owner = Owner.from_row(row, 5)
        if state == "live" and not _stale(owner, float(seen_wall), float(seen_mono), store.backend.clock(tx)):
            if reap_if_gone(tx, store, session_id, owner, lock_delay=lock_delay) is None:
                return True
            if tx.execute(_ROW_EXISTS, (entry_pk,)).fetchone() is None:
                raise ReapFirst(session_id)
        tx.execute(_LEAVE, (ticket_seq,))
    return True  # more departed waiters than one attempt clears: count the rest as ahead, for now


def _stale(owner: Owner, seen_wall: float, seen_mono: float, now_wall: float) -> bool:
    """The waiter has not looked for longer than its session's ttl (on the clocks a ttl is judged on:
    this boot's monotonic clock for a waiter of this boot, else the backend's wall clock ``now_wall``)."""
    if owner.boot_id in (BOOT_ID, PROCESS_TABLE):  # a session's boot id is one of these on this boot
        return time.monotonic() - seen_mono > owner.ttl
    return now_wall - seen_wall > owner.ttl


def pause(backend: Backend, seconds: float, worth_trying: Callable[[], bool] | None = None) -> None:
    """Sleep up to ``seconds`` (at most :data:`MAX_PAUSE`), returning early when anything commits and
    ``worth_trying()`` (a read, no lock) says an attempt could succeed now: waiters that could not win
    stay off the write lock, so a release is not followed by one write transaction per waiter."""
    until = time.monotonic() + min(seconds, MAX_PAUSE)
    signal = backend.commit_signal()
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(SIGNAL_POLL, left))
        now = backend.commit_signal()
        if now != signal:
            if worth_trying is None or worth_trying():
                return
            signal = now


def free_and_first(backend: Backend, entry_pks: Sequence[int], queue_pk: int, seq: int) -> bool:
    """Whether one of ``entry_pks`` is unleased and no older ticket waits on ``queue_pk``, as a read shows it.

    Only a hint for :func:`pause`: a dead holder or a departed waiter still counts here, and the attempt
    made every :data:`MAX_PAUSE` (under the write lock, where they are judged) clears them."""
    marks = ", ".join("?" * len(entry_pks))
    row = backend.query_one(f"SELECT (SELECT count(*) FROM lease WHERE entry_pk IN ({marks})), "
                            "(SELECT count(*) FROM lease_waiter WHERE entry_pk = ? AND seq < ?)",
                            (*entry_pks, queue_pk, seq))
    return int(row[0]) < len(entry_pks) and int(row[1]) == 0
