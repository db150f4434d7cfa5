"""Cursus's step-name registry on a Registry: lookups, registration with Cursus's validation modes,
the STEP_NAMES family of mappings as live views, hyperparameters, export, debugging, integrity."""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from ..._context import ENV_WORKSPACE, active_workspace, set_context_workspace
from ..._records import Entry
from ...errors import ConflictError, InvalidInputError, NameTakenError, TargetImportError
from ...registry import Registry
from ._base import (
    CURSUS_LEGACY_ALIASES,
    VALIDATION_MODES,
    StepDefinitionWarning,
    StepNotFoundError,
    StepValidationError,
    chosen_workspace,
    logger,
    read,
    registry_or_default,
    write,
)

V = TypeVar("V")

PASCAL_CASE_PATTERN = re.compile(r"^[A-Z][a-zA-Z0-9]*$")
#: SageMaker's pipeline step types and Cursus's framework types (Cursus read its valid set from the
#: step files it ships, whose types are these).
SAGEMAKER_STEP_TYPES: frozenset[str] = frozenset({
    "Processing", "Training", "Transform", "CreateModel", "RegisterModel", "Model", "Tuning", "Condition",
    "Lambda", "Callback", "QualityCheck", "ClarifyCheck", "EMR", "Fail", "AutoML",
    "Base", "Utility", "CradleDataLoading", "MimsModelRegistrationProcessing",
})
_STEP = "step"


# -- workspace context -------------------------------------------------------------------------------

def set_workspace_context(workspace_id: str) -> None:
    """Make ``workspace_id`` the workspace of this thread or asyncio task until it is set again or
    cleared; what it starts afterwards through the context (asyncio tasks, ``asyncio.to_thread``,
    ``contextvars.copy_context().run``) starts with it.

    Never process-wide, unlike Cursus: it is a context variable, so other threads (a plain
    ``threading.Thread`` and a pool's workers start with none), other tasks and other processes keep
    their own. One thread switching workspaces must not make another thread's lookups answer from the
    wrong layer, and a request handled in a pool must not inherit whatever the last request set.
    """
    set_context_workspace(workspace_id)


def clear_workspace_context() -> None:
    """Forget this thread's/task's workspace: calls act in ``CURSUS_WORKSPACE_ID``'s, else core."""
    set_context_workspace(None)


def get_workspace_context() -> str | None:
    """The workspace set for this thread or task, else ``CURSUS_WORKSPACE_ID``, else
    ``NAMEPLATE_WORKSPACE``; ``None`` when nothing is set (calls then act in core)."""
    return chosen_workspace(None) or os.environ.get(ENV_WORKSPACE) or None


@contextmanager
def workspace_context(workspace_id: str, *, registry: Registry | None = None) -> Iterator[str]:
    """``with workspace_context("developer_1"):``: the workspace of this thread/task inside the block;
    the previous one (or none) is back afterwards. ``registry`` is accepted for symmetry and unused."""
    with active_workspace(workspace_id) as active:
        yield active


# -- names -------------------------------------------------------------------------------------------

def to_pascal_case(text: str) -> str:
    """``custom_step`` → ``CustomStep``, ``myCustomStep`` → ``MyCustomStep``, ``xgboost-eval`` →
    ``XgboostEval`` (letters after the first of each word are kept as they are)."""
    words = re.split(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])", text)
    return "".join(word[:1].upper() + word[1:] for word in words if word)


def naming_problems(name: str, definition: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Cursus's naming standard for a step: every rule broken, and the corrected values
    (``name``, ``config_class``, ``builder_step_name``, ``sagemaker_step_type``) where one exists."""
    problems: list[str] = []
    fixes: dict[str, str] = {}
    pascal = name if PASCAL_CASE_PATTERN.match(name) else to_pascal_case(name)
    if pascal != name:
        problems.append(f"step name {name!r} must be PascalCase; corrected: {pascal!r}")
        fixes["name"] = pascal
    config_class = definition.get("config_class")
    if isinstance(config_class, str) and not config_class.endswith("Config"):
        problems.append(f"config class {config_class!r} must end with 'Config'; corrected: {pascal + 'Config'!r}")
        fixes["config_class"] = pascal + "Config"
    builder = definition.get("builder_step_name")
    if isinstance(builder, str) and not (builder.endswith("StepBuilder")
                                         and PASCAL_CASE_PATTERN.match(builder[:-len("StepBuilder")] or "X")):
        problems.append(f"builder name {builder!r} must be PascalCase ending with 'StepBuilder'; corrected: "
                        f"{pascal + 'StepBuilder'!r}")
        fixes["builder_step_name"] = pascal + "StepBuilder"
    step_type = definition.get("sagemaker_step_type")
    valid = SAGEMAKER_STEP_TYPES
    if isinstance(step_type, str) and step_type not in valid:
        base = step_type.removesuffix("Step")
        hint = f"; corrected: {base!r}" if base in valid else f" (valid: {', '.join(sorted(valid))})"
        problems.append(f"SageMaker step type {step_type!r} is not valid{hint}")
        if base in valid:
            fixes["sagemaker_step_type"] = base
    return problems, fixes


def _check_mode(validation_mode: str) -> None:
    if validation_mode not in VALIDATION_MODES:
        raise InvalidInputError(f"validation_mode must be one of {', '.join(VALIDATION_MODES)}, not "
                                f"{validation_mode!r}", validation_mode=validation_mode)


def _step_entry(reg: Registry, name: str, ws: str | None) -> Entry | None:
    """The step ``name`` names in the workspace: its own entry, else the entry its alias stands for."""
    entry = reg.get(name, _STEP, workspace=ws)
    if entry is None:
        target = reg.resolve_alias(name, _STEP, workspace=ws)
        if target is not None:
            entry = reg.get(target, _STEP, workspace=ws)
    return entry


def _require_step(reg: Registry, name: str, ws: str | None) -> Entry:
    def find(w: str | None) -> tuple[Entry | None, list[str]]:
        entry = _step_entry(reg, name, w)
        return entry, ([] if entry is not None and entry.definition is not None
                       else [e.name for e in reg.list(_STEP, workspace=w)])

    entry, available = read(reg, ws, find)
    if entry is None or entry.definition is None:
        shown = ", ".join(available[:20]) + (f", ... ({len(available)} in all)" if len(available) > 20 else "")
        raise StepNotFoundError(f"Unknown step name: {name}. Available steps: [{shown}]; register it with "
                                "register_step()", unresolvable_types=[name], name=name, kind=_STEP)
    return entry


# -- lookups -----------------------------------------------------------------------------------------

def get_step_names(workspace_id: str | None = None, *,
                   workspace: str | None = None, registry: Registry | None = None) -> dict[str, dict[str, Any]]:
    """Cursus's ``STEP_NAMES`` for the workspace: step name → definition (its own steps over core's)."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)
    return {e.name: dict(e.definition or {}) for e in read(reg, workspace, lambda w: reg.list(_STEP, workspace=w))}


def get_available_steps(workspace_id: str | None = None, *,
                        workspace: str | None = None, registry: Registry | None = None) -> list[str]:
    """The names of the steps visible in the workspace, sorted."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return sorted(get_step_names(workspace, registry=registry))


def get_all_step_names(workspace_id: str | None = None, *,
                       workspace: str | None = None, registry: Registry | None = None) -> list[str]:
    """Cursus's ``get_all_step_names``: the same as :func:`get_available_steps`."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return get_available_steps(workspace, registry=registry)


def validate_step_name(step_name: str, workspace_id: str | None = None, *,
                       workspace: str | None = None, registry: Registry | None = None) -> bool:
    """Whether a step of that name, or an alias of one, is visible in the workspace."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)
    return read(reg, workspace, lambda w: _step_entry(reg, step_name, w)) is not None


def _field(step_name: str, field: str, workspace: str | None, registry: Registry | None) -> str:
    definition = _require_step(registry_or_default(registry), step_name, workspace).definition or {}
    return str(definition[field])


def get_config_class_name(step_name: str, workspace_id: str | None = None, *,
                          workspace: str | None = None, registry: Registry | None = None) -> str:
    """The step's ``config_class`` (``<Name>Config`` unless registered otherwise); an unknown step raises
    :class:`StepNotFoundError` (a ``ValueError``, as in Cursus)."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return _field(step_name, "config_class", workspace, registry)


def get_builder_step_name(step_name: str, workspace_id: str | None = None, *,
                          workspace: str | None = None, registry: Registry | None = None) -> str:
    """The step's ``builder_step_name`` (``<Name>StepBuilder`` unless registered otherwise)."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return _field(step_name, "builder_step_name", workspace, registry)


def get_spec_step_type(step_name: str, workspace_id: str | None = None, *,
                       workspace: str | None = None, registry: Registry | None = None) -> str:
    """The step's ``spec_type`` (``<Name>`` unless registered otherwise)."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return _field(step_name, "spec_type", workspace, registry)


get_spec_type = get_spec_step_type  # the name nameplate.compat had before it followed Cursus's


def get_sagemaker_step_type(step_name: str, workspace_id: str | None = None, *,
                            workspace: str | None = None, registry: Registry | None = None) -> str:
    """The step's ``sagemaker_step_type``."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return _field(step_name, "sagemaker_step_type", workspace, registry)


def get_config_step_registry(workspace_id: str | None = None, *,
                             workspace: str | None = None, registry: Registry | None = None) -> dict[str, str]:
    """Cursus's ``CONFIG_STEP_REGISTRY``: config class → step name."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return {d["config_class"]: name for name, d in get_step_names(workspace, registry=registry).items()
            if "config_class" in d}


def get_builder_step_names(workspace_id: str | None = None, *,
                           workspace: str | None = None, registry: Registry | None = None) -> dict[str, str]:
    """Cursus's ``BUILDER_STEP_NAMES``: step name → builder class name."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return {name: d["builder_step_name"] for name, d in get_step_names(workspace, registry=registry).items()
            if "builder_step_name" in d}


def get_spec_step_types(workspace_id: str | None = None, *,
                        workspace: str | None = None, registry: Registry | None = None) -> dict[str, str]:
    """Cursus's ``SPEC_STEP_TYPES``: step name → spec type."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return {name: d["spec_type"] for name, d in get_step_names(workspace, registry=registry).items()
            if "spec_type" in d}


def get_legacy_aliases(workspace_id: str | None = None, *,
                       workspace: str | None = None, registry: Registry | None = None) -> dict[str, str]:
    """The step aliases visible in the workspace (Cursus's ``LEGACY_ALIASES`` and any added since)."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)
    return read(reg, workspace, lambda w: reg.aliases(_STEP, workspace=w))


class LiveMapping(Mapping[str, V]):
    """A read-only mapping that reads the registry at every access, in the caller's workspace context:
    what Cursus's module-level ``STEP_NAMES`` dicts meant to be (theirs were bound once at import)."""

    def __init__(self, name: str, read_all: Callable[[], dict[str, V]]) -> None:
        self._name = name
        self._read_all = read_all

    def __getitem__(self, key: str) -> V:
        return self._read_all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read_all())

    def __len__(self) -> int:
        return len(self._read_all())

    def __repr__(self) -> str:
        return f"{self._name}({self._read_all()!r})"


STEP_NAMES: Mapping[str, dict[str, Any]] = LiveMapping("STEP_NAMES", get_step_names)
CONFIG_STEP_REGISTRY: Mapping[str, str] = LiveMapping("CONFIG_STEP_REGISTRY", get_config_step_registry)
BUILDER_STEP_NAMES: Mapping[str, str] = LiveMapping("BUILDER_STEP_NAMES", get_builder_step_names)
SPEC_STEP_TYPES: Mapping[str, str] = LiveMapping("SPEC_STEP_TYPES", get_spec_step_types)
LEGACY_ALIASES: Mapping[str, str] = LiveMapping("LEGACY_ALIASES", get_legacy_aliases)


# -- registration ------------------------------------------------------------------------------------

def corrected_name(name: str, problems: list[str], fixes: dict[str, str], validation_mode: str, what: str) -> str:
    """Apply a validation mode to a name: ``strict`` refuses any problem, the others give the
    PascalCase name the Registry stores (``warn`` warns with it)."""
    if validation_mode == "strict" and problems:
        raise StepValidationError(f"{what} {name!r} refused (validation_mode='strict'), nothing registered: "
                                  + "; ".join(problems), problems=problems, suggestions=fixes, name=name)
    stored = fixes.get("name", name)
    if not PASCAL_CASE_PATTERN.match(stored):
        raise StepValidationError(f"{what} name {name!r} cannot be made PascalCase (it must start with a letter); "
                                  "nothing registered", problems=problems, suggestions=fixes, name=name)
    return stored


def _prepared(step_name: str, definition: Mapping[str, Any], validation_mode: str,
              ) -> tuple[str, dict[str, Any], list[str], dict[str, str]]:
    """The name and definition to store under a validation mode, the problems and the fixes."""
    if not isinstance(definition, Mapping):
        raise StepValidationError(f"the definition of step {step_name!r} must be a dict, not "
                                  f"{type(definition).__name__}", problems=["definition is not a dict"],
                                  suggestions={}, name=step_name)
    problems, fixes = naming_problems(step_name, definition)
    stored_name = corrected_name(step_name, problems, fixes, validation_mode, "step")
    stored = dict(definition)
    if validation_mode == "auto_correct":
        stored.update({k: v for k, v in fixes.items() if k != "name"})
    return stored_name, stored, problems, fixes


def _alias_reader(reg: Registry, alias: str) -> Callable[[str | None], str | None]:
    return lambda w: reg.resolve_alias(alias, _STEP, workspace=w)


def _alias_writer(reg: Registry, alias: str, name: str) -> Callable[[str], Entry]:
    return lambda w: reg.add_alias(alias, name, _STEP, replace=True, workspace=w)


def _check_aliases_free(reg: Registry, workspace: str | None, aliases: dict[str, str], on_conflict: str) -> None:
    """Refuse, before anything is written, a kept spelling that is already an alias of another step."""
    if on_conflict != "error":
        return
    for alias, stored_name in aliases.items():
        pointed = read(reg, workspace, _alias_reader(reg, alias))
        if pointed not in (None, stored_name):
            raise NameTakenError(f"{alias!r} is already an alias of step {pointed!r}; pass on_conflict='replace' to "
                                 "point it at the new step", name=alias, kind=_STEP)


def _report(step_name: str, stored_name: str, problems: list[str], fixes: dict[str, str], validation_mode: str,
            kept_alias: bool, stacklevel: int) -> None:
    if validation_mode == "warn" and problems:
        kept = f"; {step_name!r} is kept as an alias of it" if kept_alias else ""
        warnings.warn(StepDefinitionWarning(f"step registered as {stored_name!r}{kept}, but it breaks Cursus's "
                                            "naming rules: " + "; ".join(problems)), stacklevel=stacklevel)
    elif validation_mode == "auto_correct" and fixes:
        logger.info("step %r auto-corrected: %s", step_name, "; ".join(problems))


def register_step(step_name: str, definition: Mapping[str, Any], workspace_id: str | None = None, *,
                  workspace: str | None = None,
                  validation_mode: str = "warn", on_conflict: str = "error",
                  registry: Registry | None = None) -> Entry:
    """Register (persistently, for every process) a step definition, with Cursus's validation modes.

    - ``"warn"`` (default): registers under the PascalCase name, keeps the given spelling as an alias
      (``register_step('custom_step', ...)`` then ``get_config_class_name('custom_step')`` works) and
      warns (:class:`StepDefinitionWarning`) with every corrected name; the fields are stored as given.
    - ``"strict"``: any broken rule raises :class:`StepValidationError`; nothing is written.
    - ``"auto_correct"``: stores the PascalCase name and the corrected ``config_class``,
      ``builder_step_name`` and ``sagemaker_step_type`` (logged); no alias.

    The definition is then checked against the ``step`` kind; in a workspace that does not exist yet,
    the workspace is created over core. Re-registering the same definition writes nothing; a different
    one raises :class:`~nameplate.NameTakenError` unless ``on_conflict="replace"`` (or ``"keep"``).
    """
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return _register_steps({step_name: definition}, workspace, validation_mode, on_conflict, registry, stacklevel=4)[0]


def register_steps(steps: Mapping[str, Mapping[str, Any]], workspace_id: str | None = None, *,
                   workspace: str | None = None,
                   validation_mode: str = "warn", on_conflict: str = "error",
                   registry: Registry | None = None) -> list[Entry]:
    """Register several steps in one transaction (all or none), each as :func:`register_step` would:
    in ``strict`` mode the first step that breaks a rule refuses the batch before anything is written."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    return _register_steps(steps, workspace, validation_mode, on_conflict, registry, stacklevel=4)


def _register_steps(steps: Mapping[str, Mapping[str, Any]], workspace: str | None, validation_mode: str,
                    on_conflict: str, registry: Registry | None, *, stacklevel: int) -> list[Entry]:
    _check_mode(validation_mode)
    reg = registry_or_default(registry)
    prepared = [(name, *_prepared(name, definition, validation_mode)) for name, definition in steps.items()]
    aliases = {name: stored_name for name, stored_name, *_ in prepared
               if validation_mode == "warn" and stored_name != name}
    _check_aliases_free(reg, workspace, aliases, on_conflict)
    items = [{"name": stored_name, "kind": _STEP, "definition": stored} for _, stored_name, stored, _, _ in prepared]
    entries = write(reg, workspace, lambda w: reg.register_many(items, on_conflict=on_conflict, workspace=w))
    for alias, stored_name in aliases.items():
        write(reg, workspace, _alias_writer(reg, alias, stored_name))
    for name, stored_name, _, problems, fixes in prepared:
        _report(name, stored_name, problems, fixes, validation_mode, name in aliases, stacklevel)
    return entries


class StepNamesRegistry:
    """Cursus's ``StepNamesRegistry`` (seed 001): the steps seen from one workspace (default: the
    caller's at each call). It holds nothing itself."""

    def __init__(self, workspace_id: str | None = None, *, registry: Registry | None = None) -> None:
        self.workspace_id = workspace_id
        self.registry = registry_or_default(registry)

    def get_step(self, step_name: str) -> dict[str, Any] | None:
        """The step's definition (an alias answers for its step), or ``None``."""
        reg = self.registry
        entry = read(reg, self.workspace_id, lambda w: _step_entry(reg, step_name, w))
        return None if entry is None else dict(entry.definition or {})

    def has_step(self, step_name: str) -> bool:
        return self.get_step(step_name) is not None

    def list_steps(self, category: str | None = None) -> list[str]:
        """The step names, sorted; ``category`` keeps those of that ``sagemaker_step_type``."""
        steps = get_step_names(self.workspace_id, registry=self.registry)
        return sorted(n for n, d in steps.items() if category is None or d.get("sagemaker_step_type") == category)

    def add_step(self, step_name: str, definition: Mapping[str, Any], validation_mode: str = "warn") -> bool:
        """:func:`register_step` in this registry's workspace; True once it is registered."""
        register_step(step_name, definition, self.workspace_id, validation_mode=validation_mode,
                      registry=self.registry)
        return True


# -- hyperparameters ---------------------------------------------------------------------------------

def get_hyperparameter_class_by_model_type(model_type: str, workspace_id: str | None = None, *,
                                           workspace: str | None = None,
                                           registry: Registry | None = None) -> Any:
    """The hyperparameter entry whose definition has this ``model_type``: its loaded target if it has
    one, else its name; ``None`` if no entry has that model type."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)

    def find(w: str | None) -> Any:
        for entry in reg.list("hyperparameter", workspace=w):
            if entry.definition is not None and entry.definition.get("model_type") == model_type:
                return reg.load(entry.name, "hyperparameter", workspace=w) if entry.target else entry.name
        return None

    return read(reg, workspace, find)


def get_all_hyperparameter_classes(workspace_id: str | None = None, *,
                                   workspace: str | None = None, registry: Registry | None = None) -> list[str]:
    """The names of the hyperparameter entries visible in the workspace, sorted."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)
    return [e.name for e in read(reg, workspace, lambda w: reg.list("hyperparameter", workspace=w))]


def validate_hyperparameter_class(class_name: str, workspace_id: str | None = None, *, workspace: str | None = None,
                                  registry: Registry | None = None) -> bool:
    """Whether ``class_name`` is a hyperparameter entry visible in the workspace and, if it has a target,
    whether that imports and is a class (why not is logged)."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)

    def check(w: str | None) -> bool:
        entry = reg.get(class_name, "hyperparameter", workspace=w)
        if entry is None:
            return False
        if entry.target is None:
            return True
        try:
            loaded = reg.load(class_name, "hyperparameter", workspace=w)
        except TargetImportError as error:
            logger.warning("hyperparameter class %r does not import: %s", class_name, error)
            return False
        if not inspect.isclass(loaded):
            logger.warning("hyperparameter %r is %r, not a class", class_name, loaded)
            return False
        return True

    return read(reg, workspace, check)


# -- export, debugging, integrity --------------------------------------------------------------------

def export_registry_to_json(workspace_id: str | None = None, *,
                            workspace: str | None = None, registry: Registry | None = None) -> dict[str, Any]:
    """The workspace's view as a JSON-ready dict: steps (Cursus's STEP_NAMES), builders, hyperparameters
    and step aliases, stamped with the registry ``revision`` it reflects.

    Point in time: the revision is read before and after, and the reads start over if a change was
    committed in between. The nameplate export (``registry.export()``) is the one to back up and import.
    """
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)

    def snapshot(w: str | None) -> dict[str, Any]:
        for _ in range(10):
            before = reg.revision
            steps = {e.name: dict(e.definition or {}) for e in reg.list(_STEP, workspace=w)}
            builders = {e.name: {"target": e.target, **dict(e.definition or {})}
                        for e in reg.list("builder", workspace=w)}
            hyper = {e.name: {"target": e.target, **dict(e.definition or {})}
                     for e in reg.list("hyperparameter", workspace=w)}
            aliases = reg.aliases(_STEP, workspace=w)
            if reg.revision == before:
                return {"format": "nameplate.compat.cursus", "version": 1, "revision": before,
                        "workspace": w if w is not None else reg.current_workspace,
                        "exported_at": datetime.now(UTC).isoformat(), "steps": steps, "builders": builders,
                        "hyperparameters": hyper, "legacy_aliases": aliases}
        raise ConflictError("the registry kept changing during the export; retry", workspace=w)

    return read(reg, workspace, snapshot)


def debug_step_resolution(step_name: str, workspace_id: str | None = None, *, workspace: str | None = None,
                          registry: Registry | None = None) -> dict[str, Any]:
    """How ``step_name`` resolves: the layer chain, every row met, which layer answered (from
    :meth:`~nameplate.Registry.explain`), and the alias it went through, if any.

    Keys: those of ``Explanation.to_dict()`` plus ``step_name``, ``alias_of`` (the name the alias stands
    for, or ``None``), ``found``, ``fell_back_to_core`` (the workspace did not exist) and ``text``.
    """
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)
    asked = chosen_workspace(workspace) or reg.current_workspace
    explanation = read(reg, workspace, lambda w: reg.explain(step_name, _STEP, workspace=w))
    alias_of = None
    if explanation.answered_by is None and explanation.hidden_by is None:
        alias_of = reg.resolve_alias(step_name, _STEP, workspace=explanation.workspace)
        if alias_of is not None:
            explanation = reg.explain(alias_of, _STEP, workspace=explanation.workspace)
    text = str(explanation) if alias_of is None else f"{step_name!r} is an alias of {alias_of!r}\n{explanation}"
    return {**explanation.to_dict(), "step_name": step_name, "alias_of": alias_of,
            "found": explanation.answered_by is not None, "fell_back_to_core": explanation.workspace != asked,
            "text": text}


def validate_registry_integrity(workspace_id: str | None = None, *, workspace: str | None = None,
                                registry: Registry | None = None) -> tuple[bool, list[str]]:
    """``(is_valid, issues)``: the database's own check (:meth:`~nameplate.Registry.check` problems),
    then the workspace's view against Cursus's rules: step naming, a config class claimed by two
    steps, aliases whose step is missing, builders that do not import or are not classes."""
    workspace = workspace or workspace_id  # Cursus's name, or nameplate's
    reg = registry_or_default(registry)
    issues = [f"database: {finding}" for finding in reg.check().problems]

    def view(w: str | None) -> None:
        steps = {e.name: dict(e.definition or {}) for e in reg.list(_STEP, workspace=w)}
        owners: dict[str, list[str]] = {}
        for name, definition in steps.items():
            problems, _ = naming_problems(name, definition)
            issues.extend(f"step {name}: {p}" for p in problems)
            if "config_class" in definition:
                owners.setdefault(str(definition["config_class"]), []).append(name)
        issues.extend(f"config class {c} is claimed by several steps: {', '.join(n)}"
                      for c, n in sorted(owners.items()) if len(n) > 1)
        # Cursus's own legacy aliases name steps a registry may well not have; other aliases should not dangle.
        issues.extend(f"alias {a} stands for step {t}, which is not registered"
                      for a, t in sorted(reg.aliases(_STEP, workspace=w).items())
                      if t not in steps and CURSUS_LEGACY_ALIASES.get(a) != t)
        for entry in reg.list("builder", workspace=w):
            try:
                loaded = reg.load(entry.name, "builder", workspace=w)
            except TargetImportError as error:
                issues.append(f"builder {entry.name}: {error}")
                continue
            if not inspect.isclass(loaded):
                issues.append(f"builder {entry.name}: {loaded!r} is not a class")

    read(reg, workspace, view)
    return not issues, issues

