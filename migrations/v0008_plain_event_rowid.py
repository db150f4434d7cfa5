"""Event revisions come from the plain rowid: one page fewer written by every event.

``AUTOINCREMENT`` makes SQLite keep the table's largest rowid in ``sqlite_sequence`` and rewrite that
page in every transaction that appends an event (issue 15: a resolve-create wrote 7.7 pages, the
bare insert it is measured against 4). What it bought is that a rowid is never handed out twice even
after the newest row is deleted; a plain ``INTEGER PRIMARY KEY`` takes ``max(rowid) + 1``, which is the
same guarantee as long as the newest event is never deleted. Only ``gc_events`` deletes events, and it
logs its own event first, in the same transaction, newer than anything it prunes (``_eventlog.gc``):
the log never goes empty and its newest revision never goes back.

SQLite cannot drop ``AUTOINCREMENT`` in place, so the table is rebuilt with the same columns, rows and
index (a one-time copy: about 1 s per million events here). PostgreSQL's identity column never
reuses a value and costs nothing comparable: there the step does nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's context; a migration imports nothing of the package at run time
    from nameplate.backends.migrate import MigrationContext

NAME = "plain event rowid"

_COLUMNS = "rev, at, action, workspace, kind, name, entry_id, session_id, actor, detail"


def upgrade(m: MigrationContext) -> None:
    if m.dialect != "sqlite":
        return
    m.ddl("""
    CREATE TABLE event_plain (
        rev INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        action TEXT NOT NULL,
        workspace TEXT,
        kind TEXT,
        name TEXT,
        entry_id TEXT,
        session_id TEXT,
        actor TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{{}}'
    )
    """)
    m.execute(f"INSERT INTO event_plain ({_COLUMNS}) SELECT {_COLUMNS} FROM event ORDER BY rev")
    m.ddl("DROP TABLE event")
    m.ddl("ALTER TABLE event_plain RENAME TO event")
    m.ddl("CREATE INDEX event_by_entry ON event (entry_id)")
    m.execute("DELETE FROM sqlite_sequence WHERE name = 'event'")
