"""Capability queries and selection strategies.

``find`` keeps the entries of a kind whose capabilities include every required one. With a
requirement it walks the ``entry_capability`` index range of the rarest required capability, probes
the others by primary key and reaches each entry by primary key, so it never walks every entry of the
kind; the layer rule is the ``resolved_entry`` view's, as for every other read.

Each strategy is one statement that returns the chosen row (``LIMIT 1``), not the whole match set:
with 10,000 matches, fetching and decoding them all cost five times more than evaluating them.

- ``first``: the first match by name (deterministic, read-only).
- ``random``: a uniformly random match (read-only).
- ``round_robin``: the match registered next after the one this rotation chose last (by entry
  primary key, wrapping around). The rotation's cursor is a row of ``selection_cursor`` per
  (kind, workspace, requirement), read and advanced in the same short write transaction, so every
  process shares one rotation. A new match joins the rotation at its place; a removed one drops out
  without shifting the others.
- ``least_recently_selected``: the match selected longest ago (never-selected first, then by name);
  records the selection in the same write transaction, so concurrent callers spread over the matches.
- ``healthiest``: only matches bound to a live session (``register(..., owned=True)``) or reported on
  by one (``report_health``), never a ``critical`` one, never one whose owner's process died (judged by
  :func:`nameplate._liveness.verdict`); healthy first, then the lower load, then the freshest report or
  heartbeat, then name (the ranking lives in :mod:`nameplate._entry_health`). Matches nobody live
  vouches for are never returned: an entry whose owner session was garbage-collected has no owner any
  more and cannot be told apart from one that never had one, so "no owner" cannot mean "fine".
"""

from __future__ import annotations

import bisect
import random
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any

from . import _fork
from ._liveness import owner_columns
from ._records import Entry
from ._store import ENTRY_COLUMNS, VISIBLE, Store, decode_entry, entry_by_pk
from ._validation import check_capabilities
from .backends.base import Tx
from .errors import NoMatchError, UnknownStrategyError

#: Every strategy ``select`` implements, with the one-line description the errors and docs use.
STRATEGIES: dict[str, str] = {
    "first": "the first match by name",
    "random": "a uniformly random match",
    "round_robin": "the next match in registration order, one rotation shared by every process",
    "least_recently_selected": "the match selected longest ago (never-selected first)",
    "healthiest": "a live, non-critical match (owned or reported on by a live process): healthy, then lower load first",
}

_JOINS = ("JOIN workspace AS viewer ON viewer.id = r.viewer_id JOIN kind AS k ON k.id = r.kind_id "
          "JOIN workspace AS w ON w.id = r.workspace_id")
_IDS = "SELECT w.id, k.id FROM workspace AS w, kind AS k WHERE w.name = ? AND k.name = ?"
_CURSOR = "SELECT position FROM selection_cursor WHERE kind_id = ? AND workspace_id = ? AND requirement = ?"
_SET_CURSOR = ("INSERT INTO selection_cursor (kind_id, workspace_id, requirement, position) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (kind_id, workspace_id, requirement) DO UPDATE SET position = excluded.position")
_MARK_SELECTED = "UPDATE entry SET selected_at = ?, selected_count = selected_count + 1 WHERE pk = ?"
_OFFERED = ("SELECT DISTINCT c.capability FROM resolved_entry AS r JOIN workspace AS viewer ON viewer.id = r.viewer_id "
            "JOIN kind AS k ON k.id = r.kind_id JOIN entry_capability AS c ON c.entry_pk = r.pk "
            f"WHERE {VISIBLE} AND k.name = ?")

_statements: dict[tuple[str, int], str] = {}


def _has_all(count: int, entry: str) -> str:
    """Conditions that ``entry`` (a pk column) offers capabilities 2..count: one primary-key probe each."""
    return "".join(f" AND EXISTS (SELECT 1 FROM entry_capability AS c{i} WHERE c{i}.capability = ? "
                   f"AND c{i}.entry_pk = {entry})" for i in range(1, count))


def _matches_from(count: int) -> str:
    """``FROM ... WHERE ...`` of the match set; parameters: the capabilities (rarest first, see
    :func:`by_rarity`), the workspace, the kind."""
    if count == 0:
        return f"FROM resolved_entry AS r {_JOINS} WHERE {VISIBLE} AND k.name = ?"
    # Walk the index range of the rarest capability, probe the others by primary key, and only then
    # join entries by primary key (CROSS JOIN fixes that order; GROUP BY keeps SQLite from flattening
    # the driver into the join and starting from every entry of the kind instead). A GROUP BY over
    # all the required ranges at once read 11,000 index rows to find 1,000 matches: 2.4 ms against
    # 0.45 ms this way.
    return ("FROM (SELECT c0.entry_pk FROM entry_capability AS c0 WHERE c0.capability = ?"
            f"{_has_all(count, 'c0.entry_pk')} GROUP BY c0.entry_pk) AS m "
            f"CROSS JOIN resolved_entry AS r ON r.pk = m.entry_pk {_JOINS} WHERE {VISIBLE} AND k.name = ?")


def _owned_matches_from(count: int) -> str:
    """Like :func:`_matches_from`, restricted to entries owned by a live session, and driven by the
    sessions: few processes are live, while a kind may have many entries."""
    capabilities = ""
    if count:
        capabilities = (" AND EXISTS (SELECT 1 FROM entry_capability AS c0 WHERE c0.capability = ? AND "
                        f"c0.entry_pk = e.pk){_has_all(count, 'e.pk')}")
    return (f"FROM (SELECT e.pk AS entry_pk FROM session AS o JOIN entry AS e ON e.owner_session_id = o.id "
            f"WHERE o.state = 'live'{capabilities} GROUP BY e.pk) AS m "
            f"CROSS JOIN resolved_entry AS r ON r.pk = m.entry_pk {_JOINS} "
            f"JOIN session AS s ON s.id = r.owner_session_id WHERE {VISIBLE} AND k.name = ? AND s.state = 'live'")


def _reported_matches_from(count: int) -> str:
    """Like :func:`_owned_matches_from`, for entries that a live session reports on (``entry_health``);
    CROSS JOIN keeps the few live sessions' reports driving the query (a plain JOIN let SQLite walk
    every entry of the kind instead: 3-5 ms against 0.2 ms with 2,000 providers). Written like the other
    join-order hints; the PostgreSQL backend spells ``CROSS JOIN ... ON`` as a plain ``JOIN``."""
    capabilities = ""
    if count:
        capabilities = (" AND EXISTS (SELECT 1 FROM entry_capability AS c0 WHERE c0.capability = ? AND "
                        f"c0.entry_pk = h.entry_pk){_has_all(count, 'h.entry_pk')}")
    return (f"FROM (SELECT h.entry_pk AS entry_pk FROM session AS o JOIN entry_health AS h ON h.session_id = o.id "
            f"WHERE o.state = 'live'{capabilities} GROUP BY h.entry_pk) AS m "
            f"CROSS JOIN resolved_entry AS r ON r.pk = m.entry_pk {_JOINS} WHERE {VISIBLE} AND k.name = ?")


_SHAPES = {
    "find": lambda n: f"SELECT {ENTRY_COLUMNS} {_matches_from(n)} ORDER BY r.name",
    "match_pks": lambda n: f"SELECT r.pk {_matches_from(n)} ORDER BY r.name",
    "least_recently_selected": lambda n: (f"SELECT r.pk {_matches_from(n)} "
                                          "ORDER BY r.selected_at IS NOT NULL, r.selected_at, r.name LIMIT 1"),
    "healthiest": lambda n: (
        f"SELECT r.pk, s.id, s.status, {owner_columns('s')} {_owned_matches_from(n)} "
        "ORDER BY s.status = 'healthy' DESC, s.beat_at DESC, r.name"),
    "reported": lambda n: f"SELECT r.pk {_reported_matches_from(n)}",
}


def statement(shape: str, count: int) -> str:
    """The statement text of ``shape`` for ``count`` required capabilities, built once per process
    (the same text each time, so each connection's statement cache prepares it once)."""
    key = (shape, count)
    sql = _statements.get(key)
    if sql is None:
        sql = _statements[key] = _SHAPES[shape](count)
    return sql


def requirement(requires: Iterable[str] | None) -> list[str]:
    """The required capabilities, validated, sorted and without duplicates."""
    return check_capabilities(requires)


#: Counting a capability's index range stops here: past it, "common" is all the order needs to know.
_RARITY_PROBE = 4096
_COUNT_CAPABILITY = (f"SELECT count(*) FROM (SELECT 1 FROM entry_capability WHERE capability = ? LIMIT {_RARITY_PROBE})"
                     " AS probe")


def by_rarity(tx: Tx, requires: list[str]) -> list[str]:
    """``requires`` with the capability fewest entries offer first: the match statements walk its
    index range and only probe the others."""
    if len(requires) < 2:
        return requires
    counts = {c: tx.execute(_COUNT_CAPABILITY, (c,)).fetchone()[0] for c in requires}
    return sorted(requires, key=lambda c: (counts[c], c))


#: The newest revision (an indexed max over the event table's primary key): the match sets' version.
_REVISION = "SELECT max(rev) FROM event"
#: Match sets kept per registry, and the largest one kept (in entries): bigger ones are queried each time.
_CACHED_SETS = 256
_CACHED_MATCHES = 100_000

_match_caches: weakref.WeakSet[MatchCache] = weakref.WeakSet()


class MatchCache:
    """The match sets of ``first``, ``random`` and ``round_robin``, kept per (workspace, kind,
    requirement) with the revision they were read at.

    Picking one of 10,000 matches walked all of them through the layer view on every call (9-20 ms);
    the set itself changes only with an event (every change to entries, their capabilities, kinds
    and workspaces logs one in its own transaction, as the read cache relies on too), so it is read
    again only when the revision seen by the caller's own snapshot differs from the one it was read
    at: never an answer from another state than the caller's transaction sees.
    """

    def __init__(self) -> None:
        self._sets: dict[tuple[str, str, tuple[str, ...]], tuple[Any, tuple[int, ...], list[int]]] = {}
        self._lock = threading.Lock()
        _match_caches.add(self)

    def matches(self, tx: Tx, workspace: str, kind: str, requires: list[str]) -> tuple[tuple[int, ...], list[int]]:
        """The matches' primary keys as seen in ``tx``: by name, and in ascending order."""
        revision = tx.execute(_REVISION).fetchone()[0]
        key = (workspace, kind, tuple(requires))
        known = self._sets.get(key)
        if known is not None and known[0] == revision:
            return known[1], known[2]
        rows = tx.execute(statement("match_pks", len(requires)), (*by_rarity(tx, requires), workspace, kind))
        by_name = tuple(row[0] for row in rows)
        ascending = sorted(by_name)
        if len(by_name) <= _CACHED_MATCHES:
            with self._lock:
                if len(self._sets) >= _CACHED_SETS:
                    self._sets.clear()
                self._sets[key] = (revision, by_name, ascending)
        return by_name, ascending

    def _forget_after_fork(self) -> None:
        self._sets = {}
        self._lock = threading.Lock()


def _after_fork_in_child() -> None:
    for cache in list(_match_caches):
        cache._forget_after_fork()


_fork.in_child("connections", _after_fork_in_child)


def check_strategy(strategy: object) -> str:
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        known = "; ".join(f"{name} ({text})" for name, text in STRATEGIES.items())
        raise UnknownStrategyError(f"unknown selection strategy {strategy!r}; choose one of: {known}",
                                   strategy=strategy, known=list(STRATEGIES))
    return strategy


def find(tx: Tx, workspace: str, kind: str, requires: list[str]) -> list[Entry]:
    rows = tx.execute(statement("find", len(requires)), (*by_rarity(tx, requires), workspace, kind)).fetchall()
    return [decode_entry(row) for row in rows]


def choose_read_only(tx: Tx, cache: MatchCache, strategy: str, workspace: str, kind: str,
                     requires: list[str]) -> Entry | None:
    """``first`` and ``random``: no write."""
    by_name, _ = cache.matches(tx, workspace, kind, requires)
    if not by_name:
        return None
    return entry_by_pk(tx, by_name[0] if strategy == "first" else random.choice(by_name))


def choose_and_record(tx: Tx, cache: MatchCache, strategy: str, workspace: str, kind: str,
                      requires: list[str]) -> Entry | None:
    """``round_robin`` and ``least_recently_selected``, inside the caller's write transaction."""
    if strategy == "round_robin":
        _, ascending = cache.matches(tx, workspace, kind, requires)
        if not ascending:
            return None
        workspace_id, kind_id = tx.execute(_IDS, (workspace, kind)).fetchone()
        key = ",".join(requires)
        cursor = tx.execute(_CURSOR, (kind_id, workspace_id, key)).fetchone()
        after = 0 if cursor is None else int(cursor[0])
        index = bisect.bisect_right(ascending, after)
        chosen = ascending[index] if index < len(ascending) else ascending[0]  # past the last: wrap around
        tx.execute(_SET_CURSOR, (kind_id, workspace_id, key, chosen))
    else:
        row = tx.execute(statement("least_recently_selected", len(requires)),
                         (*by_rarity(tx, requires), workspace, kind)).fetchone()
        if row is None:
            return None
        chosen = row[0]
    tx.execute(_MARK_SELECTED, (time.time(), chosen))
    return entry_by_pk(tx, chosen)


def no_match(tx: Tx, store: Store, workspace: str, kind: str, requires: list[str]) -> NoMatchError:
    """The error for an empty match set: which required capabilities nobody here offers."""
    store.workspace_id(tx, workspace)
    store.kind_id(tx, kind)
    offered = {r[0] for r in tx.execute(_OFFERED, (workspace, kind)).fetchall()}
    missing = sorted(set(requires) - offered)
    if not requires:
        text = f"no {kind} entries in workspace {workspace!r}; register one first"
    elif missing:
        text = (f"no {kind} offers {', '.join(missing)} in workspace {workspace!r}; nobody offers "
                f"{'it' if len(missing) == 1 else 'them'} (register a {kind} with those capabilities)")
    else:
        text = (f"every one of {', '.join(requires)} is offered by some {kind}, but no single {kind} offers them "
                f"all in workspace {workspace!r}")
    return NoMatchError(text, kind=kind, requires=requires, missing=missing)


def no_live_owner(workspace: str, kind: str, requires: list[str], owned: int) -> NoMatchError:
    wanted = f"offering {', '.join(requires)} " if requires else ""
    if owned:
        text = (f"every {kind} {wanted}in workspace {workspace!r} that is bound to a session belongs to a "
                "process that is no longer alive; start a provider, or choose another strategy")
    else:
        text = (f"no {kind} {wanted}in workspace {workspace!r} is bound to a live session, so none has a health "
                "to compare; register providers from their own process with owned=True, or use "
                "strategy='first'")
    return NoMatchError(text, kind=kind, requires=requires, missing=[])
