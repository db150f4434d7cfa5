"""Guarantee 6: layered workspaces, one resolver, context-local active workspace."""

from __future__ import annotations

import asyncio
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nameplate import (
    EntryNotFoundError,
    InvalidInputError,
    InvalidNameError,
    LeaseHeldError,
    NameTakenError,
    Registry,
    UnknownWorkspaceError,
    WorkspaceError,
)

from conftest import table_snapshot


@pytest.fixture
def layered(registry: Registry) -> Registry:
    registry.create_workspace("dev1")
    registry.create_workspace("dev2")
    registry.create_workspace("dev1_feature", parent="dev1")
    return registry


def test_siblings_never_see_each_others_rows(layered: Registry) -> None:
    core = layered.resolve("shared", "node")
    mine = layered.resolve("only_dev1", "node", workspace="dev1")
    assert layered.lookup("shared", "node", workspace="dev1") == core
    assert layered.lookup("shared", "node", workspace="dev2") == core
    assert layered.lookup("only_dev1", "node", workspace="dev2") is None
    assert layered.lookup("only_dev1", "node") is None  # not in core either
    assert layered.lookup("only_dev1", "node", workspace="dev1_feature") == mine
    assert [e.name for e in layered.list(workspace="dev2")] == ["shared"]


def test_a_workspace_row_overrides_its_ancestors(layered: Registry) -> None:
    core = layered.register("Train", "step", {"sagemaker_step_type": "Training"})
    override = layered.register("Train", "step", {"sagemaker_step_type": "Processing"}, workspace="dev1")
    assert override.id != core.id
    assert layered.get("Train", "step", workspace="dev1").definition["sagemaker_step_type"] == "Processing"
    assert layered.get("Train", "step", workspace="dev1_feature").id == override.id
    assert layered.get("Train", "step", workspace="dev2").id == core.id


def test_tombstones_hide_for_the_workspace_and_its_children_only(layered: Registry) -> None:
    core = layered.resolve("legacy", "node")
    layered.hide("legacy", "node", workspace="dev1")
    assert layered.lookup("legacy", "node", workspace="dev1") is None
    assert layered.lookup("legacy", "node", workspace="dev1_feature") is None
    assert layered.lookup("legacy", "node", workspace="dev2") == core
    assert layered.lookup("legacy", "node") == core
    assert "legacy" not in [e.name for e in layered.list(workspace="dev1")]
    explanation = layered.explain("legacy", "node", workspace="dev1_feature")
    assert explanation.hidden_by == "dev1" and explanation.entry_id is None
    layered.unhide("legacy", "node", workspace="dev1")
    assert layered.lookup("legacy", "node", workspace="dev1") == core


def test_resolving_a_hidden_name_creates_the_workspaces_own_entry(layered: Registry) -> None:
    core = layered.resolve("legacy", "node")
    layered.hide("legacy", "node", workspace="dev1")
    own = layered.resolve("legacy", "node", workspace="dev1")
    assert own != core
    assert layered.lookup("legacy", "node", workspace="dev1") == own
    assert layered.lookup("legacy", "node") == core


def test_hiding_a_local_entry_or_writing_an_inherited_one_is_refused(layered: Registry, db_url: str) -> None:
    layered.resolve("mine", "node", workspace="dev1")
    layered.resolve("inherited", "node")
    before = table_snapshot(db_url)
    with pytest.raises(WorkspaceError):
        layered.hide("mine", "node", workspace="dev1")
    with pytest.raises(EntryNotFoundError) as caught:
        layered.delete("inherited", "node", workspace="dev1")
    assert "inherited from workspace 'core'" in str(caught.value)
    with pytest.raises(EntryNotFoundError):
        layered.rename("inherited", "other", "node", workspace="dev1")
    assert table_snapshot(db_url) == before


def test_promote_moves_a_definition_up_keeping_its_id(layered: Registry) -> None:
    entry = layered.register("Feature", "step", {"sagemaker_step_type": "Processing"}, workspace="dev1_feature")
    promoted = layered.promote("Feature", "step", workspace="dev1_feature")
    assert (promoted.id, promoted.workspace) == (entry.id, "dev1")
    assert layered.get("Feature", "step", workspace="dev1").id == entry.id
    layered.register("Feature", "step", {"sagemaker_step_type": "Training"})
    with pytest.raises(NameTakenError):
        layered.promote("Feature", "step", workspace="dev1")
    replaced = layered.promote("Feature", "step", workspace="dev1", replace=True)
    assert replaced.id == entry.id and replaced.workspace == "core"
    with pytest.raises(WorkspaceError):
        layered.promote("Feature", "step")


def test_promote_refuses_an_entry_leased_by_another_process(layered: Registry, db_url: str) -> None:
    layered.register("Feature", "step", {"sagemaker_step_type": "Processing"}, workspace="dev1")
    with Registry(db_url) as holder:
        holder.acquire("Feature", "step", workspace="dev1")
        before = table_snapshot(db_url)
        with pytest.raises(LeaseHeldError):
            layered.promote("Feature", "step", workspace="dev1")
        assert table_snapshot(db_url) == before
        promoted = holder.promote("Feature", "step", workspace="dev1")  # the holder itself may
        assert promoted.workspace == "core"


def test_deleting_a_workspace_ends_each_entrys_history(layered: Registry) -> None:
    gone = layered.resolve("scratch", "node", workspace="dev2")
    layered.resolve("shared", "node")
    layered.hide("shared", "node", workspace="dev2")
    since = layered.revision
    layered.delete_workspace("dev2")
    events = layered.changes(since)
    assert [(e.action, e.entry_id) for e in events if e.action == "delete"] == [("delete", gone)]
    assert events[-1].action == "workspace.delete" and events[-1].detail["rows_deleted"] == 2
    assert layered.lookup("shared", "node") is not None


def test_diff_and_conflicts(layered: Registry) -> None:
    layered.register("Train", "step", {"sagemaker_step_type": "Training"})
    layered.register("Clean", "step", {"sagemaker_step_type": "Processing"}, workspace="dev1")
    layered.register("Clean", "step", {"sagemaker_step_type": "Training"}, workspace="dev2")
    layered.register("Train", "step", {"sagemaker_step_type": "Processing"}, workspace="dev2")
    diff = layered.diff("dev1", "dev2")
    assert [(a.name, b.name) for a, b in diff.changed] == [("Clean", "Clean"), ("Train", "Train")]
    assert not diff.only_in_a and not diff.only_in_b and not diff.empty
    assert layered.diff("dev1", "dev1").empty
    found = {(c.type, c.name, c.workspaces) for c in layered.conflicts()}
    assert ("sibling", "Clean", ("dev1", "dev2")) in found
    assert ("shadow", "Train", ("dev2", "core")) in found


def test_workspace_lifecycle(layered: Registry) -> None:
    assert [w.name for w in layered.workspaces()] == ["core", "dev1", "dev1_feature", "dev2"]
    dev1 = next(w for w in layered.workspaces() if w.name == "dev1")
    assert (dev1.parent, dev1.depth, dev1.children) == ("core", 1, ("dev1_feature",))
    with pytest.raises(NameTakenError):
        layered.create_workspace("dev1")
    with pytest.raises(UnknownWorkspaceError):
        layered.create_workspace("x", parent="missing")
    with pytest.raises(InvalidNameError):
        layered.create_workspace("bad name")
    layered.resolve("in_feature", "node", workspace="dev1_feature")
    with pytest.raises(WorkspaceError):
        layered.delete_workspace("dev1")
    with pytest.raises(WorkspaceError):
        layered.delete_workspace("core")
    assert layered.delete_workspace("dev1", force=True) == ["dev1_feature", "dev1"]
    assert [w.name for w in layered.workspaces()] == ["core", "dev2"]
    with pytest.raises(UnknownWorkspaceError):
        layered.lookup("in_feature", "node", workspace="dev1_feature")


def test_explicit_argument_beats_context_beats_environment(layered: Registry,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    in_dev2 = layered.resolve("n", "node", workspace="dev2")
    in_dev1 = layered.resolve("n", "node", workspace="dev1")
    assert layered.lookup("n", "node") is None
    monkeypatch.setenv("NAMEPLATE_WORKSPACE", "dev2")
    assert layered.lookup("n", "node") == in_dev2
    with layered.workspace("dev1"):
        assert layered.current_workspace == "dev1"
        assert layered.lookup("n", "node") == in_dev1
        assert layered.lookup("n", "node", workspace="dev2") == in_dev2
    assert layered.current_workspace == "dev2"


def test_the_active_workspace_is_local_to_each_thread(layered: Registry) -> None:
    ids = {ws: layered.resolve("n", "node", workspace=ws) for ws in ("dev1", "dev2")}
    barrier = threading.Barrier(2)
    seen: dict[str, list[str | None]] = {}

    def work(ws: str) -> None:
        with layered.workspace(ws):
            barrier.wait()  # both threads are inside their own `with` at the same time
            seen[ws] = [layered.lookup("n", "node") for _ in range(50)]
            barrier.wait()

    threads = [threading.Thread(target=work, args=(ws,)) for ws in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert seen == {ws: [ids[ws]] * 50 for ws in ids}
    assert layered.current_workspace == "core"


def test_the_active_workspace_is_local_to_each_asyncio_task(layered: Registry) -> None:
    ids = {ws: layered.resolve("n", "node", workspace=ws) for ws in ("dev1", "dev2")}

    async def work(ws: str) -> list[str | None]:
        with layered.workspace(ws):
            results = []
            for _ in range(20):
                await asyncio.sleep(0)  # let the other task run inside its own context
                results.append(layered.lookup("n", "node"))
            return results

    async def main() -> list[list[str | None]]:
        return await asyncio.gather(work("dev1"), work("dev2"))

    first, second = asyncio.run(main())
    assert first == [ids["dev1"]] * 20 and second == [ids["dev2"]] * 20


# -- one resolver: a listing and per-name lookups never disagree -----------------------------------------

_NAMES = ["alpha", "beta"]
_KINDS = ["node", "module"]
_CAPABILITIES = ["x", "y"]
_OPERATIONS = ["resolve", "register", "hide", "unhide", "delete", "promote"]
_Operation = tuple[str, str, str, str, frozenset[str], int]


@st.composite
def _trees_and_operations(draw: st.DrawFn) -> tuple[dict[str, str], list[_Operation]]:
    """A random workspace tree (each new workspace hangs under core or an earlier one) and a random
    sequence of writes over it."""
    parents: dict[str, str] = {}
    for index in range(draw(st.integers(min_value=1, max_value=5))):
        parents[f"w{index}"] = draw(st.sampled_from(["core", *parents]))
    operations = draw(st.lists(st.tuples(
        st.sampled_from(_OPERATIONS), st.sampled_from(["core", *parents]), st.sampled_from(_NAMES),
        st.sampled_from(_KINDS), st.frozensets(st.sampled_from(_CAPABILITIES)), st.integers(0, 7)),
        min_size=4, max_size=40))
    return parents, operations


def _apply(registry: Registry, operation: _Operation) -> None:
    """Run one write. Operations that need a row to act on pick one that exists (``pick`` chooses),
    so that most of them do something."""
    op, ws, name, kind, capabilities, pick = operation
    if op == "resolve":
        registry.resolve(name, kind, workspace=ws)
        return
    if op == "register":
        registry.register(name, kind, {"v": len(capabilities)}, capabilities=capabilities, on_conflict="replace",
                          workspace=ws)
        return
    visible = registry.list(workspace=ws)
    if op == "hide":
        candidates = [(e.name, e.kind) for e in visible if e.workspace != ws]
    elif op == "unhide":
        candidates = [(n, k) for n in _NAMES for k in _KINDS
                      if any(layer.workspace == ws and layer.hidden
                             for layer in registry.explain(n, k, workspace=ws).layers)]
    else:
        candidates = [(e.name, e.kind) for e in visible if e.workspace == ws]
    if not candidates:
        return
    name, kind = candidates[pick % len(candidates)]
    if op == "hide":
        registry.hide(name, kind, workspace=ws)
    elif op == "unhide":
        registry.unhide(name, kind, workspace=ws)
    elif op == "delete":
        registry.delete(name, kind, workspace=ws)
    elif ws != "core":
        try:
            registry.promote(name, kind, workspace=ws)
        except NameTakenError:
            registry.promote(name, kind, workspace=ws, replace=True)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_trees_and_operations())
def test_listing_equals_per_name_lookup_in_every_workspace(tmp_path_factory: pytest.TempPathFactory,
                                                          case: tuple[dict[str, str], list[_Operation]]) -> None:
    parents, operations = case
    path = tmp_path_factory.mktemp("property") / "registry.db"
    with Registry(path) as registry:
        for name, parent in parents.items():
            registry.create_workspace(name, parent=parent)
        for operation in operations:
            _apply(registry, operation)
        for ws in ["core", *parents]:
            listed = {(e.kind, e.name): e for e in registry.list(workspace=ws)}
            looked_up = {}
            for name in _NAMES:
                for kind in _KINDS:
                    entry_id = registry.lookup(name, kind, workspace=ws)
                    entry = registry.get(name, kind, workspace=ws)
                    assert (entry.id if entry else None) == entry_id
                    assert registry.explain(name, kind, workspace=ws).entry_id == entry_id
                    if entry_id is not None:
                        looked_up[(kind, name)] = entry
            assert listed == looked_up
            for kind in _KINDS:  # the capability index path agrees with the listing too
                for required in ([], ["x"], ["x", "y"]):
                    expected = sorted(e.name for (k, _), e in listed.items()
                                      if k == kind and e.capabilities >= set(required))
                    assert [e.name for e in registry.find(kind, required, workspace=ws)] == expected


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_creating_a_workspace_costs_the_same_however_many_there_are(registry: Registry) -> None:
    def statements_to_create(name: str, parent: str) -> list[str]:
        statements: list[str] = []
        conn = registry._backend.connection()
        conn.set_trace_callback(statements.append)
        try:
            info = registry.create_workspace(name, parent)
        finally:
            conn.set_trace_callback(None)
        assert (info.name, info.parent, info.entries, info.children) == (name, parent, 0, ())
        return statements

    first = statements_to_create("w0", "core")
    parent = "w0"
    for index in range(1, 300):  # a chain 300 deep; it used to list every workspace to return one
        registry.create_workspace(f"w{index}", parent)
        parent = f"w{index}"
    deep = statements_to_create("deepest", parent)
    assert len(deep) == len(first) and not any("FROM workspace AS w LEFT JOIN" in s for s in deep)
    assert registry.create_workspace("sibling", parent).depth == 301
    listed = {w.name: w for w in registry.workspaces()}
    assert listed["deepest"].depth == 301 and listed[parent].children == ("deepest", "sibling")


def test_creating_a_workspace_that_exists_is_fine_with_exist_ok_over_the_same_parent(registry: Registry) -> None:
    created = registry.create_workspace("team", description="ours")
    registry.resolve("x", "node", workspace="team")
    registry.create_workspace("team-child", parent="team")
    again = registry.create_workspace("team", exist_ok=True)
    assert (again.name, again.parent, again.description, again.entries) == ("team", "core", "ours", 1)
    assert again == next(w for w in registry.workspaces() if w.name == "team")  # children included
    assert again.created_at == created.created_at
    with pytest.raises(NameTakenError):
        registry.create_workspace("team")
    registry.create_workspace("other")
    before = registry.revision
    with pytest.raises(NameTakenError, match="over another parent"):
        registry.create_workspace("team", parent="other", exist_ok=True)
    with pytest.raises(InvalidInputError):
        registry.create_workspace("fresh", exist_ok="yes")  # type: ignore[arg-type]
    assert registry.revision == before and "fresh" not in {w.name for w in registry.workspaces()}
