"""Entries: resolution through the layer view, resolve-or-create, update, rename, delete, events.

Every read of entries selects from the ``resolved_entry`` view (see ``migrations/v0001_initial.py``),
so a lookup and a listing share one resolver. Reads run outside transactions; writes run in one short
``backend.write()`` transaction each and record their event in it. The hot statements are module
constants, so each connection prepares them once.

Writes in workspace W change only W's own rows: an inherited entry is renamed or deleted in the layer
that defines it (or hidden in W).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from . import _patterns
from ._ids import new_id
from ._liveness import HOSTNAME
from ._readcache import ReadCache
from ._records import Entry, fill_entry, frozen_json, frozen_json_or_none, string_set, utc
from ._validation import canonical_json, check_name
from .backends.base import Backend, Tx
from .errors import (
    AmbiguousNameError,
    ConflictError,
    EntryNotFoundError,
    InvalidNameError,
    NameTakenError,
    UnknownKindError,
    UnknownWorkspaceError,
)

#: A resolve of an existing name writes ``last_seen_at`` only when it is older than this.
LAST_SEEN_RESOLUTION = 60.0


ENTRY_COLUMNS = ("r.pk, r.id, r.name, k.name, w.name, r.metadata, r.capabilities, r.definition, r.target, "
                 "r.created_at, r.updated_at, r.last_seen_at, r.revision")
#: How many columns :data:`ENTRY_COLUMNS` selects (a query may select more after them).
ENTRY_COLUMN_COUNT = 13
RESOLVED = """
FROM resolved_entry AS r
JOIN workspace AS viewer ON viewer.id = r.viewer_id
JOIN kind AS k ON k.id = r.kind_id
JOIN workspace AS w ON w.id = r.workspace_id
"""
VISIBLE = "viewer.name = ? AND r.hidden = 0"

_LOOKUP_KIND = f"SELECT r.id {RESOLVED} WHERE {VISIBLE} AND r.name = ? AND k.name = ?"
_LOOKUP_ANY = f"SELECT r.id, k.name {RESOLVED} WHERE {VISIBLE} AND r.name = ?"
_PROBE_KIND = (f"SELECT r.id, r.pk, r.metadata, r.last_seen_at, r.workspace_id, r.viewer_id {RESOLVED} "
               f"WHERE {VISIBLE} AND r.name = ? AND k.name = ?")
_GET_KIND = f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE} AND r.name = ? AND k.name = ?"
_GET_ANY = f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE} AND r.name = ?"
_LIST_ALL = f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE} ORDER BY k.name, r.name"
_LIST_KIND = f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE} AND k.name = ? ORDER BY r.name"
#: The same listings in a workspace with no layer beneath it (core): its own visible rows are all it
#: sees, so the layer view's per-row "no nearer layer has it" check goes, and one kind's rows come in
#: the order of the ``entry_by_layer`` index, without a sort.
_OWN_ROWS = (f"SELECT {ENTRY_COLUMNS} FROM entry AS r JOIN kind AS k ON k.id = r.kind_id "
             "JOIN workspace AS w ON w.id = r.workspace_id WHERE r.workspace_id = ? AND r.hidden = 0")
_LIST_ALL_OWN = f"{_OWN_ROWS} ORDER BY k.name, r.name"
_LIST_KIND_OWN = f"{_OWN_ROWS} AND r.kind_id = ? ORDER BY r.name"
_WORKSPACE_PARENT = "SELECT id, parent_id FROM workspace WHERE name = ?"

_WORKSPACE_ID = "SELECT id FROM workspace WHERE name = ?"
_KIND_OF_NAME = f"SELECT k.name, k.name_pattern {RESOLVED} WHERE {VISIBLE} AND r.name = ?"
_KIND_ROW = "SELECT id, name_pattern FROM kind WHERE name = ?"
_WORKSPACE_AND_KIND = ("SELECT w.id, k.id, k.name_pattern FROM workspace AS w, kind AS k "
                       "WHERE w.name = ? AND k.name = ?")
_LOCAL_ROW = "SELECT pk, id, hidden FROM entry WHERE workspace_id = ? AND kind_id = ? AND name = ?"
_INSERT_ENTRY = (
    "INSERT INTO entry (id, workspace_id, kind_id, name, hidden, metadata, capabilities, definition, target,"
    " created_at, updated_at, last_seen_at, owner_session_id, ephemeral, revision)"
    " VALUES (?, ?, ?, ?, 0, ?, '[]', NULL, NULL, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (name, kind_id, workspace_id) DO NOTHING RETURNING pk")
_REVIVE_TOMBSTONE = (
    "UPDATE entry SET id = ?, hidden = 0, metadata = ?, capabilities = '[]', definition = NULL, target = NULL,"
    " created_at = ?, updated_at = ?, last_seen_at = ?, owner_session_id = ?, ephemeral = ?, fence = 0,"
    " revision = ? WHERE pk = ?")
#: Marks a cache miss (None is a cached answer: the name does not exist).
_MISSING = object()
_TOUCH = "UPDATE entry SET last_seen_at = ? WHERE pk = ?"
_OWN_OF_KIND = "SELECT pk, id FROM entry WHERE workspace_id = ? AND kind_id = ? AND hidden = 0 ORDER BY name"
_SET_METADATA = "UPDATE entry SET metadata = ?, updated_at = ?, last_seen_at = ? WHERE pk = ?"
_INSERT_EVENT = ("INSERT INTO event (at, action, workspace, kind, name, entry_id, session_id, actor, detail)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING rev")
_STAMP_REVISION = "UPDATE entry SET revision = ? WHERE id = ?"
_LAST_REV = "SELECT coalesce(max(rev), 0) FROM event"
#: After a batch of events (one per entry) written past revision ``?``: stamp each on its entry, walking
#: the new events by revision and finding each entry by its unique id.
_STAMP_REVISIONS_SINCE = ("UPDATE entry SET revision = ev.rev FROM event AS ev "
                          "WHERE ev.rev > ? AND ev.entry_id = entry.id")
#: The event actions that change an entry's content (name, layer, metadata, definition, target,
#: capabilities): each stamps its revision on the entry row. Lease events and usage stamps do not.
CHANGING = frozenset({"create", "update", "rename", "register", "promote"})


_INSERT_EVENT_ROWS = "INSERT INTO event (at, action, workspace, kind, name, entry_id, session_id, actor, detail) VALUES"
#: Rows per multi-row INSERT of insert_rows: 100 rows of 9 values stay far below any driver's limit.
_ROWS_PER_INSERT = 100


def insert_rows(tx: Tx, head: str, rows: Iterable[Sequence[Any]]) -> int:
    """Run ``head`` (``INSERT INTO t (a, b) VALUES``) over ``rows`` as multi-row INSERTs of up to 100
    rows each (portable SQL, a fraction of the per-statement cost); return the number of rows."""
    batch: list[Any] = []
    count = width = 0
    statements: dict[int, str] = {}
    for row in rows:
        width = len(row)
        batch.extend(row)
        count += 1
        if count % _ROWS_PER_INSERT == 0:
            _insert_batch(tx, head, batch, width, statements)
    if batch:
        _insert_batch(tx, head, batch, width, statements)
    return count


def _insert_batch(tx: Tx, head: str, batch: list[Any], width: int, statements: dict[int, str]) -> None:
    rows = len(batch) // width
    sql = statements.get(rows)
    if sql is None:
        group = "(" + ", ".join("?" * width) + ")"
        sql = statements[rows] = f"{head} {', '.join([group] * rows)}"
    tx.execute(sql, batch)
    batch.clear()


_ENTRY_BY_PK = (f"SELECT {ENTRY_COLUMNS} FROM entry AS r JOIN kind AS k ON k.id = r.kind_id "
                "JOIN workspace AS w ON w.id = r.workspace_id WHERE r.pk = ?")


def entry_by_pk(tx: Tx, pk: int) -> Entry:
    """The entry row ``pk`` as stored (its own layer, tombstone or not), inside a transaction."""
    return decode_entry(tx.execute(_ENTRY_BY_PK, (pk,)).fetchone())


def decode_entry(row: Sequence[Any]) -> Entry:
    """Build an :class:`Entry` from a row selected with :data:`ENTRY_COLUMNS`."""
    return Entry(
        id=row[1], name=row[2], kind=row[3], workspace=row[4],
        metadata=frozen_json(row[5]), capabilities=string_set(row[6]),
        definition=frozen_json_or_none(row[7]), target=row[8],
        created_at=utc(row[9]), updated_at=utc(row[10]), last_seen_at=utc(row[11]), revision=row[12],
    )


def decode_entries(rows: Iterable[Sequence[Any]]) -> list[Entry]:
    """:func:`decode_entry` of many rows, decoding each distinct capability set and time once (they are
    immutable, so entries may share them; metadata may nest lists, so each entry gets its own): half
    of a 10k listing's time was building the entries."""
    sets: dict[str, frozenset[str]] = {}
    times: dict[float, datetime] = {}
    entries: list[Entry] = []
    append, fill, empty = entries.append, fill_entry, frozen_json("{}")
    for (_, entry_id, name, kind, workspace, metadata, capabilities, definition, target, created, updated, seen,
         revision) in rows:
        caps = sets.get(capabilities)
        if caps is None:
            caps = sets[capabilities] = string_set(capabilities)
        created_at = times.get(created)
        if created_at is None:
            created_at = times[created] = utc(created)
        updated_at = times.get(updated)
        if updated_at is None:
            updated_at = times[updated] = utc(updated)
        seen_at = times.get(seen)
        if seen_at is None:
            seen_at = times[seen] = utc(seen)
        append(fill(entry_id, name, kind, workspace, empty if metadata == "{}" else frozen_json(metadata),
                    created_at, updated_at, seen_at, caps, target,
                    None if definition is None else frozen_json(definition), revision))
    return entries


#: How often a create starts over because the kind's pattern changed between checking and writing.
_PATTERN_ATTEMPTS = 3

#: ``guard(tx, entry_pk, entry_id, kind)`` runs inside a write transaction before an existing entry's
#: content changes; it raises (:class:`LeaseHeldError`) when another session holds the entry's lease.
Guard = Callable[[Tx, int, str, str], None]


@dataclass(frozen=True, slots=True)
class Resolved:
    """What :meth:`Store.find_or_create` found or made: ``metadata`` is the stored text (None if new)."""

    id: str
    pk: int
    workspace_id: int
    metadata: str | None
    created: bool
    #: The revision of the one event written (the create, or the merge's update), if one was.
    revision: int | None = None


@dataclass(frozen=True, slots=True)
class LocalRow:
    pk: int
    id: str
    kind_id: int
    kind: str
    workspace_id: int
    workspace: str


class Store:
    """Entry reads and writes for one backend. ``actor`` returns ``(session_id, "pid@host")``."""

    def __init__(self, backend: Backend, actor: Callable[[], tuple[str | None, str]] | None = None,
                 cache: ReadCache | None = None) -> None:
        self.backend = backend
        self._actor = actor or (lambda: (None, f"{os.getpid()}@{HOSTNAME}"))
        # Where asking whether anything committed costs a round trip, a cache hit costs what it saves.
        self._cache = cache if backend.cheap_commit_signal else None

    # -- events ----------------------------------------------------------------------------------

    def record(self, tx: Tx, action: str, *, workspace: str | None = None, kind: str | None = None,
               name: str | None = None, entry_id: str | None = None, at: float | None = None,
               **detail: Any) -> int:
        """Append one event in the caller's transaction and return its revision.

        An event that changes an entry's content (:data:`CHANGING`) also stamps its revision on the
        entry row ``entry_id``, in the same transaction: what ``Entry.revision`` and every
        compare-and-swap read.
        """
        rev = self.append(tx, action, workspace=workspace, kind=kind, name=name, entry_id=entry_id, at=at,
                          **detail)
        if entry_id is not None and action in CHANGING:
            tx.execute(_STAMP_REVISION, (rev, entry_id))
        return rev

    def append(self, tx: Tx, action: str, *, workspace: str | None = None, kind: str | None = None,
               name: str | None = None, entry_id: str | None = None, at: float | None = None,
               **detail: Any) -> int:
        """:meth:`record` without the stamp, for a writer that puts the revision on the row itself
        (a create inserts its entry after its event: one UPDATE fewer on the hottest write)."""
        return self.append_text(tx, action, json.dumps(detail, sort_keys=True, default=str), workspace=workspace,
                                kind=kind, name=name, entry_id=entry_id, at=at)

    def append_text(self, tx: Tx, action: str, detail_text: str, *, workspace: str | None = None,
                    kind: str | None = None, name: str | None = None, entry_id: str | None = None,
                    at: float | None = None) -> int:
        """:meth:`append` with the detail already encoded as a JSON object."""
        session_id, actor = self._actor()
        return int(tx.execute(_INSERT_EVENT, (time.time() if at is None else at, action, workspace, kind, name,
                                              entry_id, session_id, actor, detail_text)).fetchone()[0])

    def record_many(self, tx: Tx, action: str, items: Iterable[tuple[str, str, str, str]], **detail: Any) -> None:
        """Append one event per ``(workspace, kind, name, entry_id)`` of ``items``, all with the same
        action, time and detail, in the caller's transaction (an import's creates: few statements)."""
        session_id, actor = self._actor()
        at, text = time.time(), json.dumps(detail, sort_keys=True, default=str)
        before = int(tx.execute(_LAST_REV).fetchone()[0])
        insert_rows(tx, _INSERT_EVENT_ROWS, ((at, action, ws, kind, name, entry_id, session_id, actor, text)
                                             for ws, kind, name, entry_id in items))
        if action in CHANGING:  # as record() does: each entry carries the revision of its event
            tx.execute(_STAMP_REVISIONS_SINCE, (before,))

    # -- names of things -------------------------------------------------------------------------

    def workspace_id(self, tx: Tx, workspace: str) -> int:
        row = tx.execute(_WORKSPACE_ID, (workspace,)).fetchone()
        if row is None:
            raise UnknownWorkspaceError(f"workspace {workspace!r} does not exist; create it with "
                                        f"create_workspace({workspace!r}) or `nameplate workspace create`",
                                        workspace=workspace)
        return int(row[0])

    def kind_id(self, tx: Tx, kind: str) -> int:
        """The kind's id, or :class:`UnknownKindError` listing the kinds there are."""
        row = tx.execute(_KIND_ROW, (kind,)).fetchone()
        if row is None:
            known = [r[0] for r in tx.execute("SELECT name FROM kind ORDER BY name").fetchall()]
            raise UnknownKindError(f"kind {kind!r} is not defined; known kinds: {', '.join(known)} "
                                   "(define new ones with define_kind)", kind=kind, known=known)
        return int(row[0])

    def checked_pattern(self, workspace: str, kind: str, name: str,
                        answers: dict[Hashable, Any] | None = None) -> str:
        """Check ``name`` against ``kind``'s pattern in a read snapshot, outside any write lock (the
        pattern is user input; see ``_patterns``). Returns the pattern text it was checked against
        (``""`` for none), for the write transaction to confirm it did not change meanwhile. Raises
        for an unknown workspace or kind, or a name the pattern refuses.

        ``answers`` (the read cache's, valid now) keeps the pattern: a kind's definition changes only
        with an event, and the write transaction confirms the pattern under the lock anyway."""
        key = ("pattern", workspace, kind)
        pattern = None if answers is None else answers.get(key)
        if pattern is None:
            with self.backend.read() as tx:
                ids = tx.execute(_WORKSPACE_AND_KIND, (workspace, kind)).fetchone()
                if ids is None:
                    self.workspace_id(tx, workspace)
                    self.kind_id(tx, kind)
            pattern = ids[2] or ""
            if answers is not None and self._cache is not None:
                self._cache.remember(answers, key, pattern)
        check_pattern(pattern, name, kind)
        return pattern

    def _explain_miss(self, workspace: str, kind: str | None) -> None:
        """After an empty read: raise if the workspace or kind does not exist (else it was just absent)."""
        with self.backend.read() as tx:
            self.workspace_id(tx, workspace)
            if kind is not None:
                self.kind_id(tx, kind)

    # -- reads -----------------------------------------------------------------------------------

    def lookup(self, workspace: str, name: str, kind: str | None) -> str | None:
        cache = self._cache
        if cache is None:
            return self._lookup(workspace, name, kind)
        answers = cache.answers()
        key = ("lookup", workspace, kind, name)
        found = answers.get(key, _MISSING)
        if found is _MISSING:
            found = self._lookup(workspace, name, kind)  # raises for unknown workspaces and kinds
            cache.remember(answers, key, found, fragile=name if found is None or kind is None else None)
        return cast("str | None", found)

    def _lookup(self, workspace: str, name: str, kind: str | None) -> str | None:
        if kind is not None:
            row = self.backend.query_one(_LOOKUP_KIND, (workspace, name, kind))
            if row is not None:
                found: str = row[0]
                return found
            self._explain_miss(workspace, kind)
            return None
        rows = self.backend.query_all(_LOOKUP_ANY, (workspace, name))
        if len(rows) == 1:
            only: str = rows[0][0]
            return only
        if rows:
            raise _ambiguous(name, workspace, [r[1] for r in rows])
        self._explain_miss(workspace, None)
        return None

    def get(self, workspace: str, name: str, kind: str | None) -> Entry | None:
        if kind is not None:
            row = self.backend.query_one(_GET_KIND, (workspace, name, kind))
            if row is None:
                self._explain_miss(workspace, kind)
                return None
            return decode_entry(row)
        rows = self.backend.query_all(_GET_ANY, (workspace, name))
        if len(rows) > 1:
            raise _ambiguous(name, workspace, [r[3] for r in rows])
        if not rows:
            self._explain_miss(workspace, None)
            return None
        return decode_entry(rows[0])

    def list(self, workspace: str, kind: str | None = None) -> list[Entry]:
        with self.backend.read() as tx:
            layer = tx.execute(_WORKSPACE_PARENT, (workspace,)).fetchone()
            if layer is None:
                self.workspace_id(tx, workspace)  # raises the precise error
            own_only = layer[1] is None
            if kind is None:
                rows = tx.execute(*((_LIST_ALL_OWN, (layer[0],)) if own_only else (_LIST_ALL, (workspace,))))
            else:
                kind_id = self.kind_id(tx, kind)
                rows = tx.execute(*((_LIST_KIND_OWN, (layer[0], kind_id)) if own_only
                                    else (_LIST_KIND, (workspace, kind))))
            found = rows.fetchall()
        return decode_entries(found)

    def visible_row(self, tx: Tx, workspace: str, name: str, kind: str | None, verb: str) -> LocalRow:
        """The entry ``name`` resolves to in ``workspace`` (possibly inherited), or a precise error."""
        select = (f"SELECT r.pk, r.id, r.kind_id, k.name, r.workspace_id, w.name {RESOLVED} "
                  f"WHERE {VISIBLE} AND r.name = ?")
        if kind is None:
            rows = tx.execute(select, (workspace, name)).fetchall()
            if len(rows) > 1:
                raise _ambiguous(name, workspace, [r[3] for r in rows])
        else:
            rows = tx.execute(select + " AND k.name = ?", (workspace, name, kind)).fetchall()
        if not rows:
            self.workspace_id(tx, workspace)
            if kind is not None:
                self.kind_id(tx, kind)
            what = f"{kind} {name!r}" if kind else repr(name)
            raise EntryNotFoundError(f"no entry {what} in workspace {workspace!r}; nothing to {verb} "
                                     "(list entries with `nameplate ls`)", name=name, kind=kind,
                                     workspace=workspace)
        pk, entry_id, kind_id, kind_name, ws_id, ws_name = rows[0]
        return LocalRow(int(pk), entry_id, int(kind_id), kind_name, int(ws_id), ws_name)

    def visible_local(self, tx: Tx, workspace: str, name: str, kind: str | None, verb: str) -> LocalRow:
        """The visible entry ``name`` in ``workspace``, which must live in that very workspace (for writes)."""
        row = self.visible_row(tx, workspace, name, kind, verb)
        if row.workspace != workspace:
            raise EntryNotFoundError(
                f"{row.kind} {name!r} is inherited from workspace {row.workspace!r}, not defined in {workspace!r}; "
                f"{verb} it there (workspace={row.workspace!r}) or hide it here with hide()",
                name=name, kind=row.kind, workspace=workspace, defined_in=row.workspace)
        return row

    # -- writes ----------------------------------------------------------------------------------

    def resolve(self, workspace: str, name: str, kind: str, metadata: dict[str, Any] | None,
                *, guard: Guard, owner_session_id: str | None = None, ephemeral: bool = False,
                sole_name: bool = False) -> str:
        """The id of ``name``; created in ``workspace`` if no layer has it. See ``Registry.resolve``.

        ``sole_name=True`` refuses (:class:`NameTakenError`, nothing written) to create ``name`` under
        ``kind`` while it is visible under another kind: the check the caller made before the write
        lock is made again under it.

        ``guard`` runs before a metadata merge changes an existing entry (it refuses entries leased
        by another session); the kind's name pattern is matched before the write lock is taken.
        """
        cache, key = self._cache, ("probe", workspace, kind, name)
        if cache is None:
            row = self.backend.query_one(_PROBE_KIND, (workspace, name, kind))
        else:
            answers = cache.answers()
            row = answers.get(key)
            if row is None:
                row = self.backend.query_one(_PROBE_KIND, (workspace, name, kind))
                if row is not None:
                    cache.remember(answers, key, row)
        now = time.time()
        if row is not None and not ephemeral and not _needs_write(row, metadata, now):
            existing: str = row[0]
            return existing
        if cache is not None:
            answers.pop(key, None)  # about to write: its usage stamp or metadata changes
        pattern = None if row is not None else self.checked_pattern(workspace, kind, name,
                                                                    None if cache is None else answers)
        for _ in range(_PATTERN_ATTEMPTS):
            with self.backend.write() as tx:
                found = self.find_or_create(tx, workspace, name, kind, metadata, pattern,
                                            owner_session_id=owner_session_id, ephemeral=ephemeral,
                                            sole_name=sole_name)
                if found is not None and not found.created:
                    found = self.refresh(tx, found, workspace, name, kind, metadata, guard)
            if found is not None:
                if cache is not None and found.revision is not None:
                    cache.wrote(found.revision, name if found.created else None)
                return found.id
            pattern = self.checked_pattern(workspace, kind, name)  # the kind changed, or the name vanished
        raise ConflictError(f"kind {kind!r} kept changing while {name!r} was being created; retry", kind=kind)

    def find_or_create(self, tx: Tx, workspace: str, name: str, kind: str, metadata: dict[str, Any] | None,
                       pattern: str | None, *, owner_session_id: str | None = None,
                       ephemeral: bool = False, sole_name: bool = False) -> Resolved | None:
        """Inside a write transaction: the visible entry ``name``, or a new one in ``workspace``.

        Creating needs the name already checked against the kind's ``pattern`` (outside the lock,
        :meth:`checked_pattern`); ``None`` means it was not (``pattern`` is None) or the kind's pattern
        changed since: check again and retry. Nothing is written then.
        """
        row = tx.execute(_PROBE_KIND, (workspace, name, kind)).fetchone()
        if row is not None:  # an existing entry stays what it is, ephemeral or not
            entry_id, pk, stored_text, _, row_workspace_id, _ = row
            return Resolved(entry_id, int(pk), int(row_workspace_id), stored_text, created=False)
        ids = tx.execute(_WORKSPACE_AND_KIND, (workspace, kind)).fetchone()
        if ids is None:
            self.workspace_id(tx, workspace)  # raises the precise error: unknown workspace or kind
            self.kind_id(tx, kind)
        if pattern is None or (ids[2] or "") != pattern:
            return None
        if sole_name:
            other = tx.execute(_LOOKUP_ANY, (workspace, name)).fetchone()
            if other is not None:
                raise NameTakenError(f"{name!r} already exists as a {other[1]} in workspace {workspace!r}; "
                                     f"resolve it as a {other[1]}", name=name, kind=other[1], workspace=workspace)
        entry_id, pk, rev = self._create(tx, workspace, int(ids[0]), int(ids[1]), name, kind, metadata or {},
                                         time.time(), owner_session_id=owner_session_id, ephemeral=ephemeral)
        return Resolved(entry_id, pk, int(ids[0]), None, created=True, revision=rev)

    def refresh(self, tx: Tx, found: Resolved, workspace: str, name: str, kind: str,
                metadata: dict[str, Any] | None, guard: Guard | None) -> Resolved:
        """Merge ``metadata`` into an existing entry of this workspace (after ``guard``), or only note
        that it was seen (``last_seen_at``, the registry's own usage stamp, which no lease guards).
        Returns ``found``, with the revision of the merge's event if one was written."""
        now = time.time()
        stored = found.metadata
        merged = None if stored is None else _merged(stored, metadata)
        if stored is None or merged is None or found.workspace_id != self.workspace_id(tx, workspace):
            # Metadata of an inherited entry belongs to its own layer; resolving here only reads it.
            tx.execute(_TOUCH, (now, found.pk))
            return found
        if guard is not None:
            guard(tx, found.pk, found.id, kind)
        tx.execute(_SET_METADATA, (merged, now, now, found.pk))
        rev = self.record(tx, "update", workspace=workspace, kind=kind, name=name, entry_id=found.id, at=now,
                          metadata={"before": json.loads(stored), "after": json.loads(merged)})
        return dataclasses.replace(found, revision=rev)

    def _create(self, tx: Tx, workspace: str, workspace_id: int, kind_id: int, name: str, kind: str,
                metadata: dict[str, Any], now: float, *, owner_session_id: str | None,
                ephemeral: bool) -> tuple[str, int, int]:
        """Insert (or revive) the entry after its create event: ``(id, pk, revision)``."""
        metadata_text = canonical_json(metadata) if metadata else "{}"
        entry_id = new_id()
        if ephemeral:
            rev = self.append(tx, "create", workspace=workspace, kind=kind, name=name, entry_id=entry_id, at=now,
                              metadata=metadata, ephemeral=True, session=owner_session_id)
        else:  # the common create: its detail is the metadata just encoded (valid JSON, sorted keys)
            rev = self.append_text(tx, "create", f'{{"metadata": {metadata_text}}}', workspace=workspace,
                                   kind=kind, name=name, entry_id=entry_id, at=now)
        inserted = tx.execute(_INSERT_ENTRY, (entry_id, workspace_id, kind_id, name, metadata_text, now, now, now,
                                              owner_session_id, int(ephemeral), rev)).fetchone()
        if inserted is not None:
            return entry_id, int(inserted[0]), rev
        # The name had no visible entry, yet a row of ours holds it: our tombstone hid an inherited
        # entry. Resolving the name here makes it ours again, with a new id.
        pk = int(tx.execute(_LOCAL_ROW, (workspace_id, kind_id, name)).fetchone()[0])
        tx.execute(_REVIVE_TOMBSTONE, (entry_id, metadata_text, now, now, now, owner_session_id,
                                       int(ephemeral), rev, pk))
        return entry_id, pk, rev

    def update_metadata(self, tx: Tx, local: LocalRow, workspace: str, name: str,
                        metadata: dict[str, Any], *, merge: bool, token: int | None = None) -> bool:
        """Set or merge metadata of a local row; return whether anything changed."""
        stored = tx.execute("SELECT metadata FROM entry WHERE pk = ?", (local.pk,)).fetchone()[0]
        if merge:
            merged = _merged(stored, metadata)
        else:
            text = canonical_json(metadata)
            merged = None if text == stored else text
        if merged is None:
            return False
        now = time.time()
        tx.execute(_SET_METADATA, (merged, now, now, local.pk))
        fenced = {} if token is None else {"token": token}
        self.record(tx, "update", workspace=workspace, kind=local.kind, name=name, entry_id=local.id, at=now,
                    metadata={"before": json.loads(stored), "after": json.loads(merged)}, **fenced)
        return True

    def rename(self, workspace: str, old: str, new: str, kind: str | None,
               guard: Guard | None = None) -> str:
        new = check_name(new, "new name")
        # The new name must fit the kind's pattern, which is user input: match it before the lock.
        checked: tuple[str, str] | None = None
        candidates = self.backend.query_all(_KIND_OF_NAME if kind is None else _KIND_OF_NAME + " AND k.name = ?",
                                            (workspace, old) if kind is None else (workspace, old, kind))
        if len(candidates) == 1:
            checked = (candidates[0][0], candidates[0][1] or "")
            check_pattern(checked[1], new, checked[0])
        for _ in range(_PATTERN_ATTEMPTS):
            renamed = self._rename(workspace, old, new, kind, guard, checked)
            if isinstance(renamed, str):
                return renamed
            checked = renamed
            check_pattern(checked[1], new, checked[0])
        raise ConflictError(f"the kind of {old!r} kept changing while it was being renamed; retry", name=old)

    def _rename(self, workspace: str, old: str, new: str, kind: str | None, guard: Guard | None,
                checked: tuple[str, str] | None) -> str | tuple[str, str]:
        """One attempt: the id, or the (kind, pattern) to check ``new`` against before trying again."""
        with self.backend.write() as tx:
            return self.rename_in(tx, workspace, old, new, kind, guard, checked)

    def rename_in(self, tx: Tx, workspace: str, old: str, new: str, kind: str | None, guard: Guard | None,
                  checked: tuple[str, str] | None) -> str | tuple[str, str]:
        """A rename inside the caller's write transaction, ``new`` having been matched outside it against
        the kind and pattern ``checked``: the id, or the current (kind, pattern) when that changed (then
        nothing was written; check ``new`` against it and try again)."""
        local = self.visible_local(tx, workspace, old, kind, "rename")
        if guard is not None:
            guard(tx, local.pk, local.id, local.kind)
        if new == old:
            return local.id
        current = (local.kind, tx.execute(_KIND_ROW, (local.kind,)).fetchone()[1] or "")
        if current != checked:
            return current
        taken = tx.execute(f"SELECT r.id, w.name, r.hidden {RESOLVED} WHERE viewer.name = ? AND r.name = ? "
                           "AND k.name = ?", (workspace, new, local.kind)).fetchone()
        if taken is not None and not taken[2]:
            raise NameTakenError(f"cannot rename {local.kind} {old!r} to {new!r}: {new!r} already exists "
                                 f"(id {taken[0]}, workspace {taken[1]!r}); pick another name or delete it "
                                 "first", name=new, kind=local.kind, existing_id=taken[0])
        # Our own tombstone for the new name would collide with the unique key; the renamed entry
        # now takes that name in this layer, which is what the tombstone was hiding it for.
        tx.execute("DELETE FROM entry WHERE workspace_id = ? AND kind_id = ? AND name = ? AND hidden = 1",
                   (local.workspace_id, local.kind_id, new))
        now = time.time()
        tx.execute("UPDATE entry SET name = ?, updated_at = ? WHERE pk = ?", (new, now, local.pk))
        self.record(tx, "rename", workspace=workspace, kind=local.kind, name=new, entry_id=local.id, at=now,
                    old_name=old, new_name=new)
        return local.id

    def delete(self, workspace: str, name: str, kind: str | None, guard: Guard | None = None) -> Entry:
        with self.backend.write() as tx:
            return self.delete_in(tx, workspace, name, kind, guard)

    def delete_in(self, tx: Tx, workspace: str, name: str, kind: str | None, guard: Guard | None = None) -> Entry:
        """A delete inside the caller's write transaction; returns what the entry was."""
        local = self.visible_local(tx, workspace, name, kind, "delete")
        if guard is not None:
            guard(tx, local.pk, local.id, local.kind)
        entry = entry_by_pk(tx, local.pk)
        tx.execute("DELETE FROM entry WHERE pk = ?", (local.pk,))
        self.record(tx, "delete", workspace=workspace, kind=local.kind, name=name, entry_id=local.id,
                    metadata=dict(entry.metadata))
        return entry

    def delete_all(self, workspace: str, kind: str, guard: Guard | None = None) -> builtins.list[Entry]:
        """Remove every entry of ``kind`` that ``workspace`` itself defines (inherited ones and
        tombstones stay), in one transaction; the guard judges each first, so one entry leased by
        another process leaves them all in place."""
        with self.backend.write() as tx:
            rows = tx.execute(_OWN_OF_KIND, (self.workspace_id(tx, workspace), self.kind_id(tx, kind))).fetchall()
            if guard is not None:
                for pk, entry_id in rows:
                    guard(tx, int(pk), entry_id, kind)
            entries = [entry_by_pk(tx, int(pk)) for pk, _ in rows]
            for (pk, _), entry in zip(rows, entries, strict=True):
                tx.execute("DELETE FROM entry WHERE pk = ?", (pk,))
                self.record(tx, "delete", workspace=workspace, kind=kind, name=entry.name, entry_id=entry.id,
                            metadata=dict(entry.metadata), reason=f"every {kind} of the workspace removed at once")
            return entries


def _needs_write(row: Sequence[Any], metadata: dict[str, Any] | None, now: float) -> bool:
    """Whether resolving the probed entry writes: a stale usage stamp, or a merge that changes the
    metadata of an entry of the caller's own workspace (an inherited entry's metadata is only read)."""
    own = row[4] == row[5]
    return now - row[3] > LAST_SEEN_RESOLUTION or (own and _merged(row[2], metadata) is not None)


def _merged(stored_text: str, metadata: dict[str, Any] | None) -> str | None:
    """The shallow merge of ``metadata`` over the stored object as text, or None if nothing changes."""
    if not metadata:
        return None
    stored = json.loads(stored_text)
    if all(key in stored and stored[key] == value for key, value in metadata.items()):
        return None
    stored.update(metadata)
    return canonical_json(stored)


def _ambiguous(name: str, workspace: str, kinds: Iterable[str]) -> AmbiguousNameError:
    kinds = sorted(kinds)
    return AmbiguousNameError(f"{name!r} exists under several kinds in workspace {workspace!r} "
                              f"({', '.join(kinds)}); pass kind= to choose one", name=name, kinds=kinds)


def _suggest(name: str, pattern: str) -> str | None:
    """A PascalCase spelling of ``name`` when that satisfies ``pattern`` (e.g. xgboost_training)."""
    words = re.split(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])", name)
    candidate = "".join(word[:1].upper() + word[1:] for word in words if word)
    try:
        if candidate and candidate != name and _patterns.search(pattern, candidate):
            return candidate
    except _patterns.PatternTooSlow:
        return None
    return None


def check_pattern(pattern: str, name: str, kind: str) -> None:
    """Raise :class:`InvalidNameError` (with a suggestion where one exists) unless ``name`` fits."""
    if pattern and not _patterns.name_fits(pattern, name, kind):
        suggestion = _suggest(name, pattern)
        hint = f"; did you mean {suggestion!r}?" if suggestion else ""
        raise InvalidNameError(f"name {name!r} does not match kind {kind!r}'s pattern {pattern}{hint}",
                               name=name, kind=kind, suggestion=suggestion)
