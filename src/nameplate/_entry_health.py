"""Health of entries: processes report how an entry they serve or watch is doing, and selection heeds it.

A **report** is a row of ``entry_health`` per (entry, reporting session): ``health`` (``healthy``,
``degraded``, ``critical`` or none), ``load`` (a number, lower is better) and ``info`` (a JSON object,
e.g. a job's status and progress). Any process may report on any entry it sees; each reporter has its
own row, so several processes vouching for one provider never overwrite each other. A report counts
only while its reporter lives, judged now by the sessions' liveness rule (pid + start time, then the
ttl): a killed reporter's report is void at once, before anyone reaps its session.

Reports are written in one short transaction each, and only when they change. They are not events:
they change at heartbeat rate and say nothing about what a name means, so they leave the audit log
and every read cache alone. A **check** (``watch``) is a callable of this process, run on every
heartbeat of its session outside any transaction; what it returns is reported (an exception it raises
is reported as ``critical`` with the error in ``info``). Checks stay in the process that watches.

An entry's health is that of its freshest counting report; without one, an entry owned by a live
session (``register(..., owned=True)``) takes its owner's session status when that is one of the
three words. An entry is **alive** when its owner's process lives (owned entries: an owner that died
makes it dead, whatever others report) or, unowned, when at least one counting report vouches for it.

``healthiest`` chooses among the entries owned by a live session and those with a counting report:
never a ``critical`` one, never a dead one; ``healthy`` before ``degraded`` before unknown, then the
lower load (unknown load last), then the freshest report or heartbeat, then the name.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _fork, _strategies
from ._liveness import Owner, owner_columns, verdict
from ._records import Entry, frozen_json, utc, utc_or_none
from ._store import VISIBLE, Store, entry_by_pk
from ._validation import check_kind_name, check_name, encode_object
from .backends.base import Backend, Tx
from .errors import InvalidInputError, NoMatchError

if TYPE_CHECKING:
    from ._leasing import Leasing, WorkspaceOf

log = logging.getLogger("nameplate.health")

#: The health words a report may carry, best first.
HEALTH_WORDS: tuple[str, ...] = ("healthy", "degraded", "critical")
_RANK = {"healthy": 0, "degraded": 1, None: 2}

_UPSERT = ("INSERT INTO entry_health (entry_pk, session_id, health, load, info, reported_at) VALUES (?, ?, ?, ?, ?, ?) "
           "ON CONFLICT (entry_pk, session_id) DO UPDATE SET health = excluded.health, load = excluded.load, "
           "info = excluded.info, reported_at = excluded.reported_at")
#: The same, for a pk read before the transaction: the entry may have been deleted meanwhile.
_UPSERT_IF_PRESENT = ("INSERT INTO entry_health (entry_pk, session_id, health, load, info, reported_at) "
                      "SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM entry WHERE pk = ?) "
                      "ON CONFLICT (entry_pk, session_id) DO UPDATE SET health = excluded.health, "
                      "load = excluded.load, info = excluded.info, reported_at = excluded.reported_at")
_SESSION = f"SELECT id, state, status, label, {owner_columns()} FROM session WHERE id = ?"
_ENTRY = ("SELECT r.pk, r.id, r.name, k.name, w.name, r.owner_session_id FROM entry AS r "
          "JOIN kind AS k ON k.id = r.kind_id JOIN workspace AS w ON w.id = r.workspace_id WHERE r.pk = ?")
# Ended sessions' reports are read too (the judge voids them): an owner's last report is its last word.
_REPORTS_OF = ("SELECT session_id, health, load, info, reported_at FROM entry_health WHERE entry_pk = ? "
               "ORDER BY reported_at DESC")
_ALL_REPORTS = ("SELECT entry_pk, session_id, health, load, info, reported_at FROM entry_health "
                "ORDER BY reported_at DESC")
_VISIBLE_PK = ("SELECT r.pk FROM resolved_entry AS r JOIN workspace AS viewer ON viewer.id = r.viewer_id "
               f"JOIN kind AS k ON k.id = r.kind_id WHERE {VISIBLE} AND r.name = ? AND k.name = ?")

#: What a check returns: a health word, ``None``, ``(health, load)``, or a mapping with optional
#: ``health`` and ``load`` keys, whose other keys become ``info``.
Check = Callable[[], Any]


@dataclass(frozen=True, slots=True)
class EntryHealth:
    """How an entry is doing, judged now.

    ``health`` and ``load`` are the freshest counting report's (``health`` else the live owner's
    session status, if it is a health word), ``None`` when nobody live said. ``info``, ``reported_at``
    and ``reporter`` are that report's, else the owner's last report even if the owner is gone (a
    dead job's last status stays readable). ``alive``: the owner's process lives (owned entries), or
    some live process reports on it (unowned ones). ``state`` is the owner session's state judged now
    (``live``, ``closed``, ``expired``, ``dead``; ``None`` without an owner). ``pid``, ``hostname`` and
    ``label`` are the owner's. ``reporters`` counts the live processes reporting on it.
    """

    entry_id: str
    name: str
    kind: str
    workspace: str
    health: str | None
    alive: bool
    load: float | None = None
    info: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    reported_at: datetime | None = None
    reporter: str | None = None
    reporters: int = 0
    owner: str | None = None
    state: str | None = None
    pid: int | None = None
    hostname: str | None = None
    label: str | None = None
    last_beat_at: datetime | None = None

    @property
    def selectable(self) -> bool:
        """Whether ``healthiest`` may choose it: alive and not ``critical``."""
        return self.alive and self.health != "critical"

    def to_dict(self) -> dict[str, Any]:
        return {"entry_id": self.entry_id, "name": self.name, "kind": self.kind, "workspace": self.workspace,
                "health": self.health, "alive": self.alive, "load": self.load, "info": dict(self.info),
                "reported_at": None if self.reported_at is None else self.reported_at.isoformat(),
                "reporter": self.reporter, "reporters": self.reporters, "owner": self.owner, "state": self.state,
                "pid": self.pid, "hostname": self.hostname, "label": self.label,
                "last_beat_at": None if self.last_beat_at is None else self.last_beat_at.isoformat()}


@dataclass(frozen=True, slots=True)
class _Report:
    session_id: str
    health: str | None
    load: float | None
    info: str
    reported_at: float


@dataclass(frozen=True, slots=True)
class _Judged:
    state: str
    status: str
    label: str
    owner: Owner
    alive: bool


class _Judge:
    """Sessions read and judged once per call (one /proc look per distinct session)."""

    def __init__(self, backend: Backend, tx: Tx) -> None:
        self._tx = tx
        # Judged on the backend's clock and host rules: a server database's sessions may be other hosts'.
        self._now_wall = backend.clock(tx)
        self._one_host = backend.one_host
        self._seen: dict[str, _Judged | None] = {}

    def __call__(self, session_id: str | None) -> _Judged | None:
        if session_id is None:
            return None
        if session_id not in self._seen:
            row = self._tx.execute(_SESSION, (session_id,)).fetchone()
            judged = None
            if row is not None:
                owner = Owner.from_row(row, 4)
                state = str(row[1])
                if state == "live":
                    state = verdict(owner, now_wall=self._now_wall, one_host=self._one_host) or "live"
                judged = _Judged(state=state, status=str(row[2]), label=str(row[3]), owner=owner,
                                 alive=state == "live")
            self._seen[session_id] = judged
        return self._seen[session_id]


def _assemble(row: Sequence[Any], reports: Sequence[_Report], judge: _Judge) -> tuple[EntryHealth, float]:
    """The health of one entry row (``_ENTRY``'s columns) and how fresh the news is (for ordering)."""
    pk, entry_id, name, kind, workspace, owner_id = row
    del pk
    owner = judge(owner_id)
    counting = [r for r in reports if (j := judge(r.session_id)) is not None and j.alive]
    chosen = counting[0] if counting else None
    # What is shown as said: the freshest counting report, else the owner's last one (a dead job's last
    # status); only counting reports give health and load.
    said = chosen or next((r for r in reports if r.session_id == owner_id), None)
    health = chosen.health if chosen is not None else None
    if health is None and owner is not None and owner.alive and owner.status in HEALTH_WORDS:
        health = owner.status
    # An owner session gone from the record (garbage-collected) vouches for nothing.
    alive = (owner is not None and owner.alive) if owner_id is not None else bool(counting)
    freshest = chosen.reported_at if chosen is not None else (owner.owner.beat_at if owner is not None else 0.0)
    return EntryHealth(
        entry_id=entry_id, name=name, kind=kind, workspace=workspace, health=health, alive=alive,
        load=None if chosen is None else chosen.load,
        info=frozen_json(said.info) if said is not None else MappingProxyType({}),
        reported_at=None if said is None else utc(said.reported_at),
        reporter=None if said is None else said.session_id, reporters=len(counting), owner=owner_id,
        state=None if owner_id is None else (owner.state if owner is not None else "dead"),
        pid=None if owner is None else owner.owner.pid, hostname=None if owner is None else owner.owner.hostname,
        label=None if owner is None else owner.label,
        last_beat_at=None if owner is None else utc_or_none(owner.owner.beat_at)), freshest


def _reports_of(tx: Tx, pk: int) -> list[_Report]:
    return [_Report(str(s), h, None if ld is None else float(ld), str(i), float(at))
            for s, h, ld, i, at in tx.execute(_REPORTS_OF, (pk,)).fetchall()]


def health_of(backend: Backend, tx: Tx, store: Store, workspace: str, name: str, kind: str) -> EntryHealth:
    """The health of the entry ``name`` resolves to (:class:`EntryNotFoundError` if none)."""
    found = store.visible_row(tx, workspace, name, kind, "report on")
    return _assemble(tx.execute(_ENTRY, (found.pk,)).fetchone(), _reports_of(tx, found.pk), _Judge(backend, tx))[0]


def list_health(backend: Backend, tx: Tx, workspace: str, kind: str, requires: list[str]) -> list[EntryHealth]:
    """The health of every entry of ``kind`` visible here offering ``requires``, by name."""
    pks = [row[0] for row in tx.execute(_strategies.statement("find", len(requires)),
                                        (*_strategies.by_rarity(tx, requires), workspace, kind)).fetchall()]
    reports: dict[int, list[_Report]] = {}
    for pk, s, h, ld, i, at in tx.execute(_ALL_REPORTS).fetchall():
        reports.setdefault(int(pk), []).append(_Report(str(s), h, None if ld is None else float(ld), str(i),
                                                       float(at)))
    judge = _Judge(backend, tx)
    return [_assemble(tx.execute(_ENTRY, (pk,)).fetchone(), reports.get(pk, ()), judge)[0] for pk in pks]


def choose_healthiest(backend: Backend, tx: Tx, store: Store, matches: _strategies.MatchCache, workspace: str,
                      kind: str, requires: list[str]) -> Entry:
    """The ``healthiest`` strategy (see the module docstring), read-only."""
    needed = _strategies.by_rarity(tx, requires)
    params = (*needed, workspace, kind)
    pks = {int(row[0]) for row in tx.execute(_strategies.statement("healthiest", len(needed)), params).fetchall()}
    pks |= {int(row[0]) for row in tx.execute(_strategies.statement("reported", len(needed)), params).fetchall()}
    judge = _Judge(backend, tx)
    ranked = []
    candidates = []
    for pk in pks:
        health, freshest = _assemble(tx.execute(_ENTRY, (pk,)).fetchone(), _reports_of(tx, pk), judge)
        candidates.append(health)
        if health.selectable:
            load = math.inf if health.load is None else health.load
            ranked.append(((_RANK[health.health], load, -freshest, health.name), pk))
    if ranked:
        return entry_by_pk(tx, min(ranked)[1])
    if _strategies.choose_read_only(tx, matches, "first", workspace, kind, requires) is None:
        raise _strategies.no_match(tx, store, workspace, kind, requires)
    critical = sorted(h.name for h in candidates if h.alive and h.health == "critical")
    if critical:
        wanted = f"offering {', '.join(requires)} " if requires else ""
        raise NoMatchError(f"every live {kind} {wanted}in workspace {workspace!r} reports 'critical' "
                           f"({', '.join(critical)}); none is selected until one reports better",
                           kind=kind, requires=requires, missing=[], critical=critical)
    raise _strategies.no_live_owner(workspace, kind, requires, len(candidates))


# -- input -----------------------------------------------------------------------------------------


def check_health(health: object) -> str | None:
    if health is None or (isinstance(health, str) and health in HEALTH_WORDS):
        return health
    raise InvalidInputError(f"health must be one of {', '.join(HEALTH_WORDS)} (or None), not {health!r}",
                            health=repr(health))


def check_load(load: object) -> float | None:
    if load is None:
        return None
    if isinstance(load, bool) or not isinstance(load, int | float) or not math.isfinite(load):
        raise InvalidInputError(f"load must be a finite number (lower is better) or None, not {load!r}",
                                load=repr(load))
    return float(load)


def outcome_of(check: Check) -> tuple[str | None, float | None, str]:
    """Run a check (user code: never inside a transaction) and read what it says as a report.

    A check that raises, or returns something that is not a report, says ``critical``: a health check
    that cannot tell is not a healthy one.
    """
    try:
        value = check()
    except Exception as error:  # user code: any failure is the answer "critical", with the reason
        return "critical", None, encode_object({"error": f"{type(error).__name__}: {error}"}, "info")
    try:
        if value is None or isinstance(value, str):
            return check_health(value), None, "{}"
        if isinstance(value, tuple) and len(value) == 2:
            return check_health(value[0]), check_load(value[1]), "{}"
        if isinstance(value, Mapping):
            info = {k: v for k, v in value.items() if k not in ("health", "load")}
            return check_health(value.get("health")), check_load(value.get("load")), encode_object(info, "info")
    except InvalidInputError as error:
        return "critical", None, encode_object({"error": f"the check's answer is not a report: {error}"}, "info")
    return "critical", None, encode_object(
        {"error": f"the check returned {type(value).__name__}, not a health word, (health, load) or a mapping"},
        "info")


# -- the feature -----------------------------------------------------------------------------------

_open: weakref.WeakSet[Health] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The checks watch the parent's objects: a child reporting on copies of them would vouch for
    # what it does not run. The lock may have been held by the parent's heartbeat thread.
    for health in list(_open):
        health._checks.clear()
        health._written.clear()
        health._lock = threading.Lock()


_fork.in_child("locks", _after_fork_in_child)



class Health:
    """Health reports and the checks this process runs on its heartbeat (see the module docstring).

    Checks belong to this Registry object and this process; the reports they produce are shared.
    """

    def __init__(self, backend: Backend, store: Store, workspace_of: WorkspaceOf, leasing: Leasing) -> None:
        self._backend = backend
        self._store = store
        self._ws = workspace_of
        self._leasing = leasing
        self._checks: dict[tuple[str, str, str], Check] = {}
        #: What this process last wrote per (session, entry pk): a report is written only when it changes.
        self._written: dict[tuple[str, int], tuple[str | None, float | None, str]] = {}
        self._lock = threading.Lock()
        leasing.on_beat(self.poll)
        _open.add(self)

    def report(self, name: str, kind: str, health: str | None, *, load: float | None = None,
               info: Mapping[str, Any] | None = None, workspace: str | None = None) -> None:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        said = (check_health(health), check_load(load), encode_object(info or {}, "info"))
        session_id = self._leasing.session().id
        with self._backend.write() as tx:
            pk = self._store.visible_row(tx, ws, name, kind, "report on").pk
            tx.execute(_UPSERT, (pk, session_id, *said, self._backend.clock(tx)))
        with self._lock:
            self._written[(session_id, pk)] = said

    def watch(self, name: str, kind: str, check: Check, *, workspace: str | None = None) -> None:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        if not callable(check):
            raise InvalidInputError(f"check must be a callable taking no arguments, not {check!r}", check=repr(check))
        with self._backend.read() as tx:
            self._store.visible_row(tx, ws, name, kind, "watch")
        with self._lock:
            self._checks[(ws, kind, name)] = check
        self._leasing.session()  # the heartbeat that runs the checks
        self.poll(only=(ws, kind, name))

    def unwatch(self, name: str, kind: str, *, workspace: str | None = None) -> bool:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        with self._lock:
            return self._checks.pop((ws, kind, name), None) is not None

    def poll(self, only: tuple[str, str, str] | None = None) -> None:
        """Run the checks (all, or ``only`` one) and write the reports that changed, in one transaction.

        Called by the heartbeat thread after each beat; the checks run before the write lock is taken.
        """
        session_id = self._leasing.session_id()
        if session_id is None:
            return
        with self._lock:
            checks = [(key, check) for key, check in self._checks.items() if only is None or key == only]
        if not checks:
            return
        said = [(key, outcome_of(check)) for key, check in checks]
        pks: dict[tuple[str, str, str], int] = {}
        for key, _ in said:
            workspace, kind, name = key
            row = self._backend.query_one(_VISIBLE_PK, (workspace, name, kind))
            if row is None:  # the entry is gone (deleted, hidden): nothing left to report on
                log.warning("nameplate: %s %r is gone from workspace %r; its health check stops", key[1], key[2],
                            key[0])
                with self._lock:
                    self._checks.pop(key, None)
                continue
            pks[key] = int(row[0])
        with self._lock:
            changed = [(pks[key], outcome) for key, outcome in said
                       if key in pks and self._written.get((session_id, pks[key])) != outcome]
        if not changed:
            return
        with self._backend.write() as tx:
            now = self._backend.clock(tx)  # the clock sessions' beats are stamped with (the server's, there)
            for pk, outcome in changed:
                tx.execute(_UPSERT_IF_PRESENT, (pk, session_id, *outcome, now, pk))
        with self._lock:
            for pk, outcome in changed:
                self._written[(session_id, pk)] = outcome

    def health(self, name: str, kind: str, *, workspace: str | None = None) -> EntryHealth:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        with self._backend.read() as tx:
            return health_of(self._backend, tx, self._store, ws, name, kind)

    def list(self, kind: str, requires: Iterable[str] = (), *, workspace: str | None = None) -> list[EntryHealth]:
        ws = self._ws(workspace)
        check_kind_name(kind)
        needed = _strategies.requirement(requires)
        with self._backend.read() as tx:
            self._store.workspace_id(tx, ws)
            self._store.kind_id(tx, kind)
            return list_health(self._backend, tx, ws, kind, needed)


