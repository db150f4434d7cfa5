"""Workspaces, kinds, typed definitions, targets and selection (guarantees 6, 7).

Every write here validates everything it can before it takes the write lock (user validators and
imports never run inside a write transaction), then writes in one short ``BEGIN IMMEDIATE``
transaction that records its events. Reads resolve layers through the ``resolved_entry`` view only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _entry_health, _layers, _strategies
from ._dotted import AttributeMissing, ImportFailed, load_dotted
from ._ids import new_id
from ._kind_schema import (
    Kind,
    broken_by,
    build_kind,
    candidate_kind,
    delete_kind,
    get_kind,
    kind_entries,
    kind_fingerprint,
    list_kinds,
    name_problems,
    save_kind,
    unchanged_kind,
    validate,
)
from ._layers import Conflict, Diff, Explanation, WorkspaceInfo
from ._leasing import Leasing, WorkspaceOf
from ._load_errors import clear_failure, record_failure
from ._records import Entry, frozen_json, frozen_json_or_none, utc
from ._store import ENTRY_COLUMNS, RESOLVED, VISIBLE, Store, decode_entry, entry_by_pk
from ._validation import (
    check_capabilities,
    check_kind_name,
    check_name,
    check_target,
    check_workspace_name,
    encode_object,
)
from .backends.base import Backend, Tx
from .errors import (
    ConflictError,
    EntryNotFoundError,
    InvalidInputError,
    InvalidMetadataError,
    NameplateError,
    NameTakenError,
    TargetImportError,
    ValidationError,
)

ON_CONFLICT = ("error", "replace", "keep")
#: How often a write that validated outside the lock starts over because its kind changed meanwhile.
_ATTEMPTS = 3

_IDS = "SELECT w.id, k.id FROM workspace AS w, kind AS k WHERE w.name = ? AND k.name = ?"
_LOCAL = ("SELECT pk, id, hidden, definition, target, capabilities, metadata, owner_session_id FROM entry "
          "WHERE workspace_id = ? AND kind_id = ? AND name = ?")
_KIND_UPDATED = "SELECT updated_at FROM kind WHERE name = ?"
_INSERT = ("INSERT INTO entry (id, metadata, capabilities, definition, target, created_at, updated_at, last_seen_at, "
           "owner_session_id, revision, workspace_id, kind_id, name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
           "RETURNING pk")
_REVIVE = ("UPDATE entry SET id = ?, metadata = ?, capabilities = ?, definition = ?, target = ?, created_at = ?, "
           "updated_at = ?, last_seen_at = ?, owner_session_id = ?, revision = ?, hidden = 0, ephemeral = 0, "
           "fence = 0, selected_at = NULL, selected_count = 0 WHERE pk = ?")
_REPLACE = ("UPDATE entry SET definition = ?, target = ?, capabilities = ?, metadata = ?, updated_at = ?, "
            "owner_session_id = ? WHERE pk = ?")
_DROP_CAPABILITIES = "DELETE FROM entry_capability WHERE entry_pk = ?"
_ADD_CAPABILITY = "INSERT INTO entry_capability (capability, entry_pk) VALUES (?, ?)"
_VISIBLE_ENTRY = f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE} AND r.name = ? AND k.name = ?"
_ENTRY_IN_VIEW = f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE} AND r.id = ?"

# Objects given to bind() and targets imported by load(), for this process only (a forked child
# inherits a copy, which is still this process's objects). Bindings are keyed by the database file,
# so two Registry objects on one file share them and a Registry on another file does not.
_bound: dict[tuple[str, str, str, str], Any] = {}
#: How many workspaces bind each (file, kind, name): load() walks the layers only for names bound somewhere.
_bound_names: dict[tuple[str, str, str], int] = {}
_loaded: dict[tuple[str, str], Any] = {}
_process_lock = threading.Lock()
_UNBOUND = object()


@dataclass(frozen=True, slots=True)
class Registration:
    """One item for :meth:`~WorkspacesMixin.register_many` (plain dicts with the same keys work too)."""

    name: str
    kind: str
    definition: Mapping[str, Any] | None = None
    target: str | None = None
    capabilities: Sequence[str] = ()
    metadata: Mapping[str, Any] | None = None
    owned: bool = False


@dataclass(frozen=True, slots=True)
class _Prepared:
    name: str
    kind: str
    kind_updated: float
    definition_text: str | None
    target: str | None
    capabilities: list[str]
    metadata_text: str | None
    owned: bool
    origin: str | None  # discover(): the entry point this registration comes from


class Definitions:
    """Layered workspaces, kinds with schemas, registration, targets, capability selection.

    Entry writes go through ``leasing``'s lease guard; owned registrations bind to its session.
    """

    def __init__(self, backend: Backend, store: Store, workspace_of: WorkspaceOf, leasing: Leasing) -> None:
        self._backend = backend
        self._store = store
        self._ws = workspace_of
        self._leasing = leasing
        self._bind_key_cached: str | None = None
        self._matches = _strategies.MatchCache()

    # -- workspaces ------------------------------------------------------------------------------

    def create_workspace(self, name: str, parent: str = "core", description: str = "", *,
                         exist_ok: bool = False) -> WorkspaceInfo:
        self._ws(None)
        check_workspace_name(name)
        check_workspace_name(parent)
        if not isinstance(description, str):
            raise InvalidInputError(f"description must be a string, not {type(description).__name__}")
        if not isinstance(exist_ok, bool):
            raise InvalidInputError(f"exist_ok must be True or False, not {exist_ok!r}", exist_ok=repr(exist_ok))
        with self._backend.write() as tx:
            return _layers.create_workspace(tx, self._store, name, parent, description, exist_ok)

    def workspaces(self) -> list[WorkspaceInfo]:
        self._ws(None)
        with self._backend.read():
            return _layers.list_workspaces(self._backend)

    def delete_workspace(self, name: str, force: bool = False) -> list[str]:
        self._ws(None)
        check_workspace_name(name)
        with self._backend.write() as tx:
            return _layers.delete_workspace(tx, self._store, name, force)

    def hide(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> str:
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        with self._backend.write() as tx:
            return _layers.hide(tx, self._store, ws, name, kind)

    def unhide(self, name: str, kind: str, *, workspace: str | None = None) -> None:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        with self._backend.write() as tx:
            _layers.unhide(tx, self._store, ws, name, kind)

    def promote(self, name: str, kind: str | None = None, *, workspace: str | None = None,
                replace: bool = False) -> Entry:
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        ended: list[Any] = []

        def promote() -> Entry:
            ended.clear()
            with self._backend.write() as tx:
                entry_id, parent = _layers.promote(tx, self._store, ws, name, kind, replace, guard=self._leasing.guard,
                                                   removal_guard=self._leasing.guard_removal(ended))
                return decode_entry(tx.execute(_ENTRY_IN_VIEW, (parent, entry_id)).fetchone())

        promoted = self._leasing.reaping_first(promote)
        self._leasing.finish_removal(ended)
        return promoted

    def diff(self, a: str, b: str) -> Diff:
        self._ws(None)
        return _layers.diff(self._store, check_workspace_name(a), check_workspace_name(b))

    def conflicts(self) -> list[Conflict]:
        self._ws(None)
        return _layers.conflicts(self._store)

    def explain(self, name: str, kind: str, *, workspace: str | None = None) -> Explanation:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        with self._backend.read() as tx:
            return _layers.explain(tx, self._store, ws, name, kind)

    # -- kinds -----------------------------------------------------------------------------------

    def define_kind(self, name: str, required: Iterable[str] = (), optional: Iterable[str] = (), *,
                    defaults: Mapping[str, Any] | None = None, name_pattern: str | None = None,
                    validator: str | None = None, strict: bool = True, description: str = "") -> Kind:
        self._ws(None)
        values = build_kind(name, required=required, optional=optional, defaults=defaults,
                            name_pattern=name_pattern, validator=validator, strict=strict, description=description)
        candidate = candidate_kind(values)
        for _ in range(_ATTEMPTS):
            # Stored entries are checked against the new schema outside the lock (the validator is
            # user code); the write then goes ahead only if none of them changed meanwhile.
            with self._backend.read() as tx:
                same = unchanged_kind(tx, values)
                if same is not None:
                    return same  # defined so already (by another process starting too): nothing to write
                rows, fingerprint = kind_entries(tx, name)
            broken = broken_by(candidate, rows)
            with self._backend.write() as tx:
                if kind_fingerprint(tx, name) != fingerprint:
                    continue
                save_kind(tx, self._store, values, broken=broken)
                return get_kind(tx, name)
        raise ConflictError(f"entries of kind {name!r} kept changing while it was being redefined; retry",
                            kind=name)

    def kinds(self) -> list[Kind]:
        self._ws(None)
        with self._backend.read() as tx:
            return list_kinds(tx)

    def kind(self, name: str) -> Kind:
        self._ws(None)
        with self._backend.read() as tx:
            return get_kind(tx, check_kind_name(name))

    def delete_kind(self, name: str) -> None:
        self._ws(None)
        with self._backend.write() as tx:
            delete_kind(tx, self._store, check_kind_name(name))

    # -- registration ----------------------------------------------------------------------------

    def register(self, name: str, kind: str, definition: Mapping[str, Any] | None = None, *,
                 target: str | None = None, capabilities: Iterable[str] = (),
                 metadata: Mapping[str, Any] | None = None, on_conflict: str = "error", owned: bool = False,
                 workspace: str | None = None) -> Entry:
        # A lone string stays a string, so validation refuses it instead of splitting it into letters.
        caps = _as_given(capabilities)
        return self.register_many([Registration(name, kind, definition, target, caps, metadata, owned)],
                                  on_conflict=on_conflict, workspace=workspace)[0]

    def register_many(self, items: Iterable[Registration | Mapping[str, Any]], *, on_conflict: str = "error",
                      workspace: str | None = None) -> list[Entry]:
        ws = self._ws(workspace)
        if on_conflict not in ON_CONFLICT:
            raise InvalidInputError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}, not {on_conflict!r}",
                                    on_conflict=on_conflict)
        registrations = [_as_registration(item, index) for index, item in enumerate(items)]
        if not registrations:
            return []
        _check_metadata(registrations)
        origins: list[str | None] = [None] * len(registrations)
        return self._leasing.reaping_first(lambda: self._register(ws, registrations, origins, on_conflict))

    def register_discovered(self, ws: str, registrations: list[Registration], origins: list[str | None], *,
                            before: Callable[[Tx], None]) -> list[Entry]:
        """Register what discovery found (``origins``: the entry point of each), running ``before`` first
        in the same transaction (discovery forgets missing plugins there)."""
        return self._leasing.reaping_first(lambda: self._register(ws, registrations, origins, "keep", before))

    def _register(self, ws: str, registrations: list[Registration], origins: list[str | None],
                  on_conflict: str, before: Callable[[Tx], None] | None = None) -> list[Entry]:
        for _ in range(_ATTEMPTS):
            prepared = self._prepare(ws, registrations, origins)
            owner = self._leasing.session().id if any(p.owned for p in prepared) else None
            with self._backend.write() as tx:
                if not _kinds_unchanged(tx, prepared):
                    continue  # a kind was redefined since we validated: validate again, outside the lock
                if before is not None:
                    before(tx)
                return [self._write_registration(tx, ws, item, on_conflict, owner if item.owned else None)
                        for item in prepared]
        raise ConflictError("kinds kept changing while registering; retry", workspace=ws)

    def _prepare(self, ws: str, registrations: list[Registration], origins: list[str | None]) -> list[_Prepared]:
        """Validate every item and collect every problem; validators run outside any transaction."""
        kinds: dict[str, Kind] = {}
        kind_errors: dict[str, str] = {}
        with self._backend.read() as tx:
            self._store.workspace_id(tx, ws)
            for reg in registrations:
                kind_name = reg.kind
                if not isinstance(kind_name, str) or kind_name in kinds or kind_name in kind_errors:
                    continue
                try:
                    kinds[kind_name] = get_kind(tx, check_kind_name(kind_name))
                except NameplateError as error:  # reported below with every other problem
                    kind_errors[kind_name] = str(error)
        problems: list[str] = []
        prepared: list[_Prepared] = []
        seen: set[tuple[str, str]] = set()
        for index, (reg, origin) in enumerate(zip(registrations, origins, strict=True)):
            where = f"item {index} ({reg.kind} {reg.name!r})" if len(registrations) > 1 else f"{reg.kind} {reg.name!r}"
            local: list[str] = []
            try:
                reg = dataclasses.replace(reg, name=check_name(reg.name))
                if not isinstance(reg.kind, str):
                    check_kind_name(reg.kind)
            except NameplateError as error:
                problems.append(f"{where}: {error}")
                continue
            if reg.kind in kind_errors:
                problems.append(f"{where}: {kind_errors[reg.kind]}")
                continue
            if (reg.kind, reg.name) in seen:
                local.append("listed twice in this batch")
            seen.add((reg.kind, reg.name))
            kind = kinds[reg.kind]
            if reg.definition is None:  # an identity with a target or capabilities, no definition
                definition, found = None, name_problems(kind, reg.name)
            else:
                definition, found = validate(kind, reg.name, reg.definition)
            local.extend(found)
            capabilities: list[str] = []
            try:
                if reg.target is not None:
                    check_target(reg.target)
            except InvalidInputError as error:
                local.append(str(error))
            try:
                capabilities = check_capabilities(reg.capabilities)
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
                    None if definition is None else encode_object(definition, "definition"), reg.target,
                    capabilities, metadata_text, bool(reg.owned), origin))
        if problems:
            raise ValidationError(f"{len(problems)} problem(s), nothing registered: " + "; ".join(problems),
                                  problems=problems)
        return prepared

    def _write_registration(self, tx: Tx, ws: str, item: _Prepared, on_conflict: str,
                            owner: str | None) -> Entry:
        ws_id, kind_id = tx.execute(_IDS, (ws, item.kind)).fetchone()
        local = tx.execute(_LOCAL, (ws_id, kind_id, item.name)).fetchone()
        now = time.time()
        capabilities_text = json.dumps(item.capabilities)
        if local is None or local[2]:  # new here (or our tombstone: registering makes the name ours again)
            # The event first, so the row is written once, carrying its revision; the entry returned is
            # what was written (no read back inside the lock, which the other writers wait on).
            entry_id = new_id()
            rev = self._store.append(tx, "register", workspace=ws, kind=item.kind, name=item.name,
                                     entry_id=entry_id, at=now, definition=_loads(item.definition_text),
                                     target=item.target, capabilities=item.capabilities,
                                     **_provenance(item, owner))
            metadata_text = item.metadata_text or "{}"
            values = (entry_id, metadata_text, capabilities_text, item.definition_text, item.target,
                      now, now, now, owner, rev)
            if local is None:
                pk = tx.execute(_INSERT, (*values, ws_id, kind_id, item.name)).fetchone()[0]
                # A new row has no capabilities yet: the old ones of a reused pk went with their entry.
                _add_capabilities(tx, pk, item.capabilities)
            else:
                pk = local[0]
                tx.execute(_REVIVE, (*values, pk))
                _set_capabilities(tx, pk, item.capabilities)
            moment = utc(now)
            return Entry(id=entry_id, name=item.name, kind=item.kind, workspace=ws,
                         metadata=frozen_json(metadata_text), capabilities=frozenset(item.capabilities),
                         definition=frozen_json_or_none(item.definition_text), target=item.target,
                         created_at=moment, updated_at=moment, last_seen_at=moment, revision=rev)
        pk, entry_id, _, definition, target, capabilities, metadata, current_owner = local
        # "Registered" means someone said what this entry is; an entry that was only resolved is
        # an identity waiting for its definition, so filling it in is no conflict.
        registered = definition is not None or target is not None or capabilities != "[]"
        if item.origin is not None:
            stored = json.loads(metadata)
            if registered and stored.get("entry_point") != item.origin:
                return entry_by_pk(tx, pk)  # registered by hand: leave it
            # Discovery refreshes what an entry point says (target, provenance) and keeps the rest.
            merged = {**stored, **json.loads(item.metadata_text or "{}")}
            wanted = (definition, item.target, capabilities, encode_object(merged))
        else:
            wanted = (item.definition_text, item.target, capabilities_text,
                      item.metadata_text if item.metadata_text is not None else metadata)
        current = (definition, target, capabilities, metadata)
        new_owner = owner if owner is not None else current_owner
        differing = _differing(wanted, current)
        same = not differing
        if same and new_owner == current_owner:
            return entry_by_pk(tx, pk)
        if registered and not same and item.origin is None:
            if on_conflict == "keep":
                return entry_by_pk(tx, pk)
            if on_conflict == "error":
                raise NameTakenError(
                    f"{item.kind} {item.name!r} is already registered in workspace {ws!r} (id {entry_id}) with "
                    f"a different {' and '.join(differing)}; pass on_conflict='replace' to overwrite it or "
                    "'keep' to leave it", name=item.name, kind=item.kind, existing_id=entry_id)
        kind_name = item.kind
        self._leasing.guard(tx, pk, entry_id, kind_name)
        tx.execute(_REPLACE, (*wanted, now, new_owner, pk))
        if wanted[2] != capabilities:
            _set_capabilities(tx, pk, json.loads(wanted[2]))
        self._store.record(tx, "register", workspace=ws, kind=kind_name, name=item.name, entry_id=entry_id, at=now,
                           replaced=registered, definition=_loads(wanted[0]), before=_loads(definition),
                           target=wanted[1], capabilities=json.loads(wanted[2]), **_provenance(item, new_owner))
        return entry_by_pk(tx, pk)

    # -- targets ---------------------------------------------------------------------------------

    def _bind_key(self) -> str:
        key = self._bind_key_cached
        if key is None:  # the file never moves under an open backend: resolve its real path once
            location = self._backend.location
            key = self._bind_key_cached = (os.path.realpath(location.path) if location.path is not None
                                           else str(location))
        return key

    def bind(self, name: str, kind: str, obj: Any, *, workspace: str | None = None) -> None:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        with self._backend.read() as tx:
            self._store.workspace_id(tx, ws)
            self._store.kind_id(tx, kind)
        key = self._bind_key()
        with _process_lock:
            if (key, ws, kind, name) not in _bound:
                _bound_names[(key, kind, name)] = _bound_names.get((key, kind, name), 0) + 1
            _bound[(key, ws, kind, name)] = obj

    def unbind(self, name: str, kind: str, *, workspace: str | None = None) -> bool:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        key = self._bind_key()
        with _process_lock:
            if (key, ws, kind, name) not in _bound:
                return False
            del _bound[(key, ws, kind, name)]
            left = _bound_names.pop((key, kind, name)) - 1
            if left:
                _bound_names[(key, kind, name)] = left
            return True

    def load(self, name: str, kind: str, *, workspace: str | None = None) -> Any:
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        key = self._bind_key()
        with _process_lock:
            here = _bound.get((key, ws, kind, name), _UNBOUND)
            bound_anywhere = (key, kind, name) in _bound_names
        if here is not _UNBOUND:
            return here  # a binding in the workspace itself beats every layer: no need to walk them
        # The hot path, for a name bound nowhere: one statement, no layer walk.
        row = None if bound_anywhere else self._backend.query_one(_VISIBLE_ENTRY, (ws, name, kind))
        if row is None:
            with self._backend.read() as tx:
                trace = _layers.explain(tx, self._store, ws, name, kind)
                row = tx.execute(_VISIBLE_ENTRY, (ws, name, kind)).fetchone()
            rows = {layer.workspace: layer for layer in trace.layers}
            with _process_lock:
                for layer in trace.chain:
                    if (key, layer, kind, name) in _bound:
                        return _bound[(key, layer, kind, name)]
                    if layer in rows:
                        break
            if row is None:
                hidden = f" (hidden by a tombstone in {trace.hidden_by!r})" if trace.hidden_by else ""
                raise EntryNotFoundError(f"no {kind} {name!r} in workspace {ws!r} to load{hidden}; register it with "
                                         "a target or bind() an object", name=name, kind=kind, workspace=ws)
        entry = decode_entry(row)
        if not entry.target:
            raise TargetImportError(f"{kind} {name!r} (id {entry.id}) has no target to load; register it with "
                                    "target='package.module:attribute' or bind() an object", name=name, kind=kind,
                                    target=None, entry_id=entry.id)
        cache_key = (entry.id, entry.target)
        with _process_lock:
            if cache_key in _loaded:
                return _loaded[cache_key]
        try:
            value = _import_target(entry)
        except TargetImportError as error:
            try:
                record_failure(self._backend, entry, error)
            except NameplateError as unrecorded:  # the import error is what the caller must see
                error.add_note(f"(nameplate could not record this load error: {unrecorded})")
            raise
        clear_failure(self._backend, row[0], entry)
        with _process_lock:
            return _loaded.setdefault(cache_key, value)

    # -- capabilities and selection ----------------------------------------------------------------

    def find(self, kind: str, requires: Iterable[str] = (), *, workspace: str | None = None) -> list[Entry]:
        ws = self._ws(workspace)
        check_kind_name(kind)
        needed = _strategies.requirement(requires)
        with self._backend.read() as tx:
            found = _strategies.find(tx, ws, kind, needed)
            if not found:
                self._store.workspace_id(tx, ws)
                self._store.kind_id(tx, kind)
        return found

    def select(self, kind: str, requires: Iterable[str] = (), strategy: str = "first", *,
               workspace: str | None = None) -> Entry:
        ws = self._ws(workspace)
        check_kind_name(kind)
        _strategies.check_strategy(strategy)
        needed = _strategies.requirement(requires)
        if strategy in ("round_robin", "least_recently_selected"):
            with self._backend.write() as tx:
                chosen = _strategies.choose_and_record(tx, self._matches, strategy, ws, kind, needed)
                if chosen is None:
                    raise _strategies.no_match(tx, self._store, ws, kind, needed)
                return chosen
        with self._backend.read() as tx:
            if strategy == "healthiest":
                return _entry_health.choose_healthiest(self._backend, tx, self._store, self._matches, ws, kind, needed)
            chosen = _strategies.choose_read_only(tx, self._matches, strategy, ws, kind, needed)
            if chosen is None:
                raise _strategies.no_match(tx, self._store, ws, kind, needed)
            return chosen

    # -- registrations inside a Registry.transaction (see _transaction.py) -----------------------

    def prepare_registrations(self, ws: str, registrations: list[Registration]) -> list[_Prepared]:
        """Validate registrations for a transaction, outside any lock (every problem at once)."""
        _check_metadata(registrations)
        return self._prepare(ws, registrations, [None] * len(registrations))

    def kinds_unchanged(self, tx: Tx, prepared: list[_Prepared]) -> bool:
        """Inside the write: whether the kinds the registrations were validated against still stand."""
        return _kinds_unchanged(tx, prepared)

    def write_registration(self, tx: Tx, ws: str, item: _Prepared, on_conflict: str) -> Entry:
        """Inside the caller's write transaction: one prepared (not owned) registration."""
        return self._write_registration(tx, ws, item, on_conflict, None)


def _check_metadata(registrations: list[Registration]) -> None:
    """Metadata is the caller's own JSON, not part of the definition the kind judges: refuse bad
    metadata as such (every item's problem at once), before the definitions are validated."""
    problems = []
    for index, reg in enumerate(registrations):
        if reg.metadata is not None:
            try:
                encode_object(reg.metadata)
            except InvalidMetadataError as error:
                what = f"{reg.kind} {reg.name!r}"
                where = f"item {index} ({what})" if len(registrations) > 1 else what
                problems.append(f"{where}: {error}")
    if problems:
        raise InvalidMetadataError(f"{len(problems)} problem(s), nothing registered: " + "; ".join(problems),
                                   problems=problems)


def _kinds_unchanged(tx: Tx, prepared: list[_Prepared]) -> bool:
    for kind, updated in {(p.kind, p.kind_updated) for p in prepared}:
        row = tx.execute(_KIND_UPDATED, (kind,)).fetchone()
        if row is None or abs(float(row[0]) - updated) > 1e-6:
            return False
    return True


def _set_capabilities(tx: Tx, pk: int, capabilities: list[str]) -> None:
    tx.execute(_DROP_CAPABILITIES, (pk,))
    _add_capabilities(tx, pk, capabilities)


def _add_capabilities(tx: Tx, pk: int, capabilities: list[str]) -> None:
    for capability in capabilities:
        tx.execute(_ADD_CAPABILITY, (capability, pk))


def _differing(wanted: tuple[Any, ...], current: tuple[Any, ...]) -> list[str]:
    """Which of (definition, target, capabilities, metadata) differ, compared as values: rows written
    by an import may spell the same JSON differently."""
    checks = (("definition", _loads(wanted[0]) != _loads(current[0])),
              ("target", wanted[1] != current[1]),
              ("capabilities", sorted(json.loads(wanted[2])) != sorted(json.loads(current[2]))),
              ("metadata", json.loads(wanted[3]) != json.loads(current[3])))
    return [name for name, differs in checks if differs]


def _provenance(item: _Prepared, owner: str | None) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    if owner is not None:
        detail["owner_session"] = owner
    if item.origin is not None:
        detail["entry_point"] = item.origin
    return detail


def _import_target(entry: Entry) -> Any:
    """Import ``entry.target``, turning every way it can fail into a :class:`TargetImportError`."""
    target = entry.target or ""
    facts = {"name": entry.name, "kind": entry.kind, "target": target, "entry_id": entry.id}
    try:
        return load_dotted(target)
    except ImportFailed as error:
        cause = error.cause
        if isinstance(cause, ImportError):
            raise TargetImportError(f"cannot load {entry.kind} {entry.name!r}: importing {target!r} failed ({cause}); "
                                    "check that its package is installed", **facts) from cause
        raise TargetImportError(f"cannot load {entry.kind} {entry.name!r}: importing module {error.module!r} for "
                                f"{target!r} raised {type(cause).__name__}: {cause}", **facts) from cause
    except AttributeMissing as error:
        raise TargetImportError(f"cannot load {entry.kind} {entry.name!r}: {error.where!r} has no such attribute "
                                f"{error.part!r} (target {target!r}); fix the target with register(..., "
                                "on_conflict='replace')", **facts) from error.__cause__


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _as_registration(item: Registration | Mapping[str, Any], index: int) -> Registration:
    if isinstance(item, Registration):
        return item
    if not isinstance(item, Mapping):
        raise InvalidInputError(f"item {index} must be a Registration or a dict, not {type(item).__name__}",
                                index=index)
    known = {"name", "kind", "definition", "target", "capabilities", "metadata", "owned"}
    unknown = sorted(set(item) - known)
    if unknown or "name" not in item or "kind" not in item:
        raise InvalidInputError(f"item {index} needs 'name' and 'kind'" +
                                (f" and has unknown keys {unknown}" if unknown else ""), index=index)
    capabilities = item.get("capabilities") or ()
    return Registration(item["name"], item["kind"], item.get("definition"), item.get("target"),
                        _as_given(capabilities),
                        item.get("metadata"), bool(item.get("owned", False)))


def _as_given(capabilities: Any) -> Any:
    """Capabilities frozen to a tuple when they are a collection; anything else (a string, a number)
    is passed on unchanged for ``check_capabilities`` to refuse with its own message."""
    if isinstance(capabilities, str) or not isinstance(capabilities, Iterable):
        return capabilities
    return tuple(capabilities)
