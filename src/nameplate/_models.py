"""peewee models of the schema in ``migrations/`` (cold paths: listings, maintenance, export).

The models are not bound to a database: queries run with ``query.execute(backend.peewee)`` or
``backend.peewee.execute(query)``, so several registries in one process never share a binding. Hot
paths use prepared SQL in the repository instead (the query builder costs ~25x a point select).
A test checks these models against the migrated schema column by column.
"""

from __future__ import annotations

import peewee as pw


class _Model(pw.Model):
    class Meta:
        database = None
        legacy_table_names = False


class Workspace(_Model):
    id = pw.AutoField()
    name = pw.TextField(unique=True)
    parent = pw.ForeignKeyField("self", null=True, column_name="parent_id", backref="children")
    description = pw.TextField(default="")
    created_at = pw.FloatField()


class WorkspaceAncestor(_Model):
    workspace = pw.ForeignKeyField(Workspace, column_name="workspace_id", on_delete="CASCADE")
    ancestor = pw.ForeignKeyField(Workspace, column_name="ancestor_id", on_delete="CASCADE")
    depth = pw.IntegerField()

    class Meta:
        primary_key = pw.CompositeKey("workspace", "ancestor")


class Kind(_Model):
    id = pw.AutoField()
    name = pw.TextField(unique=True)
    description = pw.TextField(default="")
    required = pw.TextField(default="[]")
    optional = pw.TextField(default="[]")
    defaults = pw.TextField(default="{}")
    name_pattern = pw.TextField(null=True)
    validator = pw.TextField(null=True)
    strict = pw.IntegerField(default=1)
    builtin = pw.IntegerField(default=0)
    created_at = pw.FloatField()
    updated_at = pw.FloatField()


class Session(_Model):
    id = pw.TextField(primary_key=True)
    pid = pw.IntegerField()
    hostname = pw.TextField()
    boot_id = pw.TextField()
    process_start = pw.FloatField()
    label = pw.TextField(default="")
    ttl = pw.FloatField()
    status = pw.TextField(default="starting")
    info = pw.TextField(default="{}")
    state = pw.TextField(default="live")
    started_at = pw.FloatField()
    beat_at = pw.FloatField()
    beat_mono = pw.FloatField()
    beats = pw.IntegerField(default=0)
    ended_at = pw.FloatField(null=True)
    end_reason = pw.TextField(null=True)


class Entry(_Model):
    pk = pw.AutoField()
    id = pw.TextField(unique=True)
    workspace = pw.ForeignKeyField(Workspace, column_name="workspace_id", on_delete="CASCADE")
    kind = pw.ForeignKeyField(Kind, column_name="kind_id")
    name = pw.TextField()
    hidden = pw.IntegerField(default=0)
    metadata = pw.TextField(default="{}")
    capabilities = pw.TextField(default="[]")
    definition = pw.TextField(null=True)
    target = pw.TextField(null=True)
    created_at = pw.FloatField()
    updated_at = pw.FloatField()
    last_seen_at = pw.FloatField()
    owner_session = pw.ForeignKeyField(Session, null=True, column_name="owner_session_id",
                                       on_delete="SET NULL")
    ephemeral = pw.IntegerField(default=0)
    fence = pw.IntegerField(default=0)
    selected_at = pw.FloatField(null=True)
    selected_count = pw.IntegerField(default=0)
    revision = pw.IntegerField(default=0)


class EntryCapability(_Model):
    capability = pw.TextField()
    entry = pw.ForeignKeyField(Entry, column_name="entry_pk", on_delete="CASCADE")

    class Meta:
        primary_key = pw.CompositeKey("capability", "entry")


class Lease(_Model):
    entry = pw.ForeignKeyField(Entry, primary_key=True, column_name="entry_pk", on_delete="CASCADE")
    session = pw.ForeignKeyField(Session, column_name="session_id", on_delete="CASCADE")
    token = pw.IntegerField()
    acquired_at = pw.FloatField()
    ttl = pw.FloatField(null=True)
    expires_wall = pw.FloatField(null=True)
    expires_mono = pw.FloatField(null=True)


class LockDelay(_Model):
    entry = pw.ForeignKeyField(Entry, primary_key=True, column_name="entry_pk", on_delete="CASCADE")
    until_wall = pw.FloatField()
    until_mono = pw.FloatField()
    boot_id = pw.TextField()


class SelectionCursor(_Model):
    kind = pw.ForeignKeyField(Kind, column_name="kind_id", on_delete="CASCADE")
    workspace = pw.ForeignKeyField(Workspace, column_name="workspace_id", on_delete="CASCADE")
    requirement = pw.TextField()
    position = pw.IntegerField(default=0)

    class Meta:
        primary_key = pw.CompositeKey("kind", "workspace", "requirement")


class Event(_Model):
    rev = pw.AutoField()
    at = pw.FloatField()
    action = pw.TextField()
    workspace = pw.TextField(null=True)
    kind = pw.TextField(null=True)
    name = pw.TextField(null=True)
    entry_id = pw.TextField(null=True)
    session_id = pw.TextField(null=True)
    actor = pw.TextField()
    detail = pw.TextField(default="{}")


class SchemaMigration(_Model):
    version = pw.IntegerField(primary_key=True)
    name = pw.TextField()
    applied_at = pw.FloatField()


ALL_MODELS = (Workspace, WorkspaceAncestor, Kind, Session, Entry, EntryCapability, Lease, LockDelay,
              SelectionCursor, Event, SchemaMigration)
