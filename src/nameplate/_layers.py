"""Workspaces as layers: create, delete, hide (tombstones), promote, diff, conflicts, explain.

A workspace's ancestry is stored as a closure (``workspace_ancestor``: every ancestor with its depth),
written once when the workspace is created; workspaces are never re-parented. Reads never walk the
tree in Python: they go through the ``resolved_entry`` view, which uses the closure.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from peewee import JOIN, fn
from ulid import ULID

from ._context import CORE
from ._models import Entry as EntryRow
from ._models import Workspace as WorkspaceRow
from ._models import WorkspaceAncestor as WorkspaceAncestorRow
from ._records import Entry, utc
from ._store import ENTRY_COLUMN_COUNT, ENTRY_COLUMNS, RESOLVED, VISIBLE, Guard, Store, decode_entry
from ._validation import check_workspace_name
from .backends.base import Backend, Tx
from .errors import EntryNotFoundError, NameTakenError, WorkspaceError


@dataclass(frozen=True, slots=True)
class WorkspaceInfo:
    """A workspace: its parent (``None`` for core), depth below core, and how many rows it defines."""

    name: str
    parent: str | None
    description: str
    depth: int
    created_at: datetime
    entries: int
    tombstones: int
    children: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "parent": self.parent, "description": self.description, "depth": self.depth,
                "created_at": self.created_at.isoformat(), "entries": self.entries, "tombstones": self.tombstones,
                "children": list(self.children)}


@dataclass(frozen=True, slots=True)
class Layer:
    """One row met while resolving a name: the workspace it lives in and whether it is a tombstone."""

    workspace: str
    depth: int
    id: str
    hidden: bool


@dataclass(frozen=True, slots=True)
class Explanation:
    """How ``(kind, name)`` resolves in a workspace: the chain, the answer, what it shadows."""

    name: str
    kind: str
    workspace: str
    chain: tuple[str, ...]
    layers: tuple[Layer, ...]
    answered_by: str | None
    entry_id: str | None
    hidden_by: str | None
    shadows: tuple[Layer, ...]

    def to_dict(self) -> dict[str, Any]:
        def layer(item: Layer) -> dict[str, Any]:
            return {"workspace": item.workspace, "depth": item.depth, "id": item.id, "tombstone": item.hidden}

        return {"name": self.name, "kind": self.kind, "workspace": self.workspace, "chain": list(self.chain),
                "layers": [layer(x) for x in self.layers], "answered_by": self.answered_by,
                "entry_id": self.entry_id, "hidden_by": self.hidden_by, "shadows": [layer(x) for x in self.shadows]}

    def __str__(self) -> str:
        lines = [f"{self.kind} {self.name!r} in workspace {self.workspace!r} (chain: {' -> '.join(self.chain)})"]
        if not self.layers:
            lines.append("  no layer defines it")
        for item in self.layers:
            role = "answers" if item.workspace == self.answered_by and not item.hidden else (
                "hides what is below (tombstone)" if item.hidden and item.workspace == self.hidden_by else "shadowed")
            row = "tombstone" if item.hidden else item.id
            lines.append(f"  {item.workspace:<16} depth {item.depth}  {row}  {role}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Diff:
    """What differs between the views of two workspaces (each sees its own layer over its ancestors)."""

    a: str
    b: str
    only_in_a: tuple[Entry, ...] = ()
    only_in_b: tuple[Entry, ...] = ()
    changed: tuple[tuple[Entry, Entry], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.changed)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "only_in_a": [e.to_dict() for e in self.only_in_a],
                "only_in_b": [e.to_dict() for e in self.only_in_b],
                "changed": [{"a": x.to_dict(), "b": y.to_dict()} for x, y in self.changed]}


@dataclass(frozen=True, slots=True)
class Conflict:
    """``sibling``: one name defined differently in sibling workspaces; ``shadow``: a workspace overrides
    an entry its ancestor defines."""

    type: str
    kind: str
    name: str
    workspaces: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "kind": self.kind, "name": self.name, "workspaces": list(self.workspaces),
                "details": self.details}


def create_workspace(tx: Tx, store: Store, name: str, parent: str, description: str,
                     exist_ok: bool = False) -> WorkspaceInfo:
    """Create a workspace over ``parent`` and return it, in a constant number of statements: its
    closure rows are the parent's plus itself (one INSERT ... SELECT), nothing else is read. With
    ``exist_ok`` a workspace of that name over that same parent is returned as it is."""
    check_workspace_name(name)
    parent_id = store.workspace_id(tx, parent)
    existing = tx.execute("SELECT parent_id FROM workspace WHERE name = ?", (name,)).fetchone()
    if existing is not None:
        if exist_ok and existing[0] == parent_id:
            return list_workspaces(store.backend, only=name)[0]
        over = "" if not exist_ok else " over another parent"
        raise NameTakenError(f"workspace {name!r} already exists{over}; pick another name or delete it first",
                             workspace=name)
    now = time.time()
    new_id = tx.execute("INSERT INTO workspace (name, parent_id, description, created_at) VALUES (?, ?, ?, ?) "
                        "RETURNING id", (name, parent_id, description, now)).fetchone()[0]
    tx.execute("INSERT INTO workspace_ancestor (workspace_id, ancestor_id, depth) VALUES (?, ?, 0)", (new_id, new_id))
    tx.execute("INSERT INTO workspace_ancestor (workspace_id, ancestor_id, depth) "
               "SELECT ?, ancestor_id, depth + 1 FROM workspace_ancestor WHERE workspace_id = ?", (new_id, parent_id))
    store.record(tx, "workspace.create", workspace=name, at=now, parent=parent, description=description)
    depth = tx.execute("SELECT max(depth) FROM workspace_ancestor WHERE workspace_id = ?", (new_id,)).fetchone()[0]
    return WorkspaceInfo(name, parent, description, int(depth), utc(now), 0, 0, ())


def list_workspaces(backend: Backend, only: str | None = None) -> list[WorkspaceInfo]:
    """Every workspace by name, with its depth, counts and children; inside the caller's read transaction.
    ``only``: just that workspace (its row and its children's, not every workspace's counts)."""
    parent = WorkspaceRow.alias()
    depth = (WorkspaceAncestorRow.select(fn.MAX(WorkspaceAncestorRow.depth))
             .where(WorkspaceAncestorRow.workspace == WorkspaceRow.id))
    entries = EntryRow.select(fn.COUNT(EntryRow.pk)).where((EntryRow.workspace == WorkspaceRow.id)
                                                           & (EntryRow.hidden == 0))
    tombstones = EntryRow.select(fn.COUNT(EntryRow.pk)).where((EntryRow.workspace == WorkspaceRow.id)
                                                              & (EntryRow.hidden == 1))
    query = (WorkspaceRow.select(WorkspaceRow.name, parent.name.alias("parent"), WorkspaceRow.description,
                                 depth.alias("depth"), WorkspaceRow.created_at, entries.alias("entries"),
                                 tombstones.alias("tombstones"))
             .join(parent, JOIN.LEFT_OUTER, on=WorkspaceRow.parent == parent.id)
             .order_by(WorkspaceRow.name))
    if only is not None:
        query = query.where((WorkspaceRow.name == only) | (parent.name == only))
    rows = list(query.namedtuples().execute(backend.peewee))
    children: dict[str, list[str]] = {}
    for row in rows:
        if row.parent is not None:
            children.setdefault(row.parent, []).append(row.name)
    return [WorkspaceInfo(row.name, row.parent, row.description, int(row.depth), utc(row.created_at),
                          int(row.entries), int(row.tombstones), tuple(children.get(row.name, ())))
            for row in rows if only is None or row.name == only]


def delete_workspace(tx: Tx, store: Store, name: str, force: bool) -> list[str]:
    """Delete a workspace (with ``force``, its descendants too); return the names deleted, deepest first."""
    if name == CORE:
        raise WorkspaceError("the core workspace is the root of every other and cannot be deleted", workspace=name)
    workspace_id = store.workspace_id(tx, name)
    descendants = tx.execute(
        "SELECT w.name, w.id, a.depth FROM workspace_ancestor AS a JOIN workspace AS w ON w.id = a.workspace_id "
        "WHERE a.ancestor_id = ? AND a.depth > 0 ORDER BY a.depth DESC, w.name", (workspace_id,)).fetchall()
    if descendants and not force:
        names = ", ".join(r[0] for r in descendants)
        raise WorkspaceError(f"workspace {name!r} has child workspaces ({names}); delete them first or pass "
                             "force=True to delete them all", workspace=name, children=[r[0] for r in descendants])
    doomed = [(r[0], r[1]) for r in descendants] + [(name, workspace_id)]
    leased = tx.execute(
        f"SELECT count(*) FROM lease AS l JOIN entry AS e ON e.pk = l.entry_pk WHERE e.workspace_id IN "
        f"({','.join('?' * len(doomed))})", [d[1] for d in doomed]).fetchone()[0]
    if leased:
        raise WorkspaceError(f"workspace {name!r} (or a child) holds {leased} leased entries; release them first",
                             workspace=name, leased=leased)
    for doomed_name, doomed_id in doomed:
        # The rows go with the workspace (ON DELETE CASCADE); each entry's history still gets its end.
        rows = tx.execute("SELECT e.id, e.name, k.name, e.hidden FROM entry AS e JOIN kind AS k ON k.id = e.kind_id "
                          "WHERE e.workspace_id = ? ORDER BY e.pk", (doomed_id,)).fetchall()
        for entry_id, entry_name, kind, hidden in rows:
            if not hidden:
                store.record(tx, "delete", workspace=doomed_name, kind=kind, name=entry_name, entry_id=entry_id,
                             reason=f"workspace {doomed_name!r} deleted")
        tx.execute("DELETE FROM workspace_ancestor WHERE workspace_id = ?", (doomed_id,))
        tx.execute("DELETE FROM workspace WHERE id = ?", (doomed_id,))
        store.record(tx, "workspace.delete", workspace=doomed_name, rows_deleted=len(rows))
    return [d[0] for d in doomed]


def hide(tx: Tx, store: Store, workspace: str, name: str, kind: str | None) -> str:
    """Tombstone the inherited entry ``name`` for ``workspace`` and its children; return the hidden id."""
    row = store.visible_row(tx, workspace, name, kind, "hide")
    if row.workspace == workspace:
        raise WorkspaceError(f"{row.kind} {name!r} is defined in {workspace!r} itself; delete it instead (hide "
                             "only masks what an ancestor defines)", name=name, kind=row.kind, workspace=workspace)
    workspace_id = store.workspace_id(tx, workspace)
    now = time.time()
    tx.execute("INSERT INTO entry (id, workspace_id, kind_id, name, hidden, created_at, updated_at, last_seen_at) "
               "VALUES (?, ?, ?, ?, 1, ?, ?, ?)", (str(ULID()), workspace_id, row.kind_id, name, now, now, now))
    store.record(tx, "hide", workspace=workspace, kind=row.kind, name=name, entry_id=row.id, at=now,
                 defined_in=row.workspace)
    return row.id


def unhide(tx: Tx, store: Store, workspace: str, name: str, kind: str) -> None:
    workspace_id = store.workspace_id(tx, workspace)
    kind_id = store.kind_id(tx, kind)
    gone = tx.execute("DELETE FROM entry WHERE workspace_id = ? AND kind_id = ? AND name = ? AND hidden = 1",
                      (workspace_id, kind_id, name)).rowcount
    if not gone:
        raise EntryNotFoundError(f"workspace {workspace!r} does not hide {kind} {name!r}; nothing to unhide",
                                 name=name, kind=kind, workspace=workspace)
    store.record(tx, "unhide", workspace=workspace, kind=kind, name=name)


def promote(tx: Tx, store: Store, workspace: str, name: str, kind: str | None, replace: bool,
            guard: Guard | None = None, removal_guard: Guard | None = None) -> tuple[str, str]:
    """Move ``workspace``'s own entry one layer up, keeping its id; return ``(id, parent)``.

    ``guard`` runs on the promoted entry and ``removal_guard`` on the parent's entry that ``replace``
    deletes: the registry refuses rows leased by another session, and ends the caller's own lease of a
    row it deletes.
    """
    local = store.visible_local(tx, workspace, name, kind, "promote")
    if guard is not None:
        guard(tx, local.pk, local.id, local.kind)
    parent = tx.execute("SELECT p.id, p.name FROM workspace AS w JOIN workspace AS p ON p.id = w.parent_id "
                        "WHERE w.id = ?", (local.workspace_id,)).fetchone()
    if parent is None:
        raise WorkspaceError(f"{local.kind} {name!r} is already in core, the top layer; nothing to promote to",
                             name=name, kind=local.kind)
    parent_id, parent_name = parent
    existing = tx.execute("SELECT pk, id, hidden FROM entry WHERE workspace_id = ? AND kind_id = ? AND name = ?",
                          (parent_id, local.kind_id, name)).fetchone()
    if existing is not None and not existing[2] and not replace:
        raise NameTakenError(f"{local.kind} {name!r} already exists in {parent_name!r} (id {existing[1]}); pass "
                             "replace=True to overwrite it with the promoted definition", name=name, kind=local.kind,
                             existing_id=existing[1])
    if existing is not None:
        if removal_guard is not None and not existing[2]:
            removal_guard(tx, int(existing[0]), existing[1], local.kind)
        tx.execute("DELETE FROM entry WHERE pk = ?", (existing[0],))
        if not existing[2]:
            store.record(tx, "delete", workspace=parent_name, kind=local.kind, name=name, entry_id=existing[1],
                         reason=f"replaced by the promotion of {local.id} from {workspace!r}")
    now = time.time()
    tx.execute("UPDATE entry SET workspace_id = ?, updated_at = ? WHERE pk = ?", (parent_id, now, local.pk))
    store.record(tx, "promote", workspace=parent_name, kind=local.kind, name=name, entry_id=local.id, at=now,
                 **{"from": workspace, "to": parent_name})
    return local.id, parent_name


def chain(tx: Tx, store: Store, workspace: str) -> list[str]:
    workspace_id = store.workspace_id(tx, workspace)
    return [r[0] for r in tx.execute(
        "SELECT w.name FROM workspace_ancestor AS a JOIN workspace AS w ON w.id = a.ancestor_id "
        "WHERE a.workspace_id = ? ORDER BY a.depth", (workspace_id,)).fetchall()]


def explain(tx: Tx, store: Store, workspace: str, name: str, kind: str) -> Explanation:
    """Every row met on the way up from ``workspace``; the nearest decides (the view's rule)."""
    names = chain(tx, store, workspace)
    store.kind_id(tx, kind)
    rows = tx.execute(
        "SELECT w.name, a.depth, e.id, e.hidden FROM workspace_ancestor AS a "
        "JOIN workspace AS viewer ON viewer.id = a.workspace_id JOIN entry AS e ON e.workspace_id = a.ancestor_id "
        "JOIN kind AS k ON k.id = e.kind_id JOIN workspace AS w ON w.id = e.workspace_id "
        "WHERE viewer.name = ? AND e.name = ? AND k.name = ? ORDER BY a.depth", (workspace, name, kind)).fetchall()
    layers = tuple(Layer(r[0], int(r[1]), r[2], bool(r[3])) for r in rows)
    top = layers[0] if layers else None
    return Explanation(
        name=name, kind=kind, workspace=workspace, chain=tuple(names), layers=layers,
        answered_by=top.workspace if top and not top.hidden else None,
        entry_id=top.id if top and not top.hidden else None,
        hidden_by=top.workspace if top and top.hidden else None,
        shadows=layers[1:])


def _comparable(entry: Entry) -> tuple[Any, ...]:
    return (entry.id, json.dumps(dict(entry.definition or {}), sort_keys=True), entry.target,
            tuple(sorted(entry.capabilities)), json.dumps(dict(entry.metadata), sort_keys=True))


def diff(store: Store, a: str, b: str) -> Diff:
    with store.backend.read() as tx:
        store.workspace_id(tx, a)
        store.workspace_id(tx, b)
        select = f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE} ORDER BY k.name, r.name"
        left = {(e.kind, e.name): e for e in map(decode_entry, tx.execute(select, (a,)).fetchall())}
        right = {(e.kind, e.name): e for e in map(decode_entry, tx.execute(select, (b,)).fetchall())}
    return Diff(
        a=a, b=b,
        only_in_a=tuple(left[k] for k in sorted(left.keys() - right.keys())),
        only_in_b=tuple(right[k] for k in sorted(right.keys() - left.keys())),
        changed=tuple((left[k], right[k]) for k in sorted(left.keys() & right.keys())
                      if _comparable(left[k]) != _comparable(right[k])))


def conflicts(store: Store) -> list[Conflict]:
    found: list[Conflict] = []
    with store.backend.read() as tx:
        rows = tx.execute(
            f"SELECT {ENTRY_COLUMNS}, w.parent_id FROM entry AS r JOIN kind AS k ON k.id = r.kind_id "
            "JOIN workspace AS w ON w.id = r.workspace_id WHERE r.hidden = 0 AND w.parent_id IS NOT NULL "
            "ORDER BY k.name, r.name, w.name").fetchall()
        by_parent: dict[tuple[Any, str, str], list[Entry]] = {}
        for row in rows:
            entry = decode_entry(row[:ENTRY_COLUMN_COUNT])
            by_parent.setdefault((row[ENTRY_COLUMN_COUNT], entry.kind, entry.name), []).append(entry)
        for (_, kind, name), entries in by_parent.items():
            if len(entries) > 1 and len({_comparable(e)[1:] for e in entries}) > 1:
                found.append(Conflict("sibling", kind, name, tuple(e.workspace for e in entries),
                                      {"ids": {e.workspace: e.id for e in entries}}))
        shadows = tx.execute(
            "SELECT k.name, e.name, w.name, anc.name, e.id, up.id FROM entry AS e "
            "JOIN kind AS k ON k.id = e.kind_id JOIN workspace AS w ON w.id = e.workspace_id "
            "JOIN workspace_ancestor AS a ON a.workspace_id = e.workspace_id AND a.depth > 0 "
            "JOIN entry AS up ON up.workspace_id = a.ancestor_id AND up.kind_id = e.kind_id AND up.name = e.name "
            "AND up.hidden = 0 JOIN workspace AS anc ON anc.id = a.ancestor_id "
            "WHERE e.hidden = 0 ORDER BY k.name, e.name, w.name").fetchall()
        for kind, name, workspace, ancestor, own_id, shadowed_id in shadows:
            found.append(Conflict("shadow", kind, name, (workspace, ancestor),
                                  {"id": own_id, "shadowed_id": shadowed_id}))
    return found

