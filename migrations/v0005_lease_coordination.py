"""Per-lease ttl, fair waiting, and the kinds of leader elections and semaphores.

- ``lease.ttl``/``expires_wall``/``expires_mono``: a lease taken with ``acquire(..., ttl=S)`` ends S seconds
  after it was taken or last refreshed, judged like session ttls (the monotonic clock of the holder's boot,
  else the wall clock); NULL means bounded by the session alone.
- ``lease_waiter``: the queue of ``acquire(..., wait=...)`` callers, in arrival order (``seq``, never reused);
  a waiter counts while its session is live and it looked within its session's ttl.
- Built-in kinds ``election`` and ``semaphore`` for ``campaign`` and ``semaphore`` (a user kind already so
  named is kept as it is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's context; a migration imports nothing of the package at run time
    from nameplate.backends.migrate import MigrationContext

import time

NAME = "lease ttl, waiters, elections and semaphores"

STATEMENTS = [
    "ALTER TABLE lease ADD COLUMN ttl {float}",
    "ALTER TABLE lease ADD COLUMN expires_wall {float}",
    "ALTER TABLE lease ADD COLUMN expires_mono {float}",
    """
    CREATE TABLE lease_waiter (
        seq {rev_pk},
        entry_pk {ref} NOT NULL REFERENCES entry (pk) ON DELETE CASCADE,
        session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
        arrived_at {float} NOT NULL,
        seen_wall {float} NOT NULL,
        seen_mono {float} NOT NULL
    )
    """,
    "CREATE INDEX lease_waiter_by_entry ON lease_waiter (entry_pk, seq)",
    "CREATE INDEX lease_waiter_by_session ON lease_waiter (session_id)",
]

KINDS = [
    ("election", "a leader election: its lease's holder leads, the fencing token is the term"),
    ("semaphore", "a counting semaphore: NAME holds the limit, NAME#1..NAME#N are its fenced slots"),
]


def upgrade(m: MigrationContext) -> None:
    for statement in STATEMENTS:
        m.ddl(statement)
    now = time.time()
    for name, description in KINDS:
        m.execute("INSERT INTO kind (name, description, required, optional, defaults, name_pattern, validator,"
                  " strict, builtin, created_at, updated_at) VALUES (?, ?, '[]', '[]', '{}', NULL, NULL, 0, 1, ?, ?)"
                  " ON CONFLICT (name) DO NOTHING", [name, description, now, now])
