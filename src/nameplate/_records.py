"""The immutable records the public API returns."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any


def utc(timestamp: float) -> datetime:
    """A stored epoch-seconds column as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp, UTC)


def utc_or_none(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


_EMPTY: Mapping[str, Any] = MappingProxyType({})


def frozen_json(text: str) -> Mapping[str, Any]:
    """A stored JSON object as a read-only mapping."""
    if text == "{}":  # most entries carry no metadata; skipping the parse halves a listing's decode
        return _EMPTY
    return MappingProxyType(json.loads(text))


def frozen_json_or_none(text: str | None) -> Mapping[str, Any] | None:
    return None if text is None else frozen_json(text)


def string_set(text: str) -> frozenset[str]:
    return frozenset() if text == "[]" else frozenset(json.loads(text))


@dataclass(frozen=True, slots=True)
class Entry:
    """A named component as the registry resolved it in one workspace.

    ``workspace`` is the layer the row lives in (which may be an ancestor of the workspace you asked
    in). ``metadata`` and ``definition`` are read-only mappings; ``definition`` is ``None`` for entries
    that were only resolved, never registered with a definition.

    ``revision`` is the revision of the last event that changed the entry's name, layer, metadata,
    definition, target or capabilities (etcd's ``mod_revision``, Consul's ``ModifyIndex``): pass it as
    ``expected_revision=`` to :meth:`Registry.update` or :meth:`Registry.delete` to change the entry only
    if nobody changed it since. Leases and usage stamps (``last_seen_at``) leave it as it is.
    """

    id: str
    name: str
    kind: str
    workspace: str
    metadata: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    last_seen_at: datetime
    capabilities: frozenset[str] = frozenset()
    target: str | None = None
    definition: Mapping[str, Any] | None = None
    revision: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601 UTC)."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "workspace": self.workspace,
            "metadata": dict(self.metadata),
            "capabilities": sorted(self.capabilities),
            "target": self.target,
            "definition": None if self.definition is None else dict(self.definition),
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "revision": self.revision,
        }


def _slot_filler(cls: type) -> Any:
    """A function ``fill(id, name, ...)`` taking every slot of the frozen dataclass ``cls`` in slot order
    and returning the instance, its slots set through their descriptors. A listing builds thousands
    of entries, and a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``:
    1.97 us an entry against 1.06 here. Generated from ``__slots__``, so a new field cannot be missed."""
    slots: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
    arguments = ", ".join(slots)
    lines = [f"def fill({arguments}):", "    entry = new(cls)"]
    lines += [f"    set_{slot}(entry, {slot})" for slot in slots]
    lines.append("    return entry")
    scope: dict[str, Any] = {"new": object.__new__, "cls": cls}
    scope.update({f"set_{slot}": cls.__dict__[slot].__set__ for slot in slots})
    exec("\n".join(lines), scope)  # noqa: S102  # text built from the class's own slot names only
    return scope["fill"]


#: ``fill_entry(id, name, kind, workspace, metadata, created_at, updated_at, last_seen_at, capabilities,
#: target, definition, revision)``: an :class:`Entry` without the dataclass ``__init__`` (many at once).
fill_entry = _slot_filler(Entry)


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the audit log. ``rev`` is the global revision, strictly increasing."""

    rev: int
    at: datetime
    action: str
    workspace: str | None
    kind: str | None
    name: str | None
    entry_id: str | None
    session_id: str | None
    actor: str
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"rev": self.rev, "at": self.at.isoformat(), "action": self.action,
                "workspace": self.workspace, "kind": self.kind, "name": self.name,
                "entry_id": self.entry_id, "session_id": self.session_id, "actor": self.actor,
                "detail": dict(self.detail)}
