"""The Registry's maintenance API: export/import, the event log, checks, statistics, housekeeping."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import _documents, _eventlog, _health, _migrate
from ._base import RegistryBase
from ._documents import ImportPlan
from ._health import CheckReport
from ._records import Event
from .errors import ImportFileError, InvalidInputError


class MaintenanceMixin(RegistryBase):
    """What an operator does to a live registry while other processes keep working."""

    def export(self, format: str = "nameplate", *, workspace: str | None = None) -> dict[str, Any]:
        """A point-in-time document of the registry, from one read transaction.

        ``format="nameplate"`` (default) holds workspaces, kinds, entries (ids kept) and tombstones,
        stamped with the ``revision`` it reflects. ``format="madsci"`` is MADSci's ``registry.json``
        with the lab-kind entries visible in ``workspace``.
        """
        ws = self._ws(workspace)
        if format == "nameplate":
            return _documents.export_document(self._backend)
        if format == "madsci":
            return _documents.export_madsci(self._backend, ws)
        raise InvalidInputError(f"unknown export format {format!r}; use nameplate or madsci", format=format)

    def import_document(self, data: Any, *, format: str = "auto", replace: bool = False, dry_run: bool = False,
                        workspace: str | None = None) -> ImportPlan:
        """Import a document all-or-nothing: validated whole first, then written in one transaction.

        Merge (default) keeps existing entries and adds new ones; ``replace=True`` makes the document
        the registry. ``dry_run=True`` returns the plan without writing. MADSci files go into
        ``workspace``.
        """
        ws = self._ws(workspace)
        return _documents.import_document(self._backend, self._store, data, fmt=format,
                                          mode="replace" if replace else "merge", dry_run=dry_run, workspace=ws)

    def import_file(self, path: str | os.PathLike[str], *, format: str = "auto", replace: bool = False,
                    dry_run: bool = False, workspace: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ImportPlan:
        """:meth:`import_document` on a JSON file; unreadable or truncated files raise ImportFileError.

        ``progress(done, total)`` is called while the entries are validated (before the write).
        """
        data = read_json(Path(path))
        ws = self._ws(workspace)
        return _documents.import_document(self._backend, self._store, data, fmt=format,
                                          mode="replace" if replace else "merge", dry_run=dry_run, workspace=ws,
                                          source=str(path), progress=progress)

    def import_entries(self, data: dict[str, Any], merge: bool = True) -> None:
        """MADSci's ``LocalRegistryManager.import_entries``: a registry.json dict, merged or replacing."""
        self.import_document(data, format="madsci", replace=not merge)

    # -- the event log ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The newest revision in the event log (0 for a new registry)."""
        self._ws(None)
        return _eventlog.revision(self._backend)

    def changes(self, since: int = 0, limit: int | None = None) -> list[Event]:
        """Events with a revision above ``since``, oldest first."""
        self._ws(None)
        return _eventlog.changes(self._backend, since, limit)

    def follow(self, since: int | None = None, *, interval: float = 0.25,
               stop: Callable[[], bool] | None = None) -> Iterator[Event]:
        """Yield new events as other processes commit them (from ``since``, default now) until ``stop()``."""
        self._ws(None)
        return _eventlog.follow(self._backend, since, interval=interval, stop=stop)

    def gc_events(self, keep_days: float) -> dict[str, int]:
        """Prune events (and ended sessions) older than ``keep_days`` days."""
        self._ws(None)
        if not isinstance(keep_days, (int, float)) or keep_days < 0:
            raise InvalidInputError(f"keep_days must be a number >= 0, not {keep_days!r}", keep_days=keep_days)
        return _eventlog.gc(self._backend, self._store, float(keep_days))

    # -- health and housekeeping -----------------------------------------------------------------

    def check(self) -> CheckReport:
        """Integrity and foreign keys, definitions against kinds, leases of dead sessions, orphans."""
        self._ws(None)
        return _health.check(self._backend)

    def stats(self) -> dict[str, Any]:
        """Counts per kind and workspace, sessions, leases, revision, file and WAL sizes."""
        self._ws(None)
        return _health.stats(self._backend)

    def vacuum(self) -> dict[str, Any]:
        """Rebuild the file to reclaim free pages (takes the write lock for its duration)."""
        self._ws(None)
        return self._backend.maintenance("vacuum")

    def checkpoint(self) -> dict[str, Any]:
        """Copy the WAL into the database and truncate it."""
        self._ws(None)
        return self._backend.maintenance("checkpoint")

    def migration_status(self) -> _migrate.MigrationStatus:
        """Applied and pending schema migrations."""
        self._ws(None)
        return _migrate.status(self._backend)


def read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ImportFileError(f"cannot read {path}: {error.strerror or error}", path=str(path),
                              problems=[str(error)]) from None
    except UnicodeDecodeError:
        raise ImportFileError(f"{path} is not UTF-8 text; export files are JSON", path=str(path),
                              problems=["not UTF-8"]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ImportFileError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                              "is it truncated?", path=str(path), problems=[str(error)]) from None
