"""Every entry carries the revision of the last event that changed it (etcd's ``mod_revision``).

``entry.revision`` is set in the same transaction as that event row (``Store.record``), so a
compare-and-swap (``update(..., expected_revision=R)``) and a transaction guard compare against the
log's own numbering. Existing entries get the revision of their newest content-changing event still
in the log, else the log's newest revision (their history was pruned: any later change is newer).

``resolved_entry`` selects ``e.*``; PostgreSQL expands the star when a view is created, so the view is
made again, with the same text, to include the new column (on SQLite this is a no-op in effect).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's context; a migration imports nothing of the package at run time
    from nameplate.backends.migrate import MigrationContext

NAME = "entry revision"

#: The event actions that change an entry's content; the same list as ``nameplate._store.CHANGING``
#: (a migration never changes, so it keeps its own copy).
CHANGING = ("create", "update", "rename", "register", "promote")

RESOLVED_ENTRY = """
    CREATE VIEW resolved_entry AS
    SELECT a.workspace_id AS viewer_id, a.depth AS depth, e.*
    FROM workspace_ancestor AS a
    JOIN entry AS e ON e.workspace_id = a.ancestor_id
    WHERE NOT EXISTS (
        SELECT 1
        FROM workspace_ancestor AS nearer
        JOIN entry AS other ON other.workspace_id = nearer.ancestor_id
        WHERE nearer.workspace_id = a.workspace_id
          AND nearer.depth < a.depth
          AND other.name = e.name
          AND other.kind_id = e.kind_id
    )
"""


def upgrade(m: MigrationContext) -> None:
    m.ddl("DROP VIEW resolved_entry")
    # BIGINT: revisions are 64-bit (event.rev); SQLite reads the word as INTEGER affinity.
    m.ddl("ALTER TABLE entry ADD COLUMN revision BIGINT NOT NULL DEFAULT 0")
    m.ddl(RESOLVED_ENTRY)
    placeholders = ", ".join("?" for _ in CHANGING)
    m.execute(
        "UPDATE entry SET revision = coalesce("
        f"(SELECT max(ev.rev) FROM event AS ev WHERE ev.entry_id = entry.id AND ev.action IN ({placeholders})), "
        "(SELECT coalesce(max(ev.rev), 0) FROM event AS ev))", list(CHANGING))
