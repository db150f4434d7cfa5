"""The initial schema: entries in layered workspaces, kinds, sessions, leases, the event log.

Layer resolution lives in one place, the ``resolved_entry`` view: for every workspace (``viewer_id``)
it yields, per ``(kind, name)``, the row of the nearest layer in the viewer's ancestry (a row with
``hidden = 1`` is a tombstone and hides what is below it). Lookups and listings both select from it,
so they cannot disagree. ``workspace_ancestor`` is the closure of the parent relation (depth 0 is the
workspace itself), kept by the repository when a workspace is created.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runner's context; a migration imports nothing of the package at run time
    from nameplate.backends.migrate import MigrationContext

import json
import time

NAME = "initial schema"

STATEMENTS = [
    """
    CREATE TABLE workspace (
        id {pk},
        name TEXT NOT NULL UNIQUE,
        parent_id {ref} REFERENCES workspace (id),
        description TEXT NOT NULL DEFAULT '',
        created_at {float} NOT NULL,
        CHECK ((name = 'core') = (parent_id IS NULL))
    )
    """,
    """
    CREATE TABLE workspace_ancestor (
        workspace_id {ref} NOT NULL REFERENCES workspace (id) ON DELETE CASCADE,
        ancestor_id {ref} NOT NULL REFERENCES workspace (id) ON DELETE CASCADE,
        depth INTEGER NOT NULL CHECK (depth >= 0),
        PRIMARY KEY (workspace_id, ancestor_id)
    ){table_opts}
    """,
    "CREATE INDEX workspace_ancestor_by_ancestor ON workspace_ancestor (ancestor_id)",
    """
    CREATE TABLE kind (
        id {pk},
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        required TEXT NOT NULL DEFAULT '[]',
        optional TEXT NOT NULL DEFAULT '[]',
        defaults TEXT NOT NULL DEFAULT '{{}}',
        name_pattern TEXT,
        validator TEXT,
        strict INTEGER NOT NULL DEFAULT 1,
        builtin INTEGER NOT NULL DEFAULT 0,
        created_at {float} NOT NULL,
        updated_at {float} NOT NULL
    )
    """,
    """
    CREATE TABLE session (
        id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        boot_id TEXT NOT NULL,
        process_start {float} NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        ttl {float} NOT NULL CHECK (ttl > 0),
        status TEXT NOT NULL DEFAULT 'starting',
        info TEXT NOT NULL DEFAULT '{{}}',
        state TEXT NOT NULL DEFAULT 'live' CHECK (state IN ('live', 'closed', 'expired', 'dead')),
        started_at {float} NOT NULL,
        beat_at {float} NOT NULL,
        beat_mono {float} NOT NULL,
        beats INTEGER NOT NULL DEFAULT 0,
        ended_at {float},
        end_reason TEXT
    )
    """,
    "CREATE INDEX session_by_state ON session (state, hostname)",
    """
    CREATE TABLE entry (
        pk {pk},
        id TEXT NOT NULL UNIQUE,
        workspace_id {ref} NOT NULL REFERENCES workspace (id) ON DELETE CASCADE,
        kind_id {ref} NOT NULL REFERENCES kind (id),
        name TEXT NOT NULL,
        hidden INTEGER NOT NULL DEFAULT 0 CHECK (hidden IN (0, 1)),
        metadata TEXT NOT NULL DEFAULT '{{}}',
        capabilities TEXT NOT NULL DEFAULT '[]',
        definition TEXT,
        target TEXT,
        created_at {float} NOT NULL,
        updated_at {float} NOT NULL,
        last_seen_at {float} NOT NULL,
        owner_session_id TEXT REFERENCES session (id) ON DELETE SET NULL,
        ephemeral INTEGER NOT NULL DEFAULT 0 CHECK (ephemeral IN (0, 1)),
        fence INTEGER NOT NULL DEFAULT 0,
        selected_at {float},
        selected_count INTEGER NOT NULL DEFAULT 0,
        UNIQUE (name, kind_id, workspace_id)
    )
    """,
    "CREATE INDEX entry_by_kind ON entry (kind_id, workspace_id)",
    "CREATE INDEX entry_by_workspace ON entry (workspace_id)",
    "CREATE INDEX entry_by_owner ON entry (owner_session_id)",
    "CREATE INDEX entry_by_last_seen ON entry (last_seen_at)",
    """
    CREATE TABLE entry_capability (
        capability TEXT NOT NULL,
        entry_pk {ref} NOT NULL REFERENCES entry (pk) ON DELETE CASCADE,
        PRIMARY KEY (capability, entry_pk)
    ){table_opts}
    """,
    "CREATE INDEX entry_capability_by_entry ON entry_capability (entry_pk)",
    """
    CREATE TABLE lease (
        entry_pk {ref} PRIMARY KEY REFERENCES entry (pk) ON DELETE CASCADE,
        session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
        token INTEGER NOT NULL,
        acquired_at {float} NOT NULL
    )
    """,
    "CREATE INDEX lease_by_session ON lease (session_id)",
    """
    CREATE TABLE lock_delay (
        entry_pk {ref} PRIMARY KEY REFERENCES entry (pk) ON DELETE CASCADE,
        until_wall {float} NOT NULL,
        until_mono {float} NOT NULL,
        boot_id TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE selection_cursor (
        kind_id {ref} NOT NULL REFERENCES kind (id) ON DELETE CASCADE,
        workspace_id {ref} NOT NULL REFERENCES workspace (id) ON DELETE CASCADE,
        requirement TEXT NOT NULL,
        position INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (kind_id, workspace_id, requirement)
    ){table_opts}
    """,
    """
    CREATE TABLE event (
        rev {rev_pk},
        at {float} NOT NULL,
        action TEXT NOT NULL,
        workspace TEXT,
        kind TEXT,
        name TEXT,
        entry_id TEXT,
        session_id TEXT,
        actor TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{{}}'
    )
    """,
    "CREATE INDEX event_by_entry ON event (entry_id)",
    "CREATE INDEX event_by_time ON event (at)",
    """
    CREATE TABLE schema_migration (
        version INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        applied_at {float} NOT NULL
    )
    """,
    """
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
    """,
]

_STEP_DEFAULTS = {
    "config_class": "{name}Config",
    "builder_step_name": "{name}StepBuilder",
    "spec_type": "{name}",
    "description": "",
}

#: name, description, required, optional, defaults, name_pattern, strict
BUILTIN_KINDS = [
    ("node", "a lab instrument node (MADSci)", [], [], {}, None, False),
    ("module", "a node module: the software driving one instrument type (MADSci)", [], [], {}, None, False),
    ("manager", "a lab manager service (MADSci)", [], [], {}, None, False),
    ("experiment", "an experiment run or design (MADSci)", [], [], {}, None, False),
    ("workcell", "a workcell: a group of nodes and resources (MADSci)", [], [], {}, None, False),
    ("step", "a pipeline step; name in PascalCase, defaults derived from it",
     ["sagemaker_step_type"], ["config_class", "builder_step_name", "spec_type", "description"],
     _STEP_DEFAULTS, r"^[A-Z][A-Za-z0-9]*$", True),
    ("builder", "a step builder class, keyed by the step name it builds",
     [], ["step_name", "description"], {}, None, False),
    ("hyperparameter", "a hyperparameter class, keyed by model type",
     ["model_type"], ["description"], {}, None, False),
    ("provider", "a provider offering capabilities (select with find/select)",
     [], ["description"], {}, None, False),
    ("process", "a long-running process or job", [], ["description"], {}, None, False),
]


def upgrade(m: MigrationContext) -> None:
    for statement in STATEMENTS:
        m.ddl(statement)
    now = time.time()
    m.execute("INSERT INTO workspace (id, name, parent_id, description, created_at) "
              "VALUES (1, 'core', NULL, 'the root layer every workspace inherits from', ?)", [now])
    m.execute("INSERT INTO workspace_ancestor (workspace_id, ancestor_id, depth) VALUES (1, 1, 0)")
    for name, description, required, optional, defaults, pattern, strict in BUILTIN_KINDS:
        m.execute(
            "INSERT INTO kind (name, description, required, optional, defaults, name_pattern, validator,"
            " strict, builtin, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, 1, ?, ?)",
            [name, description, json.dumps(required), json.dumps(optional), json.dumps(defaults),
             pattern, int(strict), now, now])
