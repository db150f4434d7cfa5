"""Guarantees 3 and 4 with real processes: fenced leases, dead owners, hung owners, lock-delay."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from nameplate import (
    EntryNotFoundError,
    InvalidInputError,
    LeaseHeldError,
    LeaseLost,
    NameplateError,
    NotLeaseHolderError,
    Registry,
    UnknownKindError,
)
from nameplate._liveness import process_start

from _session_helpers import events, insert_session, session_row, sleeper, stop_child
from conftest import run_processes, table_snapshot


def _content(path: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table but ``session``, whose rows the heartbeats keep renewing meanwhile."""
    snapshot = table_snapshot(path)
    del snapshot["session"]
    return snapshot

# -- contention ------------------------------------------------------------------------------------


def _contend(barrier: Any, results: Any, index: int, path: str, rounds: int) -> None:
    try:
        tokens = []
        with Registry(path, ttl=5, lock_delay=0) as registry:
            barrier.wait(timeout=60)
            for _ in range(rounds):
                with registry.acquire("shared", "node", wait=60) as lease:
                    registry.update("shared", "node", metadata={"token": lease.token, "writer": index}, lease=lease)
                    tokens.append(lease.token)
        results.put((index, tokens))
    except BaseException as error:
        results.put((index, ("error", repr(error))))


def test_two_processes_contending_never_hold_the_lease_at_once(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("shared", "node")
    outcomes = run_processes(_contend, [(str(db_url), 60)] * 2, timeout=240)
    assert all(not (isinstance(o, tuple) and o and o[0] == "error") for o in outcomes), outcomes
    for tokens in outcomes:
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert sorted(outcomes[0] + outcomes[1]) == list(range(1, 121))  # every acquisition the next token
    # In log order, every fenced write carries the token of the latest acquisition, and every
    # acquisition follows the previous holder's release: never two holders, never a stale write.
    log = events(db_url, "lease.acquire", "lease.release", "update")
    assert len(log) == 3 * 120
    current = None
    for action, detail in log:
        if action == "lease.acquire":
            assert current is None, "acquired while another lease was held"
            current = detail["token"]
        elif action == "update":
            assert detail["metadata"]["after"]["token"] == current
        else:
            assert detail["token"] == current
            current = None


# -- owners that die or hang -------------------------------------------------------------------------

_HOLDER = r"""
import json, sys
from nameplate import Registry, LeaseLost
path, ttl, lock_delay = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
registry = Registry(path, ttl=ttl, lock_delay=lock_delay)
calls = []
lease = registry.acquire("device", "node", on_lost=lambda lost: calls.append(lost.token))
registry.resolve("child_ephemeral", "node", ephemeral=True)
print(json.dumps({"token": lease.token, "pid": registry.session().pid, "session": registry.session().id}),
      flush=True)
sys.stdin.readline()  # the parent stops and resumes us here
noticed = lease.lost_event.wait(timeout=60)
outcome = {"lost_flag": noticed, "on_lost_calls": calls}
try:
    lease.check()
    outcome["check"] = "passed"
except LeaseLost:
    outcome["check"] = "LeaseLost"
try:
    registry.update("device", "node", metadata={"stale": True}, lease=lease)
    outcome["fenced_write"] = "landed"
except LeaseLost:
    outcome["fenced_write"] = "LeaseLost"
print(json.dumps(outcome), flush=True)
"""


def _start_holder(path: Path, ttl: float, lock_delay: float) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), str(ttl), str(lock_delay)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        stop_child(child)
        pytest.fail("the holder process died before acquiring")
    return child, json.loads(line)


def test_a_killed_holder_frees_its_lease_without_waiting_for_the_ttl(db_url: str) -> None:
    with Registry(db_url) as setup:
        setup.resolve("device", "node")
    child, info = _start_holder(db_url, ttl=60, lock_delay=60)
    try:
        with Registry(db_url, ttl=60) as registry:
            with pytest.raises(LeaseHeldError) as caught:
                registry.acquire("device", "node")
            assert caught.value.holder["pid"] == info["pid"]
            assert registry.lookup("child_ephemeral", "node") is not None
            child.send_signal(signal.SIGKILL)  # not waited for yet: the child is a zombie, still dead
            started = time.monotonic()
            lease = registry.acquire("device", "node", wait=30)
            assert time.monotonic() - started < 20  # the ttl is 60 s and the lock-delay 60 s
            assert lease.token == info["token"] + 1
            assert registry.lookup("child_ephemeral", "node") is None  # ephemeral entries go with it
            dead = [s for s in registry.sessions(alive=False) if s.pid == info["pid"]]
            assert [s.state for s in dead] == ["dead"]
    finally:
        stop_child(child)
    assert [a for a, _ in events(db_url, "lease.free", "session.reap")] == ["lease.free", "session.reap"]
    assert all("lock_delay" not in detail for _, detail in events(db_url, "lease.free"))


def test_a_hung_holder_loses_its_lease_after_ttl_and_lock_delay_and_learns_it(db_url: str) -> None:
    ttl, lock_delay = 1.0, 1.5
    with Registry(db_url) as setup:
        setup.resolve("device", "node")
    child, info = _start_holder(db_url, ttl=ttl, lock_delay=lock_delay)
    assert child.stdin is not None and child.stdout is not None
    try:
        os.kill(child.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        with Registry(db_url, ttl=30, lock_delay=lock_delay) as registry:
            with pytest.raises(LeaseHeldError):
                registry.acquire("device", "node")  # stopped, not dead: its ttl has not run out
            lease = registry.acquire("device", "node", wait=60)
            acquired_at = time.monotonic()
            # The stopped holder's last beat is its last word; both readings are CLOCK_MONOTONIC.
            last_beat = session_row(db_url, info["session"])["beat_mono"]
            assert acquired_at - last_beat >= ttl + lock_delay
            assert acquired_at - stopped_at < ttl + lock_delay + 30
            assert lease.token == info["token"] + 1
            assert registry.lookup("child_ephemeral", "node") is None
            os.kill(child.pid, signal.SIGCONT)
            child.stdin.write("go\n")
            child.stdin.flush()
            outcome = json.loads(child.stdout.readline())
            assert outcome == {"lost_flag": True, "on_lost_calls": [info["token"]], "check": "LeaseLost",
                               "fenced_write": "LeaseLost"}
            assert "stale" not in registry.get("device", "node").metadata
            lease.check()  # the new holder is unaffected
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
        stop_child(child)
    expired = events(db_url, "lease.expire", "session.reap")
    assert [a for a, _ in expired][:2] == ["lease.expire", "session.reap"]
    assert expired[0][1]["lock_delay"] == lock_delay and expired[1][1]["state"] == "expired"


@pytest.mark.parametrize("lock_delay", [0, 3600])
def test_an_expired_holder_leaves_a_lock_delay_unless_it_is_zero(db_url: str, lock_delay: float) -> None:
    bystander = sleeper()  # alive, so only the missing heartbeat can end its session
    try:
        start = process_start(bystander.pid)
        assert start is not None
        with Registry(db_url, lock_delay=lock_delay) as registry:
            registry.resolve("device", "node")
            insert_session(db_url, "HUNG", pid=bystander.pid, process_start=start, ttl=1, beat_age=5,
                           holds=("device",))
            if lock_delay == 0:
                assert registry.acquire("device", "node").token == 2
            else:
                with pytest.raises(LeaseHeldError, match="lock-delay") as caught:
                    registry.acquire("device", "node", wait=0.3)
                assert caught.value.holder is None and caught.value.delay_remaining > 3000
            assert session_row(db_url, "HUNG")["state"] == "expired"
    finally:
        stop_child(bystander)


@pytest.mark.sqlite_only  # reads SQLite's statement trace
def test_a_dead_holder_is_reaped_inside_the_acquiring_transaction(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("device", "node")
        registry.session()  # opened beforehand: its own transaction is not the one under test
        gone = sleeper()
        start = process_start(gone.pid)
        stop_child(gone)
        assert start is not None
        insert_session(db_url, "DEAD", pid=gone.pid, process_start=start, holds=("device",))
        statements: list[str] = []
        conn = registry._backend.connection()
        conn.set_trace_callback(statements.append)
        try:
            lease = registry.acquire("device", "node")
        finally:
            conn.set_trace_callback(None)
        assert lease.token == 2
        assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")] == [
            "BEGIN IMMEDIATE", "COMMIT"]
        assert [a for a, _ in events(db_url, "lease.free", "session.reap", "lease.acquire")] == [
            "lease.free", "session.reap", "lease.acquire"]


# -- fenced writes and who may change a leased entry -----------------------------------------------


def test_a_stale_token_writes_nothing(db_url: str) -> None:
    lost: list[str] = []
    with Registry(db_url, ttl=0.6) as holder, Registry(db_url) as operator:
        holder.resolve("device", "node")
        lease = holder.acquire("device", "node", on_lost=lambda gone: lost.append(gone.name))
        with pytest.raises(NotLeaseHolderError):
            operator.release("device", "node")
        assert operator.release("device", "node", force=True) is True
        successor = operator.acquire("device", "node")
        assert successor.token == lease.token + 1
        before = _content(db_url)
        with pytest.raises(LeaseLost):
            holder.update("device", "node", metadata={"x": 1}, lease=lease)
        assert _content(db_url) == before
        assert lost == ["device"]  # the fenced write found it first and said so
        with pytest.raises(LeaseLost):
            lease.check()
        assert lease.release() is False
        operator.update("device", "node", metadata={"x": 2}, lease=successor)
        assert holder.get("device", "node").metadata == {"x": 2}
    breaks = events(db_url, "lease.break")
    assert len(breaks) == 1 and breaks[0][1]["token"] == 1 and breaks[0][1]["holder_pid"] == os.getpid()


def test_a_lease_broken_by_force_is_noticed_by_the_heartbeat(db_url: str) -> None:
    with Registry(db_url, ttl=0.6) as holder, Registry(db_url) as operator:
        holder.resolve("device", "node")
        noticed = threading.Event()
        lease = holder.acquire("device", "node", on_lost=lambda gone: noticed.set())
        operator.release("device", "node", force=True)
        assert noticed.wait(30) and lease.lost_event.is_set()  # no call of ours asked: the beat found it


def test_only_the_holder_changes_a_leased_entry_but_a_dead_holder_does_not_pin_it(db_url: str) -> None:
    with Registry(db_url) as first, Registry(db_url) as second:
        for name in ("held", "orphan"):
            first.resolve(name, "node")
        first.acquire("held", "node")
        before = _content(db_url)
        for change in (lambda: second.update("held", "node", metadata={"x": 1}),
                       lambda: second.rename("held", "renamed", "node"),
                       lambda: second.delete("held", "node")):
            with pytest.raises(LeaseHeldError, match="only the holder") as caught:
                change()
            assert caught.value.holder["pid"] == os.getpid()
        assert _content(db_url) == before
        first.update("held", "node", metadata={"x": 1})  # the holder itself may, fenced or not
        gone = sleeper()
        start = process_start(gone.pid)
        stop_child(gone)
        assert start is not None
        insert_session(db_url, "DEAD", pid=gone.pid, process_start=start, holds=("orphan",))
        second.delete("orphan", "node")  # its holder died: reaped in the same transaction
        assert session_row(db_url, "DEAD")["state"] == "dead"


def test_update_refuses_a_lease_on_another_entry(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("a", "node")
        registry.resolve("b", "node")
        lease = registry.acquire("a", "node")
        with pytest.raises(InvalidInputError, match="not on 'b'"):
            registry.update("b", "node", metadata={"x": 1}, lease=lease)


# -- acquire, release, wait ------------------------------------------------------------------------


def test_tokens_grow_at_every_acquisition_and_a_clean_release_has_no_lock_delay(db_url: str) -> None:
    with Registry(db_url, lock_delay=3600) as first, Registry(db_url, lock_delay=3600) as second:
        first.resolve("device", "node", lock=True)
        lease = first.lease("device", "node")
        assert lease is not None and lease.token == 1 and lease.name == "device" and lease.kind == "node"
        assert lease.entry_id == first.lookup("device", "node")
        assert first.acquire("device", "node") is lease  # this thread already holds it: re-entered
        with pytest.raises(LeaseHeldError) as caught:
            second.resolve("device", "node", lock=True)
        message = str(caught.value)
        assert f"pid {os.getpid()}" in message and "since" in message and "wait=" in message
        assert set(caught.value.holder) >= {"pid", "host", "label", "since"}
        assert first.release("device", "node") is True and lease.held  # one acquisition still open
        assert first.release("device", "node") is True and lease.released
        assert first.release("device", "node") is False
        assert first.lease("device", "node") is None
        with second.acquire("device", "node") as taken:  # at once, despite a one-hour lock-delay setting
            assert taken.token == 2 and taken.held
        assert taken.released and not taken.lost
        assert first.acquire("device", "node").token == 3
    actions = [a for a, _ in events(db_url, "lease.acquire", "lease.release")]
    assert actions == ["lease.acquire", "lease.release", "lease.acquire", "lease.release", "lease.acquire",
                       "lease.release"]  # the last one at close


def test_waiting_acquire_gets_the_lease_when_it_is_released(db_url: str) -> None:
    with Registry(db_url) as first, Registry(db_url) as second:
        first.resolve("device", "node")
        lease = first.acquire("device", "node")
        timer = threading.Timer(0.5, lease.release)
        timer.start()
        started = time.monotonic()
        assert second.acquire("device", "node", wait=60).token == 2
        assert time.monotonic() - started >= 0.4
        timer.join()
        started = time.monotonic()
        with pytest.raises(LeaseHeldError, match="after waiting 0.3 s"):
            first.acquire("device", "node", wait=0.3)
        assert time.monotonic() - started >= 0.3


def test_acquire_validates_its_arguments(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("device", "node")
        before = _content(db_url)
        with pytest.raises(InvalidInputError):
            registry.acquire("device", "node", wait=-1)
        with pytest.raises(EntryNotFoundError):
            registry.acquire("missing", "node")
        assert _content(db_url) == before


def test_locks_lists_every_lease_with_its_holder(db_url: str) -> None:
    with Registry(db_url, label="robot-arm") as registry:
        registry.resolve("device", "node")
        assert registry.locks() == []
        lease = registry.acquire("device", "node")
        (held,) = registry.locks()
        assert (held.name, held.kind, held.workspace, held.token, held.pid, held.label) == (
            "device", "node", "core", lease.token, os.getpid(), "robot-arm")
        assert held.entry_id == lease.entry_id and held.session_id == lease.session_id


def test_clean_stale_removes_old_unleased_entries(db_path: Path) -> None:
    with Registry(db_path) as registry:
        for name in ("old", "old_but_leased", "fresh"):
            registry.resolve(name, "node")
        conn = sqlite3.connect(db_path)
        conn.execute("UPDATE entry SET last_seen_at = last_seen_at - 30 * 86400 WHERE name LIKE 'old%'")
        conn.commit()
        conn.close()
        registry.acquire("old_but_leased", "node")
        assert [e.name for e in registry.clean_stale(dry_run=True)] == ["old"]
        assert registry.lookup("old", "node") is not None
        assert [e.name for e in registry.clean_stale(older_than=timedelta(days=7))] == ["old"]
        assert registry.lookup("old", "node") is None
        assert registry.lookup("old_but_leased", "node") is not None
        assert registry.clean_stale() == []
        assert registry.clean_stale(older_than=timedelta(days=60)) == []
        with pytest.raises(InvalidInputError):
            registry.clean_stale(older_than=timedelta(0))


def test_clean_stale_logs_the_age_as_an_operator_wrote_it(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("old", "node")
        conn = sqlite3.connect(db_path)
        conn.execute("UPDATE entry SET last_seen_at = last_seen_at - 30 * 86400")
        conn.commit()
        conn.close()
        registry.clean_stale(older_than=timedelta(days=7))
        deleted = [e for e in registry.changes() if e.action == "delete"]
    assert deleted[0].detail["reason"] == "stale: not seen for over 7 days"


# -- one guard for every write of a leased entry -------------------------------------------------------

_HOLD = """
import sys, time
from nameplate import Registry
registry = Registry(sys.argv[1], ttl=30)
with registry.workspace("dev"):
    registry.acquire("dev_device", "node")
registry.acquire("device", "node")
registry.acquire("probe", "provider")
print("held", flush=True)
time.sleep(600)
"""


def _cli(db_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nameplate", "--db", str(db_path), *args], capture_output=True,
                          text=True, timeout=60)


def test_no_write_path_changes_an_entry_leased_by_another_live_process(db_url: str) -> None:
    with Registry(db_url) as setup:
        setup.resolve("device", "node", {"v": 1})
        setup.register("probe", "provider", {"description": "a probe"}, capabilities=["scan"])
        setup.create_workspace("dev")
        setup.resolve("dev_device", "node", {"v": 1}, workspace="dev")
        setup.resolve("free", "node")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(db_url)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with Registry(db_url) as other:
            before = other.export()
            revision = other.revision
            attempts: dict[str, Any] = {
                "resolve with new metadata": lambda: other.resolve("device", "node", {"v": 2}),
                "resolve ephemeral with metadata": lambda: other.resolve("device", "node", {"v": 2}, ephemeral=True),
                "resolve with metadata and lock": lambda: other.resolve("device", "node", {"v": 2}, lock=True),
                "resolve with lock": lambda: other.resolve("device", "node", lock=True),
                "update": lambda: other.update("device", "node", metadata={"v": 2}),
                "update merge": lambda: other.update("device", "node", metadata={"w": 2}, merge=True),
                "rename": lambda: other.rename("device", "renamed", "node"),
                "rename to itself": lambda: other.rename("device", "device", "node"),
                "delete": lambda: other.delete("device", "node"),
                "register replace": lambda: other.register("probe", "provider", {"description": "changed"},
                                                           capabilities=["scan"], on_conflict="replace"),
                "register a definition onto a resolved entry": lambda: other.register(
                    "device", "node", {"room": "A"}),
                "register many": lambda: other.register_many(
                    [{"name": "free", "kind": "node", "definition": {"room": "B"}},
                     {"name": "device", "kind": "node", "definition": {"room": "B"}}]),
                "promote": lambda: other.promote("dev_device", "node", workspace="dev"),
                "acquire": lambda: other.acquire("device", "node"),
            }
            for what, attempt in attempts.items():
                with pytest.raises(LeaseHeldError) as caught:
                    attempt()
                assert caught.value.holder and str(holder.pid) in str(caught.value), what
            refused_elsewhere = {
                "delete its workspace": lambda: other.delete_workspace("dev"),
                "import over it": lambda: other.import_document(dict(before, entries=[]), replace=True),
            }
            for what, attempt in refused_elsewhere.items():
                with pytest.raises(NameplateError, match="lease"):
                    attempt()
                    pytest.fail(f"{what} went through while another process holds the lease")
            assert other.get("free", "node").definition is None  # the batch with "device" wrote nothing
            assert other.resolve("device", "node") == before_id(before, "device")  # reading the id is fine
            assert other.clean_stale(timedelta(microseconds=1)) != []  # it removes "free", never "device"
            for args in (("resolve", "device", "--kind", "node", "--meta", "v=2"),
                         ("rename", "device", "renamed", "--kind", "node"), ("rm", "device", "--kind", "node")):
                result = _cli(db_url, *args)
                assert result.returncode == 4 and result.stderr.count("\n") == 1, (args, result.stderr)
                assert "leased by" in result.stderr or "held by" in result.stderr
            after = other.export()
            content_events = [e for e in other.changes(revision) if e.name in ("device", "probe", "dev_device")
                              and not e.action.startswith("lease.")]
        assert content_events == []
        unchanged = [e for e in before["entries"] if e["name"] != "free"]
        assert [e for e in after["entries"] if e["name"] != "free"] == unchanged
    finally:
        stop_child(holder)


def before_id(document: dict[str, Any], name: str) -> str:
    return next(e["id"] for e in document["entries"] if e["name"] == name)


# -- threads of one process --------------------------------------------------------------------------


def test_a_lease_is_exclusive_between_the_threads_of_one_registry(db_url: str) -> None:
    with Registry(db_url, lock_delay=0) as registry:
        registry.resolve("shared", "node")
        inside: list[int] = []
        overlaps: list[tuple[int, ...]] = []
        tokens: list[int] = []
        guard = threading.Lock()
        start = threading.Barrier(16)
        failures: list[BaseException] = []

        def work(index: int) -> None:
            try:
                start.wait(timeout=30)
                for _ in range(5):
                    with registry.acquire("shared", "node", wait=60) as lease:
                        with guard:
                            inside.append(index)
                            if len(inside) > 1:
                                overlaps.append(tuple(inside))
                            tokens.append(lease.token)
                        registry.update("shared", "node", metadata={"writer": index}, lease=lease)
                        time.sleep(0.001)
                        with guard:
                            inside.remove(index)
            except BaseException as error:  # reported below: the test must see every thread's failure
                failures.append(error)

        threads = [threading.Thread(target=work, args=(i,), name=f"worker-{i}") for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures and not overlaps
        assert tokens == list(range(1, 81))  # one acquisition after the other, each with a new token


def test_another_thread_is_told_which_thread_holds_the_lease(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("shared", "node")
        lease = registry.acquire("shared", "node")
        seen: dict[str, Any] = {}

        def other_thread() -> None:
            for what, call in (("acquire", lambda: registry.acquire("shared", "node")),
                               ("update", lambda: registry.update("shared", "node", metadata={"x": 1})),
                               ("release", lambda: registry.release("shared", "node"))):
                try:
                    call()
                except (LeaseHeldError, NotLeaseHolderError) as error:
                    seen[what] = error
            seen["lease"] = registry.lease("shared", "node")
            registry.update("shared", "node", metadata={"with": "the lease"}, lease=lease)  # handed over: fine

        thread = threading.Thread(target=other_thread, name="helper")
        thread.start()
        thread.join(timeout=30)
        assert set(seen) == {"acquire", "update", "release", "lease"} and seen["lease"] is None
        for what in ("acquire", "update", "release"):
            assert "thread 'MainThread'" in str(seen[what]) and f"pid {os.getpid()}" in str(seen[what]), what
        assert lease.held and registry.get("shared", "node").metadata == {"with": "the lease"}


def test_re_entrant_in_the_holding_thread_and_freed_when_that_thread_ends(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("shared", "node")
        with registry.acquire("shared", "node") as outer:
            with registry.acquire("shared", "node") as inner:
                assert inner is outer and inner.token == 1
            assert outer.held  # the inner block's release left the outer acquisition standing
        assert outer.released
        taken: list[Any] = []
        thread = threading.Thread(target=lambda: taken.append(registry.acquire("shared", "node")))
        thread.start()
        thread.join(timeout=30)  # ends holding it
        successor = registry.acquire("shared", "node", wait=5)
        assert taken[0].lost and successor.token == taken[0].token + 1
        reasons = [detail.get("reason") for action, detail in events(db_url, "lease.release")]
        assert any(reason and "ended without releasing" in reason for reason in reasons)


# -- a leased row that is deleted ------------------------------------------------------------------

def test_deleting_the_entry_you_hold_ends_the_lease_in_the_log(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("lh1", "node")
        lease = registry.acquire("lh1", "node")
        registry.delete("lh1", "node")

        assert lease.released and not lease.lost
        assert registry.locks() == []
        ended = events(db_url, "lease.acquire", "lease.release", "delete")
        assert [action for action, _ in ended] == ["lease.acquire", "lease.release", "delete"]
        assert ended[1][1]["token"] == lease.token and ended[1][1]["reason"] == "its entry was deleted"
        # The name can be made and leased again, by anyone.
        registry.resolve("lh1", "node")
        assert registry.acquire("lh1", "node").token > 0


def test_promoting_over_an_entry_you_hold_ends_that_lease_in_the_log(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.create_workspace("dev")
        registry.resolve("lh1", "node")
        held = registry.acquire("lh1", "node")
        registry.resolve("lh1", "node", workspace="dev")  # inherited: resolves to core's entry
        registry.hide("lh1", "node", workspace="dev")
        registry.resolve("lh1", "node", workspace="dev")  # dev's own entry now

        registry.promote("lh1", "node", workspace="dev", replace=True)

        assert held.released
        ends = [detail for action, detail in events(db_url, "lease.release")]
        assert [(d["token"], d["reason"]) for d in ends] == [(held.token, "its entry was deleted")]


_HOLD_THEN_WAIT = """
import sys, time
from nameplate import Registry
registry = Registry(sys.argv[1], ttl=30)
lease = registry.acquire("scratch", "process")
print(lease.token, flush=True)
sys.stdin.readline()
print("lost" if lease.lost or not registry.locks() else "held", flush=True)
"""


def test_an_ephemeral_entry_removed_with_its_session_ends_another_sessions_lease_in_the_log(
        db_url: str) -> None:
    owner = Registry(db_url)
    owner.resolve("scratch", "process", ephemeral=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_THEN_WAIT, str(db_url)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        token = int(holder.stdout.readline())
        owner.close()  # the owner's session ends: its ephemeral entry goes, and the other's lease with it

        broken = events(db_url, "lease.break")
        assert len(broken) == 1 and broken[0][1]["token"] == token
        assert "ephemeral" in broken[0][1]["reason"]
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "lost"
    finally:
        stop_child(holder)


_EPHEMERAL_HOLDER = """
import sys
from nameplate import Registry
registry = Registry(sys.argv[1], ttl=30)
registry.resolve("scratch", "process", ephemeral=True)
registry.acquire("scratch", "process")
print("ready", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("operation", ["update", "acquire", "resolve", "delete", "rename"])
def test_a_write_that_reaps_the_dead_owner_of_an_ephemeral_entry_finds_that_entry_gone(
        db_path: Path, operation: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", _EPHEMERAL_HOLDER, str(db_path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        old_id = Registry(db_path).lookup("scratch", "process")
        child.kill()
        child.wait(timeout=60)
        with Registry(db_path) as registry:
            calls = {
                "update": lambda: registry.update("scratch", "process", metadata={"v": 1}),
                "acquire": lambda: registry.acquire("scratch", "process"),
                "delete": lambda: registry.delete("scratch", "process"),
                "rename": lambda: registry.rename("scratch", "scratch2", "process"),
            }
            if operation == "resolve":
                new_id = registry.resolve("scratch", "process", {"v": 1})
                assert new_id != old_id  # the dead session's entry went with it; this is a new one
            else:
                with pytest.raises(EntryNotFoundError):
                    calls[operation]()
            assert all(info.pid != child.pid for info in registry.sessions())
    finally:
        stop_child(child)
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
    assert [action for action, _ in events(db_path, "lease.free", "delete", "session.reap")] == [
        "lease.free", "delete", "session.reap"]


def test_clean_stale_limited_to_kinds_leaves_other_kinds(tmp_path: Path) -> None:
    with Registry(tmp_path / "stale.db") as reg:
        reg.resolve("old-node", "node")
        reg.resolve("OldStep", "step")
        time.sleep(0.05)
        tiny = timedelta(milliseconds=10)
        assert [e.name for e in reg.clean_stale(tiny, dry_run=True, kinds=["node"])] == ["old-node"]
        assert [e.name for e in reg.clean_stale(tiny, kinds=["node"])] == ["old-node"]
        assert [e.name for e in reg.list()] == ["OldStep"]
        with pytest.raises(UnknownKindError):
            reg.clean_stale(tiny, kinds=["no-such-kind"])
        assert [e.name for e in reg.list()] == ["OldStep"]
