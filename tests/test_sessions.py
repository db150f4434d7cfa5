"""Guarantee 4 and the process registry: who is alive, heartbeats, reaping, fork and exit."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from nameplate import InvalidInputError, InvalidMetadataError, LeaseHeldError, LeaseLost, Registry, SessionClosedError
from nameplate._liveness import BOOT_ID, HOSTNAME, START_TOLERANCE, Owner, process_start, verdict

from _session_helpers import events, insert_session, session_row, sleeper, stop_child
from conftest import wait_until


def _heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("nameplate-heartbeat")]


# -- liveness rules ----------------------------------------------------------------------------------


def _owner(**changes: Any) -> Owner:
    me = os.getpid()
    base = Owner(pid=me, hostname=HOSTNAME, boot_id=BOOT_ID, process_start=process_start(me) or 0.0, ttl=10.0,
                 beat_at=time.time(), beat_mono=time.monotonic())
    return dataclasses.replace(base, **changes)


def test_a_live_owner_on_this_host_lives_whatever_the_wall_clock_says() -> None:
    assert verdict(_owner()) is None
    # A wall-clock step (NTP, resumed VM) moves beat_at far away; on this host only the monotonic
    # beat counts, so the session neither expires nor lives on because of it.
    assert verdict(_owner(beat_at=time.time() - 86400)) is None
    assert verdict(_owner(), now_wall=time.time() + 86400) is None
    assert verdict(_owner(beat_mono=time.monotonic() - 11)) == "expired"


def test_a_pid_with_another_start_time_or_boot_is_dead_at_once() -> None:
    start = process_start(os.getpid())
    assert start is not None
    assert verdict(_owner(process_start=start + START_TOLERANCE / 2)) is None  # clock-tick rounding
    assert verdict(_owner(process_start=start + 1.0)) == "dead"
    assert verdict(_owner(boot_id="another-boot")) == "dead"  # this host rebooted since


def test_sessions_of_other_hosts_are_judged_by_the_wall_clock() -> None:
    # Their pids mean nothing here: pid 1's start time does not match, yet the session lives.
    other = _owner(hostname="elsewhere", pid=1, process_start=-5.0, boot_id="theirs")
    assert verdict(other) is None
    assert verdict(dataclasses.replace(other, beat_at=time.time() - 11)) == "expired"
    assert verdict(dataclasses.replace(other, beat_mono=time.monotonic() - 1e6)) is None


def test_process_start_agrees_across_processes_and_treats_zombies_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import os, sys; from nameplate._liveness import process_start;"
                              "print(process_start(os.getpid()), flush=True); sys.stdin.readline()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        own_view = float(child.stdout.readline())
        seen = process_start(child.pid)
        assert seen is not None and abs(seen - own_view) <= START_TOLERANCE
        child.kill()
        # Not waited for: the child is a zombie until we reap it, and must count as dead already.
        assert wait_until(lambda: process_start(child.pid) is None, timeout=30)
        assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        stop_child(child)


# -- sessions as the process registry ----------------------------------------------------------------


def test_a_reused_pid_does_not_keep_a_dead_session_alive(db_url: str) -> None:
    bystander = sleeper()
    try:
        start = process_start(bystander.pid)
        assert start is not None
        with Registry(db_url, ttl=3600, lock_delay=3600) as registry:
            registry.resolve("device", "node")
            # The bystander's pid, but a start time a minute earlier: a pid reused after its owner died.
            insert_session(db_url, "GHOST", pid=bystander.pid, process_start=start - 60, holds=("device",))
            assert "GHOST" not in [s.id for s in registry.sessions()]
            lease = registry.acquire("device", "node")  # at once: ttl and lock-delay are an hour
            assert lease.token == 2
            ghost = [s for s in registry.sessions(alive=False) if s.id == "GHOST"]
            assert ghost[0].state == "dead" and not ghost[0].alive
            assert f"pid {bystander.pid}" in (ghost[0].end_reason or "")
            # The same row with the bystander's true start time is a live session.
            insert_session(db_url, "TWIN", pid=bystander.pid, process_start=start)
            assert "TWIN" in [s.id for s in registry.sessions()]
            assert registry.reap() == []
    finally:
        stop_child(bystander)


@pytest.mark.sqlite_only  # "another boot id is a reboot" holds on one host; test_postgresql.py has the shared rules
def test_reap_ends_dead_expired_and_rebooted_sessions_and_keeps_live_ones(db_url: str) -> None:
    bystander = sleeper()
    try:
        start = process_start(bystander.pid)
        assert start is not None
        with Registry(db_url, lock_delay=30) as registry:
            for name in ("a", "b", "c", "d", "e"):
                registry.resolve(name, "node")
            insert_session(db_url, "LIVE", pid=bystander.pid, process_start=start, ttl=60, holds=("a",))
            insert_session(db_url, "HUNG", pid=bystander.pid, process_start=start, ttl=1, beat_age=5, holds=("b",))
            insert_session(db_url, "REBOOTED", pid=bystander.pid, process_start=start, boot_id="old-boot",
                           holds=("c",))
            insert_session(db_url, "FAR", pid=1, process_start=0, hostname="elsewhere", ttl=60, holds=("d",))
            insert_session(db_url, "FAR_STALE", pid=1, process_start=0, hostname="elsewhere", ttl=1,
                           beat_age=5, holds=("e",))
            assert sorted(registry.reap()) == ["FAR_STALE", "HUNG", "REBOOTED"]
            states = {s.id: s.state for s in registry.sessions(alive=False)}
            assert states == {"LIVE": "live", "HUNG": "expired", "REBOOTED": "dead", "FAR": "live",
                              "FAR_STALE": "expired"}
            assert sorted(lock.name for lock in registry.locks()) == ["a", "d"]
            # Expiry leaves a lock-delay (the owner may only be hung); a proven death does not.
            assert registry.acquire("c", "node").token == 2
            for name in ("b", "e"):
                with pytest.raises(LeaseHeldError, match="lock-delay"):
                    registry.acquire(name, "node")
            reaps = [detail for _, detail in events(db_url, "session.reap")]
            assert sorted((d["session"], d["state"], d["leases_freed"]) for d in reaps) == [
                ("FAR_STALE", "expired", 1), ("HUNG", "expired", 1), ("REBOOTED", "dead", 1)]
            freed = events(db_url, "lease.expire", "lease.free")
            assert sorted(action for action, _ in freed) == ["lease.expire", "lease.expire", "lease.free"]
    finally:
        stop_child(bystander)


def test_sessions_lists_processes_with_status_info_beat_and_leases(db_url: str) -> None:
    with Registry(db_url, ttl=30) as registry, Registry(db_url) as other:
        registry.resolve("device", "node")
        session = registry.session(label="ot2-driver", status="idle")
        assert registry.session() is session  # one session per registry, opened once
        registry.acquire("device", "node")
        session.report(status="busy", protocol="pcr", step=3)
        (info,) = other.sessions()
        assert (info.id, info.pid, info.hostname, info.label) == (session.id, os.getpid(), HOSTNAME, "ot2-driver")
        assert (info.status, dict(info.info), info.state, info.alive) == ("busy", {"protocol": "pcr", "step": 3},
                                                                           "live", True)
        assert info.ttl == 30 and info.last_beat_at >= info.started_at
        assert [(lease.name, lease.token, lease.pid) for lease in info.leases] == [("device", 1, os.getpid())]
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.status = "changed"  # type: ignore[misc]
        with pytest.raises(TypeError):
            info.info["step"] = 4  # type: ignore[index]
        assert json.loads(json.dumps(info.to_dict()))["leases"][0]["name"] == "device"


def test_report_validates_before_writing(db_url: str) -> None:
    with Registry(db_url) as registry:
        session = registry.session(status="starting")
        with pytest.raises(InvalidMetadataError):
            session.report(status="healthy", handle=object())
        (info,) = registry.sessions()
        assert (info.status, dict(info.info)) == ("starting", {})


@pytest.mark.parametrize("options", [{"ttl": 0}, {"ttl": "10"}, {"lock_delay": -1}, {"leases": True}])
def test_bad_session_options_are_refused(db_url: str, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        Registry(db_url, **options)


# -- heartbeat ---------------------------------------------------------------------------------------


def test_heartbeat_renews_reports_and_stops_on_close(db_url: str) -> None:
    before = set(_heartbeat_threads())
    registry = Registry(db_url, ttl=0.6)
    session = registry.session(label="trainer", status="starting")
    assert session.heartbeat_thread.is_alive() and session.heartbeat_thread.daemon
    first = session_row(db_url, session.id)
    assert wait_until(lambda: session_row(db_url, session.id)["beats"] >= 3, timeout=30)
    renewed = session_row(db_url, session.id)
    assert renewed["beat_mono"] > first["beat_mono"] and renewed["beat_at"] > first["beat_at"]
    session.report(status="healthy", epoch=3, loss=0.25)
    session.report(epoch=4)  # info merges; status stays
    info = registry.sessions()[0]
    assert (info.label, info.status, dict(info.info)) == ("trainer", "healthy", {"epoch": 4, "loss": 0.25})
    registry.close()
    assert not session.heartbeat_thread.is_alive()
    assert set(_heartbeat_threads()) == before
    beats = session_row(db_url, session.id)["beats"]
    time.sleep(1.0)  # over three beat intervals: a beat that still ran would show
    assert session_row(db_url, session.id)["beats"] == beats
    with Registry(db_url) as again:
        assert again.sessions() == []
        assert [s.state for s in again.sessions(alive=False)] == ["closed"]
    assert [a for a, _ in events(db_url, "session.open", "session.close")] == ["session.open", "session.close"]
    with pytest.raises(SessionClosedError):
        session.report(status="late")


def test_heartbeat_notices_its_session_ended_elsewhere_and_says_so(db_path: Path) -> None:
    called: list[str] = []
    with Registry(db_path, ttl=0.6) as registry:
        for name in ("a", "b"):
            registry.resolve(name, "node")
        leases = [registry.acquire(name, "node", on_lost=lambda lease: called.append(lease.name))
                  for name in ("a", "b")]
        session = registry.session()
        # What a reaper in another process does to a session it judged expired.
        conn = sqlite3.connect(db_path)
        conn.execute("DELETE FROM lease WHERE session_id = ?", (session.id,))
        conn.execute("UPDATE session SET state = 'expired' WHERE id = ?", (session.id,))
        conn.commit()
        conn.close()
        assert wait_until(lambda: session.lost.is_set(), timeout=30)
        assert all(lease.lost for lease in leases) and sorted(called) == ["a", "b"]
        assert wait_until(lambda: not session.heartbeat_thread.is_alive(), timeout=30)
        with pytest.raises(LeaseLost):
            leases[0].check()
        fresh = registry.acquire("a", "node")  # a new session, opened on demand
        assert fresh.session_id != session.id and fresh.token == 2


def test_an_on_lost_callback_that_raises_does_not_stop_the_heartbeat(db_url: str) -> None:
    def explode(lease: Any) -> None:
        raise RuntimeError("user code failed")

    with Registry(db_url, ttl=0.6) as registry, Registry(db_url) as operator:
        for name in ("a", "b"):
            registry.resolve(name, "node")
        doomed = registry.acquire("a", "node", on_lost=explode)
        kept = registry.acquire("b", "node")
        session = registry.session()
        operator.release("a", "node", force=True)
        assert wait_until(lambda: doomed.lost, timeout=30)
        beats = session_row(db_url, session.id)["beats"]
        assert wait_until(lambda: session_row(db_url, session.id)["beats"] >= beats + 3, timeout=30)
        assert session.heartbeat_thread.is_alive() and not session.lost.is_set()
        kept.check()


@pytest.mark.sqlite_only  # blocks writers with a raw SQLite lock
def test_renewals_failing_past_the_ttl_mark_the_session_lost(db_url: str) -> None:
    with Registry(db_url, ttl=0.6, timeout=0.1) as registry:
        registry.resolve("device", "node")
        lease = registry.acquire("device", "node")
        session = registry.session()
        blocker = sqlite3.connect(db_url, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another process sitting on the write lock
        try:
            assert wait_until(lambda: session.lost.is_set(), timeout=30)
            assert lease.lost and "could not renew" in (session.lost_reason or "")
            assert session.last_error is not None
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert wait_until(lambda: not session.heartbeat_thread.is_alive(), timeout=30)
        # Nobody reaped it meanwhile, so the row is still live: the next session() closes it
        # cleanly, which frees the lease at once (no lock-delay, as for any clean close).
        assert session_row(db_url, session.id)["state"] == "live"
        fresh = registry.session()
        assert fresh is not session
        assert session_row(db_url, session.id)["state"] == "closed"
        with Registry(db_url, lock_delay=3600) as other:
            assert other.acquire("device", "node").token == 2


# -- exit and fork -----------------------------------------------------------------------------------

_EXITS_WITHOUT_CLOSE = r"""
import sys
from nameplate import Registry
registry = Registry(sys.argv[1], ttl=3600, lock_delay=3600)
registry.resolve("device", "node")
registry.acquire("device", "node")
registry.resolve("scratch", "process", ephemeral=True)
print(registry.session().id, flush=True)
"""


def test_interpreter_exit_closes_the_session_and_frees_what_it_held(db_url: str) -> None:
    done = subprocess.run([sys.executable, "-c", _EXITS_WITHOUT_CLOSE, str(db_url)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    session_id = done.stdout.strip()
    assert session_row(db_url, session_id)["state"] == "closed"
    with Registry(db_url, lock_delay=3600) as registry:
        assert registry.locks() == []
        assert registry.lookup("scratch", "process") is None
        assert registry.acquire("device", "node").token == 2  # a clean close leaves no lock-delay


def _forked(work: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Run ``work()`` (returning a JSON-able dict) in a forked child and return what it returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            signal.alarm(int(timeout))  # a deadlocked child must not hang the suite
            os.write(write, json.dumps(work()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and text, f"the child failed ({status})"
    result: dict[str, Any] = json.loads(text)
    return result


def test_a_forked_child_does_not_inherit_the_session(db_url: str) -> None:
    called: list[str] = []
    with Registry(db_url, ttl=5) as registry:
        registry.resolve("device", "node")
        lease = registry.acquire("device", "node", on_lost=lambda lost: called.append(lost.name))
        parent_session = registry.session().id

        def child() -> dict[str, Any]:
            report: dict[str, Any] = {"lease_lost_in_child": lease.lost, "on_lost_calls": list(called),
                                      "inherited_threads": len(_heartbeat_threads())}
            report["new_session"] = registry.session().id != parent_session
            report["threads"] = len(_heartbeat_threads())
            try:
                registry.acquire("device", "node")
                report["acquire"] = "got it"
            except LeaseHeldError:
                report["acquire"] = "held"
            return report

        report = _forked(child)
        assert report == {"lease_lost_in_child": True, "on_lost_calls": [], "inherited_threads": 0,
                          "new_session": True, "threads": 1, "acquire": "held"}
        lease.check()  # the parent still holds it, and its session lives on
        assert not lease.lost and called == []
        assert registry.session().id == parent_session
        assert session_row(db_url, parent_session)["state"] == "live"


def test_a_fork_while_another_thread_opens_the_session_does_not_deadlock_the_child(db_url: str) -> None:
    with Registry(db_url) as registry:
        holding = threading.Event()
        release = threading.Event()

        def inside_session_open() -> None:
            with registry._leasing._session_lock:  # as a thread in the middle of session() would
                holding.set()
                release.wait(60)

        thread = threading.Thread(target=inside_session_open)
        thread.start()
        try:
            assert holding.wait(30)
            report = _forked(lambda: {"session": registry.session().id}, timeout=20)
        finally:
            release.set()
            thread.join()
        assert report["session"] != registry.session().id


def test_ephemeral_entries_leave_with_their_session(db_url: str) -> None:
    with Registry(db_url) as registry:
        registry.resolve("worker-1", "process", ephemeral=True)
        registry.resolve("durable", "node")
        assert registry.lookup("worker-1", "process") is not None
        assert registry.sessions()[0].id == registry.session().id  # the ephemeral entry opened it
    with Registry(db_url) as again:
        assert again.lookup("worker-1", "process") is None
        assert again.lookup("durable", "node") is not None
    deleted = [detail for _, detail in events(db_url, "delete")]
    assert len(deleted) == 1 and "ephemeral" in deleted[0]["reason"]
