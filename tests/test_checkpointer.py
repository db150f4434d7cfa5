"""Issue 15, target 2: WAL checkpoints run in a background thread, never inside a caller's commit,
and the log stays bounded under writers that never pause, in several processes at once."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from nameplate import Registry
from nameplate.backends import sqlite as sqlite_backend

from conftest import run_processes, wait_until

#: RESTART_FRAMES (about 32 MiB) plus what three writers append while a RESTART is tried: 33-55 MiB
#: were measured (more on a loaded machine); with PASSIVE checkpoints only, 3 x 2,000 creates
#: already reached 116-134 MiB, and this test writes twice as much.
WAL_BOUND = 80 * 1024 * 1024


def wal_bytes(path: Path) -> int:
    try:
        return os.path.getsize(f"{path}-wal")
    except OSError:
        return 0


def test_commits_do_not_checkpoint_the_background_thread_does(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Registry(db_path) as registry:
        backend: Any = registry._backend
        assert backend.connection().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        monkeypatch.setattr(backend.checkpointer, "wake", lambda: None)
        for i in range(300):  # about 6 frames each: past SQLite's 1,000-frame mark
            registry.resolve(f"n{i}", "node")
        frames = backend._wal_frames()
        assert frames > sqlite_backend.CHECKPOINT_FRAMES  # no commit checkpointed on its own
        monkeypatch.undo()
        registry.resolve("one-more", "node")  # past the mark: wakes the checkpointer
        assert wait_until(lambda: backend.checkpointer.runs > 0)
        registry.resolve("and-another", "node")  # the log was copied back: this writer starts it over
        assert backend._wal_frames() < 100


def test_a_writer_that_never_pauses_wakes_a_checkpoint_per_thousand_new_frames(db_path: Path) -> None:
    """Past the mark, the log does not start over while writes continue (each PASSIVE checkpoint ends a
    commit or two behind): the checkpointer must count frames not yet copied back, not the log's
    length, or it runs a checkpoint, fsync included, after nearly every commit."""
    with Registry(db_path) as registry:
        backend: Any = registry._backend
        creates = 3000
        for i in range(creates):
            registry.resolve(f"n{i}", "node")
        frames_written = creates * 6
        assert backend.checkpointer.runs <= 3 * frames_written // sqlite_backend.CHECKPOINT_FRAMES, (
            f"{backend.checkpointer.runs} checkpoints for {creates} creates")
        assert backend.checkpointer.runs > 0


def _writer(barrier: Any, results: Any, index: int, path: str, count: int) -> None:
    with Registry(path) as registry:
        barrier.wait(timeout=60)
        largest = 0
        for i in range(count):
            registry.resolve(f"w{index}-{i}", "node", {"payload": "x" * 200})
            if i % 50 == 0:
                largest = max(largest, wal_bytes(Path(path)))
        results.put((index, largest))


def test_the_log_stays_bounded_under_writers_that_never_pause(db_path: Path) -> None:
    Registry(db_path).close()
    # 3 x 4,000 creates write about 100,000 frames (400 MB) to the log; checkpointed only by PASSIVE
    # checkpoints racing the writers, it kept growing (295 MB in an earlier attempt).
    largest = run_processes(_writer, [(str(db_path), 4_000)] * 3, timeout=300)
    assert max(largest) < WAL_BOUND, largest
    with Registry(db_path) as registry:
        assert len(registry.list("node")) == 12_000
        assert not registry.check().problems


def exit_code(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None (after killing it) if it did not exit within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_a_fork_during_checkpoints_gives_a_child_that_works(db_path: Path) -> None:
    with Registry(db_path) as registry:
        backend: Any = registry._backend
        for round_index in range(5):
            for i in range(150):  # past the mark again: the checkpointer is busy copying when we fork
                registry.resolve(f"r{round_index}-{i}", "node", {"padding": "x" * 500})
            parent_checkpointer = backend.checkpointer
            pid = os.fork()
            if pid == 0:  # the child: its own checkpointer, and its writes work (a hang fails below)
                code = 1
                try:
                    registry.resolve(f"child-{round_index}", "node")
                    code = 0 if backend.checkpointer is not parent_checkpointer else 2
                finally:
                    os._exit(code)
            assert exit_code(pid, timeout=20) == 0
            assert registry.lookup(f"child-{round_index}", "node") is not None
