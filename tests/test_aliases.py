"""Aliases resolved by the registry: layered like entries, one hop, refused where they could not answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from nameplate import InvalidInputError, InvalidNameError, NameTakenError, Registry, UnknownKindError

from conftest import table_snapshot


def test_an_alias_resolves_to_its_name_in_its_layer_and_below(registry: Registry) -> None:
    assert registry.resolve_alias("PytorchTraining", "step") is None  # no alias kind yet: still an answer
    registry.register("PyTorchTraining", "step", {"sagemaker_step_type": "Training"})
    registry.add_alias("PytorchTraining", "PyTorchTraining", "step")
    registry.add_alias("PytorchTraining", "PyTorchTraining", "step")  # the same again writes nothing
    registry.create_workspace("dev1")
    registry.create_workspace("dev2")
    registry.add_alias("pt", "PyTorchTraining", "step", workspace="dev1")
    assert registry.resolve_alias("PytorchTraining", "step", workspace="dev1") == "PyTorchTraining"
    assert registry.aliases("step", workspace="dev1") == {"PytorchTraining": "PyTorchTraining",
                                                          "pt": "PyTorchTraining"}
    assert registry.aliases("step", workspace="dev2") == {"PytorchTraining": "PyTorchTraining"}  # not a sibling's
    assert registry.aliases("builder") == {}                                                      # per kind
    assert registry.lookup("PytorchTraining", "step") is None                                     # lookups stay exact


def test_removing_an_inherited_alias_hides_it_only_below(registry: Registry) -> None:
    registry.add_alias("PytorchModel", "PyTorchModel", "step")
    registry.create_workspace("dev1")
    assert registry.remove_alias("PytorchModel", "step", workspace="dev1")
    assert registry.resolve_alias("PytorchModel", "step", workspace="dev1") is None
    assert registry.resolve_alias("PytorchModel", "step") == "PyTorchModel"
    assert registry.remove_alias("PytorchModel", "step")
    assert not registry.remove_alias("PytorchModel", "step")


def test_aliases_that_could_not_answer_are_refused_and_change_nothing(registry: Registry, db_path: Path) -> None:
    registry.register("PyTorchModel", "step", {"sagemaker_step_type": "CreateModel"})
    registry.add_alias("PytorchModel", "PyTorchModel", "step")
    before = table_snapshot(db_path)
    with pytest.raises(NameTakenError, match="would never answer"):
        registry.add_alias("PyTorchModel", "Other", "step")
    with pytest.raises(InvalidInputError, match="itself an alias"):
        registry.add_alias("Pm", "PytorchModel", "step")
    with pytest.raises(InvalidInputError, match="is the name itself"):
        registry.add_alias("Same", "Same", "step")
    with pytest.raises(NameTakenError):
        registry.add_alias("PytorchModel", "Elsewhere", "step")
    with pytest.raises(UnknownKindError):
        registry.add_alias("x", "y", "no-such-kind")
    for alias, name, kind in (("", "A", "step"), ("a\x00", "A", "step"), ("a", "A", "Bad Kind")):
        with pytest.raises(InvalidNameError):
            registry.add_alias(alias, name, kind)
    assert table_snapshot(db_path) == before
    registry.add_alias("PytorchModel", "Elsewhere", "step", replace=True)
    assert registry.resolve_alias("PytorchModel", "step") == "Elsewhere"


def test_an_alias_survives_export_and_import(registry: Registry, tmp_path: Path) -> None:
    registry.add_alias("PytorchTraining", "PyTorchTraining", "step")
    with Registry(tmp_path / "copy.db") as copy:
        copy.import_document(registry.export())
        assert copy.resolve_alias("PytorchTraining", "step") == "PyTorchTraining"
