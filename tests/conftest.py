"""Shared fixtures: real SQLite files in temp dirs, a real PostgreSQL server, real processes for concurrency.

The ``registry`` fixture (and ``db_url``) runs each test that uses it against both backends: a SQLite
file in the test's temp dir, and a fresh schema (about 2 ms) in a throwaway PostgreSQL database made
once per session (about 50 ms). A test that also takes ``db_path`` reads the file itself, so it runs on
SQLite only; so does one marked ``sqlite_only``. The server is ``NAMEPLATE_TEST_POSTGRESQL`` (a URL to a
database the role may create databases from; default ``postgresql://postgres@127.0.0.1:5432/postgres``).
Without a server the PostgreSQL cases skip with the reason, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import inspect
import itertools
import multiprocessing
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from nameplate import Registry

BACKENDS = ("sqlite", "postgresql")
PG_ENV = "NAMEPLATE_TEST_POSTGRESQL"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: the test is about SQLite files; it runs on SQLite alone")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    own_arguments = set(inspect.signature(metafunc.function).parameters)
    if "db_path" in own_arguments or metafunc.definition.get_closest_marker("sqlite_only"):
        metafunc.parametrize("backend", ["sqlite"], indirect=True)
    else:
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test's registry lives in (parametrized by ``pytest_generate_tests``)."""
    return str(getattr(request, "param", "sqlite"))


class PostgresServer:
    """A throwaway database on the test server; :meth:`fresh_url` makes a new schema in it."""

    def __init__(self, base_url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.base_url = base_url
        self.database = f"nameplate_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(base_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE DATABASE {self.database}")
        self.database_url = _with_database(base_url, self.database)
        self._admin = psycopg.connect(self.database_url, autocommit=True)
        self._schemas = itertools.count(1)

    def fresh_url(self) -> str:
        """The URL of a new, empty schema: one registry."""
        schema = f"t{next(self._schemas)}"
        self._admin.execute(f"CREATE SCHEMA {schema}")
        return f"{self.database_url}?options={quote(f'-csearch_path={schema}')}"

    def close(self) -> None:
        self._admin.close()
        with self._psycopg.connect(self.base_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")


def _with_database(url: str, database: str) -> str:
    head, _, _ = url.partition("?")
    prefix = head.rsplit("/", 1)[0] if head.count("/") > 2 else head
    return f"{prefix}/{database}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's throwaway PostgreSQL database (skips, or fails under CI=true, without a server)."""
    url = os.environ.get(PG_ENV, PG_DEFAULT)
    try:
        server = PostgresServer(url)
    except ImportError as error:
        _unavailable(f"psycopg is not installed ({error}); pip install -e '.[test]'")
    except Exception as error:  # psycopg.Error: no server, no role, no CREATEDB
        _unavailable(f"no PostgreSQL server at {url} ({type(error).__name__}: {str(error).strip()}); "
                     f"start one or set {PG_ENV}")
    yield server
    server.close()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true needs PostgreSQL: {reason}")
    pytest.skip(reason)


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty PostgreSQL registry (its own schema)."""
    return postgres_server.fresh_url()


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where the test's registry lives: a file path on SQLite, a fresh schema's URL on PostgreSQL."""
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "registry.db")


@pytest.fixture
def registry(db_url: str) -> Iterator[Registry]:
    with Registry(db_url) as reg:
        yield reg


def query_db(spec: str | Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read straight from the database (a SQLite file, or a PostgreSQL URL), past nameplate."""
    if "://" not in str(spec):
        conn = sqlite3.connect(spec)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(str(spec), autocommit=True) as pg:
        return [tuple(row) for row in pg.execute(sql).fetchall()]


def table_snapshot(spec: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read past nameplate: to prove that a failed call changed nothing."""
    if "://" in str(spec):
        tables = [r[0] for r in query_db(spec, "SELECT table_name FROM information_schema.tables WHERE "
                                               "table_schema = current_schema() AND table_type = 'BASE TABLE' "
                                               "ORDER BY table_name")]
    else:
        tables = [r[0] for r in query_db(spec, "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT "
                                               "LIKE 'sqlite_%' ORDER BY name")]
    return {t: sorted(query_db(spec, f"SELECT * FROM {t}"), key=repr) for t in tables}


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


def file_at_schema_version(path: Path, version: int) -> None:
    """Make ``path`` a genuine registry file of schema ``version``, as that release left it: migrations
    1..version applied and recorded, ``user_version`` set, nothing later (applied_at 0)."""
    from nameplate._paths import locate
    from nameplate.backends import open_backend
    from nameplate.backends.migrate import MigrationContext, available

    backend = open_backend(locate(path), timeout=10.0, synchronous="NORMAL")
    try:
        with backend.write() as tx:
            for earlier in available()[:version]:
                earlier.module.upgrade(MigrationContext(tx, backend))
                tx.execute("INSERT INTO schema_migration (version, name, applied_at) VALUES (?, ?, 0)",
                           [earlier.version, earlier.name])
            backend.set_schema_version(tx, version)
    finally:
        backend.close()


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
