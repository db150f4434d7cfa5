"""Kinds with schemas, validated registration (every problem at once, nothing written), on_conflict."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nameplate import (
    InvalidNameError,
    KindInUseError,
    NameTakenError,
    Registry,
    UnknownKindError,
    ValidationError,
    _patterns,
)

from conftest import table_snapshot


def test_step_definitions_get_their_defaults_from_the_name(registry: Registry) -> None:
    entry = registry.register("XGBoostTraining", "step", {"sagemaker_step_type": "Training"})
    assert dict(entry.definition) == {
        "config_class": "XGBoostTrainingConfig", "builder_step_name": "XGBoostTrainingStepBuilder",
        "spec_type": "XGBoostTraining", "sagemaker_step_type": "Training", "description": ""}
    assert registry.get("XGBoostTraining", "step").definition == entry.definition


def test_validation_reports_every_problem_at_once_with_suggestions(registry: Registry, db_url: str) -> None:
    before = table_snapshot(db_url)
    with pytest.raises(ValidationError) as caught:
        registry.register("xgboost_training", "step", {"sagemaker_step_typ": "Training", "confg_class": "X"})
    problems = caught.value.problems
    assert len(problems) == 4, problems
    text = str(caught.value)
    assert "did you mean 'XgboostTraining'?" in text
    assert "required field 'sagemaker_step_type' is missing" in text
    assert "did you mean 'sagemaker_step_type'?" in text and "did you mean 'config_class'?" in text
    assert table_snapshot(db_url) == before


def test_a_batch_is_all_or_nothing(registry: Registry, db_url: str) -> None:
    before = table_snapshot(db_url)
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
    assert table_snapshot(db_url) == before
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




def test_every_problem_with_a_kind_schema_is_reported_at_once(registry: Registry, db_url: str) -> None:
    before = table_snapshot(db_url)
    with pytest.raises(ValidationError) as caught:
        registry.define_kind("gadget", required=["a", "bad field"], optional=["a"], defaults={"zzz": 1},
                             name_pattern="([", validator="not a dotted path")
    problems = caught.value.problems
    assert len(problems) == 5, problems
    text = str(caught.value)
    assert "'bad field'" in text and "both required and optional" in text and "'zzz'" in text
    assert "not a valid regular expression" in text and "'package.module:attribute'" in text
    assert table_snapshot(db_url) == before


def test_definitions_come_back_as_read_only_mappings(registry: Registry) -> None:
    entry = registry.register("Train", "step", {"sagemaker_step_type": "Training"})
    with pytest.raises(TypeError):
        entry.definition["sagemaker_step_type"] = "Processing"  # type: ignore[index]
    assert registry.get("Train", "step").definition["sagemaker_step_type"] == "Training"


def test_a_target_or_capabilities_change_is_a_conflict_too(registry: Registry, db_url: str) -> None:
    first = registry.register("json", "builder", target="json:JSONEncoder")
    before = table_snapshot(db_url)
    with pytest.raises(NameTakenError, match="different target"):
        registry.register("json", "builder", target="json:JSONDecoder")
    with pytest.raises(NameTakenError, match="different capabilities"):
        registry.register("json", "builder", target="json:JSONEncoder", capabilities=["encode"])
    with pytest.raises(NameTakenError, match="different metadata"):
        registry.register("json", "builder", target="json:JSONEncoder", metadata={"owner": "me"})
    assert table_snapshot(db_url) == before
    # Leaving metadata out keeps the stored metadata: that is the same registration again.
    assert registry.register("json", "builder", target="json:JSONEncoder").id == first.id
    replaced = registry.register("json", "builder", target="json:JSONDecoder", capabilities=["decode"],
                                 on_conflict="replace")
    assert (replaced.id, replaced.target, replaced.capabilities) == (first.id, "json:JSONDecoder", {"decode"})
    assert [e.name for e in registry.find("builder", {"decode"})] == ["json"]
    assert registry.find("builder", {"encode"}) == []


def test_a_string_is_not_taken_for_a_list_of_capabilities(registry: Registry, db_url: str) -> None:
    before = table_snapshot(db_url)
    with pytest.raises(ValidationError, match="write \\['llm'\\]"):
        registry.register("gpt", "provider", capabilities="llm")
    assert table_snapshot(db_url) == before


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_a_batch_is_one_immediate_transaction(registry: Registry) -> None:
    statements: list[str] = []
    registry._backend.connection().set_trace_callback(statements.append)
    registry.register_many([{"name": f"Step{i}", "kind": "step", "definition": {"sagemaker_step_type": "Training"},
                             "capabilities": ["gpu"]} for i in range(20)])
    registry._backend.connection().set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements[-1] == "COMMIT"
    inside = statements[statements.index("BEGIN IMMEDIATE") + 1:-1]
    assert not any(s.startswith(("BEGIN", "COMMIT", "ROLLBACK")) for s in inside)
    assert sum(s.startswith("INSERT INTO entry (") for s in inside) == 20
    assert sum(s.startswith("INSERT INTO event") for s in inside) == 20


_RULES = """
import os, sqlite3

calls = []
registry = None  # set by the test: the validator looks at the registry's own connection


def check(definition):
    conn = sqlite3.connect(os.environ["NP_TEST_DB"], timeout=0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        lock = "free"
    except sqlite3.OperationalError:
        lock = "held"
    finally:
        conn.close()
    calls.append((lock, registry._backend.connection().in_transaction))
    if definition.get("size", 0) < 0:
        return "size must not be negative"
    if definition.get("size") == 13:
        raise KeyError("unlucky")
    return definition.get("size") != 99
"""


@pytest.fixture
def rules(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_path: Path) -> object:
    (tmp_path / "np_rules.py").write_text(_RULES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("NP_TEST_DB", str(db_path))
    import np_rules

    np_rules.registry = registry
    yield np_rules
    sys.modules.pop("np_rules", None)


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_validators_run_outside_every_transaction(registry: Registry, rules: object) -> None:
    registry.define_kind("widget", optional=["size"], validator="np_rules:check", name_pattern="^[a-z]+$")
    registry.register("one", "widget", {"size": 1})
    registry.register_many([{"name": "two", "kind": "widget", "definition": {"size": 2}}])
    registry.define_kind("widget", optional=["size", "colour"], validator="np_rules:check")  # re-checks both
    assert rules.calls and all(call == ("free", False) for call in rules.calls), rules.calls  # type: ignore[attr-defined]


@pytest.mark.sqlite_only  # its validator asks the SQLite connection whether a transaction is open
def test_validator_findings_come_with_the_other_problems(registry: Registry, rules: object, db_url: str) -> None:
    registry.define_kind("widget", optional=["size"], validator="np_rules:check", name_pattern="^[a-z]+$")
    before = table_snapshot(db_url)
    with pytest.raises(ValidationError) as caught:
        registry.register("Bad_Name", "widget", {"size": -1})
    assert len(caught.value.problems) == 2 and "size must not be negative" in str(caught.value)
    with pytest.raises(ValidationError, match="raised KeyError: 'unlucky'"):
        registry.register("thirteen", "widget", {"size": 13})
    with pytest.raises(ValidationError, match="rejected the definition"):
        registry.register("ninetynine", "widget", {"size": 99})
    with pytest.raises(ValidationError) as shaped:  # a malformed definition never reaches the validator
        registry.register("typo", "widget", {"sise": -1})
    assert shaped.value.problems == ["widget 'typo': unknown field 'sise'; did you mean 'size'?"]
    assert table_snapshot(db_url) == before


def test_a_new_name_pattern_must_fit_entries_without_definitions(registry: Registry) -> None:
    registry.define_kind("sensor", strict=False)
    registry.resolve("thermo_1", "sensor")
    with pytest.raises(KindInUseError, match="thermo_1"):
        registry.define_kind("sensor", name_pattern="^[A-Z]", strict=False)
    assert registry.kind("sensor").name_pattern is None
    registry.define_kind("sensor", name_pattern="^[a-z]", strict=False, description="fits")
    assert registry.kind("sensor").description == "fits"


def test_a_validator_module_that_fails_to_import_is_a_problem(registry: Registry, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "np_broken_rules.py").write_text("raise RuntimeError('half-installed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValidationError, match="raised RuntimeError: half-installed"):
        registry.define_kind("thing", validator="np_broken_rules:check")
    assert "thing" not in [k.name for k in registry.kinds()]


# -- name patterns: user input, bounded in time and never matched under the write lock -------------------


def test_a_pattern_that_cannot_be_matched_in_bounded_time_is_refused(registry: Registry) -> None:
    with pytest.raises(ValidationError, match="catastrophically") as caught:
        registry.define_kind("slow", name_pattern=r"^(a|aa)+$")
    assert "slow" not in [k.name for k in registry.kinds()] and len(caught.value.problems) == 1
    registry.define_kind("quick", name_pattern=r"^(a+)+$", strict=False)  # `regex` matches this one fast


def test_a_stored_pattern_that_runs_away_refuses_the_name_quickly(registry: Registry, db_path: Path) -> None:
    registry.define_kind("legacy", strict=False)
    conn = sqlite3.connect(db_path)  # as an older nameplate could have stored it
    conn.execute("UPDATE kind SET name_pattern = ? WHERE name = 'legacy'", (r"^(a|aa)+$",))
    conn.commit()
    conn.close()
    before = table_snapshot(db_path)
    started = time.monotonic()
    with pytest.raises(InvalidNameError, match="took over 50 ms"):
        registry.resolve("a" * 40 + "!", "legacy")
    assert time.monotonic() - started < 5  # re.search needed minutes here; the bound is 50 ms
    assert table_snapshot(db_path) == before
    assert registry.resolve("aaaa", "legacy")


def test_name_patterns_are_matched_outside_every_transaction(registry: Registry, db_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[str, bool]] = []
    real_search = _patterns.search

    def watched(pattern: str, text: str) -> bool:
        conn = sqlite3.connect(db_path, timeout=0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            lock = "free"
        except sqlite3.OperationalError:
            lock = "held"
        finally:
            conn.close()
        seen.append((lock, registry._backend.connection().in_transaction))
        return real_search(pattern, text)

    monkeypatch.setattr(_patterns, "search", watched)
    registry.define_kind("widget", optional=["size"], name_pattern="^[a-z_]+$", strict=False)
    registry.resolve("new_one", "widget")
    registry.resolve("new_two", "widget", lock=True)
    registry.rename("new_one", "renamed", "widget")
    registry.register("registered", "widget", {"size": 1})
    with pytest.raises(InvalidNameError, match="did you mean"):
        registry.resolve("Bad-Name", "step")
    document = registry.export()
    with Registry(tmp_path / "copy.db") as other:
        other.define_kind("widget", optional=["size"], name_pattern="^[a-z_]+$", strict=False)
        other.import_document(document)
    registry.define_kind("widget", optional=["size", "colour"], name_pattern="^[a-z]+_?[a-z]*$", strict=False)
    assert len(seen) >= 8 and all(call == ("free", False) for call in seen), seen


def test_defining_a_kind_again_as_it_is_writes_nothing(registry: Registry) -> None:
    first = registry.define_kind("pipette", required=["max_volume_ul"], optional=["channels"], defaults={"channels": 1})
    revision = registry.revision
    again = registry.define_kind("pipette", required=["max_volume_ul"], optional=["channels"], defaults={"channels": 1})
    assert registry.revision == revision and again.updated_at == first.updated_at
    changed = registry.define_kind("pipette", required=["max_volume_ul"], optional=["channels", "brand"])
    assert registry.revision == revision + 1 and changed.optional == ("channels", "brand")


def test_what_register_returns_is_what_was_stored(registry: Registry) -> None:
    """A new registration's entry is built from what was written, not read back: it must equal a read."""
    registry.create_workspace("dev")
    fresh = registry.register("Fresh", "step", {"sagemaker_step_type": "Processing"}, target="os.path:join",
                              capabilities=["gpu", "cpu"], metadata={"team": "ml"})
    assert fresh == registry.get("Fresh", "step")
    assert fresh.revision == registry.changes()[-1].rev
    registry.register("Shadowed", "step", {"sagemaker_step_type": "Training"})
    registry.hide("Shadowed", "step", workspace="dev")  # a tombstone in dev: the next register revives it
    revived = registry.register("Shadowed", "step", {"sagemaker_step_type": "Processing"}, capabilities=["cpu"],
                                workspace="dev")
    assert revived == registry.get("Shadowed", "step", workspace="dev")
    assert revived.workspace == "dev" and revived.capabilities == frozenset({"cpu"})
    assert sorted(e.name for e in registry.find("step", ["cpu"], workspace="dev")) == ["Fresh", "Shadowed"]
