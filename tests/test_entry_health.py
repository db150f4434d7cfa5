"""Health reports of entries, health checks on the heartbeat, healthiest selection, delete_all."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nameplate import (
    EntryNotFoundError,
    InvalidInputError,
    InvalidMetadataError,
    LeaseHeldError,
    NoMatchError,
    Registry,
    _entry_health,
)

from conftest import table_snapshot, wait_until

_REPORTER = """
import sys, time
from nameplate import Registry
registry = Registry(sys.argv[1], ttl=60)
registry.report_health(sys.argv[2], "provider", sys.argv[3], load=float(sys.argv[4]))
print("ready", flush=True)
time.sleep(120)
"""


def _reporter(db_path: Path, name: str, health: str, load: float) -> subprocess.Popen[str]:
    child = subprocess.Popen([sys.executable, "-c", _REPORTER, str(db_path), name, health, str(load)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    return child


def _stop(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait(timeout=60)
    if child.stdout is not None:
        child.stdout.close()


@pytest.fixture
def llms(registry: Registry) -> Registry:
    for name in ("alpha", "beta", "gamma"):
        registry.register(name, "provider", capabilities=["llm"])
    return registry


def test_healthiest_orders_by_health_then_load_and_never_picks_critical(llms: Registry) -> None:
    with pytest.raises(NoMatchError, match="owned=True"):  # nobody vouches for any of them yet
        llms.select("provider", {"llm"}, "healthiest")
    llms.report_health("alpha", "provider", "degraded", load=0.1)
    llms.report_health("beta", "provider", "healthy", load=0.9)
    llms.report_health("gamma", "provider", "healthy", load=0.2)
    assert llms.select("provider", {"llm"}, "healthiest").name == "gamma"
    llms.report_health("gamma", "provider", "critical", load=0.0)
    assert llms.select("provider", {"llm"}, "healthiest").name == "beta"
    llms.report_health("beta", "provider", "critical")
    assert llms.select("provider", {"llm"}, "healthiest").name == "alpha"
    llms.report_health("alpha", "provider", "critical")
    with pytest.raises(NoMatchError, match="critical") as caught:
        llms.select("provider", {"llm"}, "healthiest")
    assert caught.value.facts["critical"] == ["alpha", "beta", "gamma"]
    health = llms.health("alpha", "provider")
    assert (health.health, health.alive, health.selectable, health.reporters) == ("critical", True, False, 1)


def test_a_killed_reporters_report_is_void_at_once(llms: Registry, db_path: Path) -> None:
    llms.report_health("alpha", "provider", "degraded")
    child = _reporter(db_path, "beta", "healthy", 0.5)
    try:
        assert llms.select("provider", {"llm"}, "healthiest").name == "beta"
        assert llms.health("beta", "provider").alive
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        # its session's ttl is 60 s: only the pid check can tell, and it tells at once
        assert llms.select("provider", {"llm"}, "healthiest").name == "alpha"
        beta = llms.health("beta", "provider")
        assert (beta.alive, beta.health, beta.reporters) == (False, None, 0)
    finally:
        _stop(child)


def test_several_reporters_each_keep_their_report_and_the_freshest_counts(llms: Registry, db_path: Path) -> None:
    child = _reporter(db_path, "alpha", "degraded", 0.5)
    try:
        llms.report_health("alpha", "provider", "healthy", load=0.1)
        alpha = llms.health("alpha", "provider")
        assert (alpha.health, alpha.load, alpha.reporters) == ("healthy", 0.1, 2)
    finally:
        _stop(child)
    assert llms.health("alpha", "provider").reporters == 1


def test_an_owned_entry_whose_owner_died_is_never_selected_whatever_others_report(registry: Registry,
                                                                                  db_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom nameplate import Registry\nr = Registry(sys.argv[1], ttl=60)\n"
        "r.register('local', 'provider', capabilities=['llm'], owned=True)\nprint('ready', flush=True)\n"
        "time.sleep(120)\n"), str(db_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        registry.report_health("local", "provider", "healthy")
        assert registry.select("provider", {"llm"}, "healthiest").name == "local"
        owner.kill()
        owner.wait(timeout=30)
        local = registry.health("local", "provider")
        assert (local.alive, local.state, local.health) == (False, "dead", "healthy")
        with pytest.raises(NoMatchError):
            registry.select("provider", {"llm"}, "healthiest")
    finally:
        _stop(owner)


def test_a_live_owners_session_status_is_its_entries_health_until_they_report(registry: Registry) -> None:
    registry.session(label="owner").report(status="degraded")
    registry.register("mine", "provider", capabilities=["llm"], owned=True)
    mine = registry.health("mine", "provider")
    assert (mine.health, mine.alive, mine.state, mine.reporters) == ("degraded", True, "live", 0)
    registry.session().report(status="critical")
    with pytest.raises(NoMatchError, match="critical"):
        registry.select("provider", {"llm"}, "healthiest")
    registry.report_health("mine", "provider", "healthy", info={"queue": 3})
    mine = registry.health("mine", "provider")
    assert (mine.health, dict(mine.info)) == ("healthy", {"queue": 3})


def test_bad_reports_are_refused_and_change_nothing(llms: Registry, db_path: Path) -> None:
    llms.session()
    before = table_snapshot(db_path)
    for call, error in (
        (lambda: llms.report_health("alpha", "provider", "fine"), InvalidInputError),
        (lambda: llms.report_health("alpha", "provider", "healthy", load=float("nan")), InvalidInputError),
        (lambda: llms.report_health("alpha", "provider", "healthy", load=True), InvalidInputError),
        (lambda: llms.report_health("alpha", "provider", "healthy", info={"x": object()}), InvalidMetadataError),
        (lambda: llms.report_health("nobody", "provider", "healthy"), EntryNotFoundError),
        (lambda: llms.watch_health("alpha", "provider", "not callable"), InvalidInputError),  # type: ignore[arg-type]
        (lambda: llms.watch_health("nobody", "provider", lambda: "healthy"), EntryNotFoundError),
    ):
        with pytest.raises(error):
            call()
    assert table_snapshot(db_path) == before


def test_checks_run_on_the_heartbeat_and_a_raising_check_reports_critical(db_path: Path) -> None:
    answers = ["healthy"]

    def check() -> object:
        if answers[-1] == "raise":
            raise ConnectionError("api unreachable")
        return {"health": answers[-1], "load": len(answers), "queue": 7}

    with Registry(db_path, ttl=1.5) as registry:
        registry.register("api", "provider", capabilities=["llm"])
        registry.watch_health("api", "provider", check)
        api = registry.health("api", "provider")  # the first run happens in watch_health itself
        assert (api.health, api.load, dict(api.info)) == ("healthy", 1.0, {"queue": 7})
        answers.append("degraded")
        assert wait_until(lambda: registry.health("api", "provider").health == "degraded")
        answers.append("raise")
        assert wait_until(lambda: registry.health("api", "provider").health == "critical")
        assert "ConnectionError: api unreachable" in registry.health("api", "provider").info["error"]
        assert registry.unwatch_health("api", "provider") and not registry.unwatch_health("api", "provider")


@pytest.mark.sqlite_only  # reads SQLite's traced statements
def test_an_unchanged_report_is_not_written_again(llms: Registry) -> None:
    llms.watch_health("alpha", "provider", lambda: ("healthy", 0.5))
    statements: list[str] = []
    conn = llms._backend.connection()
    conn.set_trace_callback(statements.append)
    try:
        llms._health.poll()
    finally:
        conn.set_trace_callback(None)
    assert not any(s.startswith(("BEGIN IMMEDIATE", "INSERT", "UPDATE")) for s in statements), statements


def test_reports_are_not_events_and_go_with_their_entry(llms: Registry, db_path: Path) -> None:
    llms.session()  # opening it is an event of its own
    revision = llms.revision
    llms.report_health("alpha", "provider", "healthy")
    assert llms.revision == revision
    llms.delete("alpha", "provider")
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM entry_health").fetchone() == (0,)


def test_list_health_covers_every_match(llms: Registry) -> None:
    llms.register("speech", "provider", capabilities=["tts"])
    llms.report_health("beta", "provider", "degraded")
    listed = llms.list_health("provider", {"llm"})
    assert [(h.name, h.health, h.alive) for h in listed] == [
        ("alpha", None, False), ("beta", "degraded", True), ("gamma", None, False)]


def test_delete_all_is_one_transaction_and_stops_at_another_processes_lease(registry: Registry,
                                                                           db_path: Path) -> None:
    for name in ("a", "b", "c"):
        registry.resolve(name, "process")
    registry.resolve("keep", "node")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom nameplate import Registry\nr = Registry(sys.argv[1])\n"
        "r.acquire('b', 'process')\nprint('ready', flush=True)\ntime.sleep(120)\n"), str(db_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        before = table_snapshot(db_path)
        with pytest.raises(LeaseHeldError):
            registry.delete_all("process")
        assert table_snapshot(db_path) == before
    finally:
        _stop(holder)
    statements: list[str] = []
    conn = registry._backend.connection()
    conn.set_trace_callback(statements.append)
    try:
        removed = registry.delete_all("process")
    finally:
        conn.set_trace_callback(None)
    assert sorted(e.name for e in removed) == ["a", "b", "c"]
    assert [e.name for e in registry.list()] == ["keep"]
    assert statements.count("BEGIN IMMEDIATE") == 1, statements
    assert registry.delete_all("process") == []


def test_a_check_runs_on_every_beat(db_path: Path) -> None:
    calls: list[float] = []
    with Registry(db_path, ttl=1.5) as registry:
        registry.register("api", "provider")
        registry.watch_health("api", "provider", lambda: calls.append(time.monotonic()) or "healthy")
        assert wait_until(lambda: len(calls) >= 4, timeout=10)


def test_a_forked_child_does_not_run_its_parents_checks(llms: Registry) -> None:
    llms.watch_health("alpha", "provider", lambda: "healthy")
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own session, and a round of polling as its heartbeat would do
        try:
            llms.session(label="forked child")
            llms._health.poll()
            os.write(ready_write, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        assert os.read(ready_read, 1) == b"x"
        assert llms.health("alpha", "provider").reporters == 1  # the parent's report alone
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_read)
        os.close(ready_write)


def test_a_poll_racing_with_a_delete_writes_nothing_and_keeps_the_heartbeat(llms: Registry) -> None:
    llms.watch_health("alpha", "provider", lambda: "healthy")
    pk = llms._backend.query_one("SELECT pk FROM entry WHERE name = 'alpha'")[0]
    llms.delete("alpha", "provider")
    with llms._backend.write() as tx:  # what the poll writes after reading a pk that is gone by now
        tx.execute(_entry_health._UPSERT_IF_PRESENT, (pk, llms.session().id, "healthy", None, "{}", time.time(), pk))
    assert llms._backend.query_one("SELECT count(*) FROM entry_health WHERE entry_pk = ?", (pk,))[0] == 0
    llms._health.poll()  # the watch of the deleted entry stops, quietly
    assert llms.session().usable and not llms.unwatch_health("alpha", "provider")
