"""``check`` and ``stats``: is the registry sound, and what is in it."""

from __future__ import annotations

import json
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._kind_schema import Kind, list_kinds, name_problems, validate
from ._plugins import stale_findings
from ._session import list_sessions
from .backends.base import Backend, Tx
from .backends.migrate import latest_version
from .errors import NameplateError

#: The checks ``check()`` runs, in order; each finding names the one that found it.
CHECKS = ("integrity", "foreign_key", "definition", "metadata", "capability_index", "lease", "layer", "ephemeral",
          "permissions", "plugin")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing ``check()`` found: which check found it, and what it is, in one line."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "message": self.message}


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The outcome of :meth:`Registry.check`.

    ``problems`` are inconsistencies (the CLI exits 5); ``warnings`` are states that housekeeping
    clears (``nameplate reap``), not damage. ``checked`` counts what was looked at.
    """

    problems: tuple[Finding, ...]
    warnings: tuple[Finding, ...] = ()
    checked: dict[str, int] = field(default_factory=dict)
    #: Checks that mean nothing on this database (PostgreSQL: integrity, foreign_key, permissions).
    not_applicable: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        result = {"ok": self.ok, "problems": [p.to_dict() for p in self.problems],
                  "warnings": [w.to_dict() for w in self.warnings], "checked": self.checked}
        if self.not_applicable:
            result["not_applicable"] = list(self.not_applicable)
        return result


def check(backend: Backend) -> CheckReport:
    problems: list[Finding] = []
    warnings: list[Finding] = []
    problems += [Finding("integrity", p) for p in backend.integrity_problems()]
    problems += [Finding("foreign_key", p) for p in backend.foreign_key_problems()]
    with backend.read() as tx:
        kinds = {k.name: k for k in list_kinds(tx)}
        definitions = _definitions(tx, kinds, problems)
        _metadata(tx, problems)
        _capability_index(tx, problems)
        _leases(backend, problems, warnings)
        _layers(tx, problems)
        _ephemeral(tx, problems)
        checked = {"entries": int(tx.execute("SELECT count(*) FROM entry").fetchone()[0]),
                   "definitions": definitions, "kinds": len(kinds),
                   "workspaces": int(tx.execute("SELECT count(*) FROM workspace").fetchone()[0]),
                   "leases": int(tx.execute("SELECT count(*) FROM lease").fetchone()[0]),
                   "sessions": int(tx.execute("SELECT count(*) FROM session WHERE state = 'live'").fetchone()[0])}
    _permissions(backend.location.path, problems, warnings)
    # Outside the read above: judging plugins reads installed distributions' metadata from disk.
    stale, checked["plugins"] = stale_findings(backend)
    warnings += [Finding("plugin", message) for message in stale]
    skipped = tuple(c for c in CHECKS if c in backend.not_applicable())
    return CheckReport(tuple(problems), tuple(warnings), checked, skipped)


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _permissions(path: Path | None, problems: list[Finding], warnings: list[Finding]) -> None:
    """Who else can change the registry. Anyone who can write the file (or replace it through its
    directory) can forge leases and fencing tokens, which no check inside nameplate would notice:
    a problem. A shared group, another owner or a sticky world-writable directory (``/tmp``) may
    be deliberate: a warning."""
    if path is None:
        return
    me = os.geteuid()
    for target, what in ((path, "the database file"), (path.parent, "its directory")):
        try:
            info = os.stat(target)
        except OSError as error:
            warnings.append(Finding("permissions", f"cannot inspect {what} {target}: {error.strerror}"))
            continue
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid != me:
            warnings.append(Finding("permissions", f"{what} {target} is owned by {_owner_name(info.st_uid)}, not "
                                    f"by {_owner_name(me)}, who runs this check"))
        sticky = bool(mode & stat.S_ISVTX) and target == path.parent
        if mode & stat.S_IWOTH and not sticky:
            problems.append(Finding("permissions", f"{what} {target} is writable by every user (mode {mode:04o}); "
                                    f"they could rewrite leases and ids: chmod o-w {target}"))
        elif mode & stat.S_IWOTH:
            warnings.append(Finding("permissions", f"{what} {target} is writable by every user (sticky, mode "
                                    f"{mode:04o}): others can create the -wal and -shm files beside the database; "
                                    "prefer a private directory"))
        elif mode & stat.S_IWGRP:
            warnings.append(Finding("permissions", f"{what} {target} is writable by its group (mode {mode:04o}); "
                                    "fine if the group is meant to share the registry"))


def _definitions(tx: Tx, kinds: dict[str, Kind], problems: list[Finding]) -> int:
    """Every visible entry against its kind: definitions in full, identities by their name pattern."""
    rows = tx.execute("SELECT w.name, k.name, e.name, e.definition FROM entry AS e JOIN kind AS k ON "
                      "k.id = e.kind_id JOIN workspace AS w ON w.id = e.workspace_id WHERE e.hidden = 0").fetchall()
    count = 0
    for workspace, kind_name, name, definition in rows:
        where = f"{workspace}/{kind_name}/{name}"
        kind = kinds[kind_name]
        if definition is None:
            problems += [Finding("definition", f"{where}: {p}") for p in name_problems(kind, name)]
            continue
        count += 1
        try:
            parsed = json.loads(definition)
        except ValueError:
            problems.append(Finding("definition", f"{where}: the stored definition is not valid JSON"))
            continue
        try:
            _, found = validate(kind, name, parsed, apply_defaults=False)
        except NameplateError as error:  # the kind's validator cannot be imported: that is a finding too
            found = [str(error)]
        problems += [Finding("definition", f"{where}: {p}") for p in found]
    return count


def _entry_rows(tx: Tx) -> list[tuple[str, str, str, int, str, str]]:
    return tx.execute("SELECT w.name, k.name, e.name, e.pk, e.metadata, e.capabilities FROM entry AS e JOIN kind AS k "
                      "ON k.id = e.kind_id JOIN workspace AS w ON w.id = e.workspace_id ORDER BY e.pk").fetchall()


def _json_of_shape(text: str, shape: type) -> Any:
    """The decoded ``text`` if it is JSON of ``shape`` (dict or list), else ``None`` (decoded here, not by
    the database: JSON functions are not portable)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, shape) else None


def _metadata(tx: Tx, problems: list[Finding]) -> None:
    for workspace, kind, name, _, metadata, capabilities in _entry_rows(tx):
        for column, text, shape, word in (("metadata", metadata, dict, "object"),
                                           ("capabilities", capabilities, list, "array")):
            if _json_of_shape(text, shape) is None:
                problems.append(Finding("metadata", f"{workspace}/{kind}/{name}: {column} is not a JSON {word}"))


def _capability_index(tx: Tx, problems: list[Finding]) -> None:
    """``entry_capability`` must mirror each entry's capabilities, or find() and list() disagree."""
    indexed: dict[int, list[str]] = {}
    for capability, entry_pk in tx.execute("SELECT capability, entry_pk FROM entry_capability ORDER BY capability"
                                           ).fetchall():
        indexed.setdefault(int(entry_pk), []).append(capability)
    for workspace, kind, name, pk, _, stored in _entry_rows(tx):
        offered = _json_of_shape(stored, list)
        if offered is None or (not offered and pk not in indexed):
            continue
        held = indexed.get(pk, [])
        if sorted(offered) != held:
            shown = json.dumps(held, separators=(",", ":"))
            problems.append(Finding("capability_index", f"{workspace}/{kind}/{name}: capabilities {stored} but the "
                                    f"index holds {shown} (find() would disagree with list())"))


def _leases(backend: Backend, problems: list[Finding], warnings: list[Finding]) -> None:
    for session in list_sessions(backend, alive=False):
        for lease in session.leases:
            where = f"lease on {lease.workspace}/{lease.kind}/{lease.name}"
            if session.state != "live":
                problems.append(Finding("lease", f"{where} belongs to session {session.id}, which is {session.state}"))
            elif not session.alive:
                warnings.append(Finding("lease", f"{where} is held by session {session.id} (pid {session.pid} on "
                                        f"{session.hostname}), whose process is gone or stopped beating; "
                                        "`nameplate reap` frees it"))


def _layers(tx: Tx, problems: list[Finding]) -> None:
    for (name,) in tx.execute("SELECT w.name FROM workspace AS w WHERE NOT EXISTS (SELECT 1 FROM "
                              "workspace_ancestor AS a WHERE a.workspace_id = w.id AND a.ancestor_id = w.id "
                              "AND a.depth = 0)").fetchall():
        problems.append(Finding("layer", f"workspace {name!r} has no closure row for itself (layer resolution "
                                "would miss it)"))
    for name, depth, parent_depth in tx.execute(
            "SELECT w.name, (SELECT max(depth) FROM workspace_ancestor WHERE workspace_id = w.id), "
            "(SELECT max(depth) FROM workspace_ancestor WHERE workspace_id = w.parent_id) FROM workspace AS w "
            "WHERE w.parent_id IS NOT NULL").fetchall():
        if parent_depth is None or depth != parent_depth + 1:
            problems.append(Finding("layer", f"workspace {name!r} has an ancestry inconsistent with its parent's"))


def _ephemeral(tx: Tx, problems: list[Finding]) -> None:
    for name, session_id in tx.execute(
            "SELECT e.name, e.owner_session_id FROM entry AS e JOIN session AS s ON s.id = e.owner_session_id "
            "WHERE e.ephemeral = 1 AND s.state != 'live'").fetchall():
        problems.append(Finding("ephemeral", f"ephemeral entry {name!r} outlived its session {session_id}"))
    for (name,) in tx.execute("SELECT e.name FROM entry AS e WHERE e.ephemeral = 1 AND e.owner_session_id IS NULL"
                              ).fetchall():
        problems.append(Finding("ephemeral", f"ephemeral entry {name!r} has no session"))


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
    result.update(backend.storage_sizes())
    skipped = backend.not_applicable()
    if skipped:
        result["not_applicable"] = [k for k in ("file_bytes", "wal_bytes", "shm_bytes") if k in skipped]
    return result
