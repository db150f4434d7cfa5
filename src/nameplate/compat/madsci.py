"""MADSci's ``LocalRegistryManager`` on a nameplate Registry: switch by changing one import.

    # from madsci.common.registry.local_registry import LocalRegistryManager
    from nameplate.compat.madsci import LocalRegistryManager

Same constructor, methods, defaults and return types as
``madsci.common.registry.local_registry`` (seed 002). The registry file is found as MADSci finds it
(``registry_path``, ``MADSCI_REGISTRY_PATH``, the first ``.madsci/`` walking up from
``MADSCI_SETTINGS_DIR`` or the current directory, ``~/.madsci/``); the data lives in a SQLite file
beside it, ``registry.json`` → ``registry.nameplate.db``. The first manager to open that database
imports the JSON file's entries in one transaction (exactly once, even with several processes
opening it at once); the JSON file is only read, never written.

Each manager holds its own :class:`~nameplate.Registry` (its own session), so a lock is held per
manager: two managers in one process contend as two processes do.

Errors::

    NameplateError
    └── RegistryError                  MADSci's general error
        ├── RegistryLockError          also LeaseHeldError: another manager holds the lock
        ├── RegistryTimeoutError       also RegistryBusyError (TimeoutError): the database stayed busy
        ├── RegistryInputError         also InvalidInputError (ValueError): a bad argument or import file
        ├── RegistryNotFoundError      also EntryNotFoundError: rename of a missing name
        └── RegistryNameTakenError     also NameTakenError: rename onto a taken name
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from ulid import ULID

from .._records import Entry
from ..errors import (
    EntryNotFoundError,
    InvalidInputError,
    LeaseHeldError,
    LeaseLost,
    NameplateError,
    NameTakenError,
    RegistryBusyError,
    UnknownKindError,
)
from ..registry import Registry

__all__ = ["FILE_LOCK_TIMEOUT", "RETRY_INTERVAL_SECONDS", "ComponentType", "LocalRegistryManager", "LockManager",
           "RegistryEntry", "RegistryError", "RegistryInputError", "RegistryLock", "RegistryLockError",
           "RegistryNameTakenError", "RegistryNotFoundError", "RegistryTimeoutError"]

#: Seconds between ``resolve(..., retry_timeout=...)`` attempts (MADSci's value).
RETRY_INTERVAL_SECONDS: float = 2.0
#: Seconds a call waits for the database's write lock (MADSci's file-lock timeout).
FILE_LOCK_TIMEOUT: int = 5

ComponentType = Literal["node", "module", "manager", "experiment", "workcell"]
COMPONENT_TYPES: tuple[str, ...] = ("node", "module", "manager", "experiment", "workcell")
#: The kinds a MADSci registry.json may hold (``_documents.MADSCI_KINDS``); listings show these only.
_MADSCI_KINDS: tuple[str, ...] = (*COMPONENT_TYPES, "workflow")
#: The entry that records that the JSON file was imported (a kind of its own, outside MADSci's view).
_MARKER_KIND = "madsci-import"
_MARKER_NAME = "registry-json"


class RegistryError(NameplateError):
    """MADSci's general registry error."""


class RegistryLockError(RegistryError, LeaseHeldError):
    """The entry is locked by another manager (this process's or another's); the message names it."""


class RegistryTimeoutError(RegistryError, RegistryBusyError):
    """The database stayed busy for ``FILE_LOCK_TIMEOUT`` seconds (MADSci returned None or [] here)."""


class RegistryInputError(RegistryError, InvalidInputError):
    """An argument or an imported document was not acceptable; nothing was written."""


class RegistryNotFoundError(RegistryError, EntryNotFoundError):
    """No entry of that name."""


class RegistryNameTakenError(RegistryError, NameTakenError):
    """The name is already used by another entry."""


@contextmanager
def _as_madsci_errors() -> Iterator[None]:
    """Raise nameplate's errors as MADSci's classes (each also still the nameplate class it was)."""
    try:
        yield
    except RegistryError:
        raise
    except (LeaseHeldError, LeaseLost) as error:
        message = error.message.replace("pass wait=seconds to wait for it",
                                        "pass retry_timeout=seconds to resolve() to wait for it")
        raise RegistryLockError(message, **error.facts) from error
    except RegistryBusyError as error:
        raise RegistryTimeoutError(error.message, **error.facts) from error
    except InvalidInputError as error:
        raise RegistryInputError(error.message, **error.facts) from error
    except EntryNotFoundError as error:
        raise RegistryNotFoundError(error.message, **error.facts) from error
    except NameTakenError as error:
        raise RegistryNameTakenError(error.message, **error.facts) from error
    except NameplateError as error:
        raise RegistryError(error.message, **error.facts) from error


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class _Dumped:
    """What pydantic gives MADSci's models and their users call: JSON dumping and equality by fields
    (each subclass says what its fields are in ``model_dump``)."""

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        raise NotImplementedError

    def model_dump_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, type(self)) and self.model_dump() == other.model_dump()


class RegistryLock(_Dumped):
    """MADSci's ``RegistryLock``: who holds an entry and until when (``holder_instance`` is the
    holder's nameplate session id)."""

    def __init__(self, *, holder_pid: int, holder_host: str, holder_instance: str, acquired_at: datetime,
                 heartbeat_at: datetime, expires_at: datetime) -> None:
        self.holder_pid = holder_pid
        self.holder_host = holder_host
        self.holder_instance = holder_instance
        self.acquired_at = acquired_at
        self.heartbeat_at = heartbeat_at
        self.expires_at = expires_at

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        """The fields as a dict; ``mode="json"`` gives ISO-8601 strings for the times (as pydantic)."""
        times = {k: getattr(self, k) for k in ("acquired_at", "heartbeat_at", "expires_at")}
        return {"holder_pid": self.holder_pid, "holder_host": self.holder_host,
                "holder_instance": self.holder_instance,
                **({k: _iso(v) for k, v in times.items()} if mode == "json" else times)}

    def __repr__(self) -> str:
        return f"RegistryLock(holder_pid={self.holder_pid}, holder_host={self.holder_host!r})"


class RegistryEntry(_Dumped):
    """MADSci's ``RegistryEntry``: one name's id, type, times, metadata and lock."""

    def __init__(self, *, id: str, component_type: str, created_at: datetime, last_seen: datetime,
                 metadata: dict[str, Any], lock: RegistryLock | None = None, workcell_id: str | None = None) -> None:
        self.id = id
        self.component_type = component_type
        self.created_at = created_at
        self.last_seen = last_seen
        self.metadata = metadata
        self.lock = lock
        self.workcell_id = workcell_id

    def is_locked(self) -> bool:
        """Whether a lock exists and has not expired."""
        return self.lock is not None and datetime.now(tz=UTC) < self.lock.expires_at

    def is_locked_by(self, instance_id: str) -> bool:
        """Whether the lock's holder is ``instance_id`` (a manager's :attr:`LocalRegistryManager.instance_id`)."""
        return self.lock is not None and self.lock.holder_instance == instance_id

    def model_dump(self, mode: str = "python") -> dict[str, Any]:
        """The fields as a dict; ``mode="json"`` gives ISO-8601 strings for the times (as pydantic)."""
        json_mode = mode == "json"
        return {"id": self.id, "component_type": self.component_type,
                "created_at": _iso(self.created_at) if json_mode else self.created_at,
                "last_seen": _iso(self.last_seen) if json_mode else self.last_seen,
                "metadata": dict(self.metadata),
                "lock": None if self.lock is None else self.lock.model_dump(mode),
                "workcell_id": self.workcell_id}

    def __repr__(self) -> str:
        return f"RegistryEntry(id={self.id!r}, component_type={self.component_type!r})"


class LockManager:
    """MADSci's lock settings: ``lock_ttl`` is the manager's lease ttl (its session's), and the
    heartbeat renews it every ``ttl / 3`` (MADSci's defaults, 30 s and 10 s, agree with that)."""

    LOCK_TTL: timedelta = timedelta(seconds=30)
    HEARTBEAT_INTERVAL: int = 10

    def __init__(self, instance_id: str | None = None, lock_ttl: timedelta | None = None,
                 heartbeat_interval: int | None = None) -> None:
        if lock_ttl is not None and (not isinstance(lock_ttl, timedelta) or lock_ttl.total_seconds() <= 0):
            raise RegistryInputError(f"lock_ttl must be a positive timedelta, not {lock_ttl!r}",
                                     lock_ttl=repr(lock_ttl))
        if heartbeat_interval is not None and (isinstance(heartbeat_interval, bool)
                                               or not isinstance(heartbeat_interval, int | float)
                                               or heartbeat_interval <= 0):
            raise RegistryInputError(f"heartbeat_interval must be a positive number of seconds, not "
                                     f"{heartbeat_interval!r}", heartbeat_interval=repr(heartbeat_interval))
        self.instance_id = instance_id or str(ULID())
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.lock_ttl = lock_ttl or self.LOCK_TTL
        self.heartbeat_interval = heartbeat_interval or self.HEARTBEAT_INTERVAL


def find_madsci_dir(max_levels: int = 10) -> Path:
    """MADSci's ``find_madsci_dir``: the first ``.madsci/`` walking up from ``MADSCI_SETTINGS_DIR`` (or
    the current directory), stopping at the home directory; else one beside the first ``.git``; else
    ``~/.madsci/``. Created if missing, as MADSci does."""
    env = os.environ.get("MADSCI_SETTINGS_DIR")
    current = (Path(env).expanduser() if env else Path.cwd()).resolve()
    home = Path.home().resolve()
    git_candidate: Path | None = None
    for _ in range(max_levels + 1):
        if (current / ".madsci").is_dir():
            return current / ".madsci"
        if git_candidate is None and (current / ".git").exists():
            git_candidate = current / ".madsci"
        if current == home or current.parent == current:
            break
        current = current.parent
    found = git_candidate if git_candidate is not None else home / ".madsci"
    found.mkdir(parents=True, exist_ok=True)
    return found


def default_registry_path() -> Path:
    """Where MADSci's registry.json is: ``MADSCI_REGISTRY_PATH``, else ``find_madsci_dir()/registry.json``."""
    env = os.environ.get("MADSCI_REGISTRY_PATH")
    if env:
        return Path(env).expanduser().resolve()
    return find_madsci_dir() / "registry.json"


def database_beside(registry_path: Path) -> Path:
    """The nameplate database kept beside a registry.json: ``<stem>.nameplate.db`` in its directory."""
    return registry_path.with_name(registry_path.stem + ".nameplate.db")


class LocalRegistryManager:
    """MADSci's ``LocalRegistryManager`` on a nameplate database (see the module docstring).

    Args:
        registry_path: MADSci's ``registry.json`` (default: MADSci's discovery). The database is
            :func:`database_beside` it; the JSON file is imported once and never written.
        lock_manager: lock ttl and heartbeat; each manager without one gets its own.
    """

    FILE_LOCK_TIMEOUT: int = FILE_LOCK_TIMEOUT

    def __init__(self, registry_path: Path | None = None, lock_manager: LockManager | None = None) -> None:
        self.registry_path = Path(registry_path).expanduser().resolve() if registry_path else default_registry_path()
        self.lock_manager = lock_manager or LockManager()
        self.database_path = database_beside(self.registry_path)
        self.database_path.parent.mkdir(parents=True, exist_ok=True)
        with _as_madsci_errors():
            self._registry = Registry(self.database_path, timeout=float(self.FILE_LOCK_TIMEOUT),
                                      ttl=self.lock_manager.lock_ttl.total_seconds(),
                                      # MADSci takes an expired lock at once; fencing stops the old holder.
                                      lock_delay=0, label=f"madsci {self.lock_manager.instance_id}")
            try:
                self._import_json_once()
            except BaseException:
                self._registry.close()
                raise

    # -- lifecycle (not in MADSci: its manager holds no open resources) -----------------------------

    @property
    def registry(self) -> Registry:
        """The nameplate Registry behind this manager (for nameplate's own features)."""
        return self._registry

    @property
    def instance_id(self) -> str:
        """This manager's holder id, as ``RegistryLock.holder_instance`` shows it (its session's id)."""
        return self._registry.session(label=f"madsci {self.lock_manager.instance_id}").id

    def close(self) -> None:
        """Release this manager's locks and close its database connections; idempotent."""
        self._registry.close()

    def __enter__(self) -> LocalRegistryManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the one-time import of registry.json -------------------------------------------------------

    def _import_json_once(self) -> None:
        """Import ``registry_path`` into the database unless a previous opener did.

        The marker entry's lease serialises concurrent openers; its metadata says the import is done.
        A crash between the import and the marker leaves the marker unset: the next opener imports again,
        and the merge keeps every name already there, so nothing is doubled.
        """
        reg = self._registry
        try:
            reg.kind(_MARKER_KIND)
        except UnknownKindError:
            reg.define_kind(_MARKER_KIND, strict=False, description="records that a MADSci registry.json was imported")
        marker = reg.get(_MARKER_NAME, _MARKER_KIND)
        if marker is not None and marker.metadata.get("imported"):
            return
        reg.resolve(_MARKER_NAME, _MARKER_KIND, lock=True, wait=float(self.FILE_LOCK_TIMEOUT) * 6)
        try:
            marker = reg.get(_MARKER_NAME, _MARKER_KIND)
            if marker is not None and marker.metadata.get("imported"):
                return
            source = str(self.registry_path)
            if self.registry_path.is_file():
                reg.import_file(self.registry_path, format="madsci")
            reg.update(_MARKER_NAME, _MARKER_KIND, metadata={"imported": True, "source": source,
                                                              "at": time.time()}, lease=reg.lease(_MARKER_NAME,
                                                                                                   _MARKER_KIND))
        finally:
            reg.release(_MARKER_NAME, _MARKER_KIND)

    # -- entries ------------------------------------------------------------------------------------

    def resolve(self, name: str, component_type: ComponentType, metadata: dict[str, Any] | None = None,
                acquire_lock: bool = True, retry_timeout: float | None = None) -> str:
        """The id of ``name``, created as a ``component_type`` if new; an existing name keeps its id and
        type whatever type is asked, and ``metadata`` is merged into it. ``acquire_lock`` takes this
        manager's lock on it (:class:`RegistryLockError` naming the holder if another manager holds it);
        ``retry_timeout`` seconds of retries, every ``RETRY_INTERVAL_SECONDS``, before raising."""
        if component_type not in COMPONENT_TYPES:
            raise RegistryInputError(f"component_type {component_type!r} is not one of {', '.join(COMPONENT_TYPES)}",
                                     component_type=repr(component_type))
        if retry_timeout is not None and (isinstance(retry_timeout, bool)
                                          or not isinstance(retry_timeout, int | float) or retry_timeout < 0):
            raise RegistryInputError(f"retry_timeout must be a number of seconds >= 0 or None, not {retry_timeout!r}",
                                     retry_timeout=repr(retry_timeout))
        deadline = None if retry_timeout is None else time.monotonic() + retry_timeout
        while True:
            try:
                return self._resolve_once(name, component_type, metadata, acquire_lock)
            except RegistryLockError:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is None or remaining <= 0:
                    raise
                time.sleep(min(RETRY_INTERVAL_SECONDS, remaining))

    def _resolve_once(self, name: str, component_type: str, metadata: dict[str, Any] | None,
                      acquire_lock: bool) -> str:
        with _as_madsci_errors():
            entry = self._registry.get(name)
            held = None if entry is None else self._registry.lease(name, entry.kind)
            if held is not None and held.held and not held.lost:  # already this manager's: MADSci re-uses it
                return self._registry.resolve(name, component_type, metadata or None, any_kind=True)
            return self._registry.resolve(name, component_type, metadata or None, lock=acquire_lock, any_kind=True)

    def _entry(self, name: str) -> Entry | None:
        with _as_madsci_errors():
            entry = self._registry.get(name)
        return entry if entry is not None and entry.kind in _MADSCI_KINDS else None

    def lookup(self, name: str) -> str | None:
        """The id of ``name``, or ``None``. Never writes, never locks; a busy database raises
        :class:`RegistryTimeoutError` (MADSci returned ``None``)."""
        entry = self._entry(name)
        return None if entry is None else entry.id

    def get_entry(self, name: str) -> RegistryEntry | None:
        """The full entry for ``name`` (with its lock, if held), or ``None``."""
        entry = self._entry(name)
        if entry is None:
            return None
        return self._madsci_entry(entry, self._locks())

    def _locks(self) -> dict[str, RegistryLock]:
        with _as_madsci_errors():
            sessions = {s.id: s for s in self._registry.sessions()}
            held = self._registry.locks()
        locks = {}
        for lease in held:
            session = sessions.get(lease.session_id)
            beat = session.last_beat_at if session is not None else lease.acquired_at
            ttl = session.ttl if session is not None else 0.0
            locks[lease.entry_id] = RegistryLock(holder_pid=lease.pid, holder_host=lease.hostname,
                                                 holder_instance=lease.session_id, acquired_at=lease.acquired_at,
                                                 heartbeat_at=beat, expires_at=beat + timedelta(seconds=ttl))
        return locks

    @staticmethod
    def _madsci_entry(entry: Entry, locks: dict[str, RegistryLock]) -> RegistryEntry:
        workcell = (entry.definition or {}).get("workcell_id")
        return RegistryEntry(id=entry.id, component_type=entry.kind, created_at=entry.created_at,
                             last_seen=entry.last_seen_at, metadata=dict(entry.metadata), lock=locks.get(entry.id),
                             workcell_id=workcell if isinstance(workcell, str) else None)

    def list_entries(self, component_type: ComponentType | None = None,
                     include_stale: bool = False) -> list[tuple[str, RegistryEntry]]:
        """``(name, entry)`` of every entry (of ``component_type``), oldest first. Entries whose lock
        expired are left out unless ``include_stale``."""
        if component_type is not None and component_type not in COMPONENT_TYPES:
            raise RegistryInputError(f"component_type {component_type!r} is not one of {', '.join(COMPONENT_TYPES)}",
                                     component_type=repr(component_type))
        with _as_madsci_errors():
            entries = self._registry.list(component_type)
        locks = self._locks()
        found = [(e.name, self._madsci_entry(e, locks)) for e in sorted(entries, key=lambda e: (e.created_at, e.name))
                 if e.kind in _MADSCI_KINDS]
        return [(n, e) for n, e in found if include_stale or e.lock is None or e.is_locked()]

    # -- locks --------------------------------------------------------------------------------------

    def refresh_lock(self, name: str) -> None:
        """Prove this manager still holds ``name``'s lock (the heartbeat renews it in the background);
        :class:`RegistryLockError` if the entry is missing or the lock is not this manager's any more."""
        entry = self._entry(name)
        if entry is None:
            raise RegistryLockError(f"Entry '{name}' not found; resolve it first", name=name)
        with _as_madsci_errors():
            lease = self._registry.lease(name, entry.kind)
            if lease is None:
                raise RegistryLockError(f"Cannot refresh lock on '{name}': not held by this manager; resolve it "
                                        "with acquire_lock=True", name=name)
            lease.check()

    def release(self, name: str) -> None:
        """Release this manager's lock on ``name``; nothing happens if it holds none."""
        entry = self._entry(name)
        if entry is None:
            return
        with _as_madsci_errors():
            lease = self._registry.lease(name, entry.kind)
            while lease is not None and lease.held and lease.release():
                lease = self._registry.lease(name, entry.kind)

    def rename(self, old_name: str, new_name: str, force: bool = False) -> str:
        """Give ``old_name``'s entry the name ``new_name``; the id stays and its lock is cleared.
        :class:`RegistryError` if ``old_name`` is missing or ``new_name`` taken; :class:`RegistryLockError`
        if another manager holds ``old_name`` and ``force`` is false (``force=True`` breaks that lock)."""
        entry = self._entry(old_name)
        if entry is None:
            raise RegistryNotFoundError(f"Entry '{old_name}' not found", name=old_name)
        if self._entry(new_name) is not None:
            raise RegistryNameTakenError(f"Entry '{new_name}' already exists; pick another name or rename it first",
                                         name=new_name)
        lock = self._locks().get(entry.id)
        with _as_madsci_errors():
            mine = self._registry.lease(old_name, entry.kind)
            if lock is not None and mine is None:
                if not force:
                    raise RegistryLockError(f"Cannot rename '{old_name}': currently locked by {lock.holder_host} "
                                            f"(PID {lock.holder_pid}); pass force=True to break the lock",
                                            name=old_name, holder_pid=lock.holder_pid, holder_host=lock.holder_host)
                self._registry.release(old_name, entry.kind, force=True)
            elif mine is not None:
                self.release(old_name)
            return self._registry.rename(old_name, new_name, entry.kind)

    # -- housekeeping -------------------------------------------------------------------------------

    def clean_stale(self, older_than_days: int = 7, dry_run: bool = False) -> list[str]:
        """Remove entries not seen for ``older_than_days`` days and not locked; return their names."""
        if isinstance(older_than_days, bool) or not isinstance(older_than_days, int | float) or older_than_days < 0:
            raise RegistryInputError(f"older_than_days must be a number of days >= 0, not {older_than_days!r}",
                                     older_than_days=repr(older_than_days))
        # 0 days is MADSci's "everything not locked"; nameplate's clean_stale wants a positive span.
        span = timedelta(days=older_than_days) if older_than_days > 0 else timedelta(microseconds=1)
        with _as_madsci_errors():
            known = {k.name for k in self._registry.kinds()}
            removed = self._registry.clean_stale(span, dry_run=dry_run, kinds=[k for k in _MADSCI_KINDS if k in known])
        return [e.name for e in removed]

    def export(self) -> dict[str, Any]:
        """MADSci's registry.json document: ``{"version": 1, "created_at", "updated_at", "entries"}``."""
        with _as_madsci_errors():
            return self._registry.export("madsci")

    def import_entries(self, data: dict[str, Any], merge: bool = True) -> None:
        """Import a registry.json document all-or-nothing: ``merge=True`` keeps existing names and adds
        new ones, ``merge=False`` makes the document the registry."""
        with _as_madsci_errors():
            self._registry.import_entries(data, merge)

    def __repr__(self) -> str:
        return f"<LocalRegistryManager {self.registry_path} (database {self.database_path})>"

