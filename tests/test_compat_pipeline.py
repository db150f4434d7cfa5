"""nameplate.compat.pipeline against seed 003 (pipeline_ex's dynamic step registry), its examples
translated from Elixir line by line, then the cases only several processes show."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nameplate import InvalidInputError, NameTakenError, Registry, TargetImportError, ValidationError
from nameplate.compat import pipeline as compat
from nameplate.compat.pipeline import (
    LEGACY_STEPS,
    STEP_KIND,
    CompatibilityManager,
    Pipeline,
    Provider,
    SelectionStrategyError,
    StepNotFoundError,
)

from conftest import run_processes, wait_until

# -- the seed's modules, as a Python port of pipeline_ex would have them --------------------------


class OptimizedClaudeStep:
    """Pipeline.DSPy.Steps.OptimizedClaudeStep"""

    @staticmethod
    def execute(step: dict[str, Any], context: dict[str, Any]) -> str:
        return f"dspy:{step['prompt']}"


class OptimizedClaudeProvider:
    """Pipeline.DSPy.Providers.OptimizedClaudeProvider"""


class Claude:
    """Pipeline.Step.Claude, the legacy step handed over to the registry."""

    @staticmethod
    def execute(step: dict[str, Any], context: dict[str, Any]) -> str:
        return f"claude:{step['prompt']}"


class BehavingStep:
    """A module implementing Pipeline.Enhanced.StepBehaviour in full."""

    @staticmethod
    def execute(step: dict[str, Any], context: dict[str, Any]) -> str:
        return "done"

    @staticmethod
    def validate_config(config: dict[str, Any]) -> tuple[str, Any]:
        return ("ok", config) if config.get("retries", 0) <= 3 else ("error", "at most 3 retries")

    @staticmethod
    def metadata() -> dict[str, Any]:
        return {"description": "behaves", "required_fields": ["prompt"], "capabilities": ["text_generation"]}


def validate_dspy_signature(step_config: dict[str, Any]) -> tuple[str, Any]:
    """Pipeline.Enhanced.SchemaValidator.validate_dspy_signature"""
    signature = step_config.get("dspy_signature")
    if not isinstance(signature, str) or "->" not in signature:
        return "error", "signature must read 'inputs -> outputs'"
    return "ok", {**step_config, "dspy_signature": signature.replace(" ", "")}


def validate_dspy_claude_config(step_config: dict[str, Any]) -> tuple[str, Any]:
    """The seed's validator, line by line."""
    match validate_dspy_signature(step_config):
        case ("ok", validated_config):
            return "ok", validated_config
        case ("error", reason):
            return "error", f"DSPy Claude validation failed: {reason}"
    raise AssertionError("unreachable")


DSPY_METADATA = {
    "description": "DSPy-optimized Claude step",
    "required_fields": ["prompt", "dspy_signature"],
    "optional_fields": ["optimization_config"],
    "capabilities": ["optimization", "structured_output"],
}


@pytest.fixture
def pipeline(registry: Registry) -> Pipeline:
    return Pipeline(registry)  # the supervision tree's children: started with the registry


def execute_legacy_step(step: dict[str, Any], context: dict[str, Any]) -> str:
    """The seed's hard-coded executor, for the step types nobody handed over."""
    match step["type"]:
        case "claude":
            return Claude.execute(step, context)
        case "gemini":
            return f"gemini:{step['prompt']}"
    raise AssertionError(f"no legacy dispatch for {step['type']}")


def execute(pipeline: Pipeline, step: dict[str, Any], context: dict[str, Any]) -> str:
    """The seed's enhanced executor: registry first, legacy dispatch on not_found."""
    match pipeline.steps.get_step_module(step["type"]):
        case ("ok", step_module):
            return str(step_module.execute(step, context))
        case ("error", "not_found"):
            return execute_legacy_step(step, context)
    raise AssertionError("unreachable")


# -- the seed's examples ---------------------------------------------------------------------


def test_register_step_as_the_seed_does(pipeline: Pipeline) -> None:
    assert pipeline.steps.register_step("dspy_claude", OptimizedClaudeStep, validator=validate_dspy_claude_config,
                                        metadata=DSPY_METADATA) == "ok"
    assert pipeline.steps.get_step_module("dspy_claude") == ("ok", OptimizedClaudeStep)
    (info,) = [s for s in pipeline.steps.list_steps() if s.step_type == "dspy_claude"]
    assert (info.description, info.required_fields, info.optional_fields) == (
        "DSPy-optimized Claude step", ("prompt", "dspy_signature"), ("optimization_config",))
    assert info.capabilities == {"optimization", "structured_output"} and not info.legacy
    # an importable class is stored by name, so every process can load it
    assert info.target == "test_compat_pipeline:OptimizedClaudeStep" and info.validator_in_process


def test_register_provider_as_the_seed_does(pipeline: Pipeline) -> None:
    assert pipeline.providers.register_provider(
        "dspy_claude", OptimizedClaudeProvider, ["dspy_optimization", "claude_compatible", "structured_output"]) == "ok"
    assert pipeline.providers.get_provider("dspy_claude") == ("ok", OptimizedClaudeProvider)
    status, chosen = pipeline.providers.select_provider(["dspy_optimization", "structured_output"])
    assert status == "ok" and isinstance(chosen, Provider) and chosen.name == "dspy_claude"
    assert chosen.module is OptimizedClaudeProvider
    assert pipeline.providers.get_provider("nobody") == ("error", "not_found")


def test_every_legacy_step_is_registered_at_start(pipeline: Pipeline) -> None:
    steps = {s.step_type: s for s in pipeline.steps.list_steps()}
    assert set(LEGACY_STEPS) <= set(steps) and len(LEGACY_STEPS) == 10
    assert all(steps[t].legacy for t in LEGACY_STEPS)
    assert steps["claude_smart"].description == "legacy step (Pipeline.Step.ClaudeSmart)"
    assert CompatibilityManager.legacy_step_types() == list(LEGACY_STEPS)
    assert all(pipeline.compatibility.is_legacy(t) for t in LEGACY_STEPS)
    assert [p.name for p in pipeline.providers.list_providers()] == ["claude", "gemini"]


def test_validation_integration(pipeline: Pipeline) -> None:
    pipeline.steps.register_step("dspy_claude", OptimizedClaudeStep, validator=validate_dspy_claude_config,
                                 metadata=DSPY_METADATA)
    config = {"prompt": "Summarise", "dspy_signature": "text -> summary"}
    assert pipeline.steps.validate_step_config("dspy_claude", config) == (
        "ok", {"prompt": "Summarise", "dspy_signature": "text->summary"})
    assert pipeline.steps.validate_step_config("dspy_claude", {"prompt": "x", "dspy_signature": "nope"}) == (
        "error", "DSPy Claude validation failed: signature must read 'inputs -> outputs'")
    status, reason = pipeline.steps.validate_step_config("dspy_claude", {"prompt": "x"})
    assert status == "error" and "missing required fields: dspy_signature" in reason
    assert pipeline.steps.validate_step_config("nobody", {})[0] == "error"
    assert pipeline.steps.validate_step_config("claude", {"prompt": "x"}) == ("ok", {"prompt": "x"})


def test_step_not_found_falls_back_to_legacy_dispatch(pipeline: Pipeline) -> None:
    pipeline.steps.register_step("dspy_claude", OptimizedClaudeStep, metadata=DSPY_METADATA)
    assert execute(pipeline, {"type": "dspy_claude", "prompt": "p"}, {}) == "dspy:p"
    assert execute(pipeline, {"type": "claude", "prompt": "p"}, {}) == "claude:p"  # registered, no module: legacy
    assert pipeline.steps.get_step_module("no_such_step") == ("error", "not_found")
    with pytest.raises(StepNotFoundError, match="not registered"):
        pipeline.steps.require_step_module("no_such_step")
    with pytest.raises(StepNotFoundError, match="without a module"):
        pipeline.steps.require_step_module("gemini")


def test_a_module_implementing_the_step_behaviour_describes_and_validates_itself(pipeline: Pipeline) -> None:
    pipeline.steps.register_step("behaving", BehavingStep)
    (info,) = [s for s in pipeline.steps.list_steps() if s.step_type == "behaving"]
    assert (info.description, info.required_fields, info.capabilities) == ("behaves", ("prompt",),
                                                                          frozenset({"text_generation"}))
    assert info.validator == "test_compat_pipeline:BehavingStep.validate_config" and not info.validator_in_process
    assert pipeline.steps.validate_step_config("behaving", {"prompt": "p", "retries": 5}) == (
        "error", "at most 3 retries")
    assert pipeline.steps.validate_step_config("behaving", {"prompt": "p"}) == ("ok", {"prompt": "p"})


def test_handing_over_a_legacy_module_at_start(registry: Registry) -> None:
    with Pipeline(registry, start=False) as pipeline:
        pipeline.compatibility.start(step_modules={"claude": Claude})
        assert pipeline.steps.require_step_module("claude") is Claude
        with pytest.raises(InvalidInputError, match="not legacy"):
            pipeline.compatibility.start(step_modules={"dspy_claude": Claude})


def test_module_level_functions_act_on_the_default_pipeline(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMEPLATE_DB", str(db_path))
    try:
        assert compat.register_step("dspy_claude", OptimizedClaudeStep, validator=validate_dspy_claude_config,
                                    metadata=DSPY_METADATA) == "ok"
        assert compat.get_step_module("dspy_claude") == ("ok", OptimizedClaudeStep)
        assert compat.require_step_module("dspy_claude") is OptimizedClaudeStep
        assert compat.validate_step_config("dspy_claude", {"prompt": "p"})[0] == "error"
        assert "claude" in [s.step_type for s in compat.list_steps()]
        compat.register_provider("dspy_claude", OptimizedClaudeProvider, ["structured_output"])
        assert compat.get_provider("dspy_claude") == ("ok", OptimizedClaudeProvider)
        compat.report_provider_health("dspy_claude", "healthy", load=0.3)
        assert compat.select_provider(["structured_output"], "healthiest")[1].name == "dspy_claude"
        compat.register_selection_strategy("by_name_desc", lambda providers: providers[-1])
        assert compat.select_provider([], "by_name_desc")[1].name == "gemini"
        assert [p.name for p in compat.list_providers(["structured_output"])] == ["dspy_claude", "gemini"]
    finally:
        compat.default_pipeline().close()


# -- differences from the seed: re-registration, names, validators in other processes ----------


def test_re_registration_never_overwrites_silently(pipeline: Pipeline) -> None:
    pipeline.steps.register_step("dspy_claude", OptimizedClaudeStep, metadata=DSPY_METADATA)
    revision = pipeline.registry.revision
    assert pipeline.steps.register_step("dspy_claude", OptimizedClaudeStep, metadata=DSPY_METADATA) == "ok"
    assert pipeline.registry.revision == revision  # the same again writes nothing
    with pytest.raises(NameTakenError, match="on_conflict='replace'"):
        pipeline.steps.register_step("dspy_claude", Claude, metadata=DSPY_METADATA)
    pipeline.steps.register_step("dspy_claude", Claude, metadata=DSPY_METADATA, on_conflict="replace")
    assert pipeline.steps.require_step_module("dspy_claude") is Claude


def test_bad_registrations_are_refused_and_write_nothing(pipeline: Pipeline) -> None:
    revision = pipeline.registry.revision
    with pytest.raises(ValidationError, match="pattern"):
        pipeline.steps.register_step("DspyClaude", OptimizedClaudeStep)  # step types are lower_snake
    with pytest.raises(InvalidInputError, match="validator"):
        pipeline.steps.register_step("dspy_claude", OptimizedClaudeStep, validator=42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="required_fields"):
        pipeline.steps.register_step("dspy_claude", OptimizedClaudeStep, metadata={"required_fields": "prompt"})
    with pytest.raises(SelectionStrategyError, match="built-in"):
        pipeline.providers.register_selection_strategy("round_robin", lambda providers: None)
    with pytest.raises(SelectionStrategyError, match="unknown selection strategy"):
        pipeline.providers.select_provider([], "best")
    assert pipeline.registry.revision == revision


def test_a_target_that_cannot_be_imported_raises_instead_of_falling_back(pipeline: Pipeline) -> None:
    pipeline.steps.register_step("broken", "no_such_package.steps:Broken")
    with pytest.raises(TargetImportError, match="no_such_package"):
        pipeline.steps.get_step_module("broken")


def test_an_unimportable_module_stays_in_its_process(pipeline: Pipeline) -> None:
    class LocalStep:
        pass

    pipeline.steps.register_step("local_step", LocalStep)
    assert pipeline.steps.get_step_module("local_step") == ("ok", LocalStep)
    (info,) = [s for s in pipeline.steps.list_steps() if s.step_type == "local_step"]
    assert info.target is None


# -- selection and health ----------------------------------------------------------------------


def test_strategies_never_select_a_critical_provider(pipeline: Pipeline) -> None:
    providers = pipeline.providers
    providers.register_provider("local_llm", None, ["text_generation"])
    providers.report_health("claude", "critical")
    for strategy in ("first", "random", "round_robin", "least_recently_selected"):
        picks = {providers.select_provider(["text_generation"], strategy)[1].name for _ in range(6)}
        assert "claude" not in picks and picks, strategy
    providers.report_health("gemini", "degraded", load=0.1)
    providers.report_health("local_llm", "healthy", load=0.9)
    assert providers.select_provider(["text_generation"], "healthiest")[1].name == "local_llm"
    providers.report_health("local_llm", "critical")
    assert providers.select_provider(["text_generation"], "healthiest")[1].name == "gemini"
    providers.report_health("gemini", "critical")
    status, reason = providers.select_provider(["text_generation"], "healthiest")
    assert status == "error" and "critical" in reason
    assert providers.select_provider(["text_generation"], "round_robin")[0] == "error"


def test_healthiest_orders_by_health_then_load(pipeline: Pipeline) -> None:
    providers = pipeline.providers
    for name, health, load in (("a_llm", "degraded", 0.0), ("b_llm", "healthy", 0.7), ("c_llm", "healthy", 0.2)):
        providers.register_provider(name, None, ["chat"])
        providers.report_health(name, health, load=load)
    assert providers.select_provider(["chat"], "healthiest")[1].name == "c_llm"


def test_a_health_check_runs_on_the_heartbeat(db_path: Path) -> None:
    state = {"health": "healthy"}
    with Pipeline(Registry(db_path, ttl=1.5)) as pipeline:
        pipeline.providers.register_provider("api_llm", None, ["chat"], health_check=lambda: dict(state))
        assert pipeline.providers.select_provider(["chat"], "healthiest")[1].name == "api_llm"
        state["health"] = "critical"
        assert wait_until(lambda: pipeline.providers.select_provider(["chat"], "healthiest")[0] == "error")
        assert pipeline.providers.select_provider(["chat"], "first")[0] == "error"  # no strategy picks it


def test_custom_strategies_see_only_eligible_providers_and_must_answer_with_one(pipeline: Pipeline) -> None:
    seen: list[list[str]] = []

    def cheapest(candidates: Any) -> Provider | None:
        seen.append([p.name for p in candidates])
        return min(candidates, key=lambda p: p.health.load if p.health.load is not None else 1e9)

    pipeline.providers.register_selection_strategy("cheapest", cheapest)
    pipeline.providers.report_health("claude", "critical")
    pipeline.providers.report_health("gemini", "healthy", load=0.5)
    assert pipeline.providers.select_provider(["text_generation"], "cheapest")[1].name == "gemini"
    assert seen == [["gemini"]]
    pipeline.providers.register_selection_strategy("stranger", lambda candidates: "claude")  # type: ignore[arg-type, return-value]
    with pytest.raises(SelectionStrategyError, match="not one of the providers"):
        pipeline.providers.select_provider(["text_generation"], "stranger")
    pipeline.providers.register_selection_strategy("nobody", lambda candidates: None)
    assert pipeline.providers.select_provider(["text_generation"], "nobody")[0] == "error"


# -- several processes ----------------------------------------------------------------------------


def _start_legacy(barrier: Any, results: Any, index: int, path: str) -> None:
    try:
        with Registry(path) as registry:
            barrier.wait()
            pipeline = Pipeline(registry)
            ids = {t: registry.lookup(t, STEP_KIND) for t in LEGACY_STEPS}
            ids.update({f"provider:{p}": registry.lookup(p, "provider") for p in ("claude", "gemini")})
            results.put((index, ids))
            del pipeline
    except Exception as error:  # reported to the parent, which fails the test with it
        results.put((index, ("error", repr(error))))


def test_legacy_registration_is_idempotent_from_8_processes_at_once(db_path: Path) -> None:
    Registry(db_path).close()
    outcomes = run_processes(_start_legacy, [(str(db_path),)] * 8)
    assert [o for o in outcomes if not isinstance(o, dict)] == []
    assert all(o == outcomes[0] for o in outcomes) and all(outcomes[0].values())
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT k.name, count(*) FROM entry AS e JOIN kind AS k ON k.id = e.kind_id "
                            "GROUP BY k.name").fetchall()
        registers = conn.execute("SELECT count(*) FROM event WHERE action = 'register'").fetchone()[0]
        kinds = conn.execute("SELECT count(*) FROM kind WHERE name = ?", (STEP_KIND,)).fetchone()[0]
    assert dict(rows) == {STEP_KIND: 10, "provider": 2} and registers == 12 and kinds == 1


def _other_process_view(barrier: Any, results: Any, index: int, path: str) -> None:
    try:
        with Registry(path) as registry:
            barrier.wait()
            pipeline = Pipeline(registry)
            results.put((index, {
                "module": pipeline.steps.get_step_module("dspy_claude"),
                "dotted": pipeline.steps.validate_step_config("dotted_step", {"prompt": "p", "dspy_signature": "a"}),
                "callable": pipeline.steps.validate_step_config("dspy_claude", {"prompt": "p", "dspy_signature": "a"}),
            }))
    except Exception as error:  # reported to the parent, which fails the test with it
        results.put((index, ("error", repr(error))))


def test_another_process_loads_modules_by_name_and_runs_only_dotted_validators(pipeline: Pipeline,
                                                                                db_path: Path) -> None:
    pipeline.steps.register_step("dspy_claude", OptimizedClaudeStep, validator=validate_dspy_claude_config,
                                 metadata=DSPY_METADATA)
    pipeline.steps.register_step("dotted_step", OptimizedClaudeStep,
                                 validator="test_compat_pipeline:validate_dspy_claude_config", metadata=DSPY_METADATA)
    (seen,) = run_processes(_other_process_view, [(str(db_path),)])
    assert seen["module"][0] == "ok" and seen["module"][1].__name__ == "OptimizedClaudeStep"
    assert seen["dotted"] == ("error", "DSPy Claude validation failed: signature must read 'inputs -> outputs'")
    assert seen["callable"][0] == "error" and "only in the process that registered it" in seen["callable"][1]


_SERVING = """
import sys, time
from nameplate import Registry
from nameplate.compat.pipeline import Pipeline
pipeline = Pipeline(Registry(sys.argv[1], ttl=60))
pipeline.providers.register_provider(sys.argv[2], None, ["vision"], owned=sys.argv[3] == "owned")
pipeline.providers.report_health(sys.argv[2], sys.argv[4], load=0.1)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        child.kill()
        child.wait(timeout=60)
        if child.stdout is not None:
            child.stdout.close()


def test_critical_and_dead_providers_are_never_selected(pipeline: Pipeline, db_path: Path,
                                                        children: list[subprocess.Popen[str]]) -> None:
    for name, owned, health in (("served_llava", "owned", "healthy"), ("sick_llava", "unowned", "critical")):
        child = subprocess.Popen([sys.executable, "-c", _SERVING, str(db_path), name, owned, health],
                                 stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    pipeline.providers.register_provider("spare_llava", None, ["vision"])
    pipeline.providers.report_health("spare_llava", "degraded", load=0.9)
    assert pipeline.providers.select_provider(["vision"], "healthiest")[1].name == "served_llava"
    children[0].send_signal(signal.SIGKILL)
    children[0].wait(timeout=30)
    # the ttl is 60 s: only the pid check can tell, at once
    for strategy in ("healthiest", "first", "random", "round_robin", "least_recently_selected"):
        for _ in range(4):
            assert pipeline.providers.select_provider(["vision"], strategy)[1].name == "spare_llava", strategy
    served = pipeline.registry.health("served_llava", "provider")
    assert (served.alive, served.state) == (False, "dead")
