"""Fair waiting with real processes: waiters of ``acquire(..., wait=)`` are served in arrival order."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from nameplate import LeaseHeldError, Registry

from _session_helpers import events, stop_child
from conftest import run_processes, wait_until

_WAITER = r"""
import json, sys, time
from nameplate import Registry
path, index, ttl = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with Registry(path, ttl=ttl, lock_delay=0) as registry:
    registry.session()
    print("ready", flush=True)
    with registry.acquire("printer", "node", wait=60) as lease:
        print(json.dumps({"index": index, "token": lease.token, "at": time.monotonic()}), flush=True)
        time.sleep(0.05)
"""


def _tickets(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM lease_waiter").fetchone()[0])
    finally:
        conn.close()


def test_waiters_are_served_in_the_order_they_arrived(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as registry:
        registry.resolve("printer", "node")
        held = registry.acquire("printer", "node")
        children: list[subprocess.Popen[str]] = []
        try:
            # Arrivals in a known order: each waiter is started once the previous one holds its ticket,
            # and in reverse index order, so that an order by pid, index or start time would fail.
            for index in reversed(range(6)):
                child = subprocess.Popen([sys.executable, "-c", _WAITER, str(db_path), str(index), "5"],
                                         stdout=subprocess.PIPE, text=True)
                children.append(child)
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
                assert wait_until(lambda: _tickets(db_path) == len(children), timeout=30)
            registry.release("printer", "node")
            # Free now (or already taken by the first waiter): a newcomer never overtakes the queue.
            with pytest.raises(LeaseHeldError, match="promised to an earlier waiter|is held by pid"):
                registry.acquire("printer", "node")
            grants = []
            for child in children:
                assert child.stdout is not None
                grants.append(json.loads(child.stdout.readline()))
                assert child.wait(timeout=60) == 0
        finally:
            for child in children:
                stop_child(child)
        assert held.released
    by_time = [g["index"] for g in sorted(grants, key=lambda g: g["at"])]
    assert by_time == [5, 4, 3, 2, 1, 0]
    assert sorted(g["token"] for g in grants) == list(range(2, 8))
    assert _tickets(db_path) == 0  # each served waiter gave up its ticket in the granting transaction


def test_a_waiter_killed_in_the_line_drops_out_at_once(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as registry:
        registry.resolve("printer", "node")
        held = registry.acquire("printer", "node")
        children: list[subprocess.Popen[str]] = []
        try:
            for index in range(2):  # a ttl of 600 s: only the proof of its death lets the first one go
                child = subprocess.Popen([sys.executable, "-c", _WAITER, str(db_path), str(index), "600"],
                                         stdout=subprocess.PIPE, text=True)
                children.append(child)
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
                assert wait_until(lambda: _tickets(db_path) == len(children), timeout=30)
            children[0].kill()
            children[0].wait()
            released_at = time.monotonic()
            held.release()
            assert children[1].stdout is not None
            grant = json.loads(children[1].stdout.readline())
            assert grant["index"] == 1 and grant["at"] - released_at < 30
            assert children[1].wait(timeout=60) == 0
        finally:
            for child in children:
                stop_child(child)
    assert _tickets(db_path) == 0  # the dead waiter's ticket went with its reaped session


def _contend(barrier: Any, results: Any, index: int, path: str, rounds: int) -> None:
    try:
        waits = []
        with Registry(path, ttl=5, lock_delay=0) as registry:
            registry.session()
            barrier.wait(timeout=60)
            for _ in range(rounds):
                asked = time.monotonic()
                with registry.acquire("printer", "node", wait=60) as lease:
                    waits.append(time.monotonic() - asked)
                    registry.update("printer", "node", metadata={"by": index}, lease=lease)
                    time.sleep(0.005)
        results.put((index, {"waits": waits}))
    except BaseException as error:
        results.put((index, ("error", repr(error))))


def test_eight_contending_processes_are_all_served_in_ticket_order(db_path: Path) -> None:
    rounds = 12
    with Registry(db_path) as registry:
        registry.resolve("printer", "node")
    outcomes = run_processes(_contend, [(str(db_path), rounds)] * 8, timeout=120)
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    assert all(len(o["waits"]) == rounds for o in outcomes)  # nobody starved
    log = events(db_path, "lease.acquire", "lease.release")
    grants = [detail for action, detail in log if action == "lease.acquire"]
    assert len(grants) == 8 * rounds
    # A grant to a waiter means every older ticket was served or gone: queued grants, in log order,
    # carry strictly increasing tickets.
    tickets = [g["ticket"] for g in grants if "ticket" in g]
    assert len(tickets) >= 8 * rounds // 2, "most acquisitions had to queue"
    assert tickets == sorted(tickets) and len(set(tickets)) == len(tickets)
    # Round after round, each process rejoins the back of the queue: no one is granted the lease
    # twice while another process that was already waiting still waits, so between two grants to one
    # session there are never more than the 7 others' grants, each at most twice (one in flight).
    last_seen: dict[str, int] = {}
    for position, grant in enumerate(grants):
        session = grant["session"]
        if session in last_seen:
            assert position - last_seen[session] <= 2 * 7 + 1, f"session {session} waited too long"
        last_seen[session] = position
    worst = max(max(o["waits"]) for o in outcomes)
    assert worst < 30
