"""nameplate.compat.madsci against seed 002, on real files and processes; and differentially against
MADSci's own LocalRegistryManager (skipped, with the reason, when madsci-common is not installed)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from nameplate import LeaseHeldError, NameplateError, Registry
from nameplate.compat import madsci as compat
from nameplate.compat.madsci import (
    LocalRegistryManager,
    LockManager,
    RegistryEntry,
    RegistryError,
    RegistryInputError,
    RegistryLockError,
)

from conftest import run_processes


@pytest.fixture
def json_path(tmp_path: Path) -> Path:
    return tmp_path / ".madsci" / "registry.json"


@pytest.fixture
def manager(json_path: Path) -> Iterator[LocalRegistryManager]:
    with LocalRegistryManager(json_path) as m:
        yield m


def test_constants_and_error_classes() -> None:
    assert compat.RETRY_INTERVAL_SECONDS == 2.0 and LocalRegistryManager.FILE_LOCK_TIMEOUT == 5
    assert issubclass(RegistryLockError, RegistryError) and issubclass(RegistryError, NameplateError)
    assert issubclass(RegistryLockError, LeaseHeldError)
    assert LockManager().lock_ttl == timedelta(seconds=30) and LockManager().heartbeat_interval == 10
    with pytest.raises(RegistryInputError):
        LockManager(lock_ttl=timedelta(0))


def test_resolve_creates_locks_and_merges_whatever_the_type(manager: LocalRegistryManager) -> None:
    node_id = manager.resolve("robot", "node", {"a": 1})
    assert manager.resolve("robot", "module", {"b": 2}) == node_id  # one name, one entry
    entry = manager.get_entry("robot")
    assert isinstance(entry, RegistryEntry)
    assert (entry.component_type, entry.metadata) == ("node", {"a": 1, "b": 2})
    assert entry.is_locked() and entry.is_locked_by(manager.instance_id)
    assert json.loads(entry.model_dump_json())["lock"]["holder_instance"] == manager.instance_id
    manager.release("robot")
    released = manager.get_entry("robot")
    assert released is not None and not released.is_locked()
    assert manager.lookup("robot") == node_id and manager.lookup("nobody") is None
    assert manager.get_entry("nobody") is None


def test_bad_component_type_changes_nothing(manager: LocalRegistryManager) -> None:
    with pytest.raises(RegistryInputError, match="component_type"):
        manager.resolve("x", "gadget")  # type: ignore[arg-type]
    assert manager.list_entries() == []


def test_two_managers_in_one_process_contend(json_path: Path) -> None:
    with LocalRegistryManager(json_path) as a, LocalRegistryManager(json_path) as b:
        entry_id = a.resolve("arm", "module")
        with pytest.raises(RegistryLockError, match=r"pid \d+ on .*retry_timeout"):
            b.resolve("arm", "module")
        assert b.resolve("arm", "module", acquire_lock=False) == entry_id
        a.release("arm")
        assert b.resolve("arm", "module") == entry_id
        with pytest.raises(RegistryLockError):
            a.refresh_lock("arm")
        b.refresh_lock("arm")


def test_retry_timeout_succeeds_when_the_holder_releases_in_time(json_path: Path) -> None:
    with LocalRegistryManager(json_path) as a, LocalRegistryManager(json_path) as b:
        a.resolve("arm", "module")
        got: list[str] = []
        waiter = threading.Thread(target=lambda: got.append(b.resolve("arm", "module", retry_timeout=30)))
        waiter.start()
        time.sleep(0.3)
        a.release("arm")  # from the thread that took it: nameplate leases belong to their thread
        waiter.join()
        assert got == [a.lookup("arm")]
        entry = b.get_entry("arm")
        assert entry is not None and entry.is_locked_by(b.instance_id)


def test_retry_timeout_raises_when_the_holder_keeps_it(json_path: Path) -> None:
    with LocalRegistryManager(json_path) as a, LocalRegistryManager(json_path) as b:
        a.resolve("arm", "module")
        with pytest.raises(RegistryLockError):
            b.resolve("arm", "module", retry_timeout=0.2)


def test_a_lost_lock_is_detected_not_only_logged(json_path: Path) -> None:
    """MADSci only logs a failed heartbeat; here a lock broken by force makes refresh_lock raise."""
    with LocalRegistryManager(json_path) as holder, LocalRegistryManager(json_path) as operator:
        holder.resolve("arm", "node")
        holder.refresh_lock("arm")  # held: no error
        assert operator.registry.release("arm", "node", force=True)
        with pytest.raises(RegistryLockError):
            holder.refresh_lock("arm")


_HOLD_THE_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
time.sleep(60)
"""


def test_reads_never_wait_for_a_writer_and_a_timed_out_write_raises(json_path: Path) -> None:
    """MADSci returns None or [] when its file lock times out; here reads go on under a writer (WAL)
    and a write that cannot get the lock in FILE_LOCK_TIMEOUT raises RegistryTimeoutError."""

    class QuickManager(LocalRegistryManager):
        FILE_LOCK_TIMEOUT = 1

    with QuickManager(json_path) as manager:
        node_id = manager.resolve("arm", "node", acquire_lock=False)
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_THE_WRITE_LOCK, str(manager.database_path)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
            assert manager.lookup("arm") == node_id
            assert [name for name, _ in manager.list_entries()] == ["arm"]
            with pytest.raises(compat.RegistryTimeoutError):
                manager.resolve("new_arm", "node", acquire_lock=False)
            assert manager.lookup("new_arm") is None
        finally:
            holder.kill()
            holder.wait(timeout=60)


def test_rename_keeps_the_id_and_refuses_what_madsci_refuses(json_path: Path) -> None:
    with LocalRegistryManager(json_path) as a, LocalRegistryManager(json_path) as b:
        first = a.resolve("old", "node")
        b.resolve("other", "node", acquire_lock=False)
        with pytest.raises(RegistryError):
            b.rename("missing", "new")
        with pytest.raises(RegistryError):
            b.rename("old", "other")
        with pytest.raises(RegistryLockError, match="force=True"):
            b.rename("old", "new")
        assert b.lookup("old") == first  # refused: nothing changed
        assert b.rename("old", "new", force=True) == first
        assert b.lookup("new") == first and b.lookup("old") is None
        entry = b.get_entry("new")
        assert entry is not None and entry.lock is None


def test_clean_stale_with_dry_run_keeps_locked_entries(manager: LocalRegistryManager) -> None:
    manager.resolve("locked", "node")
    manager.resolve("idle", "node", acquire_lock=False)
    time.sleep(0.01)
    assert manager.clean_stale(7) == []
    assert manager.clean_stale(0, dry_run=True) == ["idle"]
    assert manager.lookup("idle") is not None
    assert manager.clean_stale(0) == ["idle"]
    assert manager.lookup("idle") is None and manager.lookup("locked") is not None
    with pytest.raises(RegistryInputError):
        manager.clean_stale(-1)


def test_export_import_round_trip(json_path: Path, tmp_path: Path) -> None:
    with LocalRegistryManager(json_path) as a:
        a.resolve("n", "node", {"k": "v"}, acquire_lock=False)
        a.resolve("w", "workcell", acquire_lock=False)
        doc = a.export()
    assert set(doc) == {"version", "created_at", "updated_at", "entries"} and doc["version"] == 1
    with LocalRegistryManager(tmp_path / "other" / "registry.json") as b:
        b.resolve("mine", "manager", acquire_lock=False)
        b.import_entries(doc)  # merge: keeps "mine", adds the rest
        assert sorted(n for n, _ in b.list_entries()) == ["mine", "n", "w"]
        assert b.export()["entries"]["n"] == doc["entries"]["n"]
        b.import_entries(doc, merge=False)
        assert sorted(n for n, _ in b.list_entries()) == ["n", "w"]
        assert [n for n, _ in b.list_entries("workcell")] == ["w"]
        before = b.export()
        with pytest.raises(RegistryInputError):
            b.import_entries({"entries": {"x": {"id": "nope", "component_type": "gadget"}}})
        assert b.export() == before


def test_discovery_as_madsci_finds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "lab"
    (project / ".madsci").mkdir(parents=True)
    (project / "deep" / "er").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MADSCI_REGISTRY_PATH", raising=False)
    monkeypatch.delenv("MADSCI_SETTINGS_DIR", raising=False)
    monkeypatch.chdir(project / "deep" / "er")
    with LocalRegistryManager() as m:
        assert m.registry_path == (project / ".madsci" / "registry.json").resolve()
        assert m.database_path == (project / ".madsci" / "registry.nameplate.db").resolve()
    monkeypatch.setenv("MADSCI_SETTINGS_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with LocalRegistryManager() as m:
        assert m.registry_path == (tmp_path / "home" / ".madsci" / "registry.json").resolve()
    monkeypatch.setenv("MADSCI_REGISTRY_PATH", str(tmp_path / "env" / "reg.json"))
    with LocalRegistryManager() as m:
        assert m.database_path == (tmp_path / "env" / "reg.nameplate.db").resolve()


def _madsci_file(path: Path, count: int) -> dict[str, Any]:
    from madsci.common.registry.local_registry import LocalRegistryManager as MadsciManager

    theirs = MadsciManager(path)
    for i in range(count):
        theirs.resolve(f"c{i}", "node" if i % 2 else "module", {"i": i}, acquire_lock=False)
    exported: dict[str, Any] = theirs.export()
    return exported


def _open_manager(barrier: Any, results: Any, index: int, path: str) -> None:
    try:
        barrier.wait(timeout=60)
        with LocalRegistryManager(Path(path)) as m:
            results.put((index, sorted((n, e.id) for n, e in m.list_entries())))
    except BaseException as error:  # report every failure to the parent instead of dying silently
        results.put((index, ("error", repr(error))))


def test_a_file_written_by_madsci_is_imported_once_under_concurrent_opens(json_path: Path) -> None:
    pytest.importorskip("madsci.common.registry.local_registry", reason="madsci-common is not installed")
    theirs = _madsci_file(json_path, 20)
    original = json_path.read_bytes()
    outcomes = run_processes(_open_manager, [(str(json_path),)] * 4)
    expected = sorted((n, e["id"]) for n, e in theirs["entries"].items())
    assert outcomes == [expected] * 4
    assert json_path.read_bytes() == original  # left untouched
    with Registry(json_path.with_name("registry.nameplate.db")) as reg:
        assert sum(1 for e in reg.changes() if e.action == "import") <= 1
        assert len([e for e in reg.list() if e.kind in ("node", "module")]) == 20
    with LocalRegistryManager(json_path) as m:  # a deleted entry is not re-imported by a later open
        assert m.clean_stale(0) != []
    with LocalRegistryManager(json_path) as m:
        assert m.list_entries() == []


# -- differential: the same call sequences against MADSci's manager and ours ------------------------

Step = Callable[[Any, Any], Any]


def _outcome(manager: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", getattr(manager, method)(*args, **kwargs)
    except Exception as error:  # the differential compares which MADSci class each raised
        for name in ("RegistryLockError", "RegistryError"):
            if any(c.__name__ == name for c in type(error).__mro__):
                return "raise", name
        return "raise", "ValueError" if isinstance(error, ValueError) else type(error).__name__


def _shape(value: Any, ids: dict[str, str]) -> Any:
    """Ids replaced by their order of first appearance, entries by their comparable fields."""
    if isinstance(value, str) and len(value) == 26 and value.isalnum() and value.isupper():
        return ids.setdefault(value, f"id{len(ids)}")
    if isinstance(value, list):
        return sorted((_shape(v, ids) for v in value), key=repr)
    if isinstance(value, tuple):
        return tuple(_shape(v, ids) for v in value)
    if hasattr(value, "component_type"):
        return ("entry", _shape(value.id, ids), value.component_type, dict(value.metadata), value.is_locked())
    return value


SEQUENCES: dict[str, list[tuple[str, tuple[Any, ...], dict[str, Any]]]] = {
    "resolve, lookup, get_entry, release": [
        ("a", ("resolve", "n1", "node", {"x": 1}), {}), ("a", ("lookup", "n1"), {}), ("a", ("lookup", "no"), {}),
        ("a", ("get_entry", "n1"), {}), ("a", ("get_entry", "no"), {}), ("a", ("release", "n1"), {}),
        ("a", ("get_entry", "n1"), {}), ("a", ("release", "no"), {})],
    "one name, one entry across component types": [
        ("a", ("resolve", "n", "node", {"a": 1}), {}), ("a", ("resolve", "n", "module", {"b": 2}), {}),
        ("a", ("get_entry", "n"), {}), ("a", ("list_entries", "module"), {}), ("a", ("list_entries", "node"), {})],
    "two managers contend": [
        ("a", ("resolve", "arm", "module"), {}), ("b", ("resolve", "arm", "module"), {}),
        ("b", ("resolve", "arm", "module"), {"acquire_lock": False}), ("b", ("release", "arm"), {}),
        ("b", ("resolve", "arm", "module"), {}), ("a", ("release", "arm"), {}), ("b", ("resolve", "arm", "module"), {}),
        ("a", ("refresh_lock", "arm"), {}), ("b", ("refresh_lock", "arm"), {}), ("a", ("refresh_lock", "none"), {})],
    "rename and force": [
        ("a", ("resolve", "old", "node"), {}), ("b", ("resolve", "taken", "node"), {"acquire_lock": False}),
        ("b", ("rename", "missing", "x"), {}), ("b", ("rename", "old", "taken"), {}),
        ("b", ("rename", "old", "new"), {}),
        ("b", ("rename", "old", "new", True), {}), ("b", ("lookup", "old"), {}), ("b", ("get_entry", "new"), {}),
        ("a", ("rename", "taken", "fresh"), {})],
    "clean_stale and dry_run": [
        ("a", ("resolve", "held", "node"), {}), ("a", ("resolve", "idle", "node"), {"acquire_lock": False}),
        ("a", ("clean_stale",), {}), ("a", ("clean_stale", 0, True), {}), ("a", ("lookup", "idle"), {}),
        ("a", ("clean_stale", 0), {}), ("a", ("lookup", "idle"), {}), ("a", ("lookup", "held"), {})],
    "import merge and replace": [
        ("a", ("resolve", "kept", "node"), {"acquire_lock": False}),
        ("a", ("import_entries", {"entries": {"kept": {"id": "01J0000000000000000000000A", "component_type": "node"},
                                              "added": {"id": "01J0000000000000000000000B",
                                                        "component_type": "workcell"}}}), {}),
        ("a", ("list_entries",), {}),
        ("a", ("import_entries", {"entries": {"only": {"id": "01J0000000000000000000000C",
                                                       "component_type": "manager"}}}, False), {}),
        ("a", ("list_entries",), {}), ("a", ("lookup", "kept"), {})],
}


@pytest.mark.parametrize("sequence", list(SEQUENCES), ids=list(SEQUENCES))
def test_differential_against_madsci(sequence: str, tmp_path: Path) -> None:
    local_registry = pytest.importorskip("madsci.common.registry.local_registry",
                                         reason="madsci-common is not installed (pip install '.[test]')")
    theirs_path = tmp_path / "theirs" / "registry.json"
    ours_path = tmp_path / "ours" / "registry.json"
    theirs = {k: local_registry.LocalRegistryManager(theirs_path) for k in "ab"}
    ours = {k: LocalRegistryManager(ours_path) for k in "ab"}
    ids_theirs: dict[str, str] = {}
    ids_ours: dict[str, str] = {}
    try:
        for who, (method, *args), kwargs in SEQUENCES[sequence]:
            if method == "clean_stale":
                time.sleep(0.01)
            got_theirs = _outcome(theirs[who], method, tuple(args), kwargs)
            got_ours = _outcome(ours[who], method, tuple(args), kwargs)
            assert _shape(got_ours, ids_ours) == _shape(got_theirs, ids_theirs), (who, method, args, kwargs)
    finally:
        for m in theirs.values():
            m.lock_manager.stop_all_heartbeats()
        for o in ours.values():
            o.close()
