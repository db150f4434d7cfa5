"""The Registry: the one object users hold, composed of one feature object per concept.

``Registry.__init__`` opens the backend and builds the features, each given its collaborators
explicitly: the :class:`~nameplate._store.Store` (entries and the event log's writer), :class:`Leasing`
(sessions, leases, and the lease guard every entry write goes through), :class:`Definitions`
(workspaces, kinds, registration, targets, selection), :class:`Maintenance` (export and import,
the event log, checks, housekeeping) and :class:`Plugins` (decorator registration, ``load_all``, load
errors, entry-point discovery). Every public method here checks its input or picks the
workspace and makes one call into a feature; the flat verbs (``registry.acquire``,
``registry.register``) stay, as users of MADSci and Cursus expect them.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO, TypeVar

from . import _aliases
from ._context import active_workspace, current_workspace
from ._definitions import Definitions, Registration
from ._documents import ImportPlan
from ._election import Elections, Leader, Leadership
from ._entry_health import EntryHealth, Health
from ._health import CheckReport
from ._kind_schema import Kind
from ._layers import Conflict, Diff, Explanation, WorkspaceInfo
from ._lease import Lease
from ._leasing import DEFAULT_LOCK_DELAY, DEFAULT_TTL, Leasing
from ._liveness import HOSTNAME
from ._load_errors import LoadFailure
from ._maintenance import Maintenance
from ._paths import Location, locate
from ._plugins import Discovery, LoadResults, Plugins
from ._query import check_metadata_filter, check_page, list_page, with_metadata
from ._readcache import ReadCache
from ._records import Entry, Event
from ._revisions import check_expected, require_revision, revision_guarded
from ._semaphore import Semaphores
from ._session import HeldLease, Session, SessionInfo
from ._store import Store, entry_by_pk
from ._transaction import Transaction, Transactions
from ._validation import check_kind_name, check_name, check_seconds, encode_object
from ._watch import changes as watch_changes
from ._watch import event_filter
from ._watch import follow as watch_follow
from ._watch import wait_for_change as watch_wait
from .backends import open_backend
from .backends.migrate import MigrationStatus, migrate
from .errors import EntryNotFoundError, InvalidInputError, NameTakenError, RegistryClosedError

T = TypeVar("T")


class Registry:
    """An embedded registry shared by every process on this host that opens the same file.

    ``Registry()`` finds its database (see :attr:`location`), creates or upgrades it, and is safe to
    share between threads. Use it as a context manager or call :meth:`close`. Reads and writes act in
    a workspace: the ``workspace=`` argument, else ``with registry.workspace(...)``, else the
    ``NAMEPLATE_WORKSPACE`` variable, else ``core``.

    Args:
        db: a file path or ``sqlite:///path`` URL; default: discovery (``NAMEPLATE_DB``, the nearest
            ``.nameplate/`` upward, then the user data directory).
        timeout: seconds a write waits for other processes before :class:`RegistryBusyError`.
        synchronous: ``"NORMAL"`` (default; durable across process crashes) or ``"FULL"`` (also
            across power loss, slower commits).
        ttl: seconds this process's session lives without a heartbeat (the heartbeat renews it every
            ttl/3); a holder silent for longer loses its leases.
        lock_delay: seconds an entry stays unclaimable after its holder's session expired (it may be
            hung, not dead); 0 disables. Consul's default, 15 s.
        label: how this process appears in ``sessions()`` and lease errors (default: the program's
            name and pid).
        cache: answer repeated ``lookup``/``resolve`` of existing names from a per-thread cache that
            is checked against the database's commit signal on every call, so it is never older than
            the last commit a fresh read would see (see ``nameplate._readcache``). ``False`` turns it off.
        writer_line: on SQLite, a writer that finds the write lock taken queues in this host's line of
            writers (``<db>-line``) and is served in arrival order: a shorter tail under contention, at
            the cost of throughput when many processes write flat out (see the README's Performance).
            ``False`` makes this process retry the lock on its own, as SQLite alone would.

    Any other keyword is refused with :class:`InvalidInputError` naming it, before the file is opened.
    """

    def __init__(self, db: str | os.PathLike[str] | None = None, *, timeout: float = 10.0,
                 synchronous: str = "NORMAL", ttl: float = DEFAULT_TTL, lock_delay: float = DEFAULT_LOCK_DELAY,
                 label: str | None = None, cache: bool = True, writer_line: bool = True,
                 **unknown: object) -> None:
        self._closed = True
        if unknown:
            raise InvalidInputError(f"unknown Registry option(s): {', '.join(sorted(unknown))}",
                                    options=sorted(unknown))
        timeout = check_seconds(timeout, "timeout")
        ttl = check_seconds(ttl, "ttl")
        lock_delay = check_seconds(lock_delay, "lock_delay", zero=True)
        if not isinstance(cache, bool):
            raise InvalidInputError(f"cache must be True or False, not {cache!r}", cache=repr(cache))
        if not isinstance(writer_line, bool):
            raise InvalidInputError(f"writer_line must be True or False, not {writer_line!r}",
                                    writer_line=repr(writer_line))
        if label is not None and not isinstance(label, str):
            raise InvalidInputError(f"label must be a string, not {label!r}", label=repr(label))
        self._backend = open_backend(locate(db), timeout=timeout, synchronous=synchronous, writer_line=writer_line)
        try:
            self.migrations_applied = migrate(self._backend)
        except BaseException:
            self._backend.close()
            raise
        self._store = Store(self._backend, self._actor, cache=ReadCache(self._backend) if cache else None)
        self._leasing = Leasing(self._backend, self._store, self._ws, ttl=ttl, lock_delay=lock_delay, label=label)
        self._definitions = Definitions(self._backend, self._store, self._ws, self._leasing)
        self._maintenance = Maintenance(self._backend, self._store, self._ws)
        self._plugins = Plugins(self._backend, self._store, self._ws, self._definitions, self._leasing)
        self._transactions = Transactions(self._backend, self._store, self._leasing, self._definitions)
        self._semaphores = Semaphores(self._backend, self._store, self._leasing, self._ws)
        self._elections = Elections(self._backend, self._store, self._leasing, self._ws)
        self._health = Health(self._backend, self._store, self._ws, self._leasing)
        self._closed = False

    def _actor(self) -> tuple[str | None, str]:
        """Who a logged change is by: this process's session (if open) and ``pid@host``."""
        return self._leasing.session_id(), f"{os.getpid()}@{HOSTNAME}"

    def _ws(self, workspace: str | None) -> str:
        """The workspace a call acts in (refusing a closed registry); every feature is handed this rule."""
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
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """End this process's session (freeing its leases), stop background work and close every
        connection; idempotent."""
        if not hasattr(self, "_backend"):
            return  # the constructor refused its arguments before opening anything
        was_open = not self._closed
        self._closed = True
        try:
            if was_open:
                self._leasing.close()
        finally:
            self._backend.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Registry {self.location} ({state})>"

    # -- workspace context -----------------------------------------------------------------------

    @contextmanager
    def workspace(self, name: str) -> Iterator[str]:
        """Within the block, this thread's/task's reads and writes default to workspace ``name``."""
        with active_workspace(name) as active:
            yield active

    @property
    def current_workspace(self) -> str:
        """The workspace a call without ``workspace=`` acts in, here and now."""
        return self._ws(None)

    # -- entries ---------------------------------------------------------------------------------

    def resolve(self, name: str, kind: str, metadata: Mapping[str, Any] | None = None, *,
                workspace: str | None = None, lock: bool = False, wait: float | None = None,
                ephemeral: bool = False, any_kind: bool = False) -> str:
        """Return the ULID of ``name``, creating the entry in the workspace if no layer has it.

        The same ``(workspace, kind, name)`` gives the same id forever after, from any process. A name
        inherited from an ancestor workspace resolves to the ancestor's entry.

        ``metadata`` is stored when the entry is created. For an existing entry of this workspace its
        keys are merged over the stored metadata (shallow: given keys win, other keys stay); when that
        changes nothing, the call writes nothing. Metadata of an inherited entry is left to its layer.
        Replace metadata wholesale with :meth:`update`.

        An entry leased by another session (another process, or another thread of this one) keeps
        its metadata: a merge that would change it raises :class:`LeaseHeldError` and writes nothing.
        Reading its id is always fine.

        ``lock=True`` also takes the entry's lease (as MADSci's ``resolve(..., acquire_lock=True)``),
        in the same transaction as the create or merge: :class:`LeaseHeldError` if another live
        process holds it (``wait=`` seconds to wait), and then nothing was written. Get the
        :class:`Lease` with :meth:`lease` and give it up with :meth:`release`. ``ephemeral=True`` ties a
        newly created entry to this process's session: it is removed when the session ends.

        ``any_kind=True`` makes the name alone the key, as MADSci's registry has it: a name visible
        under another kind resolves to that entry (its id; ``kind`` is then only the kind a new entry
        gets), and a create that races with another kind's create of the same name is refused under the
        write lock, so one name never gets two ids. Several kinds already holding the name raise
        :class:`AmbiguousNameError`.

        Names are compared in Unicode NFC: "café" in either spelling is one name.
        """
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        meta = None if metadata is None else _validated(metadata)
        if not any_kind:
            return self._resolve(ws, name, kind, meta, lock, wait, ephemeral, sole_name=False)
        try:
            return self._resolve(ws, name, self._kind_of(ws, name, kind), meta, lock, wait, ephemeral, sole_name=True)
        except NameTakenError:  # another process created the name under another kind meanwhile: take that one
            return self._resolve(ws, name, self._kind_of(ws, name, kind), meta, lock, wait, ephemeral, sole_name=True)

    def _kind_of(self, ws: str, name: str, default: str) -> str:
        existing = self._store.get(ws, name, None)
        return default if existing is None else existing.kind

    def _resolve(self, ws: str, name: str, kind: str, meta: dict[str, Any] | None, lock: bool,
                 wait: float | None, ephemeral: bool, *, sole_name: bool) -> str:
        if lock:
            return self._leasing.resolve_locked(ws, name, kind, meta, wait, ephemeral, sole_name)
        owner = self.session().id if ephemeral else None
        return self._leasing.reaping_first(lambda: self._store.resolve(ws, name, kind, meta, guard=self._leasing.guard,
                                                                owner_session_id=owner, ephemeral=ephemeral,
                                                                sole_name=sole_name))

    def lookup(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> str | None:
        """The id of ``name``, or ``None``. Never writes, never takes a lock.

        Without ``kind``, a name that exists under several kinds raises :class:`AmbiguousNameError`.
        """
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        return self._store.lookup(ws, name, kind)

    def get(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> Entry | None:
        """The full :class:`Entry` for ``name``, or ``None``. Same rules as :meth:`lookup`."""
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        return self._store.get(ws, name, kind)

    def require(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> Entry:
        """Like :meth:`get`, but raise :class:`EntryNotFoundError` instead of returning ``None``."""
        entry = self.get(name, kind, workspace=workspace)
        if entry is None:
            ws = self._ws(workspace)
            what = f"{kind} {name!r}" if kind else repr(name)
            raise EntryNotFoundError(f"no entry {what} in workspace {ws!r}", name=name, kind=kind, workspace=ws)
        return entry

    def list(self, kind: str | None = None, *, workspace: str | None = None, prefix: str | None = None,
             limit: int | None = None, after: str | Entry | tuple[str, str] | None = None) -> builtins.list[Entry]:
        """Every entry visible in the workspace (its own over its ancestors'), sorted by kind and name.

        ``prefix`` keeps names starting with it. ``limit`` and ``after`` page through the listing by
        keyset (etcd's range with a start key): ``after`` is the last :class:`Entry` of the previous page
        (or its ``(kind, name)``, or with ``kind=`` its name); a page never repeats or skips entries that
        existed throughout.
        """
        ws = self._ws(workspace)
        if kind is not None:
            check_kind_name(kind)
        if prefix is None and limit is None and after is None:
            return self._store.list(ws, kind)
        checked_prefix, checked_limit, keyset = check_page(kind, prefix, limit, after)
        return list_page(self._store, ws, kind, checked_prefix, checked_limit, keyset)

    def update(self, name: str, kind: str | None = None, *, metadata: Mapping[str, Any],
               merge: bool = False, lease: Lease | None = None, workspace: str | None = None,
               expected_revision: int | None = None) -> Entry:
        """Replace (or with ``merge=True`` shallow-merge) the metadata of an entry of this workspace.

        With ``lease=``, the write is fenced: inside its transaction the lease must still be this
        process's, with the same token, else :class:`LeaseLost` and nothing is written. An entry leased
        by another process cannot be changed (:class:`LeaseHeldError`).

        With ``expected_revision=R`` (an :attr:`Entry.revision`), it is a compare-and-swap: the write
        happens only if the entry is still at revision ``R``, else :class:`RevisionMismatchError` and
        nothing is written (etcd's ``mod_revision`` compare, Consul's ``?cas=``).
        """
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        meta = _validated(metadata)
        expected = check_expected(expected_revision)
        return self._leasing.reaping_first(lambda: self._update(ws, name, kind, meta, merge, lease, expected))

    def _update(self, ws: str, name: str, kind: str | None, meta: dict[str, Any], merge: bool,
                lease: Lease | None, expected: int | None = None) -> Entry:
        with self._backend.write() as tx:
            local = self._store.visible_local(tx, ws, name, kind, "update")
            require_revision(tx, local.pk, expected, name=name, kind=local.kind, workspace=ws, verb="updated")
            if lease is not None:
                if lease.entry_pk != local.pk:
                    raise InvalidInputError(f"the lease given is on {lease.kind} {lease.name!r}, not on {name!r}",
                                            name=name, lease_name=lease.name)
                lease.fence(tx)
            self._leasing.guard(tx, local.pk, local.id, local.kind, lease=lease)
            self._store.update_metadata(tx, local, ws, name, meta, merge=merge,
                                        token=None if lease is None else lease.token)
            return entry_by_pk(tx, local.pk)

    def rename(self, old: str, new: str, kind: str | None = None, *, workspace: str | None = None) -> str:
        """Give an entry a new name; its id stays. Raises :class:`NameTakenError` if ``new`` is used."""
        ws = self._ws(workspace)
        old = check_name(old)
        new = check_name(new, "new name")
        if kind is not None:
            check_kind_name(kind)
        return self._leasing.reaping_first(lambda: self._store.rename(ws, old, new, kind, guard=self._leasing.guard))

    def delete(self, name: str, kind: str | None = None, *, workspace: str | None = None,
               expected_revision: int | None = None) -> Entry:
        """Remove an entry of this workspace and return what it was. The event log keeps its history.

        With ``expected_revision=R``, only if the entry is still at revision ``R``
        (:class:`RevisionMismatchError` otherwise, and nothing is deleted).
        """
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        expected = check_expected(expected_revision)
        ended: builtins.list[Lease] = []
        removal_guard = self._leasing.guard_removal(ended)
        if expected is not None:
            removal_guard = revision_guarded(removal_guard, expected, name, ws)
        entry = self._leasing.reaping_first(lambda: self._store.delete(ws, name, kind, guard=removal_guard))
        self._leasing.finish_removal(ended)
        return entry

    # -- leasing (see _leasing.py) ---------------------------------------------

    def session(self, *, label: str | None = None, ttl: float | None = None, status: str = "starting",
                info: Mapping[str, Any] | None = None) -> Session:
        """This process's session, opened now if it has none (else the open one is returned as is).

        Leases and ephemeral entries open it on demand; open it explicitly to choose the label, ttl and
        first status, or to appear in ``sessions()`` before holding anything.
        """
        return self._leasing.session(label=label, ttl=ttl, status=status, info=info)

    def sessions(self, alive: bool = True) -> builtins.list[SessionInfo]:
        """Processes registered here: live ones (judged now) or, with ``alive=False``, all on record."""
        return self._leasing.sessions(alive)

    def reap(self) -> builtins.list[str]:
        """End sessions whose process is gone or whose heartbeat stopped; return their ids."""
        return self._leasing.reap()

    def acquire(self, name: str, kind: str | None = None, wait: float | None = None, *,
                workspace: str | None = None, on_lost: Callable[[Lease], Any] | None = None,
                ttl: float | None = None) -> Lease:
        """Take the exclusive lease on an entry, or raise :class:`LeaseHeldError` naming the holder.

        ``wait=None`` fails at once; ``wait=seconds`` retries until then. Waiters are served in arrival
        order (a free lease goes to the oldest live waiter; a newcomer, waiting or not, never overtakes
        one). A holder whose process is gone is reaped on the spot (no waiting for its ttl); one whose
        ttl ran out leaves the entry in lock-delay for ``lock_delay`` seconds.

        ``ttl=seconds`` gives this lease a ttl of its own: it ends that long after it was taken unless
        :meth:`Lease.refresh` renews it (the heartbeat does not), or with the session if that ends
        first; :meth:`Lease.remaining` says how long is left.

        Leases are exclusive between the threads of a process too, re-entrant like
        ``threading.RLock``: the thread holding the lease gets the same :class:`Lease` back (and owes
        one more release), another thread waits or gets :class:`LeaseHeldError` naming the thread.
        """
        return self._leasing.acquire(name, kind, wait, workspace=workspace, on_lost=on_lost, ttl=ttl)

    def lease(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> Lease | None:
        """The lease this process holds on ``name``, if any (e.g. after ``resolve(..., lock=True)``)."""
        return self._leasing.lease(name, kind, workspace=workspace)

    def release(self, name: str, kind: str | None = None, *, force: bool = False,
                workspace: str | None = None) -> bool:
        """Release the lease on ``name``; return False if nobody held it.

        Only the holder may release; an operator passes ``force=True`` to break anyone's lease (logged
        as a ``lease.break`` event; the holder finds out at its next beat, check or fenced write).
        """
        return self._leasing.release(name, kind, force=force, workspace=workspace)

    def locks(self) -> builtins.list[HeldLease]:
        """Every lease currently held, in every workspace."""
        return self._leasing.locks()

    def clean_stale(self, older_than: timedelta = timedelta(days=7), dry_run: bool = False, *,
                    kinds: Iterable[str] | None = None) -> builtins.list[Entry]:
        """Remove entries (in every workspace) not seen for ``older_than`` and not leased; return them.

        ``kinds`` limits the sweep to entries of those kinds (each must exist: :class:`UnknownKindError`).
        """
        chosen = None if kinds is None else [check_kind_name(k) for k in kinds]
        if chosen is not None:
            for kind in chosen:
                self.kind(kind)
        return self._leasing.clean_stale(older_than, dry_run, chosen)

    # -- definitions (see _definitions.py) -------------------------------------

    def create_workspace(self, name: str, parent: str = "core", description: str = "", *,
                         exist_ok: bool = False) -> WorkspaceInfo:
        """Create a layer over ``parent``. Reads in it see its own rows over its ancestors', never a
        sibling's. :class:`NameTakenError` if it exists (with ``exist_ok=True``, only if it exists over
        another parent; over this one it is returned as it is), :class:`UnknownWorkspaceError` if the
        parent does not."""
        return self._definitions.create_workspace(name, parent, description, exist_ok=exist_ok)

    def workspaces(self) -> builtins.list[WorkspaceInfo]:
        """Every workspace, by name, with its parent, depth, children and row counts."""
        return self._definitions.workspaces()

    def delete_workspace(self, name: str, force: bool = False) -> builtins.list[str]:
        """Delete a workspace with its entries and tombstones; return the workspaces deleted.

        Refused (:class:`WorkspaceError`) for ``core``, while it has child workspaces unless
        ``force=True`` (then they go too, deepest first), and while any of its entries is leased.
        """
        return self._definitions.delete_workspace(name, force)

    def hide(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> str:
        """Hide an inherited entry in this workspace and its children (a tombstone row here), without
        touching the layer that defines it; return the hidden entry's id."""
        return self._definitions.hide(name, kind, workspace=workspace)

    def unhide(self, name: str, kind: str, *, workspace: str | None = None) -> None:
        """Remove this workspace's tombstone for ``name``: the inherited entry shows again."""
        return self._definitions.unhide(name, kind, workspace=workspace)

    def promote(self, name: str, kind: str | None = None, *, workspace: str | None = None,
                replace: bool = False) -> Entry:
        """Move this workspace's own entry one layer up (to its parent), keeping its id.

        If the parent defines the name already: :class:`NameTakenError`, or with ``replace=True`` the
        parent's entry is deleted and this one takes its place.
        """
        return self._definitions.promote(name, kind, workspace=workspace, replace=replace)

    def diff(self, a: str, b: str) -> Diff:
        """What the views of workspaces ``a`` and ``b`` disagree on (each seen with its ancestors)."""
        return self._definitions.diff(a, b)

    def conflicts(self) -> builtins.list[Conflict]:
        """Names defined differently in sibling workspaces (``type="sibling"``), and entries that
        shadow an ancestor's entry of the same name (``type="shadow"``)."""
        return self._definitions.conflicts()

    def explain(self, name: str, kind: str, *, workspace: str | None = None) -> Explanation:
        """The resolution trace of ``name``: the ancestry chain, every row met on the way up, which
        layer answered, what it shadows, and which tombstone hid it. It agrees with :meth:`get`."""
        return self._definitions.explain(name, kind, workspace=workspace)

    def define_kind(self, name: str, required: Iterable[str] = (), optional: Iterable[str] = (), *,
                    defaults: Mapping[str, Any] | None = None, name_pattern: str | None = None,
                    validator: str | None = None, strict: bool = True, description: str = "") -> Kind:
        """Define (or redefine) a kind and return it.

        ``defaults`` fill missing fields at registration; string defaults may use ``{name}`` (the
        entry's name). ``validator`` is ``"pkg.module:function"``, called with each definition. Every
        problem with the schema is reported at once (:class:`ValidationError`). Redefining is refused
        (:class:`KindInUseError`) for built-in kinds and when stored entries would no longer validate.
        """
        return self._definitions.define_kind(name, required, optional, defaults=defaults, name_pattern=name_pattern,
                                             validator=validator, strict=strict, description=description)

    def kinds(self) -> builtins.list[Kind]:
        """Every kind with its schema, built-in ones included, by name."""
        return self._definitions.kinds()

    def kind(self, name: str) -> Kind:
        """One kind's schema (:class:`UnknownKindError` with a suggestion if it does not exist)."""
        return self._definitions.kind(name)

    def delete_kind(self, name: str) -> None:
        """Delete a user-defined kind that has no entries in any workspace (:class:`KindInUseError`
        otherwise, and for built-in kinds)."""
        return self._definitions.delete_kind(name)

    def register(self, name: str, kind: str, definition: Mapping[str, Any] | None = None, *,
                 target: str | None = None, capabilities: Iterable[str] = (),
                 metadata: Mapping[str, Any] | None = None, on_conflict: str = "error", owned: bool = False,
                 workspace: str | None = None) -> Entry:
        """Register a typed definition under ``(workspace, kind, name)`` and return the entry.

        The definition is checked against the kind (defaults filled in); every problem is reported at
        once in a :class:`ValidationError` and nothing is written. ``definition=None`` registers an
        identity (target, capabilities) without a definition: only the name is checked.

        If this workspace already registered the name with a different definition, target,
        capabilities or metadata: ``on_conflict="error"`` raises :class:`NameTakenError`,
        ``"replace"`` overwrites it (the id stays), ``"keep"`` returns the stored entry unchanged.
        Registering the same thing again writes nothing; an entry that was only resolved gets its
        definition filled in. Metadata left out (``None``) keeps what is stored.

        ``owned=True`` binds the entry to this process's session (opened on demand), which is what
        ``select(strategy="healthiest")`` judges; re-registering from a new process moves the binding.
        """
        return self._definitions.register(name, kind, definition, target=target, capabilities=capabilities,
                                          metadata=metadata, on_conflict=on_conflict, owned=owned, workspace=workspace)

    def register_many(self, items: Iterable[Registration | Mapping[str, Any]], *, on_conflict: str = "error",
                      workspace: str | None = None) -> builtins.list[Entry]:
        """Register a batch in one transaction: every item is validated first and every problem is
        reported at once (:class:`ValidationError`), then all are written, or none."""
        return self._definitions.register_many(items, on_conflict=on_conflict, workspace=workspace)

    def bind(self, name: str, kind: str, obj: Any, *, workspace: str | None = None) -> None:
        """Make ``obj`` what :meth:`load` returns for ``name`` in this workspace (and the workspaces
        below it that do not define the name themselves), in this process only: nothing is stored,
        other processes never see it. Every Registry on the same file in this process sees it."""
        return self._definitions.bind(name, kind, obj, workspace=workspace)

    def unbind(self, name: str, kind: str, *, workspace: str | None = None) -> bool:
        """Forget an object given to :meth:`bind`; return whether there was one."""
        return self._definitions.unbind(name, kind, workspace=workspace)

    def load(self, name: str, kind: str, *, workspace: str | None = None) -> Any:
        """The object ``name`` stands for: what :meth:`bind` gave, else its ``target`` imported.

        Layers decide as for every read: walking up from the workspace, the first layer that binds
        the name, defines it or hides it answers (a binding beats the row of its own layer). The
        import happens on first use and is cached for the process, per entry id and target. Import
        failures raise :class:`TargetImportError` naming the entry and the dotted path, and are recorded
        on the entry for every process to see (:meth:`load_error`); a successful import clears that.
        """
        return self._definitions.load(name, kind, workspace=workspace)

    def discover(self, group: str = "nameplate.components", *, kind: str = "provider",
                 workspace: str | None = None, forget_missing: bool = False) -> Discovery:
        """Register the installed entry points of ``group`` in one transaction; idempotent.

        An entry point named ``kind:name`` registers ``name`` under that kind; a plain ``name`` uses
        ``kind``. Its value becomes the target, and ``entry_point``, ``distribution``, ``version`` and
        ``environment`` (``sys.prefix``) go into the metadata. Running it again writes nothing unless a
        package changed; an entry registered by hand under the same name is left as it is; an entry
        discovered before keeps its definition and capabilities and gets the new target and version.

        The result is the list of entries registered, as always, with ``.missing``: the entries of this
        workspace discovered earlier from ``group`` in this Python environment whose distribution was
        uninstalled or no longer declares the entry point (:class:`StalePlugin`, judged before the write).
        They are only reported, unless ``forget_missing=True``: then they are deleted in the same
        transaction (listed in ``.forgotten``); one leased by another live process stops the whole call
        (:class:`LeaseHeldError`, nothing written). Entries discovered in another environment (another
        virtualenv sharing the registry) are never judged here.
        """
        return self._plugins.discover(group, kind=kind, workspace=workspace, forget_missing=forget_missing)

    def find(self, kind: str, requires: Iterable[str] = (), *, metadata: Mapping[str, Any] | None = None,
             workspace: str | None = None) -> builtins.list[Entry]:
        """Entries of ``kind`` visible here whose capabilities include all of ``requires``, by name.

        With a requirement the query starts from the capability index, never from every entry of
        the kind. ``metadata={"room": "A"}`` keeps entries whose metadata has each of those keys with
        that very JSON value (compared in Python over the kind's candidates: the SQL stays portable).
        """
        wanted = check_metadata_filter(metadata)
        found = self._definitions.find(kind, requires, workspace=workspace)
        return found if wanted is None else with_metadata(found, wanted)

    def select(self, kind: str, requires: Iterable[str] = (), strategy: str = "first", *,
               workspace: str | None = None) -> Entry:
        """One entry of ``kind`` offering all of ``requires``, chosen by ``strategy``:

        - ``first``: the first match by name.
        - ``random``: a uniformly random match.
        - ``round_robin``: the next match in registration order after the last one chosen for this
          (kind, workspace, requirement); one rotation shared by every process on the database.
        - ``least_recently_selected``: the match selected longest ago, never-selected ones first.
        - ``healthiest``: only matches registered with ``owned=True`` whose session's process is alive;
          status ``healthy`` first, then the freshest heartbeat. Never one whose process died.

        ``round_robin`` and ``least_recently_selected`` record the choice (one short write);
        the others only read. :class:`NoMatchError` names the capabilities nobody offers;
        :class:`UnknownStrategyError` lists the strategies.
        """
        return self._definitions.select(kind, requires, strategy, workspace=workspace)

    # -- maintenance (see _maintenance.py) -------------------------------------

    def export(self, format: str = "nameplate", *, workspace: str | None = None) -> dict[str, Any]:
        """A point-in-time document of the registry, from one read transaction.

        ``format="nameplate"`` (default) holds workspaces, kinds, entries (ids kept) and tombstones,
        stamped with the ``revision`` it reflects; sessions, leases and ephemeral entries are process
        state and stay out. ``format="madsci"`` is MADSci's ``registry.json``: the entries of MADSci's
        kinds visible in ``workspace``, with the locks held on them (``export()`` without arguments is
        therefore not MADSci's ``LocalRegistryManager.export()``; pass ``"madsci"`` for that).
        """
        return self._maintenance.export(format, workspace=workspace)

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
        return self._maintenance.import_document(data, format=format, replace=replace, dry_run=dry_run,
                                                 workspace=workspace, progress=progress)

    def import_file(self, path: str | os.PathLike[str], *, format: str = "auto", replace: bool = False,
                    dry_run: bool = False, workspace: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> ImportPlan:
        """:meth:`import_document` on a JSON file; unreadable, truncated or ambiguous files (a key twice in
        one object) raise :class:`ImportFileError`."""
        return self._maintenance.import_file(path, format=format, replace=replace, dry_run=dry_run,
                                             workspace=workspace, progress=progress)

    def import_entries(self, data: dict[str, Any], merge: bool = True) -> None:
        """MADSci's ``LocalRegistryManager.import_entries``: a registry.json dict, merged or replacing.

        Acts in the current workspace; ``merge=False`` replaces that workspace's MADSci entries only.
        """
        return self._maintenance.import_entries(data, merge)

    @property
    def revision(self) -> int:
        """The newest revision in the event log (0 for a new registry)."""
        return self._maintenance.revision

    def changes(self, since: int = 0, limit: int | None = None, *, name: str | None = None,
                prefix: str | None = None, kind: str | None = None,
                workspace: str | None = None) -> builtins.list[Event]:
        """Events with a revision above ``since``, oldest first (at most ``limit`` of them).

        Filters, as for :meth:`follow`: ``name`` (a rename matches by its old or new name), ``prefix`` of
        the name, ``kind``, and ``workspace`` (the workspace the event happened in; default: every one).
        """
        flt = event_filter(name, prefix, kind, workspace)
        if flt.everything:
            return self._maintenance.changes(since, limit)
        self._ws(None)
        return watch_changes(self._backend, since, limit, flt)

    def follow(self, since: int | None = None, *, interval: float = 0.25, stop: Callable[[], bool] | None = None,
               name: str | None = None, prefix: str | None = None, kind: str | None = None,
               workspace: str | None = None) -> Iterator[Event]:
        """Yield events as they are committed, from ``since`` (default: now on), until ``stop()`` is true.

        Every matching event once, in revision order, also after a past ``since`` (etcd's watch with
        ``WithRev``). Filters: ``name``, name ``prefix``, ``kind``, and ``workspace`` (the workspace the
        event happened in; default: every one). It sleeps until the backend signals a commit (on
        SQLite: the WAL-index in shared memory, looked at every 1 to 5 ms) and reads the log only then,
        so an idle follower costs next to nothing; ``stop()`` is asked at least every ``interval`` seconds.
        """
        flt = event_filter(name, prefix, kind, workspace)
        self._ws(None)
        return watch_follow(self._backend, since, interval=interval, stop=stop, flt=flt)

    def gc_events(self, keep_days: float) -> dict[str, int]:
        """Prune events (and ended sessions) older than ``keep_days`` days. Revisions are never reused."""
        return self._maintenance.gc_events(keep_days)

    def check(self) -> CheckReport:
        """Integrity and foreign keys, definitions against kinds, leases, layers and indexes.

        ``report.problems`` are inconsistencies (``nameplate check`` exits 5); ``report.warnings`` are
        states that housekeeping resolves (a lease whose owner died and was not reaped yet).
        """
        return self._maintenance.check()

    def stats(self) -> dict[str, Any]:
        """Counts per kind and workspace, sessions, leases, revision, schema version, file and WAL sizes."""
        return self._maintenance.stats()

    def vacuum(self) -> dict[str, Any]:
        """Rebuild the file to reclaim free pages (takes the write lock for its duration).

        Returns the file sizes ``before`` and ``after`` and whether the final checkpoint was ``busy``.
        """
        return self._maintenance.vacuum()

    def checkpoint(self) -> dict[str, Any]:
        """Copy the WAL into the database and truncate it (readers still in the WAL keep part of it).

        Returns ``busy`` (a reader kept part of the WAL), ``wal_bytes_before`` and ``wal_bytes_after``.
        """
        return self._maintenance.checkpoint()

    def migration_status(self) -> MigrationStatus:
        """Applied and pending schema migrations of this (open, hence migrated) registry."""
        return self._maintenance.migration_status()

    @staticmethod
    def schema_status(db: str | os.PathLike[str] | None = None) -> MigrationStatus:
        """Applied and pending migrations of the database at ``db`` (default: discovery), without
        migrating it: opening a :class:`Registry` applies pending migrations, this only looks."""
        return Maintenance.schema_status(db)

    # -- coordination, as etcd and Consul give it (see _transaction.py, _watch.py) ---------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Group resolves, registers, updates, renames and deletes into one all-or-nothing write.

        ``with registry.transaction() as tx:`` queues operations (``tx.resolve``, ``tx.register``,
        ``tx.update``, ``tx.rename``, ``tx.delete``) and guards (``tx.require(name, kind, revision=R)``,
        ``tx.require_absent(name, kind)``); each returns at once, having only checked its arguments.
        When the block ends, names and definitions are validated outside any lock, then one write
        transaction checks every guard and applies every operation in order (later ones see earlier
        ones), or none: a failed guard raises :class:`RevisionMismatchError`, a failed operation its own
        error, and nothing is written. Results are :class:`Pending` objects whose ``.value`` (and
        ``.id``) is there after the block; ``tx.revision`` is the registry's revision after the commit.
        An exception raised inside the block discards the queue. Like etcd's ``Txn(If(...).Then(...))``.
        """
        tx = Transaction(self._ws)
        try:
            yield tx
        except BaseException:
            self._transactions.discard(tx)
            raise
        self._transactions.commit(tx)

    def wait_for_change(self, name: str, kind: str, *, since: int | None = None, timeout: float | None = None,
                        workspace: str | None = None) -> Event | None:
        """Block until ``(kind, name)`` changes as this workspace sees it; return that event, or ``None``
        after ``timeout`` seconds (``None``: no limit). Consul's blocking query.

        ``since`` is a revision (an :attr:`Entry.revision`, an :attr:`Event.rev`, ``registry.revision``;
        default: now): an event after it returns at once, so a loop that passes the last event's ``rev``
        misses nothing. A change counts in this workspace or an ancestor it inherits from: a create,
        update, register, rename to or from the name, promote, delete, hide, unhide, and lease events.
        It wakes on the commit (see :meth:`follow`), not on a fixed poll interval.
        """
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        return watch_wait(self._backend, self._store, ws, name, kind, since, timeout)

    # -- plugins: decorator registration, load_all, load errors (see _plugins.py) -----------------

    def registrar(self, kind: str, name: str | None = None, *, definition: Mapping[str, Any] | None = None,
                  capabilities: Iterable[str] = (), metadata: Mapping[str, Any] | None = None,
                  on_conflict: str = "error", workspace: str | None = None) -> Callable[[T], T]:
        """A decorator that registers a class or function under ``kind`` (catalogue's
        ``@registry.register(name)``) and returns it unchanged.

        ``name`` defaults to the object's ``__name__``. The entry's target is the object's dotted path
        (``"module:Qualified.name"``), so every process can :meth:`load` it, and the object is also
        bound here (:meth:`bind`), so :meth:`load` in this process returns that very object. The other
        arguments are :meth:`register`'s (``on_conflict="error"``: a second object under the same name
        is refused with :class:`NameTakenError`; registering the same object again writes nothing).

        An object other processes cannot import by its path is refused with
        :class:`NotImportableError` and nothing is written: a lambda, a function defined inside another
        function, an object of a script run as ``__main__`` (run it with ``python -m`` instead), an
        object of code run with ``exec``. For such objects use :meth:`bind` (this process only).
        The workspace is chosen when ``registrar()`` is called.
        """
        return self._plugins.registrar(kind, name, definition=definition, capabilities=capabilities,
                                       metadata=metadata, on_conflict=on_conflict, workspace=workspace)

    def load_all(self, kind: str, *, workspace: str | None = None,
                 on_load_failure: Callable[[Entry, str, BaseException], Any] | None = None) -> LoadResults:
        """:meth:`load` every entry of ``kind`` visible in the workspace that has a target or a binding
        (stevedore's ``ExtensionManager``).

        ``results.loaded`` maps names to objects, ``results.failed`` names to :class:`LoadFailure`
        records; one failure never stops the others. ``on_load_failure(entry, target, error)`` is called
        for each failure (``error`` is the :class:`TargetImportError`, its ``__cause__`` what the import
        raised); an exception it raises propagates, as with stevedore's ``on_load_failure_callback``.
        Each failure is also recorded on its entry, as every failed :meth:`load` is (see
        :meth:`load_error`).
        """
        return self._plugins.load_all(kind, workspace=workspace, on_load_failure=on_load_failure)

    def load_error(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> LoadFailure | None:
        """The last load error recorded for ``name`` by any process, or ``None``.

        Every :meth:`load` (and :meth:`load_all`) whose import fails records what it raised, when, and in
        which process, in a short transaction of its own after the import (never while user code runs
        under a lock); the next successful import of the target, in any process, clears it. Only the
        first :meth:`load` in a process imports; later ones answer from the process's cache and write
        nothing. :class:`EntryNotFoundError` if there is no such entry.
        """
        return self._plugins.load_error(name, kind, workspace=workspace)

    # -- aliases: other names of an entry, resolved by the registry (see _aliases.py) -------------

    def add_alias(self, alias: str, name: str, kind: str, *, replace: bool = False,
                  workspace: str | None = None) -> Entry:
        """Make ``alias`` another name of ``kind`` ``name`` in this workspace (and the ones below it).

        Stored as an entry of the kind ``alias`` (logged, exported, seen by every process). Refused:
        an alias that is the name itself, one whose target is an alias (one hop only), one named like
        a visible entry of the kind (:class:`NameTakenError`), one pointing elsewhere already
        (:class:`NameTakenError` unless ``replace=True``). The target need not exist yet.
        """
        return _aliases.add(self._definitions, self._store, self._ws(workspace), alias, name, kind, replace)

    def remove_alias(self, alias: str, kind: str, *, workspace: str | None = None) -> bool:
        """Forget an alias of this workspace (an inherited one is hidden here); False if there was none."""
        return _aliases.remove(self._store, self._ws(workspace), alias, kind,
                               delete=lambda n, k, w: self.delete(n, k, workspace=w),
                               hide=lambda n, k, w: self.hide(n, k, workspace=w))

    def resolve_alias(self, name: str, kind: str, *, workspace: str | None = None) -> str | None:
        """The name ``name`` is an alias of (for ``kind``, as seen in the workspace), or ``None``.

        ``lookup``/``get`` stay exact; callers that accept aliases ask this after a miss.
        """
        return _aliases.resolve(self._store, self._ws(workspace), name, kind)

    def aliases(self, kind: str, *, workspace: str | None = None) -> dict[str, str]:
        """Every alias of ``kind`` visible in the workspace: alias → the name it stands for."""
        return _aliases.aliases(self._store, self._ws(workspace), kind)

    # -- coordination on leases: semaphores and leader election (see _semaphore.py, _election.py) --

    def semaphore(self, name: str, limit: int, wait: float | None = None, *, workspace: str | None = None,
                  ttl: float | None = None, on_lost: Callable[[Lease], Any] | None = None) -> Lease:
        """Take one of the ``limit`` slots of semaphore ``name``: at most ``limit`` holders at once, from
        any processes. Returns the slot's :class:`Lease` (``lease.name`` is ``NAME#k``, its token fences
        that slot), a context manager like any lease; :class:`LeaseHeldError` when all are taken
        (``wait=seconds`` to wait, served in arrival order).

        A slot is freed as a lease is: released, its holder's process gone (at once), hung (after the
        session's ttl and the lock-delay), or its own ``ttl=`` run out. The first call fixes the limit;
        another limit raises :class:`SemaphoreLimitError`. Slots held by this process are not free to it:
        each call takes another.
        """
        return self._semaphores.acquire(name, limit, wait, workspace=workspace, ttl=ttl, on_lost=on_lost)

    def campaign(self, name: str, value: Any, *, timeout: float | None = None, workspace: str | None = None,
                 ttl: float | None = None, on_lost: Callable[[Lease], Any] | None = None) -> Leadership:
        """Block until this process leads election ``name`` and return the :class:`Leadership`, whose
        ``term`` (the lease's fencing token) grows at every new leader. ``value`` (JSON) is what
        :meth:`leader` and :meth:`observe` report. Campaigners are served in arrival order;
        ``timeout=seconds`` gives up with :class:`LeaseHeldError`. ``ttl=`` bounds the leadership by a
        ttl of its own, kept by ``leadership.lease.refresh()``.

        One leader at a time: a leader whose process dies is replaced at once, a hung one after its
        session's ttl and the lock-delay, and it learns of its loss (``lost``, ``on_lost``, ``LeaseLost``).
        """
        return self._elections.campaign(name, value, timeout=timeout, workspace=workspace, ttl=ttl, on_lost=on_lost)

    def leader(self, name: str, *, workspace: str | None = None) -> Leader | None:
        """The current leader of election ``name`` (value, term, process), or None: nobody leads, or the
        holder's process is gone."""
        return self._elections.leader(name, workspace=workspace)

    def observe(self, name: str, *, workspace: str | None = None, stop: Callable[[], bool] | None = None,
                timeout: float | None = None) -> Iterator[Leader]:
        """Yield the leader of election ``name`` now (if any) and each new leader after it (a new term),
        until ``stop()`` is true or ``timeout`` seconds passed. Between looks it waits for a commit (the
        commit signal, microseconds) or a quarter second at most."""
        return self._elections.observe(name, workspace=workspace, stop=stop, timeout=timeout)

    # -- entry health: providers and tracked processes report it (see _entry_health.py) ------------

    def report_health(self, name: str, kind: str, health: str | None, *, load: float | None = None,
                      info: Mapping[str, Any] | None = None, workspace: str | None = None) -> None:
        """Report, as this process, how the entry ``name`` is doing: ``health`` (``"healthy"``,
        ``"degraded"``, ``"critical"`` or ``None``), ``load`` (lower is better) and ``info`` (JSON).

        Each process has its own report per entry, which counts while the process lives (pid + start
        time, then its session's ttl) and is void the moment it dies. Written at once in one short
        transaction, not logged as an event. ``select(strategy="healthiest")`` heeds it: never a
        ``critical`` entry, healthy before degraded, then the lower load.
        """
        return self._health.report(name, kind, health, load=load, info=info, workspace=workspace)

    def watch_health(self, name: str, kind: str, check: Callable[[], Any], *, workspace: str | None = None) -> None:
        """Run ``check()`` now and on every heartbeat of this process's session, and report what it
        returns: a health word, ``(health, load)``, or a mapping with optional ``health`` and ``load``
        whose other keys become ``info``. A check that raises reports ``critical`` with the error.

        The callable stays in this process (and this Registry object); only its reports are shared. It
        runs in the heartbeat thread, outside any transaction, every ``ttl / 3`` seconds; a report is
        written only when it changes. Watching the same name again replaces the check.
        """
        return self._health.watch(name, kind, check, workspace=workspace)

    def unwatch_health(self, name: str, kind: str, *, workspace: str | None = None) -> bool:
        """Stop running the check given to :meth:`watch_health`; return whether there was one (the
        last report stays until this process ends)."""
        return self._health.unwatch(name, kind, workspace=workspace)

    def health(self, name: str, kind: str, *, workspace: str | None = None) -> EntryHealth:
        """How ``name`` is doing, judged now: its freshest live report, whether it is alive (its
        owner's process, or for an unowned entry some live reporter), and its owner's pid, host,
        label and session state. :class:`EntryNotFoundError` if no such entry is visible."""
        return self._health.health(name, kind, workspace=workspace)

    def list_health(self, kind: str, requires: Iterable[str] = (), *,
                    workspace: str | None = None) -> builtins.list[EntryHealth]:
        """:meth:`health` of every entry of ``kind`` visible here that offers all of ``requires``, by name."""
        return self._health.list(kind, requires, workspace=workspace)

    def delete_all(self, kind: str, *, workspace: str | None = None) -> builtins.list[Entry]:
        """Remove every entry of ``kind`` that this workspace itself defines, in one transaction, and
        return them (inherited entries and tombstones stay). An entry leased by another process raises
        :class:`LeaseHeldError` and nothing is removed; this process's own leases on them end with them."""
        ws = self._ws(workspace)
        check_kind_name(kind)
        ended: builtins.list[Lease] = []
        removal_guard = self._leasing.guard_removal(ended)
        entries = self._leasing.reaping_first(lambda: self._store.delete_all(ws, kind, guard=removal_guard))
        self._leasing.finish_removal(ended)
        return entries

    # -- streaming export and import (issue 15: memory flat in the registry's size) ---------------

    def write_export(self, file: TextIO, format: str = "nameplate", *, workspace: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Write :meth:`export`'s document to ``file`` as JSON text (indented, keys sorted, a final
        newline) without holding it in memory: one read snapshot, one entry at a time.

        Returns ``entries`` (how many were written) and ``revision`` (``None`` for ``"madsci"``, whose
        document is built whole). ``progress(done, total)`` follows the entries.
        """
        return self._maintenance.write_export(file, format, workspace=workspace, progress=progress)


def _validated(metadata: Mapping[str, Any]) -> dict[str, Any]:
    encode_object(metadata)
    return dict(metadata)
