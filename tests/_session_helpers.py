"""Helpers for the session and lease tests: rows written as another process would have left them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nameplate._liveness import BOOT_ID, HOSTNAME, PROCESS_TABLE


class _Direct:
    """A connection past nameplate with ``?`` placeholders: sqlite3 for a file, psycopg for a URL."""

    def __init__(self, spec: str | Path) -> None:
        self._pg = "://" in str(spec)
        if self._pg:
            import psycopg

            self._conn: Any = psycopg.connect(str(spec))
        else:
            self._conn = sqlite3.connect(spec)

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._conn.execute(sql.replace("?", "%s") if self._pg else sql, params)

    def columns(self, cursor: Any) -> list[str]:
        return [d[0] for d in cursor.description]

    def commit(self) -> None:
        self._conn.commit()

    def close(self) -> None:
        self._conn.close()


def insert_session(path: str | Path, session_id: str, *, pid: int, process_start: float, hostname: str = HOSTNAME,
                   boot_id: str | None = None, ttl: float = 3600.0, beat_age: float = 0.0, label: str = "ghost",
                   holds: tuple[str, ...] = ()) -> dict[str, int]:
    """A live session row (last beat ``beat_age`` seconds ago on both clocks) holding leases on ``holds``.

    Returns the token of each lease, taken as ``acquire`` would: the entry's fence plus one.
    """
    if boot_id is None:  # this host's identity, as a session of this process would record it
        boot_id = PROCESS_TABLE if "://" in str(path) else BOOT_ID
    conn = _Direct(path)
    try:
        wall, mono = time.time() - beat_age, time.monotonic() - beat_age
        conn.execute("INSERT INTO session (id, pid, hostname, boot_id, process_start, label, ttl, state, started_at, "
                     "beat_at, beat_mono) VALUES (?, ?, ?, ?, ?, ?, ?, 'live', ?, ?, ?)",
                     (session_id, pid, hostname, boot_id, process_start, label, ttl, wall, wall, mono))
        tokens = {}
        for name in holds:
            (token,) = conn.execute("UPDATE entry SET fence = fence + 1 WHERE name = ? RETURNING fence",
                                    (name,)).fetchone()
            conn.execute("INSERT INTO lease (entry_pk, session_id, token, acquired_at) "
                         "SELECT pk, ?, ?, ? FROM entry WHERE name = ?", (session_id, token, wall, name))
            tokens[name] = int(token)
        conn.commit()
        return tokens
    finally:
        conn.close()


def session_row(path: str | Path, session_id: str) -> dict[str, Any]:
    conn = _Direct(path)
    try:
        cursor = conn.execute("SELECT * FROM session WHERE id = ?", (session_id,))
        row = cursor.fetchone()
        return dict(zip(conn.columns(cursor), row, strict=True)) if row is not None else {}
    finally:
        conn.close()


def events(path: str | Path, *actions: str) -> list[tuple[str, dict[str, Any]]]:
    """``(action, detail)`` of the events with these actions, in log order."""
    conn = _Direct(path)
    try:
        marks = ",".join("?" * len(actions))
        rows = conn.execute(f"SELECT action, detail FROM event WHERE action IN ({marks}) ORDER BY rev",
                            actions).fetchall()
    finally:
        conn.close()
    return [(action, json.loads(detail)) for action, detail in rows]


def sleeper(seconds: float = 120.0) -> subprocess.Popen[bytes]:
    """An unrelated live process (its pid is what a reused pid would point at)."""
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def stop_child(child: subprocess.Popen[Any]) -> None:
    """Kill and reap a child, whatever state it is in (stopped ones included), and close its pipes."""
    if child.poll() is None:
        child.kill()  # SIGKILL also ends a SIGSTOPped process
    child.wait(timeout=60)
    for stream in (child.stdin, child.stdout, child.stderr):
        if stream is not None:
            stream.close()
