"""Shell completion of entry names, kinds and workspaces, straight from the database file.

Completion runs on every Tab press, so it must be fast and harmless: it never opens a
:class:`Registry` (that would create a missing file, run migrations and take the write lock), but reads
the file through a read-only ``sqlite3`` connection with a short busy timeout. A missing, foreign,
damaged or busy database completes to nothing rather than to an error: a shell prompt is no place for
a traceback. Names follow the workspace's layers (its own rows over its ancestors', tombstones hide).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from typing import Any
from urllib.parse import quote

import click
from click.shell_completion import CompletionItem

from ._context import ENV_WORKSPACE
from ._paths import locate
from .errors import NameplateError

#: Completion offers at most this many names: a shell menu of thousands helps nobody.
LIMIT = 200

#: Seconds a completion waits for a writer: longer would freeze the user's prompt.
BUSY_TIMEOUT = 0.2

_NAMES = """
    SELECT e.name FROM entry AS e
    JOIN workspace_ancestor AS a ON a.ancestor_id = e.workspace_id
    JOIN workspace AS viewer ON viewer.id = a.workspace_id
    JOIN kind AS k ON k.id = e.kind_id
    WHERE viewer.name = ? AND (? IS NULL OR k.name = ?) AND substr(e.name, 1, ?) = ?
    GROUP BY e.kind_id, e.name
    HAVING min(a.depth * 2 + e.hidden) % 2 = 0  -- the nearest layer's row decides: a tombstone hides
    ORDER BY e.name LIMIT ?
"""
_KINDS = "SELECT name FROM kind WHERE substr(name, 1, ?) = ? ORDER BY name LIMIT ?"
_WORKSPACES = "SELECT name FROM workspace WHERE substr(name, 1, ?) = ? ORDER BY name LIMIT ?"


def _query(ctx: click.Context, sql: str, params: Sequence[Any]) -> list[str]:
    root = ctx.find_root().params
    try:
        location = locate(root.get("db"))
    except NameplateError:  # a malformed --db: nothing to offer (the command itself will say why)
        return []
    if location.path is None or not location.path.is_file():
        return []
    uri = f"file:{quote(os.fspath(location.path))}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)) as connection:
            return [row[0] for row in connection.execute(sql, params)]
    except sqlite3.Error:  # busy, foreign, damaged or too old: complete nothing
        return []


def _workspace(ctx: click.Context) -> str:
    return ctx.find_root().params.get("workspace") or os.environ.get(ENV_WORKSPACE) or "core"


def _items(values: list[str]) -> list[CompletionItem]:
    return [CompletionItem(value) for value in values]


def complete_entry(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Names visible in the workspace (``--workspace``), of the ``--kind`` given so far if any."""
    kind = ctx.params.get("kind")
    names = _query(ctx, _NAMES, (_workspace(ctx), kind, kind, len(incomplete), incomplete, LIMIT))
    return _items(sorted(set(names)))


def complete_kind(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _items(_query(ctx, _KINDS, (len(incomplete), incomplete, LIMIT)))


def complete_workspace(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _items(_query(ctx, _WORKSPACES, (len(incomplete), incomplete, LIMIT)))


def complete_path(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Let the shell complete file names (``--db``)."""
    return [CompletionItem(incomplete, type="file")]


__all__ = ["complete_entry", "complete_kind", "complete_path", "complete_workspace"]
