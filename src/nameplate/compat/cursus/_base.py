"""What the parts of ``nameplate.compat.cursus`` share: the Registry they use, the workspace they act
in, Cursus's errors, and Cursus's fallback to core for a workspace that does not exist."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ..._context import context_workspace
from ...errors import (
    EntryNotFoundError,
    InvalidInputError,
    NameplateError,
    NameTakenError,
    UnknownWorkspaceError,
    ValidationError,
)
from ...registry import Registry

#: Where the module reports Cursus's fallbacks and warnings (Cursus logs them too).
logger = logging.getLogger("nameplate.compat.cursus")

#: Cursus's variable for the workspace when no context is set (read, never written).
ENV_CURSUS_WORKSPACE = "CURSUS_WORKSPACE_ID"
VALIDATION_MODES = ("warn", "strict", "auto_correct")

#: Cursus's ``StepBuilderRegistry.LEGACY_ALIASES``: names from before its naming standard.
CURSUS_LEGACY_ALIASES: dict[str, str] = {
    "MIMSPackaging": "Package",
    "MIMSPayload": "Payload",
    "ModelRegistration": "Registration",
    "PytorchTraining": "PyTorchTraining",
    "PytorchModel": "PyTorchModel",
}

T = TypeVar("T")

_default: Registry | None = None
_default_env: str | None = None  # the NAMEPLATE_DB it was opened under
_default_lock = threading.Lock()


class RegistryError(NameplateError):
    """Cursus's ``RegistryError``. ``unresolvable_types`` and ``available_builders`` say what was
    asked for and what exists (empty lists where they do not apply)."""

    def __init__(self, message: str, unresolvable_types: list[str] | None = None,
                 available_builders: list[str] | None = None, **facts: Any) -> None:
        super().__init__(message, unresolvable_types=list(unresolvable_types or []),
                         available_builders=list(available_builders or []), **facts)


class StepNotFoundError(RegistryError, EntryNotFoundError, ValueError):
    """No step of that name (nor an alias of one) is visible; a ``ValueError`` as in Cursus."""


class BuilderNotFoundError(RegistryError, EntryNotFoundError):
    """No builder is registered for the step type or config (Cursus raised ``RegistryError``)."""


class StepValidationError(RegistryError, ValidationError):
    """``validation_mode="strict"`` refused a name or definition (Cursus raised ``ValueError``);
    ``problems`` lists each rule broken, ``suggestions`` the corrected values. Nothing was written."""


class BuilderClassError(RegistryError, InvalidInputError):
    """A builder is not a class, not a subclass of the registry's ``base_class``, or its target does not
    import (Cursus raised ``ValueError``). Nothing was written."""


class StepDefinitionWarning(UserWarning):
    """``validation_mode="warn"``: the step or builder was registered, but breaks Cursus's naming rules;
    the message gives the corrected names."""


def default_registry() -> Registry:
    """The Registry this module uses when none is given: ``Registry()`` with nameplate's discovery
    (``NAMEPLATE_DB``, the nearest ``.nameplate/``, the user data directory), opened on first use and
    opened anew when ``NAMEPLATE_DB`` changes.

    A handle, not a store: every process opens its own and they all read and write the one database.
    """
    global _default, _default_env
    env = os.environ.get("NAMEPLATE_DB")
    with _default_lock:
        if _default is not None and not _default.closed and env == _default_env:
            return _default
        if _default is not None:
            _default.close()
        _default, _default_env = Registry(), env
        fresh = _default
    install_legacy_aliases(fresh)
    return fresh


def install_legacy_aliases(registry: Registry | None = None) -> dict[str, str]:
    """Add Cursus's ``LEGACY_ALIASES`` (``PytorchTraining`` → ``PyTorchTraining``, ...) to core as
    registry aliases of steps, where core has none of that name yet; return the step aliases core has.

    Done when this module opens its default registry and when a :class:`StepBuilderRegistry` or
    :class:`UnifiedRegistryManager` is made; reads only, once they are there.
    """
    reg = registry_or_default(registry)
    present = reg.aliases("step", workspace="core")
    for alias, name in CURSUS_LEGACY_ALIASES.items():
        if alias in present:
            continue  # kept as it is, even if someone pointed it elsewhere
        try:
            reg.add_alias(alias, name, "step", workspace="core")
        except NameTakenError:  # a step of that very name exists, or another process added the alias first
            logger.debug("legacy alias %r not added: the name is taken", alias)
    return reg.aliases("step", workspace="core")


def registry_or_default(registry: Registry | None) -> Registry:
    return registry if registry is not None else default_registry()


def chosen_workspace(workspace: str | None) -> str | None:
    """Cursus's rule: the argument, else this thread's/task's context, else ``CURSUS_WORKSPACE_ID``;
    ``None`` leaves it to the Registry (``NAMEPLATE_WORKSPACE``, else core)."""
    if workspace:
        return workspace
    return context_workspace() or os.environ.get(ENV_CURSUS_WORKSPACE) or None


def read(registry: Registry, workspace: str | None, call: Callable[[str | None], T]) -> T:
    """``call`` in the chosen workspace; a workspace that does not exist reads core, as Cursus does
    (logged). The Registry itself stays strict: only this module falls back."""
    ws = chosen_workspace(workspace)
    try:
        return call(ws)
    except UnknownWorkspaceError:
        missing = ws if ws is not None else registry.current_workspace
        if missing == "core":
            raise
        logger.warning("workspace %r does not exist; reading the core registry instead (Cursus's fallback)", missing)
        return call("core")


def write(registry: Registry, workspace: str | None, call: Callable[[str], T]) -> T:
    """``call`` in the chosen workspace, creating it over core first if it does not exist yet (a Cursus
    workspace is a directory a developer makes; here it is a layer made on first write, logged)."""
    ws = chosen_workspace(workspace) or registry.current_workspace
    try:
        return call(ws)
    except UnknownWorkspaceError:
        try:
            registry.create_workspace(ws, description="created by nameplate.compat.cursus on first write")
            logger.info("created workspace %r over core for its first registration", ws)
        except NameTakenError:  # another process created it meanwhile
            pass
        return call(ws)
