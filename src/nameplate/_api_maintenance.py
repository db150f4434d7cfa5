"""The Registry's maintenance API: export/import, the event log, checks, statistics, housekeeping."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import _documents, _eventlog, _health, _migrate
from ._base import RegistryBase
from ._documents import ImportPlan
from ._health import CheckReport
from ._paths import locate
from ._records import Event
from ._sqlite import SqliteBackend
from .errors import InvalidInputError

_FORMATS = ("nameplate", "madsci")


class MaintenanceMixin(RegistryBase):
    """What an operator does to a live registry while other processes keep working."""

    # -- export and import -----------------------------------------------------------------------

    def export(self, format: str = "nameplate", *, workspace: str | None = None) -> dict[str, Any]:
        """A point-in-time document of the registry, from one read transaction.

        ``format="nameplate"`` (default) holds workspaces, kinds, entries (ids kept) and tombstones,
        stamped with the ``revision`` it reflects; sessions, leases and ephemeral entries are process
        state and stay out. ``format="madsci"`` is MADSci's ``registry.json``: the entries of MADSci's
        kinds visible in ``workspace``, with the locks held on them (``export()`` without arguments is
        therefore not MADSci's ``LocalRegistryManager.export()``; pass ``"madsci"`` for that).
        """
        ws = self._ws(workspace)
        if format == "nameplate":
            return _documents.export_document(self._backend)
        if format == "madsci":
            return _documents.export_madsci(self._backend, ws)
        raise InvalidInputError(f"unknown export format {format!r}; use {' or '.join(_FORMATS)}", format=format)

    def import_document(self, data: Any, *, format: str = "auto", replace: bool = False, dry_run: bool = False,
                        workspace: str | None = None,
                        progress: Callable[[int, int], None] | None = None) -> ImportPlan:
        """Import a document all-or-nothing: validated whole first, then written in one transaction.

        Merge (default) keeps existing entries and adds new ones; ``replace=True`` makes the document
        the registry (for a MADSci file: the workspace's view of MADSci's kinds). ``dry_run=True``
        returns the plan without writing. ``format`` is ``"nameplate"``, ``"madsci"`` or ``"auto"``
        (recognised by shape). MADSci files go into ``workspace``. ``progress(done, total)`` is called
        while entries are validated, before the write.

        Raises :class:`ImportFileError` (every problem of the document listed in ``problems``),
        :class:`ConflictError` when the registry stands in the way (an id owned by another entry, an
        entry leased by a live process), :class:`UnknownWorkspaceError`; nothing is written then.
        """
        ws = self._ws(workspace)
        return _documents.import_document(self._backend, self._store, data, fmt=format,
                                          mode="replace" if replace else "merge", dry_run=dry_run, workspace=ws,
                                          progress=progress)

    def import_file(self, path: str | os.PathLike[str], *, format: str = "auto", replace: bool = False,
                    dry_run: bool = False, workspace: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ImportPlan:
        """:meth:`import_document` on a JSON file; unreadable, truncated or ambiguous files (a key twice in
        one object) raise :class:`ImportFileError`."""
        ws = self._ws(workspace)
        data = _documents.read_json(Path(path))
        return _documents.import_document(self._backend, self._store, data, fmt=format,
                                          mode="replace" if replace else "merge", dry_run=dry_run, workspace=ws,
                                          source=str(path), progress=progress)

    def import_entries(self, data: dict[str, Any], merge: bool = True) -> None:
        """MADSci's ``LocalRegistryManager.import_entries``: a registry.json dict, merged or replacing.

        Acts in the current workspace; ``merge=False`` replaces that workspace's MADSci entries only.
        """
        self.import_document(data, format="madsci", replace=not merge)

    # -- the event log ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The newest revision in the event log (0 for a new registry)."""
        self._ws(None)
        return _eventlog.revision(self._backend)

    def changes(self, since: int = 0, limit: int | None = None) -> list[Event]:
        """Events with a revision above ``since``, oldest first (at most ``limit`` of them)."""
        self._ws(None)
        return _eventlog.changes(self._backend, since, limit)

    def follow(self, since: int | None = None, *, interval: float = 0.25,
               stop: Callable[[], bool] | None = None) -> Iterator[Event]:
        """Yield events as they are committed, from ``since`` (default: now on), until ``stop()`` is true.

        Between polls it reads SQLite's ``data_version`` (microseconds) and reads the log only when a
        commit happened, so an idle follower costs next to nothing.
        """
        self._ws(None)
        return _eventlog.follow(self._backend, since, interval=interval, stop=stop)

    def gc_events(self, keep_days: float) -> dict[str, int]:
        """Prune events (and ended sessions) older than ``keep_days`` days. Revisions are never reused."""
        self._ws(None)
        return _eventlog.gc(self._backend, self._store, keep_days)

    # -- health and housekeeping -----------------------------------------------------------------

    def check(self) -> CheckReport:
        """Integrity and foreign keys, definitions against kinds, leases, layers and indexes.

        ``report.problems`` are inconsistencies (``nameplate check`` exits 5); ``report.warnings`` are
        states that housekeeping resolves (a lease whose owner died and was not reaped yet).
        """
        self._ws(None)
        return _health.check(self._backend)

    def stats(self) -> dict[str, Any]:
        """Counts per kind and workspace, sessions, leases, revision, schema version, file and WAL sizes."""
        self._ws(None)
        return _health.stats(self._backend)

    def vacuum(self) -> dict[str, Any]:
        """Rebuild the file to reclaim free pages (takes the write lock for its duration).

        Returns the file sizes ``before`` and ``after`` and whether the final checkpoint was ``busy``.
        """
        self._ws(None)
        result = self._backend.maintenance("vacuum")
        # In WAL mode VACUUM writes the rebuilt pages to the WAL; the file shrinks only when they are
        # checkpointed, so do that now (else "after" equals "before" and the WAL holds a full copy).
        busy = self._backend.maintenance("checkpoint")["busy"]
        return {"before": result["before"], "after": self._backend.maintenance("sizes"), "busy": busy}

    def checkpoint(self) -> dict[str, Any]:
        """Copy the WAL into the database and truncate it (readers still in the WAL keep part of it).

        Returns ``busy`` (a reader kept part of the WAL), ``wal_bytes_before`` and ``wal_bytes_after``.
        """
        self._ws(None)
        # A TRUNCATE checkpoint that succeeds reports 0 frames in and 0 moved (the log it reports on is
        # already reset), so the WAL file's size before and after is what tells an operator anything.
        before = self._backend.maintenance("sizes")["wal_bytes"]
        result = self._backend.maintenance("checkpoint")
        after = self._backend.maintenance("sizes")["wal_bytes"]
        return {"busy": result["busy"], "wal_bytes_before": before, "wal_bytes_after": after}

    def migration_status(self) -> _migrate.MigrationStatus:
        """Applied and pending schema migrations of this (open, hence migrated) registry."""
        self._ws(None)
        return _migrate.status(self._backend)

    @staticmethod
    def schema_status(db: str | os.PathLike[str] | None = None) -> _migrate.MigrationStatus:
        """Applied and pending migrations of the database at ``db`` (default: discovery), without
        migrating it: opening a :class:`Registry` applies pending migrations, this only looks."""
        location = locate(db)
        if location.path is None:
            raise InvalidInputError(f"{location.url}: only SQLite files can be inspected", url=location.url)
        if not location.path.exists():
            return _migrate.MigrationStatus(0, _migrate.latest_version(), [],
                                            [(m.version, m.name) for m in _migrate.available()])
        backend = SqliteBackend(location)
        try:
            return _migrate.status(backend)
        finally:
            backend.close()
