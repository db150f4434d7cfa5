"""Applies pending migrations once, under the write lock, even when many processes open a new file.

One transaction under the backend's :meth:`~nameplate.backends.base.Backend.schema_lock` (SQLite's
``BEGIN IMMEDIATE``; PostgreSQL's migration advisory lock, then its write lock) reads the schema
version, applies the missing steps and bumps the version; the version is transactional on both
(``PRAGMA user_version``; the rows of ``schema_migration``), so a process that waited for the lock sees
the new version and applies nothing. Steps are loaded from the installed package, never the current directory.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import ModuleType
from typing import Any

from ..errors import DatabaseError, SchemaTooNewError
from .base import Backend, Tx

_MODULE_NAME = re.compile(r"^v(\d{4})_\w+\.py$")
_OUR_TABLES = frozenset({"workspace", "workspace_ancestor", "kind", "session", "entry", "entry_capability",
                         "lease", "lock_delay", "selection_cursor", "event", "schema_migration",
                         "sqlite_sequence"})


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    module: ModuleType


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """What ``nameplate migrate --status`` reports."""

    current: int
    latest: int
    applied: list[tuple[int, str, float]]
    pending: list[tuple[int, str]]


class MigrationContext:
    """What a migration step sees: ``ddl`` (dialect words filled in), ``execute`` and ``dialect``."""

    def __init__(self, tx: Tx, backend: Backend) -> None:
        self._tx = tx
        self._backend = backend
        self.dialect = backend.dialect
        self._words = backend.ddl_vocabulary()

    def ddl(self, sql: str) -> None:
        """Run a DDL statement written with ``{pk}``, ``{ref}``, ``{float}``, ``{rev_pk}``, ``{table_opts}``."""
        self._tx.execute(self._backend.adapt_ddl(sql.format(**self._words)))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run a plain statement with ``?`` parameters."""
        return self._tx.execute(sql, params)


@cache
def available() -> tuple[Migration, ...]:
    found = []
    for item in resources.files("nameplate.migrations").iterdir():
        match = _MODULE_NAME.match(item.name)
        if match:
            module = importlib.import_module(f"nameplate.migrations.{item.name[:-3]}")
            found.append(Migration(int(match.group(1)), module.NAME, module))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must be 1..n without gaps, found {versions}")
    return tuple(found)


def latest_version() -> int:
    return available()[-1].version


def _refuse_newer(backend: Backend, version: int) -> None:
    if version > latest_version():
        raise SchemaTooNewError(
            f"{backend.location} has schema version {version}, newer than this nameplate understands "
            f"({latest_version()}); upgrade nameplate (pip install -U nameplate). The file was not touched.",
            found=version, supported=latest_version())


def migrate(backend: Backend) -> list[int]:
    """Bring the schema up to date; return the versions applied by this call (usually none)."""
    current = backend.schema_version()
    _refuse_newer(backend, current)
    if current == latest_version():
        return []
    applied: list[int] = []
    with backend.schema_lock() as tx:
        current = backend.schema_version(tx)
        _refuse_newer(backend, current)
        if current == 0:
            strangers = sorted(set(backend.foreign_tables(tx)) - _OUR_TABLES)
            if strangers:
                raise DatabaseError(
                    f"{backend.location} already holds tables nameplate did not create "
                    f"({', '.join(strangers[:5])}); point nameplate at its own file", tables=strangers)
        context = MigrationContext(tx, backend)
        for migration in available()[current:]:
            migration.module.upgrade(context)
            tx.execute("INSERT INTO schema_migration (version, name, applied_at) VALUES (?, ?, ?)",
                       [migration.version, migration.name, time.time()])
            applied.append(migration.version)
        backend.set_schema_version(tx, latest_version())
    return applied


def status(backend: Backend) -> MigrationStatus:
    current = backend.schema_version()
    applied: list[tuple[int, str, float]] = []
    if current:
        rows = backend.query_all("SELECT version, name, applied_at FROM schema_migration ORDER BY version")
        applied = [(int(v), str(n), float(a)) for v, n, a in rows]
    pending = [(m.version, m.name) for m in available() if m.version > current]
    return MigrationStatus(current, latest_version(), applied, pending)
