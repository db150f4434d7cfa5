"""``check`` and ``stats``: is the registry sound, and what is in it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ._backend import Backend
from ._kind_schema import list_kinds, validate
from ._migrate import latest_version


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The outcome of :meth:`Registry.check`: ``ok`` when ``problems`` is empty."""

    problems: tuple[str, ...]
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "checked": self.checked}


def check(backend: Backend) -> CheckReport:
    problems: list[str] = []
    problems += [f"integrity: {p}" for p in backend.maintenance("integrity")["problems"]]
    problems += [f"foreign key: {p}" for p in backend.maintenance("foreign_keys")["problems"]]
    with backend.read() as tx:
        kinds = {k.name: k for k in list_kinds(tx)}
        rows = tx.execute("SELECT w.name, k.name, e.name, e.definition FROM entry AS e JOIN kind AS k ON "
                          "k.id = e.kind_id JOIN workspace AS w ON w.id = e.workspace_id "
                          "WHERE e.hidden = 0 AND e.definition IS NOT NULL").fetchall()
        for workspace, kind, name, definition in rows:
            try:
                parsed = json.loads(definition)
            except ValueError:
                problems.append(f"definition of {workspace}/{kind}/{name} is not valid JSON")
                continue
            _, found = validate(kinds[kind], name, parsed, apply_defaults=False)
            problems += [f"definition of {workspace}/{kind}/{name}: {p}" for p in found]
        for session_id, state, name in tx.execute(
                "SELECT l.session_id, s.state, e.name FROM lease AS l JOIN session AS s ON s.id = l.session_id "
                "JOIN entry AS e ON e.pk = l.entry_pk WHERE s.state != 'live'").fetchall():
            problems.append(f"lease on {name!r} belongs to session {session_id}, which is {state}")
        for (name,) in tx.execute("SELECT w.name FROM workspace AS w WHERE NOT EXISTS (SELECT 1 FROM "
                                  "workspace_ancestor AS a WHERE a.workspace_id = w.id AND a.ancestor_id = w.id "
                                  "AND a.depth = 0)").fetchall():
            problems.append(f"workspace {name!r} has no closure row for itself (layer resolution would miss it)")
        for name, depth, parent_depth in tx.execute(
                "SELECT w.name, (SELECT max(depth) FROM workspace_ancestor WHERE workspace_id = w.id), "
                "(SELECT max(depth) FROM workspace_ancestor WHERE workspace_id = w.parent_id) FROM workspace AS w "
                "WHERE w.parent_id IS NOT NULL").fetchall():
            if parent_depth is None or depth != parent_depth + 1:
                problems.append(f"workspace {name!r} has an ancestry inconsistent with its parent's")
        for name, session_id in tx.execute(
                "SELECT e.name, e.owner_session_id FROM entry AS e JOIN session AS s ON s.id = e.owner_session_id "
                "WHERE e.ephemeral = 1 AND s.state != 'live'").fetchall():
            problems.append(f"ephemeral entry {name!r} outlived its session {session_id}")
        for name, in tx.execute("SELECT e.name FROM entry AS e WHERE e.ephemeral = 1 AND e.owner_session_id IS NULL"
                                ).fetchall():
            problems.append(f"ephemeral entry {name!r} has no session")
        checked = {"entries": int(tx.execute("SELECT count(*) FROM entry").fetchone()[0]),
                   "definitions": len(rows), "kinds": len(kinds),
                   "leases": int(tx.execute("SELECT count(*) FROM lease").fetchone()[0])}
    return CheckReport(tuple(problems), checked)


def stats(backend: Backend) -> dict[str, Any]:
    with backend.read() as tx:
        per_kind = dict(tx.execute("SELECT k.name, count(e.pk) FROM kind AS k LEFT JOIN entry AS e ON e.kind_id = "
                                   "k.id AND e.hidden = 0 GROUP BY k.name ORDER BY k.name").fetchall())
        per_workspace = dict(tx.execute("SELECT w.name, count(e.pk) FROM workspace AS w LEFT JOIN entry AS e ON "
                                        "e.workspace_id = w.id AND e.hidden = 0 GROUP BY w.name ORDER BY w.name"
                                        ).fetchall())
        result = {
            "path": str(backend.location),
            "schema_version": backend.schema_version(tx),
            "latest_schema_version": latest_version(),
            "revision": int(tx.execute("SELECT coalesce(max(rev), 0) FROM event").fetchone()[0]),
            "events": int(tx.execute("SELECT count(*) FROM event").fetchone()[0]),
            "entries": sum(per_kind.values()),
            "tombstones": int(tx.execute("SELECT count(*) FROM entry WHERE hidden = 1").fetchone()[0]),
            "entries_per_kind": per_kind,
            "entries_per_workspace": per_workspace,
            "workspaces": len(per_workspace),
            "kinds": len(per_kind),
            "live_sessions": int(tx.execute("SELECT count(*) FROM session WHERE state = 'live'").fetchone()[0]),
            "leases": int(tx.execute("SELECT count(*) FROM lease").fetchone()[0]),
        }
    result.update(backend.maintenance("sizes"))
    return result
