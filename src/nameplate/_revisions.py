"""Compare-and-swap on an entry's revision (etcd's ``mod_revision`` compare, Consul's ``?cas=``).

Every entry row carries the revision of the last event that changed it (``Store.record`` stamps it in
the event's own transaction). A conditional write reads that column inside its ``BEGIN IMMEDIATE``
transaction, after the row was found and before anything is written, so two writers that expect the
same revision cannot both pass: the second one to take the write lock sees the first one's revision.
"""

from __future__ import annotations

from typing import Any

from ._eventlog import MAX_REVISION
from ._store import Guard
from .backends.base import Tx
from .errors import InvalidInputError, RevisionMismatchError

_ROW_REVISION = "SELECT revision FROM entry WHERE pk = ?"


def check_expected(value: object, what: str = "expected_revision") -> int | None:
    """``None`` or a revision number (an int >= 0), else :class:`InvalidInputError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REVISION:
        raise InvalidInputError(f"{what} must be a revision number >= 0 (an Entry's .revision), not {value!r}",
                                **{what: repr(value)})
    return value


def require_revision(tx: Tx, entry_pk: int, expected: int | None, *, name: str, kind: str,
                     workspace: str, verb: str) -> None:
    """Inside a write transaction: raise :class:`RevisionMismatchError` unless the row's revision is
    ``expected`` (``None``: no condition)."""
    if expected is None:
        return
    actual = int(tx.execute(_ROW_REVISION, (entry_pk,)).fetchone()[0])
    if actual != expected:
        raise mismatch(name, kind, workspace, expected, actual, verb)


def mismatch(name: str, kind: str | None, workspace: str, expected: int | None, actual: int | None,
             verb: str, wanted: str | None = None) -> RevisionMismatchError:
    """The error of a failed condition: ``expected`` a revision (or ``None`` for a condition on
    existence, spelled by ``wanted``: "present" or "absent"), ``actual`` the revision now (``None``:
    absent)."""
    what = f"{kind} {name!r}" if kind else repr(name)
    if actual is None:
        found = "it does not exist"
    elif expected is None:
        found = f"it exists (revision {actual})"
    else:
        found = f"it is at revision {actual}"
    if wanted is None:
        wanted = f"at revision {expected}"
    facts: dict[str, Any] = {"name": name, "kind": kind, "workspace": workspace, "expected": expected,
                             "actual": actual}
    return RevisionMismatchError(
        f"{what} in workspace {workspace!r} was expected {wanted} but {found}, so nothing was {verb}; read it "
        "again (get()) and retry with its new revision", **facts)


def revision_guarded(guard: Guard, expected: int, name: str, workspace: str) -> Guard:
    """``guard`` preceded by the revision check (for writes that take a guard, such as delete)."""

    def checked(tx: Tx, entry_pk: int, entry_id: str, kind: str) -> None:
        require_revision(tx, entry_pk, expected, name=name, kind=kind, workspace=workspace, verb="deleted")
        guard(tx, entry_pk, entry_id, kind)

    return checked
