"""Guarantees 1, 5 and 9 with real processes: one name one id, crash safety, migrations once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from nameplate import Registry
from nameplate.backends.migrate import latest_version

from conftest import query_db, run_processes

PROCESSES = 8
NAMES = 500


def _resolve_all(barrier: Any, results: Any, index: int, path: str, names: list[str]) -> None:
    try:
        order = list(names)
        random.Random(index).shuffle(order)
        with Registry(path, timeout=60) as registry:
            barrier.wait(timeout=60)
            seen = {name: registry.resolve(name, "node") for name in order}
        results.put((index, seen))
    except BaseException as error:  # report every failure to the parent instead of dying silently
        results.put((index, ("error", repr(error))))


def test_many_processes_resolving_the_same_names_get_the_same_ids(db_url: str) -> None:
    path = db_url
    Registry(path).close()  # the migrations race has its own test; here the schema exists
    names = [f"component-{i}" for i in range(NAMES)]
    outcomes = run_processes(_resolve_all, [(str(path), names)] * PROCESSES, timeout=240)
    errors = [o for o in outcomes if isinstance(o, tuple)]
    assert errors == []
    reference = outcomes[0]
    for seen in outcomes[1:]:
        assert seen == reference
    rows = query_db(path, "SELECT name, id FROM entry")
    creates = query_db(path, "SELECT count(*) FROM event WHERE action = 'create'")[0][0]
    assert len(rows) == NAMES
    assert dict(rows) == reference
    assert creates == NAMES


def _open_fresh(barrier: Any, results: Any, index: int, path: str) -> None:
    try:
        barrier.wait(timeout=60)
        with Registry(path, timeout=60) as registry:
            applied = registry.migrations_applied
            entry_id = registry.resolve("shared", "node")
        results.put((index, (applied, entry_id)))
    except BaseException as error:
        results.put((index, ("error", repr(error))))


def test_processes_opening_a_new_file_at_once_migrate_it_exactly_once(db_url: str) -> None:
    path = db_url
    outcomes = run_processes(_open_fresh, [(str(path),)] * PROCESSES, timeout=120)
    assert all(o[0] != "error" for o in outcomes), outcomes
    applied = [o[0] for o in outcomes]
    assert sorted(applied, key=len) == [[]] * (PROCESSES - 1) + [list(range(1, latest_version() + 1))]
    assert len({o[1] for o in outcomes}) == 1
    if "://" not in path:
        assert query_db(path, "PRAGMA user_version")[0][0] == latest_version()
    versions = query_db(path, "SELECT version FROM schema_migration ORDER BY version")
    assert versions == [(v,) for v in range(1, latest_version() + 1)]
    assert query_db(path, "SELECT count(*) FROM workspace")[0][0] == 1
    assert query_db(path, "SELECT count(*) FROM kind WHERE builtin = 1")[0][0] == 12


def test_a_forked_child_resolves_on_its_parents_registry(registry: Registry) -> None:
    parent_id = registry.resolve("before_fork", "node")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: use the inherited Registry, report over the pipe, never return into pytest
        code = 1
        try:
            os.close(read)
            child_id = registry.resolve("from_child", "node")
            seen = registry.lookup("before_fork", "node")
            os.write(write, f"{child_id} {seen}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_id, seen = pipe.read().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert seen == parent_id
    assert registry.lookup("from_child", "node") == child_id
    # The parent's connection still works after the child used its own.
    assert registry.resolve("after_fork", "node") == registry.lookup("after_fork", "node")


def test_threads_sharing_one_registry(registry: Registry) -> None:
    names = [f"t-{i}" for i in range(200)]
    results: dict[int, dict[str, str]] = {}
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def work(index: int) -> None:
        try:
            order = list(names)
            random.Random(index).shuffle(order)
            start.wait()
            results[index] = {name: registry.resolve(name, "node") for name in order}
            for name in order:
                assert registry.lookup(name, "node") == results[index][name]
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert all(results[i] == results[0] for i in range(8))
    assert len(registry.list("node")) == len(names)


_WRITER = """
import sys
from nameplate import Registry
registry = Registry(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    registry.resolve(f"crash-{i}", "node", {"payload": "x" * 200, "i": i})
    i += 1
"""


def test_kill_9_during_writes_leaves_a_consistent_database(db_url: str) -> None:
    path = db_url
    Registry(path).close()
    for round_number in range(3):
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            time.sleep(0.2 + 0.1 * round_number)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            if child.stdout is not None:
                child.stdout.close()
        if "://" not in path:  # the server checks its own pages and enforces foreign keys on every statement
            assert query_db(path, "PRAGMA integrity_check")[0][0] == "ok"
            assert query_db(path, "PRAGMA foreign_key_check") == []
        entries = query_db(path, "SELECT count(*) FROM entry")[0][0]
        creates = query_db(path, "SELECT count(*) FROM event WHERE action = 'create'")[0][0]
        assert entries == creates > 0  # every committed entry has its event: no half-written change
        with Registry(path) as registry:
            assert len(registry.list("node")) == entries
