"""The Registry: the one object users hold. Entries live here; other concepts come in as mixins."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ._api_maintenance import MaintenanceMixin
from ._api_sessions import SessionsMixin
from ._api_workspaces import WorkspacesMixin
from ._base import RegistryBase
from ._context import active_workspace
from ._lease import Lease
from ._records import Entry
from ._store import entry_by_pk
from ._validation import check_kind_name, check_name, encode_object
from .errors import EntryNotFoundError, InvalidInputError


class Registry(MaintenanceMixin, WorkspacesMixin, SessionsMixin, RegistryBase):
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
    """

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
                ephemeral: bool = False) -> str:
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

        Names are compared in Unicode NFC: "café" in either spelling is one name.
        """
        ws = self._ws(workspace)
        name = check_name(name)
        check_kind_name(kind)
        meta = None if metadata is None else _validated(metadata)
        if lock:
            return self._resolve_locked(ws, name, kind, meta, wait, ephemeral)
        owner = self.session().id if ephemeral else None
        return self._reaping_first(lambda: self._store.resolve(ws, name, kind, meta, guard=self._guard,
                                                                owner_session_id=owner, ephemeral=ephemeral))

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

    def list(self, kind: str | None = None, *, workspace: str | None = None) -> list[Entry]:
        """Every entry visible in the workspace (its own over its ancestors'), sorted by kind and name."""
        ws = self._ws(workspace)
        if kind is not None:
            check_kind_name(kind)
        return self._store.list(ws, kind)

    def update(self, name: str, kind: str | None = None, *, metadata: Mapping[str, Any],
               merge: bool = False, lease: Lease | None = None, workspace: str | None = None) -> Entry:
        """Replace (or with ``merge=True`` shallow-merge) the metadata of an entry of this workspace.

        With ``lease=``, the write is fenced: inside its transaction the lease must still be this
        process's, with the same token, else :class:`LeaseLost` and nothing is written. An entry leased
        by another process cannot be changed (:class:`LeaseHeldError`).
        """
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        meta = _validated(metadata)
        return self._reaping_first(lambda: self._update(ws, name, kind, meta, merge, lease))

    def _update(self, ws: str, name: str, kind: str | None, meta: dict[str, Any], merge: bool,
                lease: Lease | None) -> Entry:
        with self._backend.write() as tx:
            local = self._store.visible_local(tx, ws, name, kind, "update")
            if lease is not None:
                if lease.entry_pk != local.pk:
                    raise InvalidInputError(f"the lease given is on {lease.kind} {lease.name!r}, not on {name!r}",
                                            name=name, lease_name=lease.name)
                lease.fence(tx)
            self._guard(tx, local.pk, local.id, local.kind, lease=lease)
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
        return self._reaping_first(lambda: self._store.rename(ws, old, new, kind, guard=self._guard))

    def delete(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> Entry:
        """Remove an entry of this workspace and return what it was. The event log keeps its history."""
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        ended: list[Lease] = []
        entry = self._reaping_first(lambda: self._store.delete(ws, name, kind, guard=self._guard_removal(ended)))
        self._finish_removal(ended)
        return entry


def _validated(metadata: Mapping[str, Any]) -> dict[str, Any]:
    encode_object(metadata)
    return dict(metadata)
