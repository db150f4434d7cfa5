"""Guarantee 8 and imports: point-in-time export, round trips, all-or-nothing imports, MADSci files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import table_snapshot
from nameplate import ImportFileError, Registry

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
    return {"wrong version": wrong_version, "duplicate names": duplicate, "bad id": bad_id,
            "unknown parent": bad_parent, "definition against its kind": bad_definition,
            "id used twice": same_id_twice, "not an object": [1, 2, 3]}


@pytest.mark.parametrize("case", ["wrong version", "duplicate names", "bad id", "unknown parent",
                                  "definition against its kind", "id used twice", "not an object"])
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


def test_truncated_and_unreadable_files_are_rejected(registry: Registry, db_path: Path, tmp_path: Path) -> None:
    populate(registry)
    path = tmp_path / "export.json"
    path.write_text(json.dumps(registry.export())[:-40])
    before = table_snapshot(db_path)
    with pytest.raises(ImportFileError, match="truncated"):
        registry.import_file(path)
    with pytest.raises(ImportFileError, match="cannot read"):
        registry.import_file(tmp_path / "missing.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ImportFileError):
        registry.import_file(tmp_path / "binary.json")
    assert table_snapshot(db_path) == before


def test_an_id_that_belongs_to_another_entry_is_refused(registry: Registry, tmp_path: Path) -> None:
    registry.resolve("a", "node")
    document = registry.export()
    document["entries"][0]["name"] = "renamed_elsewhere"
    with pytest.raises(ImportFileError, match="already belongs to"):
        registry.import_document(document)


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


def test_madsci_file_with_an_unknown_component_type_is_rejected(registry: Registry, db_path: Path) -> None:
    original = json.loads(MADSCI_FILE.read_text())
    next(iter(original["entries"].values()))["component_type"] = "robot_arm"
    before = table_snapshot(db_path)
    with pytest.raises(ImportFileError, match="robot_arm"):
        registry.import_document(original)
    assert table_snapshot(db_path) == before


def test_the_fixture_is_a_real_madsci_file() -> None:
    data = json.loads(MADSCI_FILE.read_text())
    assert set(data) == {"version", "created_at", "updated_at", "entries"}
    assert all(set(item) == {"id", "component_type", "created_at", "last_seen", "metadata", "lock", "workcell_id"}
               for item in data["entries"].values())
