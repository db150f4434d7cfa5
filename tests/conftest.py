"""Shared fixtures: real SQLite files in temp dirs, real processes for concurrency."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nameplate import Registry

# Children start with "spawn": a clean interpreter, so no test leans on state inherited across fork
# (the fork tests fork on purpose, explicitly).
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's real registry or workspace settings."""
    monkeypatch.delenv("NAMEPLATE_DB", raising=False)
    monkeypatch.delenv("NAMEPLATE_WORKSPACE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def registry(db_path: Path) -> Iterator[Registry]:
    with Registry(db_path) as reg:
        yield reg


def table_snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read with plain sqlite3: to prove that a failed call changed nothing."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


def run_processes(target: Callable[..., Any], args_list: list[tuple[Any, ...]], *,
                  timeout: float = 120.0) -> list[Any]:
    """Run ``target(barrier, results, index, *args)`` in one spawned process per args tuple.

    All start together behind a barrier; each puts ``(index, value)`` or ``(index, ("error", repr))``
    on the results queue. Every child is joined or killed before returning; a child that did not
    report fails the test.
    """
    n = len(args_list)
    barrier = SPAWN.Barrier(n)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(barrier, results, i, *args), daemon=True)
             for i, args in enumerate(args_list)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    collected: dict[int, Any] = {}
    try:
        while len(collected) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"only {len(collected)} of {n} processes reported within {timeout} s")
            try:
                index, value = results.get(timeout=min(remaining, 1.0))
            except Exception:  # queue.Empty: poll again, unless every child already died silently
                if all(not p.is_alive() for p in procs) and results.empty():
                    codes = [p.exitcode for p in procs]
                    raise AssertionError(f"children exited without reporting: exit codes {codes}") from None
                continue
            collected[index] = value
    finally:
        for proc in procs:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()
    return [collected[i] for i in range(n)]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
