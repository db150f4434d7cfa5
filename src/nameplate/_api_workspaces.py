"""The Registry's workspaces, kinds, typed definitions, targets and selection API (guarantees 6, 7)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any

from ulid import ULID

from . import _layers, _strategies
from ._base import RegistryBase
from ._kind_schema import (
    Kind,
    build_kind,
    delete_kind,
    get_kind,
    list_kinds,
    load_callable,
    name_problems,
    save_kind,
    validate,
)
from ._layers import Conflict, Diff, Explanation, WorkspaceInfo
from ._records import Entry
from ._store import ENTRY_COLUMNS, RESOLVED, VISIBLE, decode_entry
from ._validation import (
    check_capabilities,
    check_kind_name,
    check_name,
    check_target,
    check_workspace_name,
    encode_object,
)
from .errors import (
    ConflictError,
    InvalidInputError,
    NameplateError,
    NameTakenError,
    TargetImportError,
    ValidationError,
)

ON_CONFLICT = ("error", "replace", "keep")


@dataclass(frozen=True, slots=True)
class Registration:
    """One item for :meth:`register_many` (plain dicts with the same keys work too)."""

    name: str
    kind: str
    definition: Mapping[str, Any] | None = None
    target: str | None = None
    capabilities: Sequence[str] = ()
    metadata: Mapping[str, Any] | None = None
    owned: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Prepared:
    name: str
    kind: str
    kind_updated: float
    definition_text: str | None
    target: str | None
    capabilities: list[str]
    metadata_text: str | None


class WorkspacesMixin(RegistryBase):
    """Layered workspaces, kinds with schemas, registration, targets, capability selection."""

    def _open_extensions(self) -> None:
        super()._open_extensions()
        self._bound: dict[tuple[str, str, str], Any] = {}
        self._loaded: dict[tuple[str, str], Any] = {}
        self._loading_lock = threading.Lock()

    # -- workspaces ------------------------------------------------------------------------------

    def create_workspace(self, name: str, parent: str = "core", description: str = "") -> WorkspaceInfo:
        """Create a layer over ``parent``. Reads in it see its own rows over its ancestors'."""
        self._ws(None)
        check_workspace_name(name)
        check_workspace_name(parent)
        with self._backend.write() as tx:
            _layers.create_workspace(tx, self._store, name, parent, str(description))
            return next(w for w in _layers.list_workspaces(tx) if w.name == name)

    def workspaces(self) -> list[WorkspaceInfo]:
        """Every workspace, by name, with its parent, depth and row counts."""
        self._ws(None)
        with self._backend.read() as tx:
            return _layers.list_workspaces(tx)

    def delete_workspace(self, name: str, force: bool = False) -> list[str]:
        """Delete a workspace and its rows; refused while it has children unless ``force=True``."""
        self._ws(None)
        check_workspace_name(name)
        with self._backend.write() as tx:
            return _layers.delete_workspace(tx, self._store, name, force)

    def hide(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> str:
        """Hide an inherited entry in this workspace (and its children) without touching the parent."""
        ws = self._ws(workspace)
        check_name(name)
        with self._backend.write() as tx:
            return _layers.hide(tx, self._store, ws, name, kind)

    def unhide(self, name: str, kind: str, *, workspace: str | None = None) -> None:
        """Remove this workspace's tombstone for ``name``: the inherited entry shows again."""
        ws = self._ws(workspace)
        check_name(name)
        check_kind_name(kind)
        with self._backend.write() as tx:
            _layers.unhide(tx, self._store, ws, name, kind)

    def promote(self, name: str, kind: str | None = None, *, workspace: str | None = None,
                replace: bool = False) -> Entry:
        """Move this workspace's own entry one layer up (to its parent), keeping its id."""
        ws = self._ws(workspace)
        check_name(name)
        with self._backend.write() as tx:
            entry_id, parent = _layers.promote(tx, self._store, ws, name, kind, replace)
            row = tx.execute(f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE} AND r.id = ?",
                             (parent, entry_id)).fetchone()
            return decode_entry(row)

    def diff(self, a: str, b: str) -> Diff:
        """What the views of workspaces ``a`` and ``b`` disagree on."""
        self._ws(None)
        return _layers.diff(self._store, check_workspace_name(a), check_workspace_name(b))

    def conflicts(self) -> list[Conflict]:
        """Names defined differently in sibling workspaces, and entries that shadow an ancestor's."""
        self._ws(None)
        return _layers.conflicts(self._store)

    def explain(self, name: str, kind: str, *, workspace: str | None = None) -> Explanation:
        """The resolution trace of ``name``: which layer answered, what it shadows, which tombstone hid it."""
        ws = self._ws(workspace)
        check_name(name)
        check_kind_name(kind)
        with self._backend.read() as tx:
            return _layers.explain(tx, self._store, ws, name, kind)

    # -- kinds -----------------------------------------------------------------------------------

    def define_kind(self, name: str, required: Iterable[str] = (), optional: Iterable[str] = (), *,
                    defaults: Mapping[str, Any] | None = None, name_pattern: str | None = None,
                    validator: str | None = None, strict: bool = True, description: str = "") -> Kind:
        """Define (or redefine) a kind. Redefinition is refused if it would invalidate stored definitions."""
        self._ws(None)
        values = build_kind(name, required=required, optional=optional, defaults=defaults,
                            name_pattern=name_pattern, validator=validator, strict=strict, description=description)
        with self._backend.write() as tx:
            save_kind(tx, self._store, values)
            return get_kind(tx, name)

    def kinds(self) -> list[Kind]:
        """Every kind with its schema, built-in ones included."""
        self._ws(None)
        with self._backend.read() as tx:
            return list_kinds(tx)

    def kind(self, name: str) -> Kind:
        """One kind's schema (:class:`UnknownKindError` with a suggestion if it does not exist)."""
        self._ws(None)
        with self._backend.read() as tx:
            return get_kind(tx, check_kind_name(name))

    def delete_kind(self, name: str) -> None:
        """Delete a user-defined kind that has no entries."""
        self._ws(None)
        with self._backend.write() as tx:
            delete_kind(tx, self._store, check_kind_name(name))

    # -- registration ----------------------------------------------------------------------------

    def register(self, name: str, kind: str, definition: Mapping[str, Any] | None = None, *,
                 target: str | None = None, capabilities: Iterable[str] = (),
                 metadata: Mapping[str, Any] | None = None, on_conflict: str = "error", owned: bool = False,
                 workspace: str | None = None) -> Entry:
        """Register a typed definition under ``(workspace, kind, name)`` and return the entry.

        The definition is checked against the kind (defaults filled in); every problem is reported at
        once in a :class:`ValidationError` and nothing is written. If this workspace already defines the
        name differently: ``on_conflict="error"`` raises :class:`NameTakenError`, ``"replace"``
        overwrites it (the id stays), ``"keep"`` returns the existing entry. Registering the same thing
        again is a no-op; an entry that was only resolved gets its definition filled in.
        ``definition=None`` registers an identity (target, capabilities) without a definition: only
        the name is checked against the kind.
        ``owned=True`` ties the entry to this process's session for ``select(strategy="healthiest")``.
        """
        return self.register_many([Registration(name, kind, definition, target, tuple(capabilities), metadata,
                                                owned)], on_conflict=on_conflict, workspace=workspace)[0]

    def register_many(self, items: Iterable[Registration | Mapping[str, Any]], *, on_conflict: str = "error",
                      workspace: str | None = None) -> list[Entry]:
        """Register a batch in one transaction: all are validated first, then all are written, or none."""
        ws = self._ws(workspace)
        if on_conflict not in ON_CONFLICT:
            raise InvalidInputError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}, not {on_conflict!r}",
                                    on_conflict=on_conflict)
        registrations = [_as_registration(item, index) for index, item in enumerate(items)]
        prepared, owned = self._prepare(ws, registrations)
        owner = self.session().id if owned else None  # type: ignore[attr-defined]
        for _ in range(3):
            with self._backend.write() as tx:
                if not self._kinds_unchanged(tx, prepared):
                    continue  # a kind was redefined since we validated: validate again, outside the lock
                return [self._write_registration(tx, ws, item, on_conflict, owner if reg.owned else None)
                        for item, reg in zip(prepared, registrations, strict=True)]
            prepared, owned = self._prepare(ws, registrations)
        raise ConflictError("kinds kept changing while registering; retry", workspace=ws)

    def _prepare(self, ws: str, registrations: list[Registration]) -> tuple[list[_Prepared], bool]:
        """Validate everything outside any transaction (validators are user code)."""
        problems: list[str] = []
        prepared: list[_Prepared] = []
        seen: set[tuple[str, str]] = set()
        with self._backend.read() as tx:
            self._store.workspace_id(tx, ws)
            kinds: dict[str, Kind] = {}
            for index, reg in enumerate(registrations):
                where = f"item {index} ({reg.kind} {reg.name!r})" if len(registrations) > 1 else \
                    f"{reg.kind} {reg.name!r}"
                local: list[str] = []
                try:
                    check_name(reg.name)
                    check_kind_name(reg.kind)
                    if reg.kind not in kinds:
                        kinds[reg.kind] = get_kind(tx, reg.kind)
                except NameplateError as error:  # bad name or unknown kind: reported with all the others
                    problems.append(f"{where}: {error}")
                    continue
                if (reg.kind, reg.name) in seen:
                    problems.append(f"{where}: listed twice in this batch")
                seen.add((reg.kind, reg.name))
                kind = kinds[reg.kind]
                if reg.definition is None:  # an identity with a target or capabilities, no definition
                    definition, found = None, name_problems(kind, reg.name)
                else:
                    definition, found = validate(kind, reg.name, reg.definition)
                local.extend(found)
                for check, value in ((check_target, reg.target), (check_capabilities, reg.capabilities)):
                    if value is not None:
                        try:
                            check(value)
                        except InvalidInputError as error:
                            local.append(str(error))
                metadata_text = None
                if reg.metadata is not None:
                    try:
                        metadata_text = encode_object(reg.metadata)
                    except InvalidInputError as error:
                        local.append(str(error))
                problems.extend(f"{where}: {p}" for p in local)
                if not local:
                    prepared.append(_Prepared(
                        reg.name, reg.kind, kind.updated_at.timestamp(),
                        None if definition is None else encode_object(definition, "definition"), reg.target, check_capabilities(reg.capabilities), metadata_text))
        if problems:
            raise ValidationError(f"{len(problems)} problem(s), nothing registered: " + "; ".join(problems),
                                  problems=problems)
        return prepared, any(reg.owned for reg in registrations)

    def _kinds_unchanged(self, tx: Any, prepared: list[_Prepared]) -> bool:
        for item in {(p.kind, p.kind_updated) for p in prepared}:
            row = tx.execute("SELECT updated_at FROM kind WHERE name = ?", (item[0],)).fetchone()
            if row is None or abs(float(row[0]) - item[1]) > 1e-6:
                return False
        return True

    def _write_registration(self, tx: Any, ws: str, item: _Prepared, on_conflict: str,
                            owner: str | None) -> Entry:
        ws_id, kind_id = tx.execute("SELECT w.id, k.id FROM workspace AS w, kind AS k WHERE w.name = ? AND "
                                    "k.name = ?", (ws, item.kind)).fetchone()
        local = tx.execute("SELECT pk, id, hidden, definition, target, capabilities, metadata, owner_session_id "
                           "FROM entry WHERE workspace_id = ? AND kind_id = ? AND name = ?",
                           (ws_id, kind_id, item.name)).fetchone()
        capabilities_text = json.dumps(item.capabilities)
        now = time.time()
        if local is None or local[2]:
            entry_id = str(ULID())
            values = (entry_id, item.metadata_text or "{}", capabilities_text, item.definition_text, item.target,
                      now, now, now, owner)
            if local is None:
                pk = tx.execute("INSERT INTO entry (id, metadata, capabilities, definition, target, created_at, "
                                "updated_at, last_seen_at, owner_session_id, workspace_id, kind_id, name) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING pk",
                                (*values, ws_id, kind_id, item.name)).fetchone()[0]
            else:
                pk = local[0]
                tx.execute("UPDATE entry SET id = ?, metadata = ?, capabilities = ?, definition = ?, target = ?, "
                           "created_at = ?, updated_at = ?, last_seen_at = ?, owner_session_id = ?, hidden = 0, "
                           "fence = 0 WHERE pk = ?", (*values, pk))
            self._set_capabilities(tx, pk, item.capabilities)
            self._store.record(tx, "register", workspace=ws, kind=item.kind, name=item.name, entry_id=entry_id,
                               at=now, definition=_loads(item.definition_text), target=item.target,
                               capabilities=item.capabilities)
            return self._store.entry_by_pk(tx, pk)
        pk, entry_id = local[0], local[1]
        metadata_text = item.metadata_text if item.metadata_text is not None else local[6]
        wanted = (item.definition_text, item.target, capabilities_text, metadata_text)
        current = (local[3], local[4], local[5], local[6])
        if wanted == current or (on_conflict == "keep" and local[3] is not None):
            return self._store.entry_by_pk(tx, pk)
        if local[3] is not None and on_conflict == "error":
            raise NameTakenError(
                f"{item.kind} {item.name!r} is already registered in workspace {ws!r} with a different "
                "definition; pass on_conflict='replace' to overwrite it or 'keep' to leave it",
                name=item.name, kind=item.kind, existing_id=entry_id)
        self._before_entry_write(tx, self._store_local(pk, entry_id, kind_id, item.kind, ws_id, ws))
        tx.execute("UPDATE entry SET definition = ?, target = ?, capabilities = ?, metadata = ?, updated_at = ?, "
                   "owner_session_id = coalesce(?, owner_session_id) WHERE pk = ?",
                   (*wanted, now, owner, pk))
        self._set_capabilities(tx, pk, item.capabilities)
        self._store.record(tx, "register", workspace=ws, kind=item.kind, name=item.name, entry_id=entry_id, at=now,
                           replaced=local[3] is not None, definition=_loads(item.definition_text),
                           before=_loads(local[3]), target=item.target, capabilities=item.capabilities)
        return self._store.entry_by_pk(tx, pk)

    @staticmethod
    def _store_local(pk: int, entry_id: str, kind_id: int, kind: str, ws_id: int, ws: str) -> Any:
        from ._store import LocalRow

        return LocalRow(pk, entry_id, kind_id, kind, ws_id, ws)

    @staticmethod
    def _set_capabilities(tx: Any, pk: int, capabilities: list[str]) -> None:
        tx.execute("DELETE FROM entry_capability WHERE entry_pk = ?", (pk,))
        for capability in capabilities:
            tx.execute("INSERT INTO entry_capability (capability, entry_pk) VALUES (?, ?)", (capability, pk))

    # -- targets ---------------------------------------------------------------------------------

    def bind(self, name: str, kind: str, obj: Any, *, workspace: str | None = None) -> None:
        """Make ``obj`` what :meth:`load` returns for ``name`` in this process only (nothing is stored)."""
        ws = self._ws(workspace)
        check_name(name)
        check_kind_name(kind)
        with self._loading_lock:
            self._bound[(ws, kind, name)] = obj

    def unbind(self, name: str, kind: str, *, workspace: str | None = None) -> None:
        ws = self._ws(workspace)
        with self._loading_lock:
            self._bound.pop((ws, kind, name), None)

    def load(self, name: str, kind: str, *, workspace: str | None = None) -> Any:
        """The object an entry's ``target`` names, imported on first use and cached in this process.

        Objects given to :meth:`bind` (in this workspace or an ancestor) come first. Import failures
        raise :class:`TargetImportError` naming the entry and the dotted path.
        """
        ws = self._ws(workspace)
        check_name(name)
        check_kind_name(kind)
        with self._backend.read() as tx:
            layers = _layers.chain(tx, self._store, ws)
        with self._loading_lock:
            for layer in layers:
                if (layer, kind, name) in self._bound:
                    return self._bound[(layer, kind, name)]
        entry = self.get(name, kind, workspace=ws)  # type: ignore[attr-defined]
        if entry is None:
            from .errors import EntryNotFoundError

            raise EntryNotFoundError(f"no {kind} {name!r} in workspace {ws!r} to load", name=name, kind=kind,
                                     workspace=ws)
        if not entry.target:
            raise TargetImportError(f"{kind} {name!r} (id {entry.id}) has no target to load; register it with "
                                    "target='package.module:attribute' or bind() an object", name=name, kind=kind,
                                    target=None)
        key = (entry.id, entry.target)
        with self._loading_lock:
            if key in self._loaded:
                return self._loaded[key]
        try:
            value = load_callable(entry.target)
        except ImportError as error:
            raise TargetImportError(f"cannot load {kind} {name!r}: importing {entry.target!r} failed ({error}); "
                                    "check that its package is installed", name=name, kind=kind,
                                    target=entry.target) from error
        except AttributeError as error:
            raise TargetImportError(f"cannot load {kind} {name!r}: {entry.target!r} has no such attribute "
                                    f"({error})", name=name, kind=kind, target=entry.target) from error
        with self._loading_lock:
            self._loaded[key] = value
        return value

    def discover(self, group: str = "nameplate.components", *, kind: str = "provider",
                 workspace: str | None = None) -> list[Entry]:
        """Register the installed entry points of ``group`` (idempotent; one transaction).

        An entry point named ``kind:name`` registers ``name`` under that kind; a plain ``name`` uses
        ``kind``. Its value becomes the target, and the distribution goes into the metadata.
        """
        ws = self._ws(workspace)
        items = []
        for point in sorted(importlib_metadata.entry_points(group=group), key=lambda p: p.name):
            point_kind, sep, point_name = point.name.partition(":")
            if not sep:
                point_kind, point_name = kind, point.name
            dist = getattr(point, "dist", None)
            provenance = {"entry_point": f"{group}:{point.name}"}
            if dist is not None:
                provenance.update({"distribution": dist.name, "version": dist.version})
            items.append(Registration(point_name, point_kind, None, point.value, (), provenance))
        if not items:
            return []
        return self.register_many(items, on_conflict="replace", workspace=ws)

    # -- capabilities and selection ----------------------------------------------------------------

    def find(self, kind: str, requires: Iterable[str] = (), *, workspace: str | None = None) -> list[Entry]:
        """Entries of ``kind`` visible here whose capabilities include all of ``requires``, by name."""
        ws = self._ws(workspace)
        check_kind_name(kind)
        needed = _strategies.requirement(requires)
        with self._backend.read() as tx:
            rows = _strategies.matches(tx, ws, kind, needed)
            if not rows:
                self._store.workspace_id(tx, ws)
                self._store.kind_id(tx, kind)
        return [_strategies.to_entry(row) for row in rows]

    def select(self, kind: str, requires: Iterable[str] = (), strategy: str = "first", *,
               workspace: str | None = None) -> Entry:
        """One entry of ``kind`` offering all of ``requires``, chosen by ``strategy``.

        Strategies: ``first``, ``random``, ``round_robin`` (one rotation shared by every process),
        ``least_recently_selected`` and ``healthiest`` (live owner with status "healthy" and the
        freshest heartbeat; never an entry whose owner session is dead). :class:`NoMatchError` names the
        capabilities nobody offers.
        """
        ws = self._ws(workspace)
        check_kind_name(kind)
        _strategies.check_strategy(strategy)
        needed = _strategies.requirement(requires)
        if strategy in ("round_robin", "least_recently_selected"):
            with self._backend.write() as tx:
                rows = _strategies.matches(tx, ws, kind, needed)
                if not rows:
                    raise _strategies.no_match(tx, self._store, ws, kind, needed)
                return _strategies.to_entry(_strategies.choose_and_record(tx, self._store, rows, strategy, ws,
                                                                          kind, needed))
        with self._backend.read() as tx:
            rows = _strategies.matches(tx, ws, kind, needed)
            if not rows:
                raise _strategies.no_match(tx, self._store, ws, kind, needed)
        live = _strategies.live_owners(self._store, rows) if strategy == "healthiest" else {}
        chosen = _strategies.choose_read_only(rows, strategy, live)
        if chosen is None:
            from .errors import NoMatchError

            raise NoMatchError(f"every {kind} offering {', '.join(needed) or 'anything'} in workspace {ws!r} belongs "
                               "to a session that is no longer alive", kind=kind, requires=needed, missing=[])
        return _strategies.to_entry(chosen)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _as_registration(item: Registration | Mapping[str, Any], index: int) -> Registration:
    if isinstance(item, Registration):
        return item
    if not isinstance(item, Mapping):
        raise InvalidInputError(f"item {index} must be a Registration or a dict, not {type(item).__name__}")
    known = {"name", "kind", "definition", "target", "capabilities", "metadata", "owned"}
    unknown = sorted(set(item) - known)
    if unknown or "name" not in item or "kind" not in item:
        raise InvalidInputError(f"item {index} needs 'name' and 'kind'" +
                                (f" and has unknown keys {unknown}" if unknown else ""), index=index)
    return Registration(item["name"], item["kind"], item.get("definition"), item.get("target"),
                        tuple(item.get("capabilities") or ()), item.get("metadata"), bool(item.get("owned", False)))
