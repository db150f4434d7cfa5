"""The last load error of an entry: what importing its target raised, when, in which process.

A failed import is an observation of one process, not part of the entry's definition, so it lives beside
the entry rather than in its row: recording it never conflicts with a lease on the entry, never changes
what ``register`` compares, and never enters an export. One row per entry at most; it goes with the
entry (``ON DELETE CASCADE``) and a successful load deletes it. ``entry_id`` guards against a row whose
entry was deleted and re-created under the same primary key (a tombstone revived by ``register``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's context; a migration imports nothing of the package at run time
    from nameplate.backends.migrate import MigrationContext

NAME = "load errors"


def upgrade(m: MigrationContext) -> None:
    m.ddl("""
        CREATE TABLE entry_load_error (
            entry_pk {ref} PRIMARY KEY REFERENCES entry (pk) ON DELETE CASCADE,
            entry_id TEXT NOT NULL,
            target TEXT NOT NULL,
            error_type TEXT NOT NULL,
            message TEXT NOT NULL,
            failed_at {float} NOT NULL,
            pid INTEGER NOT NULL,
            hostname TEXT NOT NULL
        )
    """)
