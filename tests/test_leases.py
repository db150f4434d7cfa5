"""Guarantees 3 and 4 with real processes: fenced leases, dead owners, hung owners, heartbeats."""

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

from conftest import run_processes, wait_until
from nameplate import (
    LeaseHeldError,
    LeaseLost,
    NotLeaseHolderError,
    Registry,
    SessionClosedError,
)
from nameplate._liveness import BOOT_ID, HOSTNAME


def _events(path: Path, *actions: str) -> list[tuple[str, dict[str, Any]]]:
    conn = sqlite3.connect(path)
    marks = ",".join("?" * len(actions))
    rows = conn.execute(f"SELECT action, detail FROM event WHERE action IN ({marks}) ORDER BY rev", actions).fetchall()
    conn.close()
    return [(action, json.loads(detail)) for action, detail in rows]


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


def test_two_processes_contending_never_hold_the_lease_at_once(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("shared", "node")
    outcomes = run_processes(_contend, [(str(db_path), 60)] * 2, timeout=180)
    assert all(not (isinstance(o, tuple) and o and o[0] == "error") for o in outcomes), outcomes
    for tokens in outcomes:
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    all_tokens = sorted(outcomes[0] + outcomes[1])
    assert all_tokens == list(range(1, 121))  # every acquisition got the next token, none reused
    # In log order, every fenced write carries the token of the latest acquisition, and every
    # acquisition follows the previous holder's release: never two holders at once.
    log = _events(db_path, "lease.acquire", "lease.release", "update")
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
lease = registry.acquire("device", "node")
registry.resolve("child_ephemeral", "node", ephemeral=True)
print(json.dumps({"token": lease.token, "pid": registry.session().pid}), flush=True)
sys.stdin.readline()  # the parent stops and resumes us here
noticed = lease.lost_event.wait(timeout=30)
outcome = {"lost_flag": noticed}
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
    assert line, "holder process died before acquiring"
    return child, json.loads(line)


def test_a_killed_holder_frees_its_lease_without_waiting_for_the_ttl(db_path: Path) -> None:
    with Registry(db_path) as setup:
        setup.resolve("device", "node")
    child, info = _start_holder(db_path, ttl=60, lock_delay=60)
    try:
        with Registry(db_path, ttl=60) as registry:
            with pytest.raises(LeaseHeldError) as caught:
                registry.acquire("device", "node")
            assert caught.value.holder["pid"] == info["pid"]
            assert registry.lookup("child_ephemeral", "node") is not None
            child.send_signal(signal.SIGKILL)  # not waited for yet: the child is a zombie, still dead
            started = time.monotonic()
            lease = registry.acquire("device", "node", wait=10)
            assert time.monotonic() - started < 5  # the ttl is 60 s and the lock-delay 60 s
            assert lease.token == info["token"] + 1
            assert registry.lookup("child_ephemeral", "node") is None  # ephemeral entries go with it
            dead = [s for s in registry.sessions(alive=False) if s.pid == info["pid"]]
            assert [s.state for s in dead] == ["dead"]
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    assert [a for a, _ in _events(db_path, "lease.free", "session.reap")] == ["lease.free", "session.reap"]


def test_a_hung_holder_loses_its_lease_after_ttl_and_lock_delay_and_learns_it(db_path: Path) -> None:
    ttl, lock_delay = 1.0, 1.5
    with Registry(db_path) as setup:
        setup.resolve("device", "node")
    child, info = _start_holder(db_path, ttl=ttl, lock_delay=lock_delay)
    assert child.stdin is not None and child.stdout is not None
    try:
        os.kill(child.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        with Registry(db_path, ttl=10, lock_delay=lock_delay) as registry:
            lease = registry.acquire("device", "node", wait=30)
            waited = time.monotonic() - stopped_at
            assert waited >= lock_delay  # ttl expiry alone is not enough: the lock-delay holds it too
            assert lease.token == info["token"] + 1
            os.kill(child.pid, signal.SIGCONT)
            child.stdin.write("go\n")
            child.stdin.flush()
            outcome = json.loads(child.stdout.readline())
            assert outcome == {"lost_flag": True, "check": "LeaseLost", "fenced_write": "LeaseLost"}
            assert "stale" not in registry.get("device", "node").metadata
            lease.check()  # the new holder is unaffected
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
    actions = [a for a, _ in _events(db_path, "lease.expire", "session.reap")]
    assert actions[:2] == ["lease.expire", "session.reap"]


def test_a_reused_pid_does_not_keep_a_dead_session_alive(db_path: Path) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with Registry(db_path, ttl=3600, lock_delay=3600) as registry:
            registry.resolve("device", "node")
            conn = sqlite3.connect(db_path)
            now = time.time()
            # A session "owned" by the bystander's pid, but started at another moment: a reused pid.
            conn.execute("INSERT INTO session (id, pid, hostname, boot_id, process_start, label, ttl, state, "
                         "started_at, beat_at, beat_mono) VALUES ('GHOST', ?, ?, ?, 1.0, 'ghost', 3600, 'live', "
                         "?, ?, ?)", (bystander.pid, HOSTNAME, BOOT_ID, now, now, time.monotonic()))
            conn.execute("INSERT INTO lease (entry_pk, session_id, token, acquired_at) "
                         "SELECT pk, 'GHOST', 1, ? FROM entry WHERE name = 'device'", (now,))
            conn.execute("UPDATE entry SET fence = 1 WHERE name = 'device'")
            conn.commit()
            conn.close()
            lease = registry.acquire("device", "node")  # at once: ttl and lock-delay are an hour
            assert lease.token == 2
            ghost = [s for s in registry.sessions(alive=False) if s.id == "GHOST"]
            assert ghost[0].state == "dead" and not ghost[0].alive
            assert "pid" in ghost[0].end_reason
    finally:
        bystander.kill()
        bystander.wait()


# -- heartbeat ---------------------------------------------------------------------------------------


def _heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nameplate-heartbeat")]


def test_heartbeat_renews_reports_and_stops_on_close(db_path: Path) -> None:
    before = set(_heartbeat_threads())
    registry = Registry(db_path, ttl=0.6)
    session = registry.session(label="trainer", status="starting")
    assert session.heartbeat_thread.is_alive()
    assert wait_until(lambda: registry.sessions()[0].beats >= 3, timeout=10)
    session.report(status="healthy", epoch=3, loss=0.25)
    info = registry.sessions()[0]
    assert (info.label, info.status, dict(info.info)) == ("trainer", "healthy", {"epoch": 3, "loss": 0.25})
    assert info.alive
    registry.close()
    assert not session.heartbeat_thread.is_alive()
    assert set(_heartbeat_threads()) == before
    with Registry(db_path) as again:
        assert again.sessions() == []
        assert [s.state for s in again.sessions(alive=False)] == ["closed"]
    with pytest.raises(SessionClosedError):
        session.report(status="late")


def test_a_lease_broken_by_force_is_noticed_by_the_heartbeat(db_path: Path) -> None:
    lost: list[str] = []
    with Registry(db_path, ttl=0.6) as holder, Registry(db_path) as operator:
        holder.resolve("device", "node")
        lease = holder.acquire("device", "node", on_lost=lambda l: lost.append(l.name))
        with pytest.raises(NotLeaseHolderError):
            operator.release("device", "node")
        assert operator.release("device", "node", force=True) is True
        assert wait_until(lambda: lease.lost, timeout=10)
        assert lost == ["device"]
        with pytest.raises(LeaseLost):
            lease.check()
        with pytest.raises(LeaseLost):
            holder.update("device", "node", metadata={"x": 1}, lease=lease)
        assert lease.release() is False
    assert [a for a, _ in _events(db_path, "lease.break")] == ["lease.break"]


def test_release_is_only_for_the_holder_and_clean_release_has_no_lock_delay(db_path: Path) -> None:
    with Registry(db_path, lock_delay=3600) as first, Registry(db_path, lock_delay=3600) as second:
        first.resolve("device", "node", lock=True)
        assert first.lease("device", "node") is not None
        with pytest.raises(LeaseHeldError) as caught:
            second.resolve("device", "node", lock=True)
        assert "held by pid" in str(caught.value)
        with pytest.raises(LeaseHeldError):
            second.update("device", "node", metadata={"x": 1})
        with pytest.raises(LeaseHeldError):
            second.delete("device", "node")
        assert first.release("device", "node") is True
        assert first.release("device", "node") is False
        started = time.monotonic()
        lease = second.acquire("device", "node")
        assert time.monotonic() - started < 1
        assert lease.token == 2


def test_waiting_acquire_gets_the_lease_when_it_is_released(db_path: Path) -> None:
    with Registry(db_path) as first, Registry(db_path) as second:
        first.resolve("device", "node")
        lease = first.acquire("device", "node")
        threading.Timer(0.5, lease.release).start()
        started = time.monotonic()
        assert second.acquire("device", "node", wait=20).token == 2
        assert 0.3 < time.monotonic() - started < 10
        with pytest.raises(LeaseHeldError):
            first.acquire("device", "node", wait=0.2)


def test_a_forked_child_does_not_inherit_the_session(db_path: Path) -> None:
    registry = Registry(db_path, ttl=5)
    try:
        registry.resolve("device", "node")
        lease = registry.acquire("device", "node")
        parent_session = registry.session().id
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read)
                child_session = registry.session().id
                report = {"new_session": child_session != parent_session, "lease_lost_in_child": lease.lost,
                          "threads": [t.name for t in threading.enumerate() if t.name.startswith("nameplate")]}
                try:
                    registry.acquire("device", "node")
                    report["acquire"] = "got it"
                except LeaseHeldError:
                    report["acquire"] = "held"
                os.write(write, json.dumps(report).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as pipe:
            report = json.loads(pipe.read())
        os.waitpid(pid, 0)
        assert report["new_session"] and report["lease_lost_in_child"]
        assert report["acquire"] == "held"
        assert len(report["threads"]) == 1  # the child's own heartbeat, not the parent's
        lease.check()  # the parent still holds it
        assert registry.session().id == parent_session
    finally:
        registry.close()


def test_ephemeral_entries_leave_with_their_session(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("worker-1", "process", ephemeral=True)
        registry.resolve("durable", "node")
        assert registry.lookup("worker-1", "process") is not None
    with Registry(db_path) as again:
        assert again.lookup("worker-1", "process") is None
        assert again.lookup("durable", "node") is not None


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
