"""Sessions: one live process each, kept alive by a heartbeat thread, reaped when its owner is gone.

A session owns leases and ephemeral entries. Ending it (close, proven death, ttl expiry) frees both
in one transaction, with an event for each. Liveness checks read ``/proc`` through psutil. The one
holder an ``acquire`` (or an entry write) runs into is judged inside that write transaction, where no
beat can slip in between judging and acting. A full ``reap()`` judges every live session outside any
transaction and applies a verdict only if the session did not beat meanwhile (``beats`` unchanged),
so a judgement never outlives the facts it was made on.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ulid import ULID

from . import _fork
from ._liveness import BOOT_ID, HOSTNAME, Owner, boot_identity, owner_columns, process_start, verdict
from ._models import Entry as EntryRow
from ._models import Kind as KindRow
from ._models import Lease as LeaseRow
from ._models import Session as SessionRow
from ._models import Workspace as WorkspaceRow
from ._records import utc, utc_or_none
from ._validation import encode_object
from .backends.base import Backend, Tx
from .errors import NameplateError, SessionClosedError

if TYPE_CHECKING:
    from ._lease import Lease
    from ._store import Store

log = logging.getLogger("nameplate.session")

_SESSION_OWNER_COLUMNS = f"id, {owner_columns()}, beats"
_BEAT = ("UPDATE session SET beat_at = ?, beat_mono = ?, beats = beats + 1 WHERE id = ? AND state = 'live'")
_BEAT_WITH_REPORT = ("UPDATE session SET beat_at = ?, beat_mono = ?, beats = beats + 1, status = ?, info = ? "
                     "WHERE id = ? AND state = 'live'")
_HELD_TOKENS = "SELECT entry_pk, token FROM lease WHERE session_id = ?"
_SESSION_IS_LIVE = "SELECT 1 FROM session WHERE id = ? AND state = 'live'"
_INSERT_SESSION = (
    "INSERT INTO session (id, pid, hostname, boot_id, process_start, label, ttl, status, info, state, started_at,"
    " beat_at, beat_mono, beats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'live', ?, ?, ?, 0)")

_live_sessions: weakref.WeakSet[Session] = weakref.WeakSet()


@dataclass(frozen=True, slots=True)
class HeldLease:
    """A lease as listed by ``locks()`` and ``sessions()``."""

    entry_id: str
    name: str
    kind: str
    workspace: str
    token: int
    session_id: str
    acquired_at: datetime
    pid: int
    hostname: str
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "name": self.name, "kind": self.kind, "workspace": self.workspace,
                "token": self.token, "session_id": self.session_id, "acquired_at": self.acquired_at.isoformat(),
                "pid": self.pid, "hostname": self.hostname, "label": self.label}


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One process as the process registry knows it. ``alive`` is judged now, not just read."""

    id: str
    pid: int
    hostname: str
    label: str
    ttl: float
    status: str
    info: Mapping[str, Any]
    state: str
    alive: bool
    started_at: datetime
    last_beat_at: datetime
    beats: int
    ended_at: datetime | None
    end_reason: str | None
    leases: tuple[HeldLease, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.pid, "hostname": self.hostname, "label": self.label, "ttl": self.ttl,
                "status": self.status, "info": dict(self.info), "state": self.state, "alive": self.alive,
                "started_at": self.started_at.isoformat(), "last_beat_at": self.last_beat_at.isoformat(),
                "beats": self.beats, "ended_at": self.ended_at.isoformat() if self.ended_at else None,
                "end_reason": self.end_reason, "leases": [lease.to_dict() for lease in self.leases]}


def list_leases(backend: Backend, session_id: str | None = None) -> list[HeldLease]:
    """Every held lease (or one session's), by kind and name; inside the caller's read transaction."""
    query = (LeaseRow.select(EntryRow.id.alias("entry_id"), EntryRow.name, KindRow.name.alias("kind"),
                             WorkspaceRow.name.alias("workspace"), LeaseRow.token, LeaseRow.session,
                             LeaseRow.acquired_at, SessionRow.pid, SessionRow.hostname, SessionRow.label)
             .join(EntryRow, on=LeaseRow.entry == EntryRow.pk)
             .join(KindRow, on=EntryRow.kind == KindRow.id)
             .join_from(EntryRow, WorkspaceRow, on=EntryRow.workspace == WorkspaceRow.id)
             .join_from(LeaseRow, SessionRow, on=LeaseRow.session == SessionRow.id)
             .order_by(KindRow.name, EntryRow.name))
    if session_id is not None:
        query = query.where(LeaseRow.session == session_id)
    return [HeldLease(row.entry_id, row.name, row.kind, row.workspace, int(row.token), row.session,
                      utc(row.acquired_at), int(row.pid), row.hostname, row.label)
            for row in query.namedtuples().execute(backend.peewee)]


def list_sessions(backend: Backend, *, alive: bool) -> list[SessionInfo]:
    """Sessions on record (live ones judged now with ``alive``), oldest first, each with its leases;
    inside the caller's read transaction."""
    query = SessionRow.select().order_by(SessionRow.started_at)
    if alive:
        query = query.where(SessionRow.state == "live")
    leases: dict[str, list[HeldLease]] = {}
    now_wall = backend.clock()
    for lease in list_leases(backend):
        leases.setdefault(lease.session_id, []).append(lease)
    result = []
    for row in query.execute(backend.peewee):
        owner = Owner(pid=int(row.pid), hostname=row.hostname, boot_id=row.boot_id,
                      process_start=float(row.process_start), ttl=float(row.ttl), beat_at=float(row.beat_at),
                      beat_mono=float(row.beat_mono))
        is_alive = row.state == "live" and verdict(owner, now_wall=now_wall, one_host=backend.one_host) is None
        if alive and not is_alive:
            continue
        result.append(SessionInfo(
            id=row.id, pid=int(row.pid), hostname=row.hostname, label=row.label, ttl=float(row.ttl),
            status=row.status, info=MappingProxyType(json.loads(row.info)), state=row.state, alive=is_alive,
            started_at=utc(row.started_at), last_beat_at=utc(row.beat_at), beats=int(row.beats),
            ended_at=utc_or_none(row.ended_at), end_reason=row.end_reason, leases=tuple(leases.get(row.id, ()))))
    return result


def _owner(row: Any) -> Owner:
    return Owner.from_row(row, 1)


def end_session_rows(tx: Tx, store: Store, session_id: str, *, state: str, reason: str,
                     lock_delay: float) -> int:
    """Free a session's leases and ephemeral entries and mark it ended; return the leases freed."""
    now_wall, now_mono = store.backend.clock(tx), time.monotonic()
    leases = tx.execute(
        "SELECT l.entry_pk, l.token, e.id, e.name, k.name, w.name FROM lease AS l "
        "JOIN entry AS e ON e.pk = l.entry_pk JOIN kind AS k ON k.id = e.kind_id "
        "JOIN workspace AS w ON w.id = e.workspace_id WHERE l.session_id = ?", (session_id,)).fetchall()
    action = {"closed": "lease.release", "expired": "lease.expire", "dead": "lease.free"}[state]
    for entry_pk, token, entry_id, name, kind, workspace in leases:
        tx.execute("DELETE FROM lease WHERE entry_pk = ?", (entry_pk,))
        if lock_delay > 0:
            # The owner may be hung rather than dead: keep the entry unclaimable for a while so a
            # holder that wakes up cannot overlap with the next one before it notices its loss.
            start_lock_delay(tx, entry_pk, lock_delay, now_wall, now_mono)
        store.record(tx, action, workspace=workspace, kind=kind, name=name, entry_id=entry_id, at=now_wall,
                     token=int(token), session=session_id, reason=reason,
                     **({"lock_delay": lock_delay} if lock_delay > 0 else {}))
    ephemeral = tx.execute(
        "SELECT e.pk, e.id, e.name, k.name, w.name FROM entry AS e JOIN kind AS k ON k.id = e.kind_id "
        "JOIN workspace AS w ON w.id = e.workspace_id WHERE e.owner_session_id = ? AND e.ephemeral = 1",
        (session_id,)).fetchall()
    for pk, entry_id, name, kind, workspace in ephemeral:
        # Another live session may hold the lease of this entry: the lease ends with the row, and the
        # log says so (its holder learns of the loss at its next heartbeat or fenced write).
        held = tx.execute("SELECT session_id, token FROM lease WHERE entry_pk = ?", (pk,)).fetchone()
        if held is not None:
            store.record(tx, "lease.break", workspace=workspace, kind=kind, name=name, entry_id=entry_id,
                         at=now_wall, token=int(held[1]), session=str(held[0]),
                         reason=f"its ephemeral entry was removed with session {session_id} ({state})")
        tx.execute("DELETE FROM entry WHERE pk = ?", (pk,))
        store.record(tx, "delete", workspace=workspace, kind=kind, name=name, entry_id=entry_id, at=now_wall,
                     reason=f"ephemeral entry of session {session_id} ({state})")
    tx.execute("DELETE FROM lease_waiter WHERE session_id = ?", (session_id,))  # it waits no more
    tx.execute("UPDATE session SET state = ?, ended_at = ?, end_reason = ? WHERE id = ?",
               (state, now_wall, reason, session_id))
    return len(leases)


def start_lock_delay(tx: Tx, entry_pk: int, seconds: float, now_wall: float, now_mono: float) -> None:
    """Inside a write transaction: keep ``entry_pk`` unclaimable for ``seconds`` from now."""
    tx.execute("INSERT INTO lock_delay (entry_pk, until_wall, until_mono, boot_id) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (entry_pk) DO UPDATE SET until_wall = excluded.until_wall, "
               "until_mono = excluded.until_mono, boot_id = excluded.boot_id",
               (entry_pk, now_wall + seconds, now_mono + seconds, BOOT_ID))


#: Leases with a ttl of their own (``acquire(..., ttl=)``) and the clocks their end is judged on.
_BOUNDED_LEASES = ("SELECT l.entry_pk, l.session_id, l.token, l.ttl, l.expires_wall, l.expires_mono, s.boot_id "
                   "FROM lease AS l JOIN session AS s ON s.id = l.session_id WHERE l.expires_mono IS NOT NULL")


def lease_overdue(expires_mono: float, expires_wall: float, boot_id: str, now_wall: float) -> bool:
    """Whether a lease's own ttl ran out: on the monotonic clock of the boot that set it, else on the
    backend's wall clock ``now_wall`` (the same reading as lock-delays and session ttls)."""
    if boot_id == BOOT_ID:
        return time.monotonic() >= expires_mono
    return now_wall >= expires_wall


def expire_lease(tx: Tx, store: Store, entry_pk: int, session_id: str, token: int, ttl: float, *,
                 lock_delay: float) -> bool:
    """Inside a write transaction: end one lease whose own ttl ran out (its holder may be hung, not dead:
    the entry then stays in lock-delay). Return whether the row was still there."""
    named = tx.execute("SELECT e.id, e.name, k.name, w.name FROM lease AS l JOIN entry AS e ON e.pk = l.entry_pk "
                       "JOIN kind AS k ON k.id = e.kind_id JOIN workspace AS w ON w.id = e.workspace_id "
                       "WHERE l.entry_pk = ? AND l.session_id = ? AND l.token = ?",
                       (entry_pk, session_id, token)).fetchone()
    if named is None:
        return False
    now_wall, now_mono = store.backend.clock(tx), time.monotonic()
    tx.execute("DELETE FROM lease WHERE entry_pk = ? AND session_id = ? AND token = ?", (entry_pk, session_id, token))
    if lock_delay > 0:
        start_lock_delay(tx, entry_pk, lock_delay, now_wall, now_mono)
    store.record(tx, "lease.expire", workspace=named[3], kind=named[2], name=named[1], entry_id=named[0],
                 at=now_wall, token=token, session=session_id, reason=f"its own ttl of {ttl:g} s ran out",
                 **({"lock_delay": lock_delay} if lock_delay > 0 else {}))
    return True


def expire_overdue_leases(backend: Backend, store: Store, *, lock_delay: float) -> int:
    """End every lease whose own ttl ran out; return how many. Reads first: writes only if there are some."""
    now_wall = backend.clock()
    if not any(lease_overdue(float(r[5]), float(r[4]), r[6], now_wall) for r in backend.query_all(_BOUNDED_LEASES)):
        return 0
    ended = 0
    with backend.write() as tx:
        now_wall = backend.clock(tx)
        for entry_pk, session_id, token, ttl, expires_wall, expires_mono, boot_id in tx.execute(
                _BOUNDED_LEASES).fetchall():
            if lease_overdue(float(expires_mono), float(expires_wall), boot_id, now_wall):
                ended += expire_lease(tx, store, int(entry_pk), str(session_id), int(token), float(ttl),
                                      lock_delay=lock_delay)
    return ended


def _end_reason(judged: str, owner: Owner) -> str:
    if judged == "dead":
        return f"owner pid {owner.pid} on {owner.hostname} is gone"
    return f"no heartbeat for over {owner.ttl:g} s"


def _reap_judged(tx: Tx, store: Store, session_id: str, owner: Owner, judged: str, *, lock_delay: float) -> None:
    reason = _end_reason(judged, owner)
    freed = end_session_rows(tx, store, session_id, state=judged, reason=reason,
                             lock_delay=lock_delay if judged == "expired" else 0.0)
    store.record(tx, "session.reap", session=session_id, state=judged, reason=reason, leases_freed=freed,
                 pid=owner.pid, hostname=owner.hostname)


def reap_if_gone(tx: Tx, store: Store, session_id: str, owner: Owner, *, lock_delay: float) -> str | None:
    """Inside a write transaction: end one live session if its owner is dead or its ttl ran out.

    Returns the verdict (``"dead"``/``"expired"``) or ``None`` if it lives. Holding the write lock,
    no beat can land between judging and acting; one /proc read (about 70 µs) is all it adds.
    """
    backend = store.backend
    judged = verdict(owner, now_wall=backend.clock(tx), one_host=backend.one_host)
    if judged is not None:
        _reap_judged(tx, store, session_id, owner, judged, lock_delay=lock_delay)
    return judged


def reap(backend: Backend, store: Store, *, lock_delay: float, only: str | None = None) -> list[str]:
    """End every live session whose owner is dead or whose ttl ran out, and every lease whose own ttl ran
    out; return the sessions' ids."""
    if only is None:
        expire_overdue_leases(backend, store, lock_delay=lock_delay)
    sql = f"SELECT {_SESSION_OWNER_COLUMNS} FROM session WHERE state = 'live'" + (" AND id = ?" if only else "")
    rows = backend.query_all(sql, (only,) if only else ())
    # Judged outside the transaction (one /proc read per live session, too many to make every other
    # writer wait for), then applied only to sessions that did not beat meanwhile.
    now_wall = backend.clock()
    doomed = [(row, judged) for row in rows
              if (judged := verdict(_owner(row), now_wall=now_wall, one_host=backend.one_host)) is not None]
    if not doomed:
        return []
    reaped = []
    with backend.write() as tx:
        for row, judged in doomed:
            session_id, beats = row[0], row[8]
            still = tx.execute("SELECT 1 FROM session WHERE id = ? AND state = 'live' AND beats = ?",
                               (session_id, beats)).fetchone()
            if still is None:
                continue  # it beat (or was reaped) since we judged it: the judgement is stale
            _reap_judged(tx, store, session_id, _owner(row), judged, lock_delay=lock_delay)
            reaped.append(session_id)
    return reaped


class Session:
    """This process's session in one registry. Obtain it with ``registry.session()``.

    A daemon thread renews it about every ``ttl / 3`` seconds. ``lost`` is set (and every lease's
    ``lost`` with it) the moment a beat finds the session ended by someone else. ``report()`` updates
    status and info at once. ``close()`` (also run by ``registry.close()`` and at interpreter exit)
    releases the leases, removes the ephemeral entries and stops the thread.
    """

    def __init__(self, backend: Backend, store: Store, *, label: str, ttl: float, status: str,
                 info: Mapping[str, Any], lock_delay: float,
                 beat_hooks: Sequence[Callable[[], None]] = ()) -> None:
        self._backend = backend
        #: Run by the heartbeat thread after each renewal (health checks); shared with the Registry,
        #: so hooks added later run too.
        self._beat_hooks = beat_hooks
        self._store = store
        self.id = str(ULID())
        self.label = label
        self.ttl = float(ttl)
        self.pid = os.getpid()
        self.lock_delay = lock_delay
        self.status = status
        self.info: dict[str, Any] = dict(info)
        self.lost = threading.Event()
        self.lost_reason: str | None = None
        self.last_error: BaseException | None = None
        self._closed = False
        self._leases: dict[int, Lease] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        start = process_start(self.pid)
        if start is None or start != start:
            raise NameplateError(f"cannot read this process's start time (pid {self.pid}); psutil needs /proc")
        info_text = encode_object(self.info, "info")
        with backend.write() as tx:
            now_wall, now_mono = backend.clock(tx), time.monotonic()
            tx.execute(_INSERT_SESSION, (self.id, self.pid, HOSTNAME, boot_identity(backend.one_host), start, label,
                                         self.ttl, status, info_text, now_wall, now_wall, now_mono))
            store.record(tx, "session.open", session=self.id, label=label, ttl=self.ttl, pid=self.pid,
                         hostname=HOSTNAME)
        self._thread = threading.Thread(target=self._run, name=f"nameplate-heartbeat-{self.id[-6:]}", daemon=True)
        self._thread.start()
        _live_sessions.add(self)

    # -- state -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backend(self) -> Backend:
        """The database this session lives in (its leases check their fence there)."""
        return self._backend

    @property
    def usable(self) -> bool:
        return not self._closed and not self.lost.is_set() and self.pid == os.getpid()

    @property
    def heartbeat_thread(self) -> threading.Thread:
        return self._thread

    def leases(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def track(self, lease: Lease) -> None:
        with self._lock:
            self._leases[lease.entry_pk] = lease

    def forget(self, lease: Lease) -> None:
        with self._lock:
            if self._leases.get(lease.entry_pk) is lease:
                del self._leases[lease.entry_pk]

    def held(self, entry_pk: int) -> Lease | None:
        with self._lock:
            return self._leases.get(entry_pk)

    # -- heartbeat -------------------------------------------------------------------------------

    def beat(self) -> bool:
        """Renew now; return False (and mark everything lost) if the session was ended by someone else."""
        if self._closed:
            raise SessionClosedError(f"session {self.id} is closed; open a new one with registry.session()")
        if self.lost.is_set():
            return False
        with self._backend.write() as tx:
            renewed = tx.execute(_BEAT, (self._backend.clock(tx), time.monotonic(), self.id)).rowcount
            tokens = dict(tx.execute(_HELD_TOKENS, (self.id,)).fetchall()) if renewed else {}
        if not renewed:
            self._mark_lost("the session was ended by another process (expired or reaped)")
            return False
        with self._lock:
            gone = [lease for pk, lease in self._leases.items() if tokens.get(pk) != lease.token]
        for lease in gone:
            lease.mark_lost("the lease row is gone or carries another token (released by force?)")
            self.forget(lease)
        return True

    def report(self, status: str | None = None, **info: Any) -> None:
        """Set status and merge ``info`` (JSON values), written at once and carried by later beats."""
        if self._closed:
            raise SessionClosedError(f"session {self.id} is closed; open a new one with registry.session()")
        merged = {**self.info, **info}
        info_text = encode_object(merged, "info")
        new_status = self.status if status is None else str(status)
        with self._backend.write() as tx:
            renewed = tx.execute(_BEAT_WITH_REPORT, (self._backend.clock(tx), time.monotonic(), new_status,
                                                     info_text, self.id)).rowcount
        if not renewed:
            self._mark_lost("the session was ended by another process (expired or reaped)")
            raise SessionClosedError(f"session {self.id} was ended by another process ({self.lost_reason}); "
                                     "open a new one with registry.session()")
        self.status, self.info = new_status, merged

    def _run(self) -> None:
        interval = self.ttl / 3
        last_renewed = time.monotonic()
        beats = 0
        try:
            while not self._stop.wait(interval):
                try:
                    if not self.beat():
                        return
                except NameplateError as error:
                    if self._closed:
                        return  # close() raced with this round
                    self.last_error = error
                    if time.monotonic() - last_renewed > self.ttl:
                        # Others may have reaped us by now: say so rather than let the holder act on
                        # leases it can no longer vouch for.
                        self._mark_lost(f"could not renew the session for over its ttl ({self.ttl:g} s): {error}")
                        log.error("nameplate session %s lost: %s", self.id, self.lost_reason)
                        return
                    # A busy database: keep trying until the ttl says otherwise (logged, kept above).
                    log.warning("nameplate heartbeat of session %s failed: %s", self.id, error)
                    continue
                last_renewed = time.monotonic()
                beats += 1
                for hook in list(self._beat_hooks):
                    try:
                        hook()
                    except NameplateError as error:  # a busy database: the next beat runs it again
                        log.warning("nameplate heartbeat hook of session %s failed: %s", self.id, error)
                if beats % 3 == 0:  # about once per ttl, free what dead processes left behind
                    try:
                        reap(self._backend, self._store, lock_delay=self.lock_delay)
                    except NameplateError as error:  # housekeeping only: the next round retries
                        log.warning("nameplate reap from session %s failed: %s", self.id, error)
        except BaseException as error:
            # Nothing renews the session any more: tell the holder instead of dying quietly.
            if not self._closed:
                self._mark_lost(f"the heartbeat thread failed: {error!r}")
            raise

    def _mark_lost(self, reason: str) -> None:
        self.lost_reason = reason
        self.lost.set()
        for lease in self.leases():
            lease.mark_lost(reason)
        with self._lock:
            self._leases.clear()

    # -- ending ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Release everything the session holds, mark it closed, stop the heartbeat thread."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        _live_sessions.discard(self)
        if self.pid != os.getpid():
            return  # a forked child never ends its parent's session
        leases = self.leases()
        try:
            # Even a session marked lost here may still be live in the database (its renewals
            # failed for a while): ending it now frees its rows without a lock-delay.
            with self._backend.write() as tx:
                still = tx.execute(_SESSION_IS_LIVE, (self.id,)).fetchone()
                if still is not None:
                    end_session_rows(tx, self._store, self.id, state="closed", reason="closed by its owner",
                                     lock_delay=0.0)
                    self._store.record(tx, "session.close", session=self.id)
        finally:
            for lease in leases:
                lease.mark_released()
            with self._lock:
                self._leases.clear()

    def _abandon_after_fork(self) -> None:
        """In a forked child: this session is the parent's. Stop using it; touch nothing in the database.

        Its leases read as lost here (the child never held them) without calling ``on_lost``: user code
        has no business running inside ``fork()``.
        """
        # The heartbeat thread may have held these when the process forked; it does not exist here.
        self._lock = threading.RLock()
        self.lost._at_fork_reinit()  # type: ignore[attr-defined]
        self._closed = True
        self.lost_reason = "this process is a fork of the session's owner; the session stays with the parent"
        for lease in list(self._leases.values()):
            lease._reset_after_fork()
            lease.mark_lost(self.lost_reason, notify=False)
        self._leases.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("lost" if self.lost.is_set() else "live")
        return f"<Session {self.id} {self.label!r} pid={self.pid} ttl={self.ttl:g} {state}>"


def _after_fork_in_child() -> None:
    for session in list(_live_sessions):
        session._abandon_after_fork()
    _live_sessions.clear()


def _close_at_exit() -> None:
    for session in list(_live_sessions):
        if session.pid == os.getpid():
            try:
                session.close()
            except NameplateError as error:  # the database went away first: nothing left to free
                print(f"nameplate: could not close session {session.id} at exit: {error}", file=sys.stderr)


_fork.in_child("sessions", _after_fork_in_child)
atexit.register(_close_at_exit)


def default_label() -> str:
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{argv0}[{os.getpid()}]"

