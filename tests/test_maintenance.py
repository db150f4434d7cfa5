"""check, stats, vacuum, checkpoint and schema status through the Python API."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from nameplate import Registry
from nameplate._health import CHECKS, CheckReport, Finding
from nameplate.backends.migrate import available, latest_version

from conftest import SPAWN, wait_until


def corrupt(db_path: Path, *statements: str) -> None:
    """Damage the file behind the registry's back, the way a bug or a hand edit would."""
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA foreign_keys = OFF")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_a_sound_registry_checks_ok(registry: Registry) -> None:
    registry.create_workspace("dev1")
    registry.register("Train", "step", {"sagemaker_step_type": "Training"}, capabilities=["gpu"])
    registry.resolve("lh", "node", workspace="dev1")
    registry.hide("Train", "step", workspace="dev1")
    registry.session(label="me")
    registry.acquire("lh", "node", workspace="dev1")
    report = registry.check()
    assert isinstance(report, CheckReport) and report.ok and report.problems == () and report.warnings == ()
    assert report.checked == {"entries": 3, "definitions": 1, "kinds": 12, "workspaces": 2, "leases": 1,
                              "sessions": 1, "plugins": 0}
    assert report.to_dict()["ok"] is True


@pytest.mark.parametrize(("check", "statements", "message"), [
    ("definition", ["UPDATE entry SET definition = '{}' WHERE name = 'Train'"],
     "required field 'sagemaker_step_type' is missing"),
    ("definition", ["UPDATE entry SET definition = 'not json' WHERE name = 'Train'"], "not valid JSON"),
    ("definition", ["UPDATE entry SET name = 'train' WHERE name = 'Train'"], "does not match the pattern"),
    ("metadata", ["UPDATE entry SET metadata = '[1]' WHERE name = 'lh'"], "metadata is not a JSON object"),
    ("metadata", ["UPDATE entry SET capabilities = '{' WHERE name = 'lh'"], "capabilities is not a JSON array"),
    ("capability_index", ["DELETE FROM entry_capability"], "the index holds []"),
    ("capability_index", ["INSERT INTO entry_capability (capability, entry_pk) SELECT 'ghost', pk FROM entry "
                          "WHERE name = 'lh'"], "find() would disagree"),
    ("foreign_key", ["UPDATE entry SET workspace_id = 99 WHERE name = 'lh'"], "points at a missing workspace"),
    ("layer", ["DELETE FROM workspace_ancestor WHERE workspace_id = 2 AND depth = 0"], "no closure row"),
    ("layer", ["DELETE FROM workspace_ancestor WHERE workspace_id = 2 AND depth = 1"], "ancestry inconsistent"),
    ("lease", ["UPDATE session SET state = 'closed'"], "which is closed"),
    ("ephemeral", ["UPDATE entry SET ephemeral = 1 WHERE name = 'lh'"], "has no session"),
])
def test_check_names_each_kind_of_damage(registry: Registry, db_path: Path, check: str, statements: list[str],
                                         message: str) -> None:
    registry.create_workspace("dev1")
    registry.register("Train", "step", {"sagemaker_step_type": "Training"}, capabilities=["gpu"])
    registry.resolve("lh", "node")
    registry.session(label="holder")
    registry.acquire("Train", "step")
    assert registry.check().ok
    corrupt(db_path, *statements)
    report = registry.check()
    assert not report.ok and check in CHECKS
    assert [p.check for p in report.problems] == [check], report.problems
    assert message in report.problems[0].message, report.problems[0]
    assert str(report.problems[0]) == f"{check}: {report.problems[0].message}"


def test_check_reports_a_validator_that_cannot_be_imported(registry: Registry, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"check_rules_{uuid.uuid4().hex}"  # unique: other tests import validator modules too
    (tmp_path / f"{module}.py").write_text(textwrap.dedent("""
        def volume(definition):
            return [] if definition["max_ul"] > 0 else ["max_ul must be positive"]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.define_kind("pipette", required=["max_ul"], validator=f"{module}:volume")
    registry.register("p300", "pipette", {"max_ul": 300})
    assert registry.check().ok
    (tmp_path / f"{module}.py").unlink()
    monkeypatch.delitem(sys.modules, module)
    report = registry.check()  # reported, not raised: check must finish to list everything else
    assert [p.check for p in report.problems] == ["definition"]
    assert "cannot be imported" in report.problems[0].message


def _hold_and_hang(db: str, ready: Any) -> None:
    registry = Registry(db)
    registry.session(label="doomed")
    registry.acquire("device", "node")
    ready.set()
    time.sleep(3600)  # hold the lease until the test kills this process with SIGKILL


def test_a_lease_of_a_dead_process_is_a_warning_until_reaped(registry: Registry, db_path: Path) -> None:
    registry.resolve("device", "node")
    ready = SPAWN.Event()
    child = SPAWN.Process(target=_hold_and_hang, args=(str(db_path), ready), daemon=True)
    child.start()
    try:
        assert ready.wait(60)
        assert registry.check().warnings == ()  # alive: nothing to say
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert wait_until(lambda: bool(registry.check().warnings))
    finally:
        if child.is_alive():
            child.kill()
            child.join()
    report = registry.check()
    assert report.ok and [w.check for w in report.warnings] == ["lease"]
    assert "nameplate reap" in report.warnings[0].message and f"pid {child.pid}" in report.warnings[0].message
    registry.reap()
    assert registry.check().warnings == ()


def test_stats_counts_what_is_there(registry: Registry) -> None:
    registry.create_workspace("dev1")
    registry.resolve("a", "node")
    registry.resolve("b", "node", workspace="dev1")
    registry.register("Train", "step", {"sagemaker_step_type": "Training"})
    registry.hide("a", "node", workspace="dev1")
    stats = registry.stats()
    assert stats["entries"] == 3 and stats["tombstones"] == 1
    assert stats["entries_per_kind"]["node"] == 2 and stats["entries_per_kind"]["step"] == 1
    assert stats["entries_per_workspace"] == {"core": 2, "dev1": 1}
    assert stats["revision"] == registry.revision == stats["events"]
    assert stats["schema_version"] == stats["latest_schema_version"] == latest_version()
    assert stats["file_bytes"] > 0 and stats["wal_bytes"] >= 0 and stats["path"] == str(registry.location)
    assert stats["live_sessions"] == 0 and stats["leases"] == 0 and stats["kinds"] == 12


@pytest.mark.sqlite_only  # reads SQLite's own statement trace, plans or pragmas
def test_checkpoint_empties_the_wal_and_vacuum_shrinks_the_file(registry: Registry) -> None:
    for index in range(2000):
        registry.resolve(f"n{index}", "node", {"padding": "x" * 200})
    registry.checkpoint()
    for index in range(20):  # fewer pages than SQLite's auto-checkpoint: they stay in the WAL
        registry.resolve(f"m{index}", "node")
    assert registry.stats()["wal_bytes"] > 0
    result = registry.checkpoint()
    assert result["busy"] is False and result["wal_bytes_before"] > 0 and result["wal_bytes_after"] == 0
    assert registry.stats()["wal_bytes"] == 0  # TRUNCATE: the file itself goes back to zero
    for index in range(2000):
        registry.delete(f"n{index}", "node")
    registry.checkpoint()
    result = registry.vacuum()
    assert result["after"]["file_bytes"] < result["before"]["file_bytes"]
    assert registry.check().ok


def test_schema_status_inspects_without_migrating(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    status = Registry.schema_status(fresh)
    assert (status.current, status.latest, status.applied) == (0, latest_version(), [])
    assert status.pending == [(m.version, m.name) for m in available()] and not fresh.exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert Registry.schema_status(empty).pending == [(m.version, m.name) for m in available()]
    assert sqlite3.connect(empty).execute("PRAGMA user_version").fetchone()[0] == 0
    with Registry(empty) as registry:
        status = registry.migration_status()
        assert status.current == latest_version() and status.pending == []
        assert [a[:2] for a in status.applied] == [(m.version, m.name) for m in available()]
    assert Registry.schema_status(empty) == status


def test_finding_is_printable_and_serialisable() -> None:
    finding = Finding("lease", "lease on core/node/x belongs to session S, which is closed")
    assert str(finding).startswith("lease: ") and finding.to_dict() == {"check": "lease", "message": finding.message}
