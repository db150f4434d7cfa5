"""The package's one at-fork handler: what a forked child must forget, in a fixed order.

A child inherits the parent's memory but not its threads or POSIX locks, so it must not use (or
close) the parent's connections, must not think it holds the parent's sessions, and must not wait
on locks a parent thread held at the moment of fork. Each module that keeps such state registers
one step here; they run in the order of the stages, so connections are dropped before sessions
and sessions before the locks that guard opening them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

#: The stages, in the order their steps run in the child.
STAGES = ("connections", "sessions", "locks")

_steps: dict[str, list[Callable[[], None]]] = {stage: [] for stage in STAGES}


def in_child(stage: str, step: Callable[[], None]) -> None:
    """Run ``step`` in every forked child, at ``stage``."""
    _steps[stage].append(step)


def _after_fork_in_child() -> None:
    for stage in STAGES:
        for step in _steps[stage]:
            step()


os.register_at_fork(after_in_child=_after_fork_in_child)
