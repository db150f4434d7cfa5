"""Cursus's ``StepBuilderRegistry`` on a Registry: builders are entries of the ``builder`` kind, named by
the step type they build, with the class's import path as their target; every process sees them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import threading
import warnings
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from types import ModuleType
from typing import Any

from ..._definitions import Registration
from ...errors import EntryNotFoundError, TargetImportError
from ...registry import Registry
from ._base import (
    BuilderClassError,
    BuilderNotFoundError,
    StepDefinitionWarning,
    chosen_workspace,
    default_registry,
    install_legacy_aliases,
    logger,
    read,
    registry_or_default,
    write,
)
from ._steps import (
    PASCAL_CASE_PATTERN,
    LiveMapping,
    _check_mode,
    corrected_name,
    get_builder_step_names,
    get_config_step_registry,
    get_legacy_aliases,
    get_step_names,
    to_pascal_case,
)

_BUILDER = "builder"
#: Cursus's node-name pattern ``BaseType_jobtype`` (``CradleDataLoading_training``).
_NODE_JOB_TYPE = re.compile(r"^([A-Za-z]+[A-Za-z0-9]*)_([a-z]+)$")
#: Where installed packages announce builders: ``StepType = package.module:BuilderClass``.
ENTRY_POINT_GROUP = "cursus.step_builders"


def _import_path(cls: type) -> str | None:
    """``module:QualName`` if importing it gives back this very class, else ``None`` (a class made in
    ``__main__``, inside a function, or replaced since)."""
    module_name, qualname = cls.__module__, cls.__qualname__
    if "<" in qualname or module_name == "__main__":
        return None
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return f"{module_name}:{qualname}" if found is cls else None


def _load_target(target: str) -> type:
    module_name, sep, qualname = target.partition(":")
    if not sep or not module_name or not qualname:
        raise BuilderClassError(f"builder target {target!r} is not 'package.module:ClassName'", target=target)
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise BuilderClassError(f"builder target {target!r} does not import: {error}", target=target) from None
    if not inspect.isclass(found):
        raise BuilderClassError(f"builder target {target!r} is {found!r}, not a class", target=target)
    return found


def _find(step_type: str, builders: dict[str, type], aliases: dict[str, str]) -> type | None:
    """``step_type``'s builder among loaded ones: its own, its alias target's, or one registered under an
    alias of it."""
    if step_type in builders:
        return builders[step_type]
    if aliases.get(step_type) in builders:
        return builders[aliases[step_type]]
    for alias, name in sorted(aliases.items()):
        if name == step_type and alias in builders:
            return builders[alias]
    return None


class StepBuilderRegistry:
    """Cursus's builder registry: step type → builder class, kept in the Registry (persistent, shared
    by every process on the database, layered by workspace). It holds no builders itself.

    Args:
        registry: the Registry to use (default: this module's default registry).
        base_class: when given, builders must subclass it (Cursus's ``StepBuilderBase``).
    """

    def __init__(self, registry: Registry | None = None, *, base_class: type | None = None) -> None:
        self.registry = registry_or_default(registry)
        self.base_class = base_class
        self.logger = logger
        install_legacy_aliases(self.registry)

    @property
    def LEGACY_ALIASES(self) -> Mapping[str, str]:  # Cursus's attribute name
        """The step aliases in the current workspace (a live, read-only view)."""
        return LiveMapping("LEGACY_ALIASES", lambda: get_legacy_aliases(registry=self.registry))

    # -- registration -------------------------------------------------------------------------------

    def _checked(self, builder_class: type | str) -> tuple[type, str | None]:
        target: str | None
        if isinstance(builder_class, str):
            cls, target = _load_target(builder_class), builder_class
        elif inspect.isclass(builder_class):
            cls, target = builder_class, _import_path(builder_class)
        else:
            raise BuilderClassError(f"a builder must be a class or 'package.module:ClassName', not {builder_class!r}",
                                    builder=repr(builder_class))
        if self.base_class is not None and not issubclass(cls, self.base_class):
            raise BuilderClassError(f"builder class {cls.__name__} must extend {self.base_class.__name__}",
                                    builder=cls.__qualname__)
        return cls, target

    def register_builder(self, step_type: str, builder_class: type | str, validation_mode: str = "warn", *,
                         on_conflict: str = "error", workspace: str | None = None) -> list[str]:
        """Register the builder of ``step_type`` and return the naming warnings (Cursus's return value).

        ``builder_class`` is a class or its ``"package.module:ClassName"``; either must import and be a
        class (:class:`BuilderClassError` otherwise, nothing written). A class that imports back to
        itself is stored with that target, so every process can load it; one that does not (made in
        ``__main__`` or a function) is registered by name and loadable in this process only (logged).
        ``validation_mode`` as in :func:`register_step`: the step type must be PascalCase and the class
        name end with ``StepBuilder``.
        """
        return self._register(step_type, builder_class, validation_mode, on_conflict, workspace, stacklevel=3)

    def _register(self, step_type: str, builder_class: type | str, validation_mode: str, on_conflict: str,
                  workspace: str | None, *, stacklevel: int) -> list[str]:
        _check_mode(validation_mode)
        cls, target = self._checked(builder_class)
        problems: list[str] = []
        fixes: dict[str, str] = {}
        if not PASCAL_CASE_PATTERN.match(step_type):
            fixes["name"] = to_pascal_case(step_type)
            problems.append(f"step type {step_type!r} must be PascalCase; corrected: {fixes['name']!r}")
        if not cls.__name__.endswith("StepBuilder"):
            problems.append(f"builder class name {cls.__name__!r} should end with 'StepBuilder'")
        stored_name = corrected_name(step_type, problems, fixes, validation_mode, "step type")
        definition = {"step_name": stored_name, "builder_class": cls.__qualname__}
        reg = self.registry
        write(reg, workspace, lambda w: reg.register(stored_name, _BUILDER, definition, target=target,
                                                     on_conflict=on_conflict, workspace=w))
        write(reg, workspace, lambda w: reg.bind(stored_name, _BUILDER, cls, workspace=w))
        if validation_mode == "warn" and stored_name != step_type:
            write(reg, workspace, lambda w: reg.add_alias(step_type, stored_name, _BUILDER, replace=True,
                                                          workspace=w))
        if target is None:
            logger.info("builder %s of %r cannot be imported by path; other processes see it but cannot load it",
                        cls.__qualname__, stored_name)
        if validation_mode == "warn" and problems:
            warnings.warn(StepDefinitionWarning(f"builder registered for {stored_name!r}: " + "; ".join(problems)),
                          stacklevel=stacklevel)
        logger.info("registered builder: %s -> %s", stored_name, cls.__name__)
        return problems

    def unregister_builder(self, step_type: str, *, workspace: str | None = None) -> None:
        """Remove the builder of ``step_type``: this workspace's is deleted, an inherited one is hidden
        here only (its own layer keeps it); a missing one is logged, as in Cursus."""
        reg = self.registry
        name = self._canonical(step_type, workspace)
        ws = chosen_workspace(workspace) or reg.current_workspace
        entry = read(reg, ws, lambda w: reg.get(name, _BUILDER, workspace=w))
        if entry is None:
            logger.warning("attempted to unregister non-existent builder: %s", step_type)
        elif entry.workspace == ws:
            reg.delete(name, _BUILDER, workspace=ws)
        else:
            write(reg, ws, lambda w: reg.hide(name, _BUILDER, workspace=w))
        if entry is not None:
            reg.unbind(name, _BUILDER, workspace=entry.workspace)

    # -- lookups ------------------------------------------------------------------------------------

    def _aliases(self, workspace: str | None) -> dict[str, str]:
        reg = self.registry
        return read(reg, workspace,
                    lambda w: {**reg.aliases("step", workspace=w), **reg.aliases(_BUILDER, workspace=w)})

    def _canonical(self, step_type: str, workspace: str | None) -> str:
        return self._aliases(workspace).get(step_type, step_type)

    def get_builder_map(self, workspace: str | None = None) -> dict[str, type]:
        """Step type → builder class, for every builder this process can load (see :meth:`validate_registry`
        for the ones it cannot)."""
        reg = self.registry

        def load_all(w: str | None) -> dict[str, type]:
            found: dict[str, type] = {}
            for entry in reg.list(_BUILDER, workspace=w):
                try:
                    loaded = reg.load(entry.name, _BUILDER, workspace=w)
                except TargetImportError as error:
                    logger.debug("builder %r not loadable here: %s", entry.name, error)
                    continue
                if inspect.isclass(loaded):
                    found[entry.name] = loaded
            return found

        return read(reg, workspace, load_all)

    def _load(self, name: str, workspace: str | None) -> type | None:
        reg = self.registry
        try:
            loaded = read(reg, workspace, lambda w: reg.load(name, _BUILDER, workspace=w))
        except (EntryNotFoundError, TargetImportError):
            return None
        return loaded if inspect.isclass(loaded) else None

    def _builder_of(self, step_type: str, workspace: str | None) -> type | None:
        """Point reads first (the name, then what it is an alias of); the alias table only on a miss, for a
        builder registered under a step's old spelling. Never imports the other builders' modules."""
        found = self._load(step_type, workspace)
        if found is not None:
            return found
        aliases = self._aliases(workspace)
        if step_type in aliases:
            found = self._load(aliases[step_type], workspace)
            if found is not None:
                return found
        for alias, name in sorted(aliases.items()):
            if name == step_type:
                found = self._load(alias, workspace)
                if found is not None:
                    return found
        return None

    def _builder_names(self, workspace: str | None) -> list[str]:
        reg = self.registry
        return [e.name for e in read(reg, workspace, lambda w: reg.list(_BUILDER, workspace=w))]

    def get_builder_for_step_type(self, step_type: str, workspace: str | None = None) -> type:
        """The builder class of ``step_type`` (aliases resolved), else :class:`BuilderNotFoundError`."""
        found = self._builder_of(step_type, workspace)
        if found is None:
            raise BuilderNotFoundError(f"No step builder found for step type {step_type!r}; register one with "
                                       "register_builder()", unresolvable_types=[step_type],
                                       available_builders=self._builder_names(workspace))
        return found

    def _config_class_to_step_type(self, config_class_name: str, node_name: str | None, job_type: str | None,
                                   workspace: str | None) -> str:
        if node_name and not job_type:
            match = _NODE_JOB_TYPE.match(node_name)
            job_type = match.group(2) if match else None
        guess = config_class_name.removesuffix("Config")
        reg = self.registry
        entry = read(reg, workspace, lambda w: reg.get(guess, "step", workspace=w)) if guess else None
        if entry is not None and (entry.definition or {}).get("config_class") == config_class_name:
            base = guess  # the usual <Step>Config: one point read instead of the whole CONFIG_STEP_REGISTRY
        else:
            steps = get_config_step_registry(workspace, registry=reg)
            if config_class_name in steps:
                base = steps[config_class_name]
            else:
                logger.warning("config class %r not found in CONFIG_STEP_REGISTRY, using fallback logic",
                               config_class_name)
                base = guess.removesuffix("Step")
                base = "CradleDataLoading" if base == "CradleDataLoad" else base
        return f"{base}_{job_type}" if job_type else base

    def get_builder_for_config(self, config: Any, node_name: str | None = None, workspace: str | None = None) -> type:
        """Cursus's rule: the node name if it names a supported step type; else the config's class name
        → step (``CONFIG_STEP_REGISTRY``, else the name without ``Config``/``Step``), suffixed with
        ``_<job_type>`` (the config's ``job_type``, else the node name's ``Base_jobtype``); that step
        type's builder, else the builder of the type without the suffix."""
        if node_name:
            found = self._builder_of(node_name, workspace)
            if found is not None:
                return found
        config_class_name = type(config).__name__
        job_type = getattr(config, "job_type", None)
        step_type = self._config_class_to_step_type(config_class_name, node_name,
                                                    job_type if isinstance(job_type, str) else None, workspace)
        candidates = [step_type] + ([step_type.rsplit("_", 1)[0]] if "_" in step_type else [])
        for candidate in candidates:
            found = self._builder_of(candidate, workspace)
            if found is not None:
                return found
        raise BuilderNotFoundError(f"No step builder found for config type {config_class_name!r} (step type: "
                                   f"{step_type!r})", unresolvable_types=[step_type],
                                   available_builders=self._builder_names(workspace))

    def list_supported_step_types(self, workspace: str | None = None) -> list[str]:
        """Every step type with a loadable builder, and every alias of one, sorted."""
        builders = self.get_builder_map(workspace)
        aliases = self._aliases(workspace)
        return sorted(set(builders) | {a for a in aliases if _find(a, builders, aliases) is not None})

    def is_step_type_supported(self, step_type: str, workspace: str | None = None) -> bool:
        """Whether :meth:`get_builder_for_step_type` would find a builder."""
        return self._builder_of(step_type, workspace) is not None

    def get_config_types_for_step_type(self, step_type: str, workspace: str | None = None) -> list[str]:
        """The config class names of ``step_type`` (its registered one, else Cursus's two guesses)."""
        steps = get_step_names(workspace, registry=self.registry)
        name = self._canonical(step_type, workspace)
        if name in steps and "config_class" in steps[name]:
            return [str(steps[name]["config_class"])]
        logger.warning("step type %r not found in STEP_NAMES, using fallback patterns", step_type)
        return [f"{step_type}Config", f"{step_type}StepConfig"]

    def validate_registry(self, workspace: str | None = None) -> dict[str, list[str]]:
        """``{"valid": ["Step -> Builder"], "invalid": ["Step: why"], "missing": ["Step: No builder
        registered"]}``: every builder checked to load and be a class (and subclass ``base_class``), and
        every registered step without a builder."""
        reg = self.registry
        results: dict[str, list[str]] = {"valid": [], "invalid": [], "missing": []}

        def check(w: str | None) -> None:
            builders: dict[str, type] = {}
            for entry in reg.list(_BUILDER, workspace=w):
                try:
                    loaded = reg.load(entry.name, _BUILDER, workspace=w)
                except TargetImportError as error:
                    results["invalid"].append(f"{entry.name}: {error}")
                    continue
                if not inspect.isclass(loaded):
                    results["invalid"].append(f"{entry.name}: {loaded!r} is not a class")
                elif self.base_class is not None and not issubclass(loaded, self.base_class):
                    results["invalid"].append(f"{entry.name}: Not a {self.base_class.__name__} subclass")
                else:
                    builders[entry.name] = loaded
                    results["valid"].append(f"{entry.name} -> {loaded.__name__}")
            aliases = {**reg.aliases("step", workspace=w), **reg.aliases(_BUILDER, workspace=w)}
            for step in get_step_names(w, registry=reg):
                if _find(step, builders, aliases) is None and not any(
                        e.startswith(f"{step}:") for e in results["invalid"]):
                    results["missing"].append(f"{step}: No builder registered")

        read(reg, workspace, check)
        return results

    def get_registry_stats(self, workspace: str | None = None) -> dict[str, int]:
        """Counts: builders, loadable builders, aliases, steps."""
        reg = self.registry
        return {"total_builders": len(read(reg, workspace, lambda w: reg.list(_BUILDER, workspace=w))),
                "loadable_builders": len(self.get_builder_map(workspace)),
                "legacy_aliases": len(self._aliases(workspace)),
                "step_registry_names": len(get_step_names(workspace, registry=reg))}

    # -- discovery ----------------------------------------------------------------------------------

    def _step_type_of(self, cls: type, reverse: dict[str, str]) -> str:
        if cls.__name__ in reverse:  # BUILDER_STEP_NAMES, Cursus's single source of truth
            return reverse[cls.__name__]
        return cls.__name__.removesuffix("StepBuilder") or cls.__name__

    def _bind(self, step: str, cls: type, workspace: str | None) -> None:
        reg = self.registry
        write(reg, workspace, lambda w: reg.bind(step, _BUILDER, cls, workspace=w))

    def _register_found(self, found: dict[str, tuple[type, str]], workspace: str | None) -> dict[str, type]:
        """Register discovered builders in one transaction (all or none)."""
        reg = self.registry
        items = [Registration(step, _BUILDER, {"step_name": step, "builder_class": cls.__qualname__}, target)
                 for step, (cls, target) in sorted(found.items())]
        if items:
            write(reg, workspace, lambda w: reg.register_many(items, on_conflict="replace", workspace=w))
        for step, (cls, _) in found.items():
            self._bind(step, cls, workspace)
        return {step: cls for step, (cls, _) in found.items()}

    def discover_builders(self, package: str | ModuleType, *, workspace: str | None = None) -> dict[str, type]:
        """Import ``package`` and its submodules and register every builder class defined there: a
        subclass of ``base_class`` (without one: a class whose name ends with ``StepBuilder``). Its step
        type is the step whose ``builder_step_name`` is the class name, else the name without
        ``StepBuilder``. Returns step type → class; modules that fail to import are logged and skipped."""
        try:
            module = importlib.import_module(package) if isinstance(package, str) else package
        except ImportError as error:
            raise BuilderClassError(f"package {package!r} to scan for builders does not import: {error}",
                                    package=str(package)) from None
        modules = [module]
        for info in pkgutil.walk_packages(getattr(module, "__path__", []), prefix=module.__name__ + ".",
                                          onerror=lambda name: logger.warning("builder discovery skipped %s", name)):
            try:
                modules.append(importlib.import_module(info.name))
            except Exception as error:  # a broken module of the package: Cursus skips it too, we log it
                logger.warning("builder discovery skipped module %s: %s: %s", info.name, type(error).__name__, error)
        reverse = {builder: step for step, builder in get_builder_step_names(workspace, registry=self.registry).items()}
        found: dict[str, tuple[type, str]] = {}
        for mod in modules:
            for _, cls in inspect.getmembers(mod, inspect.isclass):
                if cls.__module__ != mod.__name__ or cls is self.base_class:
                    continue
                wanted = (issubclass(cls, self.base_class) if self.base_class is not None
                          else cls.__name__.endswith("StepBuilder"))
                target = _import_path(cls)
                if wanted and target is not None:
                    found[self._step_type_of(cls, reverse)] = (cls, target)
        return self._register_found(found, workspace)

    def discover_entry_points(self, group: str = ENTRY_POINT_GROUP, *, workspace: str | None = None) -> dict[str, type]:
        """Register the builders installed packages announce as entry points of ``group``
        (``StepType = package.module:BuilderClass``). Each is imported and must be a class (subclass of
        ``base_class``): one that is not is logged and skipped. Returns step type → class."""
        found: dict[str, tuple[type, str]] = {}
        for point in sorted(importlib_metadata.entry_points(group=group), key=lambda p: p.name):
            try:
                cls, target = self._checked(point.value)
            except BuilderClassError as error:
                logger.warning("entry point %s = %s skipped: %s", point.name, point.value, error)
                continue
            found[point.name] = (cls, target or point.value)
        return self._register_found(found, workspace)


_global: tuple[Registry, StepBuilderRegistry] | None = None
_global_lock = threading.Lock()


def get_global_registry() -> StepBuilderRegistry:
    """The :class:`StepBuilderRegistry` on this module's default registry (one per process, holding no
    builders of its own: they are all in the database)."""
    global _global
    reg = default_registry()
    with _global_lock:
        if _global is None or _global[0] is not reg:
            _global = (reg, StepBuilderRegistry(reg))
        return _global[1]


def register_global_builder(step_type: str, builder_class: type | str) -> list[str]:
    """Register a builder through :func:`get_global_registry` (every process sees it)."""
    return get_global_registry()._register(step_type, builder_class, "warn", "error", None, stacklevel=3)


def list_global_step_types() -> list[str]:
    """The step types :func:`get_global_registry` supports."""
    return get_global_registry().list_supported_step_types()
