"""Cursus's step, builder and hyperparameter registry functions (seeds 000/001), on a Registry.

Each takes an optional ``registry``; without one it uses a module-wide ``Registry()`` opened on first
use (database by discovery: ``NAMEPLATE_DB``, the nearest ``.nameplate/``, the user data directory).
They are thin calls into the Registry, nothing more.

Unlike the seeds, the active workspace is never process-global: ``workspace_context`` is local to the
thread or asyncio task, which is why there is no ``set_workspace_context``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .._context import current_workspace
from .._records import Entry
from ..errors import EntryNotFoundError
from ..registry import Registry

_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The module-wide Registry the functions below use when none is given."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Registry()
        return _default


def _reg(registry: Registry | None) -> Registry:
    return registry if registry is not None else default_registry()


def get_step_names(workspace: str | None = None, *, registry: Registry | None = None) -> dict[str, dict[str, Any]]:
    """Every step visible in the workspace, name → definition (the seeds' STEP_NAMES)."""
    return {e.name: dict(e.definition or {}) for e in _reg(registry).list("step", workspace=workspace)}


def get_available_steps(workspace: str | None = None, *, registry: Registry | None = None) -> list[str]:
    """The names of the steps visible in the workspace, sorted."""
    return [e.name for e in _reg(registry).list("step", workspace=workspace)]


def validate_step_name(step_name: str, workspace: str | None = None, *, registry: Registry | None = None) -> bool:
    """Whether a step of that name is visible in the workspace."""
    return _reg(registry).lookup(step_name, "step", workspace=workspace) is not None


def get_workspace_context() -> str:
    """The workspace calls without ``workspace=`` act in, here and now (this thread or task)."""
    return current_workspace()


def _step(step_name: str, workspace: str | None, registry: Registry | None) -> Entry:
    entry = _reg(registry).get(step_name, "step", workspace=workspace)
    if entry is None or entry.definition is None:
        raise EntryNotFoundError(f"no step {step_name!r} with a definition; register it with register_step()",
                                 name=step_name, kind="step")
    return entry


def get_config_class_name(step_name: str, workspace: str | None = None, *, registry: Registry | None = None) -> str:
    """The step's ``config_class`` (``<Name>Config`` unless registered otherwise)."""
    return str(_step(step_name, workspace, registry).definition["config_class"])  # type: ignore[index]


def get_builder_step_name(step_name: str, workspace: str | None = None, *, registry: Registry | None = None) -> str:
    """The step's ``builder_step_name`` (``<Name>StepBuilder`` unless registered otherwise)."""
    return str(_step(step_name, workspace, registry).definition["builder_step_name"])  # type: ignore[index]


def get_spec_type(step_name: str, workspace: str | None = None, *, registry: Registry | None = None) -> str:
    """The step's ``spec_type`` (``<Name>`` unless registered otherwise)."""
    return str(_step(step_name, workspace, registry).definition["spec_type"])  # type: ignore[index]


def register_step(step_name: str, definition: Mapping[str, Any], workspace: str | None = None, *,
                  on_conflict: str = "error", registry: Registry | None = None) -> Entry:
    """Register (persistently) a step definition; validated against the ``step`` kind."""
    return _reg(registry).register(step_name, "step", definition, on_conflict=on_conflict, workspace=workspace)


def get_hyperparameter_class_by_model_type(model_type: str, workspace: str | None = None, *,
                                           registry: Registry | None = None) -> Any:
    """The hyperparameter entry whose definition has this ``model_type``: its loaded target if it has
    one, else its name; ``None`` if no entry has that model type."""
    reg = _reg(registry)
    for entry in reg.list("hyperparameter", workspace=workspace):
        if entry.definition is not None and entry.definition.get("model_type") == model_type:
            return reg.load(entry.name, "hyperparameter", workspace=workspace) if entry.target else entry.name
    return None


def get_all_hyperparameter_classes(workspace: str | None = None, *, registry: Registry | None = None) -> list[str]:
    """The names of the hyperparameter entries visible in the workspace, sorted."""
    return [e.name for e in _reg(registry).list("hyperparameter", workspace=workspace)]


@contextmanager
def workspace_context(workspace: str, *, registry: Registry | None = None) -> Iterator[str]:
    """``with workspace_context("dev1"):`` as in the seeds; local to the thread or task."""
    with _reg(registry).workspace(workspace) as active:
        yield active


__all__ = [
    "default_registry",
    "get_all_hyperparameter_classes",
    "get_available_steps",
    "get_builder_step_name",
    "get_config_class_name",
    "get_hyperparameter_class_by_model_type",
    "get_spec_type",
    "get_step_names",
    "get_workspace_context",
    "register_step",
    "validate_step_name",
    "workspace_context",
]
