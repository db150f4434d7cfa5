"""Export and import: nameplate's own versioned document, and MADSci's ``registry.json``.

An export is one read transaction, stamped with the revision (the last event) it reflects. An import
validates the whole document first (structure, version, names, ids, duplicates, kinds, parents,
definitions), builds a plan against the registry as it is, and only then writes everything in one
transaction: ``merge`` keeps what exists and adds what is new; ``replace`` makes the file the registry.
Both formats keep entry ids, so a round trip into an empty registry reproduces them.

MADSci's ``LocalRegistryManager`` file maps each name to ``{id, component_type, created_at, last_seen,
metadata, lock, workcell_id}``. Its names share one namespace, so it imports into one workspace;
``workcell_id`` travels in the entry's definition; locks belong to processes of the old registry and
are not imported (the plan counts them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ulid import ULID

from ._backend import Backend, Tx
from ._context import CORE
from ._kind_schema import Kind, build_kind, list_kinds, validate
from ._records import utc
from ._store import Store
from ._validation import check_capabilities, check_kind_name, check_name, check_target, check_workspace_name, encode_object
from .errors import ConflictError, ImportFileError, InvalidInputError, NameplateError

FORMAT = "nameplate-export"
VERSION = 1
MADSCI_KINDS = ("node", "module", "manager", "experiment", "workcell")


def iso(timestamp: float) -> str:
    return utc(timestamp).isoformat().replace("+00:00", "Z")  # type: ignore[union-attr]


def parse_time(value: Any, where: str, problems: list[str]) -> float:
    if not isinstance(value, str):
        problems.append(f"{where}: expected an ISO 8601 time string, got {value!r}")
        return 0.0
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        problems.append(f"{where}: {value!r} is not an ISO 8601 time")
        return 0.0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# -- export ----------------------------------------------------------------------------------------------


def export_document(backend: Backend) -> dict[str, Any]:
    with backend.read() as tx:
        revision = tx.execute("SELECT coalesce(max(rev), 0) FROM event").fetchone()[0]
        workspaces = tx.execute(
            "SELECT w.name, p.name, w.description, w.created_at FROM workspace AS w "
            "LEFT JOIN workspace AS p ON p.id = w.parent_id JOIN workspace_ancestor AS a ON a.workspace_id = w.id "
            "GROUP BY w.id ORDER BY max(a.depth), w.name").fetchall()
        kinds = list_kinds(tx)
        rows = tx.execute(
            "SELECT e.id, w.name, k.name, e.name, e.hidden, e.metadata, e.capabilities, e.definition, e.target, "
            "e.created_at, e.updated_at, e.last_seen_at FROM entry AS e JOIN kind AS k ON k.id = e.kind_id "
            "JOIN workspace AS w ON w.id = e.workspace_id ORDER BY w.name, k.name, e.name").fetchall()
        schema_version = backend.schema_version(tx)
    entries, tombstones = [], []
    for r in rows:
        if r[4]:
            tombstones.append({"workspace": r[1], "kind": r[2], "name": r[3]})
            continue
        entries.append({"id": r[0], "workspace": r[1], "kind": r[2], "name": r[3], "metadata": json.loads(r[5]),
                        "capabilities": json.loads(r[6]), "definition": None if r[7] is None else json.loads(r[7]),
                        "target": r[8], "created_at": iso(r[9]), "updated_at": iso(r[10]),
                        "last_seen_at": iso(r[11])})
    return {
        "format": FORMAT, "version": VERSION, "revision": int(revision), "exported_at": iso(time.time()),
        "schema_version": schema_version,
        "workspaces": [{"name": w[0], "parent": w[1], "description": w[2], "created_at": iso(w[3])}
                       for w in workspaces],
        "kinds": [k.to_dict() for k in kinds],
        "entries": entries,
        "tombstones": tombstones,
    }


def export_madsci(backend: Backend, workspace: str) -> dict[str, Any]:
    """The entries of MADSci's kinds visible in ``workspace``, as a ``registry.json`` document."""
    marks = ",".join("?" * len(MADSCI_KINDS))
    with backend.read() as tx:
        rows = tx.execute(
            "SELECT r.name, r.id, k.name, r.created_at, r.last_seen_at, r.metadata, r.definition, r.pk, r.updated_at "
            "FROM resolved_entry AS r JOIN workspace AS viewer ON viewer.id = r.viewer_id "
            f"JOIN kind AS k ON k.id = r.kind_id WHERE viewer.name = ? AND r.hidden = 0 AND k.name IN ({marks}) "
            "ORDER BY r.created_at, r.name", (workspace, *MADSCI_KINDS)).fetchall()
        locks = {r[0]: r[1:] for r in tx.execute(
            "SELECT l.entry_pk, s.pid, s.hostname, s.id, l.acquired_at, s.beat_at, s.ttl FROM lease AS l "
            "JOIN session AS s ON s.id = l.session_id").fetchall()}
    entries: dict[str, Any] = {}
    for name, entry_id, kind, created, seen, metadata, definition, pk, _ in rows:
        if name in entries:
            raise ConflictError(f"{name!r} exists under several MADSci kinds in workspace {workspace!r}; MADSci's "
                                "registry.json holds one entry per name (export one kind at a time is not "
                                "possible; rename one of them first)", name=name)
        lock = locks.get(pk)
        entries[name] = {
            "id": entry_id, "component_type": kind, "created_at": iso(created), "last_seen": iso(seen),
            "metadata": json.loads(metadata),
            "lock": None if lock is None else {
                "holder_pid": lock[0], "holder_host": lock[1], "holder_instance": lock[2],
                "acquired_at": iso(lock[3]), "heartbeat_at": iso(lock[4]), "expires_at": iso(lock[4] + lock[5])},
            "workcell_id": (json.loads(definition) or {}).get("workcell_id") if definition else None,
        }
    created_at = min((r[3] for r in rows), default=time.time())
    updated_at = max((max(r[4], r[8]) for r in rows), default=time.time())
    return {"version": 1, "created_at": iso(created_at), "updated_at": iso(updated_at), "entries": entries}


# -- import: validation ----------------------------------------------------------------------------------


@dataclass
class ImportPlan:
    """What an import does (or, with ``dry_run``, would do). Names are ``workspace/kind/name``."""

    mode: str
    format: str
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    workspaces_added: list[str] = field(default_factory=list)
    kinds_added: list[str] = field(default_factory=list)
    tombstones_added: list[str] = field(default_factory=list)
    locks_dropped: int = 0
    applied: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}

    def summary(self) -> str:
        verb = "imported" if self.applied else "would import"
        return (f"{verb} ({self.mode}, {self.format}): {len(self.added)} added, {len(self.kept)} kept, "
                f"{len(self.replaced)} replaced, {len(self.removed)} removed, {len(self.workspaces_added)} "
                f"workspaces and {len(self.kinds_added)} kinds added"
                + (f", {self.locks_dropped} locks not imported" if self.locks_dropped else ""))


@dataclass
class _Document:
    workspaces: list[dict[str, Any]]
    kinds: list[dict[str, Any]]
    entries: list[dict[str, Any]]
    tombstones: list[dict[str, Any]]
    format: str
    locks: int = 0


def _fail(problems: list[str], source: str) -> ImportFileError:
    shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    return ImportFileError(f"{source} cannot be imported ({len(problems)} problem(s), nothing was changed): {shown}",
                           problems=problems)


def detect_format(data: Any) -> str:
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        return "nameplate"
    if isinstance(data, Mapping) and isinstance(data.get("entries"), Mapping):
        return "madsci"
    raise ImportFileError("not a nameplate export (no \"format\": \"nameplate-export\") nor a MADSci registry.json "
                          "(no \"entries\" object); pass --format if you know better", problems=["unknown format"])


def parse_document(data: Any, fmt: str, workspace: str, source: str) -> _Document:
    if fmt == "auto":
        fmt = detect_format(data)
    if fmt == "nameplate":
        return _parse_nameplate(data, source)
    if fmt == "madsci":
        return _parse_madsci(data, workspace, source)
    raise InvalidInputError(f"unknown import format {fmt!r}; use nameplate, madsci or auto", format=fmt)


def _parse_nameplate(data: Any, source: str) -> _Document:
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise _fail(["the document is not a JSON object"], source)
    if data.get("format") != FORMAT:
        problems.append(f"\"format\" must be {FORMAT!r}, found {data.get('format')!r}")
    if data.get("version") != VERSION:
        problems.append(f"version {data.get('version')!r} is not supported (this nameplate reads version {VERSION})")
    sections = {}
    for key in ("workspaces", "kinds", "entries", "tombstones"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            problems.append(f"\"{key}\" must be a list of objects")
            value = []
        sections[key] = [dict(item) for item in value]
    if problems:
        raise _fail(problems, source)
    return _Document(sections["workspaces"], sections["kinds"], sections["entries"], sections["tombstones"],
                     "nameplate")


def _parse_madsci(data: Any, workspace: str, source: str) -> _Document:
    if not isinstance(data, Mapping) or not isinstance(data.get("entries"), Mapping):
        raise _fail(["a MADSci registry.json is an object with an \"entries\" object"], source)
    problems: list[str] = []
    entries, locks = [], 0
    for name, item in data["entries"].items():
        if not isinstance(item, Mapping):
            problems.append(f"entry {name!r}: not an object")
            continue
        unknown = sorted(set(item) - {"id", "component_type", "created_at", "last_seen", "metadata", "lock",
                                      "workcell_id"})
        if unknown:
            problems.append(f"entry {name!r}: unknown fields {unknown}")
        if item.get("lock") is not None:
            locks += 1
        workcell = item.get("workcell_id")
        entries.append({"id": item.get("id"), "workspace": workspace, "kind": item.get("component_type"),
                        "name": name, "metadata": item.get("metadata", {}), "capabilities": [],
                        "definition": None if workcell is None else {"workcell_id": workcell}, "target": None,
                        "created_at": item.get("created_at"), "updated_at": item.get("last_seen"),
                        "last_seen_at": item.get("last_seen")})
        if item.get("component_type") not in MADSCI_KINDS:
            problems.append(f"entry {name!r}: component_type {item.get('component_type')!r} is not one of "
                            f"{', '.join(MADSCI_KINDS)}")
    if problems:
        raise _fail(problems, source)
    return _Document([], [], entries, [], "madsci", locks)


def _check_document(doc: _Document, tx: Tx, mode: str, source: str,
                    progress: Callable[[int, int], None] | None = None) -> tuple[list[str], dict[str, Kind]]:
    """Every problem in the document, judged against the registry it goes into."""
    problems: list[str] = []
    existing_ws = {r[0] for r in tx.execute("SELECT name FROM workspace").fetchall()}
    known_ws = {CORE} | (set() if mode == "replace" else existing_ws)
    for index, ws in enumerate(doc.workspaces):
        where = f"workspaces[{index}]"
        try:
            check_workspace_name(ws.get("name"))
        except InvalidInputError as error:
            problems.append(f"{where}: {error}")
            continue
        if ws["name"] == CORE:
            continue
        if ws.get("parent") not in known_ws:
            problems.append(f"{where}: parent {ws.get('parent')!r} of {ws['name']!r} is neither core nor listed before it")
        if ws["name"] in known_ws and ws["name"] in {w.get("name") for w in doc.workspaces[:index]}:
            problems.append(f"{where}: workspace {ws['name']!r} is listed twice")
        known_ws.add(ws["name"])
        parse_time(ws.get("created_at", iso(time.time())), f"{where}.created_at", problems)
    kinds = {k.name: k for k in list_kinds(tx)}
    for index, item in enumerate(doc.kinds):
        where = f"kinds[{index}]"
        name = item.get("name")
        if item.get("builtin"):
            if name not in kinds or not kinds[name].builtin:
                problems.append(f"{where}: built-in kind {name!r} is unknown to this nameplate")
            continue
        try:
            values = build_kind(name, required=item.get("required", []), optional=item.get("optional", []),
                                defaults=item.get("defaults"), name_pattern=item.get("name_pattern"),
                                validator=item.get("validator"), strict=bool(item.get("strict", True)),
                                description=item.get("description", ""))
        except NameplateError as error:
            problems.append(f"{where}: {error}")
            continue
        kinds[name] = Kind(name, values["description"], tuple(json.loads(values["required"])),
                           tuple(json.loads(values["optional"])), json.loads(values["defaults"]),
                           values["name_pattern"], values["validator"], bool(values["strict"]), False,
                           utc(time.time()), utc(time.time()))  # type: ignore[arg-type]
    seen_ids: set[str] = set()
    seen_names: set[tuple[str, str, str]] = set()
    for index, entry in enumerate(doc.entries):
        if progress is not None and index % 1000 == 0:
            progress(index, len(doc.entries))
        where = f"entries[{index}] ({entry.get('kind')} {entry.get('name')!r})"
        try:
            check_name(entry.get("name"))
            check_kind_name(entry.get("kind"))
        except InvalidInputError as error:
            problems.append(f"{where}: {error}")
            continue
        try:
            ULID.from_str(str(entry.get("id")))
            if len(str(entry.get("id"))) != 26:
                raise ValueError
        except ValueError:
            problems.append(f"{where}: id {entry.get('id')!r} is not a ULID")
        if entry.get("id") in seen_ids:
            problems.append(f"{where}: id {entry.get('id')!r} appears twice")
        seen_ids.add(entry.get("id"))
        key = (entry.get("workspace"), entry["kind"], entry["name"])
        if key in seen_names:
            problems.append(f"{where}: duplicate name in workspace {key[0]!r}")
        seen_names.add(key)
        if entry.get("workspace") not in known_ws:
            problems.append(f"{where}: workspace {entry.get('workspace')!r} does not exist and is not in the file")
        kind = kinds.get(entry["kind"])
        if kind is None:
            problems.append(f"{where}: kind {entry['kind']!r} is not defined here nor in the file")
        for check, key_name in ((encode_object, "metadata"),):
            try:
                check(entry.get("metadata", {}), key_name)
            except InvalidInputError as error:
                problems.append(f"{where}: {error}")
        try:
            check_capabilities(entry.get("capabilities") or [])
            if entry.get("target") is not None:
                check_target(entry["target"])
        except InvalidInputError as error:
            problems.append(f"{where}: {error}")
        if entry.get("definition") is not None and kind is not None:
            _, found = validate(kind, entry["name"], entry["definition"], apply_defaults=False)
            problems.extend(f"{where}: {p}" for p in found)
        for stamp in ("created_at", "updated_at", "last_seen_at"):
            parse_time(entry.get(stamp), f"{where}.{stamp}", problems)
    for index, tomb in enumerate(doc.tombstones):
        where = f"tombstones[{index}]"
        if tomb.get("workspace") not in known_ws or tomb.get("workspace") == CORE:
            problems.append(f"{where}: a tombstone needs a non-core workspace that exists, not {tomb.get('workspace')!r}")
        if tomb.get("kind") not in kinds:
            problems.append(f"{where}: kind {tomb.get('kind')!r} is not defined")
        key = (tomb.get("workspace"), tomb.get("kind"), tomb.get("name"))
        if key in seen_names:
            problems.append(f"{where}: {key} is both an entry and a tombstone")
    if problems:
        raise _fail(problems, source)
    return problems, kinds


# -- import: plan and write --------------------------------------------------------------------------------


def import_document(backend: Backend, store: Store, data: Any, *, fmt: str = "auto", mode: str = "merge",
                    dry_run: bool = False, workspace: str = CORE, source: str = "the document",
                    progress: Callable[[int, int], None] | None = None) -> ImportPlan:
    """Validate and plan (reporting ``progress(done, total)`` over the entries), then write at once.

    Progress is reported only while validating, outside any transaction: the write itself is one
    short transaction that never waits on a terminal.
    """
    if mode not in ("merge", "replace"):
        raise InvalidInputError(f"mode must be 'merge' or 'replace', not {mode!r}", mode=mode)
    doc = parse_document(data, fmt, workspace, source)
    with backend.read() as tx:
        _check_document(doc, tx, mode, source, progress)
        plan = _plan(tx, doc, mode)
    if progress is not None:
        progress(len(doc.entries), len(doc.entries))
    if dry_run:
        return plan
    with backend.write() as tx:
        _check_document(doc, tx, mode, source)  # the registry may have changed since the plan
        plan = _plan(tx, doc, mode)
        _apply(tx, store, doc, mode, plan)
    plan.applied = True
    return plan


def _label(ws: str, kind: str, name: str) -> str:
    return f"{ws}/{kind}/{name}"


def _plan(tx: Tx, doc: _Document, mode: str) -> ImportPlan:
    plan = ImportPlan(mode=mode, format=doc.format, locks_dropped=doc.locks)
    rows = tx.execute("SELECT w.name, k.name, e.name, e.id, e.hidden FROM entry AS e JOIN kind AS k ON k.id = "
                      "e.kind_id JOIN workspace AS w ON w.id = e.workspace_id").fetchall()
    existing = {(r[0], r[1], r[2]): r[3] for r in rows if not r[4]}
    ids = {r[3]: (r[0], r[1], r[2]) for r in rows}
    wanted = {(e["workspace"], e["kind"], e["name"]): e["id"] for e in doc.entries}
    problems = []
    for key, entry_id in wanted.items():
        if key in existing and mode == "merge":
            plan.kept.append(_label(*key))
        elif key in existing:
            plan.replaced.append(_label(*key))
        else:
            plan.added.append(_label(*key))
        holder = ids.get(entry_id)
        if holder is not None and holder != key and (mode == "merge" or holder in wanted):
            problems.append(f"id {entry_id} of {_label(*key)} already belongs to {_label(*holder)}")
    if mode == "replace":
        plan.removed = sorted(_label(*key) for key in existing if key not in wanted)
        leased = tx.execute("SELECT count(*) FROM lease").fetchone()[0]
        if leased:
            problems.append(f"{leased} entries are leased by live processes; a replace would pull them away "
                            "(release them or stop those processes first)")
    existing_ws = {r[0] for r in tx.execute("SELECT name FROM workspace").fetchall()}
    plan.workspaces_added = [w["name"] for w in doc.workspaces if w["name"] != CORE and
                             (mode == "replace" or w["name"] not in existing_ws)]
    existing_kinds = {r[0] for r in tx.execute("SELECT name FROM kind").fetchall()}
    plan.kinds_added = [k["name"] for k in doc.kinds if not k.get("builtin") and k["name"] not in existing_kinds]
    plan.tombstones_added = [_label(t["workspace"], t["kind"], t["name"]) for t in doc.tombstones]
    if problems:
        raise ImportFileError("the import conflicts with the registry (nothing was changed): " + "; ".join(problems),
                              problems=problems)
    plan.added.sort()
    plan.kept.sort()
    plan.replaced.sort()
    return plan


def _apply(tx: Tx, store: Store, doc: _Document, mode: str, plan: ImportPlan) -> None:
    if mode == "replace":
        tx.execute("DELETE FROM entry")
        tx.execute("DELETE FROM selection_cursor")
        for (name,) in tx.execute("SELECT w.name FROM workspace AS w JOIN workspace_ancestor AS a ON "
                                  "a.workspace_id = w.id WHERE w.name != ? GROUP BY w.id ORDER BY max(a.depth) DESC",
                                  (CORE,)).fetchall():
            tx.execute("DELETE FROM workspace_ancestor WHERE workspace_id = (SELECT id FROM workspace WHERE name = ?)",
                       (name,))
            tx.execute("DELETE FROM workspace WHERE name = ?", (name,))
        tx.execute("DELETE FROM kind WHERE builtin = 0")
        for ws in doc.workspaces:
            if ws["name"] == CORE:  # the file becomes the registry: core's own row too
                tx.execute("UPDATE workspace SET description = ?, created_at = ? WHERE name = ?",
                           (ws.get("description", ""), parse_time(ws.get("created_at"), "", []) or time.time(), CORE))
    from ._kind_schema import save_kind
    from ._layers import create_workspace

    existing_kinds = {r[0] for r in tx.execute("SELECT name FROM kind").fetchall()}
    for item in doc.kinds:
        if item.get("builtin") or item["name"] in existing_kinds:
            continue
        save_kind(tx, store, build_kind(item["name"], required=item.get("required", []),
                                        optional=item.get("optional", []), defaults=item.get("defaults"),
                                        name_pattern=item.get("name_pattern"), validator=item.get("validator"),
                                        strict=bool(item.get("strict", True)),
                                        description=item.get("description", "")))
    existing_ws = {r[0] for r in tx.execute("SELECT name FROM workspace").fetchall()}
    for ws in doc.workspaces:
        if ws["name"] not in existing_ws:
            create_workspace(tx, store, ws["name"], ws["parent"], ws.get("description", ""))
            problems: list[str] = []
            tx.execute("UPDATE workspace SET created_at = ? WHERE name = ?",
                       (parse_time(ws.get("created_at"), "created_at", problems) or time.time(), ws["name"]))
    ids = {r[0]: r[1] for r in tx.execute("SELECT name, id FROM workspace").fetchall()}
    kind_ids = {r[0]: r[1] for r in tx.execute("SELECT name, id FROM kind").fetchall()}
    keep = set(plan.kept)
    ignore: list[str] = []
    for entry in doc.entries:
        label = _label(entry["workspace"], entry["kind"], entry["name"])
        if label in keep:
            continue
        ws_id, kind_id = ids[entry["workspace"]], kind_ids[entry["kind"]]
        tx.execute("DELETE FROM entry WHERE workspace_id = ? AND kind_id = ? AND name = ?",
                   (ws_id, kind_id, entry["name"]))
        capabilities = check_capabilities(entry.get("capabilities") or [])
        definition = entry.get("definition")
        pk = tx.execute(
            "INSERT INTO entry (id, workspace_id, kind_id, name, metadata, capabilities, definition, target, "
            "created_at, updated_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING pk",
            (entry["id"], ws_id, kind_id, entry["name"], encode_object(entry.get("metadata", {})),
             json.dumps(capabilities), None if definition is None else encode_object(definition, "definition"),
             entry.get("target"), parse_time(entry["created_at"], "", ignore),
             parse_time(entry["updated_at"], "", ignore), parse_time(entry["last_seen_at"], "", ignore))).fetchone()[0]
        for capability in capabilities:
            tx.execute("INSERT INTO entry_capability (capability, entry_pk) VALUES (?, ?)", (capability, pk))
        store.record(tx, "create", workspace=entry["workspace"], kind=entry["kind"], name=entry["name"],
                     entry_id=entry["id"], source="import")
    now = time.time()
    for tomb in doc.tombstones:
        ws_id, kind_id = ids[tomb["workspace"]], kind_ids[tomb["kind"]]
        tx.execute("INSERT INTO entry (id, workspace_id, kind_id, name, hidden, created_at, updated_at, last_seen_at) "
                   "VALUES (?, ?, ?, ?, 1, ?, ?, ?) ON CONFLICT (name, kind_id, workspace_id) DO NOTHING",
                   (str(ULID()), ws_id, kind_id, tomb["name"], now, now, now))
    store.record(tx, "import", mode=mode, format=doc.format, added=len(plan.added), kept=len(plan.kept),
                 replaced=len(plan.replaced), removed=len(plan.removed), workspaces=len(plan.workspaces_added),
                 kinds=len(plan.kinds_added), tombstones=len(plan.tombstones_added), locks_dropped=plan.locks_dropped)
