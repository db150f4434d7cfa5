"""Every error nameplate raises on purpose.

All of them derive from :class:`NameplateError`; each also derives from the built-in exception that
fits it (an invalid name is a ``ValueError``, a busy database a ``TimeoutError``), so callers that
already catch the built-in keep working. Every class carries its facts as attributes and pickles
across processes (``__reduce__`` rebuilds it from the message and attributes).

The CLI maps each class to an exit code through :attr:`NameplateError.exit_code`: 1 error, 3 not found,
4 held or conflict, 5 the database is damaged, not ours or too new (or ``check`` found problems), 6 the
database's location cannot be used, 7 out of disk space or the disk failed, 8 ``nameplate lock`` lost its
lease and stopped the command, 126/127 its command cannot be run (2 is click's usage error).

    NameplateError
    ├── InvalidInputError (ValueError)         bad arguments; nothing was written
    │   ├── InvalidNameError, InvalidMetadataError, ValidationError
    │   ├── UnknownStrategyError, ImportFileError
    │   ├── NotImportableError                 registrar(): other processes could not import it
    │   └── CommandNotRunnableError            exit 127 (not found) or 126 (not executable)
    ├── NotFoundError (LookupError)            exit 3
    │   └── EntryNotFoundError (KeyError), UnknownKindError, UnknownWorkspaceError,
    │       SessionNotFoundError, NoMatchError
    ├── ConflictError                          exit 4
    │   └── AmbiguousNameError, NameTakenError, WorkspaceError, KindInUseError,
    │       LeaseHeldError, LeaseLost, NotLeaseHolderError, SemaphoreLimitError
    │       └── CommandLeaseLostError          exit 8: `nameplate lock` stopped its command
    ├── RegistryBusyError (TimeoutError), RegistryClosedError, SessionClosedError (RuntimeError)
    ├── DatabaseError (OSError)                exit 5
    │   ├── SchemaTooNewError, ForeignDatabaseError
    │   ├── DatabaseLocationError              exit 6
    │   │   └── NetworkFilesystemError
    │   └── StorageError                       exit 7
    ├── TargetImportError (ImportError)
    ├── IntegrityProblemError                  exit 5
    ├── RevisionMismatchError (ConflictError)  exit 4: a compare-and-swap or transaction guard failed
    └── TransactionStateError (RuntimeError)   a transaction used outside its block, or a result read early
"""

from __future__ import annotations

from typing import Any


class NameplateError(Exception):
    """Base class of every error nameplate raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.facts = facts
        for key, value in facts.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.facts))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[NameplateError], message: str, facts: dict[str, Any]) -> NameplateError:
    error = cls.__new__(cls)
    NameplateError.__init__(error, message, **facts)
    return error


# -- input ------------------------------------------------------------------------------------------


class InvalidInputError(NameplateError, ValueError):
    """An argument was not acceptable; nothing was written."""


class InvalidNameError(InvalidInputError):
    """A name, kind name or workspace name breaks the naming rules."""


class InvalidMetadataError(InvalidInputError):
    """Metadata or info is not a JSON object of JSON-serialisable values."""


class ValidationError(InvalidInputError):
    """A definition does not satisfy its kind's schema. ``problems`` lists every problem found."""


class UnknownStrategyError(InvalidInputError):
    """A selection strategy name that nameplate does not implement."""


class ImportFileError(InvalidInputError):
    """An import document is unreadable or inconsistent; nothing was imported."""


class CommandNotRunnableError(InvalidInputError):
    """The command given to ``nameplate lock`` cannot be started; no lease was taken.

    Exit 127 when it is not found, 126 when it is not executable (the shells' convention)."""

    exit_code = 127


# -- not found --------------------------------------------------------------------------------------


class NotFoundError(NameplateError, LookupError):
    """Something named does not exist."""

    exit_code = 3


class EntryNotFoundError(NotFoundError, KeyError):
    """No visible entry has that name (and kind) in the workspace."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class UnknownKindError(NotFoundError):
    """The kind is not defined in this registry."""


class UnknownWorkspaceError(NotFoundError):
    """The workspace does not exist."""


class SessionNotFoundError(NotFoundError):
    """The session does not exist (or is no longer live)."""


# -- conflicts --------------------------------------------------------------------------------------


class ConflictError(NameplateError):
    """The change conflicts with what the registry holds; nothing was written."""

    exit_code = 4


class AmbiguousNameError(ConflictError, LookupError):
    """The name exists under several kinds and no kind was given. ``kinds`` lists them."""


class NameTakenError(ConflictError):
    """The target name is already used by another entry of that kind in that workspace."""


class WorkspaceError(ConflictError):
    """A workspace operation is not allowed in the current state (children, core, cycles)."""


class KindInUseError(ConflictError):
    """A kind still has entries and cannot be removed or narrowed."""


class LeaseHeldError(ConflictError):
    """Another live session holds the lease. ``holder`` describes it (pid, host, label, since)."""


class LeaseLost(ConflictError):
    """The lease this call relied on is gone: released, expired, stolen or its session ended."""


class CommandLeaseLostError(LeaseLost):
    """``nameplate lock`` lost its lease while the command ran, and stopped the command (SIGTERM, then
    SIGKILL after the grace period). Its own exit code, so that scripts can tell it from the command's."""

    exit_code = 8


class SemaphoreLimitError(ConflictError):
    """A semaphore was asked for with another limit than the one it was created with (Consul refuses the
    same way). ``limit`` is the stored limit, ``asked`` the one given."""


class NotLeaseHolderError(ConflictError):
    """Only the session holding a lease may release it (operators pass ``force=True``)."""


class NoMatchError(NotFoundError):
    """No entry of the kind offers the required capabilities. ``missing`` names the ones nobody offers."""


# -- environment ------------------------------------------------------------------------------------


class RegistryBusyError(NameplateError, TimeoutError):
    """Other processes kept the database busy for longer than the busy timeout."""


class RegistryClosedError(NameplateError, RuntimeError):
    """The Registry was closed; open a new one."""


class SessionClosedError(NameplateError, RuntimeError):
    """The session was closed or invalidated; open a new one with ``registry.session()``."""


class DatabaseError(NameplateError, OSError):
    """The database cannot be used: damaged, not a SQLite database, or one of the cases below."""

    exit_code = 5


class SchemaTooNewError(DatabaseError):
    """The database was written by a newer nameplate; this version refuses to touch it."""


class ForeignDatabaseError(DatabaseError):
    """The file is another application's SQLite database; it was refused without being changed."""


class DatabaseLocationError(DatabaseError):
    """The database's path cannot be used: permissions, not a regular file, a dangling symlink, a
    name too long for the filesystem."""

    exit_code = 6


class NetworkFilesystemError(DatabaseLocationError):
    """The database lies on a network filesystem, where SQLite's WAL mode is not safe."""


class StorageError(DatabaseError):
    """The disk is full or failed to read or write; the transaction was rolled back."""

    exit_code = 7


class TargetImportError(NameplateError, ImportError):
    """An entry's ``target`` could not be imported. Names the entry and the dotted path."""


class NotImportableError(InvalidInputError):
    """``registrar`` was given an object other processes cannot import by its dotted path (a lambda, a
    function defined inside another, an object of a script run as ``__main__``). Nothing was written."""


class IntegrityProblemError(NameplateError):
    """``check`` found problems. ``problems`` lists each one."""

    exit_code = 5


class RevisionMismatchError(ConflictError):
    """A compare-and-swap or a transaction guard found the entry changed (or absent, or present) since
    the revision the caller expected; nothing was written. ``name``, ``kind``, ``expected`` (a revision,
    or ``None`` for a guard on existence: ``require`` or ``require_absent``) and ``actual`` (the entry's
    revision now, ``None`` when there is none)."""


class TransactionStateError(NameplateError, RuntimeError):
    """A :meth:`Registry.transaction` was used wrongly: an operation queued after its block ended, or a
    result read before the block committed."""


__all__ = [
    "AmbiguousNameError",
    "CommandLeaseLostError",
    "CommandNotRunnableError",
    "ConflictError",
    "DatabaseError",
    "DatabaseLocationError",
    "EntryNotFoundError",
    "ForeignDatabaseError",
    "ImportFileError",
    "IntegrityProblemError",
    "InvalidInputError",
    "InvalidMetadataError",
    "InvalidNameError",
    "KindInUseError",
    "LeaseHeldError",
    "LeaseLost",
    "NameTakenError",
    "NameplateError",
    "NetworkFilesystemError",
    "NoMatchError",
    "NotFoundError",
    "NotLeaseHolderError",
    "RegistryBusyError",
    "RegistryClosedError",
    "RevisionMismatchError",
    "SchemaTooNewError",
    "SessionClosedError",
    "SessionNotFoundError",
    "StorageError",
    "TargetImportError",
    "TransactionStateError",
    "UnknownKindError",
    "UnknownStrategyError",
    "UnknownWorkspaceError",
    "ValidationError",
    "WorkspaceError",
    "NotImportableError",
]
