"""Guarantee 7, "nothing lost on bad input", as one table.

Every row is one bad input (a name, kind, workspace, metadata, definition, target, capability, argument,
lease, import file, database file or command line) tried against a small populated registry. Each row
states the documented outcome: the most specific ``NameplateError`` subclass and a fragment of its message
(CLI rows: the exit code and one ``nameplate: error:`` line on stderr, or click's usage error with exit 2).
Every row also proves that nothing changed: the registry's export, every row of every table (read with
plain sqlite3) and every file under the test's temporary directory are the same afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nameplate import (
    AmbiguousNameError,
    ConflictError,
    DatabaseError,
    DatabaseLocationError,
    EntryNotFoundError,
    ForeignDatabaseError,
    ImportFileError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidNameError,
    KindInUseError,
    Lease,
    LeaseHeldError,
    LeaseLost,
    NameplateError,
    NameTakenError,
    NoMatchError,
    NotImportableError,
    NotLeaseHolderError,
    Registry,
    SchemaTooNewError,
    TargetImportError,
    UnknownKindError,
    UnknownStrategyError,
    UnknownWorkspaceError,
    ValidationError,
    WorkspaceError,
)
from nameplate.cli import main

from conftest import table_snapshot

DB_NAME = "registry.db"
#: A valid ULID nobody in the populated registry uses: the "good" entry added to broken import files.
FRESH_ID = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
STAMP = "2026-01-01T00:00:00Z"
#: A password that must never be echoed back (DESIGN.md: "Passwords in URLs never appear in output, errors").
PASSWORD = "s3cret-pw"


# -- the populated registry every row runs against ---------------------------------------------------------


@dataclass
class World:
    """A populated registry in ``tmp_path``, plus whatever a row's setup prepared beside it."""

    registry: Registry
    db_path: Path
    tmp_path: Path
    others: list[Registry] = field(default_factory=list)
    leases: dict[str, Lease] = field(default_factory=dict)

    def at(self, name: str) -> Path:
        return self.tmp_path / name

    def other_process(self) -> Registry:
        """A second Registry on the same file: its own session, which is how another process looks."""
        other = Registry(self.db_path)
        self.others.append(other)
        return other


def populate(registry: Registry) -> None:
    """Entries in core and in a child workspace, a user kind with a schema, a registered step."""
    registry.create_workspace("dev1", description="Ada's experiments")
    registry.create_workspace("dev1_gpu", parent="dev1")  # dev1 has a child: deleting it is refused
    registry.define_kind("pipette", required=["max_volume_ul"], optional=["channels"], defaults={"channels": 1},
                         strict=True)
    registry.resolve("lh1", "node", {"url": "http://localhost:2000"})
    registry.resolve("plate_reader", "node")
    registry.resolve("held_node", "node")  # what rows about leases have another process hold
    registry.resolve("twin", "node")
    registry.resolve("twin", "module")  # one name under two kinds: lookups without kind= are ambiguous
    registry.register("p300", "pipette", {"max_volume_ul": 300}, capabilities=["aspirate", "dispense"])
    registry.register("XGBoostTraining", "step", {"sagemaker_step_type": "Training"})
    registry.register("XGBoostTraining", "step", {"sagemaker_step_type": "Processing"}, workspace="dev1")
    registry.register("gpt", "provider", capabilities=["llm", "chat"])
    # Targets that are well-formed but cannot be loaded: load() must say so, not crash.
    registry.register("missing_module_builder", "builder", target="nameplate_no_such_module:Builder")
    registry.register("missing_attribute_builder", "builder", target="json:NoSuchEncoder")
    registry.resolve("scratch", "node", workspace="dev1")
    registry.resolve("gpu_job", "node", workspace="dev1_gpu")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    db_path = tmp_path / DB_NAME
    registry = Registry(db_path)
    populate(registry)
    built = World(registry, db_path, tmp_path)
    try:
        yield built
    finally:
        for other in built.others:
            other.close()
        registry.close()


# -- what "nothing changed" means --------------------------------------------------------------------------


def durable_export(registry: Registry) -> dict[str, Any]:
    """The export without its own timestamp: every other field (revision included) must stay put."""
    document = registry.export()
    del document["exported_at"]
    return document


def file_tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Type, permissions, size and content hash (or link target) of everything under ``root`` except the
    populated registry's own files: a refused database or import file must stay byte-for-byte the same,
    and no -wal/-shm file or half-written database may appear beside it."""
    tree: dict[str, tuple[Any, ...]] = {}
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            path = Path(directory, name)
            relative = str(path.relative_to(root))
            if relative.startswith(DB_NAME):  # registry.db, -wal, -shm: compared through sqlite instead
                continue
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                detail: Any = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                detail = os.readlink(path)
            else:
                detail = None  # a directory or FIFO: never opened (opening a FIFO blocks)
            tree[relative] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_size, detail)
    return tree


def tables(world: World, sessions: bool) -> dict[str, list[tuple[Any, ...]]]:
    snapshot = table_snapshot(world.db_path)
    if sessions:
        # Live sessions beat (beat_at, beats) on their own schedule; that is not the bad call's doing.
        # Leases, lock-delays and entries are still compared.
        del snapshot["session"]
    return snapshot


# -- the table's rows --------------------------------------------------------------------------------------

Setup = Callable[[World], None]


@dataclass(frozen=True)
class ApiCase:
    """A library call that must raise exactly ``error`` with ``message`` in its text."""

    id: str
    call: Callable[[World], object]
    error: type[NameplateError]
    message: str
    setup: Setup | None = None
    sessions: bool = False  # live sessions are involved: the session table is not compared
    absent: tuple[str, ...] = ()  # text that must not appear in the message (secrets)
    records_load_error: bool = False  # a failed import is recorded on its entry: the one row it writes


@dataclass(frozen=True)
class CliCase:
    """A command line that must exit with ``exit_code``, saying ``message`` on stderr.

    ``args`` may use ``{tmp}`` (the test's directory) and ``{db}``; without ``--db`` the populated
    registry is used. ``process=True`` runs a real ``python -m nameplate`` process.
    """

    id: str
    args: tuple[str, ...]
    exit_code: int
    message: str
    setup: Setup | None = None
    sessions: bool = False
    process: bool = False
    absent: tuple[str, ...] = ()


Case = ApiCase | CliCase


def api(case_id: str, call: Callable[[World], object], error: type[NameplateError], message: str, *,
        setup: Setup | None = None, sessions: bool = False, absent: tuple[str, ...] = (),
        records_load_error: bool = False) -> ApiCase:
    return ApiCase(case_id, call, error, message, setup, sessions, absent, records_load_error)


def cli(case_id: str, args: Sequence[str], exit_code: int, message: str, *, setup: Setup | None = None,
        sessions: bool = False, process: bool = False, absent: tuple[str, ...] = ()) -> CliCase:
    return CliCase(case_id, tuple(args), exit_code, message, setup, sessions, process, absent)


# -- setups: files and states a row needs before its "before" snapshot ----------------------------------------


def steps(*setups: Setup) -> Setup:
    def run(world: World) -> None:
        for setup in setups:
            setup(world)
    return run


def text_file(name: str, content: str | bytes) -> Setup:
    def setup(world: World) -> None:
        path = world.at(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return setup


def directory(name: str) -> Setup:
    return lambda world: world.at(name).mkdir()


def fifo(name: str) -> Setup:
    return lambda world: os.mkfifo(world.at(name))


def dangling_symlink(name: str) -> Setup:
    return lambda world: os.symlink(world.at("nowhere") / DB_NAME, world.at(name))


def sqlite_file(name: str, *statements: str) -> Setup:
    """Another application's SQLite database, written with plain sqlite3."""
    def setup(world: World) -> None:
        conn = sqlite3.connect(world.at(name))
        try:
            for statement in statements:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()
    return setup


FIREFOX_LIKE = sqlite_file("places.sqlite", "CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)",
                           "INSERT INTO moz_places (url) VALUES ('https://example.org')")
FOREIGN_APP_ID = sqlite_file("other_app.db", f"PRAGMA application_id = {0x4D4F5A41}",  # "MOZA"
                             "CREATE TABLE notes (body TEXT)")


def newer_nameplate_file(name: str) -> Setup:
    """A nameplate database whose schema version is ahead of this nameplate's."""
    def setup(world: World) -> None:
        Registry(world.at(name)).close()
        conn = sqlite3.connect(world.at(name))
        try:
            conn.execute("PRAGMA user_version = 99")
        finally:
            conn.close()
    return setup


def damaged_nameplate_file(name: str) -> Setup:
    """A nameplate database whose first page (the schema) was overwritten; its header still says it is ours."""
    def setup(world: World) -> None:
        path = world.at(name)
        with Registry(path) as registry:
            registry.resolve("lost", "node")
        data = bytearray(path.read_bytes())
        data[100:4096] = b"\xab" * (4096 - 100)
        path.write_bytes(bytes(data))
    return setup


def fresh_entry(**changes: Any) -> dict[str, Any]:
    """A valid new entry: a broken file carries it too, to show that a good part is not imported alone."""
    entry: dict[str, Any] = {"id": FRESH_ID, "workspace": "core", "kind": "node", "name": "imported_node",
                             "metadata": {},
             "capabilities": [], "definition": None, "target": None, "created_at": STAMP, "updated_at": STAMP,
             "last_seen_at": STAMP}
    entry.update(changes)
    return entry


def take_over_id_of(name: str) -> Callable[[dict[str, Any]], None]:
    """Leave core's ``name`` out of the file and give its id to the file's new entry: the id is then
    unique in the file but already owned in the registry."""
    def change(document: dict[str, Any]) -> None:
        owner = next(e for e in document["entries"] if e["name"] == name and e["workspace"] == "core")
        document["entries"].remove(owner)
        document["entries"][-1]["id"] = owner["id"]
    return change


def export_file(change: Callable[[dict[str, Any]], None], name: str = "import.json") -> Setup:
    """The registry's own export plus one new valid entry, broken by ``change``, written to ``name``."""
    def setup(world: World) -> None:
        document = world.registry.export()
        document["entries"].append(fresh_entry())
        change(document)
        world.at(name).write_text(json.dumps(document), encoding="utf-8")
    return setup


def truncated_export(name: str = "import.json") -> Setup:
    def setup(world: World) -> None:
        document = world.registry.export()
        document["entries"].append(fresh_entry())
        world.at(name).write_text(json.dumps(document)[:-40], encoding="utf-8")
    return setup


def madsci_file(name: str = "madsci.json", component_type: str = "node") -> Setup:
    document = {"version": 1, "created_at": STAMP, "updated_at": STAMP, "entries": {
        "arm_1": {"id": FRESH_ID, "component_type": component_type, "created_at": STAMP, "last_seen": STAMP,
                  "metadata": {}, "lock": None, "workcell_id": None}}}
    return text_file(name, json.dumps(document))


def held_by_another_process(name: str, kind: str = "node", workspace: str | None = None) -> Setup:
    def setup(world: World) -> None:
        world.other_process().acquire(name, kind, workspace=workspace)  # its session keeps the lease
    return setup


def own_session(world: World) -> None:
    # The acting process already runs a session: opening one on demand is a write of its own (it is
    # the process registering itself), which would blur what the refused call itself changed.
    world.registry.session()


def own_lease(name: str, kind: str = "node") -> Setup:
    def setup(world: World) -> None:
        world.leases[name] = world.registry.acquire(name, kind)
    return setup


def broken_by_operator(name: str, kind: str = "node") -> Setup:
    def setup(world: World) -> None:
        assert world.other_process().release(name, kind, force=True)
    return setup


def with_env(variable: str, value: str, call: Callable[[World], object]) -> Callable[[World], object]:
    """Run ``call`` with an environment variable set: only around the call, since the export that the
    row compares before and after reads ``NAMEPLATE_WORKSPACE`` too."""
    def run(world: World) -> object:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(variable, value)
            return call(world)
    return run


# -- helpers used by the calls ---------------------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def open_registry(path: Path | str, **options: Any) -> None:
    """Open and close: a constructor that wrongly accepts its input must not leak a Registry."""
    Registry(path, **options).close()


def deep_json_array(depth: int) -> str:
    return "[" * depth + "]" * depth


STEP = {"sagemaker_step_type": "Processing"}
NAN = float("nan")
INF = float("inf")


# -- the table -----------------------------------------------------------------------------------------------------

NAME_CASES: list[Case] = [
    api("names/empty", lambda w: w.registry.resolve("", "node"), InvalidNameError, "is empty"),
    api("names/only-whitespace", lambda w: w.registry.resolve("   ", "node"), InvalidNameError, "only whitespace"),
    api("names/leading-space", lambda w: w.registry.resolve(" lh9", "node"), InvalidNameError,
        "leading or trailing whitespace"),
    api("names/trailing-space-suggests-the-trimmed-name", lambda w: w.registry.resolve("lh9 ", "node"),
        InvalidNameError, "did you mean 'lh9'?"),
    api("names/tab", lambda w: w.registry.resolve("lh\t9", "node"), InvalidNameError, "control character U+0009"),
    api("names/newline", lambda w: w.registry.resolve("lh\n9", "node"), InvalidNameError, "U+000A"),
    api("names/nul", lambda w: w.registry.resolve("lh\x009", "node"), InvalidNameError, "U+0000"),
    api("names/bell-in-lookup", lambda w: w.registry.lookup("bell\x07"), InvalidNameError, "U+0007"),
    api("names/bidi-override-U+202E", lambda w: w.registry.resolve("admin\u202etxt.exe", "node"),
        InvalidNameError, "invisible format character U+202E"),
    api("names/zero-width-space-U+200B", lambda w: w.registry.resolve("lh\u200b1", "node"), InvalidNameError,
        "invisible format character U+200B"),
    api("names/byte-order-mark-U+FEFF", lambda w: w.registry.resolve("\ufefflh1", "node"), InvalidNameError,
        "U+FEFF at position 0"),
    api("names/soft-hyphen-U+00AD", lambda w: w.registry.resolve("lh\u00ad1", "node"), InvalidNameError,
        "U+00AD"),
    api("names/line-separator-U+2028", lambda w: w.registry.resolve("lh\u20281", "node"), InvalidNameError,
        "line separator U+2028"),
    api("names/lone-surrogate", lambda w: w.registry.resolve("lh\ud8001", "node"), InvalidNameError,
        "surrogate U+D800"),
    api("names/256-characters", lambda w: w.registry.resolve("x" * 256, "node"), InvalidNameError,
        "256 characters long; the limit is 255"),
    # U+0958 is excluded from composition: NFC turns each into two code points, 200 into 400.
    api("names/too-long-after-NFC", lambda w: w.registry.resolve("\u0958" * 200, "node"), InvalidNameError,
        "400 characters long"),
    api("names/int", lambda w: w.registry.resolve(42, "node"), InvalidNameError,  # type: ignore[arg-type]
        "must be a string, not int"),
    api("names/None", lambda w: w.registry.lookup(None), InvalidNameError,  # type: ignore[arg-type]
        "must be a string, not NoneType"),
    api("names/bytes", lambda w: w.registry.get(b"lh1", "node"), InvalidNameError,  # type: ignore[arg-type]
        "must be a string, not bytes"),
    api("names/rename-to-a-control-character", lambda w: w.registry.rename("lh1", "lh\x071", "node"),
        InvalidNameError, "new name"),
    api("names/delete-with-zero-width-joiner", lambda w: w.registry.delete("lh\u200d1", "node"), InvalidNameError,
        "U+200D"),
    api("names/acquire-with-bidi-override", lambda w: w.registry.acquire("lh\u202e1", "node"), InvalidNameError,
        "U+202E"),
    api("names/hide-empty", lambda w: w.registry.hide("", "node", workspace="dev1"), InvalidNameError, "is empty"),
    # register() reports every problem at once, so a bad name arrives as a ValidationError (its docstring).
    api("names/register-with-invisible-character",
        lambda w: w.registry.register("Xgb\u200bTraining", "step", STEP), ValidationError, "U+200B"),
    api("names/register-many-non-string-name",
        lambda w: w.registry.register_many([{"name": 7, "kind": "node"}]), ValidationError,
        "must be a string, not int"),
]

KIND_CASES: list[Case] = [
    api("kinds/upper-case", lambda w: w.registry.resolve("x", "Node"), InvalidNameError, "not a valid kind name"),
    api("kinds/empty", lambda w: w.registry.resolve("x", ""), InvalidNameError, "not a valid kind name"),
    api("kinds/None-for-explain", lambda w: w.registry.explain("lh1", None), InvalidNameError,  # type: ignore[arg-type]
        "not a valid kind name"),
    api("kinds/with-space", lambda w: w.registry.lookup("lh1", "lab node"), InvalidNameError,
        "not a valid kind name"),
    api("kinds/65-characters", lambda w: w.registry.list("k" * 65), InvalidNameError, "at most 64 characters"),
    api("kinds/unknown-in-resolve", lambda w: w.registry.resolve("arm_1", "robot"), UnknownKindError,
        "kind 'robot' is not defined"),
    api("kinds/unknown-in-lookup", lambda w: w.registry.lookup("lh1", "nodes"), UnknownKindError,
        "kind 'nodes' is not defined"),
    api("kinds/unknown-in-list", lambda w: w.registry.list("robots"), UnknownKindError, "known kinds"),
    api("kinds/misspelt-suggests-the-kind", lambda w: w.registry.kind("pipete"), UnknownKindError,
        "did you mean 'pipette'?"),
    api("kinds/register-under-unknown-kind", lambda w: w.registry.register("arm_1", "robot", {}), ValidationError,
        "kind 'robot' is not defined"),
    api("kinds/define-with-invalid-name", lambda w: w.registry.define_kind("Tip Rack"), InvalidNameError,
        "not a valid kind name"),
    api("kinds/define-with-invalid-field-name", lambda w: w.registry.define_kind("tip_rack", ["tip count"]),
        ValidationError, "must be an identifier"),
    api("kinds/define-with-defaults-for-undeclared-fields",
        lambda w: w.registry.define_kind("tip_rack", ["tips"], defaults={"colour": "blue"}), ValidationError,
        "defaults for fields ['colour']"),
    api("kinds/define-with-invalid-pattern", lambda w: w.registry.define_kind("tip_rack", name_pattern="(["),
        ValidationError, "not a valid regular expression"),
    api("kinds/define-with-catastrophic-pattern",
        lambda w: w.registry.define_kind("tip_rack", name_pattern="^(a|aa)+$"), ValidationError,
        "backtracks catastrophically"),
    api("kinds/define-with-unimportable-validator",
        lambda w: w.registry.define_kind("tip_rack", validator="nameplate_no_such_module:check"), ValidationError,
        "cannot be imported"),
    # A lone string must not be split into one-letter fields (register() refuses it for capabilities).
    api("kinds/define-with-required-as-lone-string", lambda w: w.registry.define_kind("tip_rack", "volume"),
        ValidationError, "'volume'"),
    # define_kind: "Every problem with the schema is reported at once (ValidationError)".
    api("kinds/define-with-NaN-default",
        lambda w: w.registry.define_kind("tip_rack", optional=["depth"], defaults={"depth": NAN}), ValidationError,
        "is nan"),
    api("kinds/define-with-non-string-description",
        lambda w: w.registry.define_kind("tip_rack", description=5), ValidationError,  # type: ignore[arg-type]
        "description must be a string"),
    api("kinds/redefine-built-in", lambda w: w.registry.define_kind("node", ["url"]), KindInUseError, "built in"),
    api("kinds/redefine-breaking-stored-definitions",
        lambda w: w.registry.define_kind("pipette", ["max_volume_ul", "tip_type"]), KindInUseError,
        "would invalidate 1 registered definitions"),
    api("kinds/delete-built-in", lambda w: w.registry.delete_kind("step"), KindInUseError, "built in"),
    api("kinds/delete-with-entries", lambda w: w.registry.delete_kind("pipette"), KindInUseError,
        "still has 1 entries"),
    api("kinds/ambiguous-name-without-kind", lambda w: w.registry.lookup("twin"), AmbiguousNameError,
        "several kinds"),
]

WORKSPACE_CASES: list[Case] = [
    api("workspaces/create-with-space", lambda w: w.registry.create_workspace("dev 2"), InvalidNameError,
        "not a valid workspace name"),
    api("workspaces/create-starting-with-dot", lambda w: w.registry.create_workspace(".hidden"), InvalidNameError,
        "not a valid workspace name"),
    api("workspaces/create-65-characters", lambda w: w.registry.create_workspace("w" * 65), InvalidNameError,
        "at most 64 characters"),
    api("workspaces/create-with-non-string-description",
        lambda w: w.registry.create_workspace("dev2", description=5), InvalidInputError,  # type: ignore[arg-type]
        "description must be a string"),
    api("workspaces/create-over-unknown-parent", lambda w: w.registry.create_workspace("dev2", parent="ghost"),
        UnknownWorkspaceError, "workspace 'ghost' does not exist"),
    # Workspaces are never re-parented, so the only cycle one can ask for is a workspace over itself.
    api("workspaces/create-as-its-own-parent", lambda w: w.registry.create_workspace("loop", parent="loop"),
        UnknownWorkspaceError, "workspace 'loop' does not exist"),
    api("workspaces/create-existing", lambda w: w.registry.create_workspace("dev1"), NameTakenError,
        "already exists"),
    api("workspaces/create-core", lambda w: w.registry.create_workspace("core"), NameTakenError, "already exists"),
    api("workspaces/resolve-in-unknown", lambda w: w.registry.resolve("x", "node", workspace="ghost"),
        UnknownWorkspaceError, "workspace 'ghost' does not exist"),
    api("workspaces/resolve-in-empty-name", lambda w: w.registry.resolve("x", "node", workspace=""),
        InvalidNameError, "not a valid workspace name"),
    api("workspaces/context-with-invalid-name", lambda w: w.registry.workspace("a/b").__enter__(),
        InvalidNameError, "not a valid workspace name"),
    api("workspaces/invalid-NAMEPLATE_WORKSPACE",
        with_env("NAMEPLATE_WORKSPACE", "no such/ws", lambda w: w.registry.resolve("x", "node")), InvalidNameError,
        "'no such/ws' is not a valid workspace name"),
    api("workspaces/delete-core", lambda w: w.registry.delete_workspace("core"), WorkspaceError,
        "cannot be deleted"),
    api("workspaces/delete-with-children", lambda w: w.registry.delete_workspace("dev1"), WorkspaceError,
        "has child workspaces (dev1_gpu)"),
    api("workspaces/delete-unknown", lambda w: w.registry.delete_workspace("ghost"), UnknownWorkspaceError,
        "workspace 'ghost' does not exist"),
    api("workspaces/hide-own-entry", lambda w: w.registry.hide("scratch", "node", workspace="dev1"),
        WorkspaceError, "delete it instead"),
    api("workspaces/promote-from-core", lambda w: w.registry.promote("lh1", "node"), WorkspaceError,
        "already in core"),
    api("workspaces/promote-over-parent-entry",
        lambda w: w.registry.promote("XGBoostTraining", "step", workspace="dev1"), NameTakenError,
        "already exists in 'core'"),
    api("workspaces/unhide-what-is-not-hidden", lambda w: w.registry.unhide("lh1", "node", workspace="dev1"),
        EntryNotFoundError, "does not hide"),
    api("workspaces/update-inherited-entry",
        lambda w: w.registry.update("lh1", "node", metadata={"a": 1}, workspace="dev1"), EntryNotFoundError,
        "inherited from workspace 'core'"),
    api("workspaces/diff-with-unknown", lambda w: w.registry.diff("core", "ghost"), UnknownWorkspaceError,
        "workspace 'ghost' does not exist"),
    api("workspaces/delete-with-leased-entry", lambda w: w.registry.delete_workspace("dev1_gpu"), WorkspaceError,
        "leased entries", setup=held_by_another_process("gpu_job", workspace="dev1_gpu"), sessions=True),
]

METADATA_CASES: list[Case] = [
    api("metadata/list", lambda w: w.registry.resolve("new_node", "node", ["a"]),  # type: ignore[arg-type]
        InvalidMetadataError, "must be a JSON object (a dict), not list"),
    api("metadata/string-in-update", lambda w: w.registry.update("lh1", "node", metadata="url=x"),  # type: ignore[arg-type]
        InvalidMetadataError, "not str"),
    api("metadata/int-key", lambda w: w.registry.resolve("new_node", "node", {1: "x"}),  # type: ignore[dict-item]
        InvalidMetadataError, "non-string key 1"),
    api("metadata/NaN", lambda w: w.registry.resolve("lh1", "node", {"v": NAN}), InvalidMetadataError,
        "metadata.v is nan"),
    api("metadata/inf-nested", lambda w: w.registry.update("lh1", "node", metadata={"limits": {"max": INF}}),
        InvalidMetadataError, "metadata.limits.max is inf"),
    api("metadata/minus-inf-in-list", lambda w: w.registry.resolve("new_node", "node", {"xs": [1, -INF]}),
        InvalidMetadataError, "metadata.xs[1] is -inf"),
    api("metadata/set", lambda w: w.registry.resolve("new_node", "node", {"s": {1, 2}}), InvalidMetadataError,
        "not JSON-serialisable"),
    api("metadata/bytes", lambda w: w.registry.update("lh1", "node", metadata={"b": b"x"}), InvalidMetadataError,
        "not JSON-serialisable"),
    api("metadata/object", lambda w: w.registry.register("gpt", "provider", metadata={"o": object()}),
        InvalidMetadataError, "not JSON-serialisable"),
    api("metadata/nested-65-levels", lambda w: w.registry.resolve("lh1", "node", nested(65)), InvalidMetadataError,
        "nests deeper than 64 levels"),
    api("metadata/nested-5000-levels", lambda w: w.registry.update("lh1", "node", metadata=nested(5000)),
        InvalidMetadataError, "nests deeper than 64 levels"),
    api("metadata/over-1-MiB", lambda w: w.registry.resolve("new_node", "node", {"blob": "x" * (1 << 20)}),
        InvalidMetadataError, "the limit is 1048576"),
    api("metadata/register-many-names-every-bad-item",
        lambda w: w.registry.register_many([{"name": "a1", "kind": "node", "metadata": {"v": NAN}},
                                            {"name": "a2", "kind": "node", "metadata": [1]}]),
        InvalidMetadataError, "2 problem(s), nothing registered"),
    api("metadata/session-info-NaN", lambda w: w.registry.session().report(progress=NAN), InvalidMetadataError,
        "info.progress is nan", setup=own_session, sessions=True),
]

DEFINITION_CASES: list[Case] = [
    api("definitions/missing-required", lambda w: w.registry.register("p20", "pipette", {"channels": 8}),
        ValidationError, "required field 'max_volume_ul' is missing"),
    api("definitions/unknown-field-strict-kind",
        lambda w: w.registry.register("p20", "pipette", {"max_volume_ul": 20, "colour": "red"}), ValidationError,
        "unknown field 'colour'"),
    api("definitions/misspelt-field-suggests-the-field",
        lambda w: w.registry.register("p20", "pipette", {"max_volume": 20}), ValidationError,
        "did you mean 'max_volume_ul'?"),
    api("definitions/list-instead-of-object",
        lambda w: w.registry.register("p20", "pipette", ["max_volume_ul"]),  # type: ignore[arg-type]
        ValidationError, "definition must be a JSON object"),
    api("definitions/NaN-value", lambda w: w.registry.register("p20", "pipette", {"max_volume_ul": NAN}),
        ValidationError, "definition.max_volume_ul is nan"),
    api("definitions/hyperparameter-without-model-type",
        lambda w: w.registry.register("xgb_params", "hyperparameter", {"description": "x"}), ValidationError,
        "required field 'model_type' is missing"),
    api("definitions/step-name-not-PascalCase", lambda w: w.registry.register("xgboost_eval", "step", STEP),
        ValidationError, "did you mean 'XgboostEval'?"),
    api("definitions/step-field-misspelt",
        lambda w: w.registry.register("XGBoostEval", "step", {"sagemaker_step_typ": "Processing"}),
        ValidationError, "did you mean 'sagemaker_step_type'?"),
    api("definitions/resolve-step-not-PascalCase", lambda w: w.registry.resolve("my_step", "step"),
        InvalidNameError, "does not match kind 'step'"),
    api("definitions/rename-step-to-snake-case",
        lambda w: w.registry.rename("XGBoostTraining", "xgb_training", "step"), InvalidNameError,
        "did you mean 'XgbTraining'?"),
    api("definitions/re-register-differently",
        lambda w: w.registry.register("XGBoostTraining", "step", STEP), NameTakenError, "already registered"),
    api("definitions/register-many-one-bad-item-writes-none",
        lambda w: w.registry.register_many([{"name": "p20", "kind": "pipette", "definition": {"max_volume_ul": 20}},
                                            {"name": "p10", "kind": "pipette", "definition": {}}]),
        ValidationError, "item 1 (pipette 'p10')"),
    api("definitions/register-many-listed-twice",
        lambda w: w.registry.register_many([{"name": "p20", "kind": "pipette", "definition": {"max_volume_ul": 20}},
                                            {"name": "p20", "kind": "pipette", "definition": {"max_volume_ul": 20}}]),
        ValidationError, "listed twice in this batch"),
    api("definitions/register-many-item-not-a-dict", lambda w: w.registry.register_many(["p20"]),  # type: ignore[list-item]
        InvalidInputError, "item 0 must be a Registration or a dict, not str"),
    api("definitions/register-many-item-without-kind", lambda w: w.registry.register_many([{"name": "p20"}]),
        InvalidInputError, "needs 'name' and 'kind'"),
]

TARGET_CASES: list[Case] = [
    api("targets/no-colon", lambda w: w.registry.register("enc", "builder", target="json.JSONEncoder"),
        ValidationError, "is not a dotted path"),
    api("targets/spaces", lambda w: w.registry.register("enc", "builder", target="my module:Thing"),
        ValidationError, "is not a dotted path"),
    api("targets/file-path", lambda w: w.registry.register("enc", "builder", target="./builders/x.py:Thing"),
        ValidationError, "is not a dotted path"),
    api("targets/non-string", lambda w: w.registry.register("enc", "builder", target=42),  # type: ignore[arg-type]
        ValidationError, "is not a dotted path"),
    api("targets/load-missing-module", lambda w: w.registry.load("missing_module_builder", "builder"),
        TargetImportError, "importing 'nameplate_no_such_module:Builder' failed", records_load_error=True),
    api("targets/load-missing-attribute", lambda w: w.registry.load("missing_attribute_builder", "builder"),
        TargetImportError, "has no such attribute 'NoSuchEncoder'", records_load_error=True),
    api("targets/load-entry-without-target", lambda w: w.registry.load("lh1", "node"), TargetImportError,
        "has no target to load"),
]

CAPABILITY_CASES: list[Case] = [
    api("capabilities/lone-string", lambda w: w.registry.register("claude", "provider", capabilities="llm"),
        ValidationError, "write ['llm']"),
    api("capabilities/inner-space", lambda w: w.registry.register("claude", "provider", capabilities=["big llm"]),
        ValidationError, "must be 1-128 visible characters without whitespace"),
    api("capabilities/empty-string", lambda w: w.registry.register("claude", "provider", capabilities=[""]),
        ValidationError, "must be 1-128 visible characters"),
    api("capabilities/zero-width-space",
        lambda w: w.registry.register("claude", "provider", capabilities=["llm\u200b"]), ValidationError,
        "must be 1-128 visible characters"),
    api("capabilities/bidi-override",
        lambda w: w.registry.register("claude", "provider", capabilities=["\u202ellm"]), ValidationError,
        "must be 1-128 visible characters"),
    api("capabilities/non-string",
        lambda w: w.registry.register("claude", "provider", capabilities=[5]),  # type: ignore[list-item]
        ValidationError, "capability 5"),
    api("capabilities/int-instead-of-a-collection",
        lambda w: w.registry.register("claude", "provider", capabilities=5),  # type: ignore[arg-type]
        ValidationError, "capabilities must be a collection of strings"),
    api("capabilities/find-with-int", lambda w: w.registry.find("provider", 5),  # type: ignore[arg-type]
        InvalidNameError, "capabilities must be a collection of strings"),
    api("capabilities/129-characters",
        lambda w: w.registry.register("claude", "provider", capabilities=["c" * 129]), ValidationError,
        "must be 1-128 visible characters"),
    api("capabilities/find-with-lone-string", lambda w: w.registry.find("provider", "llm"), InvalidNameError,
        "write ['llm']"),
    api("capabilities/select-with-tab", lambda w: w.registry.select("provider", ["l\tlm"]), InvalidNameError,
        "without whitespace"),
    api("capabilities/select-nobody-offers-round-robin",
        lambda w: w.registry.select("provider", {"teleport"}, strategy="round_robin"), NoMatchError, "teleport"),
]

ARGUMENT_CASES: list[Case] = [
    api("arguments/wait-negative", lambda w: w.registry.acquire("lh1", "node", wait=-1), InvalidInputError,
        "wait must be None or a number of seconds >= 0"),
    api("arguments/wait-string", lambda w: w.registry.acquire("lh1", "node", wait="5"),  # type: ignore[arg-type]
        InvalidInputError, "wait must be"),
    api("arguments/wait-bool", lambda w: w.registry.acquire("lh1", "node", wait=True), InvalidInputError,
        "wait must be"),
    api("arguments/wait-NaN", lambda w: w.registry.resolve("lh1", "node", lock=True, wait=NAN), InvalidInputError,
        "wait must be"),
    api("arguments/ttl-zero", lambda w: open_registry(w.db_path, ttl=0), InvalidInputError,
        "ttl must be a positive number of seconds"),
    api("arguments/ttl-string", lambda w: open_registry(w.db_path, ttl="15"), InvalidInputError,
        "ttl must be a positive number"),
    api("arguments/ttl-NaN", lambda w: open_registry(w.db_path, ttl=NAN), InvalidInputError,
        "ttl must be a positive number"),
    api("arguments/session-ttl-NaN", lambda w: w.registry.session(ttl=NAN), InvalidInputError,
        "ttl must be a positive number"),
    api("arguments/session-ttl-negative", lambda w: w.registry.session(ttl=-1), InvalidInputError,
        "ttl must be a positive number"),
    api("arguments/lock-delay-negative", lambda w: open_registry(w.db_path, lock_delay=-1), InvalidInputError,
        "lock_delay must be a number of seconds >= 0"),
    api("arguments/lock-delay-string", lambda w: open_registry(w.db_path, lock_delay="15"), InvalidInputError,
        "lock_delay must be a number"),
    api("arguments/lock-delay-NaN", lambda w: open_registry(w.db_path, lock_delay=NAN), InvalidInputError,
        "lock_delay must be a number"),
    # ttl=, wait=, keep_days= and since= refuse booleans as "not a number"; lock_delay= should too.
    api("arguments/lock-delay-bool", lambda w: open_registry(w.db_path, lock_delay=True), InvalidInputError,
        "lock_delay must be a number"),
    api("arguments/timeout-zero", lambda w: open_registry(w.db_path, timeout=0), InvalidInputError,
        "timeout must be a positive number of seconds"),
    api("arguments/timeout-string", lambda w: open_registry(w.db_path, timeout="10"), InvalidInputError,
        "timeout must be a positive number"),
    # NaN compares false with everything: a busy wait bounded by it would never end.
    api("arguments/timeout-NaN", lambda w: open_registry(w.db_path, timeout=NAN), InvalidInputError,
        "timeout must be a positive number"),
    api("arguments/synchronous-OFF", lambda w: open_registry(w.db_path, synchronous="OFF"), InvalidInputError,
        "synchronous must be one of NORMAL, FULL"),
    api("arguments/synchronous-int", lambda w: open_registry(w.db_path, synchronous=1), InvalidInputError,
        "synchronous must be one of"),
    api("arguments/unknown-registry-option", lambda w: open_registry(w.db_path, tll=5), InvalidInputError,
        "unknown Registry option(s): tll"),
    api("arguments/keep-days-negative", lambda w: w.registry.gc_events(-1), InvalidInputError,
        "keep_days must be a number >= 0"),
    api("arguments/keep-days-string", lambda w: w.registry.gc_events("30"), InvalidInputError,  # type: ignore[arg-type]
        "keep_days must be a number"),
    api("arguments/keep-days-NaN", lambda w: w.registry.gc_events(NAN), InvalidInputError,
        "keep_days must be a number"),
    api("arguments/on-conflict-unknown",
        lambda w: w.registry.register("gpt", "provider", capabilities=["llm"], on_conflict="overwrite"),
        InvalidInputError, "on_conflict must be one of error, replace, keep"),
    api("arguments/strategy-unknown", lambda w: w.registry.select("provider", strategy="fastest"),
        UnknownStrategyError, "unknown selection strategy 'fastest'"),
    api("arguments/strategy-None", lambda w: w.registry.select("provider", strategy=None),  # type: ignore[arg-type]
        UnknownStrategyError, "unknown selection strategy None"),
    api("arguments/since-negative", lambda w: w.registry.changes(since=-1), InvalidInputError,
        "since must be a revision number >= 0"),
    api("arguments/since-string", lambda w: w.registry.changes(since="3"), InvalidInputError,  # type: ignore[arg-type]
        "since must be a revision number"),
    # A revision past SQLite's 64-bit integers is out of range: refused in words, not an OverflowError.
    api("arguments/since-beyond-64-bits", lambda w: w.registry.changes(since=2**63), InvalidInputError, "since"),
    api("arguments/limit-negative", lambda w: w.registry.changes(limit=-5), InvalidInputError,
        "limit must be a revision number >= 0"),
    api("arguments/limit-float", lambda w: w.registry.changes(limit=2.5), InvalidInputError,  # type: ignore[arg-type]
        "limit must be"),
    # follow() is documented to raise on a non-positive interval; a generator that raises only when first
    # iterated reports the mistake far from the call that made it.
    api("arguments/follow-interval-zero", lambda w: w.registry.follow(interval=0), InvalidInputError,
        "interval must be a positive number of seconds"),
    api("arguments/older-than-zero", lambda w: w.registry.clean_stale(older_than=timedelta(0)), InvalidInputError,
        "older_than must be a positive timedelta"),
    api("arguments/older-than-int", lambda w: w.registry.clean_stale(older_than=7),  # type: ignore[arg-type]
        InvalidInputError, "older_than must be a positive timedelta"),
    api("arguments/export-format-unknown", lambda w: w.registry.export("xml"), InvalidInputError,
        "unknown export format 'xml'"),
    api("arguments/import-format-unknown", lambda w: w.registry.import_document({}, format="csv"),
        InvalidInputError, "unknown import format 'csv'"),
    api("arguments/db-url-unknown-scheme", lambda w: open_registry("mysql://db.example/registry"),
        InvalidInputError, "unsupported database URL scheme 'mysql'"),
    api("arguments/db-url-with-host", lambda w: open_registry("sqlite://host/registry.db"), InvalidInputError,
        "has a host part"),
    api("arguments/db-url-in-memory", lambda w: open_registry("sqlite:///:memory:"), InvalidInputError,
        "names no file"),
    api("arguments/db-postgresql-url-hides-password",
        lambda w: open_registry(f"postgresql://ada:{PASSWORD}@127.0.0.1:1/registry"), DatabaseLocationError,
        "cannot connect to postgresql://ada:***@127.0.0.1:1/registry", absent=(PASSWORD,)),
]

LEASE_CASES: list[Case] = [
    api("leases/release-by-non-holder", lambda w: w.registry.release("held_node", "node"), NotLeaseHolderError,
        "only the holder releases", setup=held_by_another_process("held_node"), sessions=True),
    api("leases/lease-given-for-another-entry",
        lambda w: w.registry.update("plate_reader", "node", metadata={"state": "busy"}, lease=w.leases["lh1"]),
        InvalidInputError, "the lease given is on node 'lh1', not on 'plate_reader'", setup=own_lease("lh1"),
        sessions=True),
    api("leases/acquire-held-by-another",
        lambda w: w.registry.acquire("held_node", "node"), LeaseHeldError, "is held by pid",
        setup=steps(held_by_another_process("held_node"), own_session), sessions=True),
    api("leases/resolve-lock-held-by-another",
        lambda w: w.registry.resolve("held_node", "node", {"state": "mine"}, lock=True), LeaseHeldError,
        "is held by pid", setup=steps(held_by_another_process("held_node"), own_session), sessions=True),
    api("leases/update-held-by-another",
        lambda w: w.registry.update("held_node", "node", metadata={"state": "busy"}), LeaseHeldError,
        "only the holder may change it", setup=held_by_another_process("held_node"), sessions=True),
    api("leases/merge-into-held-by-another",
        lambda w: w.registry.resolve("held_node", "node", {"state": "busy"}), LeaseHeldError,
        "only the holder may change it", setup=held_by_another_process("held_node"), sessions=True),
    api("leases/rename-held-by-another", lambda w: w.registry.rename("held_node", "stolen", "node"),
        LeaseHeldError, "only the holder may change it", setup=held_by_another_process("held_node"),
        sessions=True),
    api("leases/delete-held-by-another", lambda w: w.registry.delete("held_node", "node"), LeaseHeldError,
        "only the holder may change it", setup=held_by_another_process("held_node"), sessions=True),
    api("leases/fenced-write-with-broken-lease",
        lambda w: w.registry.update("lh1", "node", metadata={"state": "busy"}, lease=w.leases["lh1"]), LeaseLost,
        "is lost", setup=steps(own_lease("lh1"), broken_by_operator("lh1")), sessions=True),
    api("leases/import-replacing-a-leased-entry",
        lambda w: w.registry.import_document(w.registry.export(), replace=True), ConflictError,
        "leased by a live process", setup=held_by_another_process("held_node"), sessions=True),
    # An unknown name is refused before a session is opened for it: no session row appears (the session
    # table is compared here).
    api("leases/acquire-unknown-entry", lambda w: w.registry.acquire("ghost_node", "node"), EntryNotFoundError,
        "nothing to lease"),
    api("leases/release-unknown-entry", lambda w: w.registry.release("ghost_node", "node"), EntryNotFoundError,
        "nothing to release"),
]


def import_file(name: str = "import.json", **options: Any) -> Callable[[World], object]:
    return lambda w: w.registry.import_file(w.at(name), **options)


# A MADSci file naming one entry twice: json.loads would silently keep the second.
DUPLICATE_KEYS = ('{"version": 1, "entries": {"arm_1": {"id": "%(id)s", "component_type": "node"}, '
                  '"arm_1": {"id": "%(id)s", "component_type": "module"}}}').replace("%(id)s", FRESH_ID)

IMPORT_CASES: list[Case] = [
    api("imports/not-json", import_file(), ImportFileError, "is not valid JSON",
        setup=text_file("import.json", "entries: lh1, lh2\n")),
    api("imports/truncated", import_file(), ImportFileError, "is it truncated?", setup=truncated_export()),
    api("imports/empty-file", import_file(), ImportFileError, "is not valid JSON", setup=text_file("import.json", "")),
    api("imports/not-utf8", import_file(), ImportFileError, "is not UTF-8",
        setup=text_file("import.json", b'{"entries": {"\xff\xfe": {}}}')),
    api("imports/duplicate-keys", import_file(), ImportFileError, "has the key 'arm_1' twice",
        setup=text_file("import.json", DUPLICATE_KEYS)),
    api("imports/unknown-format", import_file(), ImportFileError, "not a nameplate export",
        setup=export_file(lambda d: d.update(format="nameplate-export-v9"))),
    api("imports/top-level-array", import_file(), ImportFileError, "not a nameplate export",
        setup=text_file("import.json", "[1, 2, 3]")),
    api("imports/wrong-version", import_file(), ImportFileError, "version 2 is not supported",
        setup=export_file(lambda d: d.update(version=2))),
    api("imports/bad-id", import_file(), ImportFileError, "id 'lh1-id' is not a ULID",
        setup=export_file(lambda d: d["entries"][-1].update(id="lh1-id"))),
    api("imports/lower-case-id", import_file(), ImportFileError, "is not a ULID",
        setup=export_file(lambda d: d["entries"][-1].update(id=FRESH_ID.lower()))),
    api("imports/duplicate-names", import_file(), ImportFileError, "duplicate name in workspace 'core'",
        setup=export_file(lambda d: d["entries"].append(fresh_entry(id="01ARZ3NDEKTSV4RRFFQ69G5FAW")))),
    api("imports/duplicate-ids", import_file(), ImportFileError, f"id '{FRESH_ID}' appears twice",
        setup=export_file(lambda d: d["entries"].append(fresh_entry(name="imported_twice")))),
    api("imports/unknown-workspace", import_file(), ImportFileError,
        "workspace 'ghost' does not exist and is not in the file",
        setup=export_file(lambda d: d["entries"].append(fresh_entry(id="01ARZ3NDEKTSV4RRFFQ69G5FAW",
                                                                    workspace="ghost")))),
    api("imports/unknown-kind", import_file(), ImportFileError, "kind 'robot' is not defined here nor in the file",
        setup=export_file(lambda d: d["entries"][-1].update(kind="robot"))),
    api("imports/workspace-cycle", import_file(), ImportFileError, "neither core nor listed before it",
        setup=export_file(lambda d: d["workspaces"].extend([{"name": "loop_a", "parent": "loop_b"},
                                                            {"name": "loop_b", "parent": "loop_a"}]))),
    api("imports/definition-against-its-kind", import_file(), ImportFileError,
        "required field 'max_volume_ul' is missing",
        setup=export_file(lambda d: d["entries"][-1].update(kind="pipette", definition={"channels": 8}))),
    api("imports/unknown-entry-field", import_file(), ImportFileError, "unknown fields ['colour']",
        setup=export_file(lambda d: d["entries"][-1].update(colour="red"))),
    api("imports/metadata-nested-100-levels", import_file(), ImportFileError, "nests deeper than 64 levels",
        setup=export_file(lambda d: d["entries"][-1].update(metadata=nested(100)))),
    api("imports/nested-beyond-the-parser", import_file(), ImportFileError, "deeper than 64 levels",
        setup=text_file("import.json", deep_json_array(100_000))),
    api("imports/a-directory", import_file("exports"), ImportFileError, "is a directory", setup=directory("exports")),
    api("imports/missing-file", import_file("missing.json"), ImportFileError, "No such file or directory"),
    api("imports/id-of-another-entry", import_file(), ConflictError, "already belongs to core/node/lh1",
        setup=export_file(take_over_id_of("lh1"))),
    api("imports/madsci-unknown-component-type", import_file("madsci.json"), ImportFileError,
        "component_type 'robot' is not one of", setup=madsci_file(component_type="robot")),
    api("imports/madsci-into-unknown-workspace", import_file("madsci.json", workspace="ghost"),
        UnknownWorkspaceError, "workspace 'ghost' does not exist", setup=madsci_file()),
]

DATABASE_FILE_CASES: list[Case] = [
    api("database-files/text-file", lambda w: open_registry(w.at("notes.txt")), DatabaseError,
        "is not a SQLite database", setup=text_file("notes.txt", "shopping: milk, eggs\n")),
    api("database-files/sqlite-magic-then-nothing", lambda w: open_registry(w.at("cut.db")), DatabaseError,
        "is not a SQLite database", setup=text_file("cut.db", b"SQLite format 3\x00" + b"\x00" * 20)),
    api("database-files/other-application-id", lambda w: open_registry(w.at("other_app.db")),
        ForeignDatabaseError, "belongs to another application (SQLite application id 0x4D4F5A41)",
        setup=FOREIGN_APP_ID),
    api("database-files/other-applications-tables", lambda w: open_registry(w.at("places.sqlite")),
        ForeignDatabaseError, "holds tables nameplate did not create (moz_places)", setup=FIREFOX_LIKE),
    api("database-files/other-applications-wal-database", lambda w: open_registry(w.at("wal_app.db")),
        ForeignDatabaseError, "holds tables nameplate did not create (readings)",
        setup=sqlite_file("wal_app.db", "PRAGMA journal_mode = WAL", "CREATE TABLE readings (value REAL)",
                          "INSERT INTO readings VALUES (1.5)")),
    # A table called like one of ours is not enough to be ours.
    api("database-files/other-application-with-our-table-name", lambda w: open_registry(w.at("blog.db")),
        ForeignDatabaseError, "holds tables nameplate did not create (entry)",
        setup=sqlite_file("blog.db", "CREATE TABLE entry (title TEXT, body TEXT)")),
    api("database-files/schema-too-new", lambda w: open_registry(w.at("newer.db")), SchemaTooNewError,
        "newer than this nameplate understands", setup=newer_nameplate_file("newer.db")),
    api("database-files/damaged", lambda w: open_registry(w.at("damaged.db")), DatabaseError,
        "is not a usable SQLite database", setup=damaged_nameplate_file("damaged.db")),
    api("database-files/fifo", lambda w: open_registry(w.at("pipe")), DatabaseLocationError, "named pipe (FIFO)",
        setup=fifo("pipe")),
    api("database-files/dev-null", lambda w: open_registry("/dev/null"), DatabaseLocationError,
        "is a character device"),
    api("database-files/directory", lambda w: open_registry(w.at("exports")), DatabaseLocationError,
        "is a directory, not a database file", setup=directory("exports")),
    api("database-files/dangling-symlink", lambda w: open_registry(w.at("link.db")), DatabaseLocationError,
        "which does not exist", setup=dangling_symlink("link.db")),
    api("database-files/name-too-long", lambda w: open_registry(w.at("n" * 300 + ".db")), DatabaseLocationError,
        "the name is too long for the filesystem"),
    api("database-files/parent-is-a-file", lambda w: open_registry(w.at("notes.txt") / DB_NAME),
        DatabaseLocationError, "is not a directory", setup=text_file("notes.txt", "shopping\n")),
    api("database-files/schema-status-of-foreign-file",
        lambda w: Registry.schema_status(w.at("places.sqlite")), ForeignDatabaseError,
        "nameplate did not create", setup=FIREFOX_LIKE),
]

DEEP_META = "a=" + deep_json_array(100)
DEEPER_THAN_THE_PARSER = "a=" + deep_json_array(100_000)

CLI_CASES: list[Case] = [
    # click's usage errors: exit 2, click's own "Error:" text, no traceback.
    cli("cli/bad-duration", ["ls", "--stale", "7x"], 2, "is not a duration like"),
    cli("cli/zero-duration", ["clean", "--older-than", "0d"], 2, "the duration must be positive"),
    cli("cli/negative-duration", ["clean", "--older-than=-3d"], 2, "is not a duration like"),
    # parse_duration() refuses bad durations as usage errors; one too long for a timedelta is one too.
    cli("cli/duration-too-long", ["ls", "--stale", "99999999999d"], 2, "99999999999d"),
    cli("cli/since-beyond-64-bits", ["log", "--since", str(2**63)], 2, "not in the range"),
    cli("cli/meta-without-equals", ["resolve", "lh9", "-k", "node", "--meta", "novalue"], 2, "is not KEY=VALUE"),
    cli("cli/meta-without-key", ["resolve", "lh9", "-k", "node", "--meta", "=value"], 2, "is not KEY=VALUE"),
    cli("cli/unknown-option", ["ls", "--colour"], 2, "No such option '--colour'"),
    cli("cli/unknown-command", ["frobnicate"], 2, "No such command 'frobnicate'"),
    cli("cli/missing-kind", ["resolve", "lh9"], 2, "Missing option '--kind'"),
    cli("cli/explain-without-kind", ["explain", "lh1"], 2, "Missing option '--kind'"),
    cli("cli/missing-keep-days", ["gc"], 2, "Missing option '--keep-days'"),
    cli("cli/negative-keep-days", ["gc", "--keep-days", "-1"], 2, "not in the range"),
    cli("cli/negative-since", ["log", "--since", "-1"], 2, "not in the range"),
    cli("cli/zero-limit", ["log", "--limit", "0"], 2, "not in the range"),
    cli("cli/unknown-export-format", ["export", "--format", "xml"], 2, "'xml' is not one of"),
    cli("cli/import-a-directory", ["import", "{tmp}/exports"], 2, "is a directory", setup=directory("exports")),
    # Library errors: one "nameplate: error:" line and the error class's exit code.
    cli("cli/meta-nested-100-levels", ["resolve", "lh1", "-k", "node", "--meta", DEEP_META], 1,
        "nests deeper than 64 levels"),
    cli("cli/meta-nested-beyond-the-parser", ["resolve", "lh1", "-k", "node", "--meta", DEEPER_THAN_THE_PARSER], 1,
        "nests deeper than 64 levels"),
    cli("cli/meta-NaN", ["resolve", "lh1", "-k", "node", "--meta", "a=NaN"], 1, "metadata.a is nan"),
    cli("cli/empty-name", ["resolve", "", "-k", "node"], 1, "name is empty"),
    cli("cli/name-with-newline", ["resolve", "lh\n9", "-k", "node"], 1, "U+000A"),
    cli("cli/name-with-bidi-override", ["--json", "resolve", "lh\u202e9", "-k", "node"], 1, "U+202E"),
    cli("cli/invalid-kind", ["resolve", "lh9", "-k", "Node"], 1, "not a valid kind name"),
    cli("cli/unknown-kind", ["resolve", "lh9", "-k", "robot"], 3, "kind 'robot' is not defined"),
    cli("cli/invalid-workspace", ["-w", "a b", "ls"], 1, "not a valid workspace name"),
    cli("cli/unknown-workspace", ["-w", "ghost", "ls"], 3, "workspace 'ghost' does not exist"),
    cli("cli/create-workspace-over-unknown-parent", ["workspace", "create", "dev2", "--parent", "ghost"], 3,
        "workspace 'ghost' does not exist"),
    cli("cli/remove-core", ["workspace", "rm", "core"], 4, "cannot be deleted"),
    cli("cli/remove-workspace-with-children", ["workspace", "rm", "dev1"], 4, "has child workspaces"),
    cli("cli/promote-without-workspace", ["workspace", "promote", "lh1"], 1, "give the workspace to promote from"),
    cli("cli/rename-onto-existing", ["rename", "lh1", "plate_reader", "-k", "node"], 4, "already exists"),
    cli("cli/lookup-ambiguous", ["lookup", "twin"], 4, "several kinds"),
    cli("cli/lookup-missing", ["lookup", "nothing_here"], 3, "no entry 'nothing_here'"),
    cli("cli/show-missing", ["--json", "show", "nothing_here"], 3, "no entry 'nothing_here'"),
    cli("cli/release-held-by-another", ["release", "held_node", "-k", "node"], 4, "only the holder releases",
        setup=held_by_another_process("held_node"), sessions=True),
    cli("cli/import-truncated", ["import", "{tmp}/import.json"], 1, "is not valid JSON", setup=truncated_export()),
    cli("cli/import-bad-id", ["import", "{tmp}/import.json", "--dry-run"], 1, "is not a ULID",
        setup=export_file(lambda d: d["entries"][-1].update(id="lh1-id"))),
    cli("cli/import-missing-file", ["import", "{tmp}/missing.json"], 1, "No such file or directory"),
    cli("cli/import-madsci-into-unknown-workspace", ["-w", "ghost", "import", "{tmp}/madsci.json"], 3,
        "workspace 'ghost' does not exist", setup=madsci_file()),
    cli("cli/export-into-missing-directory", ["export", "-o", "{tmp}/no_such_dir/backup.json"], 1,
        "cannot write there"),
    cli("cli/db-text-file", ["--db", "{tmp}/notes.txt", "ls"], 5, "is not a SQLite database",
        setup=text_file("notes.txt", "shopping: milk, eggs\n")),
    cli("cli/db-foreign", ["--db", "{tmp}/places.sqlite", "stats"], 5, "nameplate did not create",
        setup=FIREFOX_LIKE),
    cli("cli/migrate-status-of-foreign-db", ["--db", "{tmp}/other_app.db", "migrate", "--status"], 5,
        "belongs to another application", setup=FOREIGN_APP_ID),
    cli("cli/db-too-new", ["--db", "{tmp}/newer.db", "ls"], 5, "newer than this nameplate",
        setup=newer_nameplate_file("newer.db")),
    cli("cli/db-damaged", ["--db", "{tmp}/damaged.db", "check"], 5, "is not a usable SQLite database",
        setup=damaged_nameplate_file("damaged.db")),
    cli("cli/db-directory", ["--db", "{tmp}/exports", "ls"], 6, "is a directory", setup=directory("exports")),
    cli("cli/db-fifo", ["--db", "{tmp}/pipe", "ls"], 6, "named pipe", setup=fifo("pipe")),
    cli("cli/db-dangling-symlink", ["--db", "{tmp}/link.db", "lookup", "lh1"], 6, "which does not exist",
        setup=dangling_symlink("link.db")),
    cli("cli/db-parent-is-a-file", ["--db", "{tmp}/notes.txt/registry.db", "ls"], 6, "is not a directory",
        setup=text_file("notes.txt", "shopping\n")),
    cli("cli/db-unknown-url-scheme", ["--db", "mysql://db.example/registry", "ls"], 1,
        "unsupported database URL scheme"),
    cli("cli/db-postgresql-url-hides-password", ["--db", f"postgresql://ada:{PASSWORD}@127.0.0.1:1/registry", "ls"],
        6, "cannot connect to postgresql://ada:***@127.0.0.1:1/registry", absent=(PASSWORD,)),
    # Real processes: what a shell user sees, end to end.
    cli("cli-process/db-text-file", ["--db", "{tmp}/notes.txt", "ls"], 5, "is not a SQLite database",
        setup=text_file("notes.txt", "shopping: milk, eggs\n"), process=True),
    cli("cli-process/db-foreign-untouched", ["--db", "{tmp}/places.sqlite", "resolve", "lh1", "-k", "node"], 5,
        "nameplate did not create", setup=FIREFOX_LIKE, process=True),
    cli("cli-process/db-dev-null", ["--db", "/dev/null", "stats"], 6, "is a character device", process=True),
    cli("cli-process/missing-kind", ["resolve", "lh9"], 2, "Missing option '--kind'", process=True),
    cli("cli-process/import-truncated", ["import", "{tmp}/import.json"], 1, "is not valid JSON",
        setup=truncated_export(), process=True),
    cli("cli-process/remove-core", ["workspace", "rm", "core"], 4, "cannot be deleted", process=True),
]

def registered_to_json(world: World) -> None:
    world.registry.registrar("builder", "to_json")(json.dumps)


PLUGIN_CASES: list[Case] = [
    api("plugins/registrar-lambda", lambda w: w.registry.registrar("builder", "thing")(lambda: None),
        NotImportableError, "is a lambda or is defined inside a function"),
    api("plugins/registrar-unknown-kind", lambda w: w.registry.registrar("no_such_kind"), UnknownKindError,
        "kind 'no_such_kind' is not defined"),
    api("plugins/registrar-bad-name", lambda w: w.registry.registrar("builder", "a\nb"), InvalidNameError,
        "control character"),
    api("plugins/registrar-name-taken", lambda w: w.registry.registrar("builder", "to_json")(json.loads),
        NameTakenError, "already registered", setup=registered_to_json),
    api("plugins/load-all-callback-not-callable",
        lambda w: w.registry.load_all("builder", on_load_failure="print"),  # type: ignore[arg-type]
        InvalidInputError, "on_load_failure must be callable"),
    api("plugins/load-all-unknown-kind", lambda w: w.registry.load_all("no_such_kind"), UnknownKindError,
        "kind 'no_such_kind' is not defined"),
    api("plugins/load-error-of-nothing", lambda w: w.registry.load_error("nothing_here", "builder"),
        EntryNotFoundError, "no entry builder 'nothing_here'"),
    api("plugins/discover-unknown-kind", lambda w: w.registry.discover(kind="no_such_kind"), UnknownKindError,
        "kind 'no_such_kind' is not defined"),
    api("plugins/discover-unknown-workspace", lambda w: w.registry.discover(workspace="no_such_ws"),
        UnknownWorkspaceError, "workspace 'no_such_ws' does not exist"),
    api("plugins/discover-empty-group", lambda w: w.registry.discover(""), InvalidInputError,
        "group must be a non-empty string"),
    api("plugins/discover-forget-not-bool",
        lambda w: w.registry.discover(forget_missing="yes"),  # type: ignore[arg-type]
        InvalidInputError, "forget_missing must be True or False"),
    cli("plugins/cli-load-all-unknown-kind", ["load-all", "no_such_kind"], 3, "kind 'no_such_kind' is not defined"),
    cli("plugins/cli-discover-unknown-kind", ["discover", "--kind", "no_such_kind"], 3,
        "kind 'no_such_kind' is not defined"),
]

CASES: list[Case] = [*NAME_CASES, *KIND_CASES, *WORKSPACE_CASES, *METADATA_CASES, *DEFINITION_CASES,
                     *TARGET_CASES, *CAPABILITY_CASES, *ARGUMENT_CASES, *LEASE_CASES, *IMPORT_CASES,
                     *DATABASE_FILE_CASES, *CLI_CASES, *PLUGIN_CASES]


def test_the_table_is_well_formed() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 60
    # Every row must be able to fail: a fragment that is empty would match any message.
    assert all(case.message.strip() for case in CASES)


# -- running a row -------------------------------------------------------------------------------------------------


def check_api_case(case: ApiCase, world: World) -> None:
    try:
        case.call(world)
    except Exception as error:  # noqa: BLE001 - any other class fails below, with its traceback
        raised: Exception = error
    else:
        pytest.fail(f"{case.id}: no error was raised; expected {case.error.__name__}")
    details = "".join(traceback.format_exception(raised))
    assert type(raised) is case.error, f"expected {case.error.__name__}, got {type(raised).__name__}:\n{details}"
    assert isinstance(raised, NameplateError)
    text = str(raised)
    assert case.message in text, f"{case.message!r} not in the message {text!r}"
    for secret in case.absent:
        assert secret not in text, f"{secret!r} leaked into the message {text!r}"


def command_line(case: CliCase, world: World) -> list[str]:
    args = [arg.replace("{tmp}", str(world.tmp_path)).replace("{db}", str(world.db_path)) for arg in case.args]
    return args if "--db" in args else ["--db", str(world.db_path), *args]


def check_cli_case(case: CliCase, world: World) -> None:
    args = command_line(case, world)
    if case.process:
        done = subprocess.run([sys.executable, "-m", "nameplate", *args], check=False,
                              capture_output=True, text=True, timeout=60, cwd=world.tmp_path)
        exit_code, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        result = CliRunner().invoke(main, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            # In a real process this would be a traceback on the user's terminal.
            pytest.fail("the command raised instead of exiting:\n"
                        + "".join(traceback.format_exception(*result.exc_info)))  # type: ignore[misc]
        exit_code, stdout, stderr = result.exit_code, result.stdout, result.stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr
    assert exit_code == case.exit_code, f"exit {exit_code}, expected {case.exit_code}; stderr: {stderr!r}"
    if case.exit_code == 2:  # click's usage error, in click's words
        assert "Error:" in stderr and case.message in stderr, stderr
    else:
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("nameplate: error: "), f"not one error line: {stderr!r}"
        assert case.message in lines[0], f"{case.message!r} not in {lines[0]!r}"
    for secret in case.absent:
        assert secret not in stderr and secret not in stdout, f"{secret!r} leaked: {stderr!r}"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_raises_the_documented_error_and_changes_nothing(case: Case, world: World) -> None:
    if case.setup is not None:
        case.setup(world)
    export_before = durable_export(world.registry)
    tables_before = tables(world, case.sessions)
    files_before = file_tree(world.tmp_path)

    if isinstance(case, ApiCase):
        check_api_case(case, world)
    else:
        check_cli_case(case, world)

    after = tables(world, case.sessions)
    if isinstance(case, ApiCase) and case.records_load_error:
        assert len(after.pop("entry_load_error")) == 1 + len(tables_before.pop("entry_load_error"))
    assert durable_export(world.registry) == export_before, "the export changed"
    assert after == tables_before, "a table changed"
    assert file_tree(world.tmp_path) == files_before, "a file beside the registry changed"
