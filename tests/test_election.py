"""Leader election on fenced leases: one leader at a time across kill -9 and SIGSTOP, terms that grow."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nameplate import InvalidMetadataError, Leader, LeaseHeldError, LeaseLost, Registry

from _session_helpers import events, stop_child


def test_campaign_leads_resign_hands_over_and_terms_grow(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as first, Registry(db_path, lock_delay=0) as second:
        assert first.leader("primary") is None  # nobody ever campaigned
        lead = first.campaign("primary", {"url": "http://a:8000"})
        assert lead.term == 1 and lead.held
        current = second.leader("primary")
        assert current is not None and current.value == {"url": "http://a:8000"} and current.term == 1
        assert current.pid == os.getpid() and current.session_id == first.session().id
        with pytest.raises(LeaseHeldError):
            second.campaign("primary", "b", timeout=0.2)
        lead.proclaim({"url": "http://a:9000"})
        assert second.leader("primary").value == {"url": "http://a:9000"}  # type: ignore[union-attr]
        assert lead.resign() and not lead.held
        assert second.leader("primary") is None
        with second.campaign("primary", "b") as again:
            assert again.term == 2 and first.leader("primary").value == "b"  # type: ignore[union-attr]
            with pytest.raises(LeaseLost):
                lead.proclaim("stale")  # a former leader's word no longer lands
        assert first.leader("primary") is None


def test_a_leadership_with_a_ttl_of_its_own_ends_unless_refreshed(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as first, Registry(db_path, lock_delay=0) as second:
        lead = first.campaign("primary", "a", ttl=0.4)
        for _ in range(3):
            time.sleep(0.2)
            assert lead.refresh() is not None
        assert second.leader("primary").term == lead.term  # type: ignore[union-attr]
        assert lead.lost_event.wait(timeout=5)  # no more refreshes: it ends at its deadline
        assert second.leader("primary") is None
        assert second.campaign("primary", "b", timeout=5).term == lead.term + 1


def test_a_value_json_cannot_hold_is_refused(registry: Registry) -> None:
    with pytest.raises(InvalidMetadataError):
        registry.campaign("primary", {"when": object()})
    assert registry.leader("primary") is None


def test_observe_yields_each_new_leader_once(db_path: Path) -> None:
    seen: list[Leader] = []
    with Registry(db_path, lock_delay=0) as watcher, Registry(db_path, lock_delay=0) as a, \
            Registry(db_path, lock_delay=0) as b:
        observer = threading.Thread(target=lambda: seen.extend(
            watcher.observe("primary", timeout=20, stop=lambda: len(seen) >= 3)))
        lead = a.campaign("primary", "a")
        observer.start()
        time.sleep(0.3)
        lead.proclaim("a2")  # the same term: not a new leader
        lead.resign()
        lead = b.campaign("primary", "b")
        time.sleep(0.3)
        lead.resign()
        a.campaign("primary", "a3")
        observer.join(timeout=30)
    assert [(leader.value, leader.term) for leader in seen] == [("a", 1), ("b", 2), ("a3", 3)]


_CAMPAIGNER = r"""
import json, os, sys, time
from nameplate import LeaseLost, Registry
registry = Registry(sys.argv[1], ttl=1, lock_delay=0.5)
while True:
    lead = registry.campaign("primary", {"pid": os.getpid()})
    print(json.dumps({"event": "leader", "term": lead.term, "pid": os.getpid()}), flush=True)
    try:
        while True:  # act as the leader: fenced writes stamped with the term
            registry.update("primary", "election", metadata={"beat": time.time()}, merge=True, lease=lead.lease)
            time.sleep(0.05)
    except LeaseLost:
        print(json.dumps({"event": "lost", "term": lead.term, "pid": os.getpid(), "flag": lead.lost}), flush=True)
"""


class _Campaigners:
    """Campaigner processes and what they say, one queue of (pid, message) for all of them."""

    def __init__(self, path: Path, count: int) -> None:
        self.said: queue.Queue[dict[str, Any]] = queue.Queue()
        self.children = [subprocess.Popen([sys.executable, "-c", _CAMPAIGNER, str(path)], stdout=subprocess.PIPE,
                                          text=True) for _ in range(count)]
        for child in self.children:
            threading.Thread(target=self._read, args=(child,), daemon=True).start()

    def _read(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            self.said.put(json.loads(line))

    def next(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.said.get(timeout=max(0.01, deadline - time.monotonic()))
            if message["event"] == event:
                return message

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGCONT)
            stop_child(child)


def test_one_leader_at_a_time_across_kill_9_and_sigstop(db_path: Path) -> None:
    campaigners = _Campaigners(db_path, 3)
    try:
        with Registry(db_path) as registry:
            first = campaigners.next("leader", timeout=30)
            assert registry.leader("primary").pid == first["pid"]  # type: ignore[union-attr]
            os.kill(first["pid"], signal.SIGKILL)
            killed_at = time.monotonic()
            second = campaigners.next("leader", timeout=30)
            assert second["term"] > first["term"] and second["pid"] != first["pid"]
            assert time.monotonic() - killed_at < 5  # a dead leader is replaced at once, not after its ttl
            time.sleep(0.3)
            os.kill(second["pid"], signal.SIGSTOP)
            stopped_at = time.monotonic()
            third = campaigners.next("leader", timeout=30)
            assert third["term"] > second["term"] and third["pid"] not in (first["pid"], second["pid"])
            assert time.monotonic() - stopped_at >= 1.0  # a hung leader keeps leading until its ttl ran out
            os.kill(second["pid"], signal.SIGCONT)
            resumed = campaigners.next("lost", timeout=30)
            assert resumed == {"event": "lost", "term": second["term"], "pid": second["pid"], "flag": True}
            time.sleep(0.3)
            current = registry.leader("primary")
            assert current is not None and current.term == third["term"] and current.pid == third["pid"]
    finally:
        campaigners.stop()
    # The log, in commit order: every term begins after the previous one ended, terms strictly grow, and
    # every fenced write carries the term of the leader of that moment.
    current_term: int | None = None
    terms: list[int] = []
    for action, detail in events(db_path, "lease.acquire", "lease.release", "lease.free", "lease.expire", "update"):
        if action == "lease.acquire":
            assert current_term is None, f"term {detail['token']} began while term {current_term} was held"
            current_term = detail["token"]
            terms.append(detail["token"])
        elif action == "update":
            assert detail["token"] == current_term, "a write landed under a term that was over"
        else:
            assert detail["token"] == current_term
            current_term = None
    assert terms == sorted(set(terms)) and len(terms) >= 3
    assert {first["term"], second["term"], third["term"]} <= set(terms)
