"""The writer line: this host's writers on one SQLite file take its write lock in arrival order.

SQLite has no queue for its write lock. A writer that finds it taken gets ``SQLITE_BUSY`` and must
try again later; nameplate retries ``BEGIN IMMEDIATE`` with short jittered sleeps (``sqlite``), so
under many writers whoever happens to look when the lock is free wins, and an unlucky one loses
again and again: with 8 processes registering flat out the p99 was 23-36 ms and the max 55-78 ms on
this project's 2-core machine, while the lock changed hands every 0.4 ms.

The line orders them, as a ticket lock does, with open file description (OFD) locks on a file beside
the database (``<db>-line``):

* a writer tries the lock at once when it met no busy lock in the last 0.1 s (then it never touches
  the line), or when the line is empty (the newest ticket's slot is free: a read of the counter and
  one ``F_OFD_GETLK``); one that finds the lock taken, or the line occupied, queues;
* byte 0 guards the ticket counter (at offset :data:`_COUNTER`): a writer locks it, reads and bumps
  the counter, locks its own slot byte ``1 + ticket % SLOTS`` and lets byte 0 go, all in a few
  microseconds;
* it then waits until the slot of the ticket before it is free (that writer has written and left),
  blocking in the kernel (in a helper thread, so the wait can end at a deadline), runs its
  transaction, and frees its own slot, which wakes exactly the next writer.

Same workload with the line: p99 7-11 ms, max 20-28 ms. The order costs throughput on an
oversubscribed machine (each write waits for the next writer in line to be scheduled): about half,
with 8 processes writing flat out on 2 cores (``scripts/bench.py`` measures both ways), which is why
``Registry(writer_line=False)`` exists. Letting every writer try the lock first kept the throughput
but gave back most of the tail (p99 11-12 ms, and 47 ms for acquire + release); queueing only
behind a non-empty line is the middle.

The line only orders; SQLite's lock still decides, so a writer that does not use the line (the
``sqlite3`` shell, a process with the line unavailable) stays correct, it just does not queue. Nothing
in the line may stall anyone for long: every wait in it ends after ``patience`` seconds, after which
the writer goes straight to SQLite's lock as it would without a line. A member that is killed frees
its bytes with its descriptors; one found stopped (``SIGSTOP``, psutil says so) is gone around at
once, and one that stops while others already wait behind it costs each of them at most
``patience``. Threads of one process take the line one at a time (a process lock before it), and
a forked child closes the descriptors it inherited (the locks belong to the open file description,
which the child shares) and starts its own.

Where OFD locks are unavailable (not Linux, a file system without them, a directory it cannot write)
there is no line and writers retry as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import queue
import struct
import threading
import time
from pathlib import Path

import psutil

from .. import _fork

#: Slot bytes (1..SLOTS); more writers than this in the line at once share slots and lose the order.
SLOTS = 64
#: Offset of the ticket counter (8 bytes, native order), past the lock bytes.
_COUNTER = 128
#: Offset of the slots' holder records: the pid of the writer in slot ``s`` at ``_HOLDERS + 8 * s``.
_HOLDERS = 256
#: How long one writer waits for the writer ahead before it goes to SQLite's lock directly: well above
#: a full line's legitimate wait under heavy contention (8 writers x 0.5 ms), and the most a member
#: that stops while it is in the line (one that is killed frees its slot at once) delays the one behind.
PATIENCE = 0.05
#: How long a writer waits for byte 0, which others hold for microseconds (longer only when the
#: holder is descheduled, or stopped: then everyone goes around the line rather than wait).
_GUARD_WAIT = 0.005
#: Helper threads that wait on a byte for a writer; one blocked on a stopped member stays blocked
#: until it resumes or dies, so there are a few, and none are queued for.
_WAITERS = 4

_STOPPED = frozenset({psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP})
_SETLK = getattr(fcntl, "F_OFD_SETLK", None)
_GETLK = getattr(fcntl, "F_OFD_GETLK", None)
_SETLKW = getattr(fcntl, "F_OFD_SETLKW", None)
#: struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), native layout.
_FLOCK = "hhqqi4x"

_all_descriptors: set[int] = set()
_descriptors_guard = threading.Lock()
#: Held while a line opens its descriptors for this process.
_first_use = threading.Lock()


def _lock(fd: int, kind: int, byte: int, *, wait: bool) -> bool:
    """Lock (``F_WRLCK``/``F_RDLCK``) or unlock (``F_UNLCK``) one byte; False if it is taken (no wait)."""
    command = _SETLKW if wait else _SETLK
    assert command is not None
    try:
        fcntl.fcntl(fd, command, struct.pack(_FLOCK, kind, os.SEEK_SET, byte, 1, 0))
    except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held by another description
        return False
    return True


def _open(path: str) -> int:
    # Private as the database is; never through a symlink (the line writes a counter and pids into it).
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with _descriptors_guard:
        _all_descriptors.add(fd)
    return fd


def _close(fd: int) -> None:
    with _descriptors_guard:
        _all_descriptors.discard(fd)
    os.close(fd)  # drops every lock of this description


def _wait_until_free(path: str, byte: int) -> None:
    """In a helper thread: block until no other description holds ``byte``, on a descriptor of its own."""
    fd = _open(path)
    try:
        _lock(fd, fcntl.F_RDLCK, byte, wait=True)
    finally:
        _close(fd)  # and the read lock with it


class Place:
    """A writer's place in the line, given back with :meth:`WriterLine.leave`."""

    __slots__ = ("slot",)

    def __init__(self, slot: int) -> None:
        self.slot = slot


class _Helper:
    """A daemon thread that blocks on one byte at a time for a writer, so the writer can stop waiting at
    a deadline (a blocking lock call has none). A daemon, because one blocked on a stopped writer must
    not keep its process from exiting."""

    def __init__(self, path: str) -> None:
        self.busy = False
        self._requests: queue.SimpleQueue[tuple[int, threading.Event, list[OSError]] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, args=(path,), name="nameplate-line", daemon=True).start()

    def wait_for(self, byte: int, deadline: float) -> bool:
        """Whether ``byte`` was free before ``deadline``; the helper stays busy until it is."""
        done, failed = threading.Event(), list[OSError]()
        self.busy = True
        self._requests.put((byte, done, failed))
        return done.wait(max(0.0, deadline - time.monotonic())) and not failed

    def stop(self) -> None:
        """End the thread once it is done with what it waits for now, if anything."""
        self._requests.put(None)

    def _run(self, path: str) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            byte, done, failed = request
            try:
                _wait_until_free(path, byte)
            except OSError as error:  # the file went away or was replaced: the writer goes on without it
                failed.append(error)
            finally:
                self.busy = False
                done.set()


class WriterLine:
    """The line of one database file for this process (see the module docstring)."""

    def __init__(self, database: Path, patience: float = PATIENCE, *, enabled: bool = True) -> None:
        self._path = f"{database}-line"
        self._patience = patience
        self._pid = -1
        self._fd = self._probe = -1
        self._disabled = not enabled or None in (_SETLK, _SETLKW, _GETLK)
        self._turn = threading.Lock()
        #: This process's helpers (only touched by the thread whose turn it is).
        self._helpers: list[_Helper] = []

    def _ready(self) -> bool:
        if self._disabled:
            return False
        if self._pid != os.getpid():  # first use, or a forked child: descriptors of its own
            with _first_use:  # threads of one registry arrive here together
                if self._pid != os.getpid():
                    try:
                        fd, probe = _open(self._path), _open(self._path)
                        _lock(fd, fcntl.F_UNLCK, 0, wait=False)  # does this file system know OFD locks?
                    except OSError:
                        self._disabled = True
                        return False
                    self._fd, self._probe, self._turn, self._helpers = fd, probe, threading.Lock(), []
                    self._pid = os.getpid()  # last: another thread that sees it sees the descriptors
        return not self._disabled

    def occupied(self) -> bool:
        """Whether a writer holds the newest ticket's slot (the line is not empty): then a newcomer
        queues behind it rather than try the lock first. Two system calls, no lock taken."""
        if not self._ready():
            return False
        raw = os.pread(self._fd, 8, _COUNTER)
        if len(raw) != 8:
            return False
        newest = struct.unpack("q", raw)[0] - 1
        if newest < 0:
            return False
        return self._conflicts(fcntl.F_WRLCK, 1 + newest % SLOTS)

    def _conflicts(self, kind: int, byte: int) -> bool:
        """Whether another open file description holds a lock on ``byte`` that a ``kind`` lock
        (``F_RDLCK``: a writer's; ``F_WRLCK``: any) would conflict with; one ``F_OFD_GETLK``, nothing taken."""
        assert _GETLK is not None
        probe = struct.pack(_FLOCK, kind, os.SEEK_SET, byte, 1, 0)
        holder: int = struct.unpack(_FLOCK, fcntl.fcntl(self._probe, _GETLK, probe))[0]
        return holder != fcntl.F_UNLCK

    def enter(self) -> Place | None:
        """Wait for this writer's turn (at most about ``patience`` in each step); ``None`` when it goes
        without the line (no line here, or the wait ran out): then :meth:`leave` is not needed."""
        if not self._ready():
            return None
        if not self._turn.acquire(timeout=self._patience):
            return None  # another thread of this process is stuck ahead in the line: go around it
        try:
            place = self._take_ticket()
        except BaseException:
            self._turn.release()
            raise
        if place is None:
            self._turn.release()
        return place

    def _take_ticket(self) -> Place | None:
        fd = self._fd
        deadline = time.monotonic() + _GUARD_WAIT
        while not _lock(fd, fcntl.F_WRLCK, 0, wait=False):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.00005)
        try:
            raw = os.pread(fd, 8, _COUNTER)
            ticket = struct.unpack("q", raw)[0] if len(raw) == 8 else 0
            os.pwrite(fd, struct.pack("q", ticket + 1), _COUNTER)
            slot = 1 + ticket % SLOTS
            if not _lock(fd, fcntl.F_WRLCK, slot, wait=False):
                return None  # a member SLOTS tickets back still holds it (stopped, or a very long line)
            os.pwrite(fd, struct.pack("q", self._pid), _HOLDERS + 8 * slot)
        finally:
            _lock(fd, fcntl.F_UNLCK, 0, wait=False)
        if ticket > 0:
            # Whether the writer ahead left in time or not, this one keeps its slot: the one behind
            # waits for it to write, so the order holds from here on.
            self._wait_for(1 + (ticket - 1) % SLOTS, time.monotonic() + self._patience)
        return Place(slot)

    def _wait_for(self, byte: int, deadline: float) -> bool:
        """Wait until no one holds ``byte`` (the slot of the writer ahead), until ``deadline``; False
        when it gave up (the writer ahead is stopped, or slow past the deadline)."""
        if not self._conflicts(fcntl.F_RDLCK, byte):
            return True  # the usual case in a short line: no thread
        if self._stopped(byte):
            return False
        helper = next((h for h in self._helpers if not h.busy), None)
        if helper is None:
            if len(self._helpers) >= _WAITERS:
                return False  # never queue for a helper: each busy one is blocked on a stopped writer
            helper = _Helper(self._path)
            self._helpers.append(helper)
        return helper.wait_for(byte, deadline)

    def _stopped(self, byte: int) -> bool:
        """Whether the writer holding slot ``byte`` is a stopped process (``SIGSTOP``, a debugger)."""
        raw = os.pread(self._fd, 8, _HOLDERS + 8 * byte)
        if len(raw) != 8:
            return False
        try:
            return psutil.Process(struct.unpack("q", raw)[0]).status() in _STOPPED
        except (psutil.Error, ValueError):
            return False  # gone (its slot is free by now) or not ours to look at: wait as usual

    def leave(self, place: Place | None) -> None:
        """Free this writer's slot (waking the one behind it) after its transaction ended."""
        if place is None:
            return
        try:
            if self._pid == os.getpid():
                _lock(self._fd, fcntl.F_UNLCK, place.slot, wait=False)
        finally:
            self._turn.release()

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in (self._fd, self._probe):
                if fd >= 0:
                    _close(fd)
        self._fd = self._probe = self._pid = -1
        for helper in self._helpers:
            helper.stop()
        self._helpers = []


def _close_inherited_descriptors() -> None:
    # The parent's descriptors share its open file descriptions, and with them its locks: a copy kept
    # here would keep a slot locked after the parent let go of it by dying. Closing the copy releases
    # nothing of the parent's (its own descriptor still holds the description). A parent thread may
    # have held either lock at the fork: the child starts with new ones.
    global _descriptors_guard, _first_use
    _descriptors_guard, _first_use = threading.Lock(), threading.Lock()
    inherited = list(_all_descriptors)
    _all_descriptors.clear()
    for fd in inherited:
        try:
            os.close(fd)
        except OSError as error:
            if error.errno != errno.EBADF:  # EBADF: closed already, by code that closes inherited descriptors
                raise


_fork.in_child("connections", _close_inherited_descriptors)
