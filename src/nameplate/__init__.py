"""nameplate: an embedded registry for one host.

Many processes open one SQLite file; they resolve component names to stable ULIDs, register typed
definitions in layered workspaces, hold fenced leases kept alive by a heartbeat, and every change
lands in an audit log.

    >>> from nameplate import Registry
    >>> with Registry("/tmp/demo.db") as registry:          # doctest: +SKIP
    ...     node_id = registry.resolve("liquid_handler_1", "node")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._definitions import Registration
from ._documents import ImportPlan
from ._election import Leader, Leadership
from ._health import CheckReport, Finding
from ._kind_schema import Kind
from ._layers import Conflict, Diff, Explanation, Layer, WorkspaceInfo
from ._lease import Lease
from ._load_errors import LoadFailure
from ._paths import Location
from ._plugins import Discovery, LoadResults, StalePlugin
from ._records import Entry, Event
from ._session import HeldLease, Session, SessionInfo
from ._transaction import Pending, Transaction
from .backends.migrate import MigrationStatus
from .errors import (
    AmbiguousNameError,
    ConflictError,
    DatabaseError,
    DatabaseLocationError,
    EntryNotFoundError,
    ForeignDatabaseError,
    ImportFileError,
    IntegrityProblemError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidNameError,
    KindInUseError,
    LeaseHeldError,
    LeaseLost,
    NameplateError,
    NameTakenError,
    NetworkFilesystemError,
    NoMatchError,
    NotFoundError,
    NotImportableError,
    NotLeaseHolderError,
    RegistryBusyError,
    RegistryClosedError,
    RevisionMismatchError,
    SchemaTooNewError,
    SemaphoreLimitError,
    SessionClosedError,
    SessionNotFoundError,
    StorageError,
    TargetImportError,
    TransactionStateError,
    UnknownKindError,
    UnknownStrategyError,
    UnknownWorkspaceError,
    ValidationError,
    WorkspaceError,
)
from .registry import Registry

try:
    __version__ = version("nameplate")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AmbiguousNameError",
    "CheckReport",
    "Conflict",
    "ConflictError",
    "DatabaseError",
    "DatabaseLocationError",
    "Diff",
    "Entry",
    "EntryNotFoundError",
    "Event",
    "Explanation",
    "Finding",
    "ForeignDatabaseError",
    "HeldLease",
    "ImportFileError",
    "ImportPlan",
    "IntegrityProblemError",
    "InvalidInputError",
    "InvalidMetadataError",
    "InvalidNameError",
    "Kind",
    "KindInUseError",
    "Layer",
    "Lease",
    "LeaseHeldError",
    "LeaseLost",
    "Location",
    "MigrationStatus",
    "NameplateError",
    "NameTakenError",
    "NetworkFilesystemError",
    "NoMatchError",
    "NotFoundError",
    "NotLeaseHolderError",
    "Registration",
    "Registry",
    "RegistryBusyError",
    "RegistryClosedError",
    "SchemaTooNewError",
    "Session",
    "SessionClosedError",
    "SessionInfo",
    "SessionNotFoundError",
    "StorageError",
    "TargetImportError",
    "UnknownKindError",
    "UnknownStrategyError",
    "UnknownWorkspaceError",
    "ValidationError",
    "WorkspaceError",
    "WorkspaceInfo",
    "__version__",
    "Discovery",
    "LoadFailure",
    "LoadResults",
    "NotImportableError",
    "StalePlugin",
    "RevisionMismatchError",
    "TransactionStateError",
    "Transaction",
    "Pending",
    "Leader",
    "Leadership",
    "SemaphoreLimitError",
]
