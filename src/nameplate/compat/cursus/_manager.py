"""Cursus's ``UnifiedRegistryManager`` on a Registry: core and workspace steps are the Registry's
layers; the manager holds no steps, no caches and no workspace of its own."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..._records import Entry
from ...errors import NameTakenError, UnknownWorkspaceError, WorkspaceError
from ...registry import Registry
from ._base import RegistryError, install_legacy_aliases, logger, read, registry_or_default, write
from ._steps import (
    clear_workspace_context,
    get_step_names,
    get_workspace_context,
    register_step,
    set_workspace_context,
    workspace_context,
)

_STEP = "step"
_LEGACY_FIELDS = ("config_class", "builder_step_name", "spec_type", "sagemaker_step_type", "description")


@dataclass(frozen=True, slots=True)
class StepDefinition:
    """One step as Cursus's hybrid registry describes it; ``registry_type`` is ``"core"`` or
    ``"workspace"`` (the layer that answered), ``workspace_id`` that layer (``None`` for core)."""

    name: str
    registry_type: str
    workspace_id: str | None
    config_class: str | None = None
    builder_step_name: str | None = None
    spec_type: str | None = None
    sagemaker_step_type: str | None = None
    description: str | None = None
    entry_id: str | None = None

    @classmethod
    def from_entry(cls, entry: Entry) -> StepDefinition:
        definition = dict(entry.definition or {})
        core = entry.workspace == "core"
        return cls(name=entry.name, registry_type="core" if core else "workspace",
                   workspace_id=None if core else entry.workspace, entry_id=entry.id,
                   **{f: definition.get(f) for f in _LEGACY_FIELDS})

    def to_legacy_format(self) -> dict[str, Any]:
        """The ``STEP_NAMES`` value of this step."""
        return {f: getattr(self, f) for f in _LEGACY_FIELDS if getattr(self, f) is not None}


@dataclass(frozen=True, slots=True)
class ResolutionContext:
    """Where a :meth:`UnifiedRegistryManager.get_step` resolves (Cursus's model)."""

    workspace_id: str | None = None


@dataclass(frozen=True, slots=True)
class StepResolutionResult:
    """The outcome of :meth:`UnifiedRegistryManager.get_step`, from the Registry's layer trace."""

    step_name: str
    resolved: bool
    selected_definition: StepDefinition | None
    source_registry: str
    workspace_id: str | None
    resolution_strategy: str = "workspace_priority"
    conflict_detected: bool = False
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _load_file(path: Path) -> Any:
    """Import a Cursus registry file (``step_names.py`` or ``workspace_registry.py``) as Cursus does."""
    spec = importlib.util.spec_from_file_location(f"_cursus_registry_{abs(hash(str(path)))}", path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"{path} cannot be loaded as a Python module", path=str(path))
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the file is the user's code: whatever it raised, it did not load
        raise RegistryError(f"{path} cannot be loaded: {type(error).__name__}: {error}", path=str(path)) from error
    return module


class UnifiedRegistryManager:
    """Cursus's ``UnifiedRegistryManager``: the Registry's layers are its core and workspace registries.

    ``core_registry_path`` (a Cursus ``step_names.py`` with ``STEP_NAMES``) and ``workspaces_root``
    (directories ``<root>/<workspace>/src/cursus_dev/registry/workspace_registry.py`` with
    ``LOCAL_STEPS`` and ``STEP_OVERRIDES``) are imported into the Registry once per file change (a
    registration that is already there writes nothing), each file in one transaction.
    """

    def __init__(self, core_registry_path: str | None = None, workspaces_root: str | None = None, *,
                 registry: Registry | None = None) -> None:
        self.registry = registry_or_default(registry)
        self.core_registry_path = core_registry_path
        self.workspaces_root = Path(workspaces_root) if workspaces_root else None
        install_legacy_aliases(self.registry)
        if core_registry_path:
            module = _load_file(Path(core_registry_path))
            self._import_steps("core", getattr(module, "STEP_NAMES", {}))
        if self.workspaces_root is not None and self.workspaces_root.is_dir():
            for directory in sorted(p for p in self.workspaces_root.iterdir() if p.is_dir()):
                self.add_workspace_registry(directory.name, str(directory))

    def _import_steps(self, workspace: str, steps: Mapping[str, Mapping[str, Any]]) -> None:
        items = [{"name": name, "kind": _STEP, "definition": {k: v for k, v in info.items() if k in _LEGACY_FIELDS}}
                 for name, info in steps.items()]
        if items:
            write(self.registry, workspace,
                  lambda w: self.registry.register_many(items, on_conflict="replace", workspace=w))

    # -- workspaces ---------------------------------------------------------------------------------

    def add_workspace_registry(self, workspace_id: str, workspace_path: str | None = None) -> None:
        """Make ``workspace_id`` a layer over core (if it is not one) and import its Cursus
        ``workspace_registry.py`` when ``workspace_path`` has one."""
        reg = self.registry
        try:
            reg.create_workspace(workspace_id, description="a Cursus workspace (UnifiedRegistryManager)")
        except NameTakenError:
            pass
        if workspace_path is None:
            return
        file = Path(workspace_path) / "src" / "cursus_dev" / "registry" / "workspace_registry.py"
        if file.is_file():
            module = _load_file(file)
            self._import_steps(workspace_id, {**getattr(module, "LOCAL_STEPS", {}),
                                              **getattr(module, "STEP_OVERRIDES", {})})
            logger.info("loaded workspace %r from %s", workspace_id, file)

    def remove_workspace_registry(self, workspace_id: str) -> bool:
        """Delete the workspace layer and its steps; False if there was none (or it is core)."""
        try:
            self.registry.delete_workspace(workspace_id)
        except (UnknownWorkspaceError, WorkspaceError) as error:
            logger.warning("workspace %r not removed: %s", workspace_id, error)
            return False
        return True

    # -- steps --------------------------------------------------------------------------------------

    def _entries(self, workspace_id: str | None) -> list[Entry]:
        reg = self.registry
        return read(reg, workspace_id, lambda w: reg.list(_STEP, workspace=w))

    def get_step_definition(self, step_name: str, workspace_id: str | None = None) -> StepDefinition | None:
        """The step as the workspace sees it (its own over core's), or ``None``."""
        reg = self.registry
        entry = read(reg, workspace_id, lambda w: reg.get(step_name, _STEP, workspace=w))
        return None if entry is None else StepDefinition.from_entry(entry)

    def get_all_step_definitions(self, workspace_id: str | None = None) -> dict[str, StepDefinition]:
        return {e.name: StepDefinition.from_entry(e) for e in self._entries(workspace_id)}

    def get_local_only_definitions(self, workspace_id: str) -> dict[str, StepDefinition]:
        """The steps the workspace defines itself (not those it inherits from core)."""
        return {e.name: StepDefinition.from_entry(e) for e in self._entries(workspace_id)
                if e.workspace == workspace_id}

    def get_step(self, step_name: str, context: ResolutionContext | str | None = None) -> StepResolutionResult:
        """Resolve ``step_name`` through the layers; ``source_registry`` is the layer that answered."""
        workspace_id = context.workspace_id if isinstance(context, ResolutionContext) else context
        reg = self.registry
        explanation = read(reg, workspace_id, lambda w: reg.explain(step_name, _STEP, workspace=w))
        definition = self.get_step_definition(step_name, explanation.workspace)
        if explanation.answered_by is None or definition is None:
            why = f" (hidden in {explanation.hidden_by!r})" if explanation.hidden_by else ""
            return StepResolutionResult(step_name, False, None, "none", workspace_id,
                                        errors=[f"step {step_name!r} not found in workspace "
                                                f"{explanation.workspace!r}{why}"])
        return StepResolutionResult(step_name, True, definition, explanation.answered_by, workspace_id,
                                    conflict_detected=bool(explanation.shadows))

    def list_steps(self, workspace_id: str | None = None) -> list[str]:
        return sorted(e.name for e in self._entries(workspace_id))

    def list_all_steps(self, include_source: bool = False) -> list[str] | dict[str, list[str]]:
        """Every step of every workspace; with ``include_source``, workspace → its own steps."""
        per_workspace = {info.name: sorted(e.name for e in self._entries(info.name) if e.workspace == info.name)
                         for info in self.registry.workspaces()}
        if include_source:
            return per_workspace
        return sorted({name for names in per_workspace.values() for name in names})

    def has_step(self, step_name: str, workspace_id: str | None = None) -> bool:
        return self.get_step_definition(step_name, workspace_id) is not None

    def get_step_count(self, workspace_id: str | None = None) -> int:
        return len(self._entries(workspace_id))

    def get_step_conflicts(self) -> dict[str, list[StepDefinition]]:
        """Steps that sibling workspaces define differently: name → each workspace's definition."""
        conflicts: dict[str, list[StepDefinition]] = {}
        for conflict in self.registry.conflicts():
            if conflict.kind != _STEP or conflict.type != "sibling":
                continue
            found = [self.get_step_definition(conflict.name, ws) for ws in conflict.workspaces]
            conflicts[conflict.name] = [d for d in found if d is not None]
        return conflicts

    def get_registry_status(self) -> dict[str, dict[str, Any]]:
        """Per workspace: its own step count, the count it sees, its parent."""
        status: dict[str, dict[str, Any]] = {}
        for info in self.registry.workspaces():
            entries = self._entries(info.name)
            own = sum(1 for e in entries if e.workspace == info.name)
            status[info.name] = {"loaded": True, "workspace_id": info.name, "parent": info.parent,
                                 "local_step_count": own, "total_step_count": len(entries)}
        return status

    def create_legacy_step_names_dict(self, workspace_id: str | None = None) -> dict[str, dict[str, Any]]:
        """Cursus's ``STEP_NAMES`` for the workspace."""
        return get_step_names(workspace_id, registry=self.registry)

    def register_step(self, step_name: str, definition: Mapping[str, Any], workspace_id: str | None = None,
                      validation_mode: str = "warn") -> Entry:
        """:func:`register_step` on this manager's registry."""
        return register_step(step_name, definition, workspace_id, validation_mode=validation_mode,
                             registry=self.registry)

    # -- workspace context: the thread's/task's, never the manager's ---------------------------------

    def set_workspace_context(self, workspace_id: str) -> None:
        """:func:`set_workspace_context`: this thread or task only (not this manager: Cursus kept it on
        the shared manager, so one thread's switch moved every thread)."""
        set_workspace_context(workspace_id)

    def get_workspace_context(self) -> str | None:
        return get_workspace_context()

    def clear_workspace_context(self) -> None:
        clear_workspace_context()

    @contextmanager
    def resolution_context(self, workspace_id: str) -> Iterator[ResolutionContext]:
        """Within the block, this thread/task resolves in ``workspace_id``."""
        with workspace_context(workspace_id):
            yield ResolutionContext(workspace_id)


class WorkspaceRegistryManager:
    """Cursus's ``WorkspaceRegistryManager`` (seed 001): one developer workspace, given by its directory.

    The workspace is named after the directory (or ``workspace_id``) and made a layer over core; its
    ``src/cursus_dev/registry/workspace_registry.py``, if there, is imported into it (see
    :meth:`UnifiedRegistryManager.add_workspace_registry`).
    """

    def __init__(self, workspace_path: str, workspace_id: str | None = None, *,
                 registry: Registry | None = None) -> None:
        self.workspace_path = Path(workspace_path)
        self.workspace_id = workspace_id or self.workspace_path.name
        self.registry = registry_or_default(registry)
        UnifiedRegistryManager(registry=self.registry).add_workspace_registry(self.workspace_id,
                                                                              str(self.workspace_path))

    def get_workspace_steps(self) -> dict[str, dict[str, Any]]:
        """The steps this workspace defines itself (not the ones it inherits from core)."""
        reg = self.registry
        return {e.name: dict(e.definition or {}) for e in reg.list(_STEP, workspace=self.workspace_id)
                if e.workspace == self.workspace_id}

    def get_all_steps(self) -> dict[str, dict[str, Any]]:
        """Every step the workspace sees: its own over core's (Cursus's ``STEP_NAMES`` there)."""
        return get_step_names(self.workspace_id, registry=self.registry)


# Cursus's names for the managers it merged into this one.
CoreStepRegistry = UnifiedRegistryManager
LocalStepRegistry = UnifiedRegistryManager
HybridRegistryManager = UnifiedRegistryManager
