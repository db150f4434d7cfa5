"""The looking commands: `workspace tree`, `sessions --watch`, `schema export` (checked against real exports)."""

from __future__ import annotations

import copy
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from _json_schema import errors
from nameplate import Registry
from nameplate.cli import main

NAMEPLATE = [sys.executable, "-m", "nameplate"]


def run(db_path: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--db", str(db_path), *args], catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result.output


def test_workspace_tree_draws_layers_with_counts_and_tombstones(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("shared", "node")
        registry.resolve("other", "node")
        registry.create_workspace("dev1", description="Ada's bench")
        registry.create_workspace("ada", "dev1")
        registry.create_workspace("dev2")
        registry.resolve("mine", "node", workspace="dev1")
        registry.hide("shared", "node", workspace="dev1")
        registry.hide("other", "node", workspace="dev1")
        registry.hide("shared", "node", workspace="dev2")
    assert run(db_path, "workspace", "tree").splitlines() == [
        "core (2 entries)  the root layer every workspace inherits from",
        "├── dev1 (1 entry, 2 tombstones)  Ada's bench",
        "│   └── ada (0 entries)",
        "└── dev2 (0 entries, 1 tombstone)",
    ]
    (core,) = json.loads(run(db_path, "workspace", "tree", "--json"))
    assert [(c["name"], c["entries"], c["tombstones"]) for c in core["children"]] == [("dev1", 1, 2), ("dev2", 0, 1)]
    assert core["children"][0]["children"][0]["name"] == "ada"


def test_sessions_watch_prints_plain_blocks_when_not_on_a_terminal(db_path: Path) -> None:
    with Registry(db_path, label="ot2-driver") as holder:
        holder.resolve("liquid_handler_1", "node")
        holder.acquire("liquid_handler_1", "node")
        output = subprocess.run([*NAMEPLATE, "--db", str(db_path), "sessions", "--watch", "--count", "2",
                                 "--interval", "0.05"], capture_output=True, text=True, timeout=60)
        lines = subprocess.run([*NAMEPLATE, "--db", str(db_path), "sessions", "--watch", "--count", "3",
                                "--interval", "0.05", "--json"], capture_output=True, text=True, timeout=60)
    assert output.returncode == 0, output.stderr
    assert "\x1b[" not in output.stdout  # no terminal: no cursor movement
    blocks = output.stdout.strip().split("\n\n")
    assert len(blocks) == 2
    for block in blocks:
        assert "1 session(s), 1 lease(s)" in block.splitlines()[0]
        assert "ot2-driver" in block and "node liquid_handler_1 #1" in block
    snapshots = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(snapshots) == 3 and all(s["sessions"][0]["label"] == "ot2-driver" for s in snapshots)


def test_sessions_watch_redraws_in_place_on_a_terminal(db_path: Path) -> None:
    Registry(db_path).close()
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen([*NAMEPLATE, "--db", str(db_path), "sessions", "--watch", "--count", "2",
                                    "--interval", "0.05"], stdout=follower, stderr=subprocess.PIPE)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=60) == 0
    finally:
        os.close(leader)
    screen = b"".join(chunks).decode()
    assert screen.count("\x1b[H\x1b[2J") == 2  # each refresh starts by clearing the screen


def test_schema_export_prints_the_shipped_schema(db_path: Path) -> None:
    printed = json.loads(run(db_path, "schema", "export"))
    assert printed["properties"]["format"] == {"const": "nameplate-export"}
    assert json.loads(run(db_path, "schema", "export", "--json")) == printed


def _rich_export(db_path: Path) -> dict[str, object]:
    with Registry(db_path) as registry:
        registry.define_kind("robot", required=["model"], optional=["slots"], name_pattern=r"^[a-z_0-9]+$",
                             description="arms")
        registry.register("arm_1", "robot", {"model": "ur5"}, metadata={"room": 3}, capabilities=["grip"])
        registry.resolve("lh1", "node", {"url": "http://x", "nested": {"a": [1, None, True]}})
        registry.create_workspace("dev1", description="bench")
        registry.resolve("local", "node", workspace="dev1")
        registry.hide("lh1", "node", workspace="dev1")
        registry.resolve("tmp", "node", ephemeral=True)  # not exported
        exported: dict[str, object] = registry.export()
    return exported


def test_real_exports_match_the_schema(db_path: Path, tmp_path: Path) -> None:
    schema = json.loads(run(db_path, "schema", "export"))
    assert errors(json.loads(run(tmp_path / "empty.db", "export")), schema) == []
    document = _rich_export(db_path)
    assert errors(document, schema) == []
    assert errors(json.loads(run(db_path, "export")), schema) == []  # as the CLI writes it, too
    assert document["tombstones"] and len(document["entries"]) == 3  # type: ignore[arg-type]


@pytest.mark.parametrize(("break_it", "problem"), [
    (lambda d: d.pop("revision"), "missing 'revision'"),
    (lambda d: d.update(format="madsci"), "is not 'nameplate-export'"),
    (lambda d: d["entries"][0].update(id="not-a-ulid"), "$.entries[0].id"),
    (lambda d: d["entries"][0].update(created_at="2026-01-01 00:00"), "$.entries[0].created_at"),
    (lambda d: d["entries"][0].update(extra=1), "unexpected 'extra'"),
    (lambda d: d["kinds"].append({"name": "x", "builtin": False}), "matches none of the allowed shapes"),
    (lambda d: d["workspaces"][0].update(parent=5), "$.workspaces[0].parent"),
])
def test_the_schema_refuses_broken_exports(db_path: Path, break_it, problem: str) -> None:  # type: ignore[no-untyped-def]
    schema = json.loads(run(db_path, "schema", "export"))
    document = copy.deepcopy(_rich_export(db_path))
    break_it(document)
    assert any(problem in found for found in errors(document, schema)), errors(document, schema)
