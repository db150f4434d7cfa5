"""Capability queries and every selection strategy, with real processes where it matters."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nameplate import NoMatchError, Registry, UnknownStrategyError
from nameplate import _strategies


@pytest.fixture
def providers(registry: Registry) -> Registry:
    registry.register("alpha", "provider", capabilities=["llm", "chat"])
    registry.register("beta", "provider", capabilities=["llm", "vision"])
    registry.register("gamma", "provider", capabilities=["llm", "vision", "chat"])
    registry.register("delta", "provider", capabilities=["speech"])
    return registry


def test_find_returns_supersets_of_the_required_capabilities(providers: Registry) -> None:
    assert [e.name for e in providers.find("provider", {"llm", "vision"})] == ["beta", "gamma"]
    assert [e.name for e in providers.find("provider", {"llm"})] == ["alpha", "beta", "gamma"]
    assert [e.name for e in providers.find("provider")] == ["alpha", "beta", "delta", "gamma"]
    assert providers.find("provider", {"telepathy"}) == []


def test_find_reads_the_capability_index_not_the_whole_kind(providers: Registry) -> None:
    conn = providers._backend.connection()
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + _strategies._find_sql(2),
                                           ("llm", "vision", "core", "provider"))]
    assert any("entry_capability USING PRIMARY KEY" in step for step in plan), plan
    assert any("USING INTEGER PRIMARY KEY" in step for step in plan), plan
    assert not any(step.startswith("SCAN") and "m" != step.split()[-1] for step in plan), plan


def test_no_match_says_which_capabilities_nobody_offers(providers: Registry) -> None:
    with pytest.raises(NoMatchError) as caught:
        providers.select("provider", {"llm", "telepathy"})
    assert caught.value.missing == ["telepathy"] and "nobody offers" in str(caught.value)
    with pytest.raises(NoMatchError) as together:
        providers.select("provider", {"speech", "vision"})
    assert together.value.missing == [] and "no single provider" in str(together.value)


def test_unknown_strategies_are_refused(providers: Registry) -> None:
    with pytest.raises(UnknownStrategyError) as caught:
        providers.select("provider", {"llm"}, strategy="best")
    assert "round_robin" in str(caught.value)


def test_first_and_random(providers: Registry) -> None:
    assert providers.select("provider", {"llm"}, "first").name == "alpha"
    seen = Counter(providers.select("provider", {"llm"}, "random").name for _ in range(300))
    assert set(seen) == {"alpha", "beta", "gamma"} and min(seen.values()) > 50


def test_round_robin_rotates_and_least_recently_selected_spreads(providers: Registry) -> None:
    assert [providers.select("provider", {"llm"}, "round_robin").name for _ in range(6)] == \
        ["alpha", "beta", "gamma"] * 2
    picks = [providers.select("provider", {"vision"}, "least_recently_selected").name for _ in range(4)]
    assert picks == ["beta", "gamma", "beta", "gamma"]
    assert providers.get("beta", "provider").id == providers.select("provider", {"vision"}, "first").id


_PICKER = """
import sys
from nameplate import Registry
registry = Registry(sys.argv[1])
for line in sys.stdin:
    print(registry.select("provider", {"llm"}, "round_robin").name, flush=True)
"""


def test_round_robin_alternates_across_two_processes(providers: Registry, db_path: Path) -> None:
    pickers = [subprocess.Popen([sys.executable, "-c", _PICKER, str(db_path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    picks = []
    try:
        for turn in range(6):
            proc = pickers[turn % 2]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("next\n")
            proc.stdin.flush()
            picks.append(proc.stdout.readline().strip())
    finally:
        for proc in pickers:
            proc.stdin.close()
            proc.wait(timeout=30)
            proc.stdout.close()
    assert picks == ["alpha", "beta", "gamma", "alpha", "beta", "gamma"]


_PROVIDER = """
import sys, time
from nameplate import Registry
registry = Registry(sys.argv[1], ttl=60)
registry.session(label="fast-provider").report(status="healthy")
registry.register("fast", "provider", capabilities=["llm"], owned=True)
print("ready", flush=True)
time.sleep(120)
"""


def test_healthiest_prefers_healthy_live_owners_and_ignores_a_killed_one(providers: Registry,
                                                                         db_path: Path) -> None:
    providers.session(label="test").report(status="degraded")
    providers.register("slow", "provider", capabilities=["llm"], owned=True)
    child = subprocess.Popen([sys.executable, "-c", _PROVIDER, str(db_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert providers.select("provider", {"llm"}, "healthiest").name == "fast"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        for _ in range(20):  # the ttl is 60 s: only the pid check can tell it is dead
            assert providers.select("provider", {"llm"}, "healthiest").name == "slow"
        providers.session().report(status="healthy")
        assert providers.select("provider", {"llm"}, "healthiest").name == "slow"
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_healthiest_falls_back_to_unowned_entries(providers: Registry) -> None:
    assert providers.select("provider", {"llm", "vision"}, "healthiest").name == "beta"


def test_selection_respects_workspaces(providers: Registry) -> None:
    providers.create_workspace("dev1")
    providers.hide("alpha", "provider", workspace="dev1")
    providers.register("local", "provider", capabilities=["llm", "chat"], workspace="dev1")
    assert [e.name for e in providers.find("provider", {"chat"}, workspace="dev1")] == ["gamma", "local"]
    assert json.dumps([e.name for e in providers.find("provider", {"chat"})]) == '["alpha", "gamma"]'
