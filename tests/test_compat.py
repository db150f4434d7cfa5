"""The seeds' convenience functions on top of a Registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nameplate import EntryNotFoundError, Registry, compat
from nameplate.compat import cursus


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
    assert compat.get_workspace_context() == "core"
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


def test_the_default_registry_uses_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMEPLATE_DB", str(tmp_path / "default.db"))
    monkeypatch.setattr(cursus, "_default", None)  # the module-wide registry lives in compat.cursus
    try:
        assert compat.get_available_steps() == []
        assert compat.default_registry().path == tmp_path / "default.db"
    finally:
        compat.default_registry().close()

