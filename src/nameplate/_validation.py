"""Checks on user input, done before any write so bad input changes nothing."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidInputError, InvalidMetadataError, InvalidNameError

MAX_NAME_LENGTH = 255
MAX_JSON_BYTES = 1024 * 1024
#: How deep metadata, info and definitions may nest (objects and arrays). Deeper input is refused
#: before anything recurses over it: 5,000 levels used to end in a RecursionError.
MAX_DEPTH = 64
_KIND_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
# Categories a name or capability may not contain: control characters, format characters (bidi
# overrides, zero-width spaces and joiners, BOM, soft hyphen: invisible, so two names that look the
# same would differ), line and paragraph separators, surrogates, private-use and unassigned points.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
_CATEGORY_WORDS = {"Cc": "the control character", "Cf": "the invisible format character",
                   "Zl": "the line separator", "Zp": "the paragraph separator", "Cs": "the surrogate",
                   "Co": "the private-use character", "Cn": "the unassigned code point"}


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` in NFC if it is a valid entry name, else raise :class:`InvalidNameError`.

    Names are Unicode text compared after NFC normalisation: "café" typed as one code point or as
    "e" plus a combining accent is one name (macOS hands out the second form in file names). Callers
    store and look up the returned string.
    """
    # Nearly every name is short printable ASCII, already in NFC: one pass of C code decides it.
    if (type(name) is str and 0 < len(name) <= MAX_NAME_LENGTH and name.isascii() and name.isprintable()
            and name[0] != " " and name[-1] != " "):
        return name
    return _check_unusual_name(name, what)


def _check_unusual_name(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a string, not {type(name).__name__}", name=repr(name))
    if not name:
        raise InvalidNameError(f"{what} is empty; give a non-empty name", name=name)
    normal = unicodedata.normalize("NFC", name)
    if len(normal) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{what} is {len(normal)} characters long; the limit is {MAX_NAME_LENGTH}",
                               name=normal[:40] + "...")
    problem = _forbidden_character(normal)
    if problem is not None:
        raise InvalidNameError(f"{what} {normal!r} contains {problem}; names are visible, printable text",
                               name=normal)
    if not normal.strip():
        raise InvalidNameError(f"{what} {normal!r} is only whitespace; give a visible name", name=normal)
    if normal != normal.strip():
        raise InvalidNameError(f"{what} {normal!r} has leading or trailing whitespace; did you mean "
                               f"{normal.strip()!r}?", name=normal)
    return normal


def _forbidden_character(text: str) -> str | None:
    """``"the control character U+0007 at position 3"`` for the first forbidden character, or None."""
    for position, char in enumerate(text):
        category = unicodedata.category(char)
        if category in _FORBIDDEN_CATEGORIES:
            return f"{_CATEGORY_WORDS[category]} U+{ord(char):04X} at position {position}"
    return None


def check_kind_name(kind: object) -> str:
    if not isinstance(kind, str) or not _KIND_NAME.match(kind):
        raise InvalidNameError(f"kind {kind!r} is not a valid kind name: lowercase letters, digits, '_', '.' "
                               "or '-', starting with a letter, at most 64 characters", name=kind)
    return kind


def check_workspace_name(workspace: object) -> str:
    if not isinstance(workspace, str) or not _WORKSPACE_NAME.match(workspace):
        raise InvalidNameError(f"workspace {workspace!r} is not a valid workspace name: letters, digits, '_', "
                               "'.' or '-', starting with a letter or digit, at most 64 characters",
                               name=workspace)
    return workspace


def check_target(target: object) -> str:
    if not isinstance(target, str) or not _TARGET.match(target):
        raise InvalidNameError(f"target {target!r} is not a dotted path of the form 'package.module:attribute'",
                               name=target)
    return target


def check_capabilities(capabilities: Iterable[str] | None) -> list[str]:
    if capabilities is None:
        return []
    if isinstance(capabilities, str):
        raise InvalidNameError(f"capabilities must be a collection of strings, not the string {capabilities!r};"
                               f" write [{capabilities!r}]", name=capabilities)
    if not isinstance(capabilities, Iterable) or isinstance(capabilities, Mapping):
        raise InvalidNameError(f"capabilities must be a collection of strings, not {capabilities!r}",
                               name=repr(capabilities))
    result = set()
    for capability in capabilities:
        if isinstance(capability, str):
            capability = unicodedata.normalize("NFC", capability)
        if (not isinstance(capability, str) or not 0 < len(capability) <= 128
                or any(char.isspace() for char in capability) or _forbidden_character(capability)):
            raise InvalidNameError(f"capability {capability!r} must be 1-128 visible characters without "
                                   "whitespace", name=repr(capability))
        result.add(capability)
    return sorted(result)


def check_json_value(value: Any, what: str = "metadata") -> None:
    """Refuse what JSON cannot hold faithfully, without recursing: nesting deeper than
    :data:`MAX_DEPTH`, non-string object keys, NaN and infinities. Raises :class:`InvalidMetadataError`
    naming the path of the offending value (``metadata.a[2].b``)."""
    pending: list[tuple[Any, str, int]] = [(value, what, 0)]
    while pending:
        item, path, depth = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidMetadataError(f"{path} is {item!r}, which JSON cannot represent", path=path)
        elif isinstance(item, Mapping):
            if depth >= MAX_DEPTH:
                raise InvalidMetadataError(f"{what} nests deeper than {MAX_DEPTH} levels (at {path[:80]}...); "
                                           "flatten it", path=path[:200], limit=MAX_DEPTH)
            for key, child in item.items():
                if not isinstance(key, str):
                    raise InvalidMetadataError(f"{path} has the non-string key {key!r}; JSON object keys are "
                                               "strings", path=path)
                pending.append((child, f"{path}.{key}", depth + 1))
        elif isinstance(item, (list, tuple)):
            if depth >= MAX_DEPTH:
                raise InvalidMetadataError(f"{what} nests deeper than {MAX_DEPTH} levels (at {path[:80]}...); "
                                           "flatten it", path=path[:200], limit=MAX_DEPTH)
            for index, child in enumerate(item):
                pending.append((child, f"{path}[{index}]", depth + 1))


def canonical_json(value: Any) -> str:
    """The one text form of stored JSON: sorted keys, no spaces, UTF-8 as is (equal values, equal text)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_object(value: object, what: str = "metadata") -> str:
    """Serialise a JSON object (dict) to canonical text, or raise :class:`InvalidMetadataError`."""
    if not isinstance(value, Mapping):
        raise InvalidMetadataError(f"{what} must be a JSON object (a dict), not {type(value).__name__}",
                                   what=what)
    check_json_value(value, what)
    try:
        text = canonical_json(value)
    except (TypeError, ValueError) as error:
        raise InvalidMetadataError(f"{what} is not JSON-serialisable: {error}; use strings, numbers, "
                                   "booleans, None, lists and dicts", what=what) from None
    if len(text.encode()) > MAX_JSON_BYTES:
        raise InvalidMetadataError(f"{what} is {len(text.encode())} bytes as JSON; the limit is "
                                   f"{MAX_JSON_BYTES}", what=what)
    return text


def check_seconds(value: object, what: str, *, zero: bool = False) -> float:
    """A duration argument as float seconds: a real, finite number, positive (or >= 0 with ``zero``).

    Booleans are refused (``True`` is not a duration), and so is NaN: it compares false with everything,
    so a deadline built from it would never pass.
    """
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < 0 or (value == 0 and not zero)):
        bound = "a number of seconds >= 0" if zero else "a positive number of seconds"
        raise InvalidInputError(f"{what} must be {bound}, not {value!r}", **{what: repr(value)})
    return float(value)
