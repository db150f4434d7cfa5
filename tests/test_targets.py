"""Targets: lazy, cached loading with precise errors; in-process bind(); entry-point discovery."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nameplate import EntryNotFoundError, Registry, TargetImportError

from conftest import table_snapshot


@pytest.fixture
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "np_test_plugin.py").write_text("class Builder:\n    class Nested:\n        pass\n\nVALUE = 42\n")
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
    with pytest.raises(TargetImportError, match="'np_test_plugin' has no such attribute 'Nothing'") as no_attr:
        registry.load("NoAttr", "builder")
    assert no_attr.value.target == f"{plugin_module}:Nothing" and isinstance(no_attr.value.__cause__, AttributeError)
    with pytest.raises(TargetImportError, match="has no target"):
        registry.load("NoTarget", "builder")


_CHILD_LOAD = """
import sys
from nameplate import Registry, EntryNotFoundError
with Registry(sys.argv[1]) as registry:
    try:
        registry.load("Scratch", "builder")
        print("visible")
    except EntryNotFoundError:
        print("absent")
"""


def test_bind_is_visible_to_load_in_this_process_only(registry: Registry, db_path: Path) -> None:
    before = table_snapshot(db_path)

    class Temporary:
        pass

    registry.bind("Scratch", "builder", Temporary)
    assert registry.load("Scratch", "builder") is Temporary
    assert table_snapshot(db_path) == before  # nothing persisted
    with Registry(db_path) as same_file:  # another Registry object of this process sees it
        assert same_file.load("Scratch", "builder") is Temporary
    with Registry(db_path.parent / "other.db") as other_file, pytest.raises(EntryNotFoundError):
        other_file.load("Scratch", "builder")
    child = subprocess.run([sys.executable, "-c", _CHILD_LOAD, str(db_path)], capture_output=True, text=True,
                           timeout=120)
    assert child.stdout.strip() == "absent", child.stderr
    assert registry.unbind("Scratch", "builder") and not registry.unbind("Scratch", "builder")
    with pytest.raises(EntryNotFoundError):
        registry.load("Scratch", "builder")


def test_bind_follows_the_layers(registry: Registry, plugin_module: str) -> None:
    registry.create_workspace("dev1")
    registry.create_workspace("dev2")
    registry.create_workspace("dev1_child", parent="dev1")
    registry.register("Train", "builder", target=f"{plugin_module}:Builder")
    registry.bind("Train", "builder", "bound in core")
    registry.register("Train", "builder", target=f"{plugin_module}:VALUE", workspace="dev1")
    assert registry.load("Train", "builder") == "bound in core"  # a binding beats its own layer's row
    assert registry.load("Train", "builder", workspace="dev2") == "bound in core"  # inherited
    assert registry.load("Train", "builder", workspace="dev1") == 42  # a nearer row beats a farther binding
    assert registry.load("Train", "builder", workspace="dev1_child") == 42
    registry.hide("Train", "builder", workspace="dev2")
    with pytest.raises(EntryNotFoundError, match="hidden by a tombstone in 'dev2'"):
        registry.load("Train", "builder", workspace="dev2")
    registry.bind("Train", "builder", "bound in dev1_child", workspace="dev1_child")
    assert registry.load("Train", "builder", workspace="dev1_child") == "bound in dev1_child"
    assert registry.load("Train", "builder", workspace="dev1") == 42


def test_load_follows_a_replaced_target(registry: Registry, plugin_module: str) -> None:
    registry.register("Thing", "builder", target=f"{plugin_module}:Builder.Nested")
    assert registry.load("Thing", "builder").__name__ == "Nested"
    registry.register("Thing", "builder", target=f"{plugin_module}:VALUE", on_conflict="replace")
    assert registry.load("Thing", "builder") == 42


def test_a_module_that_raises_on_import_is_a_target_import_error(registry: Registry, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "np_exploding.py").write_text("raise RuntimeError('needs a GPU')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register("Boom", "builder", target="np_exploding:Thing")
    with pytest.raises(TargetImportError, match="raised RuntimeError: needs a GPU") as caught:
        registry.load("Boom", "builder")
    assert caught.value.target == "np_exploding:Thing" and caught.value.name == "Boom"
    assert isinstance(caught.value.__cause__, RuntimeError)
    sys.modules.pop("np_exploding", None)


def test_load_of_an_unknown_name_says_so(registry: Registry) -> None:
    with pytest.raises(EntryNotFoundError, match="no builder 'Nope'"):
        registry.load("Nope", "builder")


def test_discover_registers_entry_points_idempotently(registry: Registry, tmp_path: Path, db_url: str,
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
    before = table_snapshot(db_url)
    again = registry.discover()
    assert [e.id for e in again] == [e.id for e in found]
    assert table_snapshot(db_url) == before  # idempotent: the second run writes nothing
    assert registry.load("fast_llm", "provider") == 42


def _install(tmp_path: Path, version: str, lines: str) -> Path:
    """A minimal installed distribution: a dist-info directory with METADATA and entry_points.txt."""
    dist = tmp_path / f"np_test_plugin-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: np-test-plugin\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text("[nameplate.components]\n" + lines)
    return dist


def test_discover_never_clobbers_a_hand_registration_and_follows_upgrades(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin_module: str) -> None:
    mine = registry.register("mine", "provider", target=f"{plugin_module}:Builder", capabilities=["llm"])
    site = tmp_path / "site"
    site.mkdir()
    dist = _install(site, "1.0", f"mine = {plugin_module}:VALUE\nfast = {plugin_module}:Builder\n")
    monkeypatch.syspath_prepend(str(site))
    found = {e.name: e for e in registry.discover()}
    assert found["mine"] == registry.get("mine", "provider") and found["mine"].target == mine.target
    assert found["mine"].metadata == {}  # left exactly as registered by hand
    # The user gives the discovered provider capabilities; an upgrade moves its target, keeps them.
    registry.register("fast", "provider", target=f"{plugin_module}:Builder", capabilities=["llm", "cheap"],
                      metadata=dict(found["fast"].metadata), on_conflict="replace")
    for path in dist.iterdir():
        path.unlink()
    dist.rmdir()
    _install(site, "2.0", f"fast = {plugin_module}:VALUE\n")
    upgraded = {e.name: e for e in registry.discover()}
    fast = upgraded["fast"]
    assert (fast.id, fast.target, fast.capabilities) == (found["fast"].id, f"{plugin_module}:VALUE", {"llm", "cheap"})
    assert fast.metadata["version"] == "2.0"
    assert registry.load("fast", "provider") == 42


def test_discover_in_a_group_nobody_uses_registers_nothing(registry: Registry, db_url: str) -> None:
    before = table_snapshot(db_url)
    assert registry.discover("nameplate.no_such_group") == []
    assert table_snapshot(db_url) == before


@pytest.mark.sqlite_only  # counts SQLite's traced statements
def test_load_walks_the_layers_only_for_names_bound_somewhere(registry: Registry) -> None:
    registry.register("encoder", "builder", target="json:JSONEncoder")
    registry.register("decoder", "builder", target="json:JSONDecoder")
    registry.bind("decoder", "builder", dict)
    assert registry.load("encoder", "builder") is json.JSONEncoder  # imported once; what follows is the hot path
    statements: list[str] = []
    conn = registry._backend.connection()
    conn.set_trace_callback(statements.append)
    try:
        assert registry.load("encoder", "builder") is json.JSONEncoder
        unbound = list(statements)
        statements.clear()
        assert registry.load("decoder", "builder") is dict  # bound in the workspace asked in: no statement
        bound_here = list(statements)
    finally:
        conn.set_trace_callback(None)
    assert len(unbound) == 1 and unbound[0].startswith("SELECT"), unbound
    assert bound_here == []
    registry.create_workspace("dev1")
    with registry.workspace("dev1"):
        assert registry.load("decoder", "builder") is dict  # inherited binding: the layer walk finds it
        registry.register("decoder", "builder", target="json:JSONDecoder")
        assert registry.load("decoder", "builder") is json.JSONDecoder  # this layer's row beats core's binding
    assert registry.unbind("decoder", "builder") and not registry.unbind("decoder", "builder")
    assert registry.load("decoder", "builder") is json.JSONDecoder
