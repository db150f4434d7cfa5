"""Aliases: another name under which an entry of a kind is found (legacy spellings, renamed steps).

An alias is stored as an entry of the kind ``alias`` (defined on first use): its name is
``"<kind>:<alias>"`` and its definition ``{"kind": ..., "name": <canonical name>}``. Being an entry, it
lives in a workspace layer (an alias made in ``dev1`` is seen there and below, never in core or a
sibling), every change is logged, exports and imports carry it, and every process sees it at once.
One hop only: an alias never points at another alias, so resolving one is a single point read.
Lookups by name stay exact; :func:`resolve` is the explicit second step for callers that accept
aliases (nothing on the hot path of ``lookup``/``resolve`` changes).
"""

from __future__ import annotations

from collections.abc import Callable

from ._definitions import Definitions
from ._records import Entry
from ._store import Store
from ._validation import check_kind_name, check_name
from .errors import InvalidInputError, NameTakenError, UnknownKindError

ALIAS_KIND = "alias"


def _key(kind: str, alias: str) -> str:
    return f"{kind}:{alias}"


def _ensure_kind(definitions: Definitions) -> None:
    try:
        definitions.kind(ALIAS_KIND)
    except UnknownKindError:
        # Two processes may both get here: the second definition is an identical redefinition.
        definitions.define_kind(ALIAS_KIND, required=["kind", "name"], strict=True,
                                description="another name for an entry of a kind (add_alias)")


def _alias_entry(store: Store, ws: str, kind: str, alias: str) -> Entry | None:
    try:
        return store.get(ws, _key(kind, alias), ALIAS_KIND)
    except UnknownKindError:  # no alias was ever made in this registry
        return None


def add(definitions: Definitions, store: Store, ws: str, alias: str, name: str, kind: str, replace: bool) -> Entry:
    alias, name = check_name(alias, "alias"), check_name(name)
    check_kind_name(kind)
    definitions.kind(kind)
    if alias == name:
        raise InvalidInputError(f"alias {alias!r} is the name itself; give another name", alias=alias)
    if store.get(ws, alias, kind) is not None:
        raise NameTakenError(f"{kind} {alias!r} exists in workspace {ws!r}, so an alias of that name would never "
                             "answer; rename or delete that entry first", name=alias, kind=kind, workspace=ws)
    if _alias_entry(store, ws, kind, name) is not None:
        raise InvalidInputError(f"{kind} {name!r} is itself an alias; point {alias!r} at what {name!r} stands for "
                                f"({resolve(store, ws, name, kind)!r})", alias=alias, name=name, kind=kind)
    _ensure_kind(definitions)
    return definitions.register(_key(kind, alias), ALIAS_KIND, {"kind": kind, "name": name},
                                on_conflict="replace" if replace else "error", workspace=ws)


def remove(store: Store, ws: str, alias: str, kind: str, *, delete: Callable[[str, str, str], object],
           hide: Callable[[str, str, str], object]) -> bool:
    """Remove this workspace's alias, or hide an inherited one here (its own layer keeps it)."""
    alias = check_name(alias, "alias")
    check_kind_name(kind)
    entry = _alias_entry(store, ws, kind, alias)
    if entry is None:
        return False
    (delete if entry.workspace == ws else hide)(entry.name, ALIAS_KIND, ws)
    return True


def resolve(store: Store, ws: str, name: str, kind: str) -> str | None:
    entry = _alias_entry(store, ws, check_kind_name(kind), check_name(name))
    if entry is None or entry.definition is None:
        return None
    return str(entry.definition["name"])


def aliases(store: Store, ws: str, kind: str) -> dict[str, str]:
    check_kind_name(kind)
    try:
        entries = store.list(ws, ALIAS_KIND)
    except UnknownKindError:
        return {}
    prefix = f"{kind}:"
    return {e.name[len(prefix):]: str(e.definition["name"]) for e in entries
            if e.name.startswith(prefix) and e.definition is not None and e.definition.get("kind") == kind}
