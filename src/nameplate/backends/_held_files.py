"""Which database files this process holds open through a backend, so that nothing reads them raw.

POSIX record locks belong to the process and the file, not to the descriptor: closing *any*
descriptor of a file drops every lock this process holds on it. SQLite keeps its own descriptors safe
(it defers their close while a lock is held), but a plain ``open(path).read(100)`` of the header,
closed while another backend of this process holds the file, silently drops that backend's SHARED
lock on the database file. Another process that closes its last connection then believes it is the
last user: it checkpoints, deletes the ``-wal`` file and truncates ``-shm`` under us. Seen in the chaos
run as ``UNIQUE constraint failed`` on imports and "locking protocol" errors, and reproduced in
``tests/test_held_files.py``.

So a file is prepared and identified (raw reads) only by the first backend of this process to open
it; later ones find it in this table and skip both, having nothing to learn (the first already proved
the file is ours). A forked child holds none of its parent's POSIX locks: its table counts only the
backends it inherited and keeps using.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Bytes of the WAL-index header's first copy in ``-shm`` (https://www.sqlite.org/walformat.html):
#: every commit rewrites it (its change counter, frame count and checksums).
WAL_INDEX_HEADER = 48
#: Bytes mapped: both header copies and the checkpoint info after them (``nBackfill`` at 96).
WAL_INDEX_MAPPED = 136


@dataclass
class _Held:
    backends: int
    shm_fd: int | None = None
    shm: mmap.mmap | None = None

    def close_shm(self) -> None:
        # Only once no backend of this process holds the file: closing a descriptor of -shm drops
        # every POSIX lock this process holds on it, SQLite's included.
        if self.shm is not None:
            self.shm.close()
            self.shm = None
        if self.shm_fd is not None:
            os.close(self.shm_fd)
            self.shm_fd = None


_lock = threading.Lock()
_held: dict[tuple[int, int], _Held] = {}


def _key(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def enter(path: Path, first_open: Callable[[], None]) -> tuple[int, int] | None:
    """Count one more backend holding ``path``; run ``first_open`` (which may read the file raw) only
    when no other backend of this process holds it. Returns the key to pass to :func:`leave`
    (``None`` if the file vanished right after ``first_open``: nothing is held then)."""
    with _lock:
        key = _key(path)
        if key is None or key not in _held:
            first_open()
            key = _key(path)
            if key is None:
                return None
        held = _held.setdefault(key, _Held(0))
        held.backends += 1
        return key


def leave(key: tuple[int, int] | None) -> None:
    """One backend fewer holds the file (called once its connections are closed)."""
    if key is None:
        return
    with _lock:
        held = _held.get(key)
        if held is None:
            return
        held.backends -= 1
        if held.backends <= 0:
            held.close_shm()
            del _held[key]


def wal_index(key: tuple[int, int] | None, path: Path) -> mmap.mmap | None:
    """A read-only mapping of ``path``'s ``-shm`` file, shared by this process's backends on it.

    Valid only while this process holds an open SQLite connection to the database (callers open one
    first): that connection's shared lock on ``-shm`` keeps any other process from deleting or
    truncating it. ``None`` when there is no usable ``-shm`` (callers fall back to SQLite's own
    ``data_version``).
    """
    held = _held.get(key) if key is not None else None
    if held is None:
        return None
    if held.shm is not None:
        return held.shm
    with _lock:
        if held.shm is None:
            try:
                fd = os.open(f"{path}-shm", os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                return None
            try:
                if os.fstat(fd).st_size < WAL_INDEX_MAPPED:
                    os.close(fd)  # nothing of SQLite's is in a file this short: no lock to drop
                    return None
                held.shm = mmap.mmap(fd, WAL_INDEX_MAPPED, access=mmap.ACCESS_READ)
            except OSError:
                os.close(fd)
                return None
            held.shm_fd = fd
        return held.shm


def reset_after_fork(still_open: list[tuple[int, int] | None]) -> None:
    """In a forked child: count only the backends the child kept (they reconnect lazily, as its own);
    drop the parent's ``-shm`` mappings (the child holds no connection that keeps them valid)."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the moment of fork
    for held in _held.values():
        held.close_shm()  # the child holds no POSIX locks: closing its copies drops nothing of anyone's
    _held.clear()
    for key in still_open:
        if key is not None:
            _held.setdefault(key, _Held(0)).backends += 1
