"""A small JSON Schema (2020-12) validator for the keywords nameplate's export schema uses.

Why not the ``jsonschema`` package: it would bring four more packages (one compiled) into every test
environment for one test. This one knows a fixed set of keywords and refuses any other, so the schema
cannot grow a keyword that is silently not checked here; its own tests show it rejects what it should.
"""

from __future__ import annotations

import re
from typing import Any

KEYWORDS = frozenset({"$schema", "$id", "$defs", "$ref", "title", "description", "type", "const", "enum",
                      "properties", "required", "additionalProperties", "items", "anyOf", "minimum", "minLength",
                      "pattern"})

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None, "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
}


def errors(instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, at: str = "$") -> list[str]:
    """Every way ``instance`` breaks ``schema``, as ``path: problem`` strings (empty: valid)."""
    root = schema if root is None else root
    unknown = set(schema) - KEYWORDS
    if unknown:
        raise ValueError(f"{at}: schema keywords this validator does not check: {sorted(unknown)}")
    found: list[str] = []
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        found += errors(instance, target, root, at)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](instance) for t in types):
            return found + [f"{at}: {instance!r} is not of type {' or '.join(types)}"]
    if "const" in schema and (instance != schema["const"] or type(instance) is not type(schema["const"])):
        found.append(f"{at}: {instance!r} is not {schema['const']!r}")
    if "enum" in schema and instance not in schema["enum"]:
        found.append(f"{at}: {instance!r} is not one of {schema['enum']!r}")
    if "anyOf" in schema and all(errors(instance, option, root, at) for option in schema["anyOf"]):
        found.append(f"{at}: {instance!r} matches none of the allowed shapes")
    if isinstance(instance, dict):
        for key in schema.get("required", ()):
            if key not in instance:
                found.append(f"{at}: missing {key!r}")
        properties = schema.get("properties", {})
        for key, value in instance.items():
            if key in properties:
                found += errors(value, properties[key], root, f"{at}.{key}")
            elif schema.get("additionalProperties", True) is False:
                found.append(f"{at}: unexpected {key!r}")
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            found += errors(item, schema["items"], root, f"{at}[{index}]")
    if isinstance(instance, str):
        if len(instance) < schema.get("minLength", 0):
            found.append(f"{at}: {instance!r} is shorter than {schema['minLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            found.append(f"{at}: {instance!r} does not match {schema['pattern']}")
    if _TYPES["number"](instance) and "minimum" in schema and instance < schema["minimum"]:
        found.append(f"{at}: {instance!r} is below {schema['minimum']}")
    return found
