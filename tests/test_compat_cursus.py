"""nameplate.compat.cursus: Cursus's registry API (seeds 000 and 001) on a Registry.

The first tests follow the seeds' own examples line by line (the README of ``cursus.registry`` and
the tutorial), with Cursus's imports changed to ours; then the behaviours behind them, then several
threads, tasks and processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nameplate import EntryNotFoundError, NameTakenError, Registry, ValidationError, compat
from nameplate.compat import cursus
from nameplate.compat.cursus import (
    BUILDER_STEP_NAMES,
    CONFIG_STEP_REGISTRY,
    LEGACY_ALIASES,
    SPEC_STEP_TYPES,
    STEP_NAMES,
    BuilderClassError,
    BuilderNotFoundError,
    RegistryError,
    StepBuilderRegistry,
    StepDefinitionWarning,
    StepNotFoundError,
    StepValidationError,
    UnifiedRegistryManager,
    WorkspaceRegistryManager,
    clear_workspace_context,
    debug_step_resolution,
    export_registry_to_json,
    get_all_hyperparameter_classes,
    get_available_steps,
    get_builder_step_name,
    get_config_class_name,
    get_global_registry,
    get_hyperparameter_class_by_model_type,
    get_step_names,
    get_workspace_context,
    register_global_builder,
    register_step,
    set_workspace_context,
    validate_hyperparameter_class,
    validate_registry_integrity,
    validate_step_name,
    workspace_context,
)

from conftest import SPAWN, run_processes, table_snapshot


class StepBuilderBase:
    """Stands in for Cursus's ``cursus.core.base.builder_base.StepBuilderBase``."""


class XGBoostTrainingConfig:
    """A Cursus config class: its name maps to the step through CONFIG_STEP_REGISTRY."""

    def __init__(self, job_type: str | None = None) -> None:
        if job_type is not None:
            self.job_type = job_type


class XGBoostTrainingStepBuilder(StepBuilderBase):
    pass


class TabularPreprocessingStepBuilder(StepBuilderBase):
    pass


class TabularPreprocessingConfig:
    def __init__(self, job_type: str) -> None:
        self.job_type = job_type


@pytest.fixture
def cursus_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The module's default registry on a private file, and no workspace context left behind."""
    path = tmp_path / "cursus.db"
    monkeypatch.setenv("NAMEPLATE_DB", str(path))
    yield path
    clear_workspace_context()
    cursus.default_registry().close()


# -- seed 000, "Basic Registry Operations" -------------------------------------------------------------

def test_seed_basic_registry_operations(cursus_db: Path) -> None:
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training"})  # Cursus ships this step; we register it
    register_global_builder("XGBoostTraining", XGBoostTrainingStepBuilder)

    config_class = get_config_class_name("XGBoostTraining")
    assert config_class == "XGBoostTrainingConfig"
    builder_name = get_builder_step_name("XGBoostTraining")
    assert builder_name == "XGBoostTrainingStepBuilder"
    is_valid = validate_step_name("XGBoostTraining")
    assert is_valid is True
    registry = get_global_registry()
    supported_types = registry.list_supported_step_types()
    assert supported_types == ["XGBoostTraining"]


# -- seed 000, "Workspace-Aware Operations" ------------------------------------------------------------

def test_seed_workspace_aware_operations(cursus_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training"})
    register_step("DevOnlyStep", {"sagemaker_step_type": "Processing"}, "developer_1")

    set_workspace_context("developer_1")
    current_workspace = get_workspace_context()
    assert current_workspace == "developer_1"
    workspace_steps = get_step_names("developer_1")
    assert sorted(workspace_steps) == ["DevOnlyStep", "XGBoostTraining"]
    assert get_step_names(workspace_id="developer_1") == workspace_steps == get_step_names(workspace="developer_1")
    assert validate_step_name("DevOnlyStep", workspace_id="developer_1")
    with caplog.at_level(logging.WARNING, logger="nameplate.compat.cursus"):
        with workspace_context("developer_2"):          # never created: Cursus reads core, so do we
            temp_steps = get_step_names()
            assert sorted(temp_steps) == ["XGBoostTraining"]
    assert "workspace 'developer_2' does not exist; reading the core registry" in caplog.text
    assert get_workspace_context() == "developer_1"      # restored after the with block
    with pytest.raises(Exception, match="developer_2"):  # the Registry itself stays strict
        cursus.default_registry().list("step", workspace="developer_2")


# -- seed 000, "Builder Registry Usage" ----------------------------------------------------------------

def test_seed_builder_registry_usage(cursus_db: Path) -> None:
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training"})
    register_global_builder("XGBoostTraining", XGBoostTrainingStepBuilder)

    registry = get_global_registry()
    config = XGBoostTrainingConfig()
    builder_class = registry.get_builder_for_config(config)
    assert builder_class is XGBoostTrainingStepBuilder

    class CustomStepBuilder(StepBuilderBase):
        def build_step(self, config: Any, context: Any) -> None:
            pass

    register_global_builder("CustomStep", CustomStepBuilder)

    validation_results = registry.validate_registry()
    assert validation_results["valid"] == ["CustomStep -> CustomStepBuilder",
                                           "XGBoostTraining -> XGBoostTrainingStepBuilder"]
    assert validation_results["invalid"] == []
    assert validation_results["missing"] == []


# -- seed 000, "Hyperparameter Registry Usage" ---------------------------------------------------------

def test_seed_hyperparameter_registry_usage(cursus_db: Path) -> None:
    reg = cursus.default_registry()
    reg.register("XGBoostHyperparameters", "hyperparameter", {"model_type": "xgboost"},
                 target=f"{__name__}:XGBoostTrainingConfig")
    reg.register("BrokenHyperparameters", "hyperparameter", {"model_type": "broken"}, target="json:dumps")

    all_classes = get_all_hyperparameter_classes()
    assert all_classes == ["BrokenHyperparameters", "XGBoostHyperparameters"]
    xgboost_class = get_hyperparameter_class_by_model_type("xgboost")
    assert xgboost_class is XGBoostTrainingConfig
    is_valid = validate_hyperparameter_class("XGBoostHyperparameters")
    assert is_valid is True
    assert validate_hyperparameter_class("BrokenHyperparameters") is False  # json.dumps is not a class
    assert validate_hyperparameter_class("Unknown") is False


# -- seed 001, "Common Use Cases" and "Debug Functions" ------------------------------------------------

def test_seed_tutorial_use_cases(cursus_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # 1. Explore Available Steps
    steps = get_available_steps()
    assert steps == []

    # 2. Register Custom Step
    definition = {
        'config_class': 'CustomConfig',
        'builder_step_name': 'custom_builder',
        'spec_type': 'custom',
        'sagemaker_step_type': 'ProcessingStep',
        'description': 'Custom processing step'
    }
    with pytest.warns(StepDefinitionWarning, match="registered as 'CustomStep'.*'custom_step' is kept as an alias"):
        register_step('custom_step', definition)
    assert get_available_steps() == ["CustomStep"]
    assert get_config_class_name("custom_step") == "CustomConfig"   # the tutorial's name still answers
    assert validate_step_name("custom_step")

    # 3. Export Registry to JSON
    registry_data = export_registry_to_json()
    with open('my_registry.json', 'w') as f:
        json.dump(registry_data, f, indent=2)
    saved = json.loads((tmp_path / "my_registry.json").read_text())
    assert saved["steps"]["CustomStep"]["spec_type"] == "custom"
    assert saved["legacy_aliases"]["custom_step"] == "CustomStep"
    assert saved["revision"] == cursus.default_registry().revision

    # 4. Workspace-Aware Operations
    workspace = tmp_path / "developer_3"
    (workspace / "src" / "cursus_dev" / "registry").mkdir(parents=True)
    (workspace / "src" / "cursus_dev" / "registry" / "workspace_registry.py").write_text(
        "LOCAL_STEPS = {'DevStep': {'sagemaker_step_type': 'Processing'}}\n")
    ws_manager = WorkspaceRegistryManager(str(workspace))
    ws_steps = ws_manager.get_workspace_steps()
    assert sorted(ws_steps) == ["DevStep"]
    assert sorted(ws_manager.get_all_steps()) == ["CustomStep", "DevStep"]

    # Debug step resolution
    debug_info = debug_step_resolution('custom_step')
    assert debug_info["alias_of"] == "CustomStep" and debug_info["answered_by"] == "core"
    assert debug_info["chain"] == ["core"] and debug_info["found"]

    # Validate registry integrity
    is_valid, issues = validate_registry_integrity()
    assert not is_valid
    assert any("custom_builder" in issue for issue in issues) and any("ProcessingStep" in i for i in issues)


# -- validation modes ----------------------------------------------------------------------------------

def test_strict_mode_refuses_and_writes_nothing(cursus_db: Path) -> None:
    register_step("Anchor", {"sagemaker_step_type": "Processing"})  # opens the file
    before = table_snapshot(cursus_db)
    with pytest.raises(StepValidationError) as caught:
        register_step("custom_step", {"sagemaker_step_type": "Processing"}, validation_mode="strict")
    assert caught.value.suggestions == {"name": "CustomStep"}
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, RegistryError)
    with pytest.raises(ValidationError):
        register_step("CustomStep", {"sagemaker_step_type": "Processing", "config_class": "Cfg"},
                      validation_mode="strict")
    assert table_snapshot(cursus_db) == before
    register_step("CustomStep", {"sagemaker_step_type": "Processing"}, validation_mode="strict")  # compliant: fine


def test_auto_correct_stores_the_corrected_names_and_no_alias(cursus_db: Path) -> None:
    register_step("my_custom", {"config_class": "MyCustomConfiguration", "builder_step_name": "my_custom_step",
                                "sagemaker_step_type": "ProcessingStep"}, validation_mode="auto_correct")
    assert STEP_NAMES["MyCustom"] == {"config_class": "MyCustomConfig", "builder_step_name": "MyCustomStepBuilder",
                                      "sagemaker_step_type": "Processing", "spec_type": "MyCustom",
                                      "description": ""}
    assert not validate_step_name("my_custom")
    with pytest.raises(StepNotFoundError, match=r"Unknown step name: my_custom\. Available steps: \[MyCustom\]"):
        get_config_class_name("my_custom")


def test_registering_again_is_a_no_op_and_a_different_definition_is_refused(cursus_db: Path) -> None:
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training"})
    revision = cursus.default_registry().revision
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training"})
    assert cursus.default_registry().revision == revision
    with pytest.raises(NameTakenError, match="on_conflict='replace'"):
        register_step("XGBoostTraining", {"sagemaker_step_type": "Processing"})
    register_step("XGBoostTraining", {"sagemaker_step_type": "Processing"}, on_conflict="replace")
    assert STEP_NAMES["XGBoostTraining"]["sagemaker_step_type"] == "Processing"


def test_unknown_steps_raise_cursus_value_errors(cursus_db: Path) -> None:
    with pytest.raises(ValueError, match="Unknown step name: Nope"):
        get_config_class_name("Nope")
    with pytest.raises(EntryNotFoundError):  # and nameplate's class, for code written against nameplate
        get_builder_step_name("Nope")
    with pytest.raises(Exception, match="validation_mode must be one of"):
        register_step("Good", {"sagemaker_step_type": "Processing"}, validation_mode="lenient")


# -- mappings and aliases ------------------------------------------------------------------------------

def test_the_mappings_are_live_read_only_views_in_the_callers_workspace(cursus_db: Path) -> None:
    assert len(STEP_NAMES) == 0
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training"})
    register_step("DevStep", {"sagemaker_step_type": "Processing", "spec_type": "Dev"}, "dev1")
    assert list(STEP_NAMES) == ["XGBoostTraining"]                       # no re-import needed
    assert CONFIG_STEP_REGISTRY["XGBoostTrainingConfig"] == "XGBoostTraining"
    assert BUILDER_STEP_NAMES["XGBoostTraining"] == "XGBoostTrainingStepBuilder"
    with workspace_context("dev1"):
        assert SPEC_STEP_TYPES == {"DevStep": "Dev", "XGBoostTraining": "XGBoostTraining"}
    assert "DevStep" not in STEP_NAMES
    with pytest.raises(TypeError):
        STEP_NAMES["X"] = {}  # type: ignore[index]
    assert "STEP_NAMES(" in repr(STEP_NAMES)


def test_legacy_aliases_are_resolved_by_the_registry(cursus_db: Path) -> None:
    register_step("PyTorchTraining", {"sagemaker_step_type": "Training"})
    assert LEGACY_ALIASES["PytorchTraining"] == "PyTorchTraining"
    assert cursus.default_registry().resolve_alias("PytorchTraining", "step") == "PyTorchTraining"
    assert get_config_class_name("PytorchTraining") == "PyTorchTrainingConfig"
    builders = StepBuilderRegistry(base_class=StepBuilderBase)
    builders.register_builder("PyTorchTraining", XGBoostTrainingStepBuilder)
    assert builders.get_builder_for_step_type("PytorchTraining") is XGBoostTrainingStepBuilder
    assert "PytorchTraining" in builders.list_supported_step_types()
    assert builders.LEGACY_ALIASES["PytorchModel"] == "PyTorchModel"


# -- builders ------------------------------------------------------------------------------------------

def test_get_builder_for_config_follows_the_job_type_suffix_rule(cursus_db: Path) -> None:
    register_step("TabularPreprocessing", {"sagemaker_step_type": "Processing"})
    builders = get_global_registry()
    builders.register_builder("TabularPreprocessing", TabularPreprocessingStepBuilder)
    with pytest.warns(StepDefinitionWarning, match="must be PascalCase"):  # kept as an alias, as steps are
        builders.register_builder("TabularPreprocessing_calibration", XGBoostTrainingStepBuilder)
    # TabularPreprocessing_training has no builder of its own: the base type's answers.
    assert builders.get_builder_for_config(TabularPreprocessingConfig("training")) is TabularPreprocessingStepBuilder
    assert builders.get_builder_for_config(TabularPreprocessingConfig("calibration")) is XGBoostTrainingStepBuilder
    assert builders.get_builder_for_config(object(), node_name="TabularPreprocessing_calibration") \
        is XGBoostTrainingStepBuilder                                          # the node name names a type
    with pytest.raises(BuilderNotFoundError) as caught:
        builders.get_builder_for_config(XGBoostTrainingConfig("training"))    # fallback: strip "Config"
    assert caught.value.unresolvable_types == ["XGBoostTraining_training"]
    assert "TabularPreprocessing" in caught.value.available_builders


def test_builders_are_checked_at_registration(cursus_db: Path) -> None:
    builders = StepBuilderRegistry(base_class=StepBuilderBase)
    register_step("Anchor", {"sagemaker_step_type": "Processing"})
    before = table_snapshot(cursus_db)
    for bad in ("json:dumps", "no_such_module_xyz:Builder", "json", XGBoostTrainingConfig, 42):
        with pytest.raises(BuilderClassError):
            builders.register_builder("Anchor", bad)  # type: ignore[arg-type]
    assert table_snapshot(cursus_db) == before
    assert builders.register_builder("Anchor", f"{__name__}:XGBoostTrainingStepBuilder") == []
    entry = cursus.default_registry().get("Anchor", "builder")
    assert entry is not None and entry.target == f"{__name__}:XGBoostTrainingStepBuilder"
    with pytest.warns(StepDefinitionWarning, match="should end with 'StepBuilder'"):
        assert builders.register_builder("Other", StepBuilderBase) == [
            "builder class name 'StepBuilderBase' should end with 'StepBuilder'"]


def test_validate_registry_reports_builders_this_process_cannot_load(cursus_db: Path) -> None:
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training"})
    register_step("Lonely", {"sagemaker_step_type": "Processing"})
    reg = cursus.default_registry()
    reg.register("Ghost", "builder", {"step_name": "Ghost"})   # as another process's __main__ class leaves it
    reg.register("Gone", "builder", target="no_such_module_xyz:Builder")
    results = get_global_registry().validate_registry()
    assert results["valid"] == []
    assert [line.split(":")[0] for line in results["invalid"]] == ["Ghost", "Gone"]
    assert results["missing"] == ["Lonely: No builder registered", "XGBoostTraining: No builder registered"]
    ok, issues = validate_registry_integrity()
    assert not ok and [i.split(":")[0] for i in issues] == ["builder Ghost", "builder Gone"]


def test_discovery_scans_a_package_and_entry_points(cursus_db: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "np_cursus_steps"
    (package / "training").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "training" / "__init__.py").write_text("")
    (package / "training" / "xgb.py").write_text(
        "class XGBoostTrainingStepBuilder:\n    pass\n\nclass Helper:\n    pass\n")
    (package / "broken.py").write_text("import no_such_module_xyz\n")
    (package / "plugin.py").write_text("class PluginStepBuilder:\n    pass\n\nNOT_A_CLASS = 3\n")
    dist = tmp_path / "np_cursus_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: np-cursus-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cursus.step_builders]\n"
                                           "PluginStep = np_cursus_steps.plugin:PluginStepBuilder\n"
                                           "Bad = np_cursus_steps.plugin:NOT_A_CLASS\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training", "builder_step_name":
                                      "XGBoostTrainingStepBuilder"})
    builders = get_global_registry()
    found = builders.discover_builders("np_cursus_steps")
    assert sorted(found) == ["Plugin", "XGBoostTraining"]
    assert builders.get_builder_for_config(XGBoostTrainingConfig()).__module__ == "np_cursus_steps.training.xgb"
    assert sorted(builders.discover_entry_points()) == ["PluginStep"]       # Bad is not a class: skipped
    with pytest.raises(BuilderClassError, match="does not import"):
        builders.discover_builders("no_such_package_xyz")
    entry = cursus.default_registry().get("PluginStep", "builder")
    assert entry is not None and entry.target == "np_cursus_steps.plugin:PluginStepBuilder"


# -- UnifiedRegistryManager ----------------------------------------------------------------------------

def test_unified_registry_manager(cursus_db: Path, tmp_path: Path) -> None:
    core_file = tmp_path / "step_names.py"
    core_file.write_text("STEP_NAMES = {'XGBoostTraining': {'config_class': 'XGBoostTrainingConfig', "
                         "'builder_step_name': 'XGBoostTrainingStepBuilder', 'spec_type': 'XGBoostTraining', "
                         "'sagemaker_step_type': 'Training', 'description': 'XGBoost training'}}\n")
    ws_file = tmp_path / "workspaces" / "developer_1" / "src" / "cursus_dev" / "registry" / "workspace_registry.py"
    ws_file.parent.mkdir(parents=True)
    ws_file.write_text("LOCAL_STEPS = {'MyStep': {'sagemaker_step_type': 'Processing'}}\n"
                       "STEP_OVERRIDES = {'XGBoostTraining': {'sagemaker_step_type': 'Processing'}}\n")
    manager = UnifiedRegistryManager(str(core_file), str(tmp_path / "workspaces"))
    again = UnifiedRegistryManager(str(core_file), str(tmp_path / "workspaces"))  # the same files: no write
    assert manager.list_steps() == ["XGBoostTraining"] == again.list_steps()
    assert manager.list_steps("developer_1") == ["MyStep", "XGBoostTraining"]
    assert manager.list_all_steps(include_source=True) == {"core": ["XGBoostTraining"],
                                                           "developer_1": ["MyStep", "XGBoostTraining"]}
    result = manager.get_step("XGBoostTraining", "developer_1")
    assert result.resolved and result.source_registry == "developer_1" and result.conflict_detected
    assert result.selected_definition is not None and result.selected_definition.registry_type == "workspace"
    assert manager.get_step("XGBoostTraining").selected_definition.description == "XGBoost training"  # type: ignore[union-attr]
    assert not manager.get_step("Nope").resolved
    assert manager.create_legacy_step_names_dict("developer_1")["XGBoostTraining"]["sagemaker_step_type"] == \
        "Processing"
    assert sorted(manager.get_local_only_definitions("developer_1")) == ["MyStep", "XGBoostTraining"]
    assert manager.get_registry_status()["developer_1"]["local_step_count"] == 2
    manager.add_workspace_registry("developer_2")
    manager.register_step("MyStep", {"sagemaker_step_type": "Training"}, "developer_2")
    assert manager.get_step_conflicts()["MyStep"][0].workspace_id == "developer_1"
    with manager.resolution_context("developer_2") as context:
        assert context.workspace_id == "developer_2" == manager.get_workspace_context()
        assert manager.has_step("MyStep") and manager.get_step_count() == 2
    assert manager.remove_workspace_registry("developer_2") and not manager.remove_workspace_registry("developer_2")
    broken = tmp_path / "broken_step_names.py"
    broken.write_text("STEP_NAMES = 1 / 0\n")
    with pytest.raises(RegistryError, match="ZeroDivisionError"):
        UnifiedRegistryManager(str(broken))


# -- the names nameplate.compat exported before (kept) -------------------------------------------------

def test_step_functions(registry: Registry) -> None:
    compat.register_step("TabularPreprocessing", {"sagemaker_step_type": "Processing"}, registry=registry)
    registry.create_workspace("developer_1")
    compat.register_step("CustomStep", {"sagemaker_step_type": "Processing"}, "developer_1", registry=registry)
    assert compat.get_available_steps(registry=registry) == ["TabularPreprocessing"]
    assert compat.get_available_steps("developer_1", registry=registry) == ["CustomStep", "TabularPreprocessing"]
    assert compat.get_config_class_name("TabularPreprocessing", registry=registry) == "TabularPreprocessingConfig"
    assert compat.get_builder_step_name("TabularPreprocessing", registry=registry) == \
        "TabularPreprocessingStepBuilder"
    assert compat.get_spec_type("TabularPreprocessing", registry=registry) == "TabularPreprocessing"
    assert set(compat.get_step_names("developer_1", registry=registry)) == {"CustomStep", "TabularPreprocessing"}
    with compat.workspace_context("developer_1", registry=registry):
        assert "CustomStep" in compat.get_available_steps(registry=registry)
    assert "CustomStep" not in compat.get_available_steps(registry=registry)
    with pytest.raises(EntryNotFoundError):
        compat.get_config_class_name("Nope", registry=registry)
    assert compat.validate_step_name("CustomStep", "developer_1", registry=registry)
    assert not compat.validate_step_name("CustomStep", registry=registry)
    assert compat.get_workspace_context() is None  # Cursus: None when nothing is set
    with compat.workspace_context("developer_1", registry=registry):
        assert compat.get_workspace_context() == "developer_1"


def test_hyperparameters_by_model_type(registry: Registry) -> None:
    registry.register("XGBoostHyperparameters", "hyperparameter", {"model_type": "xgboost"})
    registry.register("JsonHyperparameters", "hyperparameter", {"model_type": "json"}, target="json:JSONDecoder")
    assert compat.get_hyperparameter_class_by_model_type("xgboost", registry=registry) == "XGBoostHyperparameters"
    assert compat.get_hyperparameter_class_by_model_type("json", registry=registry) is json.JSONDecoder  # loaded
    assert compat.get_hyperparameter_class_by_model_type("lightgbm", registry=registry) is None
    assert compat.get_all_hyperparameter_classes(registry=registry) == ["JsonHyperparameters",
                                                                        "XGBoostHyperparameters"]


def test_the_default_registry_uses_discovery_and_follows_nameplate_db(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMEPLATE_DB", str(tmp_path / "default.db"))
    try:
        assert compat.get_available_steps() == []
        assert compat.default_registry().path == tmp_path / "default.db"
        monkeypatch.setenv("NAMEPLATE_DB", str(tmp_path / "other.db"))
        assert compat.default_registry().path == tmp_path / "other.db"
    finally:
        compat.default_registry().close()


# -- threads, tasks, processes -------------------------------------------------------------------------

def test_a_workspace_context_is_per_thread(cursus_db: Path) -> None:
    set_workspace_context("dev1")
    seen: dict[str, Any] = {}

    def other() -> None:
        seen["at start"] = get_workspace_context()
        set_workspace_context("dev2")
        seen["after set"] = get_workspace_context()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == {"at start": None, "after set": "dev2"}
    assert get_workspace_context() == "dev1"  # the other thread's set did not reach this one
    clear_workspace_context()
    assert get_workspace_context() is None


def test_a_workspace_context_is_per_asyncio_task(cursus_db: Path) -> None:
    async def worker(name: str, ready: asyncio.Barrier) -> tuple[str | None, str | None]:
        set_workspace_context(name)
        await ready.wait()  # both tasks have set theirs before either reads again
        return get_workspace_context(), get_workspace_context()

    async def read_later() -> str | None:
        await asyncio.sleep(0)
        return get_workspace_context()

    async def main() -> list[tuple[str | None, str | None]]:
        ready = asyncio.Barrier(2)
        results = await asyncio.gather(worker("dev1", ready), worker("dev2", ready))
        assert get_workspace_context() is None  # the tasks' sets stayed in the tasks
        set_workspace_context("dev3")            # what this task starts afterwards starts with it
        assert await asyncio.create_task(read_later()) == "dev3"
        assert await asyncio.to_thread(get_workspace_context) == "dev3"
        return list(results)

    assert asyncio.run(main()) == [("dev1", "dev1"), ("dev2", "dev2")]


def _child_context(result: Any) -> None:
    result.put(get_workspace_context())


def test_a_workspace_context_does_not_reach_another_process(cursus_db: Path) -> None:
    set_workspace_context("dev1")
    result = SPAWN.Queue()
    child = SPAWN.Process(target=_child_context, args=(result,))
    child.start()
    try:
        assert result.get(timeout=60) is None
    finally:
        child.join(timeout=30)
    assert get_workspace_context() == "dev1"


def _register_and_look(barrier: Any, results: Any, index: int, db: str, plugin_dir: str, mine: str,
                       theirs: str) -> None:
    try:
        os.environ["NAMEPLATE_DB"] = db
        sys.path.insert(0, plugin_dir)
        barrier.wait()
        register_step(mine, {"sagemaker_step_type": "Processing"})
        register_global_builder(mine, f"np_cursus_shared:{mine}StepBuilder")
        reg = cursus.default_registry()
        deadline = time.monotonic() + 30
        while reg.get(theirs, "builder") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        builders = get_global_registry()
        results.put((index, (sorted(get_step_names()), builders.get_builder_for_step_type(theirs).__name__)))
    except Exception as error:  # reported to the parent, which fails the test with it
        results.put((index, ("error", repr(error))))


def test_two_processes_see_each_others_steps_and_builders(tmp_path: Path) -> None:
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "np_cursus_shared.py").write_text("class AlphaStepBuilder:\n    pass\n\nclass BetaStepBuilder:\n"
                                                "    pass\n")
    db = str(tmp_path / "shared.db")
    results = run_processes(_register_and_look, [(db, str(plugin), "Alpha", "Beta"),
                                                 (db, str(plugin), "Beta", "Alpha")], timeout=120)
    assert results == [(["Alpha", "Beta"], "BetaStepBuilder"), (["Alpha", "Beta"], "AlphaStepBuilder")]
    conn = sqlite3.connect(db)
    try:  # one row per step and per builder: neither process's registration was lost or doubled
        count = conn.execute("SELECT count(*) FROM entry AS e JOIN kind AS k ON k.id = e.kind_id "
                             "WHERE k.name IN ('step', 'builder')").fetchone()[0]
    finally:
        conn.close()
    assert count == 4


def test_seed_step_names_registry(cursus_db: Path) -> None:
    from nameplate.compat.cursus import StepNamesRegistry

    registry = StepNamesRegistry()
    assert registry.add_step("CustomStep", {"sagemaker_step_type": "Processing"})
    assert registry.get_step("CustomStep") == {"sagemaker_step_type": "Processing", "config_class": "CustomStepConfig",
                                               "builder_step_name": "CustomStepStepBuilder",
                                               "spec_type": "CustomStep", "description": ""}
    assert registry.has_step("CustomStep") and not registry.has_step("my_custom_step")
    assert registry.list_steps() == ["CustomStep"] and registry.list_steps(category="Training") == []


def test_the_cursus_context_is_the_registrys_context(registry: Registry) -> None:
    registry.create_workspace("dev1")
    set_workspace_context("dev1")
    try:
        assert registry.current_workspace == "dev1"  # Registry calls without workspace= act there too
        with registry.workspace("core"):
            assert get_workspace_context() == "core"
        assert get_workspace_context() == "dev1"
    finally:
        clear_workspace_context()
    assert registry.current_workspace == "core"


def test_finding_a_builder_imports_only_that_builder(cursus_db: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "heavy-imported"
    (tmp_path / "np_heavy_builder.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n\nclass HeavyStepBuilder:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_step("XGBoostTraining", {"sagemaker_step_type": "Training"})
    reg = cursus.default_registry()
    reg.register("Heavy", "builder", {"step_name": "Heavy"}, target="np_heavy_builder:HeavyStepBuilder")
    builders = get_global_registry()
    builders.register_builder("XGBoostTraining", XGBoostTrainingStepBuilder)
    assert builders.get_builder_for_config(XGBoostTrainingConfig("training")) is XGBoostTrainingStepBuilder
    assert builders.is_step_type_supported("XGBoostTraining")
    assert not marker.exists()                      # a pipeline of one step type does not import the others
    assert builders.get_builder_for_step_type("Heavy").__name__ == "HeavyStepBuilder" and marker.exists()


def _register_the_tutorial_step(barrier: Any, results: Any, index: int, db: str) -> None:
    try:
        os.environ["NAMEPLATE_DB"] = db
        barrier.wait()  # all open the fresh file at once: the alias kind and the legacy aliases race too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StepDefinitionWarning)
            entry = register_step("custom_step", {"sagemaker_step_type": "Processing"})
        results.put((index, (entry.id, get_config_class_name("custom_step"))))
    except Exception as error:  # reported to the parent, which fails the test with it
        results.put((index, ("error", repr(error))))


def test_processes_registering_the_same_step_at_once_get_one_step_and_one_alias(tmp_path: Path) -> None:
    db = str(tmp_path / "race.db")
    results = run_processes(_register_the_tutorial_step, [(db,)] * 4, timeout=120)
    assert len({entry_id for entry_id, _ in results}) == 1, results
    assert {config for _, config in results} == {"CustomStepConfig"}
    with Registry(db) as reg:
        assert [e.name for e in reg.list("step")] == ["CustomStep"]
        assert reg.aliases("step")["custom_step"] == "CustomStep"
        assert set(cursus.CURSUS_LEGACY_ALIASES) <= set(reg.aliases("step"))
        assert reg.check().ok


def test_register_steps_is_one_transaction(cursus_db: Path) -> None:
    from nameplate.compat.cursus import register_steps

    register_step("Anchor", {"sagemaker_step_type": "Processing"})
    before = table_snapshot(cursus_db)
    with pytest.raises(ValidationError):  # the second item misses its required field: neither is written
        register_steps({"First": {"sagemaker_step_type": "Processing"}, "Second": {"spec_type": "x"}})
    with pytest.raises(StepValidationError):
        register_steps({"Third": {"sagemaker_step_type": "Processing"}, "bad_one": {"sagemaker_step_type": "Training"}},
                       validation_mode="strict")
    assert table_snapshot(cursus_db) == before
    with pytest.warns(StepDefinitionWarning, match="'batch_step' is kept as an alias"):
        entries = register_steps({"First": {"sagemaker_step_type": "Processing"},
                                  "batch_step": {"sagemaker_step_type": "Training"}})
    assert [e.name for e in entries] == ["First", "BatchStep"]
    assert get_config_class_name("batch_step") == "BatchStepConfig"


def test_unregistering_a_builder_deletes_it_here_and_hides_an_inherited_one(cursus_db: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    builders = get_global_registry()
    builders.register_builder("XGBoostTraining", XGBoostTrainingStepBuilder)
    builders.register_builder("TabularPreprocessing", TabularPreprocessingStepBuilder, workspace="dev1")
    builders.unregister_builder("XGBoostTraining", workspace="dev1")         # core's: hidden in dev1 only
    assert builders.list_supported_step_types("dev1") == ["TabularPreprocessing"]
    assert builders.list_supported_step_types() == ["XGBoostTraining"]
    builders.unregister_builder("TabularPreprocessing", workspace="dev1")   # dev1's own: deleted
    assert cursus.default_registry().get("TabularPreprocessing", "builder", workspace="dev1") is None
    with caplog.at_level(logging.WARNING, logger="nameplate.compat.cursus"):
        builders.unregister_builder("Nope")
    assert "non-existent builder: Nope" in caplog.text
