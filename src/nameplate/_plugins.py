"""Plugins: decorator registration, loading a whole kind, and discovery that notices what went away.

What users of importlib's entry points, stevedore, catalogue and pluggy expect of a plugin registry, on
the registry's own guarantees:

- :meth:`Plugins.registrar` is catalogue's ``@registry.register("name")``: the decorated object's dotted
  path is stored as the entry's target (so every process can load it) and the object itself is bound in
  this process (so ``load`` here returns that very object).
- :meth:`Plugins.load_all` is stevedore's ``ExtensionManager``: every loadable entry of a kind, with a
  failure record for each one that does not import and an ``on_load_failure`` callback. Every failed
  import is recorded on its entry (``nameplate._load_errors``), for other processes and ``nameplate show``.
- :meth:`Plugins.discover` registers a group's entry points, as before, and also reports (or with
  ``forget_missing=True`` deletes) the entries discovered earlier whose distribution was uninstalled or
  no longer declares the entry point. :func:`stale_findings` is the ``plugin`` check behind ``check``.

Installed distributions are a property of one Python environment, and several environments may share a
registry on one host. Discovery therefore records ``sys.prefix`` as the entry's ``environment``, and
only entries discovered in the environment that looks (or recorded before environments were) are
judged: a ``nameplate check`` run from another virtualenv does not call every plugin uninstalled.
Reading distribution metadata is file I/O, so it happens before the write transaction, never inside it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from types import ModuleType
from typing import Any, TypeVar

from ._definitions import Definitions, Registration
from ._leasing import Leasing, WorkspaceOf
from ._load_errors import LoadFailure, failure_of, read_failure
from ._records import Entry
from ._store import Store, entry_by_pk
from ._validation import check_kind_name, check_name
from .backends.base import Backend, Tx
from .errors import EntryNotFoundError, InvalidInputError, NotImportableError, TargetImportError

T = TypeVar("T")

#: Why a discovered entry is stale (``StalePlugin.reason``).
UNINSTALLED = "uninstalled"
UNDECLARED = "no longer declared"
VERSION_CHANGED = "version changed"

_DISCOVERED = ("SELECT pk, metadata FROM entry WHERE workspace_id = ? AND hidden = 0 "
               "AND metadata LIKE '%entry_point%'")
_ALL_DISCOVERED = ("SELECT pk, metadata FROM entry WHERE hidden = 0 AND metadata LIKE '%entry_point%' "
                   "ORDER BY pk")
_STILL = "SELECT id, metadata FROM entry WHERE pk = ? AND hidden = 0"
_DELETE = "DELETE FROM entry WHERE pk = ?"


@dataclass(frozen=True, slots=True)
class LoadResults:
    """What :meth:`Registry.load_all` loaded: ``loaded`` maps each name to its object, ``failed`` each
    name whose target did not import to its :class:`LoadFailure` (also recorded on the entry).

    Entries without a target and without a bound object are identities, not plugins, and appear in
    neither.
    """

    kind: str
    workspace: str
    loaded: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, LoadFailure] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every loadable entry loaded."""
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "workspace": self.workspace, "loaded": sorted(self.loaded),
                "failed": {name: failure.to_dict() for name, failure in sorted(self.failed.items())}}


@dataclass(frozen=True, slots=True)
class StalePlugin:
    """A discovered entry that no longer matches what is installed in this Python environment.

    ``reason`` is ``"uninstalled"`` (its distribution is gone), ``"no longer declared"`` (the
    distribution is installed but no longer declares the entry point) or ``"version changed"`` (the
    installed version differs from the one recorded; ``discover()`` records the new one).
    ``installed_version`` is ``None`` when the distribution is not installed.
    """

    entry: Entry
    entry_point: str
    reason: str
    distribution: str | None
    recorded_version: str | None
    installed_version: str | None

    def __str__(self) -> str:
        where = f"{self.entry.workspace}/{self.entry.kind}/{self.entry.name}"
        dist = self.distribution or "its distribution"
        if self.reason == UNINSTALLED:
            what = f"{dist} {self.recorded_version or ''}".rstrip() + f" is not installed in {sys.prefix}"
        elif self.reason == UNDECLARED:
            what = f"{dist} {self.installed_version or ''}".rstrip() + " no longer declares it"
        else:
            what = f"{dist} is {self.installed_version} now, {self.recorded_version} when it was discovered"
        return f"{where} (entry point {self.entry_point}): {what}"

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry.to_dict(), "entry_point": self.entry_point, "reason": self.reason,
                "distribution": self.distribution, "recorded_version": self.recorded_version,
                "installed_version": self.installed_version, "message": str(self)}


class Discovery(list[Entry]):
    """What :meth:`Registry.discover` did: the list of entries registered from entry points (as it
    always was), plus ``missing``, the entries discovered earlier whose entry point is gone, and
    ``forgotten``, those of them deleted (``forget_missing=True``)."""

    def __init__(self, entries: Iterable[Entry] = (), missing: Iterable[StalePlugin] = (),
                 forgotten: Iterable[Entry] = ()) -> None:
        super().__init__(entries)
        self.missing: tuple[StalePlugin, ...] = tuple(missing)
        self.forgotten: tuple[Entry, ...] = tuple(forgotten)

    def to_dict(self) -> dict[str, Any]:
        return {"registered": [e.to_dict() for e in self], "missing": [m.to_dict() for m in self.missing],
                "forgotten": [e.to_dict() for e in self.forgotten]}


class Plugins:
    """Registration by decorator, loading a whole kind, and entry-point discovery (see the module)."""

    def __init__(self, backend: Backend, store: Store, workspace_of: WorkspaceOf, definitions: Definitions,
                 leasing: Leasing) -> None:
        self._backend = backend
        self._store = store
        self._ws = workspace_of
        self._definitions = definitions
        self._leasing = leasing

    # -- decorator registration --------------------------------------------------------------------

    def registrar(self, kind: str, name: str | None = None, *, definition: Mapping[str, Any] | None = None,
                  capabilities: Iterable[str] = (), metadata: Mapping[str, Any] | None = None,
                  on_conflict: str = "error", workspace: str | None = None) -> Callable[[T], T]:
        ws = self._ws(workspace)
        self._definitions.kind(kind)  # an unknown kind is refused here, not at the first decoration
        chosen = None if name is None else check_name(name)
        caps: Any = capabilities if isinstance(capabilities, str) else tuple(capabilities)

        def register(obj: T) -> T:
            target = importable_path(obj)
            own_name = getattr(obj, "__name__", None)
            entry_name = chosen if chosen is not None else check_name(
                own_name if isinstance(own_name, str) else target.rpartition(".")[2].rpartition(":")[2])
            self._definitions.register(entry_name, kind, definition, target=target, capabilities=caps,
                                       metadata=metadata, on_conflict=on_conflict, workspace=ws)
            self._definitions.bind(entry_name, kind, obj, workspace=ws)
            return obj

        return register

    # -- loading -----------------------------------------------------------------------------------

    def load_all(self, kind: str, *, workspace: str | None = None,
                 on_load_failure: Callable[[Entry, str, BaseException], Any] | None = None) -> LoadResults:
        ws = self._ws(workspace)
        check_kind_name(kind)
        if on_load_failure is not None and not callable(on_load_failure):
            raise InvalidInputError(f"on_load_failure must be callable, not {on_load_failure!r}",
                                    on_load_failure=repr(on_load_failure))
        results = LoadResults(kind, ws)
        for entry in self._store.list(ws, kind):
            try:
                results.loaded[entry.name] = self._definitions.load(entry.name, kind, workspace=ws)
            except EntryNotFoundError:
                continue  # deleted since it was listed
            except TargetImportError as error:
                if getattr(error, "target", None) is None:
                    continue  # an identity without a target: nothing to load
                results.failed[entry.name] = failure_of(entry, error)
                if on_load_failure is not None:
                    on_load_failure(entry, entry.target or "", error)
        return results

    def load_error(self, name: str, kind: str | None = None, *, workspace: str | None = None) -> LoadFailure | None:
        ws = self._ws(workspace)
        name = check_name(name)
        if kind is not None:
            check_kind_name(kind)
        entry = self._store.get(ws, name, kind)
        if entry is None:
            raise EntryNotFoundError(f"no entry {f'{kind} ' if kind else ''}{name!r} in workspace {ws!r}",
                                     name=name, kind=kind, workspace=ws)
        with self._backend.read() as tx:
            return read_failure(tx, entry)

    # -- discovery ---------------------------------------------------------------------------------

    def discover(self, group: str, *, kind: str, workspace: str | None, forget_missing: bool) -> Discovery:
        ws = self._ws(workspace)
        self._definitions.kind(kind)  # refused even when the group has no entry points yet
        if not isinstance(group, str) or not group:
            raise InvalidInputError(f"group must be a non-empty string, not {group!r}", group=repr(group))
        if not isinstance(forget_missing, bool):
            raise InvalidInputError(f"forget_missing must be True or False, not {forget_missing!r}",
                                    forget_missing=repr(forget_missing))
        items: list[Registration] = []
        origins: list[str | None] = []
        for point in sorted(importlib_metadata.entry_points(group=group), key=lambda p: p.name):
            point_kind, sep, point_name = point.name.partition(":")
            if not sep:
                point_kind, point_name = kind, point.name
            origin = f"{group}:{point.name}"
            provenance: dict[str, Any] = {"entry_point": origin, "environment": sys.prefix}
            dist = getattr(point, "dist", None)
            if dist is not None:
                provenance.update({"distribution": dist.name, "version": dist.version})
            items.append(Registration(point_name, point_kind, None, point.value, (), provenance))
            origins.append(origin)
        missing = self._missing(ws, group, {o for o in origins if o is not None})
        if not items and not (forget_missing and missing):
            return Discovery((), missing)
        doomed = missing if forget_missing else []
        forgotten: list[Entry] = []
        ended: list[Any] = []
        removal_guard = self._leasing.guard_removal(ended)

        def forget(tx: Tx) -> None:  # first, so an entry point that took a forgotten name gets a new entry
            forgotten.clear()
            ended.clear()
            for stale in doomed:
                entry = self._forget(tx, stale, removal_guard)
                if entry is not None:
                    forgotten.append(entry)

        registered = self._definitions.register_discovered(ws, items, origins, before=forget)
        self._leasing.finish_removal(ended)
        return Discovery(registered, missing, forgotten)

    def _missing(self, ws: str, group: str, declared: set[str]) -> list[StalePlugin]:
        """Entries of this workspace discovered in ``group`` from this environment whose entry point is
        no longer declared by anything installed here (read first, judged outside any transaction)."""
        with self._backend.read() as tx:
            rows = tx.execute(_DISCOVERED, (self._store.workspace_id(tx, ws),)).fetchall()
            found = [(entry_by_pk(tx, pk), meta) for pk, text in rows if (meta := _metadata(text)) is not None]
        distributions = _Distributions()
        missing = []
        for entry, meta in found:
            origin = meta.get("entry_point")
            if not _judged_here(meta) or not isinstance(origin, str) or not origin.startswith(f"{group}:"):
                continue
            if origin in declared:
                continue
            dist_name = meta.get("distribution")
            installed = distributions.get(dist_name)
            missing.append(StalePlugin(entry, origin, UNDECLARED if installed is not None else UNINSTALLED,
                                       _text(dist_name), _text(meta.get("version")),
                                       None if installed is None else installed.version))
        return missing

    def _forget(self, tx: Tx, stale: StalePlugin, guard: Callable[[Tx, int, str, str], None]) -> Entry | None:
        """Delete a missing plugin's entry, unless it changed since it was judged (re-registered, renamed
        away or deleted by someone else): then it is left alone."""
        pk = self._pk_of(tx, stale.entry.id)
        row = None if pk is None else tx.execute(_STILL, (pk,)).fetchone()
        if pk is None or row is None or row[0] != stale.entry.id:
            return None
        if (_metadata(row[1]) or {}).get("entry_point") != stale.entry_point:
            return None
        guard(tx, pk, stale.entry.id, stale.entry.kind)
        entry = entry_by_pk(tx, pk)
        tx.execute(_DELETE, (pk,))
        self._store.record(tx, "delete", workspace=entry.workspace, kind=entry.kind, name=entry.name,
                           entry_id=entry.id, metadata=dict(entry.metadata),
                           reason=f"plugin {stale.reason}: {stale.entry_point}")
        return entry

    @staticmethod
    def _pk_of(tx: Tx, entry_id: str) -> int | None:
        row = tx.execute("SELECT pk FROM entry WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None else int(row[0])


def importable_path(obj: Any) -> str:
    """The ``"module:qualname"`` another process imports to get ``obj``, or :class:`NotImportableError`.

    The attribute cannot be looked up yet (a decorator runs before its module binds the name), so the
    path is judged by its shape: a real module under that name, and a qualified name without
    ``<lambda>`` or ``<locals>``. An object of a script run as ``__main__`` is refused (another process
    would import its own ``__main__``), unless the script was run with ``python -m package.module``.
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    what = f"{obj!r}"
    advice = "define it at the top level of an importable module, or bind() it for this process only"
    if isinstance(obj, ModuleType):
        raise NotImportableError(f"module {obj.__name__!r} is a module; a target is 'module:attribute', so "
                                 "register the class or function that stands for the plugin, or bind() it for "
                                 "this process only", object=obj.__name__)
    if not isinstance(module, str) or not isinstance(qualname, str) or not qualname:
        raise NotImportableError(f"{what} has no __module__ and __qualname__ to import it by; {advice}",
                                 object=what)
    if "<" in qualname:
        raise NotImportableError(f"{what} is a lambda or is defined inside a function ({module}.{qualname}): other "
                                 f"processes cannot import it; {advice}", object=what, target=f"{module}:{qualname}")
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        real = getattr(spec, "name", None)
        if not isinstance(real, str) or real.rpartition(".")[2] == "__main__":
            raise NotImportableError(f"{what} is defined in the script being run (__main__): other processes would "
                                     f"import their own __main__; {advice}", object=what,
                                     target=f"__main__:{qualname}")
        return f"{real}:{qualname}"  # run with -m: importable under its real name
    if module not in sys.modules:
        raise NotImportableError(f"{what} comes from {module!r}, which is not an imported module (code run with "
                                 f"exec?): other processes cannot import it; {advice}", object=what,
                                 target=f"{module}:{qualname}")
    return f"{module}:{qualname}"


def stale_findings(backend: Backend) -> tuple[list[str], int]:
    """The ``plugin`` check: every discovered entry (any workspace) that no longer matches what is
    installed in this environment, as one-line messages; and how many discovered entries were judged."""
    with backend.read() as tx:
        found = [(entry_by_pk(tx, pk), meta) for pk, text in tx.execute(_ALL_DISCOVERED).fetchall()
                 if (meta := _metadata(text)) is not None]
    distributions = _Distributions()
    messages = []
    judged = 0
    for entry, meta in found:
        origin = meta.get("entry_point")
        if not _judged_here(meta) or not isinstance(origin, str) or ":" not in origin:
            continue
        judged += 1
        stale = _judge(entry, meta, origin, distributions)
        if stale is not None:
            advice = ("`nameplate discover --forget-missing` forgets it" if stale.reason != VERSION_CHANGED
                      else "`nameplate discover` records the installed version")
            messages.append(f"{stale}; {advice}")
    return messages, judged


def _judge(entry: Entry, meta: dict[str, Any], origin: str, distributions: _Distributions) -> StalePlugin | None:
    group, _, point_name = origin.partition(":")
    dist_name = _text(meta.get("distribution"))
    recorded = _text(meta.get("version"))
    if dist_name is None:  # discovered from an entry point without a distribution: only the point can go
        if importlib_metadata.entry_points(group=group, name=point_name):
            return None
        return StalePlugin(entry, origin, UNDECLARED, None, recorded, None)
    installed = distributions.get(dist_name)
    if installed is None:
        return StalePlugin(entry, origin, UNINSTALLED, dist_name, recorded, None)
    if (group, point_name) not in distributions.declared(installed):
        return StalePlugin(entry, origin, UNDECLARED, dist_name, recorded, installed.version)
    if recorded is not None and installed.version != recorded:
        return StalePlugin(entry, origin, VERSION_CHANGED, dist_name, recorded, installed.version)
    return None


class _Distributions:
    """Installed distributions by name, each looked up once per call (a lookup scans ``sys.path``)."""

    def __init__(self) -> None:
        self._found: dict[str, importlib_metadata.Distribution | None] = {}
        self._declared: dict[int, frozenset[tuple[str, str]]] = {}

    def get(self, name: Any) -> importlib_metadata.Distribution | None:
        if not isinstance(name, str) or not name:
            return None
        if name not in self._found:
            try:
                self._found[name] = importlib_metadata.distribution(name)
            except importlib_metadata.PackageNotFoundError:
                self._found[name] = None
        return self._found[name]

    def declared(self, dist: importlib_metadata.Distribution) -> frozenset[tuple[str, str]]:
        """The ``(group, name)`` of every entry point ``dist`` declares (parsed once: reading and parsing
        ``entry_points.txt`` for each entry made a check of 100 plugins take 29 ms instead of 3.5 ms)."""
        key = id(dist)
        if key not in self._declared:
            self._declared[key] = frozenset((p.group, p.name) for p in dist.entry_points)
        return self._declared[key]


def _judged_here(meta: dict[str, Any]) -> bool:
    """Whether this environment can judge an entry: it was discovered here, or before environments
    were recorded."""
    environment = meta.get("environment")
    return environment is None or environment == sys.prefix


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _metadata(text: str) -> dict[str, Any] | None:
    """A row's metadata object; ``None`` for a damaged one, which the ``metadata`` check reports."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
