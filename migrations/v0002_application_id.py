"""Mark the file as nameplate's: SQLite's ``application_id`` header field.

Opening a file checks this field (with plain file I/O) before any connection could change the file, so
another application's database is refused untouched (see ``nameplate.backends.sqlite.identify``). Files from
before this migration are recognised by their tables and get the mark here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's context; a migration imports nothing of the package at run time
    from nameplate.backends.migrate import MigrationContext

NAME = "application id"

#: "NMPL"; the same constant as ``nameplate.backends.sqlite.APPLICATION_ID`` (a migration never changes).
APPLICATION_ID = 0x4E4D504C


def upgrade(m: MigrationContext) -> None:
    if m.dialect == "sqlite":
        # A header field written through the pager, so it commits or rolls back with the migration.
        m.execute(f"PRAGMA application_id = {APPLICATION_ID}")
