"""Kinds' name patterns: user-supplied regular expressions, matched in bounded time, never under a lock.

Python's ``re`` cannot be interrupted: ``^(a+)+$`` against 30 characters backtracks for seconds, and a
match inside ``BEGIN IMMEDIATE`` made every other writer wait that long. Patterns are matched with the
``regex`` package, whose ``timeout=`` stops a runaway match; a pattern that times out on a probe of
adversarial names is refused when the kind is defined, and a name that makes a stored pattern time out
is refused with its own message. Callers match before they take the write lock.
"""

from __future__ import annotations

import functools
from typing import Any

import regex

from .errors import InvalidNameError

#: A name is at most 255 characters; a sane pattern decides it in microseconds.
MATCH_TIMEOUT = 0.05


class PatternTooSlow(Exception):
    """Internal: the match ran past :data:`MATCH_TIMEOUT`."""


@functools.lru_cache(maxsize=256)
def compiled(pattern: str) -> Any:
    """The compiled pattern (``regex.error`` if it is not a valid expression)."""
    return regex.compile(pattern)


def search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` finds a match in ``text``; :class:`PatternTooSlow` past the timeout."""
    try:
        return compiled(pattern).search(text, timeout=MATCH_TIMEOUT) is not None
    except TimeoutError:
        raise PatternTooSlow(pattern) from None


def name_fits(pattern: str, name: str, kind: str) -> bool:
    """``search`` for a name, with a runaway match turned into :class:`InvalidNameError`."""
    try:
        return search(pattern, name)
    except PatternTooSlow:
        raise InvalidNameError(
            f"matching name {name!r} against kind {kind!r}'s pattern {pattern} took over "
            f"{MATCH_TIMEOUT * 1000:.0f} ms, so the name is refused; the pattern backtracks catastrophically "
            "on names like this: simplify it with define_kind", name=name, kind=kind, pattern=pattern) from None


def too_slow(pattern: str) -> str | None:
    """A probe name on which ``pattern`` runs past the timeout, or None. Probes are the classic
    catastrophic inputs: one character (of the pattern's own, or a common one) repeated to the name
    length limit, then a character that spoils the match."""
    characters = {c for c in pattern if c.isalnum() or c in "_-. "} | set("aA0_ ")
    for char in sorted(characters):
        for spoiler in ("!", "\u00e9", "0", "a", " "):
            probe = char * 254 + spoiler
            try:
                search(pattern, probe)
            except PatternTooSlow:
                return probe
    return None
