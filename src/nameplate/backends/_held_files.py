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

import os
import threading
from collections.abc import Callable
from pathlib import Path

_lock = threading.Lock()
_holders: dict[tuple[int, int], int] = {}


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
        if key is None or _holders.get(key, 0) == 0:
            first_open()
            key = _key(path)
            if key is None:
                return None
        _holders[key] = _holders.get(key, 0) + 1
        return key


def leave(key: tuple[int, int] | None) -> None:
    """One backend fewer holds the file (called once its connections are closed)."""
    if key is None:
        return
    with _lock:
        count = _holders.get(key, 0) - 1
        if count > 0:
            _holders[key] = count
        else:
            _holders.pop(key, None)


def reset_after_fork(still_open: list[tuple[int, int] | None]) -> None:
    """In a forked child: count only the backends the child kept (they reconnect lazily, as its own)."""
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the moment of fork
    _holders.clear()
    for key in still_open:
        if key is not None:
            _holders[key] = _holders.get(key, 0) + 1
