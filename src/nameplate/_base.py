"""What every part of the Registry facade shares: the backend, the store, the workspace rule.

The facade is assembled from one mixin per concept (entries in ``registry.py``, sessions and leases,
workspaces and kinds, maintenance), each in its own module and all built on :class:`RegistryBase`.
Mixins that keep state set it up in ``_open_extensions`` and release it in ``_close_extensions``,
calling ``super()`` so that every mixin's hook runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ._backend import Backend
from ._context import current_workspace
from ._migrate import migrate
from ._paths import Location, locate, redacted
from ._sqlite import SqliteBackend
from ._store import HOSTNAME, Store
from ._validation import check_seconds
from .errors import InvalidInputError, RegistryClosedError

T = TypeVar("T")


class RegistryBase:
    _backend: Backend
    _store: Store

    def __init__(self, db: str | os.PathLike[str] | None = None, *, timeout: float = 10.0,
                 synchronous: str = "NORMAL", **options: Any) -> None:
        self._closed = True
        location = locate(db)
        if location.url is not None:
            shown = redacted(location.url)
            raise InvalidInputError(f"{shown}: this version of nameplate stores registries in SQLite "
                                    "files only; pass a file path", url=shown)
        timeout = check_seconds(timeout, "timeout")
        self._backend = SqliteBackend(location, timeout=timeout, synchronous=synchronous)
        try:
            self.migrations_applied = migrate(self._backend)
        except BaseException:
            self._backend.close()
            raise
        self._store = Store(self._backend, self._actor)
        self._options = options
        self._closed = False
        try:
            self._open_extensions()
        except BaseException:
            self.close()
            raise

    # -- hooks for mixins ------------------------------------------------------------------------

    def _open_extensions(self) -> None:
        """Set up mixin state (each mixin calls ``super()._open_extensions()`` first)."""
        unknown = set(self._options) - self._known_options()
        if unknown:
            raise InvalidInputError(f"unknown Registry option(s): {', '.join(sorted(unknown))}",
                                    options=sorted(unknown))

    def _known_options(self) -> set[str]:
        """Keyword options mixins accept in the constructor (each mixin adds its own)."""
        return set()

    def _close_extensions(self) -> None:
        """Release mixin state (each mixin calls ``super()._close_extensions()`` last)."""

    def _session_id(self) -> str | None:
        """The id of this registry's open session, if any (sessions mixin overrides)."""
        return None

    def _guard(self, tx: Any, entry_pk: int, entry_id: str, kind: str, lease: Any = None) -> None:
        """Runs inside an entry write's transaction, before it changes the row (the leases mixin
        refuses entries leased by another session)."""

    def _guard_removal(self, ended: list[Any]) -> Any:
        """The guard of a write that deletes the row: ``_guard``, and the leases mixin also ends the
        caller's own lease of it, appending it to ``ended`` for :meth:`_finish_removal`."""
        return self._guard

    def _reaping_first(self, operation: Callable[[], T]) -> T:
        """Run a guarded write (the leases mixin retries it after reaping a dead holder first)."""
        return operation()

    def _finish_removal(self, ended: list[Any]) -> None:
        """After the deleting transaction committed: mark the leases it ended as released."""

    def _actor(self) -> tuple[str | None, str]:
        return self._session_id(), f"{os.getpid()}@{HOSTNAME}"

    # -- shared helpers --------------------------------------------------------------------------

    def _ws(self, workspace: str | None) -> str:
        if self._closed:
            raise RegistryClosedError("this Registry is closed; open a new one")
        return current_workspace(workspace)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def location(self) -> Location:
        """Where the database is and which rule chose it (``.reason`` says why)."""
        return self._backend.location

    @property
    def path(self) -> Path | None:
        """The database file (``None`` for a server database)."""
        return self._backend.location.path

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop background work and close every connection; idempotent."""
        if getattr(self, "_closed", True) and not hasattr(self, "_backend"):
            return
        was_open = not self._closed
        self._closed = True
        try:
            if was_open:
                self._close_extensions()
        finally:
            self._backend.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Registry {self.location} ({state})>"
