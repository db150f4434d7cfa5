"""Capability queries and selection strategies.

``find`` keeps the entries of a kind whose capabilities include every required one, through the
``entry_capability`` index (a GROUP BY over the required capabilities' index ranges, not a scan of the
kind). Strategies, all implemented and tested:

- ``first``: the first match by name (deterministic, read-only).
- ``random``: a uniformly random match (read-only).
- ``round_robin``: the next match after the last one chosen for the same (kind, workspace,
  requirement), with the cursor kept in the database, so several processes share one rotation.
- ``least_recently_selected``: the match selected longest ago (never-selected first); records the
  selection, so concurrent callers spread over the matches.
- ``healthiest``: among matches owned by a session (``register(..., owned=True)``), a live one with
  status ``healthy`` and the freshest heartbeat; then live ones of other statuses; then matches with
  no owner. A match whose owner session is dead or expired is never returned.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Any

from ._backend import Tx
from ._liveness import Owner, verdict
from ._records import Entry
from ._store import ENTRY_COLUMNS, RESOLVED, VISIBLE, Store, decode_entry
from .errors import NoMatchError, UnknownStrategyError

STRATEGIES = ("first", "random", "round_robin", "least_recently_selected", "healthiest")
_MATCH_BASE = f"SELECT {ENTRY_COLUMNS}, r.owner_session_id, r.selected_at {RESOLVED} WHERE {VISIBLE} AND k.name = ?"
_statements: dict[int, str] = {}


def _find_sql(count: int) -> str:
    """Statement text per number of required capabilities, built once (prepared per connection)."""
    sql = _statements.get(count)
    if sql is None:
        if count == 0:
            sql = _MATCH_BASE + " ORDER BY r.name"
        else:
            # Start from the capability index and join entries by primary key (CROSS JOIN fixes that
            # order): a filter over the kind's rows would read every entry of the kind instead.
            marks = ",".join("?" * count)
            sql = (f"SELECT {ENTRY_COLUMNS}, r.owner_session_id, r.selected_at FROM (SELECT entry_pk FROM "
                   f"entry_capability WHERE capability IN ({marks}) GROUP BY entry_pk HAVING count(*) = {count}) AS m "
                   f"CROSS JOIN resolved_entry AS r ON r.pk = m.entry_pk "
                   "JOIN workspace AS viewer ON viewer.id = r.viewer_id JOIN kind AS k ON k.id = r.kind_id "
                   f"JOIN workspace AS w ON w.id = r.workspace_id WHERE {VISIBLE} AND k.name = ? ORDER BY r.name")
        _statements[count] = sql
    return sql


def requirement(requires: Iterable[str] | None) -> list[str]:
    from ._validation import check_capabilities

    return check_capabilities(requires)


def matches(tx: Tx, workspace: str, kind: str, requires: list[str]) -> list[Any]:
    params = (workspace, kind) if not requires else (*requires, workspace, kind)
    return tx.execute(_find_sql(len(requires)), params).fetchall()


def no_match(tx: Tx, store: Store, workspace: str, kind: str, requires: list[str]) -> NoMatchError:
    store.workspace_id(tx, workspace)
    store.kind_id(tx, kind)
    offered = {r[0] for r in tx.execute(
        f"SELECT DISTINCT c.capability FROM entry_capability AS c JOIN entry AS r ON r.pk = c.entry_pk "
        f"JOIN resolved_entry AS v ON v.pk = r.pk JOIN workspace AS viewer ON viewer.id = v.viewer_id "
        f"JOIN kind AS k ON k.id = r.kind_id WHERE viewer.name = ? AND v.hidden = 0 AND k.name = ?",
        (workspace, kind)).fetchall()}
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


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise UnknownStrategyError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}",
                                   strategy=strategy, known=list(STRATEGIES))
    return strategy


def choose_read_only(rows: list[Any], strategy: str, live_owner: dict[str, Any]) -> Any:
    if strategy == "first":
        return rows[0]
    if strategy == "random":
        return random.choice(rows)
    # healthiest: rank live owners by (healthy first, freshest beat), then unowned; drop dead owners
    best, best_rank = None, None
    for row in rows:
        owner = row[12]
        if owner is None:
            rank: tuple[Any, ...] = (2, 0.0, row[2])
        elif owner in live_owner:
            status, beat_at = live_owner[owner]
            rank = (0 if status == "healthy" else 1, -beat_at, row[2])
        else:
            continue
        if best_rank is None or rank < best_rank:
            best, best_rank = row, rank
    return best


def live_owners(store: Store, rows: list[Any]) -> dict[str, Any]:
    """Owner sessions of the rows that are live now (judged outside any transaction)."""
    owners = sorted({row[12] for row in rows if row[12] is not None})
    if not owners:
        return {}
    found = store.backend.query_all(
        f"SELECT id, pid, hostname, boot_id, process_start, ttl, beat_at, beat_mono, status FROM session "
        f"WHERE state = 'live' AND id IN ({','.join('?' * len(owners))})", owners)
    live = {}
    for r in found:
        owner = Owner(pid=int(r[1]), hostname=r[2], boot_id=r[3], process_start=float(r[4]), ttl=float(r[5]),
                      beat_at=float(r[6]), beat_mono=float(r[7]))
        if verdict(owner) is None:
            live[r[0]] = (r[8], float(r[6]))
    return live


def choose_and_record(tx: Tx, store: Store, rows: list[Any], strategy: str, workspace: str, kind: str,
                      requires: list[str]) -> Any:
    """round_robin and least_recently_selected: choose inside the write transaction and record it."""
    if strategy == "round_robin":
        ids = tx.execute("SELECT w.id, k.id FROM workspace AS w, kind AS k WHERE w.name = ? AND k.name = ?",
                         (workspace, kind)).fetchone()
        key = ",".join(requires)
        position = tx.execute(
            "INSERT INTO selection_cursor (kind_id, workspace_id, requirement, position) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (kind_id, workspace_id, requirement) DO UPDATE SET position = position + 1 "
            "RETURNING position", (ids[1], ids[0], key)).fetchone()[0]
        chosen = rows[(int(position) - 1) % len(rows)]
    else:
        chosen = min(rows, key=lambda row: (row[13] is not None, row[13] or 0.0, row[2]))
    tx.execute("UPDATE entry SET selected_at = ?, selected_count = selected_count + 1 WHERE pk = ?",
               (time.time(), chosen[0]))
    return chosen


def to_entry(row: Any) -> Entry:
    return decode_entry(row[:12])
