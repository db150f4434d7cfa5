"""A lease's own ttl: ``acquire(..., ttl=S)``, ``lease.remaining()``, ``lease.refresh()``."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nameplate import InvalidInputError, LeaseHeldError, LeaseLost, Registry
from nameplate.backends.migrate import available, latest_version

from _session_helpers import events, stop_child
from conftest import file_at_schema_version, table_snapshot, wait_until


def test_a_lease_without_a_ttl_of_its_own_is_unbounded(registry: Registry) -> None:
    registry.resolve("dev", "node")
    with registry.acquire("dev", "node") as lease:
        assert lease.remaining() is None and lease.ttl is None
        assert lease.refresh() is None  # only checked
    assert lease.remaining() is None


def test_remaining_counts_down_and_refresh_renews_it(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as registry:
        registry.resolve("dev", "node")
        lease = registry.acquire("dev", "node", ttl=0.6)
        first = lease.remaining()
        assert first is not None and 0.4 < first <= 0.6
        for _ in range(6):  # 1.2 s in all, twice the ttl: kept by refreshes alone
            time.sleep(0.2)
            left = lease.refresh()
            assert left is not None and left > 0.5
        lease.check()
        registry.update("dev", "node", metadata={"still": "mine"}, lease=lease)
        assert lease.release()
        assert lease.remaining() == 0.0


def test_an_unrefreshed_lease_ends_at_its_ttl_and_its_holder_is_told(db_path: Path) -> None:
    calls: list[int] = []
    with Registry(db_path, lock_delay=0) as holder, Registry(db_path, lock_delay=0) as other:
        holder.resolve("dev", "node")
        lease = holder.acquire("dev", "node", ttl=0.3, on_lost=lambda lost: calls.append(lost.token))
        with pytest.raises(LeaseHeldError):
            other.acquire("dev", "node")
        assert lease.lost_event.wait(timeout=5)  # told at the deadline, not at the next heartbeat
        assert calls == [lease.token] and "own ttl of 0.3 s ran out" in str(lease.lost_reason)
        with pytest.raises(LeaseLost):
            holder.update("dev", "node", metadata={"stale": True}, lease=lease)
        with pytest.raises(LeaseLost):
            lease.refresh()
        taken = other.acquire("dev", "node")
        assert taken.token == lease.token + 1
        assert "stale" not in other.require("dev", "node").metadata
    expired = events(db_path, "lease.expire")
    assert [detail["reason"] for _, detail in expired] == ["its own ttl of 0.3 s ran out"]


def test_the_fence_refuses_a_lease_past_its_ttl_even_before_anyone_ends_it(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as registry:
        registry.resolve("dev", "node")
        lease = registry.acquire("dev", "node", ttl=0.2)
        lease._cancel_expiry()  # the local timer stays silent: only the database's check is left
        time.sleep(0.3)
        assert not lease.lost
        with pytest.raises(LeaseLost, match="own ttl"):
            registry.update("dev", "node", metadata={"late": True}, lease=lease)
        assert "late" not in registry.require("dev", "node").metadata


def test_a_lease_expired_by_its_ttl_leaves_a_lock_delay(db_path: Path) -> None:
    with Registry(db_path, lock_delay=30) as holder, Registry(db_path, lock_delay=30) as other:
        holder.resolve("dev", "node")
        holder.acquire("dev", "node", ttl=0.2)
        time.sleep(0.3)
        with pytest.raises(LeaseHeldError, match="lock-delay"):
            other.acquire("dev", "node")
    assert [detail["lock_delay"] for _, detail in events(db_path, "lease.expire")] == [30]


def test_reap_ends_overdue_leases_and_locks_no_longer_lists_them(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as holder, Registry(db_path, lock_delay=0) as other:
        holder.resolve("dev", "node")
        holder.acquire("dev", "node", ttl=0.2)
        assert [h.name for h in other.locks()] == ["dev"]
        time.sleep(0.3)
        other.reap()
        assert other.locks() == []


_KEEPER = r"""
import json, sys, time
from nameplate import Registry
registry = Registry(sys.argv[1], ttl=60, lock_delay=0)
lease = registry.acquire("dev", "node", ttl=float(sys.argv[2]))
print(json.dumps({"token": lease.token}), flush=True)
time.sleep(120)
"""


def test_the_session_ending_first_frees_a_lease_with_a_long_ttl(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("dev", "node")
        child = subprocess.Popen([sys.executable, "-c", _KEEPER, str(db_path), "3600"], stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout is not None
            token = json.loads(child.stdout.readline())["token"]
            with pytest.raises(LeaseHeldError):
                registry.acquire("dev", "node")
            child.send_signal(signal.SIGKILL)
            lease = registry.acquire("dev", "node", wait=10)  # the dead owner is reaped at once
            assert lease.token == token + 1
        finally:
            stop_child(child)


def test_another_process_takes_a_lease_its_holder_forgot_to_refresh(db_path: Path) -> None:
    with Registry(db_path, lock_delay=0) as registry:
        registry.resolve("dev", "node")
        child = subprocess.Popen([sys.executable, "-c", _KEEPER, str(db_path), "0.5"], stdout=subprocess.PIPE,
                                 text=True)
        try:
            assert child.stdout is not None
            token = json.loads(child.stdout.readline())["token"]
            started = time.monotonic()
            lease = registry.acquire("dev", "node", wait=10)  # alive and beating, but its lease ran out
            assert lease.token == token + 1 and time.monotonic() - started < 5
            assert wait_until(lambda: child.poll() is None)  # the holder itself lives on
        finally:
            stop_child(child)


@pytest.mark.parametrize("ttl", [0, -1, True, float("nan"), float("inf"), "5"])
def test_a_bad_ttl_is_refused_and_changes_nothing(db_path: Path, ttl: object) -> None:
    with Registry(db_path) as registry:
        registry.resolve("dev", "node")
        before = table_snapshot(db_path)
        with pytest.raises(InvalidInputError, match="ttl"):
            registry.acquire("dev", "node", ttl=ttl)  # type: ignore[arg-type]
        assert table_snapshot(db_path) == before


def test_its_own_holder_takes_an_expired_lease_again_without_a_lock_delay(db_path: Path) -> None:
    with Registry(db_path, lock_delay=3600) as registry:
        registry.resolve("dev", "node")
        first = registry.acquire("dev", "node", ttl=0.2)
        time.sleep(0.3)
        again = registry.acquire("dev", "node")
        assert again.token == first.token + 1 and first.lost and again.held


def test_a_file_from_before_lease_ttls_upgrades_and_its_leases_stay_unbounded(db_path: Path) -> None:
    # A genuine file of the version before lease ttls: every earlier step applied, one entry.
    step = next(m for m in available() if m.name == "lease ttl, waiters, elections and semaphores")
    file_at_schema_version(db_path, step.version - 1)
    conn = sqlite3.connect(db_path)
    conn.execute("INSERT INTO entry (id, workspace_id, kind_id, name, created_at, updated_at, last_seen_at) "
                 "VALUES ('01J00000000000000000000000', 1, (SELECT id FROM kind WHERE name = 'node'), 'dev', 0, 0, 0)")
    conn.commit()
    conn.close()
    with Registry(db_path) as registry:
        assert registry.migrations_applied == list(range(step.version, latest_version() + 1))
        assert {"election", "semaphore"} <= {kind.name for kind in registry.kinds() if kind.builtin}
        with registry.acquire("dev", "node", wait=1) as lease:
            assert lease.remaining() is None
        assert registry.semaphore("gpu", limit=1).held
