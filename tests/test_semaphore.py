"""Semaphores: at most N holders at once across processes, each fenced, dead holders freed."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nameplate import (
    InvalidInputError,
    InvalidNameError,
    LeaseHeldError,
    LeaseLost,
    Registry,
    SemaphoreLimitError,
)

from _session_helpers import events, stop_child
from conftest import table_snapshot


def test_at_most_limit_holders_then_one_frees_a_slot(db_path: Path) -> None:
    with Registry(db_path) as a, Registry(db_path) as b:
        first = a.semaphore("gpu", limit=2)
        second = b.semaphore("gpu", limit=2)
        assert {first.name, second.name} == {"gpu#1", "gpu#2"}
        with pytest.raises(LeaseHeldError, match="all 2 slots of semaphore 'gpu' are taken"):
            a.semaphore("gpu", limit=2)
        assert first.release()
        with b.semaphore("gpu", limit=2) as third:
            assert third.name == first.name and third.token == first.token + 1  # fenced per slot
            b.update(third.name, "semaphore", metadata={"job": 7}, lease=third)
        with pytest.raises(LeaseLost):
            a.update(first.name, "semaphore", metadata={"job": 8}, lease=first)


def test_a_limit_other_than_the_first_is_refused_and_changes_nothing(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.semaphore("gpu", limit=2).release()
        before = table_snapshot(db_path)
        with pytest.raises(SemaphoreLimitError, match="has limit 2, not 3") as caught:
            registry.semaphore("gpu", limit=3)
        assert caught.value.limit == 2 and caught.value.asked == 3
        assert table_snapshot(db_path)["lease"] == before["lease"]
        assert table_snapshot(db_path)["entry"] == before["entry"]


@pytest.mark.parametrize(("name", "limit", "error"), [
    ("gpu", 0, InvalidInputError), ("gpu", True, InvalidInputError), ("gpu", 2.0, InvalidInputError),
    ("gpu", 10**6, InvalidInputError), ("gpu#1", 2, InvalidNameError), ("", 2, InvalidNameError),
])
def test_bad_arguments_are_refused_before_anything_is_written(db_path: Path, name: str, limit: object,
                                                               error: type[Exception]) -> None:
    with Registry(db_path) as registry:
        before = table_snapshot(db_path)
        with pytest.raises(error):
            registry.semaphore(name, limit=limit)  # type: ignore[arg-type]
        assert table_snapshot(db_path) == before


def test_one_process_may_hold_several_slots_and_each_call_takes_another(db_path: Path) -> None:
    with Registry(db_path) as registry:
        slots = [registry.semaphore("gpu", limit=3) for _ in range(3)]
        assert sorted(s.name for s in slots) == ["gpu#1", "gpu#2", "gpu#3"]
        with pytest.raises(LeaseHeldError):
            registry.semaphore("gpu", limit=3)
        slots[1].release()
        assert registry.semaphore("gpu", limit=3).name == "gpu#2"


def test_a_semaphore_slot_can_have_a_ttl_of_its_own(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as registry, Registry(db_path, lock_delay=0) as other:
        slot = registry.semaphore("gpu", limit=1, ttl=0.2)
        assert slot.remaining() is not None
        assert slot.lost_event.wait(timeout=5)
        assert other.semaphore("gpu", limit=1).token == slot.token + 1


_HOLDER = r"""
import os, sys, time
from nameplate import Registry
path, limit, journal = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
with Registry(path, ttl=2, lock_delay=0) as registry:
    while True:
        with registry.semaphore("gpu", limit=limit, wait=60) as slot:
            os.write(out, f"A {os.getpid()} {time.monotonic()}\n".encode())
            registry.update(slot.name, "semaphore", metadata={"pid": os.getpid()}, lease=slot)
            time.sleep(0.02)
            os.write(out, f"R {os.getpid()} {time.monotonic()}\n".encode())
"""


def _most_at_once(journal: Path, killed_at: dict[int, float]) -> int:
    """The most holders at once, from the holders' own words: each hold runs from the moment ``semaphore``
    returned to the moment before release, or to the ``kill -9`` of a holder that never released."""
    spans: list[tuple[float, float]] = []
    open_holds: dict[int, float] = {}
    for line in journal.read_text().splitlines():
        kind, pid_text, at_text = line.split()
        pid, at = int(pid_text), float(at_text)
        if kind == "A":
            open_holds[pid] = at
        else:
            spans.append((open_holds.pop(pid), at))
    spans += [(start, killed_at[pid]) for pid, start in open_holds.items()]
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = current = 0
    for _, step in edges:  # at equal times an end sorts before a start: touching spans do not overlap
        current += step
        most = max(most, current)
    return most


def _slot_log(path: Path) -> list[tuple[str, str, int]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT action, name, json_extract(detail, '$.token') FROM event WHERE action IN "
                            "('lease.acquire', 'lease.release', 'lease.free', 'lease.expire') AND kind = "
                            "'semaphore' ORDER BY rev").fetchall()
    finally:
        conn.close()
    return [(str(a), str(n), int(t)) for a, n, t in rows]


def test_eight_processes_never_exceed_the_limit_across_kill_9(db_path: Path) -> None:
    limit = 3
    with Registry(db_path) as registry:
        registry.semaphore("gpu", limit=limit).release()

    journal = db_path.with_name("journal.txt")
    killed_at: dict[int, float] = {}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", _HOLDER, str(db_path), str(limit), str(journal)])

    children = [start() for _ in range(8)]
    rng = random.Random(20)
    killed = 0
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.2, 0.5))
            victim = rng.randrange(len(children))
            children[victim].kill()  # kill -9, holding a slot or waiting for one
            killed_at[children[victim].pid] = time.monotonic()
            children[victim].wait()
            killed += 1
            children[victim] = start()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                killed_at[child.pid] = time.monotonic()
            stop_child(child)
    held: dict[str, int] = {}
    most = grants = 0
    for action, slot, token in _slot_log(db_path):
        if action == "lease.acquire":
            assert slot not in held, f"{slot} taken while held (token {held.get(slot)})"
            held[slot] = token
            grants += 1
        else:
            assert held.pop(slot) == token
        most = max(most, len(held))
    assert most <= limit
    assert _most_at_once(journal, killed_at) == limit  # never more, and the run really contended
    assert grants > 30 and killed >= 10
    freed = [detail for _, detail in events(db_path, "lease.free")]
    assert freed, "some killed holders held a slot, freed by proof of death"
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
