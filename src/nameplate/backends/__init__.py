"""Storage backends: one module per database, chosen by :func:`open_backend` from the scheme table.

A backend owns connections, transactions (``write()`` is SQLite's ``BEGIN IMMEDIATE``), the
translation of driver errors into nameplate's, the few dialect words migrations need, and typed
housekeeping (integrity checks, checkpoints, vacuum, file sizes). The features above it (entries,
leases, definitions, maintenance) speak only :class:`~nameplate.backends.base.Backend`.

Adding a database means a module here and one row in :data:`SCHEMES`; nothing in ``registry.py`` or
the feature modules changes (peewee's ``playhouse/db_url.py`` is the model).
"""

from __future__ import annotations

from collections.abc import Callable

from .._paths import Location, redacted
from ..errors import InvalidInputError
from .base import Backend, Tx
from .postgresql import PostgresqlBackend
from .sqlite import SqliteBackend

#: Backend factories by scheme; a plain file path (or ``sqlite:///``) is ``sqlite``.
SCHEMES: dict[str, Callable[..., Backend]] = {
    "sqlite": SqliteBackend,
    "postgresql": PostgresqlBackend,
}
#: Other spellings of a scheme (libpq accepts ``postgres://``; SQLAlchemy writes ``postgresql+psycopg://``).
_ALIASES = {"postgres": "postgresql", "postgresql+psycopg": "postgresql"}


def scheme_of(location: Location) -> str:
    """The scheme a location is opened with (``sqlite`` for a file path)."""
    if location.url is None:
        return "sqlite"
    scheme = location.url.split("://", 1)[0].lower()
    return _ALIASES.get(scheme, scheme)


def open_backend(location: Location, *, timeout: float, synchronous: str, writer_line: bool = True) -> Backend:
    """Open ``location`` with the backend its scheme names; :class:`InvalidInputError` for a scheme
    this version has no backend for (the URL's password is not repeated)."""
    scheme = scheme_of(location)
    factory = SCHEMES.get(scheme)
    if factory is None:
        shown = redacted(location.url or "")
        raise InvalidInputError(f"{shown}: this version of nameplate stores registries in SQLite files or "
                                "PostgreSQL (postgresql://...); pass a file path or such a URL", url=shown)
    return factory(location, timeout=timeout, synchronous=synchronous, writer_line=writer_line)


__all__ = ["SCHEMES", "Backend", "Tx", "open_backend", "scheme_of"]
