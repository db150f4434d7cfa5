"""Health reports of entries: one row per (entry, reporting session).

A process that serves or watches an entry (a provider, a tracked job) reports its health
(``healthy``, ``degraded``, ``critical``), a load and a JSON object of details. A report counts
only while its reporter's session lives, so it goes with the session (and with the entry). Reports
change at heartbeat rate and say nothing about what a name means: they are not logged as events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's context; a migration imports nothing of the package at run time
    from nameplate.backends.migrate import MigrationContext

NAME = "entry health"

STATEMENTS = [
    """
    CREATE TABLE entry_health (
        entry_pk {ref} NOT NULL REFERENCES entry (pk) ON DELETE CASCADE,
        session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
        health TEXT CHECK (health IN ('healthy', 'degraded', 'critical')),
        load {float},
        info TEXT NOT NULL DEFAULT '{{}}',
        reported_at {float} NOT NULL,
        PRIMARY KEY (entry_pk, session_id)
    ){table_opts}
    """,
    "CREATE INDEX entry_health_by_session ON entry_health (session_id)",
]


def upgrade(m: MigrationContext) -> None:
    for statement in STATEMENTS:
        m.ddl(statement)
