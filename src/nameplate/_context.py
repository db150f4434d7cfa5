"""The active workspace: explicit argument, else this context's, else ``NAMEPLATE_WORKSPACE``, else core.

A ``contextvars.ContextVar`` makes it thread- and asyncio-task-local: a ``with registry.workspace(...)``
in one thread or task never changes what another one sees.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ._validation import check_workspace_name

ENV_WORKSPACE = "NAMEPLATE_WORKSPACE"
CORE = "core"

_active: ContextVar[str | None] = ContextVar("nameplate_workspace", default=None)


def current_workspace(explicit: str | None = None) -> str:
    """The workspace a call acts in, by the precedence above (validated)."""
    if explicit is not None:
        return check_workspace_name(explicit)
    active = _active.get()
    if active is not None:
        return active
    env = os.environ.get(ENV_WORKSPACE)
    if env:
        return check_workspace_name(env)
    return CORE


@contextmanager
def active_workspace(name: str) -> Iterator[str]:
    """Make ``name`` the workspace of this thread/task for the ``with`` block."""
    token = _active.set(check_workspace_name(name))
    try:
        yield name
    finally:
        _active.reset(token)


def context_workspace() -> str | None:
    """The workspace this thread/task set (``active_workspace`` or :func:`set_context_workspace`), or
    ``None``: neither an argument nor ``NAMEPLATE_WORKSPACE`` is consulted."""
    return _active.get()


def set_context_workspace(name: str | None) -> None:
    """Set (or with ``None`` clear) this thread's/task's workspace until it is set again.

    Unlike :func:`active_workspace` there is no block to end it; it is still a context variable, so
    it holds for the calling thread or asyncio task (and the tasks it creates afterwards), never for
    other threads or processes.
    """
    _active.set(None if name is None else check_workspace_name(name))
