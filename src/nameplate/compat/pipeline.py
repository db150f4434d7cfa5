"""pipeline_ex's dynamic step and provider registries (seed 003) on a Registry.

    # Pipeline.Enhanced.StepRegistry.register_step("dspy_claude", OptimizedClaudeStep, validator: ...)
    from nameplate.compat.pipeline import register_step, get_step_module, select_provider

The seed's three GenServers are three small classes over one :class:`~nameplate.Registry`:
:class:`StepRegistry` (``register_step``, ``get_step_module``, ``validate_step_config``, ``list_steps``),
:class:`ProviderRegistry` (``register_provider``, ``get_provider``, ``select_provider``,
``register_selection_strategy``, provider health) and :class:`CompatibilityManager` (the ten legacy
step types and the legacy providers, registered at start). :class:`Pipeline` holds one of each; the
module-level functions act on :func:`default_pipeline`, opened on first use (database by discovery:
``NAMEPLATE_DB``, the nearest ``.nameplate/``, the user data directory) and started, as the seed's
supervision tree starts its registries.

What is shared and what stays in this process:

- Shared through the database (every process sees it): step types and providers with their
  metadata, capabilities and targets, validators given as dotted paths, health reports.
- In this process only: module objects that cannot be imported by name (a local class, an
  instance), callable validators, health-check callables and custom selection strategies. A module
  given as an object that *can* be imported by its name (a module, a top-level class or function) is
  registered with that dotted path as its target, so other processes load it too.

Steps are entries of the kind ``pipeline_step`` (lower-snake names such as ``dspy_claude``, defined on
first use), providers entries of the built-in kind ``provider``. Lookups answer ``("ok", value)`` or
``("error", reason)`` as the seed's ``{:ok, _}``/``{:error, _}``; registrations return ``"ok"`` and raise
a :class:`~nameplate.NameplateError` subclass on bad input, having written nothing.
"""

from __future__ import annotations

import logging
import random
import threading
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .._dotted import AttributeMissing, ImportFailed, load_dotted
from .._entry_health import EntryHealth
from .._records import Entry
from .._strategies import STRATEGIES
from ..errors import (
    EntryNotFoundError,
    InvalidInputError,
    NoMatchError,
    TargetImportError,
    UnknownKindError,
)
from ..registry import Registry

__all__ = [
    "LEGACY_PROVIDERS",
    "LEGACY_STEPS",
    "STEP_KIND",
    "CompatibilityManager",
    "Pipeline",
    "Provider",
    "ProviderRegistry",
    "SelectionStrategyError",
    "StepInfo",
    "StepNotFoundError",
    "StepBehaviour",
    "StepRegistry",
    "default_pipeline",
    "get_provider",
    "get_step_module",
    "list_providers",
    "list_steps",
    "register_provider",
    "register_selection_strategy",
    "register_step",
    "report_provider_health",
    "require_step_module",
    "select_provider",
    "validate_step_config",
]

log = logging.getLogger("nameplate.compat.pipeline")

#: The kind step types are registered under (defined on first use).
STEP_KIND = "pipeline_step"
_STEP_FIELDS = ("description", "required_fields", "optional_fields", "validator", "validator_in_process",
                "legacy_module")

#: The seed's hard-coded step types and the Elixir modules that ran them.
LEGACY_STEPS: dict[str, str] = {
    "claude": "Pipeline.Step.Claude",
    "gemini": "Pipeline.Step.Gemini",
    "claude_smart": "Pipeline.Step.ClaudeSmart",
    "claude_session": "Pipeline.Step.ClaudeSession",
    "claude_extract": "Pipeline.Step.ClaudeExtract",
    "claude_batch": "Pipeline.Step.ClaudeBatch",
    "claude_robust": "Pipeline.Step.ClaudeRobust",
    "parallel_claude": "Pipeline.Step.ParallelClaude",
    "gemini_instructor": "Pipeline.Step.GeminiInstructor",
    "set_variable": "Pipeline.Step.SetVariable",
}

#: The providers behind the legacy steps (``lib/pipeline/providers/``): Elixir module and capabilities.
LEGACY_PROVIDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "claude": ("Pipeline.Providers.ClaudeProvider", ("claude_compatible", "text_generation", "tool_use")),
    "gemini": ("Pipeline.Providers.GeminiProvider", ("gemini_compatible", "structured_output", "text_generation")),
}


class StepNotFoundError(EntryNotFoundError):
    """No step type of that name, or one registered without a module this process can use."""


class SelectionStrategyError(InvalidInputError):
    """A custom selection strategy is not acceptable (a built-in name, not callable, a bad answer)."""


def dotted_path_of(obj: Any) -> str | None:
    """``"pkg.module:Name"`` when importing that path gives back ``obj`` itself (a module, a top-level
    class or function of an importable module); ``None`` when it cannot be found by name."""
    if isinstance(obj, types.ModuleType):
        path = obj.__name__
    else:
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
            return None
        path = f"{module}:{qualname}"
    if path.startswith("__main__"):
        return None  # another process's __main__ is another program
    try:
        return path if load_dotted(path) is obj else None
    except (ImportFailed, AttributeMissing):
        return None


def _module_target(module: Any) -> tuple[str | None, Any]:
    """The target to store and the object to bind in this process for a ``module`` argument."""
    if module is None:
        return None, None
    if isinstance(module, str):
        return module, None
    return dotted_path_of(module), module


def _load_or_none(registry: Registry, name: str, kind: str) -> Any:
    """What ``registry.load`` gives; ``None`` when the entry has neither a binding here nor a target
    (import failures of a target still raise: a module that cannot load is a bug, not an absence)."""
    try:
        return registry.load(name, kind)
    except TargetImportError as error:
        if error.facts.get("target") is None:
            return None
        raise


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One step type as :meth:`StepRegistry.list_steps` shows it."""

    step_type: str
    entry_id: str
    target: str | None
    description: str
    required_fields: tuple[str, ...]
    optional_fields: tuple[str, ...]
    capabilities: frozenset[str]
    validator: str | None
    validator_in_process: bool
    legacy: bool
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _step_info(entry: Entry) -> StepInfo:
    definition = entry.definition or {}
    return StepInfo(step_type=entry.name, entry_id=entry.id, target=entry.target,
                    description=str(definition.get("description", "")),
                    required_fields=tuple(definition.get("required_fields", ())),
                    optional_fields=tuple(definition.get("optional_fields", ())),
                    capabilities=entry.capabilities, validator=definition.get("validator"),
                    validator_in_process=bool(definition.get("validator_in_process", False)),
                    legacy="legacy_module" in definition, metadata=dict(entry.metadata))


class StepBehaviour(Protocol):
    """pipeline_ex's ``Pipeline.Enhanced.StepBehaviour``: what the executor calls on a step module.

    ``execute(step, context)`` is the interface. A module may also offer ``validate_config(config)``
    and ``metadata()`` (static, as Elixir's functions are): :meth:`StepRegistry.register_step` uses them
    when it is given no validator and no metadata (``validate_config`` by its dotted path when the
    module can be imported by name, so every process runs it).
    """

    def execute(self, step: dict[str, Any], context: dict[str, Any]) -> Any: ...


def _behaviour(step_type: str, module: Any, metadata: Mapping[str, Any] | None,
               validator: Callable[[dict[str, Any]], Any] | str | None,
               ) -> tuple[Mapping[str, Any] | None, Callable[[dict[str, Any]], Any] | str | None]:
    """The metadata and validator a step module declares itself, where the caller gave none."""
    if module is None or isinstance(module, str):
        return metadata, validator
    declared = getattr(module, "metadata", None)
    if metadata is None and callable(declared):
        metadata = declared()
        if not isinstance(metadata, Mapping):
            raise InvalidInputError(f"{step_type}: the module's metadata() returned {type(metadata).__name__}, "
                                    "not a mapping", step_type=step_type)
    own = getattr(module, "validate_config", None)
    if validator is None and callable(own):
        path = dotted_path_of(module)
        by_name = None if path is None else path + (".validate_config" if ":" in path else ":validate_config")
        validator = by_name if by_name is not None and load_dotted(by_name) == own else own
    return metadata, validator


def _field_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable) or isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be a list of field names, not {value!r}", field=what)
    return [str(v) for v in value]


class StepRegistry:
    """pipeline_ex's ``Pipeline.Enhanced.StepRegistry`` on ``registry``.

    Callable validators are kept by this object, in this process; module objects are bound in this
    process (every Registry on the same file here sees them).
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._validators: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self._lock = threading.Lock()
        try:
            registry.kind(STEP_KIND)
        except UnknownKindError:
            registry.define_kind(STEP_KIND, optional=_STEP_FIELDS, name_pattern=r"^[a-z][a-z0-9_]*$",
                                 description="a pipeline_ex step type (lower_snake), its module and validation")

    def register_step(self, step_type: str, module: Any = None, *,
                      validator: Callable[[dict[str, Any]], Any] | str | None = None,
                      metadata: Mapping[str, Any] | None = None, on_conflict: str = "error") -> str:
        """Register ``step_type`` (lower_snake) run by ``module`` and return ``"ok"``.

        ``module``: a dotted path ``"pkg.module:Class"``, or an object (bound in this process, and
        stored as its dotted path when it can be imported by name). ``validator``: a callable (kept in
        this process) or a dotted path (run by any process), called by :meth:`validate_step_config`.
        ``metadata``: ``description``, ``required_fields``, ``optional_fields``, ``capabilities``; other
        keys are kept as the entry's metadata. The same registration again changes nothing; a different
        one raises :class:`~nameplate.NameTakenError` unless ``on_conflict="replace"`` (or ``"keep"``).
        """
        metadata, validator = _behaviour(step_type, module, metadata, validator)
        meta = dict(metadata or {})
        if validator is not None and not isinstance(validator, str) and not callable(validator):
            raise InvalidInputError(f"validator must be a callable or a 'pkg.module:function' path, not "
                                    f"{validator!r}", step_type=step_type)
        definition: dict[str, Any] = {
            "description": str(meta.pop("description", "")),
            "required_fields": _field_list(meta.pop("required_fields", ()), "required_fields"),
            "optional_fields": _field_list(meta.pop("optional_fields", ()), "optional_fields"),
            "validator": validator if isinstance(validator, str) else None,
            "validator_in_process": validator is not None and not isinstance(validator, str),
        }
        if "legacy_module" in meta:
            definition["legacy_module"] = str(meta.pop("legacy_module"))
        capabilities = meta.pop("capabilities", ())
        if isinstance(capabilities, str):
            capabilities = [capabilities]
        target, obj = _module_target(module)
        self.registry.register(step_type, STEP_KIND, definition, target=target,
                               capabilities=[str(c) for c in capabilities], metadata=meta or None,
                               on_conflict=on_conflict)
        if obj is not None:
            self.registry.bind(step_type, STEP_KIND, obj)
        with self._lock:
            if callable(validator):
                self._validators[step_type] = validator
            else:
                self._validators.pop(step_type, None)
        log.debug("step type %r registered (target %s)", step_type, target)
        return "ok"

    def get_step_module(self, step_type: str) -> tuple[str, Any]:
        """``("ok", module)``, or ``("error", "not_found")`` when no such step type is registered or it
        has no module here (a legacy type registered without one): the executor's legacy dispatch runs
        it then. A target that cannot be imported raises :class:`~nameplate.TargetImportError`."""
        if self.registry.lookup(step_type, STEP_KIND) is None:
            log.debug("step type %r is not registered: not_found", step_type)
            return "error", "not_found"
        module = _load_or_none(self.registry, step_type, STEP_KIND)
        if module is None:
            log.debug("step type %r has no module in this process: not_found (legacy dispatch)", step_type)
            return "error", "not_found"
        return "ok", module

    def require_step_module(self, step_type: str) -> Any:
        """The module of ``step_type``, or :class:`StepNotFoundError` saying why there is none."""
        status, module = self.get_step_module(step_type)
        if status == "ok":
            return module
        known = "registered without a module in this process" if self.registry.lookup(step_type, STEP_KIND) \
            else "not registered"
        raise StepNotFoundError(f"step type {step_type!r} is {known}; register it with register_step(step_type, "
                                "module)", name=step_type, kind=STEP_KIND)

    def validate_step_config(self, step_type: str, config: Mapping[str, Any]) -> tuple[str, Any]:
        """``("ok", config)`` (as the validator returned it) or ``("error", reason)``: the required
        fields first, then the step's validator, run now in this process."""
        entry = self.registry.get(step_type, STEP_KIND)
        if entry is None:
            return "error", f"unknown step type {step_type!r}"
        if not isinstance(config, Mapping):
            return "error", f"a step config must be a mapping, not {type(config).__name__}"
        info = _step_info(entry)
        missing = [f for f in info.required_fields if f not in config]
        if missing:
            return "error", f"step {step_type!r} is missing required fields: {', '.join(missing)}"
        with self._lock:
            function = self._validators.get(step_type)
        if function is None and info.validator is not None:
            try:
                function = load_dotted(info.validator)
            except (ImportFailed, AttributeMissing) as error:
                return "error", f"the validator {info.validator!r} of step {step_type!r} cannot be imported: {error}"
        if function is None:
            if info.validator_in_process:
                return "error", (f"step {step_type!r} has a callable validator that lives only in the process that "
                                 "registered it; register it with validator='pkg.module:function' to validate here")
            return "ok", dict(config)
        return _validator_outcome(step_type, function, dict(config))

    def list_steps(self) -> list[StepInfo]:
        """Every step type visible in the current workspace, by name."""
        return [_step_info(e) for e in self.registry.list(STEP_KIND)]

    def unregister_step(self, step_type: str) -> bool:
        """Remove ``step_type``; return whether it was registered."""
        if self.registry.lookup(step_type, STEP_KIND) is None:
            return False
        self.registry.delete(step_type, STEP_KIND)
        self.registry.unbind(step_type, STEP_KIND)
        with self._lock:
            self._validators.pop(step_type, None)
        return True


def _validator_outcome(step_type: str, function: Callable[[dict[str, Any]], Any],
                       config: dict[str, Any]) -> tuple[str, Any]:
    """Read a validator's answer: ``("ok", cfg)``/``("error", reason)`` as the seed's, or ``True``/``None``
    (fine), ``False``/a string/a list of problems (not fine); an exception it raises is its reason."""
    try:
        outcome = function(config)
    except Exception as error:  # user code: its failure is the reason the config is refused
        return "error", f"validator of step {step_type!r} raised {type(error).__name__}: {error}"
    if isinstance(outcome, tuple) and len(outcome) == 2 and outcome[0] in ("ok", "error"):
        return str(outcome[0]), outcome[1]
    if outcome is None or outcome is True:
        return "ok", config
    if outcome is False:
        return "error", f"the validator of step {step_type!r} rejected the config"
    if isinstance(outcome, str):
        return "error", outcome
    if isinstance(outcome, Iterable):
        return "error", "; ".join(str(p) for p in outcome)
    return "error", f"the validator of step {step_type!r} returned {outcome!r}, not ('ok', config) or ('error', reason)"


@dataclass(frozen=True, slots=True)
class Provider:
    """A selected or listed provider: ``module`` is ``None`` when this process cannot load it (an
    object bound in another process); ``health`` is judged now."""

    name: str
    module: Any
    capabilities: frozenset[str]
    health: EntryHealth


#: A custom strategy: the eligible providers (never critical, never dead), by name → one of them or None.
Strategy = Callable[[Sequence[Provider]], Provider | None]


class ProviderRegistry:
    """pipeline_ex's ``Pipeline.Enhanced.ProviderRegistry`` on ``registry``.

    The built-in strategies are the Registry's (``first``, ``random``, ``round_robin``,
    ``least_recently_selected``, ``healthiest``); custom ones are kept by this object, in this process.
    No strategy ever selects a provider reporting ``critical``, or one whose owning process died.
    """

    kind = "provider"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._strategies: dict[str, Strategy] = {}
        self._lock = threading.Lock()

    def register_provider(self, name: str, module: Any = None, capabilities: Iterable[str] = (), *,
                          description: str = "", health_check: Callable[[], Any] | None = None,
                          owned: bool = False, on_conflict: str = "error") -> str:
        """Register provider ``name`` run by ``module`` offering ``capabilities``; return ``"ok"``.

        ``owned=True`` ties it to this process (a provider this process serves): it is dead when the
        process is. ``health_check`` (a callable of this process) runs now and on every heartbeat; its
        answer is this process's health report (see :meth:`report_health`).
        """
        if isinstance(capabilities, str):
            capabilities = [capabilities]
        target, obj = _module_target(module)
        definition = {"description": description} if description else None
        self.registry.register(name, self.kind, definition, target=target, capabilities=[str(c) for c in capabilities],
                               owned=owned, on_conflict=on_conflict)
        if obj is not None:
            self.registry.bind(name, self.kind, obj)
        if health_check is not None:
            self.registry.watch_health(name, self.kind, health_check)
        return "ok"

    def get_provider(self, name: str) -> tuple[str, Any]:
        """``("ok", module)`` or ``("error", "not_found")`` (also for a provider whose module lives only
        in another process)."""
        if self.registry.lookup(name, self.kind) is None:
            return "error", "not_found"
        module = _load_or_none(self.registry, name, self.kind)
        return ("error", "not_found") if module is None else ("ok", module)

    def report_health(self, name: str, health: str | None, *, load: float | None = None,
                      info: Mapping[str, Any] | None = None) -> None:
        """This process's report on provider ``name``: ``healthy``, ``degraded`` or ``critical``, a load
        (lower is better) and details; void the moment this process dies."""
        self.registry.report_health(name, self.kind, health, load=load, info=info)

    def list_providers(self, required_capabilities: Iterable[str] = ()) -> list[Provider]:
        """Every provider offering all of ``required_capabilities``, by name, with its health."""
        healths = self.registry.list_health(self.kind, [str(c) for c in required_capabilities])
        return [self._provider(h) for h in healths]

    def _provider(self, health: EntryHealth) -> Provider:
        entry = self.registry.require(health.name, self.kind)
        return Provider(health.name, _load_or_none(self.registry, health.name, self.kind), entry.capabilities, health)

    def register_selection_strategy(self, name: str, function: Strategy) -> str:
        """Add strategy ``name``: ``function(providers)`` gets the eligible providers (by name) and returns
        one of them or ``None``. Kept in this process. A built-in name is refused."""
        if not isinstance(name, str) or not name or name in STRATEGIES:
            raise SelectionStrategyError(f"strategy name {name!r} is taken by a built-in strategy or empty; built in: "
                                         f"{', '.join(STRATEGIES)}", strategy=repr(name))
        if not callable(function):
            raise SelectionStrategyError(f"strategy {name!r} must be a callable, not {function!r}", strategy=name)
        with self._lock:
            self._strategies[name] = function
        return "ok"

    def select_provider(self, required_capabilities: Iterable[str] = (), strategy: str = "first") -> tuple[str, Any]:
        """``("ok", Provider)`` offering every required capability, chosen by ``strategy``, or
        ``("error", reason)`` when none is eligible. Never a provider reporting ``critical`` or one
        whose owning process died; ``healthiest`` also orders by health then load."""
        requires = [str(c) for c in required_capabilities]
        with self._lock:
            custom = self._strategies.get(strategy)
        if custom is None and strategy not in STRATEGIES:
            known = [*STRATEGIES, *sorted(self._strategies)]
            raise SelectionStrategyError(f"unknown selection strategy {strategy!r}; choose one of {', '.join(known)}",
                                         strategy=strategy)
        try:
            if strategy == "healthiest":
                return "ok", self._provider(self.registry.health(
                    self.registry.select(self.kind, requires, "healthiest").name, self.kind))
            eligible = [h for h in self.registry.list_health(self.kind, requires) if _eligible(h)]
            if not eligible:
                return "error", _no_provider(requires)
            if custom is not None:
                return self._custom(strategy, custom, [self._provider(h) for h in eligible])
            if strategy == "first":
                return "ok", self._provider(eligible[0])
            if strategy == "random":
                return "ok", self._provider(random.choice(eligible))
            # Shared rotations: ask the Registry until it names an eligible one (each ask advances the
            # rotation, so an ineligible provider is stepped over, not retried forever).
            names = {h.name for h in eligible}
            for _ in range(len(self.registry.find(self.kind, requires))):
                chosen = self.registry.select(self.kind, requires, strategy)
                if chosen.name in names:
                    return "ok", self._provider(self.registry.health(chosen.name, self.kind))
            return "error", _no_provider(requires)
        except NoMatchError as error:
            return "error", str(error)

    @staticmethod
    def _custom(name: str, function: Strategy, providers: list[Provider]) -> tuple[str, Any]:
        chosen = function(providers)
        if chosen is None:
            return "error", f"strategy {name!r} chose none of {', '.join(p.name for p in providers)}"
        if not isinstance(chosen, Provider) or chosen.name not in {p.name for p in providers}:
            raise SelectionStrategyError(f"strategy {name!r} returned {chosen!r}, not one of the providers it was "
                                         "given (or None)", strategy=name)
        return "ok", chosen


def _eligible(health: EntryHealth) -> bool:
    """Not critical, and not owned by a process that died (unowned, unreported ones are eligible:
    code that every process can load has no process to die)."""
    return health.health != "critical" and (health.owner is None or health.alive)


def _no_provider(requires: list[str]) -> str:
    wanted = f" offering {', '.join(requires)}" if requires else ""
    return f"no eligible provider{wanted}: none is registered, or every one is critical or owned by a dead process"


class CompatibilityManager:
    """pipeline_ex's ``Pipeline.Enhanced.CompatibilityManager``: the legacy step types and providers.

    :meth:`start` registers them all in one transaction, and registering the same again writes nothing,
    so any number of processes may start at once. A registration someone changed since (another module,
    ``on_conflict="replace"``) is kept as it is.
    """

    def __init__(self, steps: StepRegistry, providers: ProviderRegistry) -> None:
        self.steps = steps
        self.providers = providers

    def start(self, step_modules: Mapping[str, Any] | None = None,
              provider_modules: Mapping[str, Any] | None = None) -> list[str]:
        """Register :data:`LEGACY_STEPS` and :data:`LEGACY_PROVIDERS`; return the legacy step types.

        ``step_modules``/``provider_modules`` map a legacy name to your implementation (a dotted path, or
        an object: bound in this process). A legacy type without one is registered without a module, so
        ``get_step_module`` answers ``("error", "not_found")`` and the executor's legacy dispatch runs it.
        """
        step_modules = dict(step_modules or {})
        provider_modules = dict(provider_modules or {})
        unknown = sorted(set(step_modules) - set(LEGACY_STEPS)) + sorted(set(provider_modules) - set(LEGACY_PROVIDERS))
        if unknown:
            raise InvalidInputError(f"not legacy step types or providers: {', '.join(unknown)}; register them with "
                                    "register_step/register_provider", names=unknown)
        items: list[dict[str, Any]] = []
        bindings: list[tuple[str, str, Any]] = []
        for step_type, elixir in LEGACY_STEPS.items():
            target, obj = _module_target(step_modules.get(step_type))
            items.append({"name": step_type, "kind": STEP_KIND, "target": target,
                          "definition": {"description": f"legacy step ({elixir})", "required_fields": [],
                                         "optional_fields": [], "validator": None, "validator_in_process": False,
                                         "legacy_module": elixir}})
            if obj is not None:
                bindings.append((step_type, STEP_KIND, obj))
        for name, (elixir, capabilities) in LEGACY_PROVIDERS.items():
            target, obj = _module_target(provider_modules.get(name))
            items.append({"name": name, "kind": self.providers.kind, "target": target,
                          "capabilities": list(capabilities),
                          "definition": {"description": f"legacy provider ({elixir})"}})
            if obj is not None:
                bindings.append((name, self.providers.kind, obj))
        registry = self.steps.registry
        registry.register_many(items, on_conflict="keep")
        for name, kind, obj in bindings:
            registry.bind(name, kind, obj)
        return list(LEGACY_STEPS)

    @staticmethod
    def legacy_step_types() -> list[str]:
        """The ten step types the seed's executor dispatched by hand."""
        return list(LEGACY_STEPS)

    def is_legacy(self, step_type: str) -> bool:
        """Whether ``step_type`` is registered as a legacy type (and nobody replaced it since)."""
        entry = self.steps.registry.get(step_type, STEP_KIND)
        return entry is not None and "legacy_module" in (entry.definition or {})


class Pipeline:
    """One StepRegistry, ProviderRegistry and CompatibilityManager over one Registry (``Registry()`` by
    discovery when none is given); ``start=True`` registers the legacy types at once."""

    def __init__(self, registry: Registry | None = None, *, start: bool = True) -> None:
        self.registry = registry if registry is not None else Registry()
        self.steps = StepRegistry(self.registry)
        self.providers = ProviderRegistry(self.registry)
        self.compatibility = CompatibilityManager(self.steps, self.providers)
        if start:
            self.compatibility.start()

    def close(self) -> None:
        """Close the Registry (ending this process's session and its health reports)."""
        self.registry.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_default: Pipeline | None = None
_default_lock = threading.Lock()


def default_pipeline() -> Pipeline:
    """The per-process Pipeline the module functions use, opened and started on first use."""
    global _default
    with _default_lock:
        if _default is None or _default.registry.closed:
            _default = Pipeline()
        return _default


def register_step(step_type: str, module: Any = None, *, validator: Callable[[dict[str, Any]], Any] | str | None = None,
                  metadata: Mapping[str, Any] | None = None, on_conflict: str = "error") -> str:
    """:meth:`StepRegistry.register_step` on :func:`default_pipeline`."""
    return default_pipeline().steps.register_step(step_type, module, validator=validator, metadata=metadata,
                                                  on_conflict=on_conflict)


def get_step_module(step_type: str) -> tuple[str, Any]:
    """:meth:`StepRegistry.get_step_module` on :func:`default_pipeline`."""
    return default_pipeline().steps.get_step_module(step_type)


def require_step_module(step_type: str) -> Any:
    """:meth:`StepRegistry.require_step_module` on :func:`default_pipeline`."""
    return default_pipeline().steps.require_step_module(step_type)


def validate_step_config(step_type: str, config: Mapping[str, Any]) -> tuple[str, Any]:
    """:meth:`StepRegistry.validate_step_config` on :func:`default_pipeline`."""
    return default_pipeline().steps.validate_step_config(step_type, config)


def list_steps() -> list[StepInfo]:
    """:meth:`StepRegistry.list_steps` on :func:`default_pipeline`."""
    return default_pipeline().steps.list_steps()


def register_provider(name: str, module: Any = None, capabilities: Iterable[str] = (), *, description: str = "",
                      health_check: Callable[[], Any] | None = None, owned: bool = False,
                      on_conflict: str = "error") -> str:
    """:meth:`ProviderRegistry.register_provider` on :func:`default_pipeline`."""
    return default_pipeline().providers.register_provider(name, module, capabilities, description=description,
                                                          health_check=health_check, owned=owned,
                                                          on_conflict=on_conflict)


def get_provider(name: str) -> tuple[str, Any]:
    """:meth:`ProviderRegistry.get_provider` on :func:`default_pipeline`."""
    return default_pipeline().providers.get_provider(name)


def list_providers(required_capabilities: Iterable[str] = ()) -> list[Provider]:
    """:meth:`ProviderRegistry.list_providers` on :func:`default_pipeline`."""
    return default_pipeline().providers.list_providers(required_capabilities)


def select_provider(required_capabilities: Iterable[str] = (), strategy: str = "first") -> tuple[str, Any]:
    """:meth:`ProviderRegistry.select_provider` on :func:`default_pipeline`."""
    return default_pipeline().providers.select_provider(required_capabilities, strategy)


def register_selection_strategy(name: str, function: Strategy) -> str:
    """:meth:`ProviderRegistry.register_selection_strategy` on :func:`default_pipeline`."""
    return default_pipeline().providers.register_selection_strategy(name, function)


def report_provider_health(name: str, health: str | None, *, load: float | None = None,
                           info: Mapping[str, Any] | None = None) -> None:
    """:meth:`ProviderRegistry.report_health` on :func:`default_pipeline`."""
    default_pipeline().providers.report_health(name, health, load=load, info=info)
