"""Maintenance: export/import, the event log, checks, statistics, housekeeping."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from . import _documents, _eventlog, _health
from ._documents import ImportPlan
from ._export_file import encode_document
from ._health import CheckReport
from ._leasing import WorkspaceOf
from ._paths import locate
from ._records import Event
from ._store import Store
from .backends import migrate as _migrate
from .backends import open_backend
from .backends.base import Backend
from .errors import InvalidInputError

_FORMATS = ("nameplate", "madsci")


class Maintenance:
    """What an operator does to a live registry while other processes keep working."""

    def __init__(self, backend: Backend, store: Store, workspace_of: WorkspaceOf) -> None:
        self._backend = backend
        self._store = store
        self._ws = workspace_of

    # -- export and import -----------------------------------------------------------------------

    def export(self, format: str = "nameplate", *, workspace: str | None = None) -> dict[str, Any]:
        ws = self._ws(workspace)
        if format == "nameplate":
            return _documents.export_document(self._backend)
        if format == "madsci":
            return _documents.export_madsci(self._backend, ws)
        raise InvalidInputError(f"unknown export format {format!r}; use {' or '.join(_FORMATS)}", format=format)

    def write_export(self, file: TextIO, format: str = "nameplate", *, workspace: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        ws = self._ws(workspace)
        if format == "nameplate":
            count, revision = _documents.write_export(self._backend, file.write, progress)
            return {"entries": count, "revision": revision}
        document = self.export(format, workspace=ws)
        file.write(encode_document(document, progress) + "\n")
        return {"entries": len(document["entries"]), "revision": document.get("revision")}

    def import_document(self, data: Any, *, format: str = "auto", replace: bool = False, dry_run: bool = False,
                        workspace: str | None = None,
                        progress: Callable[[int, int], None] | None = None) -> ImportPlan:
        ws = self._ws(workspace)
        return _documents.import_document(self._backend, self._store, data, fmt=format,
                                          mode="replace" if replace else "merge", dry_run=dry_run, workspace=ws,
                                          progress=progress)

    def import_file(self, path: str | os.PathLike[str], *, format: str = "auto", replace: bool = False,
                    dry_run: bool = False, workspace: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ImportPlan:
        ws = self._ws(workspace)
        return _documents.import_file(self._backend, self._store, Path(path), fmt=format,
                                      mode="replace" if replace else "merge", dry_run=dry_run, workspace=ws,
                                      progress=progress)

    def import_entries(self, data: dict[str, Any], merge: bool = True) -> None:
        self.import_document(data, format="madsci", replace=not merge)

    # -- the event log ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        self._ws(None)
        return _eventlog.revision(self._backend)

    def changes(self, since: int = 0, limit: int | None = None) -> list[Event]:
        self._ws(None)
        return _eventlog.changes(self._backend, since, limit)

    def gc_events(self, keep_days: float) -> dict[str, int]:
        self._ws(None)
        return _eventlog.gc(self._backend, self._store, keep_days)

    # -- health and housekeeping -----------------------------------------------------------------

    def check(self) -> CheckReport:
        self._ws(None)
        return _health.check(self._backend)

    def stats(self) -> dict[str, Any]:
        self._ws(None)
        return _health.stats(self._backend)

    def vacuum(self) -> dict[str, Any]:
        self._ws(None)
        before = self._backend.storage_sizes()
        self._backend.vacuum()
        # In WAL mode VACUUM writes the rebuilt pages to the WAL; the file shrinks only when they are
        # checkpointed, so do that now (else "after" equals "before" and the WAL holds a full copy).
        busy = self._backend.checkpoint().busy
        return {"before": before, "after": self._backend.storage_sizes(), "busy": busy}

    def checkpoint(self) -> dict[str, Any]:
        self._ws(None)
        # A TRUNCATE checkpoint that succeeds reports 0 frames in and 0 moved (the log it reports on is
        # already reset), so the WAL file's size before and after is what tells an operator anything.
        if "checkpoint" in self._backend.not_applicable():  # the server checkpoints its own WAL
            return {"busy": False, "wal_bytes_before": 0, "wal_bytes_after": 0, "not_applicable": True}
        before = self._backend.storage_sizes()["wal_bytes"]
        result = self._backend.checkpoint()
        after = self._backend.storage_sizes()["wal_bytes"]
        return {"busy": result.busy, "wal_bytes_before": before, "wal_bytes_after": after}

    def migration_status(self) -> _migrate.MigrationStatus:
        self._ws(None)
        return _migrate.status(self._backend)

    @staticmethod
    def schema_status(db: str | os.PathLike[str] | None = None) -> _migrate.MigrationStatus:
        location = locate(db)
        if location.path is not None and not location.path.exists():
            return _migrate.MigrationStatus(0, _migrate.latest_version(), [],
                                            [(m.version, m.name) for m in _migrate.available()])
        backend = open_backend(location, timeout=10.0, synchronous="NORMAL")
        try:
            return _migrate.status(backend)
        finally:
            backend.close()
