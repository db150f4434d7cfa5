"""Capability queries and every selection strategy, with real processes where it matters."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nameplate import NoMatchError, Registry, UnknownStrategyError, _strategies


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


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
@pytest.mark.parametrize("shape", ["find", "match_pks", "least_recently_selected"])
def test_capability_queries_start_from_the_index_not_the_whole_kind(providers: Registry, shape: str) -> None:
    conn = providers._backend.connection()
    params: tuple[object, ...] = ("vision", "llm", "core", "provider")
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + _strategies.statement(shape, 2), params)]
    assert plan[:4] == ["CO-ROUTINE m", "SEARCH c0 USING PRIMARY KEY (capability=?)", "CORRELATED SCALAR SUBQUERY 1",
                        "SEARCH c1 USING PRIMARY KEY (capability=? AND entry_pk=?)"], plan
    assert "SEARCH e USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    assert not any("entry_by_layer" in s for s in plan), plan  # that index is the walk over the whole kind
    assert [s for s in plan if s.startswith("SCAN")] == ["SCAN m"], plan  # only the index matches are scanned


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
@pytest.mark.parametrize("count", [0, 2])
def test_healthiest_starts_from_the_live_sessions(providers: Registry, count: int) -> None:
    conn = providers._backend.connection()
    params = ("vision", "llm")[:count] + ("core", "provider")
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + _strategies.statement("healthiest", count), params)]
    assert plan[1:3] == ["SEARCH o USING INDEX session_by_state (state=?)",
                         "SEARCH e USING COVERING INDEX entry_by_owner (owner_session_id=?)"], plan
    assert not any("entry_by_layer" in s for s in plan) and [s for s in plan if s.startswith("SCAN")] == ["SCAN m"]


@pytest.mark.sqlite_only  # SQLite's query plan
@pytest.mark.parametrize("count", [0, 2])
def test_healthiest_finds_reported_entries_from_the_live_sessions(providers: Registry, count: int) -> None:
    conn = providers._backend.connection()
    params = ("vision", "llm")[:count] + ("core", "provider")
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + _strategies.statement("reported", count), params)]
    assert plan[1:3] == ["SEARCH o USING INDEX session_by_state (state=?)",
                         "SEARCH h USING COVERING INDEX entry_health_by_session (session_id=?)"], plan
    assert not any("entry_by_layer" in s for s in plan) and [s for s in plan if s.startswith("SCAN")] == ["SCAN m"]


def test_the_rarest_capability_drives_the_query(providers: Registry) -> None:
    with providers._backend.read() as tx:
        assert _strategies.by_rarity(tx, ["chat", "llm", "vision"]) == ["chat", "vision", "llm"]
        assert _strategies.by_rarity(tx, ["llm", "nobody"]) == ["nobody", "llm"]


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
    assert "round_robin" in str(caught.value) and caught.value.known == list(_strategies.STRATEGIES)
    with pytest.raises(UnknownStrategyError):
        providers.select("provider", {"llm"}, strategy=None)  # type: ignore[arg-type]


def test_every_named_strategy_is_implemented(providers: Registry) -> None:
    providers.session(label="test").report(status="healthy")
    providers.register("owned", "provider", capabilities=["llm"], owned=True)
    for strategy in _strategies.STRATEGIES:
        assert providers.select("provider", {"llm"}, strategy).capabilities >= {"llm"}


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_reads_only_strategies_write_nothing_and_recording_ones_one_short_transaction(providers: Registry) -> None:
    providers.session(label="test").report(status="healthy")
    providers.register("owned", "provider", capabilities=["llm"], owned=True)
    statements: list[str] = []
    conn = providers._backend.connection()
    conn.set_trace_callback(statements.append)
    for strategy in ("first", "random", "healthiest"):
        providers.select("provider", {"llm"}, strategy)
    assert not any(s.startswith(("BEGIN IMMEDIATE", "INSERT", "UPDATE", "DELETE")) for s in statements), statements
    for strategy in ("round_robin", "least_recently_selected"):
        statements.clear()
        providers.select("provider", {"llm"}, strategy)
        assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT", statements
        assert len(statements) <= 8, statements
        assert sum(s.startswith("UPDATE entry SET selected_at") for s in statements) == 1
    conn.set_trace_callback(None)


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
    providers.register("epsilon", "provider", capabilities=["vision"])
    assert providers.select("provider", {"vision"}, "least_recently_selected").name == "epsilon"  # never selected


def test_round_robin_keeps_its_place_when_matches_come_and_go(providers: Registry) -> None:
    assert [providers.select("provider", {"llm"}, "round_robin").name for _ in range(2)] == ["alpha", "beta"]
    providers.delete("alpha", "provider")
    providers.register("zeta", "provider", capabilities=["llm"])  # registered last: joins at the end
    assert [providers.select("provider", {"llm"}, "round_robin").name for _ in range(5)] == \
        ["gamma", "zeta", "beta", "gamma", "zeta"]
    # Each requirement has its own rotation.
    assert providers.select("provider", {"llm", "vision"}, "round_robin").name == "beta"


_PICKER = """
import sys
from nameplate import Registry
registry = Registry(sys.argv[1])
for line in sys.stdin:
    print(registry.select("provider", {"llm"}, "round_robin").name, flush=True)
"""


def test_round_robin_alternates_across_two_processes(providers: Registry, db_url: str) -> None:
    pickers = [subprocess.Popen([sys.executable, "-c", _PICKER, str(db_url)], stdin=subprocess.PIPE,
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
                                                                         db_url: str) -> None:
    providers.session(label="test").report(status="degraded")
    providers.register("slow", "provider", capabilities=["llm"], owned=True)
    child = subprocess.Popen([sys.executable, "-c", _PROVIDER, str(db_url)], stdout=subprocess.PIPE, text=True)
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


def test_healthiest_never_returns_an_entry_without_a_live_owner(providers: Registry, db_path: Path) -> None:
    with pytest.raises(NoMatchError, match="owned=True") as unowned:
        providers.select("provider", {"llm", "vision"}, "healthiest")
    assert unowned.value.missing == []
    with Registry(db_path) as provider:
        provider.session(label="provider").report(status="healthy")
        provider.register("mine", "provider", capabilities=["speech"], owned=True)
        assert providers.select("provider", {"speech"}, "healthiest").name == "mine"
    with pytest.raises(NoMatchError, match="no longer alive|bound to a live session"):
        providers.select("provider", {"speech"}, "healthiest")  # its session ended with the close
    # Garbage collection deletes the ended session and the entry's owner becomes NULL (ON DELETE SET
    # NULL): it now looks like an entry that never had an owner, and must not come back as healthy.
    providers.gc_events(keep_days=0)
    assert providers.get("mine", "provider") is not None
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT owner_session_id FROM entry WHERE name = 'mine'").fetchone() == (None,)
    with pytest.raises(NoMatchError):
        providers.select("provider", {"speech"}, "healthiest")


def test_a_restarted_provider_takes_over_its_entry(db_url: str) -> None:
    with Registry(db_url) as first:
        first.session(label="provider, first run").report(status="healthy")
        entry = first.register("fast", "provider", {"description": "fast"}, capabilities=["llm"], owned=True)
    with Registry(db_url) as second:  # the same definition again, from a new session
        second.session(label="provider, second run").report(status="healthy")
        again = second.register("fast", "provider", {"description": "fast"}, capabilities=["llm"], owned=True)
        assert again.id == entry.id
        assert second.select("provider", {"llm"}, "healthiest").id == entry.id


def test_selection_respects_workspaces(providers: Registry) -> None:
    providers.create_workspace("dev1")
    providers.hide("alpha", "provider", workspace="dev1")
    providers.register("local", "provider", capabilities=["llm", "chat"], workspace="dev1")
    assert [e.name for e in providers.find("provider", {"chat"}, workspace="dev1")] == ["gamma", "local"]
    assert json.dumps([e.name for e in providers.find("provider", {"chat"})]) == '["alpha", "gamma"]'


def test_cached_match_sets_follow_every_change_another_registry_commits(db_path: Path) -> None:
    with Registry(db_path) as mine, Registry(db_path) as other:
        other.register_many([{"name": f"p{i}", "kind": "provider", "capabilities": ["llm"]} for i in range(20)])
        assert mine.select("provider", {"llm"}).name == "p0"
        seen = {mine.select("provider", {"llm"}, strategy="round_robin").name for _ in range(20)}
        assert seen == {f"p{i}" for i in range(20)}
        other.register("a0", "provider", capabilities=["llm"])  # a new first by name
        assert mine.select("provider", {"llm"}).name == "a0"
        other.register("a0", "provider", capabilities=["chat"], on_conflict="replace")  # no longer a match
        assert mine.select("provider", {"llm"}).name == "p0"
        other.create_workspace("dev")
        other.hide("p0", "provider", workspace="dev")  # hidden in dev only
        assert mine.select("provider", {"llm"}, workspace="dev").name == "p1"
        assert mine.select("provider", {"llm"}).name == "p0"
        for i in range(20):
            other.delete(f"p{i}", "provider")
        with pytest.raises(NoMatchError):
            mine.select("provider", {"llm"}, strategy="random")
