"""What etcd and Consul give their users, on one host: revisions and compare-and-swap, transactions,
watches and blocking waits, pages and metadata queries. Real processes wherever several take part."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nameplate import (
    EntryNotFoundError,
    InvalidInputError,
    InvalidNameError,
    NameTakenError,
    Registry,
    RevisionMismatchError,
    TransactionStateError,
    UnknownKindError,
    ValidationError,
)
from nameplate._paths import locate
from nameplate.backends import open_backend
from nameplate.backends.migrate import MigrationContext, available
from nameplate.migrations import v0001_initial

from conftest import SPAWN, run_processes, table_snapshot, wait_until

# -- revisions and compare-and-swap ------------------------------------------------------------------


def test_an_entry_carries_the_revision_of_its_last_change_and_leases_leave_it(registry: Registry) -> None:
    registry.resolve("lh1", "node")
    created = registry.require("lh1", "node")
    assert created.revision == registry.revision
    assert registry.update("lh1", "node", metadata={"room": "A"}).revision == registry.revision > created.revision
    changed = registry.require("lh1", "node").revision
    registry.acquire("lh1", "node").release()  # lease events are not changes of the entry
    registry.resolve("lh1", "node")  # a read-only resolve neither
    assert registry.require("lh1", "node").revision == changed < registry.revision
    registry.rename("lh1", "lh2", "node")
    assert registry.require("lh2", "node").revision == registry.revision
    assert registry.require("lh2", "node").to_dict()["revision"] == registry.revision


def test_update_and_delete_with_a_stale_revision_change_nothing(registry: Registry, db_path: Path) -> None:
    registry.resolve("lh1", "node", {"v": 0})
    seen = registry.require("lh1", "node").revision
    registry.update("lh1", "node", metadata={"v": 1}, expected_revision=seen)
    before = table_snapshot(db_path)
    with pytest.raises(RevisionMismatchError) as raised:
        registry.update("lh1", "node", metadata={"v": 2}, expected_revision=seen)
    assert raised.value.expected == seen and raised.value.actual == registry.require("lh1", "node").revision
    assert raised.value.exit_code == 4
    with pytest.raises(RevisionMismatchError):
        registry.delete("lh1", "node", expected_revision=seen)
    assert table_snapshot(db_path) == before
    current = registry.require("lh1", "node").revision
    assert registry.delete("lh1", "node", expected_revision=current).metadata == {"v": 1}
    assert registry.lookup("lh1", "node") is None


@pytest.mark.parametrize("bad", [-1, True, "3", 1.5, 2**63])
def test_a_bad_expected_revision_is_refused_before_anything(registry: Registry, bad: Any) -> None:
    registry.resolve("lh1", "node")
    with pytest.raises(InvalidInputError):
        registry.update("lh1", "node", metadata={}, expected_revision=bad)
    with pytest.raises(InvalidInputError):
        registry.delete("lh1", "node", expected_revision=bad)
    assert registry.lookup("lh1", "node") is not None


def _compare_and_swap(barrier: Any, results: Any, index: int, path: str, revision: int) -> None:
    try:
        with Registry(path, timeout=60) as registry:
            barrier.wait(timeout=60)
            try:
                registry.update("counter", "process", metadata={"winner": index}, expected_revision=revision)
                results.put((index, "won"))
            except RevisionMismatchError as error:
                results.put((index, ("lost", error.actual)))
    except BaseException as error:
        results.put((index, ("error", repr(error))))


def test_compare_and_swap_under_contention_lets_exactly_one_of_eight_processes_win(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("counter", "process")
        revision = registry.require("counter", "process").revision
    outcomes = run_processes(_compare_and_swap, [(str(db_path), revision)] * 8)
    winners = [i for i, outcome in enumerate(outcomes) if outcome == "won"]
    assert len(winners) == 1, outcomes
    with Registry(db_path) as registry:
        entry = registry.require("counter", "process")
        assert entry.metadata == {"winner": winners[0]}
        losers = [o for o in outcomes if o != "won"]
        assert losers == [("lost", entry.revision)] * 7
        assert len(registry.changes(revision, kind="process")) == 1


def test_the_migration_gives_existing_entries_their_last_change(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("a", "node")
        registry.update("a", "node", metadata={"x": 1})
        changed = registry.revision
        registry.acquire("a", "node").release()
        registry.resolve("b", "node")
        registry.resolve("c", "node")
    conn = sqlite3.connect(db_path)  # back to before the revision column (whatever the migration's number)
    conn.execute("DELETE FROM event WHERE entry_id = (SELECT id FROM entry WHERE name = 'b')")  # as gc would
    newest = conn.execute("SELECT max(rev) FROM event").fetchone()[0]
    conn.execute("DROP VIEW resolved_entry")
    conn.execute("ALTER TABLE entry DROP COLUMN revision")
    conn.execute(next(s for s in v0001_initial.STATEMENTS if "CREATE VIEW resolved_entry" in s))
    conn.commit()
    conn.close()
    step = next(m for m in available() if m.name == "entry revision")
    backend = open_backend(locate(db_path), timeout=10.0, synchronous="NORMAL")
    try:
        with backend.write() as tx:
            step.module.upgrade(MigrationContext(tx, backend))
    finally:
        backend.close()
    with Registry(db_path) as registry:
        assert registry.require("a", "node").revision == changed
        assert registry.require("b", "node").revision == newest  # history pruned: the newest revision there is


# -- transactions ------------------------------------------------------------------------------------------


def test_a_transaction_applies_everything_in_order_and_gives_results_after_the_block(registry: Registry) -> None:
    registry.resolve("old", "node")
    with registry.transaction() as tx:
        made = tx.resolve("lh1", "node", {"room": "A"})
        provider = tx.register("Pcr", "provider", capabilities=["pcr"])
        renamed = tx.rename("lh1", "lh2", "node")
        updated = tx.update("lh2", "node", metadata={"room": "B"}, merge=True)
        gone = tx.delete("old", "node")
        with pytest.raises(TransactionStateError):
            _ = made.value
    assert made.id == renamed.value == updated.value.id == registry.lookup("lh2", "node")
    assert updated.value.metadata == {"room": "B"} and provider.value.capabilities == {"pcr"}
    assert gone.value.name == "old" and registry.lookup("old", "node") is None
    assert tx.revision == registry.revision
    actions = [e.action for e in registry.changes(tx.revision - 5)]
    assert actions == ["create", "register", "rename", "update", "delete"]
    with pytest.raises(TransactionStateError):
        tx.resolve("late", "node")


def test_a_failed_guard_or_operation_writes_nothing(registry: Registry, db_path: Path) -> None:
    registry.resolve("lh1", "node")
    revision = registry.require("lh1", "node").revision
    registry.update("lh1", "node", metadata={"moved": True})
    before = table_snapshot(db_path)
    with pytest.raises(RevisionMismatchError) as raised, registry.transaction() as tx:
        tx.require("lh1", "node", revision=revision)
        tx.resolve("new1", "node")
    assert raised.value.expected == revision
    with pytest.raises(RevisionMismatchError), registry.transaction() as tx:
        tx.resolve("new1", "node")
        tx.require_absent("lh1", "node")
    with pytest.raises(RevisionMismatchError), registry.transaction() as tx:
        tx.require("ghost", "node")
        tx.resolve("new1", "node")
    with pytest.raises(EntryNotFoundError), registry.transaction() as tx:
        tx.resolve("new1", "node")
        tx.delete("ghost", "node")
    with pytest.raises(NameTakenError), registry.transaction() as tx:
        tx.resolve("new1", "node")
        tx.resolve("new2", "node")
        tx.rename("new1", "new2", "node")
    with pytest.raises(RevisionMismatchError), registry.transaction() as tx:
        tx.resolve("new1", "node")
        tx.update("lh1", "node", metadata={}, expected_revision=revision)
    with pytest.raises(ZeroDivisionError), registry.transaction() as tx:
        tx.resolve("new1", "node")
        _ = 1 / 0
    assert table_snapshot(db_path) == before


def test_bad_input_in_a_transaction_is_refused_at_the_call_and_before_the_lock(registry: Registry,
                                                                              db_path: Path) -> None:
    before = table_snapshot(db_path)
    with pytest.raises(InvalidNameError), registry.transaction() as tx:
        tx.resolve("fine", "node")
        tx.resolve("", "node")
    with pytest.raises(InvalidInputError), registry.transaction() as tx:
        tx.update("fine", "node", metadata={"bad": object()})
    with pytest.raises(ValidationError), registry.transaction() as tx:  # the kind's pattern, outside the lock
        tx.resolve("fine", "node")
        tx.register("not_pascal", "step", {"sagemaker_step_type": "Processing"})
    with pytest.raises(InvalidInputError, match="pass kind= to tx.rename"), registry.transaction() as tx:
        tx.resolve("Fresh", "step")
        tx.rename("Fresh", "not_pascal")  # the pattern cannot be matched before the lock without kind=
    with pytest.raises(InvalidNameError), registry.transaction() as tx:
        tx.resolve("Fresh", "step")
        tx.rename("Fresh", "not_pascal", "step")
    assert table_snapshot(db_path) == before
    with registry.transaction() as tx:
        pass
    assert tx.revision == registry.revision


_TRANSACTIONS = """
import sys
from nameplate import Registry
registry = Registry(sys.argv[1])
start = int(sys.argv[2])
print("ready", flush=True)
group = start
while True:
    with registry.transaction() as tx:
        for member in range(5):
            tx.resolve(f"g{group}_{member}", "node", {"group": group, "payload": "x" * 300})
        tx.update("tally", "process", metadata={"groups": group + 1})
    group += 1
"""


def _tally(path: Path) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute("SELECT json_extract(metadata, '$.groups') FROM entry WHERE name = 'tally'").fetchone()
    finally:
        conn.close()
    return int(row[0]) if row else 0


def test_transactions_are_all_or_nothing_under_kill_9(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("tally", "process", {"groups": 0})
    start = 0
    for round_number in range(4):
        child = subprocess.Popen([sys.executable, "-c", _TRANSACTIONS, str(db_path), str(start)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            # Kill it in the middle of later batches, once it has committed one (on a loaded machine
            # the first batch can take longer than any fixed pause).
            assert wait_until(lambda start=start: _tally(db_path) > start, timeout=30)
            time.sleep(0.05 + 0.07 * round_number)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            if child.stdout is not None:
                child.stdout.close()
        conn = sqlite3.connect(db_path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
        with Registry(db_path) as registry:
            groups = registry.require("tally", "process").metadata["groups"]
            names = {e.name for e in registry.list("node")}
        assert names == {f"g{g}_{m}" for g in range(groups) for m in range(5)}  # whole groups only
        assert groups > start
        start = groups


# -- watching ---------------------------------------------------------------------------------------------


def _watcher(barrier: Any, results: Any, index: int, path: str, since: int, expected: int) -> None:
    try:
        with Registry(path, timeout=60) as registry:
            seen: list[int] = []
            deadline = time.monotonic() + 60
            barrier.wait(timeout=60)
            for event in registry.follow(since, prefix="w_", interval=0.05,
                                         stop=lambda: len(seen) >= expected or time.monotonic() > deadline):
                seen.append(event.rev)
        results.put((index, seen))
    except BaseException as error:
        results.put((index, ("error", repr(error))))


def _writer(barrier: Any, results: Any, index: int, path: str, count: int) -> None:
    try:
        with Registry(path, timeout=60) as registry:
            barrier.wait(timeout=60)
            for n in range(count):
                registry.resolve(f"w_{index}_{n}", "node")
                registry.resolve(f"x_{index}_{n}", "node")  # not watched
                if n % 5 == 0:
                    registry.update(f"w_{index}_{n}", "node", metadata={"n": n})
        results.put((index, "done"))
    except BaseException as error:
        results.put((index, ("error", repr(error))))


def _role(barrier: Any, results: Any, index: int, role: str, *args: Any) -> None:
    (_watcher if role == "watch" else _writer)(barrier, results, index, *args)


def test_watchers_in_other_processes_see_every_matching_event_once_in_order(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("w_before", "node")  # before since: never seen
        since = registry.revision
    count, writers = 30, 2
    expected = writers * (count + count // 5)
    outcomes = run_processes(_role, [("watch", str(db_path), since, expected)] * 3
                             + [("write", str(db_path), count)] * writers)
    with Registry(db_path) as registry:
        truth = [e.rev for e in registry.changes(since, prefix="w_")]
        assert all(e.name is not None and e.name.startswith("w_") for e in registry.changes(since, prefix="w_"))
    assert len(truth) == expected
    for seen in outcomes[:3]:
        assert seen == truth


def test_filters_by_name_kind_and_workspace_and_renames_match_both_names(registry: Registry) -> None:
    registry.create_workspace("lab")
    since = registry.revision
    registry.resolve("lh1", "node")
    registry.resolve("lh1", "process")
    registry.resolve("lab_only", "node", workspace="lab")
    registry.rename("lh1", "lh9", "node")
    assert [(e.action, e.kind) for e in registry.changes(since, name="lh1")] == [
        ("create", "node"), ("create", "process"), ("rename", "node")]
    assert [e.action for e in registry.changes(since, name="lh9")] == ["rename"]
    assert [e.workspace for e in registry.changes(since, kind="node")] == ["core", "lab", "core"]
    assert [e.kind for e in registry.changes(since, workspace="lab")] == ["node"]
    assert registry.changes(since, name="lh1", kind="process", limit=5)[0].kind == "process"
    assert list(registry.follow(since, name="lh9", stop=lambda: True))[0].action == "rename"
    with pytest.raises(InvalidInputError):
        registry.changes(since, prefix="")


def _wait_child(barrier: Any, results: Any, index: int, path: str, since: int) -> None:
    try:
        with Registry(path, timeout=60) as registry:
            barrier.wait(timeout=60)
            event = registry.wait_for_change("lh1", "node", since=since, timeout=30)
            woke = time.time()
        results.put((index, (event.rev if event else None, event.action if event else None, woke)))
    except BaseException as error:
        results.put((index, ("error", repr(error))))


def test_wait_for_change_wakes_on_the_change_in_another_process(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("lh1", "node")
        registry.resolve("other", "node")
        since = registry.revision
    barrier = SPAWN.Barrier(2)
    results = SPAWN.Queue()
    child = SPAWN.Process(target=_wait_child, args=(barrier, results, 0, str(db_path), since), daemon=True)
    child.start()
    try:
        with Registry(db_path) as registry:
            barrier.wait(timeout=60)
            time.sleep(0.5)
            registry.resolve("other", "node", {"noise": 1})  # another name: no wake
            time.sleep(0.2)
            changed_at = time.time()
            registry.update("lh1", "node", metadata={"room": "A"})
            rev = registry.revision
        _, (woke_rev, action, woke) = results.get(timeout=30)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
    assert (woke_rev, action) == (rev, "update")
    assert woke - changed_at < 0.5  # woken by the commit, not by a coarse poll (typically ~5 ms)


def test_wait_for_change_returns_past_changes_at_once_and_none_after_its_timeout(registry: Registry) -> None:
    registry.resolve("lh1", "node")
    since = registry.revision
    registry.update("lh1", "node", metadata={"v": 1})
    event = registry.wait_for_change("lh1", "node", since=since, timeout=5)
    assert event is not None and event.action == "update"
    started = time.monotonic()
    assert registry.wait_for_change("lh1", "node", since=event.rev, timeout=0.2) is None
    assert 0.2 <= time.monotonic() - started < 2
    registry.create_workspace("lab")
    since = registry.revision

    def change_core() -> None:
        time.sleep(0.2)
        with Registry(registry.location.url or registry.path) as other:  # the same registry, on either backend
            other.update("lh1", "node", metadata={"v": 2})

    thread = threading.Thread(target=change_core)
    thread.start()
    inherited = registry.wait_for_change("lh1", "node", since=since, timeout=10, workspace="lab")
    thread.join()
    assert inherited is not None and inherited.workspace == "core"
    with pytest.raises(UnknownKindError):  # an unknown kind is an error, not an endless wait
        registry.wait_for_change("lh1", "nokind", timeout=0.1)


# -- pages and metadata -------------------------------------------------------------------------------------


def test_pages_by_keyset_cover_the_listing_once(registry: Registry) -> None:
    for i in range(23):
        registry.resolve(f"lh_{i:02d}", "node", {"room": "A" if i % 3 == 0 else "B"})
        registry.resolve(f"p{i}", "process")
    everything = registry.list()
    pages: list[list[str]] = []
    after = None
    while True:
        page = registry.list(limit=10, after=after)
        if not page:
            break
        pages.append([e.name for e in page])
        after = page[-1]
    assert [n for page in pages for n in page] == [e.name for e in everything]
    assert [len(p) for p in pages] == [10, 10, 10, 10, 6]
    first = registry.list("node", prefix="lh_", limit=5)
    assert [e.name for e in first] == [f"lh_{i:02d}" for i in range(5)]
    assert [e.name for e in registry.list("node", prefix="lh_", limit=5, after="lh_04")] == [
        f"lh_{i:02d}" for i in range(5, 10)]
    with pytest.raises(InvalidInputError):
        registry.list(after="lh_04")  # a bare name needs kind=
    with pytest.raises(InvalidInputError):
        registry.list("node", limit=0)


def test_find_by_metadata_compares_exact_json_values(registry: Registry) -> None:
    registry.resolve("a", "node", {"room": "A", "n": 1})
    registry.resolve("b", "node", {"room": "B", "n": True})
    registry.register("c", "node", capabilities=["pcr"], metadata={"room": "A", "n": 1.0})
    assert [e.name for e in registry.find("node", metadata={"room": "A"})] == ["a", "c"]
    assert [e.name for e in registry.find("node", metadata={"n": 1})] == ["a"]
    assert [e.name for e in registry.find("node", ["pcr"], metadata={"room": "A"})] == ["c"]
    assert registry.find("node", metadata={"missing": None}) == []
    with pytest.raises(InvalidInputError):
        registry.find("node", metadata=["room"])  # type: ignore[arg-type]


def test_a_cached_registry_reports_the_revision_another_writer_left(db_path: Path) -> None:
    with Registry(db_path) as cached, Registry(db_path) as other:
        cached.resolve("lh1", "node")
        assert cached.resolve("lh1", "node") == cached.lookup("lh1", "node")  # warm: answered from the cache
        before = cached.require("lh1", "node").revision
        other.update("lh1", "node", metadata={"room": "A"})
        after = cached.require("lh1", "node")
        assert after.revision == other.revision > before and after.metadata == {"room": "A"}
        cached.update("lh1", "node", metadata={"room": "B"}, expected_revision=after.revision)
        with pytest.raises(RevisionMismatchError):
            other.update("lh1", "node", metadata={"room": "C"}, expected_revision=after.revision)


_NAMES = st.lists(st.text(alphabet="ab_é1", min_size=1, max_size=4), max_size=25, unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=_NAMES, page=st.integers(min_value=1, max_value=7), prefix=st.sampled_from(["a", "b_", "é", "1a"]))
def test_pages_concatenate_to_the_listing_and_prefixes_match_startswith(registry: Registry, names: list[str],
                                                                         page: int, prefix: str) -> None:
    kind = f"k{registry.revision}"  # a fresh kind per example: the listing holds this example's names only
    registry.define_kind(kind, strict=False)
    for name in names:
        registry.resolve(name, kind)
    everything = registry.list(kind)
    for start_with in (None, prefix):
        wanted = [e for e in everything if start_with is None or e.name.startswith(start_with)]
        collected: list[Any] = []
        after: str | None = None
        while True:
            chunk = registry.list(kind, prefix=start_with, limit=page, after=after)
            assert len(chunk) <= page
            collected.extend(chunk)
            if len(chunk) < page:
                break
            after = chunk[-1].name
        assert collected == wanted


def test_wait_for_change_sees_a_name_being_created_and_deleted(registry: Registry) -> None:
    since = registry.revision

    def create_then_delete() -> None:
        with Registry(registry.location.url or registry.path) as other:  # the same registry, on either backend
            time.sleep(0.1)
            other.resolve("later", "node")
            time.sleep(0.1)
            other.delete("later", "node")

    thread = threading.Thread(target=create_then_delete)
    thread.start()
    created = registry.wait_for_change("later", "node", since=since, timeout=10)
    assert created is not None and created.action == "create"
    deleted = registry.wait_for_change("later", "node", since=created.rev, timeout=10)
    thread.join()
    assert deleted is not None and deleted.action == "delete"
