"""The writer line serves this host's writers in arrival order, and nothing in it stalls anyone for long:
a killed member frees its place at once, a stopped or slow one costs the writer behind it at most the
patience, a forked child keeps nothing of its parent's place, and without OFD locks there is no line."""

from __future__ import annotations

import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nameplate import InvalidInputError, Registry
from nameplate.backends import _writer_line
from nameplate.backends._writer_line import WriterLine

from conftest import wait_until

pytestmark = pytest.mark.skipif(_writer_line._SETLK is None, reason="no OFD locks on this platform")

#: A member: enter the line of argv[1] with patience argv[2], say when it got its turn (and how long
#: that took), append its name to argv[4], hold its place argv[3] seconds (or until stdin closes), leave.
_MEMBER = """
import sys, time, os
from pathlib import Path
from nameplate.backends._writer_line import WriterLine
line = WriterLine(Path(sys.argv[1]), patience=float(sys.argv[2]))
started = time.monotonic()
place = line.enter()
print(f"turn {time.monotonic() - started:.3f} {place is not None}", flush=True)
with open(sys.argv[4], "a") as log:
    log.write(sys.argv[5] + "\\n")
hold = float(sys.argv[3])
if hold < 0:
    sys.stdin.read()
else:
    time.sleep(hold)
line.leave(place)
print("left", flush=True)
"""

#: A member that forks a child while it holds its place; the child sleeps, the parent waits to be killed.
_FORKING_MEMBER = """
import sys, os, time
from pathlib import Path
from nameplate.backends._writer_line import WriterLine
line = WriterLine(Path(sys.argv[1]), patience=30.0)
place = line.enter()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(f"child {child}", flush=True)
sys.stdin.read()
"""


def _write_lock_held_outside_the_line(database: Path, release_after: float | None = None) -> sqlite3.Connection:
    """A plain sqlite3 connection holding the write lock (a writer that knows nothing of the line);
    it commits after ``release_after`` seconds, or when the caller commits it."""
    blocker = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    if release_after is not None:
        threading.Timer(release_after, lambda: blocker.execute("COMMIT")).start()
    return blocker


def _tickets(database: Path) -> int:
    line = Path(f"{database}-line")
    if not line.exists():
        return 0  # no writer ever met a busy lock here
    raw = (line.read_bytes() + bytes(136))[128:136]
    return int(struct.unpack("q", raw)[0])


class _Members:
    def __init__(self, database: Path, log: Path) -> None:
        self.database, self.log = database, log
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, name: str, *, patience: float = 30.0, hold: float = -1.0) -> subprocess.Popen[str]:
        before = _tickets(self.database) if Path(f"{self.database}-line").exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", _MEMBER, str(self.database), str(patience), str(hold),
                                 str(self.log), name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        # It has its ticket once the counter moved: the next member starts behind it.
        assert wait_until(lambda: Path(f"{self.database}-line").exists() and _tickets(self.database) > before)
        return proc

    @staticmethod
    def turn(proc: subprocess.Popen[str]) -> tuple[float, bool]:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words and words[0] == "turn", words
        return float(words[1]), words[2] == "True"

    @staticmethod
    def release(proc: subprocess.Popen[str]) -> None:
        assert proc.stdin is not None
        proc.stdin.close()

    def served(self) -> list[str]:
        return self.log.read_text().split() if self.log.exists() else []


@pytest.fixture
def members(tmp_path: Path) -> Iterator[_Members]:
    crowd = _Members(tmp_path / "registry.db", tmp_path / "served.log")
    yield crowd
    for proc in crowd.procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=30)


def test_writers_are_served_in_arrival_order(members: _Members) -> None:
    first = members.start("first")
    members.turn(first)
    waiting = [members.start(f"m{i}", hold=0.02) for i in range(5)]
    assert members.served() == ["first"]  # everyone else waits for the first to leave
    members.release(first)
    for proc in waiting:
        assert proc.wait(timeout=60) == 0
    assert members.served() == ["first", "m0", "m1", "m2", "m3", "m4"]


def test_a_killed_member_frees_its_place_at_once(members: _Members) -> None:
    holder = members.start("holder")
    members.turn(holder)
    behind = members.start("behind", hold=0)
    time.sleep(0.2)
    assert members.served() == ["holder"]
    holder.kill()
    waited, in_line = members.turn(behind)
    assert in_line and waited < 5.0  # the patience is 30 s: the kernel freed the place with the process


def test_a_stopped_member_costs_the_writer_behind_it_nothing_more(members: _Members) -> None:
    holder = members.start("holder")
    members.turn(holder)
    os.kill(holder.pid, signal.SIGSTOP)
    behind = members.start("behind", hold=0)
    waited, _ = members.turn(behind)
    assert waited < 5.0  # it saw the member ahead was stopped, and went around it (patience 30 s)


def test_a_slow_member_ahead_costs_at_most_the_patience(members: _Members) -> None:
    holder = members.start("holder")
    members.turn(holder)
    behind = members.start("behind", patience=0.3, hold=0)
    waited, in_line = members.turn(behind)
    assert 0.25 <= waited < 3.0 and in_line  # it keeps its own place for the writers behind it
    assert members.served() == ["holder", "behind"]


def test_a_forked_child_keeps_nothing_of_its_parents_place(tmp_path: Path, members: _Members) -> None:
    database = tmp_path / "registry.db"
    parent = subprocess.Popen([sys.executable, "-c", _FORKING_MEMBER, str(database)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    members.procs.append(parent)
    assert parent.stdout is not None
    child = int(parent.stdout.readline().split()[1])
    try:
        parent.kill()  # dies holding its place; the child still runs, with copies of its descriptors
        parent.wait(timeout=30)
        behind = members.start("behind", hold=0)
        waited, in_line = members.turn(behind)
        assert in_line and waited < 5.0, "the child's inherited descriptor kept the dead parent's place"
    finally:
        os.kill(child, signal.SIGKILL)


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    line = WriterLine(tmp_path / "registry.db", patience=0.2)
    place = line.enter()
    assert place is not None
    started = time.monotonic()
    assert line.enter() is None  # the process's own turn is taken: after the patience, go around
    assert time.monotonic() - started >= 0.15
    line.leave(place)
    again = line.enter()
    assert again is not None
    line.leave(again)
    line.close()


def test_without_ofd_locks_there_is_no_line_and_writes_go_on(db_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_writer_line, "_SETLK", None)
    with Registry(db_path) as registry:
        assert registry._backend.writer_line.enter() is None  # type: ignore[attr-defined]
        assert registry.resolve("a", "node") == registry.lookup("a", "node")
    assert not Path(f"{db_path}-line").exists()


def test_a_writer_alone_never_queues_and_one_that_met_a_busy_lock_queues_behind_an_occupied_line(
        db_path: Path, members: _Members) -> None:
    with Registry(db_path) as registry:
        backend: Any = registry._backend
        for i in range(50):
            registry.resolve(f"alone{i}", "node")
        assert _tickets(db_path) == 0  # the lock was free every time: no ticket taken
        holder = members.start("holder")  # in the line, though it never takes SQLite's lock
        members.turn(holder)
        registry.resolve("unaware", "node")  # it met no busy lock lately: it tries the lock, gets it
        assert _tickets(db_path) == 1
        blocker = _write_lock_held_outside_the_line(db_path, 0.2)
        registry.resolve("met-busy", "node")  # busy: it queues (behind the holder, for the patience)
        assert _tickets(db_path) == 2
        assert backend._contended_until > time.monotonic()
        blocker.close()
        waiting = members.start("waiting")  # the newest ticket's holder is in the line now
        # As just after that busy lock (starting the process took longer than the 0.1 s window):
        backend._contended_until = time.monotonic() + 60
        registry.resolve("next", "node")  # the lock is free, but the line is occupied: it queues
        assert _tickets(db_path) == 4     # rather than overtake
        for member in (holder, waiting):
            members.release(member)
            assert member.wait(timeout=30) == 0


def test_writer_line_false_keeps_this_process_out_of_the_line(db_path: Path, members: _Members) -> None:
    holder = members.start("holder")
    members.turn(holder)
    with Registry(db_path, writer_line=False) as registry:
        blocker = _write_lock_held_outside_the_line(db_path, 0.2)
        registry.resolve("on-its-own", "node")  # busy, yet it retries on its own: no ticket taken
        assert _tickets(db_path) == 1
        blocker.close()
    with pytest.raises(InvalidInputError):
        Registry(db_path, writer_line="no")  # type: ignore[arg-type]


def _write_after(start: threading.Barrier, errors: list[BaseException], registry: Registry, name: str) -> None:
    start.wait()
    try:
        registry.resolve(name, "node")
    except BaseException as error:  # collected: the test's assertion names it
        errors.append(error)


def test_threads_meeting_a_busy_lock_together_on_first_use_all_write(db_path: Path) -> None:
    """The line opens its descriptors on first use; threads of one registry that all meet a busy
    lock at once arrive there together (a race once left some with no descriptor)."""
    for attempt in range(5):
        with Registry(db_path) as registry:
            blocker = _write_lock_held_outside_the_line(db_path)
            start = threading.Barrier(9)
            errors: list[BaseException] = []

            threads = [threading.Thread(target=_write_after, args=(start, errors, registry, f"t{attempt}-{i}"))
                       for i in range(8)]
            for thread in threads:
                thread.start()
            start.wait()
            time.sleep(0.05)  # all eight are in their busy wait now
            blocker.execute("COMMIT")
            blocker.close()
            for thread in threads:
                thread.join(timeout=60)
            assert errors == []
            assert all(registry.lookup(f"t{attempt}-{i}", "node") for i in range(8))
