"""Kinds: namespaces with a schema, and the validation of definitions against them.

A kind lists required and optional definition fields, defaults (strings may use ``{name}``, filled
with the entry's name: the step kind derives ``<Name>Config``, ``<Name>StepBuilder`` and ``<Name>``),
a name pattern, an optional validator (``"pkg.module:function"``, called with the definition, returning
``None``/``True`` when it is fine, or problem strings, ``False`` or an exception when it is not), and
``strict`` (unknown fields are errors). Validation collects every problem at once, each with a
suggestion where one exists. The validator runs whenever the definition has the kind's shape (a bad
name does not stop it), since it may assume the required fields are there.

Definitions are stored as canonical JSON and come back as read-only mappings
(``Entry.definition``, a ``types.MappingProxyType``), defaults filled in at registration.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import regex

from . import _patterns
from ._dotted import AttributeMissing, ImportFailed, load_dotted
from ._records import utc
from ._store import Store, _suggest
from ._validation import check_kind_name, check_target, encode_object
from .backends.base import Tx
from .errors import (
    InvalidInputError,
    InvalidNameError,
    KindInUseError,
    TargetImportError,
    UnknownKindError,
    ValidationError,
)

_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_KIND_COLUMNS = ("name, description, required, optional, defaults, name_pattern, validator, strict, builtin, "
                 "created_at, updated_at, id")


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind and its schema."""

    name: str
    description: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    defaults: Mapping[str, Any]
    name_pattern: str | None
    validator: str | None
    strict: bool
    builtin: bool
    created_at: datetime
    updated_at: datetime

    @property
    def fields(self) -> tuple[str, ...]:
        return self.required + self.optional

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "required": list(self.required),
                "optional": list(self.optional), "defaults": dict(self.defaults), "name_pattern": self.name_pattern,
                "validator": self.validator, "strict": self.strict, "builtin": self.builtin}


def _decode(row: Any) -> Kind:
    return Kind(name=row[0], description=row[1], required=tuple(json.loads(row[2])),
                optional=tuple(json.loads(row[3])), defaults=json.loads(row[4]), name_pattern=row[5],
                validator=row[6], strict=bool(row[7]), builtin=bool(row[8]), created_at=utc(row[9]),
                updated_at=utc(row[10]))


def list_kinds(tx: Tx) -> list[Kind]:
    return [_decode(r) for r in tx.execute(f"SELECT {_KIND_COLUMNS} FROM kind ORDER BY name").fetchall()]


def get_kind(tx: Tx, name: str) -> Kind:
    row = tx.execute(f"SELECT {_KIND_COLUMNS} FROM kind WHERE name = ?", (name,)).fetchone()
    if row is None:
        known = [r[0] for r in tx.execute("SELECT name FROM kind ORDER BY name").fetchall()]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known kinds: {', '.join(known)}"
        raise UnknownKindError(f"kind {name!r} is not defined{hint} (define it with define_kind)", kind=name,
                               known=known)
    return _decode(row)


def build_kind(name: str, *, required: Iterable[str], optional: Iterable[str], defaults: Mapping[str, Any] | None,
               name_pattern: str | None, validator: str | None, strict: bool, description: str) -> dict[str, Any]:
    """Check a kind definition; return its column values. Every problem is reported at once."""
    check_kind_name(name)
    problems: list[str] = []
    fields: dict[str, list[Any]] = {}
    for what, given in (("required", required), ("optional", optional)):
        # A lone string would be read as one field per character ('volume' -> v, o, l, ...).
        if isinstance(given, str) or not isinstance(given, Iterable) or isinstance(given, Mapping):
            problems.append(f"{what} must be a list of field names, not {given!r}"
                            + (f"; write [{given!r}]" if isinstance(given, str) else ""))
            given = ()
        fields[what] = list(given)
    required_list, optional_list = fields["required"], fields["optional"]
    for field in required_list + optional_list:
        if not isinstance(field, str) or not _FIELD.match(field):
            problems.append(f"field name {field!r} must be an identifier (letters, digits, '_')")
    overlap = sorted(set(required_list) & set(optional_list))
    if overlap:
        problems.append(f"fields {overlap} are both required and optional; list each once")
    if len(set(required_list + optional_list)) != len(required_list + optional_list) and not overlap:
        problems.append("a field is listed twice")
    defaults = dict(defaults or {})
    unknown_defaults = sorted(set(defaults) - set(required_list) - set(optional_list))
    if unknown_defaults:
        problems.append(f"defaults for fields {unknown_defaults} that the kind does not declare")
    try:
        encode_object(defaults, "defaults")
    except InvalidInputError as error:
        problems.append(str(error))
    if name_pattern is not None:
        if not isinstance(name_pattern, str):
            problems.append(f"name_pattern must be a string, not {type(name_pattern).__name__}")
        else:
            try:
                _patterns.compiled(name_pattern)
            except regex.error as error:
                problems.append(f"name_pattern {name_pattern!r} is not a valid regular expression: {error}")
            else:
                probe = _patterns.too_slow(name_pattern)
                if probe is not None:
                    problems.append(
                        f"name_pattern {name_pattern!r} cannot be matched in bounded time: it backtracks "
                        f"catastrophically (over {_patterns.MATCH_TIMEOUT * 1000:.0f} ms on a name like "
                        f"{probe[:12] + '...' + probe[-1]!r}); remove nested or overlapping repetition")
    if validator is not None:
        try:
            check_target(validator)
            if not callable(load_dotted(validator)):
                problems.append(f"validator {validator!r} is not callable")
        except InvalidInputError as error:
            problems.append(str(error))
        except ImportFailed as error:
            cause = error.cause
            detail = str(cause) if isinstance(cause, ImportError) else \
                f"its module raised {type(cause).__name__}: {cause}"
            problems.append(f"validator {validator!r} cannot be imported: {detail}")
        except AttributeMissing as error:
            problems.append(f"validator {validator!r} cannot be imported: {error}")
    if not isinstance(description, str):
        problems.append("description must be a string")
    if problems:
        raise ValidationError(f"kind {name!r} is not valid: " + "; ".join(problems), kind=name, problems=problems)
    return {"name": name, "description": description, "required": json.dumps(required_list),
            "optional": json.dumps(optional_list), "defaults": encode_object(defaults, "defaults"),
            "name_pattern": name_pattern, "validator": validator, "strict": int(bool(strict))}


def candidate_kind(values: dict[str, Any]) -> Kind:
    """The :class:`Kind` that ``values`` (from :func:`build_kind`) would define."""
    return _decode((values["name"], values["description"], values["required"], values["optional"],
                    values["defaults"], values["name_pattern"], values["validator"], values["strict"], 0, 0.0, 0.0))


_KIND_ENTRIES = ("SELECT e.name, e.definition FROM entry AS e JOIN kind AS k ON k.id = e.kind_id "
                 "WHERE k.name = ? AND e.hidden = 0 ORDER BY e.pk")
#: Changes whenever an entry of the kind, or the kind itself, is written (updated_at moves, rows come
#: and go): what a redefinition checked outside the write lock compares inside it.
_KIND_FINGERPRINT = ("SELECT count(e.pk), max(e.updated_at), coalesce(sum(e.pk), 0), max(k.updated_at) FROM kind AS k "
                     "LEFT JOIN entry AS e ON e.kind_id = k.id WHERE k.name = ?")


def kind_entries(tx: Tx, name: str) -> tuple[list[tuple[str, str | None]], tuple[Any, ...]]:
    """The visible rows of kind ``name`` (name, definition text) and the kind's fingerprint."""
    return (tx.execute(_KIND_ENTRIES, (name,)).fetchall(),
            tuple(tx.execute(_KIND_FINGERPRINT, (name,)).fetchone()))


def kind_fingerprint(tx: Tx, name: str) -> tuple[Any, ...]:
    return tuple(tx.execute(_KIND_FINGERPRINT, (name,)).fetchone())


def broken_by(candidate: Kind, rows: Iterable[tuple[str, str | None]]) -> list[str]:
    """The stored entries a redefinition to ``candidate`` would invalidate, one line each (this runs
    the candidate's validator: keep it outside write transactions)."""
    broken = []
    for name, definition in rows:
        if definition is None:  # an identity without a definition: only its name must still fit
            problems = name_problems(candidate, name)
        else:
            _, problems = validate(candidate, name, json.loads(definition), apply_defaults=False)
        if problems:
            broken.append(f"{name}: {problems[0]}")
    return broken


def save_kind(tx: Tx, store: Store, values: dict[str, Any], *, broken: list[str] | None = None) -> None:
    """Insert or redefine a kind in the caller's transaction.

    ``broken`` is what :func:`broken_by` found for the stored entries, computed by the caller outside
    the transaction; without it the check runs here (validators included).
    """
    existing = tx.execute(f"SELECT {_KIND_COLUMNS} FROM kind WHERE name = ?", (values["name"],)).fetchone()
    now = time.time()
    if existing is None:
        tx.execute("INSERT INTO kind (name, description, required, optional, defaults, name_pattern, validator,"
                   " strict, builtin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                   (values["name"], values["description"], values["required"], values["optional"], values["defaults"],
                    values["name_pattern"], values["validator"], values["strict"], now, now))
        store.record(tx, "kind.define", kind=values["name"], at=now, schema=_schema_detail(values))
        return
    kind = _decode(existing)
    if kind.builtin:
        raise KindInUseError(f"kind {kind.name!r} is built in and cannot be redefined; define a new kind "
                             f"(e.g. {kind.name + '_v2'!r})", kind=kind.name)
    if _same_schema(kind, values):
        # Defining a kind again as it is writes nothing: processes that all define it at start would
        # otherwise move its updated_at under each other's registrations (which then start over).
        return
    if broken is None:
        broken = broken_by(candidate_kind(values), tx.execute(_KIND_ENTRIES, (values["name"],)).fetchall())
    if broken:
        raise KindInUseError(f"redefining kind {kind.name!r} would invalidate {len(broken)} registered "
                             f"definitions ({'; '.join(broken[:3])}); fix or remove them first",
                             kind=kind.name, broken=broken)
    tx.execute("UPDATE kind SET description = ?, required = ?, optional = ?, defaults = ?, name_pattern = ?, "
               "validator = ?, strict = ?, updated_at = ? WHERE id = ?",
               (values["description"], values["required"], values["optional"], values["defaults"],
                values["name_pattern"], values["validator"], values["strict"], now, existing[11]))
    store.record(tx, "kind.define", kind=values["name"], at=now, schema=_schema_detail(values), redefined=True)


def unchanged_kind(tx: Tx, values: dict[str, Any]) -> Kind | None:
    """The stored kind if it already has exactly the schema ``values`` (from :func:`build_kind`) defines."""
    row = tx.execute(f"SELECT {_KIND_COLUMNS} FROM kind WHERE name = ?", (values["name"],)).fetchone()
    if row is None:
        return None
    kind = _decode(row)
    return kind if not kind.builtin and _same_schema(kind, values) else None


def _same_schema(kind: Kind, values: dict[str, Any]) -> bool:
    return (kind.description == values["description"] and list(kind.required) == json.loads(values["required"])
            and list(kind.optional) == json.loads(values["optional"])
            and dict(kind.defaults) == json.loads(values["defaults"]) and kind.name_pattern == values["name_pattern"]
            and kind.validator == values["validator"] and kind.strict == bool(values["strict"]))


def _schema_detail(values: dict[str, Any]) -> dict[str, Any]:
    return {"required": json.loads(values["required"]), "optional": json.loads(values["optional"]),
            "defaults": json.loads(values["defaults"]), "name_pattern": values["name_pattern"],
            "validator": values["validator"], "strict": bool(values["strict"])}


def delete_kind(tx: Tx, store: Store, name: str) -> None:
    kind = get_kind(tx, name)
    if kind.builtin:
        raise KindInUseError(f"kind {name!r} is built in and cannot be deleted", kind=name)
    count = tx.execute("SELECT count(*) FROM entry WHERE kind_id = (SELECT id FROM kind WHERE name = ?)",
                       (name,)).fetchone()[0]
    if count:
        raise KindInUseError(f"kind {name!r} still has {count} entries (in some workspace); delete them first",
                             kind=name, entries=int(count))
    tx.execute("DELETE FROM kind WHERE name = ?", (name,))
    store.record(tx, "kind.delete", kind=name)


def validate(kind: Kind, name: str, definition: Mapping[str, Any] | None, *,
             apply_defaults: bool = True) -> tuple[dict[str, Any], list[str]]:
    """The definition with defaults filled in, and every problem found (empty when valid)."""
    problems = name_problems(kind, name)
    if definition is None:
        definition = {}
    if not isinstance(definition, Mapping):
        return {}, problems + [f"definition must be a JSON object (dict), not {type(definition).__name__}"]
    result = dict(definition)
    if apply_defaults:
        for field, default in kind.defaults.items():
            if field not in result:
                result[field] = default.replace("{name}", name) if isinstance(default, str) else default
    shape: list[str] = []
    for field in kind.required:
        if field not in result:
            shape.append(f"required field {field!r} is missing")
    if kind.strict:
        allowed = set(kind.fields)
        for field in sorted(set(result) - allowed, key=str):
            close = difflib.get_close_matches(str(field), sorted(allowed), n=1)
            shape.append(f"unknown field {field!r}" + (f"; did you mean {close[0]!r}?" if close else
                                                        f" (allowed: {', '.join(kind.fields) or 'none'})"))
    try:
        encode_object(result, "definition")
    except InvalidInputError as error:
        shape.append(str(error))
    # A validator may index required fields, so it only sees definitions of the kind's shape; a name
    # problem alone does not stop it, so its findings are reported together with the name's.
    if kind.validator and not shape:
        shape.extend(_run_validator(kind, result))
    return result, problems + shape


def name_problems(kind: Kind, name: str) -> list[str]:
    """Why ``name`` does not fit the kind's pattern (matched in bounded time; never call this while
    holding the write lock: the pattern is user input)."""
    if not kind.name_pattern:
        return []
    try:
        fits = _patterns.name_fits(kind.name_pattern, name, kind.name)
    except InvalidNameError as error:
        return [str(error)]
    if fits:
        return []
    suggestion = _suggest(name, kind.name_pattern)
    return [f"name {name!r} does not match the pattern {kind.name_pattern}"
            + (f"; did you mean {suggestion!r}?" if suggestion else "")]


def _run_validator(kind: Kind, definition: dict[str, Any]) -> list[str]:
    try:
        function = load_dotted(kind.validator or "")
    except (ImportFailed, AttributeMissing) as error:
        raise TargetImportError(f"the validator {kind.validator!r} of kind {kind.name!r} cannot be imported "
                                f"({error}); fix the kind with define_kind", kind=kind.name,
                                target=kind.validator) from None
    try:
        outcome = function(dict(definition))
    except (ValueError, TypeError) as error:
        return [f"validator {kind.validator}: {error}"]
    except Exception as error:  # a validator bug is still a reason to refuse, reported with the rest
        return [f"validator {kind.validator} raised {type(error).__name__}: {error}"]
    if outcome is None or outcome is True:
        return []
    if outcome is False:
        return [f"validator {kind.validator} rejected the definition"]
    if isinstance(outcome, str):
        return [outcome]
    return [str(problem) for problem in outcome]
