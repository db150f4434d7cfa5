"""An in-memory process registry's functions (seed 004) on a Registry: persistent, with status and
health, and dead processes noticed at once.

    # from recursive_training.integration.process_registry import register_process, get_process
    from nameplate.compat.processes import register_process, get_process

Same functions, arguments and return values as the seed: ``register_process(process_id, process_obj)``,
``unregister_process(process_id) -> bool``, ``get_process(process_id)``, ``list_processes()``,
``get_all_processes()``, ``clear_registry() -> int``. They act on :func:`default_registry` (a
:class:`ProcessRegistry` opened on first use, database by discovery), or hold a ProcessRegistry yourself.

What the seed lacked, delivered:

- **Persistence.** A registration is an entry of kind ``process`` owned by the registering process's
  session: every process on the host sees it, and it stays until unregistered or cleared (a restarted
  application still finds what ran before, marked as ended). The *object* stays in the process that
  registered it: there ``get_process`` returns the object, as the seed did; anywhere else it returns a
  :class:`ProcessRecord` (pid, host, state, status, progress, health). Objects are never pickled.
- **Status and health.** A registered object may implement ``status()``, ``progress()`` and
  ``health()`` (returning ``"healthy"``, ``"degraded"`` or ``"critical"``); the registering process
  polls them on its session's heartbeat (every ``ttl / 3`` s) and at registration, and shares the
  answers. Without ``health()``, an object that answers ``status()``/``progress()`` is ``healthy``;
  one whose method raises is ``critical``, with the error in ``record.info["error"]``.
- **Dead processes noticed at once.** A record's ``alive`` and ``state`` are judged at every read from
  the owner's pid and process start time (a reused pid is not the owner): a killed process reads
  ``alive=False, state="dead"`` the moment it is gone, not after a timeout.

One process id is one registration: registering an id that another *live* process holds raises
:class:`ProcessIdTakenError` (the seed overwrote it silently); an id whose process is gone is taken over.
"""

from __future__ import annotations

import enum
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .._entry_health import EntryHealth
from .._liveness import HOSTNAME
from ..errors import EntryNotFoundError, NameTakenError
from ..registry import Registry

__all__ = [
    "KIND",
    "ProcessIdTakenError",
    "ProcessRecord",
    "ProcessRegistry",
    "clear_registry",
    "default_registry",
    "get_all_processes",
    "get_process",
    "get_record",
    "list_processes",
    "register_process",
    "remove_dead",
    "unregister_process",
]

#: The built-in kind process registrations are entries of.
KIND = "process"


class ProcessIdTakenError(NameTakenError):
    """The process id is registered by another live process; the message names it."""


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A registered process as every process on the host sees it.

    ``alive`` and ``state`` (``live``, ``closed``: its owner ended without unregistering, ``expired``,
    ``dead``) are judged now. ``status``, ``progress`` and ``health`` are the latest answers of the
    object's own methods, polled by its process (``None`` for a method it does not implement).
    """

    process_id: str
    entry_id: str
    pid: int | None
    hostname: str | None
    label: str | None
    session_id: str | None
    alive: bool
    state: str | None
    status: Any
    progress: Any
    health: str | None
    object_type: str | None
    info: dict[str, Any] = field(default_factory=dict)
    reported_at: datetime | None = None
    last_beat_at: datetime | None = None


def _record(health: EntryHealth, object_type: str | None) -> ProcessRecord:
    info = dict(health.info)
    return ProcessRecord(process_id=health.name, entry_id=health.entry_id, pid=health.pid, hostname=health.hostname,
                         label=health.label, session_id=health.owner, alive=health.alive, state=health.state,
                         status=info.get("status"), progress=info.get("progress"), health=health.health,
                         object_type=object_type, info=info, reported_at=health.reported_at,
                         last_beat_at=health.last_beat_at)


def _jsonable(value: Any) -> Any:
    """A method's answer as JSON: enums by value, anything JSON cannot hold by its ``str``."""
    if isinstance(value, enum.Enum):
        value = value.value
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)
    return value


def _poller(obj: Any) -> Callable[[], dict[str, Any]]:
    """The health check of one process object: its ``status()``, ``progress()`` and ``health()``."""

    def check() -> dict[str, Any]:
        said: dict[str, Any] = {}
        for method in ("status", "progress"):
            function = getattr(obj, method, None)
            if callable(function):
                said[method] = _jsonable(function())
        health = getattr(obj, "health", None)
        if callable(health):
            said["health"] = _jsonable(health())
        elif said:
            said["health"] = "healthy"
        return said

    return check


class ProcessRegistry:
    """The seed's process registry on ``registry`` (``Registry()`` by discovery when none is given).

    ``wait`` is how long a registration waits for another process registering the same id at once.
    """

    def __init__(self, registry: Registry | None = None, *, wait: float = 10.0) -> None:
        self.registry = registry if registry is not None else Registry()
        self._wait = wait
        self._lock = threading.RLock()

    @staticmethod
    def _mine(health: EntryHealth) -> bool:
        """Registered by this very process (any Registry object of it: bindings are per process)."""
        return health.alive and health.pid == os.getpid() and health.hostname == HOSTNAME

    def _health(self, process_id: str) -> EntryHealth | None:
        try:
            return self.registry.health(process_id, KIND)
        except EntryNotFoundError:
            return None

    def register_process(self, process_id: str, process_obj: Any) -> None:
        """Register ``process_obj`` under ``process_id``: the record is shared, the object stays here.

        Registering again from this process replaces the object; an id held by another live process
        raises :class:`ProcessIdTakenError` and changes nothing; one whose process is gone is taken over.
        """
        reg = self.registry
        with self._lock:
            # The lease makes check-then-register one step between processes registering one id at once.
            reg.resolve(process_id, KIND, lock=True, wait=self._wait)
            try:
                current = reg.health(process_id, KIND)
                if current.owner is not None and current.alive and not self._mine(current):
                    raise ProcessIdTakenError(
                        f"process id {process_id!r} is registered by pid {current.pid} on {current.hostname} "
                        f"({current.label}), which is alive; unregister it there or choose another id",
                        name=process_id, kind=KIND, pid=current.pid, hostname=current.hostname)
                kind_of = type(process_obj)
                reg.register(process_id, KIND, None, owned=True, on_conflict="replace",
                             metadata={"object_type": f"{kind_of.__module__}.{kind_of.__qualname__}",
                                       "registered_by_pid": os.getpid()})
                reg.bind(process_id, KIND, process_obj)
                reg.watch_health(process_id, KIND, _poller(process_obj))
            finally:
                reg.release(process_id, KIND)

    def unregister_process(self, process_id: str) -> bool:
        """Remove the registration of ``process_id`` (from whichever process); ``False`` if there is none."""
        with self._lock:
            self.registry.unwatch_health(process_id, KIND)
            self.registry.unbind(process_id, KIND)
            if self.registry.lookup(process_id, KIND) is None:
                return False
            self.registry.delete(process_id, KIND)
            return True

    def get_process(self, process_id: str) -> Any:
        """The object, when this process registered it; else its :class:`ProcessRecord`; ``None`` if
        ``process_id`` is not registered."""
        health = self._health(process_id)
        if health is None:
            return None
        if self._mine(health):
            return self.registry.load(process_id, KIND)
        return self.get_record(process_id, health)

    def get_record(self, process_id: str, health: EntryHealth | None = None) -> ProcessRecord | None:
        """The shared record of ``process_id`` (also for this process's own), or ``None``."""
        health = health if health is not None else self._health(process_id)
        if health is None:
            return None
        entry = self.registry.get(process_id, KIND)
        object_type = None if entry is None else entry.metadata.get("object_type")
        return _record(health, object_type if isinstance(object_type, str) else None)

    def list_processes(self) -> list[str]:
        """Every registered process id, sorted (ended ones too, until unregistered: see ``alive``)."""
        return [entry.name for entry in self.registry.list(KIND)]

    def get_all_processes(self) -> dict[str, Any]:
        """``process_id`` → the object (registered here) or its :class:`ProcessRecord` (elsewhere)."""
        return {health.name: self.registry.load(health.name, KIND) if self._mine(health)
                else self.get_record(health.name, health) for health in self.registry.list_health(KIND)}

    def clear_registry(self) -> int:
        """Remove every registration, in one transaction; return how many there were."""
        with self._lock:
            removed = self.registry.delete_all(KIND)
            for entry in removed:
                self.registry.unwatch_health(entry.name, KIND)
                self.registry.unbind(entry.name, KIND)
            return len(removed)

    def remove_dead(self) -> list[str]:
        """Unregister the processes whose process is gone or ended; return their ids (not in the seed)."""
        gone = [h.name for h in self.registry.list_health(KIND) if not h.alive]
        return [name for name in gone if self.unregister_process(name)]

    def close(self) -> None:
        """Close the Registry: this process's session ends and its records read as ``closed``."""
        self.registry.close()


_default: ProcessRegistry | None = None
_default_lock = threading.Lock()


def default_registry() -> ProcessRegistry:
    """The per-process ProcessRegistry the module functions use, opened on first use."""
    global _default
    with _default_lock:
        if _default is None or _default.registry.closed:
            _default = ProcessRegistry()
        return _default


def register_process(process_id: str, process_obj: Any) -> None:
    """:meth:`ProcessRegistry.register_process` on :func:`default_registry`."""
    default_registry().register_process(process_id, process_obj)


def unregister_process(process_id: str) -> bool:
    """:meth:`ProcessRegistry.unregister_process` on :func:`default_registry`."""
    return default_registry().unregister_process(process_id)


def get_process(process_id: str) -> Any:
    """:meth:`ProcessRegistry.get_process` on :func:`default_registry`."""
    return default_registry().get_process(process_id)


def get_record(process_id: str) -> ProcessRecord | None:
    """:meth:`ProcessRegistry.get_record` on :func:`default_registry`."""
    return default_registry().get_record(process_id)


def list_processes() -> list[str]:
    """:meth:`ProcessRegistry.list_processes` on :func:`default_registry`."""
    return default_registry().list_processes()


def get_all_processes() -> dict[str, Any]:
    """:meth:`ProcessRegistry.get_all_processes` on :func:`default_registry`."""
    return default_registry().get_all_processes()


def clear_registry() -> int:
    """:meth:`ProcessRegistry.clear_registry` on :func:`default_registry`."""
    return default_registry().clear_registry()


def remove_dead() -> list[str]:
    """:meth:`ProcessRegistry.remove_dead` on :func:`default_registry`."""
    return default_registry().remove_dead()
