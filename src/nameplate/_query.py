"""Queries over entries: one page of a listing (prefix, keyset pagination), and metadata matches.

A page is selected from the ``resolved_entry`` view like every read (the one resolver), ordered by kind
then name; ``after`` is the last (kind, name) of the previous page, so a page costs the same wherever it
starts and a concurrent insert never shifts the pages after it (keyset pagination, as etcd's range
requests with a start key). The prefix is matched with ``substr()``, which counts characters alike on
SQLite and PostgreSQL (a range on the name would depend on the database's collation).

Metadata is a JSON text column and the SQL stays portable (no JSON1), so ``find(metadata=...)`` filters
the kind's candidates in Python: one indexed select of the kind (narrowed first by the capability index
when capabilities are required), then a comparison per entry.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from ._records import Entry
from ._store import ENTRY_COLUMNS, RESOLVED, VISIBLE, Store, decode_entries
from ._validation import check_kind_name, check_name, encode_object
from .errors import InvalidInputError


def check_page(kind: str | None, prefix: str | None, limit: int | None,
               after: str | Entry | tuple[str, str] | None) -> tuple[str | None, int | None, tuple[str, str] | None]:
    """The checked prefix (NFC), limit and keyset of a page request."""
    if prefix is not None:
        if not isinstance(prefix, str) or not prefix:
            raise InvalidInputError(f"prefix must be a non-empty string, not {prefix!r}", prefix=repr(prefix))
        prefix = unicodedata.normalize("NFC", prefix)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"limit must be a whole number >= 1, not {limit!r}", limit=repr(limit))
    keyset: tuple[str, str] | None = None
    if isinstance(after, Entry):
        keyset = (after.kind, after.name)
    elif isinstance(after, tuple):
        if len(after) != 2:
            raise InvalidInputError(f"after= as a tuple is (kind, name), not {after!r}", after=repr(after))
        keyset = (check_kind_name(after[0]), check_name(after[1], "after"))
    elif after is not None:
        if kind is None:
            raise InvalidInputError("after= a name needs kind= (names repeat across kinds); without kind=, pass "
                                    "after= the last Entry of the previous page", after=repr(after))
        keyset = (kind, check_name(after, "after"))
    return prefix, limit, keyset


def list_page(store: Store, workspace: str, kind: str | None, prefix: str | None, limit: int | None,
              keyset: tuple[str, str] | None) -> list[Entry]:
    """Entries visible in ``workspace`` matching the request, by kind then name."""
    sql = f"SELECT {ENTRY_COLUMNS} {RESOLVED} WHERE {VISIBLE}"
    params: list[Any] = [workspace]
    if kind is not None:
        sql += " AND k.name = ?"
        params.append(kind)
    if prefix is not None:
        sql += " AND substr(r.name, 1, ?) = ?"
        params.extend([len(prefix), prefix])
    if keyset is not None and keyset[0] == kind:
        sql += " AND r.name > ?"
        params.append(keyset[1])
    elif keyset is not None:
        sql += " AND (k.name > ? OR (k.name = ? AND r.name > ?))"
        params.extend([keyset[0], keyset[0], keyset[1]])
    sql += " ORDER BY k.name, r.name"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    with store.backend.read() as tx:
        store.workspace_id(tx, workspace)
        if kind is not None:
            store.kind_id(tx, kind)
        rows = tx.execute(sql, params).fetchall()
    return decode_entries(rows)


def check_metadata_filter(metadata: object) -> dict[str, Any] | None:
    """``None`` or a JSON object of wanted values (checked as metadata is)."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidInputError(f"metadata must be a mapping of keys to wanted values, not {metadata!r}",
                                metadata=repr(metadata))
    encode_object(metadata)
    return dict(metadata)


def with_metadata(entries: Iterable[Entry], wanted: dict[str, Any]) -> list[Entry]:
    """The entries whose metadata holds every wanted key with that very JSON value (``1`` is not
    ``true`` and not ``1.0``)."""
    return [e for e in entries if all(_same(e.metadata.get(key, _ABSENT), value) for key, value in wanted.items())]


_ABSENT = object()
_SCALARS = (str, int, float, bool, type(None))


def _same(stored: Any, wanted: Any) -> bool:
    # Scalars compare by type and value (json.dumps of each would cost more than the whole select);
    # objects and arrays by their canonical text.
    if type(wanted) in _SCALARS:
        return type(stored) is type(wanted) and stored == wanted
    return stored is not _ABSENT and _canonical(stored) == _canonical(wanted)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

