"""Checks on user input, done before any write so bad input changes nothing."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidMetadataError, InvalidNameError

MAX_NAME_LENGTH = 255
MAX_JSON_BYTES = 1024 * 1024
_KIND_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_CAPABILITY = re.compile(r"^[^\s\x00-\x1f\x7f]{1,128}$")
# Categories a name may not contain: control, line/paragraph separators, unassigned, surrogates.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs", "Cn"})


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a valid entry name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a string, not {type(name).__name__}", name=name)
    if not name:
        raise InvalidNameError(f"{what} is empty; give a non-empty name", name=name)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}",
                               name=name)
    for position, char in enumerate(name):
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            raise InvalidNameError(f"{what} {name!r} contains the control character U+{ord(char):04X} at "
                                   f"position {position}; names are printable text", name=name)
    if not name.strip():
        raise InvalidNameError(f"{what} {name!r} is only whitespace; give a visible name", name=name)
    if name != name.strip():
        raise InvalidNameError(f"{what} {name!r} has leading or trailing whitespace; did you mean "
                               f"{name.strip()!r}?", name=name)
    return name


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
    result = set()
    for capability in capabilities:
        if not isinstance(capability, str) or not _CAPABILITY.match(capability):
            raise InvalidNameError(f"capability {capability!r} must be 1-128 characters without whitespace "
                                   "or control characters", name=capability)
        result.add(capability)
    return sorted(result)


def _reject_non_finite(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidMetadataError(f"{path} is {value!r}, which JSON cannot represent", path=path)
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidMetadataError(f"{path} has the non-string key {key!r}; JSON object keys are "
                                           "strings", path=path)
            _reject_non_finite(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _reject_non_finite(item, f"{path}[{index}]")


def encode_object(value: object, what: str = "metadata") -> str:
    """Serialise a JSON object (dict) to canonical text, or raise :class:`InvalidMetadataError`."""
    if not isinstance(value, Mapping):
        raise InvalidMetadataError(f"{what} must be a JSON object (a dict), not {type(value).__name__}",
                                   what=what)
    _reject_non_finite(value, what)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidMetadataError(f"{what} is not JSON-serialisable: {error}; use strings, numbers, "
                                   "booleans, None, lists and dicts", what=what) from None
    if len(text.encode()) > MAX_JSON_BYTES:
        raise InvalidMetadataError(f"{what} is {len(text.encode())} bytes as JSON; the limit is "
                                   f"{MAX_JSON_BYTES}", what=what)
    return text
