"""A second backend on a file this process already holds must not drop the first one's POSIX locks.

Closing any descriptor of a file drops every POSIX lock the process holds on it. If opening a second
Registry read the header with plain file I/O, the first Registry's SHARED lock on the database file
would be gone; another process closing its last connection would then take the file for unused and
checkpoint and delete the ``-wal`` under us (seen in the chaos run as UNIQUE failures on imports).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nameplate import ForeignDatabaseError, Registry

_OTHER_PROCESS_CLOSES = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("SELECT count(*) FROM entry").fetchone()
conn.close()
"""


def _another_process_opens_and_closes(path: Path) -> None:
    subprocess.run([sys.executable, "-c", _OTHER_PROCESS_CLOSES, str(path)], check=True, timeout=60)


def test_a_second_registry_leaves_the_first_ones_locks_in_place(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    first = Registry(path)
    first.resolve("lh1", "node")
    assert first.lookup("lh1", "node") is not None  # the first registry now holds a read connection
    wal = Path(f"{path}-wal")
    assert wal.exists()

    second = Registry(path)
    second.close()
    _another_process_opens_and_closes(path)

    # Had the SHARED lock been dropped, the other process would have been "last" and removed the WAL.
    assert wal.exists(), "another process checkpointed and deleted the WAL of a database still open here"
    first.resolve("lh2", "node")
    assert {e.name for e in first.list("node")} == {"lh1", "lh2"}
    first.close()


def test_many_registries_opened_and_closed_beside_a_live_one_keep_it_working(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    live = Registry(path)
    ids = {}
    for i in range(20):
        other = Registry(path)
        ids[f"n{i}"] = other.resolve(f"n{i}", "node")
        other.close()
        if i % 5 == 0:
            _another_process_opens_and_closes(path)
        assert live.lookup(f"n{i}", "node") == ids[f"n{i}"]
    assert Path(f"{path}-wal").exists()
    live.close()


def test_a_file_replaced_after_every_registry_closed_is_identified_again(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    Registry(path).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    foreign = sqlite3.connect(path)
    foreign.execute("PRAGMA application_id = 1234")
    foreign.execute("CREATE TABLE invoices (id INTEGER)")
    foreign.commit()
    foreign.close()

    with pytest.raises(ForeignDatabaseError):
        Registry(path)
