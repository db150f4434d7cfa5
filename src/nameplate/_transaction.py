"""Multi-operation transactions: queued in a block, guarded and applied all-or-nothing at its end.

``with registry.transaction() as tx:`` hands out a :class:`Transaction`. Its methods only check their
input and queue an operation, returning a :class:`Pending` result; nothing touches the database while
the block runs, so user code never runs while the write lock is held. When the block ends without an
exception, :class:`Transactions` commits the queue, etcd's ``Txn(If(...).Then(...))`` in one step:

1. outside any lock, everything user-supplied is checked: names against their kinds' patterns (see
   ``_patterns``), registrations against their kinds (validators run here);
2. one ``BEGIN IMMEDIATE`` transaction checks every guard (``require``, ``require_absent``) against the
   current rows, then applies the operations in order, each seeing the ones before it; any guard that
   fails, and any operation that fails (a name taken, an entry leased by another process, a revision that
   moved), rolls the whole transaction back and raises;
3. after the commit, each :class:`Pending` holds its result.

A kind redefined between steps 1 and 2 makes the commit start over from step 1 (at most
``_ATTEMPTS`` times), as single registrations and resolves do.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._definitions import ON_CONFLICT, Definitions, Registration
from ._lease import Lease
from ._leasing import Leasing
from ._records import Entry
from ._revisions import check_expected, mismatch, require_revision
from ._store import RESOLVED, VISIBLE, Store, check_pattern, entry_by_pk
from ._validation import check_kind_name, check_name, encode_object
from .backends.base import Backend, Tx
from .errors import ConflictError, InvalidInputError, InvalidNameError, TransactionStateError

T = TypeVar("T")

#: How often a commit starts over because a kind changed between validating and writing.
_ATTEMPTS = 3

_GUARD_ROW = f"SELECT r.pk, r.revision, k.name {RESOLVED} WHERE {VISIBLE} AND r.name = ?"
_NEWEST_REVISION = "SELECT coalesce(max(rev), 0) FROM event"

_UNSET: Any = object()


class Pending(Generic[T]):
    """The result of one queued operation; :attr:`value` is filled in when the transaction commits."""

    __slots__ = ("_value", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._value: Any = _UNSET

    @property
    def done(self) -> bool:
        """Whether the transaction committed and :attr:`value` is there."""
        return self._value is not _UNSET

    @property
    def value(self) -> T:
        """What the operation returned: an id for ``resolve`` and ``rename``, an :class:`Entry` for
        ``register``, ``update`` and ``delete`` (what the entry was). :class:`TransactionStateError`
        before the transaction committed."""
        if self._value is _UNSET:
            raise TransactionStateError(f"the result of {self._what} is there once the transaction block has "
                                        "ended and committed; read it after the with block", operation=self._what)
        value: T = self._value
        return value

    @property
    def id(self) -> str:
        """The entry's id (for every operation), once committed."""
        value = self.value
        return value if isinstance(value, str) else value.id  # type: ignore[attr-defined]

    def _set(self, value: Any) -> None:
        self._value = value

    def __repr__(self) -> str:
        return f"<Pending {self._what}: {self._value!r}>" if self.done else f"<Pending {self._what}>"


@dataclass(slots=True)
class _Op:
    verb: str
    workspace: str
    name: str
    kind: str | None
    pending: Pending[Any]
    metadata: dict[str, Any] | None = None
    merge: bool = False
    expected: int | None = None
    new_name: str = ""
    registration: Registration | None = None
    on_conflict: str = "error"
    # Filled in outside the lock, before each attempt:
    pattern: str | None = None
    pattern_error: InvalidNameError | None = None
    checked: tuple[str, str] | None = None
    prepared: Any = None


@dataclass(frozen=True, slots=True)
class _Guard:
    workspace: str
    name: str
    kind: str | None
    present: bool
    revision: int | None


@dataclass(slots=True)
class Transaction:
    """Operations and guards queued by a ``with registry.transaction() as tx:`` block.

    Every method checks its arguments at once (:class:`InvalidInputError` and its kin, raised inside the
    block, so the block ends and nothing is written) and queues; nothing is read or written until the
    block ends. ``workspace=`` (or the active workspace at the call) is fixed when the call is made.
    Calls on the :class:`Registry` itself inside the block run at once, on their own, outside the
    transaction.
    """

    _workspace_of: Callable[[str | None], str]
    _ops: list[_Op] = field(default_factory=list)
    _guards: list[_Guard] = field(default_factory=list)
    _state: str = "open"
    _revision: int | None = None

    def _queue(self, op: _Op) -> Pending[Any]:
        self._check_open()
        self._ops.append(op)
        return op.pending

    def _check_open(self) -> None:
        if self._state != "open":
            raise TransactionStateError(f"this transaction is {self._state}; queue operations inside its with "
                                        "block, or start a new registry.transaction()", state=self._state)

    @property
    def revision(self) -> int:
        """The registry's revision right after the commit (its last event's, when it wrote any)."""
        if self._revision is None:
            raise TransactionStateError("the revision of a transaction is there once its block has committed",
                                        state=self._state)
        return self._revision

    def require(self, name: str, kind: str | None = None, *, revision: int | None = None,
                workspace: str | None = None) -> None:
        """Guard: ``name`` must be visible at commit (and, with ``revision=``, be at that revision), else
        :class:`RevisionMismatchError` and nothing is written."""
        self._check_open()
        ws = self._workspace_of(workspace)
        self._guards.append(_Guard(ws, check_name(name), _kind(kind), True,
                                   check_expected(revision, "revision")))

    def require_absent(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> None:
        """Guard: ``name`` must not be visible at commit (etcd's ``CreateRevision(key) == 0``)."""
        self._check_open()
        ws = self._workspace_of(workspace)
        self._guards.append(_Guard(ws, check_name(name), _kind(kind), False, None))

    def resolve(self, name: str, kind: str, metadata: Mapping[str, Any] | None = None, *,
                workspace: str | None = None) -> Pending[str]:
        """Queue :meth:`Registry.resolve` (find or create; ``metadata`` merged into an own entry)."""
        ws = self._workspace_of(workspace)
        return self._queue(_Op("resolve", ws, check_name(name), check_kind_name(kind),
                               Pending(f"resolve({name!r}, {kind!r})"), metadata=_object(metadata)))

    def register(self, name: str, kind: str, definition: Mapping[str, Any] | None = None, *,
                 target: str | None = None, capabilities: Iterable[str] = (),
                 metadata: Mapping[str, Any] | None = None, on_conflict: str = "error",
                 workspace: str | None = None) -> Pending[Entry]:
        """Queue :meth:`Registry.register` (validated against its kind before the write lock)."""
        ws = self._workspace_of(workspace)
        if on_conflict not in ON_CONFLICT:
            raise InvalidInputError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}, not {on_conflict!r}",
                                    on_conflict=on_conflict)
        caps = capabilities if isinstance(capabilities, str) else list(capabilities)
        registration = Registration(check_name(name), check_kind_name(kind), definition, target, caps,
                                    _object(metadata))
        return self._queue(_Op("register", ws, registration.name, kind, Pending(f"register({name!r}, {kind!r})"),
                               registration=registration, on_conflict=on_conflict))

    def update(self, name: str, kind: str | None = None, *, metadata: Mapping[str, Any], merge: bool = False,
               expected_revision: int | None = None, workspace: str | None = None) -> Pending[Entry]:
        """Queue :meth:`Registry.update`, with its compare-and-swap (``expected_revision=``)."""
        ws = self._workspace_of(workspace)
        meta = _object(metadata)
        assert meta is not None
        return self._queue(_Op("update", ws, check_name(name), _kind(kind), Pending(f"update({name!r})"),
                               metadata=meta, merge=bool(merge), expected=check_expected(expected_revision)))

    def rename(self, old: str, new: str, kind: str | None = None, *, workspace: str | None = None) -> Pending[str]:
        """Queue :meth:`Registry.rename`. An entry created earlier in the same transaction needs ``kind=``
        (its kind's pattern is matched against ``new`` before the write lock)."""
        ws = self._workspace_of(workspace)
        return self._queue(_Op("rename", ws, check_name(old), _kind(kind), Pending(f"rename({old!r}, {new!r})"),
                               new_name=check_name(new, "new name")))

    def delete(self, name: str, kind: str | None = None, *, expected_revision: int | None = None,
               workspace: str | None = None) -> Pending[Entry]:
        """Queue :meth:`Registry.delete`, with its compare-and-swap (``expected_revision=``)."""
        ws = self._workspace_of(workspace)
        return self._queue(_Op("delete", ws, check_name(name), _kind(kind), Pending(f"delete({name!r})"),
                               expected=check_expected(expected_revision)))


def _kind(kind: str | None) -> str | None:
    return None if kind is None else check_kind_name(kind)


def _object(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if metadata is None:
        return None
    encode_object(metadata)
    return dict(metadata)


class _StartOver(Exception):
    """A kind changed between validation and the write: validate again, outside the lock."""


class Transactions:
    """Commits :class:`Transaction` queues: validation outside the lock, then one write transaction."""

    def __init__(self, backend: Backend, store: Store, leasing: Leasing, definitions: Definitions) -> None:
        self._backend = backend
        self._store = store
        self._leasing = leasing
        self._definitions = definitions

    def commit(self, transaction: Transaction) -> None:
        """Apply ``transaction``'s queue all-or-nothing; fill in its results."""
        transaction._check_open()
        transaction._state = "committing"
        try:
            if not transaction._ops and not transaction._guards:
                self._finish(transaction, [], [], int(self._backend.query_one(_NEWEST_REVISION)[0]))
                return
            for _ in range(_ATTEMPTS):
                self._prepare(transaction._ops)
                ended: list[Lease] = []
                try:
                    results, revision = self._leasing.reaping_first(functools.partial(self._write, transaction,
                                                                                      ended))
                except _StartOver:
                    continue
                self._finish(transaction, results, ended, revision)
                return
            raise ConflictError("kinds kept changing while the transaction was being committed; retry")
        finally:
            if transaction._state == "committing":
                transaction._state = "failed"

    def discard(self, transaction: Transaction) -> None:
        """The block raised: nothing is written and the transaction takes no more operations."""
        transaction._state = "discarded"

    def _finish(self, transaction: Transaction, results: list[Any], ended: list[Lease], revision: int) -> None:
        self._leasing.finish_removal(ended)
        for op, result in zip(transaction._ops, results, strict=True):
            op.pending._set(result)
        transaction._revision = revision
        transaction._state = "committed"

    def _prepare(self, ops: list[_Op]) -> None:
        """Outside any lock: match names against patterns, validate registrations."""
        for op in ops:
            op.pattern, op.pattern_error, op.checked, op.prepared = None, None, None, None
            if op.verb == "resolve":
                assert op.kind is not None
                try:
                    op.pattern = self._store.checked_pattern(op.workspace, op.kind, op.name)
                except InvalidNameError as error:  # fatal only if the name must be created
                    op.pattern_error = error
            elif op.verb == "rename":
                op.checked = self._rename_checked(op)
            elif op.verb == "register":
                assert op.registration is not None
                op.prepared = self._definitions.prepare_registrations(op.workspace, [op.registration])[0]

    def _rename_checked(self, op: _Op) -> tuple[str, str] | None:
        kind = op.kind
        with self._backend.read() as tx:
            if kind is None:
                rows = tx.execute(_GUARD_ROW, (op.workspace, op.name)).fetchall()
                if len(rows) != 1:
                    return None  # absent or ambiguous now: the write reports it precisely
                kind = str(rows[0][2])
            pattern = tx.execute("SELECT name_pattern FROM kind WHERE name = ?", (kind,)).fetchone()
        if pattern is None:
            return None
        check_pattern(pattern[0] or "", op.new_name, kind)
        return (kind, pattern[0] or "")

    def _write(self, transaction: Transaction, ended: list[Lease]) -> tuple[list[Any], int]:
        ended.clear()  # a reaping retry starts this write again from the top
        removal_guard = self._leasing.guard_removal(ended)
        with self._backend.write() as tx:
            prepared = [op.prepared for op in transaction._ops if op.verb == "register"]
            if prepared and not self._definitions.kinds_unchanged(tx, prepared):
                raise _StartOver
            for guard in transaction._guards:
                _check_guard(tx, guard)
            results = [self._apply(tx, op, removal_guard) for op in transaction._ops]
            revision = int(tx.execute(_NEWEST_REVISION).fetchone()[0])
        return results, revision

    def _apply(self, tx: Tx, op: _Op, removal_guard: Any) -> Any:
        store, guard = self._store, self._leasing.guard
        if op.verb == "resolve":
            assert op.kind is not None
            found = store.find_or_create(tx, op.workspace, op.name, op.kind, op.metadata, op.pattern)
            if found is None:
                if op.pattern_error is not None:
                    raise op.pattern_error
                raise _StartOver
            if not found.created:
                store.refresh(tx, found, op.workspace, op.name, op.kind, op.metadata, guard)
            return found.id
        if op.verb == "update":
            assert op.metadata is not None
            local = store.visible_local(tx, op.workspace, op.name, op.kind, "update")
            require_revision(tx, local.pk, op.expected, name=op.name, kind=local.kind, workspace=op.workspace,
                             verb="updated")
            guard(tx, local.pk, local.id, local.kind)
            store.update_metadata(tx, local, op.workspace, op.name, op.metadata, merge=op.merge)
            return entry_by_pk(tx, local.pk)
        if op.verb == "rename":
            renamed = store.rename_in(tx, op.workspace, op.name, op.new_name, op.kind, guard, op.checked)
            if not isinstance(renamed, str):
                if op.checked is None:  # its kind was unknown before the lock, and patterns never run under it
                    raise InvalidInputError(
                        f"cannot check {op.new_name!r} against the kind of {op.name!r} before the transaction "
                        f"takes the write lock ({op.name!r} did not exist then); pass kind= to tx.rename",
                        name=op.name, new_name=op.new_name)
                raise _StartOver
            return renamed
        if op.verb == "delete":
            expected, name, ws = op.expected, op.name, op.workspace

            def checked_removal(tx: Tx, entry_pk: int, entry_id: str, kind: str) -> None:
                require_revision(tx, entry_pk, expected, name=name, kind=kind, workspace=ws, verb="deleted")
                removal_guard(tx, entry_pk, entry_id, kind)

            return store.delete_in(tx, op.workspace, op.name, op.kind, checked_removal)
        return self._definitions.write_registration(tx, op.workspace, op.prepared, op.on_conflict)


def _check_guard(tx: Tx, guard: _Guard) -> None:
    sql, params = _GUARD_ROW, [guard.workspace, guard.name]
    if guard.kind is not None:
        sql, params = sql + " AND k.name = ?", [guard.workspace, guard.name, guard.kind]
    rows = tx.execute(sql, params).fetchall()
    if len(rows) > 1:
        kinds = sorted(str(r[2]) for r in rows)
        raise InvalidInputError(f"{guard.name!r} exists under several kinds in workspace {guard.workspace!r} "
                                f"({', '.join(kinds)}); pass kind= to the guard", name=guard.name, kinds=kinds)
    actual = int(rows[0][1]) if rows else None
    if guard.present and guard.revision is not None:
        if actual != guard.revision:
            raise mismatch(guard.name, guard.kind, guard.workspace, guard.revision, actual, "written")
    elif guard.present and actual is None:
        raise mismatch(guard.name, guard.kind, guard.workspace, None, None, "written", wanted="present")
    elif not guard.present and actual is not None:
        raise mismatch(guard.name, guard.kind, guard.workspace, None, actual, "written", wanted="absent")
