"""The core store's API: resolve, lookup, get, list, update, rename, delete, events."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import pytest
from ulid import ULID

from nameplate import (
    AmbiguousNameError,
    Entry,
    EntryNotFoundError,
    InvalidMetadataError,
    InvalidNameError,
    NameTakenError,
    Registry,
    RegistryClosedError,
    UnknownKindError,
)

from conftest import query_db, table_snapshot


def events(path: str | Path) -> list[tuple[str, str | None, str | None]]:
    return [(a, n, e) for a, n, e in query_db(path, "SELECT action, name, entry_id FROM event ORDER BY rev")]


def test_resolve_creates_once_and_returns_the_same_ulid(registry: Registry) -> None:
    first = registry.resolve("liquid_handler", "node")
    assert str(ULID.from_str(first)) == first
    assert registry.resolve("liquid_handler", "node") == first
    assert registry.lookup("liquid_handler", "node") == first
    assert registry.lookup("liquid_handler") == first


def test_same_name_different_kinds_are_different_entries(registry: Registry) -> None:
    node = registry.resolve("pump", "node")
    module = registry.resolve("pump", "module")
    assert node != module
    assert registry.lookup("pump", "node") == node
    with pytest.raises(AmbiguousNameError) as caught:
        registry.lookup("pump")
    assert caught.value.kinds == ["module", "node"]
    assert "kind=" in str(caught.value)
    with pytest.raises(AmbiguousNameError):
        registry.get("pump")


def test_lookup_of_a_missing_name_is_none_and_writes_nothing(registry: Registry, db_url: str) -> None:
    before = table_snapshot(db_url)
    assert registry.lookup("ghost", "node") is None
    assert registry.lookup("ghost") is None
    assert registry.get("ghost") is None
    assert table_snapshot(db_url) == before


def test_lookup_of_an_unknown_kind_raises(registry: Registry) -> None:
    with pytest.raises(UnknownKindError) as caught:
        registry.lookup("x", "robot")
    assert "node" in caught.value.known


def test_get_returns_an_immutable_typed_entry(registry: Registry) -> None:
    entry_id = registry.resolve("reader", "node", {"url": "http://localhost:2000", "slots": [1, 2]})
    entry = registry.get("reader", "node")
    assert isinstance(entry, Entry)
    assert (entry.id, entry.name, entry.kind, entry.workspace) == (entry_id, "reader", "node", "core")
    assert entry.metadata == {"url": "http://localhost:2000", "slots": [1, 2]}
    assert entry.created_at == entry.updated_at == entry.last_seen_at
    assert entry.created_at.tzinfo is not None
    with pytest.raises(TypeError):
        entry.metadata["url"] = "other"  # type: ignore[index]
    with pytest.raises(AttributeError):
        entry.name = "other"  # type: ignore[misc]
    assert json.loads(json.dumps(entry.to_dict()))["id"] == entry_id


def test_resolve_merges_new_metadata_keys_and_writes_only_on_change(registry: Registry, db_url: str) -> None:
    registry.resolve("n", "node", {"a": 1, "b": 2})
    before = table_snapshot(db_url)
    registry.resolve("n", "node", {"a": 1})  # nothing new: no write at all
    registry.resolve("n", "node")
    assert table_snapshot(db_url) == before
    registry.resolve("n", "node", {"b": 3, "c": 4})
    assert registry.get("n", "node").metadata == {"a": 1, "b": 3, "c": 4}
    assert [e[0] for e in events(db_url)] == ["create", "update"]


def test_update_replaces_or_merges_metadata(registry: Registry) -> None:
    registry.resolve("n", "node", {"a": 1, "b": 2})
    assert registry.update("n", "node", metadata={"c": 3}).metadata == {"c": 3}
    assert registry.update("n", metadata={"d": 4}, merge=True).metadata == {"c": 3, "d": 4}
    with pytest.raises(EntryNotFoundError):
        registry.update("missing", "node", metadata={})


def test_list_returns_every_entry_sorted_and_filters_by_kind(registry: Registry) -> None:
    registry.resolve("b", "node")
    registry.resolve("a", "node")
    registry.resolve("a", "module")
    assert [(e.kind, e.name) for e in registry.list()] == [("module", "a"), ("node", "a"), ("node", "b")]
    assert [e.name for e in registry.list("node")] == ["a", "b"]
    assert registry.list("workcell") == []
    with pytest.raises(UnknownKindError):
        registry.list("robot")


def test_rename_keeps_the_id_and_history_keeps_the_old_name(registry: Registry, db_path: Path) -> None:
    entry_id = registry.resolve("old_name", "node")
    assert registry.rename("old_name", "new_name") == entry_id
    assert registry.lookup("old_name") is None
    assert registry.lookup("new_name", "node") == entry_id
    rename = [e for e in events(db_path) if e[0] == "rename"]
    assert rename == [("rename", "new_name", entry_id)]
    conn = sqlite3.connect(db_path)
    detail = json.loads(conn.execute("SELECT detail FROM event WHERE action = 'rename'").fetchone()[0])
    conn.close()
    assert detail == {"old_name": "old_name", "new_name": "new_name"}


def test_rename_onto_a_taken_name_is_refused_and_changes_nothing(registry: Registry, db_url: str) -> None:
    registry.resolve("a", "node")
    registry.resolve("b", "node")
    before = table_snapshot(db_url)
    with pytest.raises(NameTakenError) as caught:
        registry.rename("a", "b", "node")
    assert "already exists" in str(caught.value)
    with pytest.raises(EntryNotFoundError):
        registry.rename("missing", "c", "node")
    with pytest.raises(InvalidNameError):
        registry.rename("a", " padded ", "node")
    assert table_snapshot(db_url) == before


def test_rename_to_the_same_name_under_another_kind_is_allowed(registry: Registry) -> None:
    registry.resolve("a", "node")
    registry.resolve("b", "module")
    registry.rename("a", "b", "node")
    assert registry.lookup("b", "node") is not None


def test_delete_removes_the_entry_and_logs_it(registry: Registry, db_url: str) -> None:
    entry_id = registry.resolve("gone", "node", {"k": "v"})
    deleted = registry.delete("gone")
    assert deleted.id == entry_id and deleted.metadata == {"k": "v"}
    assert registry.lookup("gone") is None
    assert events(db_url)[-1] == ("delete", "gone", entry_id)
    assert registry.resolve("gone", "node") != entry_id  # a new entry, a new id
    with pytest.raises(EntryNotFoundError):
        registry.delete("never_there", "node")


def test_every_change_writes_one_event_in_order(registry: Registry, db_path: Path) -> None:
    registry.resolve("a", "node")
    registry.resolve("a", "node", {"x": 1})
    registry.rename("a", "b", "node")
    registry.delete("b", "node")
    conn = sqlite3.connect(db_path)
    revs = [r[0] for r in conn.execute("SELECT rev FROM event ORDER BY rev")]
    conn.close()
    assert [e[0] for e in events(db_path)] == ["create", "update", "rename", "delete"]
    assert revs == sorted(revs) and len(set(revs)) == 4


@pytest.mark.parametrize("bad_name", ["", "   ", "a\x00b", "tab\tname", "line\nbreak", "x" * 256, " lead",
                                      "trail ", "bell\x07", "sep\u2028x", 42, None,
                                      # invisible: a bidi override, zero-width space and word joiner,
                                      # a byte-order mark, a soft hyphen, private use
                                      "admin\u202etxt.exe", "lh\u200b1", "lh\u20601", "\ufefflh1", "lh\u00ad1",
                                      "lh\ue0001"])
def test_invalid_names_are_rejected_and_change_nothing(registry: Registry, db_url: str, bad_name: object) -> None:
    before = table_snapshot(db_url)
    with pytest.raises(InvalidNameError) as caught:
        registry.resolve(bad_name, "node")  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert table_snapshot(db_url) == before


def test_names_are_compared_in_nfc(registry: Registry) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # what macOS file names hand out is the second
    entry_id = registry.resolve(decomposed, "node")
    assert registry.resolve(composed, "node") == entry_id == registry.lookup(decomposed, "node")
    assert registry.get(composed, "node").name == composed  # stored, listed and exported in NFC
    assert [e.name for e in registry.list("node")] == [composed]
    registry.rename(composed, "cafe\u0301s", "node")
    assert registry.lookup("caf\u00e9s", "node") == entry_id


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [65, 5000])
def test_metadata_nested_too_deep_is_refused_on_every_path(registry: Registry, db_url: str, depth: int) -> None:
    registry.resolve("exists", "node")
    before = table_snapshot(db_url)
    attempts = [lambda: registry.resolve("exists", "node", _nested(depth)),
                lambda: registry.resolve("new", "node", _nested(depth)),
                lambda: registry.update("exists", "node", metadata=_nested(depth)),
                lambda: registry.register("probe", "provider", metadata=_nested(depth)),
                lambda: registry.register("probe", "provider", {"description": "x"},
                                          metadata={"deep": [_nested(depth)]})]
    for attempt in attempts:
        with pytest.raises(InvalidMetadataError, match="nests deeper than 64 levels"):
            attempt()
    session = registry.session()
    with pytest.raises(InvalidMetadataError, match="nests deeper than 64 levels"):
        session.report(status="healthy", progress=_nested(depth))
    snapshot = table_snapshot(db_url)
    del snapshot["session"], before["session"]
    assert {k: v for k, v in snapshot.items() if k != "event"} == {k: v for k, v in before.items() if k != "event"}
    assert registry.resolve("fine", "node", _nested(63)) == registry.lookup("fine", "node")


def test_a_255_character_unicode_name_is_fine(registry: Registry) -> None:
    name = "é" * 255
    assert registry.lookup(name, "node") is None
    assert registry.resolve(name, "node") == registry.lookup(name, "node")


@pytest.mark.parametrize("bad_metadata", [["not", "a", "dict"], "text", {"obj": object()}, {1: "int key"},
                                          {"nan": float("nan")}, {"nested": {"inf": float("inf")}},
                                          {"set": {1, 2}}, {"bytes": b"x"}])
def test_invalid_metadata_is_rejected_before_any_write(registry: Registry, db_url: str,
                                                       bad_metadata: object) -> None:
    registry.resolve("exists", "node", {"a": 1})
    before = table_snapshot(db_url)
    with pytest.raises(InvalidMetadataError):
        registry.resolve("new_one", "node", bad_metadata)  # type: ignore[arg-type]
    with pytest.raises(InvalidMetadataError):
        registry.resolve("exists", "node", bad_metadata)  # type: ignore[arg-type]
    with pytest.raises(InvalidMetadataError):
        registry.update("exists", "node", metadata=bad_metadata)  # type: ignore[arg-type]
    assert table_snapshot(db_url) == before


@pytest.mark.parametrize("bad_kind", ["", "Node", "no spaces", "robot", None])
def test_invalid_or_unknown_kinds_are_rejected_and_change_nothing(registry: Registry, db_url: str,
                                                                  bad_kind: object) -> None:
    before = table_snapshot(db_url)
    with pytest.raises((InvalidNameError, UnknownKindError)):
        registry.resolve("x", bad_kind)  # type: ignore[arg-type]
    assert table_snapshot(db_url) == before


def test_a_closed_registry_refuses_calls(db_url: str) -> None:
    registry = Registry(db_url)
    registry.close()
    registry.close()  # idempotent
    with pytest.raises(RegistryClosedError):
        registry.resolve("x", "node")
    with pytest.raises(RegistryClosedError):
        registry.lookup("x")


def test_context_manager_closes(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("x", "node")
    assert registry.closed
    with Registry(db_url) as again:
        assert again.lookup("x", "node") is not None


# -- any_kind: the name alone is the key (MADSci's rule) -------------------------------------------


def test_any_kind_resolves_an_existing_name_under_its_own_kind(registry: Registry) -> None:
    node_id = registry.resolve("robot", "node", {"a": 1})
    assert registry.resolve("robot", "module", {"b": 2}, any_kind=True) == node_id
    assert [(e.kind, dict(e.metadata)) for e in registry.list()] == [("node", {"a": 1, "b": 2})]
    assert registry.resolve("robot", "module") != node_id  # without it, (kind, name) is the key


def test_any_kind_creates_under_the_given_kind_when_the_name_is_new(registry: Registry) -> None:
    new_id = registry.resolve("arm", "module", any_kind=True)
    entry = registry.get("arm")
    assert entry is not None and (entry.id, entry.kind) == (new_id, "module")


def test_any_kind_with_lock_takes_the_lease_on_the_existing_entry(registry: Registry) -> None:
    node_id = registry.resolve("robot", "node")
    assert registry.resolve("robot", "workcell", lock=True, any_kind=True) == node_id
    lease = registry.lease("robot", "node")
    assert lease is not None and lease.entry_id == node_id
    registry.release("robot", "node")


def test_any_kind_refuses_a_name_already_under_several_kinds(registry: Registry, db_url: str) -> None:
    registry.resolve("twin", "node")
    registry.resolve("twin", "module")
    before = table_snapshot(db_url)
    with pytest.raises(AmbiguousNameError):
        registry.resolve("twin", "manager", any_kind=True)
    assert table_snapshot(db_url) == before


def _resolve_as(barrier: object, results: object, index: int, path: str, kind: str) -> None:
    try:
        with Registry(path, timeout=60) as reg:
            barrier.wait(timeout=60)  # type: ignore[attr-defined]
            ids = [reg.resolve(f"shared-{i}", kind, any_kind=True) for i in range(40)]
        results.put((index, ids))  # type: ignore[attr-defined]
    except BaseException as error:  # report every failure to the parent instead of dying silently
        results.put((index, ("error", repr(error))))  # type: ignore[attr-defined]


def test_any_kind_races_between_kinds_give_one_id_per_name(tmp_path: Path) -> None:
    from conftest import run_processes

    path = tmp_path / "race.db"
    Registry(path).close()
    kinds = ["node", "module", "manager", "workcell"]
    outcomes = run_processes(_resolve_as, [(str(path), kind) for kind in kinds])
    assert all(not isinstance(o, tuple) for o in outcomes), outcomes
    assert all(o == outcomes[0] for o in outcomes)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*), count(DISTINCT name) FROM entry").fetchone() == (40, 40)
    finally:
        conn.close()


def test_listed_entries_carry_the_revision_a_read_of_each_gives(registry: Registry) -> None:
    for name in ("a", "b", "c"):
        registry.resolve(name, "node")
    registry.update("b", "node", metadata={"v": 1})
    listed = registry.list("node")
    assert [e.revision for e in listed] == [registry.get(e.name, "node").revision for e in listed]  # type: ignore[union-attr]
    assert len({e.revision for e in listed}) == 3 and all(e.revision > 0 for e in listed)


def test_listed_entries_equal_their_reads_field_for_field(registry: Registry) -> None:
    """A listing builds its entries without the dataclass __init__ (decode_entries): same values, same
    behaviour (frozen, replaceable)."""
    registry.resolve("plain", "node")
    registry.resolve("meta", "node", {"nested": {"list": [1, 2]}, "x": "é"})
    registry.register("Step1", "step", {"sagemaker_step_type": "Processing"}, target="os.path:join",
                      capabilities=["gpu", "cpu"], metadata={"team": "ml"})
    listed = registry.list()
    assert listed == [registry.get(e.name, e.kind) for e in listed]
    assert [type(e) for e in listed] == [Entry] * len(listed)
    first = listed[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.name = "other"  # type: ignore[misc]
    assert dataclasses.replace(first, name="other").name == "other"
