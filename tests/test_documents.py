"""Guarantee 8 and imports: point-in-time export, round trips, all-or-nothing imports, MADSci files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nameplate import ConflictError, ImportFileError, Registry, UnknownWorkspaceError

from conftest import table_snapshot

MADSCI_FILE = Path(__file__).parent / "data" / "madsci_registry.json"


def populate(registry: Registry) -> None:
    registry.create_workspace("dev1", description="Ada's experiments")
    registry.create_workspace("dev1_gpu", parent="dev1")
    registry.define_kind("pipette", required=["max_volume_ul"], optional=["channels"], defaults={"channels": 1})
    registry.resolve("liquid_handler", "node", {"url": "http://localhost:2000"})
    registry.register("p300", "pipette", {"max_volume_ul": 300}, capabilities=["aspirate", "dispense"])
    registry.register("Train", "step", {"sagemaker_step_type": "Training"}, target="builtins:dict")
    registry.register("Train", "step", {"sagemaker_step_type": "Processing"}, workspace="dev1")
    registry.resolve("scratch", "node", workspace="dev1_gpu")
    registry.hide("liquid_handler", "node", workspace="dev1")


def comparable(document: dict[str, Any]) -> dict[str, Any]:
    return {key: document[key] for key in ("workspaces", "kinds", "entries", "tombstones")}


def test_export_is_stamped_with_its_revision(registry: Registry) -> None:
    populate(registry)
    document = registry.export()
    assert document["format"] == "nameplate-export" and document["version"] == 1
    assert document["revision"] == registry.revision
    assert [w["name"] for w in document["workspaces"]] == ["core", "dev1", "dev1_gpu"]
    assert document["tombstones"] == [{"workspace": "dev1", "kind": "node", "name": "liquid_handler"}]


def test_round_trip_into_an_empty_registry_reproduces_everything(registry: Registry, tmp_path: Path) -> None:
    populate(registry)
    document = registry.export()
    with Registry(tmp_path / "copy.db") as copy:
        plan = copy.import_document(json.loads(json.dumps(document)), replace=True)
        assert plan.applied and len(plan.added) == 5
        again = copy.export()
        assert comparable(again) == comparable(document)
        assert copy.lookup("Train", "step", workspace="dev1_gpu") == registry.lookup("Train", "step",
                                                                                      workspace="dev1_gpu")
        assert copy.lookup("liquid_handler", "node", workspace="dev1") is None
        assert copy.find("pipette", {"dispense"})[0].name == "p300"


def test_merge_keeps_existing_entries_and_adds_new_ones(registry: Registry, tmp_path: Path) -> None:
    populate(registry)
    document = registry.export()
    with Registry(tmp_path / "other.db") as other:
        mine = other.resolve("liquid_handler", "node")  # same name, its own id: kept by a merge
        other.resolve("only_here", "node")
        dry = other.import_document(document, dry_run=True)
        assert not dry.applied and "core/node/liquid_handler" in dry.kept
        assert "pipette" not in [k.name for k in other.kinds()]  # a dry run writes nothing
        plan = other.import_document(document)
        assert plan.applied
        assert other.lookup("liquid_handler", "node") == mine
        assert other.lookup("only_here", "node") is not None
        assert other.get("p300", "pipette").definition == {"max_volume_ul": 300, "channels": 1}


def test_replace_removes_what_the_file_does_not_hold(registry: Registry, tmp_path: Path) -> None:
    populate(registry)
    document = registry.export()
    with Registry(tmp_path / "other.db") as other:
        other.resolve("doomed", "node")
        other.create_workspace("elsewhere")
        plan = other.import_document(document, replace=True, dry_run=True)
        assert plan.removed == ["core/node/doomed"]
        other.import_document(document, replace=True)
        assert other.lookup("doomed", "node") is None
        assert [w.name for w in other.workspaces()] == ["core", "dev1", "dev1_gpu"]


def _broken_documents(document: dict[str, Any]) -> dict[str, Any]:
    wrong_version = dict(document, version=99)
    duplicate = json.loads(json.dumps(document))
    duplicate["entries"].append(dict(duplicate["entries"][0], id="01ARZ3NDEKTSV4RRFFQ69G5FAV"))
    bad_id = json.loads(json.dumps(document))
    bad_id["entries"][0]["id"] = "not-a-ulid"
    bad_parent = json.loads(json.dumps(document))
    bad_parent["workspaces"][1]["parent"] = "ghost"
    bad_definition = json.loads(json.dumps(document))
    for entry in bad_definition["entries"]:
        if entry["kind"] == "pipette":
            entry["definition"] = {"max_volume": 3}
    same_id_twice = json.loads(json.dumps(document))
    same_id_twice["entries"][1]["id"] = same_id_twice["entries"][0]["id"]
    cases: dict[str, Any] = {"wrong version": wrong_version, "duplicate names": duplicate, "bad id": bad_id,
                             "unknown parent": bad_parent, "definition against its kind": bad_definition,
                             "id used twice": same_id_twice, "not an object": [1, 2, 3],
                             "version as a boolean": dict(document, version=True),
                             "section not a list": dict(document, entries="oops")}

    def broken(change: Any) -> dict[str, Any]:
        copy = json.loads(json.dumps(document))
        change(copy)
        return copy

    cases["tombstone without a name"] = broken(lambda d: d["tombstones"][0].update(name=None))
    cases["lower-case id"] = broken(lambda d: d["entries"][0].update(id=d["entries"][0]["id"].lower()))
    cases["unknown entry field"] = broken(lambda d: d["entries"][0].update(colour="red"))
    cases["kind listed twice"] = broken(lambda d: d["kinds"].append(next(k for k in d["kinds"] if not k["builtin"])))
    cases["built-in kind redefined"] = broken(lambda d: d["kinds"].append({"name": "node", "required": ["x"]}))
    cases["core with a parent"] = broken(lambda d: d["workspaces"][0].update(parent="dev1"))
    cases["bad timestamp"] = broken(lambda d: d["entries"][0].update(created_at="yesterday"))
    cases["capabilities as a string"] = broken(lambda d: d["entries"][0].update(capabilities="llm"))
    return cases


BROKEN = ["wrong version", "duplicate names", "bad id", "unknown parent", "definition against its kind",
          "id used twice", "not an object", "version as a boolean", "section not a list", "tombstone without a name",
          "lower-case id", "unknown entry field", "kind listed twice", "built-in kind redefined", "core with a parent",
          "bad timestamp", "capabilities as a string"]


@pytest.mark.parametrize("case", BROKEN)
def test_invalid_documents_are_rejected_and_change_nothing(registry: Registry, tmp_path: Path, case: str) -> None:
    populate(registry)
    document = _broken_documents(registry.export())[case]
    target = tmp_path / "target.db"
    with Registry(target) as other:
        other.resolve("existing", "node")
        before = table_snapshot(target)
        for replace in (False, True):
            with pytest.raises(ImportFileError) as caught:
                other.import_document(document, replace=replace, format="nameplate")
            assert "nothing was changed" in str(caught.value) or "not a nameplate" in str(caught.value)
        assert table_snapshot(target) == before


def test_truncated_and_unreadable_files_are_rejected(registry: Registry, db_url: str, tmp_path: Path) -> None:
    populate(registry)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(registry.export())[:-40])
    before = table_snapshot(db_url)
    with pytest.raises(ImportFileError, match="truncated"):
        registry.import_file(path)
    with pytest.raises(ImportFileError, match="cannot read"):
        registry.import_file(tmp_path / "missing.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ImportFileError):
        registry.import_file(tmp_path / "binary.json")
    assert table_snapshot(db_url) == before


def test_the_same_bad_time_in_many_entries_is_reported_for_each(registry: Registry, tmp_path: Path) -> None:
    """Times are parsed once per distinct text (an import's entries share them); a bad one is not
    remembered, so every entry that carries it is named."""
    for name in ("a", "b", "c"):
        registry.resolve(name, "node")
    document = registry.export()
    for entry in document["entries"][:2]:
        entry["updated_at"] = "2026-13-40T00:00:00Z"  # ends like an export's times, is no time
    with Registry(tmp_path / "target.db") as other:
        with pytest.raises(ImportFileError) as caught:
            other.import_document(document, format="nameplate")
    problems = caught.value.problems
    assert len(problems) == 2 and all("updated_at" in p for p in problems)
    assert [p.split(" ", 1)[0] for p in problems] == ["entries[0]", "entries[1]"]


def test_an_id_that_belongs_to_another_entry_is_refused(registry: Registry, db_url: str) -> None:
    registry.resolve("a", "node")
    document = registry.export()
    document["entries"][0]["name"] = "renamed_elsewhere"
    before = table_snapshot(db_url)
    with pytest.raises(ConflictError, match="already belongs to core/node/a") as caught:
        registry.import_document(document)
    assert caught.value.exit_code == 4 and len(caught.value.problems) == 1
    assert table_snapshot(db_url) == before


def test_madsci_file_imports_and_exports_back_equal(registry: Registry, tmp_path: Path) -> None:
    original = json.loads(MADSCI_FILE.read_text())
    plan = registry.import_file(MADSCI_FILE, format="madsci")
    assert len(plan.added) == len(original["entries"])
    for name, item in original["entries"].items():
        assert registry.lookup(name, item["component_type"]) == item["id"]
    exported = registry.export("madsci")
    assert exported["entries"] == original["entries"]
    assert exported["version"] == original["version"]
    copy = tmp_path / "registry.json"
    copy.write_text(json.dumps(exported))
    with Registry(tmp_path / "again.db") as again:
        again.import_file(copy)  # auto-detected
        assert again.export("madsci")["entries"] == original["entries"]


def test_madsci_lock_fields_and_the_compatible_import_entries(registry: Registry) -> None:
    original = json.loads(MADSCI_FILE.read_text())
    name = next(iter(original["entries"]))
    original["entries"][name]["lock"] = {"holder_pid": 1, "holder_host": "old", "holder_instance": "x",
                                         "acquired_at": "2026-01-01T00:00:00Z", "heartbeat_at": "2026-01-01T00:00:00Z",
                                         "expires_at": "2026-01-01T00:01:00Z"}
    plan = registry.import_document(original, dry_run=True)
    assert plan.locks_dropped == 1 and plan.format == "madsci"
    registry.import_entries(original, merge=True)
    assert registry.lookup(name) == original["entries"][name]["id"]
    assert registry.locks() == []
    registry.acquire(name)
    lock = registry.export("madsci")["entries"][name]["lock"]
    assert lock["holder_pid"] > 1 and lock["holder_instance"] == registry.session().id


def test_madsci_file_with_an_unknown_component_type_is_rejected(registry: Registry, db_url: str) -> None:
    original = json.loads(MADSCI_FILE.read_text())
    next(iter(original["entries"].values()))["component_type"] = "robot_arm"
    before = table_snapshot(db_url)
    with pytest.raises(ImportFileError, match="robot_arm"):
        registry.import_document(original)
    assert table_snapshot(db_url) == before


def test_the_fixture_is_a_real_madsci_file() -> None:
    data = json.loads(MADSCI_FILE.read_text())
    assert set(data) == {"version", "created_at", "updated_at", "entries"}
    assert all(set(item) == {"id", "component_type", "created_at", "last_seen", "metadata", "lock", "workcell_id"}
               for item in data["entries"].values())


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_export_reads_one_snapshot_and_import_writes_one_transaction(registry: Registry, tmp_path: Path) -> None:
    populate(registry)
    statements: list[str] = []
    conn = registry._backend.connection()
    conn.set_trace_callback(statements.append)
    try:
        document = registry.export()
    finally:
        conn.set_trace_callback(None)
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == ["BEGIN", "COMMIT"]
    with Registry(tmp_path / "copy.db") as copy:
        statements.clear()
        conn = copy._backend.connection()
        conn.set_trace_callback(statements.append)
        try:
            copy.import_document(document, replace=True)
        finally:
            conn.set_trace_callback(None)
        copy_count = copy._backend.query_one("SELECT count(*) FROM entry")[0]
    # validation in a read snapshot, then every row in one BEGIN IMMEDIATE ... COMMIT
    assert [s for s in statements if s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))] == [
        "BEGIN", "COMMIT", "BEGIN IMMEDIATE", "COMMIT"]
    write = statements[statements.index("BEGIN IMMEDIATE"):]
    # the five entries in one multi-row INSERT (up to a hundred rows per statement), then the tombstone
    inserts = [s for s in write if s.startswith("INSERT INTO entry ")]
    assert len(inserts) == 2 and inserts[0].count(" RETURNING") == 1 and len(document["entries"]) == 5
    assert copy_count == 5 + 1


def test_an_import_is_logged_entry_by_entry(registry: Registry, tmp_path: Path) -> None:
    populate(registry)
    with Registry(tmp_path / "copy.db") as copy:
        plan = copy.import_document(registry.export())
        events = copy.changes()
        assert plan.revision == copy.revision == events[-1].rev
        assert events[-1].action == "import" and events[-1].detail["added"] == 5
        created = {e.entry_id for e in events if e.action == "create"}
        assert created == {e["id"] for e in registry.export()["entries"]}
        assert all(e.detail.get("source") == "import" for e in events if e.action in ("create", "hide"))


def test_ephemeral_entries_stay_out_of_exports(registry: Registry) -> None:
    registry.resolve("durable", "node")
    registry.resolve("worker_7", "process", ephemeral=True)
    assert [e["name"] for e in registry.export()["entries"]] == ["durable"]


def test_merge_validates_entries_against_the_registrys_own_kind(registry: Registry, tmp_path: Path) -> None:
    populate(registry)
    document = registry.export()
    target = tmp_path / "other.db"
    with Registry(target) as other:
        other.define_kind("pipette", required=["volume"])  # same name, another schema: merge keeps this one
        before = table_snapshot(target)
        with pytest.raises(ImportFileError, match="required field 'volume' is missing"):
            other.import_document(document)
        assert table_snapshot(target) == before
        assert other.import_document(document, replace=True).applied  # replace brings the file's schema
        assert other.kind("pipette").required == ("max_volume_ul",)


def test_replace_needs_every_user_kind_in_the_file(registry: Registry, tmp_path: Path) -> None:
    populate(registry)
    document = registry.export()
    document["kinds"] = [k for k in document["kinds"] if k["name"] != "pipette"]
    target = tmp_path / "other.db"
    with Registry(target) as other:
        other.define_kind("pipette", required=["max_volume_ul"], optional=["channels"])
        before = table_snapshot(target)
        with pytest.raises(ImportFileError, match="kind 'pipette' is not defined here nor in the file"):
            other.import_document(document, replace=True)  # replace drops the registry's own user kinds
        assert table_snapshot(target) == before
        assert other.import_document(document).applied  # merge keeps them, so the entries have their kind


def test_import_validates_again_when_the_registry_moved(registry: Registry, db_url: str, tmp_path: Path) -> None:
    registry.resolve("a", "node")
    registry.resolve("b", "node")
    document = registry.export()
    target = tmp_path / "other.db"
    calls: list[int] = []
    with Registry(target) as mine, Registry(target) as other:
        def meanwhile(done: int, total: int) -> None:
            calls.append(done)
            if len(calls) == 1:  # during the first validation another writer takes the name "a"
                other.resolve("a", "node")

        plan = mine.import_document(document, progress=meanwhile)
        # Validated once, outside the lock; the revision moved before the write, so what depends on the
        # registry's contents (the name "a" is now taken) was judged again inside the write transaction.
        assert calls.count(0) == 1
        assert plan.kept == ["core/node/a"] and plan.added == ["core/node/b"]
        assert mine.lookup("a", "node") != registry.lookup("a", "node")
        assert mine.lookup("b", "node") == registry.lookup("b", "node")


def test_an_import_validates_again_outside_the_lock_when_a_kind_changed(registry: Registry, tmp_path: Path) -> None:
    registry.define_kind("sensor", optional=["unit"], strict=True)
    registry.register("thermo", "sensor", {"unit": "C"})
    document = registry.export()
    target = tmp_path / "other.db"
    calls: list[int] = []
    with Registry(target) as mine, Registry(target) as other:
        other.define_kind("sensor", optional=["unit"], strict=True)

        def meanwhile(done: int, total: int) -> None:
            calls.append(done)
            if len(calls) == 1:  # the kind's schema changes while the document is being validated
                other.define_kind("sensor", optional=["unit", "range"], strict=True)

        assert mine.import_document(document, progress=meanwhile).added == ["core/sensor/thermo"]
        assert calls.count(0) == 2  # validated a second time, against the new schema, still outside the lock


def test_duplicate_keys_in_a_file_are_refused(registry: Registry, db_url: str, tmp_path: Path) -> None:
    entry = json.dumps({"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "component_type": "node",
                        "created_at": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z", "metadata": {},
                        "lock": None, "workcell_id": None})
    path = tmp_path / "registry.json"
    path.write_text(f'{{"version": 1, "entries": {{"lh": {entry}, "lh": {entry}}}}}')
    before = table_snapshot(db_url)
    with pytest.raises(ImportFileError, match="'lh' twice"):
        registry.import_file(path)
    assert table_snapshot(db_url) == before


def _madsci_entry(entry_id: str, kind: str = "node", **extra: Any) -> dict[str, Any]:
    return {"id": entry_id, "component_type": kind, "created_at": "2026-01-02T03:04:05.123456Z",
            "last_seen": "2026-01-02T03:04:06Z", "metadata": extra, "lock": None, "workcell_id": None}


def test_madsci_workflow_entries_define_their_kind(registry: Registry) -> None:
    data = {"version": 1, "created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:05Z",
            "entries": {"pcr": _madsci_entry("01ARZ3NDEKTSV4RRFFQ69G5FAV", "workflow", steps=3)}}
    dry = registry.import_document(data, dry_run=True)
    assert dry.kinds_added == ["workflow"] and "workflow" not in [k.name for k in registry.kinds()]
    plan = registry.import_document(data)
    assert plan.kinds_added == ["workflow"] and registry.lookup("pcr", "workflow") == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert registry.export("madsci")["entries"] == data["entries"]


def test_madsci_replace_touches_only_madsci_kinds_of_the_workspace(registry: Registry) -> None:
    registry.register("Train", "step", {"sagemaker_step_type": "Training"})
    registry.create_workspace("dev1")
    registry.resolve("mine", "node", workspace="dev1")
    old = registry.resolve("old", "node")
    data = {"version": 1, "entries": {"lh": _madsci_entry("01ARZ3NDEKTSV4RRFFQ69G5FAV")}}
    plan = registry.import_document(data, replace=True, dry_run=True)
    assert (plan.added, plan.removed, plan.kinds_added) == (["core/node/lh"], ["core/node/old"], [])
    registry.import_entries(data, merge=False)  # MADSci's spelling of the same call
    assert registry.lookup("old", "node") is None and registry.lookup("lh", "node") == "01ARZ3NDEKTSV4RRFFQ69G5FAV"
    assert registry.lookup("Train", "step") is not None  # another kind: untouched
    assert registry.lookup("mine", "node", workspace="dev1") is not None  # another workspace: untouched
    assert any(e.action == "delete" and e.entry_id == old for e in registry.changes())


def test_madsci_replace_in_a_child_workspace_hides_what_it_inherits(registry: Registry) -> None:
    lh = registry.resolve("lh", "node")
    registry.resolve("gone", "node")
    registry.create_workspace("dev1")
    data = registry.export("madsci", workspace="dev1")
    del data["entries"]["gone"]
    data["entries"]["new"] = _madsci_entry("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    plan = registry.import_document(data, replace=True, workspace="dev1")
    assert plan.kept == ["dev1/node/lh"] and plan.added == ["dev1/node/new"]
    assert plan.removed == plan.tombstones_added == ["dev1/node/gone"]
    assert registry.lookup("gone", "node", workspace="dev1") is None
    assert registry.lookup("gone", "node") is not None  # the ancestor's row is not the import's to delete
    assert registry.get("lh", "node", workspace="dev1").workspace == "core"
    assert sorted(registry.export("madsci", workspace="dev1")["entries"]) == ["lh", "new"]
    assert registry.lookup("lh", "node", workspace="dev1") == lh


def test_madsci_merge_keeps_a_name_under_any_kind(registry: Registry) -> None:
    module = registry.resolve("x", "module")
    data = {"version": 1, "entries": {"x": _madsci_entry("01ARZ3NDEKTSV4RRFFQ69G5FAV", "node")}}
    plan = registry.import_document(data)
    assert plan.kept == ["core/node/x"] and not plan.added
    assert registry.lookup("x") == module


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(version=2), "version 2 is not supported"),
    (lambda d: d.update(comment="hi"), "unknown fields ['comment']"),
    (lambda d: d["entries"]["lh"].update(holder="me"), "unknown fields ['holder']"),
    (lambda d: d["entries"]["lh"].update(metadata=[1]), "metadata must be a JSON object"),
    (lambda d: d["entries"]["lh"].update(workcell_id=7), "workcell_id must be a string"),
    (lambda d: d["entries"].update({" lh": d["entries"]["lh"]}), "leading or trailing whitespace"),
])
def test_invalid_madsci_files_are_rejected(registry: Registry, db_url: str, change: Any, message: str) -> None:
    data = {"version": 1, "entries": {"lh": _madsci_entry("01ARZ3NDEKTSV4RRFFQ69G5FAV")}}
    change(data)
    before = table_snapshot(db_url)
    with pytest.raises(ImportFileError) as caught:
        registry.import_document(data, format="madsci")
    assert message in str(caught.value)
    assert table_snapshot(db_url) == before


def test_madsci_import_into_a_missing_workspace(registry: Registry) -> None:
    with pytest.raises(UnknownWorkspaceError):
        registry.import_document({"version": 1, "entries": {}}, workspace="nowhere")
    with pytest.raises(UnknownWorkspaceError):
        registry.export("madsci", workspace="nowhere")


def test_imported_entries_carry_the_revision_of_their_create_event(registry: Registry, tmp_path: Path) -> None:
    with Registry(tmp_path / "source.db") as source:
        for index in range(3):
            source.resolve(f"lh{index}", "node", {"index": index})
        document = source.export()
    registry.resolve("already_here", "node")
    registry.import_document(document)
    created = {event.name: event.rev for event in registry.changes() if event.action == "create"}
    listed = {entry.name: entry.revision for entry in registry.list("node")}
    assert listed == created and len(set(listed.values())) == 4
    assert registry.require("lh2", "node").revision == created["lh2"]
