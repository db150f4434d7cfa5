"""The SQLite layer: pragmas, transaction shape, busy handling, schema versions, bad files, errors."""

from __future__ import annotations

import pickle
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import peewee
import pytest

from nameplate import (
    AmbiguousNameError,
    DatabaseError,
    EntryNotFoundError,
    ForeignDatabaseError,
    InvalidNameError,
    LeaseHeldError,
    NameplateError,
    Registry,
    RegistryBusyError,
    SchemaTooNewError,
)
from nameplate import errors as errors_module
from nameplate._models import ALL_MODELS
from nameplate.backends.migrate import available, latest_version
from nameplate.backends.sqlite import APPLICATION_ID, identify

from conftest import file_at_schema_version, table_snapshot


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_every_connection_gets_the_declared_pragmas(registry: Registry) -> None:
    conn = registry._backend.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 32 * 1024 * 1024
    assert conn.execute("PRAGMA cache_size").fetchone()[0] == -65536
    assert conn.execute("PRAGMA mmap_size").fetchone()[0] == 1 << 30
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # the Checkpointer thread does it


def test_synchronous_full_is_selectable_and_nonsense_is_refused(db_path: Path) -> None:
    with Registry(db_path, synchronous="full") as registry:
        assert registry._backend.connection().execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(NameplateError):
        Registry(db_path, synchronous="sometimes")


def _traced(registry: Registry) -> list[str]:
    statements: list[str] = []
    registry._backend.connection().set_trace_callback(statements.append)
    return statements


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_resolve_create_is_one_immediate_transaction(registry: Registry) -> None:
    statements = _traced(registry)
    registry.resolve("new", "node")
    begin = statements.index("BEGIN IMMEDIATE")
    assert statements[-1] == "COMMIT"
    inside = statements[begin + 1:-1]
    assert not any(s.startswith(("BEGIN", "COMMIT", "ROLLBACK")) for s in inside)
    assert sum(s.startswith("INSERT INTO entry") for s in inside) == 1
    assert sum(s.startswith("INSERT INTO event") for s in inside) == 1
    assert len(inside) <= 6, inside


def test_resolve_of_an_existing_name_is_one_read_and_no_transaction(db_path: Path) -> None:
    with Registry(db_path, cache=False) as registry:
        registry.resolve("existing", "node")
        statements = _traced(registry)
        registry.resolve("existing", "node")
        registry.lookup("existing", "node")
        assert len(statements) == 2
        assert all(s.startswith("SELECT") for s in statements)


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_with_the_read_cache_a_repeated_resolve_or_lookup_runs_no_statement(registry: Registry) -> None:
    registry.resolve("existing", "node")
    registry.resolve("existing", "node")
    registry.lookup("existing", "node")  # both answers are cached now
    statements = _traced(registry)
    for _ in range(3):
        registry.resolve("existing", "node")
        registry.lookup("existing", "node")
    # The commit signal is the WAL-index header read from -shm: no statement at all.
    assert statements == []


def test_a_failed_write_rolls_back_and_leaves_no_transaction_open(registry: Registry, db_path: Path) -> None:
    registry.resolve("a", "node")
    registry.resolve("b", "node")
    statements = _traced(registry)
    with pytest.raises(NameplateError):
        registry.rename("a", "b", "node")
    # One read outside the lock (the kind's name pattern is user input, matched before locking), then
    # the write transaction, rolled back.
    begin = statements.index("BEGIN IMMEDIATE")
    assert all(s.startswith("SELECT") for s in statements[:begin]) and len(statements[:begin]) == 1
    assert statements[-1] == "ROLLBACK"
    assert not registry._backend.connection().in_transaction


_HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def test_a_writer_blocked_past_the_timeout_gets_registry_busy(db_path: Path) -> None:
    Registry(db_path).close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(db_path), "5"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with Registry(db_path, timeout=0.3) as registry:
            assert registry.lookup("x", "node") is None  # readers are not blocked in WAL mode
            started = time.monotonic()
            with pytest.raises(RegistryBusyError) as caught:
                registry.resolve("x", "node")
            waited = time.monotonic() - started
        assert 0.3 <= waited < 3.0
        assert isinstance(caught.value, TimeoutError)
        assert str(db_path) in str(caught.value) and caught.value.waited >= 0.3
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_writer_waits_for_a_short_lock_instead_of_failing(db_path: Path) -> None:
    Registry(db_path).close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(db_path), "0.5"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with Registry(db_path, timeout=20) as registry:
            entry_id = registry.resolve("waited", "node")
            assert registry.lookup("waited", "node") == entry_id
    finally:
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()


def test_a_newer_schema_is_refused_and_not_touched(db_path: Path) -> None:
    Registry(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    conn.close()
    before = db_path.read_bytes()
    with pytest.raises(SchemaTooNewError) as caught:
        Registry(db_path)
    assert "upgrade nameplate" in str(caught.value)
    assert caught.value.found == latest_version() + 1
    assert db_path.read_bytes() == before


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 100)
    before = path.read_bytes()
    with pytest.raises(DatabaseError) as caught:
        Registry(path)
    assert "is not a SQLite database" in str(caught.value)
    assert path.read_bytes() == before


def test_someone_elses_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    with pytest.raises(DatabaseError) as caught:
        Registry(path)
    assert "invoices" in str(caught.value)
    assert table_snapshot(path) == {"invoices": []}


def _fingerprint(path: Path) -> tuple[bytes, int, list[str]]:
    """Everything a refusal must leave as it was: the bytes, the mtime, the files beside it."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


def _foreign_database(path: Path, *, wal: bool = False, user_version: int = 0, application_id: int = 0) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode = wal")
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices (total) VALUES (12.5)")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.execute(f"PRAGMA application_id = {application_id}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("shape", ["rollback journal", "wal", "our user_version", "an application id"])
def test_another_applications_database_is_refused_byte_for_byte_untouched(tmp_path: Path, shape: str) -> None:
    path = tmp_path / "other.db"
    _foreign_database(path, wal=shape == "wal", user_version=latest_version() if shape == "our user_version" else 0,
                      application_id=0x12345678 if shape == "an application id" else 0)
    before = _fingerprint(path)
    assert before[0][18:20] == (b"\x02\x02" if shape == "wal" else b"\x01\x01")  # journal mode bytes
    time.sleep(0.01)  # a write would move the mtime past this
    with pytest.raises(ForeignDatabaseError) as caught:
        Registry(path)
    assert "refused it without changing it" in str(caught.value)
    assert caught.value.exit_code == 5
    assert _fingerprint(path) == before  # no header change (WAL switch), no -wal/-shm litter


def test_a_nameplate_file_from_before_the_application_id_is_recognised_and_marked(db_path: Path) -> None:
    # What version 1 left: its schema only, no application id, user_version 1, one entry.
    file_at_schema_version(db_path, 1)
    entry_id = "01J00000000000000000000000"
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO entry (id, workspace_id, kind_id, name, created_at, updated_at, last_seen_at) "
                 "VALUES (?, 1, (SELECT id FROM kind WHERE name = 'node'), 'lh1', 0, 0, 0)", (entry_id,))
    conn.commit()
    assert conn.execute("PRAGMA application_id").fetchone()[0] == 0
    conn.close()
    with Registry(db_path) as registry:
        assert registry.migrations_applied == list(range(2, latest_version() + 1))
        assert registry.lookup("lh1", "node") == entry_id
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    conn.close()


def test_an_empty_sqlite_file_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).execute("VACUUM").connection.close()
    with Registry(path) as registry:
        assert registry.resolve("lh1", "node")


def test_a_schema_too_new_leaves_the_file_as_it_was(db_path: Path) -> None:
    Registry(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
    conn.close()
    before = _fingerprint(db_path)
    time.sleep(0.01)
    with pytest.raises(SchemaTooNewError) as caught:
        Registry(db_path)
    assert "The file was not touched" in str(caught.value)
    assert _fingerprint(db_path) == before


def test_models_match_the_migrated_schema(registry: Registry) -> None:
    database = registry._backend.peewee
    for model in ALL_MODELS:
        table = model._meta.table_name
        columns = {column.name for column in database.get_columns(table)}
        fields = {field.column_name for field in model._meta.sorted_fields}
        assert fields == columns, table
    # and a model query runs on the registry's own connection
    from nameplate._models import Kind

    names = [k.name for k in Kind.select().order_by(Kind.name).execute(registry._backend.peewee)]
    assert "node" in names and "step" in names


def test_no_raw_sqlite_or_peewee_error_escapes(registry: Registry) -> None:
    registry._backend.connection().execute("DROP VIEW resolved_entry")
    with pytest.raises(DatabaseError):
        registry.lookup("x", "node")
    with pytest.raises(DatabaseError):
        registry.resolve("x", "node")


@pytest.mark.parametrize("error", [
    InvalidNameError("bad name 'x'", name="x"),
    AmbiguousNameError("ambiguous", name="p", kinds=["module", "node"]),
    RegistryBusyError("busy", path="/tmp/x.db", waited=1.5, timeout=1.0),
    EntryNotFoundError("missing", name="m", kind=None, workspace="core"),
    LeaseHeldError("held", holder={"pid": 1, "host": "h"}),
    SchemaTooNewError("new", found=9, supported=1),
])
def test_errors_pickle_across_processes_with_their_facts(error: NameplateError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.facts == error.facts
    for key, value in error.facts.items():
        assert getattr(copy, key) == value


def test_every_error_is_a_nameplate_error_and_a_builtin() -> None:
    for name in errors_module.__all__:
        cls = getattr(errors_module, name)
        assert issubclass(cls, NameplateError)
        if cls is not NameplateError:
            assert any(base.__module__ == "builtins" and base is not Exception for base in cls.__mro__), name


def test_peewee_is_the_models_layer() -> None:
    assert issubclass(ALL_MODELS[0], peewee.Model)


def test_a_file_another_opener_is_still_writing_is_waited_for_not_refused(tmp_path: Path) -> None:
    # What a racing opener can read for a moment: the file extended, its first page not yet there.
    path = tmp_path / "being-created.db"
    Registry(tmp_path / "model.db").close()
    first_page = (tmp_path / "model.db").read_bytes()[:4096]
    path.write_bytes(b"\x00" * 4096)
    writer = threading.Timer(0.2, lambda: path.write_bytes(first_page))
    writer.start()
    try:
        assert identify(path) == "ours"
    finally:
        writer.join()


def test_a_file_of_zeros_is_refused_once_it_stays_zeros(tmp_path: Path) -> None:
    path = tmp_path / "zeros.db"
    path.write_bytes(b"\x00" * 4096)
    started = time.monotonic()
    with pytest.raises(DatabaseError, match="is not a SQLite database"):
        identify(path)
    assert time.monotonic() - started >= 1.0  # it was given time to become a database first
    assert path.read_bytes() == b"\x00" * 4096


def test_a_file_with_autoincrement_revisions_upgrades_keeping_every_event(db_path: Path) -> None:
    # A genuine file of the version before plain event rowids, with a log that has a gap in it.
    step = next(m for m in available() if m.name == "plain event rowid")
    file_at_schema_version(db_path, step.version - 1)
    conn = sqlite3.connect(db_path)
    assert "AUTOINCREMENT" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'event'").fetchone()[0]
    conn.executemany("INSERT INTO event (at, action, entry_id, actor, detail) VALUES (?, 'create', ?, 'test', '{}')",
                     [(float(i), f"e{i}") for i in range(10)])
    conn.execute("DELETE FROM event WHERE rev IN (3, 4)")
    before = conn.execute("SELECT * FROM event ORDER BY rev").fetchall()
    conn.commit()
    conn.close()
    with Registry(db_path) as registry:
        assert registry.migrations_applied == list(range(step.version, latest_version() + 1))
        assert [(e.rev, e.entry_id) for e in registry.changes()][:8] == [(row[0], row[6]) for row in before]
        newest = registry.revision
        registry.resolve("after", "node")
        assert registry.revision == newest + 1
    conn = sqlite3.connect(db_path)
    assert "AUTOINCREMENT" not in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'event'").fetchone()[0]
    assert conn.execute("SELECT count(*) FROM sqlite_sequence WHERE name = 'event'").fetchone()[0] == 0
    plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN SELECT rev FROM event WHERE entry_id = 'e1'"))
    assert "event_by_entry" in plan
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
