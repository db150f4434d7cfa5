"""What only a registry shared by hosts has: hosts judged by boot identity, server clocks, NOTIFY, the
driver as an extra, and what maintenance means on a server. The behavioural suite runs on PostgreSQL
through the parametrized ``registry``/``db_url`` fixtures; these tests are about the differences."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from nameplate import Registry
from nameplate._liveness import BOOT_ID, HOSTNAME, PROCESS_TABLE, process_start
from nameplate.cli import main
from nameplate.errors import DatabaseLocationError, LeaseHeldError, RegistryBusyError

from _session_helpers import events, insert_session, sleeper, stop_child

#: A process "on another host": same hostname, but another boot id (hence another process table).
_OTHER_HOST_HOLDER = r"""
import json, sys
import nameplate._liveness as liveness, nameplate._session as session
liveness.BOOT_ID = session.BOOT_ID = "another-host-boot"
liveness.PROCESS_TABLE = "another-host-boot/pid:[1]"
from nameplate import Registry
registry = Registry(sys.argv[1], ttl=float(sys.argv[2]), lock_delay=0)
lease = registry.acquire("device", "node")
print(json.dumps({"token": lease.token, "pid": registry.session().pid}), flush=True)
sys.stdin.readline()
try:
    registry.acquire("desk", "node")
    print("took desk", flush=True)
except Exception as error:
    print(type(error).__name__, flush=True)
print(json.dumps(registry.reap()), flush=True)
sys.stdin.readline()
"""


def _other_host(url: str, ttl: float) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    child = subprocess.Popen([sys.executable, "-c", _OTHER_HOST_HOLDER, url, str(ttl)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        stop_child(child)
        pytest.fail("the other host's holder died before acquiring")
    return child, json.loads(line)


def test_two_hosts_with_one_hostname_never_steal_each_others_live_leases(pg_url: str) -> None:
    with Registry(pg_url) as setup:
        setup.resolve("device", "node")
        setup.resolve("desk", "node")
    child, info = _other_host(pg_url, ttl=30)
    try:
        assert child.stdin is not None and child.stdout is not None
        with Registry(pg_url, ttl=30, lock_delay=0) as here:
            desk = here.acquire("desk", "node")
            with pytest.raises(LeaseHeldError):
                here.acquire("device", "node")
            assert here.reap() == []  # its pid means nothing in this process table: judged by ttl, alive
            assert {s.pid for s in here.sessions()} >= {info["pid"], os.getpid()}
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.stdout.readline().strip() == "LeaseHeldError"  # nor does it take ours
            assert json.loads(child.stdout.readline()) == []
            desk.check()  # still ours: neither host judged the other dead
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        stop_child(child)


def test_another_hosts_killed_holder_is_freed_by_its_ttl_on_the_server_clock(pg_url: str) -> None:
    with Registry(pg_url) as setup:
        setup.resolve("device", "node")
    child, info = _other_host(pg_url, ttl=1.0)
    try:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        with Registry(pg_url, lock_delay=0) as here:
            started = time.monotonic()
            lease = here.acquire("device", "node", wait=20)
            waited = time.monotonic() - started
        # Not proven dead by its pid (another process table): it had to miss its ttl first.
        assert 0.3 < waited < 15 and lease.token == info["token"] + 1
        reaped = [detail for _, detail in events(pg_url, "session.reap")]
        assert [r["state"] for r in reaped] == ["expired"]
    finally:
        stop_child(child)


def test_a_session_from_another_boot_is_alive_while_it_beats_and_never_judged_by_its_pid(pg_url: str) -> None:
    with Registry(pg_url) as registry:
        registry.resolve("device", "node")
        gone = sleeper()
        start = process_start(gone.pid)
        stop_child(gone)
        assert start is not None
        # Same hostname, a pid that is gone here: on one host that is proof of death, across hosts not.
        insert_session(pg_url, "THERE", pid=gone.pid, process_start=start, hostname=HOSTNAME,
                       boot_id="another-boot/pid:[1]", ttl=60, holds=("device",))
        insert_session(pg_url, "HERE", pid=gone.pid, process_start=start, hostname="renamed-host",
                       boot_id=PROCESS_TABLE, ttl=60)
        assert registry.reap() == ["HERE"]  # this process table, pid gone: dead, whatever the hostname
        with pytest.raises(LeaseHeldError):
            registry.acquire("device", "node")
        insert_session(pg_url, "SILENT", pid=gone.pid, process_start=start, boot_id="another-boot/pid:[1]",
                       ttl=1, beat_age=5)
        assert registry.reap() == ["SILENT"]
    assert BOOT_ID in PROCESS_TABLE and PROCESS_TABLE != BOOT_ID


def test_sessions_are_stamped_on_the_server_clock(pg_url: str) -> None:
    with Registry(pg_url) as registry:
        session = registry.session()
        server = registry._backend.clock()
        beat = [s for s in registry.sessions() if s.id == session.id][0].last_beat_at.timestamp()
        assert abs(server - beat) < 5 and abs(server - time.time()) < 5


def test_follow_wakes_on_notify_from_another_process(pg_url: str) -> None:
    with Registry(pg_url) as registry:
        seen: list[str] = []
        stop = threading.Event()

        def follow() -> None:
            for event in registry.follow(interval=0.02, stop=stop.is_set):
                if event.name:
                    seen.append(event.name)

        follower = threading.Thread(target=follow)
        follower.start()
        try:
            backend = registry._backend
            before = backend.change_counter()
            subprocess.run([sys.executable, "-m", "nameplate", "--db", pg_url, "resolve", "from-elsewhere", "--kind",
                            "node"], check=True, capture_output=True, timeout=60)
            assert _eventually(lambda: "from-elsewhere" in seen)
            assert backend.change_counter() > before  # the commit's NOTIFY, not a poll of the log
        finally:
            stop.set()
            follower.join(timeout=10)


def _eventually(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_check_stats_vacuum_and_checkpoint_say_what_does_not_apply(pg_url: str) -> None:
    with Registry(pg_url) as registry:
        registry.resolve("a", "node")
        report = registry.check()
        assert report.ok and set(report.not_applicable) == {"integrity", "foreign_key", "permissions"}
        stats = registry.stats()
        assert stats["not_applicable"] == ["wal_bytes", "shm_bytes"] and stats["file_bytes"] > 0
        assert registry.checkpoint()["not_applicable"] is True
        assert registry.vacuum()["after"]["file_bytes"] > 0
    runner = CliRunner()
    checked = runner.invoke(main, ["--db", pg_url, "check"])
    assert checked.exit_code == 0 and "not applicable on this database: integrity" in checked.output
    assert "not applicable" in runner.invoke(main, ["--db", pg_url, "checkpoint"]).output
    assert "wal:            not applicable" in runner.invoke(main, ["--db", pg_url, "stats"]).output


def test_writes_wait_for_the_advisory_lock_and_time_out_busy(pg_url: str) -> None:
    import psycopg

    with Registry(pg_url, timeout=0.3) as registry:
        registry.resolve("warm", "node")
        backend = registry._backend
        key = backend._registry_keys(backend.connection())[0]
        with psycopg.connect(pg_url) as blocker:
            blocker.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
            started = time.monotonic()
            with pytest.raises(RegistryBusyError) as caught:
                registry.resolve("blocked", "node")
            assert 0.25 < time.monotonic() - started < 5
            assert "waiting for the write lock" in str(caught.value)
            assert registry.lookup("warm", "node") is not None  # reads never wait for a writer
        assert registry.resolve("blocked", "node") == registry.lookup("blocked", "node")


def test_two_schemas_are_two_registries_that_never_wait_for_each_other(pg_url: str, postgres_server: Any) -> None:
    other = postgres_server.fresh_url()
    with Registry(pg_url) as first, Registry(other) as second:
        first.resolve("only-here", "node")
        assert second.lookup("only-here", "node") is None
        assert first._backend._registry_keys(first._backend.connection()) != \
            second._backend._registry_keys(second._backend.connection())


def test_urls_libpq_environment_and_the_missing_driver(pg_url: str, tmp_path: Path) -> None:
    # postgres:// and SQLAlchemy's postgresql+psycopg:// open the same registry.
    with Registry(pg_url) as registry:
        entry_id = registry.resolve("spelled", "node")
    for scheme in ("postgres", "postgresql+psycopg"):
        with Registry(scheme + pg_url[len("postgresql"):]) as again:
            assert again.lookup("spelled", "node") == entry_id
    # The driver missing: the error names the extra.
    script = ("import sys; sys.modules['psycopg'] = None\nfrom nameplate import Registry\n"
              f"Registry({pg_url!r})")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "pip install 'nameplate[postgres]'" in result.stderr
    assert "DatabaseLocationError" in result.stderr


def test_a_server_that_is_not_there_is_a_location_error_without_the_password() -> None:
    with pytest.raises(DatabaseLocationError) as caught:
        Registry("postgresql://ada:pw-s3cret@127.0.0.1:1/registry", timeout=2)
    assert "cannot connect to postgresql://ada:***@127.0.0.1:1/registry" in str(caught.value)
    assert "pw-s3cret" not in str(caught.value) + repr(caught.value.facts)


def _durable(document: dict[str, Any]) -> dict[str, Any]:
    """What an export reproduces: everything but when and at which revision it was taken."""
    kept = dict(document)
    for key in ("revision", "exported_at"):
        kept.pop(key)
    core = dict(kept["workspaces"][0])
    core.pop("created_at")  # each registry's core layer is made by its own first migration
    kept["workspaces"] = [core, *kept["workspaces"][1:]]
    return kept


def test_export_from_sqlite_and_import_into_postgresql_and_back_reproduces_the_registry(
        tmp_path: Path, pg_url: str) -> None:
    with Registry(tmp_path / "one-host.db") as old:
        old.create_workspace("dev", description="a layer over core")
        old.define_kind("instrument", required=["vendor"], name_pattern=r"^[a-z0-9_]+$")
        old.resolve("pcr_1", "node", {"slot": 3, "tags": ["a", "b"]})
        old.register("ot2", "instrument", {"vendor": "opentrons"})
        old.register("alpha", "provider", capabilities=["llm", "chat"])
        old.resolve("pcr_1", "node", {"slot": 4}, workspace="dev")
        old.resolve("scratch", "node")
        old.hide("scratch", "node", workspace="dev")
        document = old.export()
    with Registry(pg_url) as shared:
        plan = shared.import_document(document)
        assert len(plan.added) == 4 and plan.workspaces_added == ["dev"]
        assert plan.tombstones_added == ["dev/node/scratch"]
        copied = shared.export()
        assert _durable(copied) == _durable(document)
        assert shared.lookup("pcr_1", "node", workspace="dev") == \
            [e for e in document["entries"] if e["name"] == "pcr_1"][0]["id"]  # ids kept, layers too
        assert shared.lookup("scratch", "node", workspace="dev") is None
        assert [e.name for e in shared.find("provider", {"llm"})] == ["alpha"]
        # Identity columns moved past every imported id: new rows of each table still get fresh ones.
        shared.create_workspace("after")
        shared.define_kind("gadget")
        assert shared.resolve("fresh", "gadget", workspace="after") == shared.lookup("fresh", workspace="after")
    with Registry(tmp_path / "back.db") as back:
        back.import_document(copied)
        assert _durable(back.export()) == _durable(document)


def test_a_search_path_without_a_schema_is_a_location_error(postgres_server: Any) -> None:
    url = f"{postgres_server.database_url}?options=-csearch_path%3Dno_such_schema"
    with pytest.raises(DatabaseLocationError, match="names no existing schema"):
        Registry(url)


def test_libpq_environment_and_service_files_fill_in_the_url(pg_url: str, postgres_server: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import urlsplit

    with Registry(pg_url) as registry:
        entry_id = registry.resolve("via-env", "node")
    parts = urlsplit(pg_url)
    options = parts.query  # options=-csearch_path%3Dt<n>: the test's own schema
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[nameplate_test]\nhost={parts.hostname}\nport={parts.port}\nuser={parts.username}\n"
                        f"dbname={postgres_server.database}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    with Registry(f"postgresql:///?service=nameplate_test&{options}") as by_service:
        assert by_service.lookup("via-env", "node") == entry_id
    monkeypatch.delenv("PGSERVICEFILE")
    monkeypatch.setenv("PGHOST", str(parts.hostname))
    monkeypatch.setenv("PGPORT", str(parts.port))
    monkeypatch.setenv("PGUSER", str(parts.username))
    with Registry(f"postgresql:///{postgres_server.database}?{options}") as by_environment:
        assert by_environment.lookup("via-env", "node") == entry_id
