"""Export and import: nameplate's own versioned document, and MADSci's ``registry.json``.

An export is one read transaction, stamped with the revision (the last event) it reflects. It holds the
durable state: workspaces (parents first), kinds (built-in ones by name, user ones with their schema),
entries with their ids, and tombstones. Process-bound state (sessions, leases, entries tied to a live
session with ``ephemeral=True``) is left out: it belongs to processes of the registry it came from.

An import validates the whole document first (structure, version, names, ids, duplicates, kinds,
parents, definitions against the kind they will be stored under), plans against the registry as it
is, and only then writes everything in one transaction: ``merge`` keeps what exists and adds what is
new; ``replace`` makes the file the registry. Validation (which may run kinds' validators, user code)
happens outside the write lock; the write re-judges only what depends on the registry's contents.

MADSci's ``LocalRegistryManager`` file (``madsci.common.types.registry_types.LocalRegistry``) maps each
name to ``{id, component_type, created_at, last_seen, metadata, lock, workcell_id}``. Its names form one
namespace, seen here as the entries of MADSci's kinds visible in one workspace (``core`` unless told):

* merge: a name the workspace already sees (under any MADSci kind, own or inherited) is kept;
* replace: the workspace's view of MADSci kinds becomes the file. Only the workspace's own rows are
  written: own entries the file lacks are deleted, inherited ones it lacks are hidden (tombstones),
  an inherited entry with the file's id and kind is kept as is. Other kinds and workspaces are untouched.

``workcell_id`` travels in the entry's definition. ``lock`` describes a process of the old registry and
is not imported (the plan counts such locks). The ``workflow`` component type has no built-in kind in
nameplate; an import that needs it defines it (schema-free, like the other MADSci kinds). The file's
own ``created_at``/``updated_at`` are derived on export (earliest entry creation, latest change).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from peewee import JOIN, fn
from ulid import ULID

from . import _json_stream
from ._context import CORE
from ._kind_schema import Kind, build_kind, candidate_kind, list_kinds, name_problems, save_kind, validate
from ._layers import create_workspace
from ._models import Workspace as WorkspaceRow
from ._models import WorkspaceAncestor as WorkspaceAncestorRow
from ._records import utc
from ._store import Store, insert_rows
from ._validation import (
    MAX_DEPTH,
    check_capabilities,
    check_kind_name,
    check_name,
    check_target,
    check_workspace_name,
    encode_object,
)
from .backends.base import Backend, Tx
from .errors import ConflictError, ImportFileError, InvalidInputError, NameplateError, UnknownWorkspaceError

FORMAT = "nameplate-export"
VERSION = 1
MADSCI_VERSION = 1
#: ``madsci.common.types.registry_types.ComponentType``.
MADSCI_KINDS = ("node", "module", "manager", "experiment", "workcell", "workflow")
_MADSCI_TOP = frozenset({"version", "created_at", "updated_at", "entries"})
_MADSCI_ENTRY = frozenset({"id", "component_type", "created_at", "last_seen", "metadata", "lock", "workcell_id"})
_ENTRY_FIELDS = frozenset({"id", "workspace", "kind", "name", "metadata", "capabilities", "definition", "target",
                           "created_at", "updated_at", "last_seen_at"})
_KIND_FIELDS = frozenset({"name", "description", "required", "optional", "defaults", "name_pattern", "validator",
                          "strict", "builtin"})
_WORKSPACE_FIELDS = frozenset({"name", "parent", "description", "created_at"})
_TOMBSTONE_FIELDS = frozenset({"workspace", "kind", "name"})
#: How often an import validates again (outside the write lock) because kinds were redefined meanwhile.
_ATTEMPTS = 3
_REVISION = "SELECT coalesce(max(rev), 0) FROM event"
_KINDS_FINGERPRINT = "SELECT name, updated_at FROM kind ORDER BY name"


def iso(timestamp: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC with a ``Z``, as pydantic writes MADSci's times."""
    return utc(timestamp).isoformat().replace("+00:00", "Z")


def parse_time(value: Any, where: str, problems: list[str]) -> float:
    """An ISO 8601 time as seconds since the epoch (naive times are UTC); problems are appended."""
    if not isinstance(value, str):
        problems.append(f"{where}: expected an ISO 8601 time string, got {value!r}")
        return 0.0
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        problems.append(f"{where}: {value!r} is not an ISO 8601 time")
        return 0.0
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def read_json(path: Path) -> Any:
    """Parse a JSON file whole; unreadable, truncated or ambiguous files raise ImportFileError."""
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ImportFileError(f"{path} is a directory, not an export file", path=str(path),
                              problems=["is a directory"]) from None
    except OSError as error:
        raise _unreadable(path, error) from None
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as error:
        raise _duplicate_key(path, error.key) from None
    except RecursionError:
        raise _too_deep(path) from None
    except json.JSONDecodeError as error:
        raise _not_json(path, error) from None


def _unreadable(path: Path, error: OSError) -> ImportFileError:
    return ImportFileError(f"cannot read {path}: {error.strerror or error}", path=str(path), problems=[str(error)])


def _not_utf8(path: Path) -> ImportFileError:
    return ImportFileError(f"{path} is not UTF-8 text; export files are JSON", path=str(path), problems=["not UTF-8"])


def _duplicate_key(path: Path, key: str) -> ImportFileError:
    return ImportFileError(f"{path} has the key {key!r} twice in one object; JSON parsers keep only one of them, so "
                           "nothing was imported", path=str(path), problems=[f"duplicate key {key!r}"])


def _too_deep(path: Path) -> ImportFileError:
    # The C decoder gives up on nesting deeper than the interpreter's recursion limit; nothing we
    # store may nest past MAX_DEPTH anyway, so the file cannot be imported.
    return ImportFileError(f"{path} nests objects or arrays deeper than {MAX_DEPTH} levels; nothing was imported",
                           path=str(path), problems=["nested too deep"])


def _not_json(path: Path, error: json.JSONDecodeError) -> ImportFileError:
    return ImportFileError(f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}); "
                           "is it truncated?", path=str(path), problems=[str(error)])


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of two equal keys silently: in a MADSci file that would drop an entry.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


# -- export ----------------------------------------------------------------------------------------------


def export_document(backend: Backend) -> dict[str, Any]:
    """The registry's durable state as a ``nameplate-export`` document, from one read snapshot."""
    with backend.read() as tx:
        document, entries = _export_parts(backend, tx)
        document["entries"] = list(entries)
    return document


def write_export(backend: Backend, write: Callable[[str], object],
                 progress: Callable[[int, int], None] | None = None) -> tuple[int, int]:
    """Write :func:`export_document`'s text (``json.dumps(..., indent=2, sort_keys=True)`` and a newline)
    piece by piece from one read snapshot, holding one entry at a time; return (entries, revision).

    Memory stays flat whatever the registry's size: the entries are read in index order per
    (workspace, kind), never sorted nor collected.
    """
    with backend.bulk(), backend.read() as tx:
        document, entries = _export_parts(backend, tx)
        total = int(tx.execute(f"SELECT count(*) FROM entry WHERE {_EXPORTED} AND hidden = 0").fetchone()[0])
        head, tail = json.dumps(dict(document, entries=_HOLE), indent=2, sort_keys=True).split(json.dumps(_HOLE))
        count = 0
        for entry in entries:
            if count == 0:
                write(head + "[\n    ")
            else:
                write(",\n    ")
            write(json.dumps(entry, indent=2, sort_keys=True).replace("\n", "\n    "))
            count += 1
            if progress is not None and count % 500 == 0:
                progress(count, total)
        write((head + "[]" if count == 0 else "\n  ]") + tail + "\n")
        if progress is not None:
            progress(count, total)
    return count, int(document["revision"])


#: Where the entries go in the document's text while the rest is encoded around them.
_HOLE = "\x00entries\x00"
#: The rows an export holds: process-bound (ephemeral) entries belong to the registry they came from.
_EXPORTED = "ephemeral = 0"


def _export_parts(backend: Backend, tx: Tx) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The document without its entries, and the entries in order (workspace, kind, name), lazily."""
    parent = WorkspaceRow.alias()
    workspaces_query = (WorkspaceRow.select(WorkspaceRow.name, parent.name.alias("parent"), WorkspaceRow.description,
                                            WorkspaceRow.created_at)
                        .join(parent, JOIN.LEFT_OUTER, on=WorkspaceRow.parent == parent.id)
                        .join_from(WorkspaceRow, WorkspaceAncestorRow,
                                   on=WorkspaceAncestorRow.workspace == WorkspaceRow.id)
                        .group_by(WorkspaceRow.id, parent.name)
                        .order_by(fn.MAX(WorkspaceAncestorRow.depth), WorkspaceRow.name))  # parents first
    revision = tx.execute(_REVISION).fetchone()[0]
    workspaces = list(workspaces_query.namedtuples().execute(backend.peewee))
    kinds = list_kinds(tx)
    schema_version = backend.schema_version(tx)
    tombstones = [{"workspace": ws, "kind": kind, "name": name} for ws, kind, name in tx.execute(
        "SELECT w.name, k.name, e.name FROM entry AS e JOIN kind AS k ON k.id = e.kind_id JOIN workspace AS w ON "
        f"w.id = e.workspace_id WHERE e.hidden = 1 AND e.{_EXPORTED} ORDER BY w.name, k.name, e.name").fetchall()]
    # Names in SQL's binary order are Python's code-point order: the pairs sort the same either way.
    pairs = sorted((w, k) for w in tx.execute("SELECT name, id FROM workspace").fetchall()
                   for k in tx.execute("SELECT name, id FROM kind").fetchall())
    document = {
        "format": FORMAT, "version": VERSION, "revision": int(revision), "exported_at": iso(time.time()),
        "schema_version": schema_version,
        "workspaces": [{"name": w.name, "parent": w.parent, "description": w.description,
                        "created_at": iso(w.created_at)} for w in workspaces],
        # Built-in kinds travel by name only: their schema belongs to the nameplate that reads the file.
        "kinds": [{"name": k.name, "builtin": True} if k.builtin else k.to_dict() for k in kinds],
        "entries": [],
        "tombstones": tombstones,
    }

    def entries() -> Iterator[dict[str, Any]]:
        for (ws, ws_id), (kind, kind_id) in pairs:
            for entry_id, name, metadata, capabilities, definition, target, created, updated, seen in tx.execute(
                    "SELECT id, name, metadata, capabilities, definition, target, created_at, updated_at, "
                    f"last_seen_at FROM entry WHERE workspace_id = ? AND kind_id = ? AND {_EXPORTED} AND hidden = 0 "
                    "ORDER BY name", (ws_id, kind_id)):
                yield {"id": entry_id, "workspace": ws, "kind": kind, "name": name, "metadata": json.loads(metadata),
                       "capabilities": json.loads(capabilities),
                       "definition": None if definition is None else json.loads(definition), "target": target,
                       "created_at": iso(created), "updated_at": iso(updated), "last_seen_at": iso(seen)}

    return document, entries()


def export_madsci(backend: Backend, workspace: str) -> dict[str, Any]:
    """The entries of MADSci's kinds visible in ``workspace``, as a ``registry.json`` document."""
    marks = ",".join("?" * len(MADSCI_KINDS))
    with backend.read() as tx:
        if tx.execute("SELECT 1 FROM workspace WHERE name = ?", (workspace,)).fetchone() is None:
            raise UnknownWorkspaceError(f"workspace {workspace!r} does not exist", workspace=workspace)
        rows = tx.execute(
            "SELECT r.name, r.id, k.name, r.created_at, r.last_seen_at, r.metadata, r.definition, r.pk, r.updated_at "
            "FROM resolved_entry AS r JOIN workspace AS viewer ON viewer.id = r.viewer_id "
            f"JOIN kind AS k ON k.id = r.kind_id WHERE viewer.name = ? AND r.hidden = 0 AND k.name IN ({marks}) "
            "ORDER BY r.created_at, r.name", (workspace, *MADSCI_KINDS)).fetchall()
        locks = {r[0]: r[1:] for r in tx.execute(
            "SELECT l.entry_pk, s.pid, s.hostname, s.id, l.acquired_at, s.beat_at, s.ttl FROM lease AS l "
            "JOIN session AS s ON s.id = l.session_id").fetchall()}
    entries: dict[str, Any] = {}
    for name, entry_id, kind, created, seen, metadata, definition, pk, _ in rows:
        if name in entries:
            raise ConflictError(f"{name!r} exists as both {entries[name]['component_type']} and {kind} in workspace "
                                f"{workspace!r}; MADSci's registry.json holds one entry per name, so rename one of "
                                "them first", name=name, kinds=[entries[name]["component_type"], kind])
        lock = locks.get(pk)
        entries[name] = {
            "id": entry_id, "component_type": kind, "created_at": iso(created), "last_seen": iso(seen),
            "metadata": json.loads(metadata),
            "lock": None if lock is None else {
                "holder_pid": lock[0], "holder_host": lock[1], "holder_instance": lock[2],
                "acquired_at": iso(lock[3]), "heartbeat_at": iso(lock[4]), "expires_at": iso(lock[4] + lock[5])},
            "workcell_id": (json.loads(definition) or {}).get("workcell_id") if definition else None,
        }
    created_at = min((r[3] for r in rows), default=time.time())
    updated_at = max((max(r[4], r[8]) for r in rows), default=time.time())
    return {"version": MADSCI_VERSION, "created_at": iso(created_at), "updated_at": iso(updated_at),
            "entries": entries}


# -- import: the document ----------------------------------------------------------------------------------


@dataclass
class ImportPlan:
    """What an import does (or, with ``dry_run``, would do). Entries are named ``workspace/kind/name``.

    ``revision`` is the registry revision the plan was made against; ``applied`` says whether it was
    written (then ``revision`` is the one the import itself produced).
    """

    mode: str
    format: str
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    workspaces_added: list[str] = field(default_factory=list)
    workspaces_removed: list[str] = field(default_factory=list)
    kinds_added: list[str] = field(default_factory=list)
    tombstones_added: list[str] = field(default_factory=list)
    locks_dropped: int = 0
    revision: int = 0
    applied: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {key: getattr(self, key) for key in self.__dataclass_fields__}

    @property
    def changes(self) -> int:
        """How many rows (entries, tombstones, workspaces, kinds) the import writes or deletes."""
        return (len(self.added) + len(self.replaced) + len(self.removed) + len(self.workspaces_added)
                + len(self.workspaces_removed) + len(self.kinds_added) + len(self.tombstones_added))

    def summary(self) -> str:
        """One line for humans: the counts per category."""
        verb = "imported" if self.applied else "would import"
        text = (f"{verb} ({self.mode}, {self.format}): {len(self.added)} added, {len(self.kept)} kept, "
                f"{len(self.replaced)} replaced, {len(self.removed)} removed; {len(self.workspaces_added)} "
                f"workspaces and {len(self.kinds_added)} kinds added")
        if self.workspaces_removed:
            text += f", {len(self.workspaces_removed)} workspaces removed"
        if self.tombstones_added:
            text += f", {len(self.tombstones_added)} names hidden"
        if self.locks_dropped:
            text += f"; {self.locks_dropped} locks of the old registry not imported"
        return text


@dataclass
class _Document:
    workspaces: list[dict[str, Any]]
    kinds: list[dict[str, Any]]
    entries: _Staged
    tombstones: list[dict[str, Any]]
    format: str
    workspace: str = CORE  # MADSci: the workspace the file is the view of
    locks: int = 0


@dataclass
class _Ops:
    """The rows an import writes, decided by the plan."""

    wipe: bool = False
    define_kinds: list[dict[str, Any]] = field(default_factory=list)
    create_workspaces: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[int, str, str, str, str, bool]] = field(default_factory=list)  # pk, id, ws, kind, name, hidden
    #: Positions of staged entries that are not written (a merge keeps what the registry has).
    skip: set[int] = field(default_factory=set)
    hide: list[tuple[str, str, str]] = field(default_factory=list)


class _Staged:
    """The entries of a document being imported, checked one by one as they are read and kept in a
    private temporary SQLite file (deleted when closed), not in memory: a 1M-entry import held 2-3 KiB
    per entry as dicts. Each row is what the import writes (names normalised, JSON encoded, times
    parsed); ``pos`` is the entry's position in the document, which every problem names.

    What depends on the registry or on the whole document (duplicates, workspaces, kinds) is judged
    later over these rows, with SQL over the staged rows instead of sets of every name.
    """

    COLUMNS = ("pos, id, workspace, kind, name, metadata, capabilities, definition, target, created_at, "
               "updated_at, last_seen_at")

    def __init__(self) -> None:
        self._conn = sqlite3.connect("", isolation_level=None)  # "": a private temporary file
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -4096", "temp_store = FILE"):
            self._conn.execute(f"PRAGMA {pragma}")
        self._conn.execute(f"CREATE TABLE staged ({self.COLUMNS})")
        self._batch: list[tuple[Any, ...]] = []
        #: Problems of single entries, as (position, text).
        self.problems: list[tuple[int, str]] = []
        #: Problems of the section's shape (unknown fields, an element that is not an object).
        self.shape_problems: list[str] = []
        self.count = 0
        self._indexed = False
        self._stamps: dict[str, float] = {}

    def add(self, index: int, entry: Any) -> None:
        """Check one entry on its own (nothing that depends on the registry or the other entries)."""
        self.count = index + 1
        if not isinstance(entry, Mapping):
            if not self.shape_problems or not self.shape_problems[0].startswith('"entries"'):
                self.shape_problems.insert(0, "\"entries\" must be a list of objects")
            return
        if not entry.keys() <= _ENTRY_FIELDS:
            _unknown_fields(entry, _ENTRY_FIELDS, f"entries[{index}]", self.shape_problems)
        problems: list[str] = []
        # Built only for a problem: a million entries were spending a second formatting it.
        where = _Where(index, entry)
        try:
            name = check_name(entry.get("name"))
            kind = check_kind_name(entry.get("kind"))
        except InvalidInputError as error:
            self.problems.append((index, f"{where}: {error}"))
            return
        entry_id = entry.get("id")
        if not (isinstance(entry_id, str) and _ULID_TEXT.fullmatch(entry_id)):
            _check_id(entry_id, str(where), problems)
        workspace = entry.get("workspace")
        if not isinstance(workspace, str):
            problems.append(f"{where}: workspace {workspace!r} does not exist and is not in the file")
            workspace = None
        metadata = capabilities = target = None
        try:
            given = entry.get("metadata", {})
            metadata = "{}" if type(given) is dict and not given else encode_object(given)
            listed = entry.get("capabilities")
            capabilities = json.dumps(check_capabilities(listed)) if listed else "[]"
            if entry.get("target") is not None:
                target = check_target(entry["target"])
        except InvalidInputError as error:
            problems.append(f"{where}: {error}")
        definition = entry.get("definition")
        stamps = [self._stamp(entry.get(stamp), where, stamp, problems)
                  for stamp in ("created_at", "updated_at", "last_seen_at")]
        self.problems.extend((index, problem) for problem in problems)
        self._batch.append((index, entry_id if isinstance(entry_id, str) else None, workspace, kind, name, metadata,
                            capabilities, None if definition is None else json.dumps(definition), target, *stamps))
        if len(self._batch) >= 5000:
            self._flush()

    def _stamp(self, value: Any, where: _Where, stamp: str, problems: list[str]) -> float:
        """:func:`_parse_stamp`, remembering the last few texts: an entry's three times are often one,
        and entries made together share them."""
        known = self._stamps.get(value) if type(value) is str else None
        if known is not None:
            return known
        reported = len(problems)
        parsed = _parse_stamp(value, f"{where}.{stamp}", problems)
        if type(value) is str and len(problems) == reported:  # a bad time is reported for every entry
            if len(self._stamps) >= 4096:
                self._stamps.clear()
            self._stamps[value] = parsed
        return parsed

    def _flush(self) -> None:
        self._conn.executemany(f"INSERT INTO staged VALUES ({', '.join('?' * 12)})", self._batch)
        self._batch.clear()

    def query(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Rows of the staged entries (indexed on id and on (workspace, kind, name) once all are in)."""
        if self._batch:
            self._flush()
        if not self._indexed:
            self._conn.execute("CREATE INDEX staged_by_id ON staged (id)")
            self._conn.execute("CREATE INDEX staged_by_name ON staged (workspace, kind, name)")
            self._indexed = True
        return self._conn.execute(sql, params)

    def has(self, workspace: str, kind: str, name: str) -> bool:
        return self.query("SELECT 1 FROM staged WHERE workspace = ? AND kind = ? AND name = ?",
                          (workspace, kind, name)).fetchone() is not None

    def close(self) -> None:
        self._conn.close()


def _fail(problems: list[str], source: str) -> ImportFileError:
    shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    return ImportFileError(f"{source} cannot be imported ({len(problems)} problem(s), nothing was changed): {shown}",
                           problems=problems)


def _conflict(problems: list[str]) -> ConflictError:
    shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    return ConflictError(f"the import conflicts with the registry (nothing was changed): {shown}", problems=problems)


def detect_format(data: Any) -> str:
    if isinstance(data, Mapping) and data.get("format") == FORMAT:
        return "nameplate"
    if isinstance(data, Mapping) and isinstance(data.get("entries"), Mapping):
        return "madsci"
    raise ImportFileError("not a nameplate export (no \"format\": \"nameplate-export\") nor a MADSci registry.json "
                          "(no \"entries\" object); pass --format if you know better", problems=["unknown format"])


def parse_document(data: Any, fmt: str, workspace: str, source: str, staged: _Staged | None = None) -> _Document:
    """The document ``data`` (its entries staged, or already in ``staged`` when they were streamed)."""
    if fmt not in ("auto", "nameplate", "madsci"):
        raise InvalidInputError(f"unknown import format {fmt!r}; use nameplate, madsci or auto", format=fmt)
    if fmt == "auto":
        fmt = detect_format(data)
    if fmt == "nameplate":
        return _parse_nameplate(data, source, staged)
    return _parse_madsci(data, workspace, source)


def read_document(path: Path, fmt: str, workspace: str) -> _Document:
    """Parse and stage an import file, its ``entries`` one at a time; errors as :func:`read_json`'s."""
    staged = _Staged()
    try:
        head: dict[str, Any] = {}
        streamed = False
        try:
            with _opened(path) as handle:
                for item in _json_stream.members(handle, "entries", _unique_keys):
                    if isinstance(item, _json_stream.Element):
                        streamed = True
                        staged.add(item.index, item.value)
                    else:
                        head[item.key] = item.value
        except _json_stream.NotAnObject:
            staged.close()
            return parse_document(read_json(path), fmt, workspace, str(path))  # not ours: its shape says why
        except (_DuplicateKey, _json_stream.DuplicateMember) as error:
            raise _duplicate_key(path, error.key) from None
        except RecursionError:
            raise _too_deep(path) from None
        except json.JSONDecodeError as error:
            raise _not_json(path, error) from None
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        if streamed:
            head["entries"] = []  # its elements are staged
        return parse_document(head, fmt, workspace, str(path), staged if streamed else None)
    except BaseException:
        staged.close()
        raise


@contextmanager
def _opened(path: Path) -> Iterator[TextIO]:
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, after translating open's errors
    except IsADirectoryError:
        raise ImportFileError(f"{path} is a directory, not an export file", path=str(path),
                              problems=["is a directory"]) from None
    except OSError as error:
        raise _unreadable(path, error) from None
    with handle:
        try:
            yield handle
        except OSError as error:
            raise _unreadable(path, error) from None


class _Where:
    """``entries[i] (kind 'name')``, the place a problem names, formatted only when one is reported."""

    __slots__ = ("index", "entry")

    def __init__(self, index: int, entry: Mapping[str, Any]) -> None:
        self.index, self.entry = index, entry

    def __str__(self) -> str:
        return f"entries[{self.index}] ({self.entry.get('kind')} {self.entry.get('name')!r})"


def _unknown_fields(item: Mapping[str, Any], allowed: frozenset[str], where: str, problems: list[str]) -> None:
    # A field this version does not know would be dropped on the way in: refuse rather than lose it.
    unknown = sorted(set(item) - allowed, key=str)
    if unknown:
        problems.append(f"{where}: unknown fields {unknown}")


def _parse_nameplate(data: Any, source: str, staged: _Staged | None) -> _Document:
    if not isinstance(data, Mapping):
        raise _fail(["the document is not a JSON object"], source)
    problems: list[str] = []
    if data.get("format") != FORMAT:
        problems.append(f"\"format\" must be {FORMAT!r}, found {data.get('format')!r}")
    if type(data.get("version")) is not int or data.get("version") != VERSION:
        problems.append(f"version {data.get('version')!r} is not supported (this nameplate reads version {VERSION})")
    sections: dict[str, list[dict[str, Any]]] = {}
    allowed = {"workspaces": _WORKSPACE_FIELDS, "kinds": _KIND_FIELDS, "tombstones": _TOMBSTONE_FIELDS}
    entries = staged or _Staged()
    try:
        for key in ("workspaces", "kinds", "entries", "tombstones"):
            value = data.get(key, [])
            if not isinstance(value, list):
                problems.append(f"\"{key}\" must be a list of objects")
                continue
            if key == "entries":
                for index, item in enumerate(value):
                    entries.add(index, item)
                problems.extend(entries.shape_problems)
                continue
            if not all(isinstance(item, Mapping) for item in value):
                problems.append(f"\"{key}\" must be a list of objects")
                value = []
            for index, item in enumerate(value):
                _unknown_fields(item, allowed[key], f"{key}[{index}]", problems)
            sections[key] = [dict(item) for item in value]
        if problems:
            raise _fail(problems, source)
    except BaseException:
        entries.close()
        raise
    return _Document(sections["workspaces"], sections["kinds"], entries, sections["tombstones"], "nameplate")


def _parse_madsci(data: Any, workspace: str, source: str) -> _Document:
    if not isinstance(data, Mapping) or not isinstance(data.get("entries"), Mapping):
        raise _fail(["a MADSci registry.json is an object with an \"entries\" object"], source)
    problems: list[str] = []
    _unknown_fields(data, _MADSCI_TOP, "the file", problems)
    version = data.get("version", MADSCI_VERSION)
    if type(version) is not int or version != MADSCI_VERSION:
        problems.append(f"MADSci registry version {version!r} is not supported (this nameplate reads version "
                        f"{MADSCI_VERSION})")
    staged, locks = _Staged(), 0
    now = iso(time.time())
    try:
        index = 0
        for name, item in data["entries"].items():
            if not isinstance(item, Mapping):
                problems.append(f"entry {name!r}: not an object")
                continue
            _unknown_fields(item, _MADSCI_ENTRY, f"entry {name!r}", problems)
            if item.get("lock") is not None:
                locks += 1
            if item.get("component_type") not in MADSCI_KINDS:
                problems.append(f"entry {name!r}: component_type {item.get('component_type')!r} is not one of "
                                f"{', '.join(MADSCI_KINDS)}")
                continue
            workcell = item.get("workcell_id")
            if workcell is not None and not isinstance(workcell, str):
                problems.append(f"entry {name!r}: workcell_id must be a string or null, not {workcell!r}")
            staged.add(index, {
                "id": item.get("id"), "workspace": workspace, "kind": item.get("component_type"), "name": name,
                "metadata": item.get("metadata", {}), "capabilities": [],
                "definition": None if workcell is None else {"workcell_id": workcell}, "target": None,
                # MADSci's RegistryEntry defaults both times to now when a document omits them.
                "created_at": item.get("created_at") or now, "updated_at": item.get("last_seen") or now,
                "last_seen_at": item.get("last_seen") or now})
            index += 1
        if problems:
            raise _fail(problems, source)
    except BaseException:
        staged.close()
        raise
    return _Document([], [], staged, [], "madsci", workspace, locks)


# -- import: validation ------------------------------------------------------------------------------------


def _madsci_kind(name: str) -> dict[str, Any]:
    return build_kind(name, required=[], optional=[], defaults=None, name_pattern=None, validator=None, strict=False,
                      description=f"a {name} (MADSci)")


def _kind_values(item: Mapping[str, Any]) -> dict[str, Any]:
    return build_kind(item.get("name"), required=item.get("required", []),  # type: ignore[arg-type]
                      optional=item.get("optional", []), defaults=item.get("defaults"),
                      name_pattern=item.get("name_pattern"), validator=item.get("validator"),
                      strict=bool(item.get("strict", True)), description=item.get("description", ""))


def _effective_kinds(doc: _Document, tx: Tx, mode: str, problems: list[str]) -> tuple[dict[str, Kind], list[str]]:
    """The kinds the document's entries will be stored under, and the user kinds the import defines."""
    registry = {k.name: k for k in list_kinds(tx)}
    wipes_user_kinds = mode == "replace" and doc.format == "nameplate"
    kinds = {name: k for name, k in registry.items() if k.builtin or not wipes_user_kinds}
    defined: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(doc.kinds):
        where = f"kinds[{index}]"
        name = item.get("name")
        if not isinstance(name, str):
            problems.append(f"{where}: a kind's name must be a string, not {name!r}")
            continue
        if name in seen:
            problems.append(f"{where}: kind {name!r} is listed twice")
            continue
        seen.add(name)
        if item.get("builtin"):
            if name not in registry or not registry[name].builtin:
                problems.append(f"{where}: built-in kind {name!r} is unknown to this nameplate")
            continue
        if name in registry and registry[name].builtin:
            problems.append(f"{where}: {name!r} is a built-in kind here; a file cannot redefine it")
            continue
        try:
            values = _kind_values(item)
        except NameplateError as error:
            problems.append(f"{where}: {error}")
            continue
        except (TypeError, ValueError) as error:  # e.g. "required": 5 or a pattern that is not a string
            problems.append(f"{where}: kind {name!r} is not valid: {error}")
            continue
        if name in kinds:  # merge: the registry's own definition of the kind stays, and rules the entries
            continue
        kinds[name] = candidate_kind(values)
        defined.append(name)
    if doc.format == "madsci":
        for name in sorted({r[0] for r in doc.entries.query("SELECT DISTINCT kind FROM staged")} - set(kinds)):
            kinds[name] = candidate_kind(_madsci_kind(name))
            defined.append(name)
    return kinds, defined


#: A ULID as ``str(ULID)`` writes it: what :func:`_check_id` accepts, decided in one C call.
_ULID_TEXT = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def _parse_stamp(value: Any, where: str, problems: list[str]) -> float:
    """:func:`parse_time` with a short way for the times an export writes (``...Z``)."""
    if type(value) is str and value.endswith("Z"):
        try:
            return datetime.fromisoformat(value).timestamp()  # Python 3.11 reads the "Z" as UTC
        except ValueError:
            pass
    return parse_time(value, where, problems)


def _check_id(value: Any, where: str, problems: list[str]) -> None:
    try:
        if not isinstance(value, str) or str(ULID.from_str(value)) != value:
            raise ValueError
    except ValueError:
        problems.append(f"{where}: id {value!r} is not a ULID (26 characters of Crockford base32, upper case)")


def _where(pos: int, kind: str, name: str) -> str:
    return f"entries[{pos}] ({kind} {name!r})"


def _check_document(doc: _Document, tx: Tx, mode: str, source: str,
                    progress: Callable[[int, int], None] | None = None, *, user_code: bool = True) -> list[str]:
    """Raise ImportFileError listing every problem of the document, judged against the registry it goes
    into; return the user kinds the import defines.

    ``user_code=False`` skips what kinds' validators and name patterns decide (user code and patterns
    never run under the write lock): only for a document already checked against the same kinds."""
    problems: list[str] = []
    existing_ws = {r[0] for r in tx.execute("SELECT name FROM workspace").fetchall()}
    if doc.format == "madsci" and doc.workspace not in existing_ws:
        raise UnknownWorkspaceError(f"workspace {doc.workspace!r} does not exist; create it first",
                                    workspace=doc.workspace)
    known_ws = {CORE} | (set() if mode == "replace" and doc.format == "nameplate" else existing_ws)
    listed: set[str] = set()
    for index, ws in enumerate(doc.workspaces):
        where = f"workspaces[{index}]"
        try:
            check_workspace_name(ws.get("name"))
        except InvalidInputError as error:
            problems.append(f"{where}: {error}")
            continue
        name = ws["name"]
        if name in listed:
            problems.append(f"{where}: workspace {name!r} is listed twice")
            continue
        listed.add(name)
        if not isinstance(ws.get("description", ""), str):
            problems.append(f"{where}: description must be a string")
        if "created_at" in ws:
            parse_time(ws["created_at"], f"{where}.created_at", problems)
        if name == CORE:
            if ws.get("parent") is not None:
                problems.append(f"{where}: core is the root and has no parent, not {ws.get('parent')!r}")
            continue
        if ws.get("parent") not in known_ws:
            problems.append(f"{where}: parent {ws.get('parent')!r} of {name!r} is neither core nor listed before it")
        known_ws.add(name)
    kinds, defined = _effective_kinds(doc, tx, mode, problems)
    staged = doc.entries
    found = list(staged.problems)  # (position, text): the entries' own problems, found while staging
    for entry_id, first in staged.query("SELECT id, min(pos) FROM staged WHERE id IS NOT NULL GROUP BY id "
                                        "HAVING count(*) > 1").fetchall():
        found.extend((pos, f"{_where(pos, kind, name)}: id {entry_id!r} appears twice") for pos, kind, name in
                     staged.query("SELECT pos, kind, name FROM staged WHERE id = ? AND pos > ?", (entry_id, first)))
    for ws, kind, name, first in staged.query("SELECT workspace, kind, name, min(pos) FROM staged WHERE workspace IS "
                                              "NOT NULL GROUP BY workspace, kind, name HAVING count(*) > 1").fetchall():
        found.extend((pos, f"{_where(pos, kind, name)}: duplicate name in workspace {ws!r}") for (pos,) in
                     staged.query("SELECT pos FROM staged WHERE workspace = ? AND kind = ? AND name = ? AND pos > ?",
                                  (ws, kind, name, first)))
    for (ws,) in staged.query("SELECT DISTINCT workspace FROM staged WHERE workspace IS NOT NULL").fetchall():
        if ws not in known_ws:
            found.extend((pos, f"{_where(pos, kind, name)}: workspace {ws!r} does not exist and is not in the file")
                         for pos, kind, name in staged.query("SELECT pos, kind, name FROM staged WHERE workspace = ?",
                                                             (ws,)))
    for (kind_name,) in staged.query("SELECT DISTINCT kind FROM staged").fetchall():
        if kind_name not in kinds:
            found.extend((pos, f"{_where(pos, kind_name, name)}: kind {kind_name!r} is not defined here nor in the "
                               "file") for pos, name in staged.query("SELECT pos, name FROM staged WHERE kind = ?",
                                                                    (kind_name,)))
    if user_code:
        found.extend(_judge_against_kinds(staged, kinds, progress))
    found.sort(key=lambda item: item[0])  # stable: an entry's problems keep their order
    problems.extend(text for _, text in found)
    seen_tombs: set[tuple[Any, Any, Any]] = set()
    for index, tomb in enumerate(doc.tombstones):
        where = f"tombstones[{index}]"
        try:
            tomb["name"] = check_name(tomb.get("name"))
            check_kind_name(tomb.get("kind"))
        except InvalidInputError as error:
            problems.append(f"{where}: {error}")
            continue
        if tomb.get("workspace") not in known_ws or tomb.get("workspace") == CORE:
            problems.append(f"{where}: a tombstone needs a non-core workspace that exists, "
                            f"not {tomb.get('workspace')!r}")
        if tomb["kind"] not in kinds:
            problems.append(f"{where}: kind {tomb['kind']!r} is not defined here nor in the file")
        key = (tomb.get("workspace"), tomb["kind"], tomb["name"])
        if key in seen_tombs or (isinstance(key[0], str) and staged.has(key[0], key[1], key[2])):
            problems.append(f"{where}: {'/'.join(map(str, key))} is listed twice (as an entry or a tombstone)")
        seen_tombs.add(key)
    if problems:
        raise _fail(problems, source)
    return defined


def _judge_against_kinds(staged: _Staged, kinds: dict[str, Kind],
                         progress: Callable[[int, int], None] | None) -> Iterator[tuple[int, str]]:
    """Names against their kind's pattern, definitions against their kind (user code: outside the lock)."""
    total = staged.count
    # Without a definition only a name pattern can object: rows of kinds without one need no look.
    patterned = [name for name, kind in kinds.items() if kind.name_pattern]
    marks = ", ".join("?" * len(patterned)) or "NULL"
    reported = 0
    if progress is not None:
        progress(0, total)
    for pos, kind_name, name, definition in staged.query(
            "SELECT pos, kind, name, definition FROM staged WHERE definition IS NOT NULL OR kind IN "
            f"({marks}) ORDER BY pos", patterned):
        if progress is not None and pos - reported >= 1000:
            progress(pos, total)
            reported = pos
        kind = kinds.get(kind_name)
        if kind is None:
            continue  # named above
        if definition is None:  # an identity without a definition: only its name must fit
            found = name_problems(kind, name)
        else:
            try:
                _, found = validate(kind, name, json.loads(definition), apply_defaults=False)
            except NameplateError as error:  # a validator that cannot be imported
                found = [str(error)]
        for problem in found:
            yield pos, f"{_where(pos, kind_name, name)}: {problem}"


_INSERT_ENTRIES = ("INSERT INTO entry (id, workspace_id, kind_id, name, metadata, capabilities, definition, target, "
                   "created_at, updated_at, last_seen_at) VALUES")
_INSERT_CAPABILITIES = "INSERT INTO entry_capability (capability, entry_pk) VALUES"


def _insert_entries(tx: Tx, store: Store, staged: _Staged, skip: set[int], ws_ids: dict[str, int],
                    kind_ids: dict[str, int]) -> None:
    """Write the staged entries (but those in ``skip``), their capabilities and their create events,
    a hundred rows per statement: one INSERT per entry made a 1M-entry import twice as slow."""
    batch: list[tuple[Any, ...]] = []
    capabilities_of: dict[str, list[str]] = {}

    def flush() -> None:
        group = "(" + ", ".join("?" * 11) + ")"
        params = [value for row in batch for value in row]
        returned = tx.execute(f"{_INSERT_ENTRIES} {', '.join([group] * len(batch))} RETURNING pk, id",
                              params).fetchall()
        if capabilities_of:
            insert_rows(tx, _INSERT_CAPABILITIES, ((capability, pk) for pk, entry_id in returned
                                                   for capability in capabilities_of.get(entry_id, ())))
        store.record_many(tx, "create", events, source="import")
        batch.clear()
        events.clear()
        capabilities_of.clear()

    events: list[tuple[str, str, str, str]] = []
    for pos, entry_id, ws, kind, name, metadata, capabilities, definition, target, *stamps in staged.query(
            f"SELECT {_Staged.COLUMNS} FROM staged ORDER BY pos"):
        if pos in skip:
            continue
        batch.append((entry_id, ws_ids[ws], kind_ids[kind], name, metadata, capabilities,
                      None if definition is None else encode_object(json.loads(definition), "definition"), target,
                      *stamps))
        events.append((ws, kind, name, entry_id))
        if capabilities != "[]":
            capabilities_of[entry_id] = json.loads(capabilities)
        if len(batch) == 100:
            flush()
    if batch:
        flush()


# -- import: plan and write --------------------------------------------------------------------------------


def import_document(backend: Backend, store: Store, data: Any, *, fmt: str = "auto", mode: str = "merge",
                    dry_run: bool = False, workspace: str = CORE, source: str = "the document",
                    progress: Callable[[int, int], None] | None = None) -> ImportPlan:
    """:func:`import_staged` of a document held in memory."""
    if mode not in ("merge", "replace"):
        raise InvalidInputError(f"mode must be 'merge' or 'replace', not {mode!r}", mode=mode)
    return import_staged(backend, store, parse_document(data, fmt, workspace, source), mode=mode, dry_run=dry_run,
                         source=source, progress=progress)


def import_file(backend: Backend, store: Store, path: Path, *, fmt: str = "auto", mode: str = "merge",
                dry_run: bool = False, workspace: str = CORE,
                progress: Callable[[int, int], None] | None = None) -> ImportPlan:
    """:func:`import_staged` of a file, read as a stream: its entries never sit in memory together."""
    if mode not in ("merge", "replace"):
        raise InvalidInputError(f"mode must be 'merge' or 'replace', not {mode!r}", mode=mode)
    if fmt not in ("auto", "nameplate", "madsci"):
        raise InvalidInputError(f"unknown import format {fmt!r}; use nameplate, madsci or auto", format=fmt)
    return import_staged(backend, store, read_document(path, fmt, workspace), mode=mode, dry_run=dry_run,
                         source=str(path), progress=progress)


def import_staged(backend: Backend, store: Store, doc: _Document, *, mode: str, dry_run: bool, source: str,
                  progress: Callable[[int, int], None] | None) -> ImportPlan:
    """Validate and plan (reporting ``progress(done, total)`` over the entries), then write at once.

    Validation runs in a read snapshot, outside the write lock: kinds' validators and name patterns
    are user input and a slow terminal drawing the progress bar must not hold other writers up. If the
    revision moved before the write, the parts that depend on the registry's contents are judged again
    inside the write transaction (no user code there); only a redefined kind sends the import back to
    validate outside the lock. Busy writers therefore cannot starve an import.
    """
    try:
        with backend.bulk():
            for _ in range(_ATTEMPTS):
                with backend.read() as tx:
                    revision = int(tx.execute(_REVISION).fetchone()[0])
                    kinds_seen = tx.execute(_KINDS_FINGERPRINT).fetchall()
                    defined = _check_document(doc, tx, mode, source, progress)
                    plan, ops = _plan(tx, doc, mode, defined, revision)
                if progress is not None:
                    progress(doc.entries.count, doc.entries.count)
                if dry_run:
                    return plan
                with backend.write() as tx:
                    now = int(tx.execute(_REVISION).fetchone()[0])
                    if now != revision:
                        # Another process wrote meanwhile. The validators' and patterns' verdicts still hold
                        # if no kind changed; judge the rest (names taken, workspaces, leases) again, here.
                        if tx.execute(_KINDS_FINGERPRINT).fetchall() != kinds_seen:
                            continue
                        defined = _check_document(doc, tx, mode, source, user_code=False)
                        plan, ops = _plan(tx, doc, mode, defined, now)
                    _apply(tx, store, doc, mode, plan, ops)
                    plan.revision = int(tx.execute(_REVISION).fetchone()[0])
                plan.applied = True
                return plan
    finally:
        doc.entries.close()
    raise ConflictError(f"kinds kept being redefined while {source} was being imported; retry (nothing was "
                        "imported)")


def _label(ws: str, kind: str, name: str) -> str:
    return f"{ws}/{kind}/{name}"


def _plan(tx: Tx, doc: _Document, mode: str, defined: list[str], revision: int) -> tuple[ImportPlan, _Ops]:
    plan = ImportPlan(mode=mode, format=doc.format, locks_dropped=doc.locks, revision=revision,
                      kinds_added=list(defined))
    ops = _Ops(define_kinds=[])
    for item in doc.kinds:
        if item["name"] in defined:
            ops.define_kinds.append(_kind_values(item))
    for name in defined:
        if doc.format == "madsci":
            ops.define_kinds.append(_madsci_kind(name))
    rows = tx.execute("SELECT e.pk, e.id, w.name, k.name, e.name, e.hidden FROM entry AS e JOIN kind AS k ON "
                      "k.id = e.kind_id JOIN workspace AS w ON w.id = e.workspace_id").fetchall()
    leased = {r[0] for r in tx.execute("SELECT entry_pk FROM lease").fetchall()}
    if doc.format == "madsci":
        _plan_madsci(tx, doc, mode, rows, plan, ops)
    else:
        _plan_nameplate(tx, doc, mode, rows, plan, ops)
    problems = [f"{_label(ws, kind, name)} is leased by a live process; release it (or stop that process) first"
                for pk, _, ws, kind, name, _ in ops.delete if pk in leased]
    deleted = {d[0] for d in ops.delete}
    for pk, entry_id, ws, kind, name, _ in rows:  # ids the registry keeps may not come in again
        if pk in deleted:
            continue
        for pos, new_ws, new_kind, new_name in doc.entries.query(
                "SELECT pos, workspace, kind, name FROM staged WHERE id = ?", (entry_id,)):
            if pos not in ops.skip:
                problems.append(f"id {entry_id} of {_label(new_ws, new_kind, new_name)} already belongs to "
                                f"{_label(ws, kind, name)}")
    if problems:
        raise _conflict(problems)
    for listing in (plan.added, plan.kept, plan.replaced, plan.removed):
        listing.sort()
    return plan, ops


def _plan_nameplate(tx: Tx, doc: _Document, mode: str, rows: list[Any], plan: ImportPlan, ops: _Ops) -> None:
    visible = {(r[2], r[3], r[4]): r for r in rows if not r[5]}
    occupied = {(r[2], r[3], r[4]): r for r in rows}
    existing_ws = [r[0] for r in tx.execute("SELECT name FROM workspace WHERE name != ? ORDER BY name", (CORE,))]
    staged = doc.entries.query("SELECT pos, workspace, kind, name FROM staged ORDER BY pos")
    if mode == "replace":
        ops.wipe = True
        ops.delete = [(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]
        plan.removed = [_label(*key) for key in visible if not doc.entries.has(*key)]
        listed = {w["name"] for w in doc.workspaces}
        plan.workspaces_removed = [name for name in existing_ws if name not in listed]
        plan.workspaces_added = [w["name"] for w in doc.workspaces
                                 if w["name"] != CORE and w["name"] not in existing_ws]
        ops.create_workspaces = [w for w in doc.workspaces if w["name"] != CORE]
        for _, *key in staged:
            (plan.replaced if tuple(key) in visible else plan.added).append(_label(*key))
        ops.hide = [(t["workspace"], t["kind"], t["name"]) for t in doc.tombstones]
        plan.tombstones_added = [_label(*key) for key in ops.hide]
        return
    ops.create_workspaces = [w for w in doc.workspaces if w["name"] != CORE and w["name"] not in existing_ws]
    plan.workspaces_added = [w["name"] for w in ops.create_workspaces]
    for pos, *name in staged:
        key = tuple(name)
        if key in visible:
            plan.kept.append(_label(*key))
            ops.skip.add(pos)
            continue
        plan.added.append(_label(*key))
        tomb = occupied.get(key)
        if tomb is not None:  # the workspace hid this name; the file brings it back
            ops.delete.append((tomb[0], tomb[1], tomb[2], tomb[3], tomb[4], True))
    for tomb in doc.tombstones:
        key = (tomb["workspace"], tomb["kind"], tomb["name"])
        if key not in occupied:  # a row already there (entry or tombstone) is kept
            ops.hide.append(key)
            plan.tombstones_added.append(_label(*key))


def _plan_madsci(tx: Tx, doc: _Document, mode: str, rows: list[Any], plan: ImportPlan, ops: _Ops) -> None:
    ws = doc.workspace
    marks = ",".join("?" * len(MADSCI_KINDS))
    seen: dict[str, list[Any]] = {}
    for r in tx.execute(
            "SELECT r.pk, r.id, w.name, k.name, r.name FROM resolved_entry AS r JOIN workspace AS viewer ON "
            f"viewer.id = r.viewer_id JOIN kind AS k ON k.id = r.kind_id JOIN workspace AS w ON w.id = r.workspace_id "
            f"WHERE viewer.name = ? AND r.hidden = 0 AND k.name IN ({marks})", (ws, *MADSCI_KINDS)).fetchall():
        seen.setdefault(r[4], []).append(r)
    own: dict[str, list[Any]] = {}  # this workspace's rows of MADSci kinds, tombstones included
    for r in rows:
        if r[2] == ws and r[3] in MADSCI_KINDS:
            own.setdefault(r[4], []).append(r)
    wanted: set[str] = set()

    def delete(row: Any) -> None:
        ops.delete.append((row[0], row[1], row[2], row[3], row[4], bool(row[5]) if len(row) > 5 else False))

    for pos, entry_id, kind, name in doc.entries.query("SELECT pos, id, kind, name FROM staged ORDER BY pos"):
        wanted.add(name)
        label = _label(ws, kind, name)
        visible = seen.get(name, [])
        if mode == "merge" and visible:
            plan.kept.append(label)  # MADSci's merge: a name the registry has stays as it is
            ops.skip.add(pos)
            continue
        if (mode == "replace" and len(visible) == 1 and visible[0][2] != ws and visible[0][1] == entry_id
                and visible[0][3] == kind):
            plan.kept.append(label)  # the inherited entry already is this one; ancestors' rows are not ours
            ops.skip.add(pos)
            continue
        for row in own.get(name, []):
            delete(row)  # own rows of the name (another MADSci kind, a tombstone, the old version)
        (plan.replaced if visible else plan.added).append(label)
    if mode == "replace":
        for name, visible in seen.items():
            if name in wanted:
                continue
            for row in visible:
                plan.removed.append(_label(ws, row[3], name))
                if row[2] == ws:
                    delete(row)
                else:  # inherited: hide it in this workspace, leave the ancestor alone
                    ops.hide.append((ws, row[3], name))
                    plan.tombstones_added.append(_label(ws, row[3], name))


def _apply(tx: Tx, store: Store, doc: _Document, mode: str, plan: ImportPlan, ops: _Ops) -> None:
    if ops.wipe:
        tx.execute("DELETE FROM entry")
        tx.execute("DELETE FROM selection_cursor")
        # Deepest first: a workspace's children reference it.
        for (name,) in tx.execute("SELECT w.name FROM workspace AS w JOIN workspace_ancestor AS a ON "
                                  "a.workspace_id = w.id WHERE w.name != ? GROUP BY w.id ORDER BY max(a.depth) DESC",
                                  (CORE,)).fetchall():
            tx.execute("DELETE FROM workspace WHERE name = ?", (name,))  # its closure rows cascade
            store.record(tx, "workspace.delete", workspace=name, source="import")
        for (name,) in tx.execute("SELECT name FROM kind WHERE builtin = 0 ORDER BY name").fetchall():
            store.record(tx, "kind.delete", kind=name, source="import")
        tx.execute("DELETE FROM kind WHERE builtin = 0")
        for ws in doc.workspaces:
            if ws["name"] == CORE:  # the file becomes the registry: core's own row too
                ignored: list[str] = []
                tx.execute("UPDATE workspace SET description = ?, created_at = ? WHERE name = ?",
                           (ws.get("description", ""),
                            parse_time(ws.get("created_at"), "", ignored) if "created_at" in ws else time.time(), CORE))
    for values in ops.define_kinds:
        save_kind(tx, store, values)
    for ws in ops.create_workspaces:
        create_workspace(tx, store, ws["name"], ws["parent"], ws.get("description", ""))
        if "created_at" in ws:
            tx.execute("UPDATE workspace SET created_at = ? WHERE name = ?",
                       (parse_time(ws["created_at"], "", []), ws["name"]))
    for pk, entry_id, ws_name, kind, name, hidden in ops.delete:
        if not ops.wipe:
            tx.execute("DELETE FROM entry WHERE pk = ?", (pk,))
        if hidden:
            store.record(tx, "unhide", workspace=ws_name, kind=kind, name=name, source="import")
        else:
            store.record(tx, "delete", workspace=ws_name, kind=kind, name=name, entry_id=entry_id, source="import")
    ws_ids = dict(tx.execute("SELECT name, id FROM workspace").fetchall())
    kind_ids = dict(tx.execute("SELECT name, id FROM kind").fetchall())
    _insert_entries(tx, store, doc.entries, ops.skip, ws_ids, kind_ids)
    now = time.time()
    for ws_name, kind, name in ops.hide:
        tx.execute("INSERT INTO entry (id, workspace_id, kind_id, name, hidden, created_at, updated_at, last_seen_at) "
                   "VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                   (str(ULID()), ws_ids[ws_name], kind_ids[kind], name, now, now, now))
        store.record(tx, "hide", workspace=ws_name, kind=kind, name=name, source="import")
    store.record(tx, "import", workspace=doc.workspace if doc.format == "madsci" else None, mode=mode,
                 format=doc.format, added=len(plan.added), kept=len(plan.kept), replaced=len(plan.replaced),
                 removed=len(plan.removed), workspaces=len(plan.workspaces_added), kinds=len(plan.kinds_added),
                 tombstones=len(plan.tombstones_added), locks_dropped=plan.locks_dropped)
