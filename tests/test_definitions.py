"""Kinds with schemas, validated registration, on_conflict policies, targets and discovery."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from conftest import table_snapshot
from nameplate import (
    KindInUseError,
    NameTakenError,
    Registry,
    TargetImportError,
    UnknownKindError,
    ValidationError,
)


def test_step_definitions_get_their_defaults_from_the_name(registry: Registry) -> None:
    entry = registry.register("XGBoostTraining", "step", {"sagemaker_step_type": "Training"})
    assert dict(entry.definition) == {
        "config_class": "XGBoostTrainingConfig", "builder_step_name": "XGBoostTrainingStepBuilder",
        "spec_type": "XGBoostTraining", "sagemaker_step_type": "Training", "description": ""}
    assert registry.get("XGBoostTraining", "step").definition == entry.definition


def test_validation_reports_every_problem_at_once_with_suggestions(registry: Registry, db_path: Path) -> None:
    before = table_snapshot(db_path)
    with pytest.raises(ValidationError) as caught:
        registry.register("xgboost_training", "step", {"sagemaker_step_typ": "Training", "confg_class": "X"})
    problems = caught.value.problems
    assert len(problems) == 4, problems
    text = str(caught.value)
    assert "did you mean 'XgboostTraining'?" in text
    assert "required field 'sagemaker_step_type' is missing" in text
    assert "did you mean 'sagemaker_step_type'?" in text and "did you mean 'config_class'?" in text
    assert table_snapshot(db_path) == before


def test_a_batch_is_all_or_nothing(registry: Registry, db_path: Path) -> None:
    before = table_snapshot(db_path)
    with pytest.raises(ValidationError) as caught:
        registry.register_many([
            {"name": "Good", "kind": "step", "definition": {"sagemaker_step_type": "Processing"}},
            {"name": "bad name!", "kind": "step", "definition": {}},
            {"name": "Thing", "kind": "robot"},
            {"name": "Good", "kind": "step", "definition": {"sagemaker_step_type": "Processing"}},
        ])
    text = str(caught.value)
    assert "item 1" in text and "item 2" in text and "listed twice" in text
    assert "kind 'robot' is not defined" in text
    assert table_snapshot(db_path) == before
    entries = registry.register_many(
        [{"name": f"Legacy{i}", "kind": "step", "definition": {"sagemaker_step_type": "Processing"},
          "metadata": {"provenance": "legacy-import"}} for i in range(5)])
    assert [e.name for e in entries] == [f"Legacy{i}" for i in range(5)]
    assert all(e.metadata == {"provenance": "legacy-import"} for e in entries)


def test_on_conflict_policies(registry: Registry) -> None:
    first = registry.register("Train", "step", {"sagemaker_step_type": "Training"})
    assert registry.register("Train", "step", {"sagemaker_step_type": "Training"}).id == first.id  # same: no-op
    with pytest.raises(NameTakenError) as caught:
        registry.register("Train", "step", {"sagemaker_step_type": "Processing"})
    assert "on_conflict='replace'" in str(caught.value)
    kept = registry.register("Train", "step", {"sagemaker_step_type": "Processing"}, on_conflict="keep")
    assert kept.definition["sagemaker_step_type"] == "Training"
    replaced = registry.register("Train", "step", {"sagemaker_step_type": "Processing"}, on_conflict="replace")
    assert replaced.id == first.id and replaced.definition["sagemaker_step_type"] == "Processing"
    with pytest.raises(Exception, match="on_conflict must be one of"):
        registry.register("Train", "step", {}, on_conflict="overwrite")


def test_registering_a_resolved_entry_fills_in_its_definition(registry: Registry) -> None:
    entry_id = registry.resolve("pump", "node")
    entry = registry.register("pump", "node", {"port": "/dev/ttyUSB0"}, capabilities=["dispense"])
    assert entry.id == entry_id and entry.definition == {"port": "/dev/ttyUSB0"}
    assert entry.capabilities == {"dispense"}


def test_user_kinds_with_validators(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lab_rules.py").write_text(textwrap.dedent("""
        def check_volume(definition):
            if definition["max_volume_ul"] <= 0:
                return ["max_volume_ul must be positive"]
            return None
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    kind = registry.define_kind("pipette", required=["max_volume_ul"], optional=["channels"],
                                defaults={"channels": 1}, validator="lab_rules:check_volume",
                                description="a pipetting head")
    assert kind.fields == ("max_volume_ul", "channels") and not kind.builtin
    assert dict(registry.register("p300", "pipette", {"max_volume_ul": 300}).definition) == {
        "max_volume_ul": 300, "channels": 1}
    with pytest.raises(ValidationError, match="must be positive"):
        registry.register("broken", "pipette", {"max_volume_ul": -1})
    with pytest.raises(KindInUseError):
        registry.define_kind("pipette", required=["max_volume_ul", "tip_type"])  # p300 has no tip_type
    with pytest.raises(KindInUseError):
        registry.delete_kind("pipette")
    with pytest.raises(KindInUseError):
        registry.define_kind("step")
    with pytest.raises(ValidationError, match="cannot be imported"):
        registry.define_kind("other", validator="lab_rules:missing_function")
    with pytest.raises(UnknownKindError, match="did you mean 'pipette'"):
        registry.kind("pipete")
    registry.delete("p300", "pipette")
    registry.delete_kind("pipette")
    assert "pipette" not in [k.name for k in registry.kinds()]


def test_resolve_checks_the_kinds_name_pattern(registry: Registry) -> None:
    with pytest.raises(Exception, match="did you mean 'TabularPreprocessing'"):
        registry.resolve("tabular_preprocessing", "step")


# -- targets -----------------------------------------------------------------------------------------


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "np_test_plugin.py").write_text("class Builder:\n    pass\n\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "np_test_plugin"
    sys.modules.pop("np_test_plugin", None)


def test_load_imports_the_target_lazily_and_caches_it(registry: Registry, plugin_module: str) -> None:
    registry.register("Train", "builder", target=f"{plugin_module}:Builder")
    assert plugin_module not in sys.modules  # registering does not import
    loaded = registry.load("Train", "builder")
    assert loaded.__name__ == "Builder" and registry.load("Train", "builder") is loaded


def test_load_failures_name_the_entry_and_the_path(registry: Registry, plugin_module: str) -> None:
    registry.register("Missing", "builder", target="no_such_module_anywhere:Thing")
    registry.register("NoAttr", "builder", target=f"{plugin_module}:Nothing")
    registry.register("NoTarget", "builder")
    with pytest.raises(TargetImportError) as caught:
        registry.load("Missing", "builder")
    assert "'Missing'" in str(caught.value) and "no_such_module_anywhere:Thing" in str(caught.value)
    assert isinstance(caught.value, ImportError)
    with pytest.raises(TargetImportError, match="has no such attribute"):
        registry.load("NoAttr", "builder")
    with pytest.raises(TargetImportError, match="has no target"):
        registry.load("NoTarget", "builder")


def test_bind_is_visible_to_load_in_this_process_only(registry: Registry, db_path: Path) -> None:
    before = table_snapshot(db_path)

    class Temporary:
        pass

    registry.bind("Scratch", "builder", Temporary)
    assert registry.load("Scratch", "builder") is Temporary
    assert table_snapshot(db_path) == before
    with Registry(db_path) as other:
        with pytest.raises(Exception):
            other.load("Scratch", "builder")


def test_discover_registers_entry_points_idempotently(registry: Registry, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, plugin_module: str) -> None:
    dist = tmp_path / "np_test_plugin-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: np-test-plugin\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(
        "[nameplate.components]\n"
        f"step:PluginStep = {plugin_module}:Builder\n"
        f"fast_llm = {plugin_module}:VALUE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = registry.discover()
    assert sorted((e.kind, e.name) for e in found) == [("provider", "fast_llm"), ("step", "PluginStep")]
    step = registry.get("PluginStep", "step")
    assert step.target == f"{plugin_module}:Builder"
    assert step.metadata["distribution"] == "np-test-plugin" and step.metadata["version"] == "1.2.3"
    assert step.definition is None  # entry points carry a target, not a definition
    again = registry.discover()
    assert [e.id for e in again] == [e.id for e in found]
    assert registry.load("fast_llm", "provider") == 42
