"""A stateful property test: a real Registry and a plain Python model, driven by the same operations.

Hypothesis runs random sequences of writes (resolve, rename, delete, update, register with every
``on_conflict``, workspaces created and deleted, hide/unhide, promote, leases and fenced updates) over a small pool of
names, kinds and workspaces, so that names collide, layers shadow each other and tombstones matter.
After every step the whole registry is compared with the model: every workspace's listing, every
pool name's lookup/get/explain, the workspace tree and the leases held.

The model is written from the docstrings (``Registry.resolve``, ``register``, ``rename``, ``hide``,
``promote``, ``acquire``, ``update``, ...), not from the implementation. A failing operation must raise
the error class the model names and leave every table byte-for-byte as it was (guarantee 7).

Leases are modelled re-entrant and counted like ``threading.RLock`` within one thread: each acquire
by the holding thread returns the same lease and needs its own release; the lease is given up at
the last release.

Budget: ``NAMEPLATE_STATEFUL_EXAMPLES`` (default 100) examples of ``NAMEPLATE_STATEFUL_STEPS``
(default 40) steps; e.g. ``NAMEPLATE_STATEFUL_EXAMPLES=2000`` for a long hunt (the test's timeout
grows with the budget).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from nameplate import (
    AmbiguousNameError,
    Entry,
    EntryNotFoundError,
    InvalidInputError,
    InvalidNameError,
    Lease,
    LeaseLost,
    NameplateError,
    NameTakenError,
    Registry,
    UnknownWorkspaceError,
    ValidationError,
    WorkspaceError,
)

from conftest import table_snapshot

# -- the pools every rule draws from ----------------------------------------------------------------

# "gamma" is not PascalCase: valid for node and provider, refused for step (its name pattern).
NAMES = ("Alpha", "Beta", "gamma")
KINDS = ("node", "provider", "step")
WORKSPACE_POOL = ("dev_a", "dev_b", "dev_c", "dev_d")
CORE = "core"

# One pool for every kind, so that some definitions are wrong for some kinds: a step needs
# sagemaker_step_type and refuses unknown fields; node and provider take any object.
DEFINITIONS: tuple[dict[str, Any] | None, ...] = (
    None,
    {"sagemaker_step_type": "Training"},
    {"sagemaker_step_type": "Processing"},
    {"sagemaker_step_type": "Training", "description": "tuned"},
    {"description": "plain"},
    {"v": 1},
)
TARGETS = (None, "json:dumps", "os.path:join")
ON_CONFLICT = ("error", "replace", "keep")

STEP_PATTERN = re.compile(r"^[A-Z][A-Za-z0-9]*$")
STEP_REQUIRED = frozenset({"sagemaker_step_type"})
STEP_FIELDS = STEP_REQUIRED | {"config_class", "builder_step_name", "spec_type", "description"}

names = st.sampled_from(NAMES)
kinds = st.sampled_from(KINDS)
# A workspace is picked by index among those that exist (modulo their number), so every draw is usable.
workspace_picks = st.integers(min_value=0, max_value=len(WORKSPACE_POOL))
# None: act on the drawn name and kind (often absent: an error path). An int: act on one of the
# rows the operation applies to, if there is one, so that most writes do something (two in three).
aims = st.none() | st.integers(min_value=0, max_value=15) | st.integers(min_value=0, max_value=15)
metadata_values = st.dictionaries(st.sampled_from(("a", "b", "c")), st.integers(0, 2), max_size=3)
optional_metadata = st.none() | metadata_values
definitions = st.sampled_from(DEFINITIONS)
# Leave kind= out one call in five: the name must then be visible under a single kind.
omit_kinds = st.integers(0, 4).map(lambda n: n == 0)
dotted_targets = st.sampled_from(TARGETS)  # `target` is a reserved word of @rule
capability_sets = st.frozensets(st.sampled_from(("gpu", "llm")))

_EXAMPLES = int(os.environ.get("NAMEPLATE_STATEFUL_EXAMPLES", "100"))
_STEPS = int(os.environ.get("NAMEPLATE_STATEFUL_STEPS", "40"))

Key = tuple[str, str, str]  # (workspace, kind, name): the unique key of a row
EntryFacts = tuple[str, str, str, str, dict[str, Any], dict[str, Any] | None, str | None, tuple[str, ...]]


# -- the model -----------------------------------------------------------------------------------


@dataclass
class ModelEntry:
    id: str
    kind: str
    name: str
    workspace: str
    metadata: dict[str, Any]
    definition: dict[str, Any] | None = None
    target: str | None = None
    capabilities: frozenset[str] = frozenset()

    def facts(self) -> EntryFacts:
        return (self.kind, self.name, self.id, self.workspace, dict(self.metadata),
                None if self.definition is None else dict(self.definition), self.target,
                tuple(sorted(self.capabilities)))

    @property
    def registered(self) -> bool:
        """``register``'s word: someone said what this entry is (an entry only resolved is not)."""
        return self.definition is not None or self.target is not None or bool(self.capabilities)


class Tombstone:
    """A row made by ``hide()``: masks what ancestors define, for its workspace and the children."""

    def __repr__(self) -> str:
        return "TOMBSTONE"


TOMBSTONE = Tombstone()


@dataclass
class ModelLease:
    """One lease as the model sees it; ``holds`` counts acquires not yet released (0: not held)."""

    entry_id: str
    token: int
    handle: Lease
    holds: int = 1


class Refused(Exception):
    """The model says the operation must fail with ``error`` (and change nothing).

    ``defined_in``: the error must name the layer that defines the entry. ``or_else``: other errors
    that apply to the same call; the docs do not say which of several problems is reported first.
    """

    def __init__(self, error: type[NameplateError], defined_in: str | None = None,
                 or_else: tuple[type[NameplateError], ...] = ()) -> None:
        super().__init__(error.__name__)
        self.error = error
        self.defined_in = defined_in
        self.or_else = or_else


@dataclass
class Model:
    parents: dict[str, str | None] = field(default_factory=lambda: {CORE: None})
    rows: dict[Key, ModelEntry | Tombstone] = field(default_factory=dict)
    issued_ids: set[str] = field(default_factory=set)
    fences: dict[str, int] = field(default_factory=dict)  # entry id -> acquisitions so far
    leases: dict[str, ModelLease] = field(default_factory=dict)  # entry id -> its latest lease
    handed_out: list[ModelLease] = field(default_factory=list)  # every lease, in order (old ones too)

    def chain(self, workspace: str) -> list[str]:
        layers: list[str] = []
        current: str | None = workspace
        while current is not None:
            layers.append(current)
            current = self.parents[current]
        return layers

    def layers(self, workspace: str, kind: str, name: str) -> list[tuple[str, ModelEntry | Tombstone]]:
        """Every row met walking up from ``workspace``, nearest first."""
        return [(layer, self.rows[(layer, kind, name)]) for layer in self.chain(workspace)
                if (layer, kind, name) in self.rows]

    def visible(self, workspace: str, kind: str, name: str) -> ModelEntry | None:
        """The nearest row decides; a tombstone there means nothing is visible."""
        met = self.layers(workspace, kind, name)
        if not met or isinstance(met[0][1], Tombstone):
            return None
        return met[0][1]

    def view(self, workspace: str) -> list[ModelEntry]:
        keys = sorted({(kind, name) for (_, kind, name) in self.rows})
        found = (self.visible(workspace, kind, name) for kind, name in keys)
        return [entry for entry in found if entry is not None]

    def local(self, workspace: str, kind: str, name: str) -> ModelEntry:
        """The visible entry, which a write in ``workspace`` may change only if it lives there."""
        entry = self.visible(workspace, kind, name)
        if entry is None:
            raise Refused(EntryNotFoundError)
        if entry.workspace != workspace:
            raise Refused(EntryNotFoundError, defined_in=entry.workspace)
        return entry

    def entries(self) -> list[ModelEntry]:
        return [row for row in self.rows.values() if isinstance(row, ModelEntry)]

    def entry_by_id(self, entry_id: str) -> ModelEntry:
        return next(entry for entry in self.entries() if entry.id == entry_id)

    def held(self) -> dict[str, ModelLease]:
        return {entry_id: lease for entry_id, lease in self.leases.items() if lease.holds > 0}

    def add(self, entry: ModelEntry) -> None:
        assert entry.id not in self.issued_ids, f"id {entry.id} was issued before: ids must never be reused"
        self.issued_ids.add(entry.id)
        self.rows[(entry.workspace, entry.kind, entry.name)] = entry

    def move(self, entry: ModelEntry, *, workspace: str | None = None, name: str | None = None) -> None:
        del self.rows[(entry.workspace, entry.kind, entry.name)]
        entry.workspace = workspace or entry.workspace
        entry.name = name or entry.name
        self.rows[(entry.workspace, entry.kind, entry.name)] = entry

    def remove(self, key: Key) -> None:
        row = self.rows.pop(key)
        if isinstance(row, ModelEntry) and row.id in self.leases:
            # The lease row goes with the entry; nothing can hold a lease on an entry that is gone.
            self.leases[row.id].holds = 0


def validated_definition(kind: str, name: str, definition: dict[str, Any] | None) -> dict[str, Any] | None:
    """What ``register`` stores as the definition, or Refused(ValidationError); from the kind schemas."""
    if kind != "step":
        return None if definition is None else dict(definition)  # no required fields, not strict
    problems = not STEP_PATTERN.match(name)
    if definition is None:  # an identity: only the name is checked
        if problems:
            raise Refused(ValidationError)
        return None
    problems = problems or not STEP_REQUIRED <= definition.keys() or not definition.keys() <= STEP_FIELDS
    if problems:
        raise Refused(ValidationError)
    defaults = {"config_class": f"{name}Config", "builder_step_name": f"{name}StepBuilder", "spec_type": name,
                "description": ""}
    return {**defaults, **definition}


def facts_of(entry: Entry) -> EntryFacts:
    return (entry.kind, entry.name, entry.id, entry.workspace, dict(entry.metadata),
            None if entry.definition is None else dict(entry.definition), entry.target,
            tuple(sorted(entry.capabilities)))


def merged(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    return {**stored, **given}


# -- the machine -----------------------------------------------------------------------------------


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # A fresh database per example: hypothesis builds a new machine for each one.
        self.directory = Path(tempfile.mkdtemp(prefix="nameplate-stateful-"))
        self.db_path = self.directory / "registry.db"
        # A ttl far beyond any run: the heartbeat never beats, so the tables change only through
        # the operations under test (a snapshot before and after a refused call must be equal).
        self.registry = Registry(self.db_path, ttl=3600.0, lock_delay=0)
        self.model = Model()

    def teardown(self) -> None:
        try:
            self.registry.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- helpers -----------------------------------------------------------------------------------

    def workspace(self, pick: int) -> str:
        existing = list(self.model.parents)  # core first, then in creation order
        return existing[pick % len(existing)]

    def aimed(self, aim: int | None, candidates: Callable[[str], list[tuple[str, str]]], pick: int, name: str,
              kind: str) -> Key:
        """``(workspace, kind, name)`` to act on: the drawn ones, or with ``aim`` one of the rows (in any
        workspace) that ``candidates(workspace)`` offers, when there is one."""
        ws = self.workspace(pick)
        offered = sorted((w, k, n) for w in self.model.parents for n, k in candidates(w))
        if aim is None or not offered:
            return ws, kind, name
        return offered[aim % len(offered)]

    def local_rows(self, workspace: str) -> list[tuple[str, str]]:
        return [(e.name, e.kind) for e in self.model.entries() if e.workspace == workspace]

    def visible_rows(self, workspace: str) -> list[tuple[str, str]]:
        return [(e.name, e.kind) for e in self.model.view(workspace)]

    def inherited_rows(self, workspace: str) -> list[tuple[str, str]]:
        return [(e.name, e.kind) for e in self.model.view(workspace) if e.workspace != workspace]

    def tombstone_rows(self, workspace: str) -> list[tuple[str, str]]:
        return [(n, k) for (w, k, n), row in self.model.rows.items() if w == workspace and isinstance(row, Tombstone)]

    def leased_rows(self, workspace: str) -> list[tuple[str, str]]:
        held = self.model.held()
        return [(e.name, e.kind) for e in self.model.view(workspace) if e.id in held]

    def kind_of(self, ws: str, name: str, kind: str, omit_kind: bool) -> str:
        """The kind a call acts on: the one given, or without ``kind=`` the only kind ``name`` is
        visible under in ``ws`` (several: AmbiguousNameError, "pass kind= to choose one")."""
        if not omit_kind:
            return kind
        found = [k for k in KINDS if self.model.visible(ws, k, name) is not None]
        if len(found) > 1:
            raise Refused(AmbiguousNameError)
        if not found:
            raise Refused(EntryNotFoundError)
        return found[0]

    def refused(self, expected: Refused, call: Callable[[], object]) -> None:
        """``call`` must raise exactly ``expected.error`` (or one of ``expected.or_else``) and write nothing."""
        before = table_snapshot(self.db_path)
        with pytest.raises(NameplateError) as caught:
            call()
        allowed = (expected.error, *expected.or_else)
        assert type(caught.value) in allowed, (
            f"expected {' or '.join(e.__name__ for e in allowed)}, got {type(caught.value).__name__}: {caught.value}")
        if expected.defined_in is not None and type(caught.value) is expected.error:
            # A write refused on an inherited entry names the layer that defines it.
            assert getattr(caught.value, "defined_in", None) == expected.defined_in
            assert repr(expected.defined_in) in str(caught.value)
        assert table_snapshot(self.db_path) == before, "a refused operation changed the database"

    @contextmanager
    def writes_nothing(self, documented: bool = True) -> Iterator[None]:
        """The block must leave every table as it was (for calls the docs say write nothing)."""
        before = table_snapshot(self.db_path) if documented else None
        yield
        if before is not None:
            assert table_snapshot(self.db_path) == before, "a call documented to write nothing wrote"

    def take_lease(self, entry: ModelEntry, handle: Lease) -> None:
        """Check what acquire returned against the model, then record it (RLock-like counting)."""
        current = self.model.leases.get(entry.id)
        if current is not None and current.holds > 0:
            assert handle is current.handle, "re-acquiring a held lease must return the lease already held"
            current.holds += 1
        else:
            token = self.model.fences.get(entry.id, 0) + 1  # +1 at every acquisition of the entry
            self.model.fences[entry.id] = token
            self.model.leases[entry.id] = ModelLease(entry.id, token, handle)
            self.model.handed_out.append(self.model.leases[entry.id])
        assert (handle.entry_id, handle.token) == (entry.id, self.model.leases[entry.id].token), (
            f"acquire of {entry.kind} {entry.name!r} ({entry.id}) returned {handle!r} on {handle.entry_id}")
        assert handle.held, f"acquire returned {handle!r}, which is not held"

    # -- workspaces ------------------------------------------------------------------------------

    @initialize(parent_picks=st.lists(workspace_picks, max_size=len(WORKSPACE_POOL)),
                seeds=st.lists(st.tuples(names, kinds, workspace_picks), max_size=8))
    def a_tree_with_entries(self, parent_picks: list[int], seeds: list[tuple[str, str, int]]) -> None:
        """Start from a few layers with entries in them: collisions and shadows from the first rule on."""
        for workspace, parent_pick in zip(WORKSPACE_POOL, parent_picks, strict=False):
            self.create_workspace(workspace, parent_pick)
        for name, kind, pick in seeds:
            self.resolve(name, kind, None, pick, lock=False, via_context=False)

    @rule(name=st.sampled_from((*WORKSPACE_POOL, CORE)), parent_pick=workspace_picks)
    def create_workspace(self, name: str, parent_pick: int) -> None:
        # The parent is an existing workspace, or (one pick in n+1) one not created yet.
        missing = [w for w in WORKSPACE_POOL if w not in self.model.parents]
        existing = list(self.model.parents)
        parent = (missing[0] if missing and parent_pick % (len(existing) + 1) == len(existing)
                  else existing[parent_pick % len(existing)])
        if parent not in self.model.parents:
            self.refused(Refused(UnknownWorkspaceError), lambda: self.registry.create_workspace(name, parent=parent))
            return
        if name in self.model.parents:
            self.refused(Refused(NameTakenError), lambda: self.registry.create_workspace(name, parent=parent))
            return
        info = self.registry.create_workspace(name, parent=parent)
        self.model.parents[name] = parent
        assert (info.name, info.parent, info.depth) == (name, parent, len(self.model.chain(name)) - 1)

    @rule(pick=workspace_picks, force=st.booleans())
    def delete_workspace(self, pick: int, force: bool) -> None:
        name = self.workspace(pick)

        def call() -> list[str]:
            return self.registry.delete_workspace(name, force=force)

        below = [w for w in self.model.parents if w != name and name in self.model.chain(w)]
        doomed = sorted(below, key=lambda w: (-len(self.model.chain(w)), w)) + [name]  # deepest first
        leased = [e for e in self.model.entries() if e.workspace in doomed and e.id in self.model.held()]
        if name == CORE or (below and not force) or leased:
            # core is the root; children need force=True; "refused while any of its entries is leased"
            self.refused(Refused(WorkspaceError), call)
            return
        assert call() == doomed
        for key in [key for key in self.model.rows if key[0] in doomed]:
            self.model.remove(key)
        for workspace in doomed:
            del self.model.parents[workspace]

    # -- entries ---------------------------------------------------------------------------------

    @rule(name=names, kind=kinds, metadata=optional_metadata, pick=workspace_picks, lock=st.booleans(),
          via_context=st.booleans())
    def resolve(self, name: str, kind: str, metadata: dict[str, Any] | None, pick: int, lock: bool,
                via_context: bool) -> None:
        ws = self.workspace(pick)

        def call() -> str:
            if via_context:  # the active workspace from `with registry.workspace(...)` (guarantee 6)
                with self.registry.workspace(ws):
                    return self.registry.resolve(name, kind, metadata, lock=lock)
            return self.registry.resolve(name, kind, metadata, workspace=ws, lock=lock)

        existing = self.model.visible(ws, kind, name)
        if existing is None and kind == "step" and not STEP_PATTERN.match(name):
            self.refused(Refused(InvalidNameError), call)
            return
        if existing is None:
            entry_id = call()
            # Created here (a tombstone of this workspace becomes the new entry), never an old id.
            self.model.add(ModelEntry(entry_id, kind, name, ws, dict(metadata or {})))
            entry = self.model.rows[(ws, kind, name)]
            assert isinstance(entry, ModelEntry)
        else:
            entry = existing
            # Merged only into an entry of this very workspace; an inherited entry is left to its layer.
            changes = (existing.workspace == ws and metadata is not None
                       and merged(existing.metadata, metadata) != existing.metadata)
            # resolve(): "when that changes nothing, the call writes nothing" (the lease is a write).
            with self.writes_nothing(documented=not changes and not lock):
                entry_id = call()
            assert entry_id == existing.id
            if changes:
                assert metadata is not None
                existing.metadata = merged(existing.metadata, metadata)
        if lock:
            handle = self.registry.lease(name, kind, workspace=ws)
            assert handle is not None, "resolve(lock=True) must leave this process holding the lease"
            self.take_lease(entry, handle)

    @rule(old=names, new=names, kind=kinds, omit_kind=omit_kinds, pick=workspace_picks, aim=aims)
    def rename(self, old: str, new: str, kind: str, omit_kind: bool, pick: int, aim: int | None) -> None:
        ws, kind, old = self.aimed(aim, self.local_rows, pick, old, kind)

        def call() -> str:
            return self.registry.rename(old, new, None if omit_kind else kind, workspace=ws)

        try:
            kind = self.kind_of(ws, old, kind, omit_kind)
            bad_new_name = new != old and kind == "step" and not STEP_PATTERN.match(new)
            try:
                entry = self.model.local(ws, kind, old)
            except Refused as not_here:
                if bad_new_name:  # two problems at once: either may be reported
                    not_here.or_else = (InvalidNameError,)
                raise
            if bad_new_name:
                raise Refused(InvalidNameError)
            # "NameTakenError if new is used": visible here, from this layer or an inherited one.
            if new != old and self.model.visible(ws, kind, new) is not None:
                raise Refused(NameTakenError)
        except Refused as expected:
            self.refused(expected, call)
            return
        assert call() == entry.id  # the id stays
        if new != old:
            # The renamed entry replaces this workspace's own tombstone for the new name, if any.
            self.model.rows.pop((ws, kind, new), None)
            self.model.move(entry, name=new)

    @rule(name=names, kind=kinds, omit_kind=omit_kinds, pick=workspace_picks, aim=aims)
    def delete(self, name: str, kind: str, omit_kind: bool, pick: int, aim: int | None) -> None:
        ws, kind, name = self.aimed(aim, self.local_rows, pick, name, kind)

        def call() -> Entry:
            return self.registry.delete(name, None if omit_kind else kind, workspace=ws)

        try:
            kind = self.kind_of(ws, name, kind, omit_kind)
            entry = self.model.local(ws, kind, name)
        except Refused as expected:
            self.refused(expected, call)
            return
        assert facts_of(call()) == entry.facts()  # "return what it was"
        self.model.remove((ws, kind, name))

    @rule(name=names, kind=kinds, omit_kind=omit_kinds, metadata=metadata_values, merge=st.booleans(),
          pick=workspace_picks, aim=aims)
    def update(self, name: str, kind: str, omit_kind: bool, metadata: dict[str, Any], merge: bool, pick: int,
               aim: int | None) -> None:
        ws, kind, name = self.aimed(aim, self.local_rows, pick, name, kind)

        def call() -> Entry:
            return self.registry.update(name, None if omit_kind else kind, metadata=metadata, merge=merge,
                                        workspace=ws)

        try:
            kind = self.kind_of(ws, name, kind, omit_kind)
            entry = self.model.local(ws, kind, name)
        except Refused as expected:
            self.refused(expected, call)
            return
        updated = call()
        entry.metadata = merged(entry.metadata, metadata) if merge else dict(metadata)
        assert facts_of(updated) == entry.facts()

    @rule(name=names, kind=kinds, definition=definitions, dotted_target=dotted_targets, capabilities=capability_sets,
          metadata=optional_metadata, on_conflict=st.sampled_from(ON_CONFLICT), pick=workspace_picks, aim=aims,
          via_context=st.booleans())
    def register(self, name: str, kind: str, definition: dict[str, Any] | None, dotted_target: str | None,
                 capabilities: frozenset[str], metadata: dict[str, Any] | None, on_conflict: str, pick: int,
                 aim: int | None, via_context: bool) -> None:
        ws, kind, name = self.aimed(aim, self.local_rows, pick, name, kind)  # aimed: a conflict, or the same again

        def call() -> Entry:
            context = self.registry.workspace(ws) if via_context else nullcontext()
            with context:
                return self.registry.register(name, kind, definition, target=dotted_target, capabilities=capabilities,
                                              metadata=metadata, on_conflict=on_conflict,
                                              workspace=None if via_context else ws)

        try:
            stored_definition = validated_definition(kind, name, definition)
        except Refused as expected:
            self.refused(expected, call)
            return
        # register() acts on this workspace's own row: an inherited entry is shadowed, not changed.
        own = self.model.rows.get((ws, kind, name))
        if not isinstance(own, ModelEntry):  # nothing here, or our tombstone: a new entry here
            registered = call()
            self.model.add(ModelEntry(registered.id, kind, name, ws, dict(metadata or {}), stored_definition,
                                      dotted_target, capabilities))
            assert facts_of(registered) == self.model.rows[(ws, kind, name)].facts()  # type: ignore[union-attr]
            return
        wanted = (stored_definition, dotted_target, capabilities, own.metadata if metadata is None else dict(metadata))
        same = wanted == (own.definition, own.target, own.capabilities, own.metadata)
        if not same and own.registered and on_conflict == "error":
            self.refused(Refused(NameTakenError), call)
            return
        if same or (own.registered and on_conflict == "keep"):
            # "Registering the same thing again writes nothing"; "keep" returns it unchanged.
            with self.writes_nothing():
                registered = call()
        else:  # "replace", or an entry that was only resolved gets its definition filled in
            registered = call()
            own.definition, own.target, own.capabilities, own.metadata = wanted
        assert facts_of(registered) == own.facts()  # the id stays in every case

    # -- layers ----------------------------------------------------------------------------------

    @rule(name=names, kind=kinds, omit_kind=omit_kinds, pick=workspace_picks, aim=aims)
    def hide(self, name: str, kind: str, omit_kind: bool, pick: int, aim: int | None) -> None:
        ws, kind, name = self.aimed(aim, self.inherited_rows, pick, name, kind)

        def call() -> str:
            return self.registry.hide(name, None if omit_kind else kind, workspace=ws)

        try:
            kind = self.kind_of(ws, name, kind, omit_kind)
            entry = self.model.visible(ws, kind, name)
            if entry is None:
                raise Refused(EntryNotFoundError)
            if entry.workspace == ws:
                raise Refused(WorkspaceError)  # "hide only masks what an ancestor defines"
        except Refused as expected:
            self.refused(expected, call)
            return
        assert call() == entry.id
        self.model.rows[(ws, kind, name)] = TOMBSTONE

    @rule(name=names, kind=kinds, pick=workspace_picks, aim=aims)
    def unhide(self, name: str, kind: str, pick: int, aim: int | None) -> None:
        ws, kind, name = self.aimed(aim, self.tombstone_rows, pick, name, kind)
        if not isinstance(self.model.rows.get((ws, kind, name)), Tombstone):
            self.refused(Refused(EntryNotFoundError), lambda: self.registry.unhide(name, kind, workspace=ws))
            return
        assert self.registry.unhide(name, kind, workspace=ws) is None
        del self.model.rows[(ws, kind, name)]

    @rule(name=names, kind=kinds, omit_kind=omit_kinds, pick=workspace_picks, aim=aims, replace=st.booleans())
    def promote(self, name: str, kind: str, omit_kind: bool, pick: int, aim: int | None, replace: bool) -> None:
        ws, kind, name = self.aimed(aim, self.local_rows, pick, name, kind)

        def call() -> Entry:
            return self.registry.promote(name, None if omit_kind else kind, workspace=ws, replace=replace)

        try:
            kind = self.kind_of(ws, name, kind, omit_kind)
            entry = self.model.local(ws, kind, name)
            parent = self.model.parents[ws]
            if parent is None:
                raise Refused(WorkspaceError)  # core is the top layer
            if isinstance(self.model.rows.get((parent, kind, name)), ModelEntry) and not replace:
                raise Refused(NameTakenError)
        except Refused as expected:
            self.refused(expected, call)
            return
        promoted = call()
        if (parent, kind, name) in self.model.rows:  # replace=True, or the parent's own tombstone
            self.model.remove((parent, kind, name))
        self.model.move(entry, workspace=parent)
        assert facts_of(promoted) == entry.facts()  # same id, now in the parent

    # -- leases ----------------------------------------------------------------------------------

    @rule(name=names, kind=kinds, omit_kind=omit_kinds, pick=workspace_picks, aim=aims)
    def acquire(self, name: str, kind: str, omit_kind: bool, pick: int, aim: int | None) -> None:
        ws, kind, name = self.aimed(aim, self.visible_rows, pick, name, kind)

        def call() -> Lease:
            return self.registry.acquire(name, None if omit_kind else kind, workspace=ws)

        try:
            kind = self.kind_of(ws, name, kind, omit_kind)
            entry = self.model.visible(ws, kind, name)  # an inherited entry can be leased too
            if entry is None:
                raise Refused(EntryNotFoundError)
        except Refused as expected:
            self.refused(expected, call)
            return
        self.take_lease(entry, call())

    @rule(name=names, kind=kinds, omit_kind=omit_kinds, pick=workspace_picks, aim=aims)
    def release(self, name: str, kind: str, omit_kind: bool, pick: int, aim: int | None) -> None:
        ws, kind, name = self.aimed(aim, self.leased_rows, pick, name, kind)

        def call() -> bool:
            return self.registry.release(name, None if omit_kind else kind, workspace=ws)

        try:
            kind = self.kind_of(ws, name, kind, omit_kind)
            entry = self.model.visible(ws, kind, name)
            if entry is None:
                raise Refused(EntryNotFoundError)
        except Refused as expected:
            self.refused(expected, call)
            return
        lease = self.model.held().get(entry.id)
        if lease is None:  # "return False if nobody held it"
            with self.writes_nothing():
                assert call() is False
            return
        assert call() is True
        self.released_one_hold(lease)

    @precondition(lambda self: self.model.handed_out)
    @rule(index=st.integers(min_value=0, max_value=20))
    def release_lease_object(self, index: int) -> None:
        lease = self.model.handed_out[index % len(self.model.handed_out)]
        if lease.holds == 0:  # "return False if it had already been released or lost"
            with self.writes_nothing():
                assert lease.handle.release() is False
            return
        assert lease.handle.release() is True
        self.released_one_hold(lease)

    def released_one_hold(self, lease: ModelLease) -> None:
        lease.holds -= 1
        # Like an RLock: still held until the last release of this thread's acquires.
        assert (lease.handle.held, lease.handle.released) == (lease.holds > 0, lease.holds == 0), (
            f"{lease.handle!r} after a release, with {lease.holds} acquisitions still unreleased")

    @precondition(lambda self: self.model.handed_out)
    @rule(name=names, kind=kinds, pick=workspace_picks, aim=aims, index=st.integers(min_value=0, max_value=20),
          metadata=metadata_values, merge=st.booleans())
    def fenced_update(self, name: str, kind: str, pick: int, aim: int | None, index: int,
                      metadata: dict[str, Any], merge: bool) -> None:
        lease = self.model.handed_out[index % len(self.model.handed_out)]
        handle = lease.handle
        ws = self.workspace(pick)
        if aim is not None:  # aim at the leased entry itself, where it lives
            try:
                leased = self.model.entry_by_id(lease.entry_id)
                ws, name, kind = leased.workspace, leased.name, leased.kind
            except StopIteration:
                pass  # the leased entry was deleted: the drawn name stays

        def call() -> Entry:
            return self.registry.update(name, kind, metadata=metadata, merge=merge, lease=handle, workspace=ws)

        try:
            entry = self.model.local(ws, kind, name)
            if lease.entry_id != entry.id:
                # "the lease given is on ..., not on ..."; a lease no longer held is lost as well,
                # and the docs do not say which of the two is reported first.
                raise Refused(InvalidInputError, or_else=(LeaseLost,) if lease.holds == 0 else ())
            if lease.holds == 0:
                raise Refused(LeaseLost)  # released (or gone): the fenced write must not land
        except Refused as expected:
            self.refused(expected, call)
            return
        updated = call()
        entry.metadata = merged(entry.metadata, metadata) if merge else dict(metadata)
        assert facts_of(updated) == entry.facts()

    # -- what must hold after every step -----------------------------------------------------------

    @invariant()
    def workspace_tree_agrees(self) -> None:
        infos = {info.name: info for info in self.registry.workspaces()}
        assert set(infos) == set(self.model.parents), "workspaces()"
        for name, info in infos.items():
            own = [row for (w, _, _), row in self.model.rows.items() if w == name]
            children = tuple(sorted(child for child, parent in self.model.parents.items() if parent == name))
            assert (info.parent, info.depth, info.children) == (
                self.model.parents[name], len(self.model.chain(name)) - 1, children), f"workspace {name!r}"
            assert (info.entries, info.tombstones) == (
                sum(isinstance(row, ModelEntry) for row in own), sum(isinstance(row, Tombstone) for row in own)), (
                f"row counts of workspace {name!r}")

    @invariant()
    def every_view_agrees(self) -> None:
        for ws in self.model.parents:
            listed = [facts_of(entry) for entry in self.registry.list(workspace=ws)]
            assert listed == [entry.facts() for entry in self.model.view(ws)], f"list(workspace={ws!r})"
            for name in NAMES:
                for kind in KINDS:
                    self.check_one_name(ws, name, kind)
                self.check_name_without_kind(ws, name)

    def check_one_name(self, ws: str, name: str, kind: str) -> None:
        expected = self.model.visible(ws, kind, name)
        expected_id = None if expected is None else expected.id
        assert self.registry.lookup(name, kind, workspace=ws) == expected_id, f"lookup({name!r}, {kind!r}, {ws!r})"
        got = self.registry.get(name, kind, workspace=ws)
        assert (None if got is None else facts_of(got)) == (None if expected is None else expected.facts())
        explanation = self.registry.explain(name, kind, workspace=ws)
        chain = self.model.chain(ws)
        met = self.model.layers(ws, kind, name)
        assert explanation.chain == tuple(chain)
        assert [(layer.workspace, layer.depth, layer.hidden) for layer in explanation.layers] == [
            (layer, chain.index(layer), isinstance(row, Tombstone)) for layer, row in met]
        assert [layer.id for layer in explanation.layers if not layer.hidden] == [
            row.id for _, row in met if isinstance(row, ModelEntry)]
        nearest = met[0] if met else None
        answered_by = nearest[0] if nearest is not None and isinstance(nearest[1], ModelEntry) else None
        hidden_by = nearest[0] if nearest is not None and isinstance(nearest[1], Tombstone) else None
        assert (explanation.answered_by, explanation.entry_id, explanation.hidden_by) == (
            answered_by, expected_id, hidden_by), f"explain({name!r}, {kind!r}, {ws!r})"

    def check_name_without_kind(self, ws: str, name: str) -> None:
        found = [entry for kind in KINDS if (entry := self.model.visible(ws, kind, name)) is not None]
        if len(found) > 1:  # several kinds: the caller must choose
            with pytest.raises(AmbiguousNameError):
                self.registry.lookup(name, workspace=ws)
            with pytest.raises(AmbiguousNameError):
                self.registry.get(name, workspace=ws)
            return
        assert self.registry.lookup(name, workspace=ws) == (found[0].id if found else None)
        got = self.registry.get(name, workspace=ws)
        assert (None if got is None else facts_of(got)) == (found[0].facts() if found else None)

    @invariant()
    def leases_agree(self) -> None:
        held = self.model.held()
        locks = self.registry.locks()
        assert sorted((lock.entry_id, lock.token) for lock in locks) == sorted(
            (entry_id, lease.token) for entry_id, lease in held.items()), "locks()"
        for lock in locks:  # listed under the entry's current name and layer (renames, promotions)
            entry = self.model.entry_by_id(lock.entry_id)
            assert (lock.name, lock.kind, lock.workspace) == (entry.name, entry.kind, entry.workspace)
        if not self.model.handed_out:
            return  # lease() needs a session, which the first acquire opens
        for ws in self.model.parents:
            for entry in self.model.view(ws):
                expected = held.get(entry.id)
                handle = self.registry.lease(entry.name, entry.kind, workspace=ws)
                assert handle is (None if expected is None else expected.handle), (
                    f"lease({entry.name!r}, {entry.kind!r}, workspace={ws!r}) is {handle!r}")


# Hypothesis may shrink a failure for up to 300 s, pytest-timeout's default for every test: give the
# run its own limit, so that a failure is reported with its minimal example instead of a timeout.
@pytest.mark.timeout(360 + _EXAMPLES * _STEPS // 20)
def test_registry_agrees_with_its_model() -> None:
    run_state_machine_as_test(RegistryMachine, settings=settings(
        max_examples=_EXAMPLES, stateful_step_count=_STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow]))
