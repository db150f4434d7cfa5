"""The CLI: every command, JSON output, exit codes, the installed script, docs drift."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from nameplate import Registry
from nameplate.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def cli(db_path: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(main, ["--db", str(db_path), *args], catch_exceptions=False)
        assert result.exit_code == code, (args, result.exit_code, result.output, result.stderr)
        return result.output if code == 0 else result.stderr

    return run


def all_commands() -> list[str]:
    names = []
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            names += [f"{name} {sub}" for sub in command.commands]
        else:
            names.append(name)
    return sorted(names)


def test_entry_commands(cli, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    entry_id = cli("resolve", "lh1", "--kind", "node", "--meta", "url=http://x", "--meta", "slots=4").strip()
    assert cli("resolve", "lh1", "-k", "node").strip() == entry_id
    assert cli("lookup", "lh1").strip() == entry_id
    shown = json.loads(cli("--json", "show", "lh1"))
    assert shown["id"] == entry_id and shown["metadata"] == {"url": "http://x", "slots": 4}
    assert "lh1" in cli("ls") and "NAME" in cli("ls")
    assert json.loads(cli("--json", "ls", "--kind", "node"))[0]["id"] == entry_id
    assert json.loads(cli("--json", "ls", "--stale", "1d")) == []
    assert "lh1 -> lh2" in cli("rename", "lh1", "lh2")
    assert "deleted node lh2" in cli("rm", "lh2", "--kind", "node")
    assert cli("lookup", "lh2", code=3).startswith("nameplate: error:")


def test_capability_filter_and_explain(cli, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Registry(db_path) as registry:
        registry.register("gpt", "provider", capabilities=["llm", "chat"])
        registry.register("ocr", "provider", capabilities=["vision"])
        registry.create_workspace("dev1")
    assert [e["name"] for e in json.loads(cli("--json", "ls", "-k", "provider", "-c", "llm"))] == ["gpt"]
    assert [e["name"] for e in json.loads(cli("--json", "ls", "-c", "vision"))] == ["ocr"]
    explanation = json.loads(cli("--json", "-w", "dev1", "explain", "gpt", "--kind", "provider"))
    assert explanation["answered_by"] == "core" and explanation["chain"] == ["dev1", "core"]
    assert "answers" in cli("-w", "dev1", "explain", "gpt", "-k", "provider")


def test_lease_and_session_commands(cli, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Registry(db_path) as holder:
        holder.resolve("device", "node")
        holder.session(label="robot-arm").report(status="healthy")
        holder.acquire("device", "node")
        held = json.loads(cli("--json", "locks"))
        assert [(h["name"], h["label"]) for h in held] == [("device", "robot-arm")]
        assert "robot-arm" in cli("locks")
        sessions = json.loads(cli("--json", "sessions"))
        assert [s["status"] for s in sessions] == ["healthy"]
        assert "only the holder releases" in cli("release", "device", code=4)
        assert "released device" in cli("release", "device", "--force")
        assert json.loads(cli("--json", "locks")) == []
    assert json.loads(cli("--json", "sessions")) == []
    assert [s["state"] for s in json.loads(cli("--json", "sessions", "--all"))] == ["closed"]
    assert json.loads(cli("--json", "reap")) == {"reaped": []}


def test_clean_command(cli, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "old", "-k", "node")
    cli("resolve", "new", "-k", "node")
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE entry SET last_seen_at = last_seen_at - 10 * 86400 WHERE name = 'old'")
    conn.commit()
    conn.close()
    assert "would remove 1 entry" in cli("clean", "--dry-run")
    assert [e["name"] for e in json.loads(cli("--json", "clean", "--older-than", "7d"))["entries"]] == ["old"]
    assert "removed 0 entries" in cli("clean")
    assert "is not a duration" in cli("clean", "--older-than", "soon", code=2)


def test_export_import_commands(cli, db_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "a", "-k", "node")
    out = tmp_path / "export.json"
    assert "exported 1 entries" in cli("export", "-o", str(out))
    assert json.loads(out.read_text())["entries"][0]["name"] == "a"
    assert json.loads(cli("export"))["format"] == "nameplate-export"
    assert json.loads(cli("export", "--format", "madsci"))["entries"]["a"]["component_type"] == "node"
    other = tmp_path / "other.db"
    runner = CliRunner()
    dry = runner.invoke(main, ["--db", str(other), "import", str(out), "--dry-run"])
    assert dry.exit_code == 0 and "add     core/node/a" in dry.output and "would import" in dry.output
    done = runner.invoke(main, ["--db", str(other), "--json", "import", str(out)])
    assert done.exit_code == 0 and json.loads(done.output)["applied"] is True
    madsci = Path(__file__).parent / "data" / "madsci_registry.json"
    assert "imported (merge, madsci)" in cli("import", str(madsci), "--format", "madsci")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "nameplate-export", "version": 7}')
    assert "not supported" in cli("import", str(bad), code=1)


def test_health_and_housekeeping_commands(cli, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "a", "-k", "node")
    assert cli("check").startswith("ok:")
    assert json.loads(cli("--json", "check"))["ok"] is True
    stats = json.loads(cli("--json", "stats"))
    assert stats["entries"] == 1 and stats["revision"] >= 1 and stats["file_bytes"] > 0
    assert "revision:" in cli("stats")
    assert "file" in cli("vacuum")
    assert "WAL frames" in cli("checkpoint")
    assert json.loads(cli("--json", "migrate", "--status"))["pending"] == []
    assert "schema version 1" in cli("migrate")
    assert [k["name"] for k in json.loads(cli("--json", "kinds"))][:2] == ["builder", "experiment"]
    assert "hyperparameter" in cli("kinds")


def test_check_exits_5_and_lists_every_problem(cli, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Registry(db_path) as registry:
        registry.register("Train", "step", {"sagemaker_step_type": "Training"})
        registry.create_workspace("dev1")
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE entry SET definition = '{\"sagemaker_step_type\": 1, \"bogus\": 2}' WHERE name = 'Train'")
    conn.execute("DELETE FROM workspace_ancestor WHERE workspace_id = (SELECT id FROM workspace WHERE name = 'dev1')")
    conn.commit()
    conn.close()
    output = cli("check", code=5)
    assert "3 problem(s)" in output  # the bad definition, the missing closure row, the broken ancestry
    problems = json.loads(CliRunner().invoke(main, ["--db", str(db_path), "--json", "check"]).stdout)["problems"]
    assert any("unknown field 'bogus'" in p for p in problems)
    assert any("no closure row" in p for p in problems)
    assert any("ancestry inconsistent" in p for p in problems)


def test_log_and_gc_commands(cli, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "a", "-k", "node")
    cli("rename", "a", "b")
    events = json.loads(cli("--json", "log"))
    assert [e["action"] for e in events] == ["create", "rename"]
    assert "rename" in cli("log", "--since", "1") and "create" not in cli("log", "--since", "1")
    assert json.loads(cli("--json", "gc", "--keep-days", "30")) == {"events_deleted": 0, "sessions_deleted": 0}
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE event SET at = at - 90 * 86400")
    conn.commit()
    conn.close()
    assert "deleted 3 events" in cli("gc", "--keep-days", "30")  # the earlier gc's own event too
    cli("resolve", "c", "-k", "node")
    assert json.loads(cli("--json", "log"))[-1]["rev"] > max(e["rev"] for e in events)  # never reused


def test_log_follow_prints_new_events_from_other_processes(db_path: Path) -> None:
    Registry(db_path).close()
    follower = subprocess.Popen([sys.executable, "-m", "nameplate", "--db", str(db_path), "log", "--follow"],
                                stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # let it start polling
        with Registry(db_path) as registry:
            registry.resolve("followed", "node")
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(follower.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=20)
        assert lines and "create" in lines[0] and "followed" in lines[0]
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        follower.stdout.close()


def test_workspace_commands(cli) -> None:  # type: ignore[no-untyped-def]
    assert "created workspace dev1" in cli("workspace", "create", "dev1")
    cli("workspace", "create", "dev2", "--description", "Grace's")
    cli("-w", "dev1", "resolve", "x", "-k", "node")
    assert [w["name"] for w in json.loads(cli("--json", "workspace", "ls"))] == ["core", "dev1", "dev2"]
    diff = json.loads(cli("--json", "workspace", "diff", "dev1", "dev2"))
    assert [e["name"] for e in diff["only_in_a"]] == ["x"]
    assert "- node x" in cli("workspace", "diff", "dev1", "dev2")
    assert "promoted node x" in cli("-w", "dev1", "workspace", "promote", "x", "-k", "node")
    assert "no differences" in cli("workspace", "diff", "dev1", "dev2")
    assert json.loads(cli("--json", "workspace", "conflicts")) == []
    assert "give the workspace" in cli("workspace", "promote", "x", code=1)
    assert "deleted dev2" in cli("workspace", "rm", "dev2")
    assert "cannot be deleted" in cli("workspace", "rm", "core", code=4)


@pytest.mark.parametrize(("args", "code"), [
    (["resolve", "bad\tname", "-k", "node"], 1),          # InvalidNameError
    (["resolve", "x", "-k", "robot"], 3),                 # UnknownKindError
    (["lookup", "ghost"], 3),                             # EntryNotFoundError
    (["-w", "nowhere", "ls"], 3),                         # UnknownWorkspaceError
    (["rename", "a", "b"], 4),                            # NameTakenError
    (["resolve", "x", "-k", "node", "--meta", "novalue"], 2),  # usage
    (["frobnicate"], 2),
])
def test_exit_codes_by_error_class(cli, args: list[str], code: int) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "a", "-k", "node")
    cli("resolve", "b", "-k", "node")
    output = cli(*args, code=code)
    if code != 2:
        assert output.startswith("nameplate: error:") and output.count("\n") == 1  # one line, no traceback


def test_every_data_command_speaks_json(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "a", "-k", "node")
    for args in (["path"], ["ls"], ["show", "a"], ["lookup", "a"], ["resolve", "z", "-k", "node"], ["locks"],
                 ["sessions"], ["reap"], ["clean", "--dry-run"], ["check"], ["stats"], ["kinds"],
                 ["migrate", "--status"], ["log"], ["workspace", "ls"], ["workspace", "conflicts"],
                 ["explain", "a", "-k", "node"], ["gc", "--keep-days", "365"], ["checkpoint"],
                 ["export", "-o", str(tmp_path / "e.json")]):
        json.loads(cli("--json", *args))


def test_init_creates_a_private_project_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0 and "created" in result.output
    assert (tmp_path / ".nameplate" / "registry.db").exists()
    assert oct((tmp_path / ".nameplate").stat().st_mode & 0o777) == "0o700"
    where = CliRunner().invoke(main, ["--json", "path"])
    assert json.loads(where.output)["source"] == "project"


def test_every_command_has_help_and_a_readme_mention() -> None:
    readme = README.read_text()
    for name in all_commands():
        parts = name.split()
        command = main.commands[parts[0]]
        if len(parts) == 2:
            command = command.commands[parts[1]]  # type: ignore[attr-defined]
        assert command.help and command.help.strip(), name
        assert re.search(rf"nameplate( --?\S+)*( \S+)* {re.escape(name)}\b", readme) or f"`{name}`" in readme, \
            f"README does not mention `nameplate {name}`"


def test_the_installed_console_script_runs(db_path: Path) -> None:
    script = shutil.which("nameplate", path=os.path.dirname(sys.executable)) or shutil.which("nameplate")
    assert script is not None, "the nameplate console script is not installed next to this Python"
    created = subprocess.run([script, "--db", str(db_path), "resolve", "smoke", "--kind", "node"],
                             capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    module = subprocess.run([sys.executable, "-m", "nameplate", "--db", str(db_path), "lookup", "smoke"],
                            capture_output=True, text=True, timeout=60)
    assert module.stdout.strip() == created.stdout.strip()
    missing = subprocess.run([script, "--db", str(db_path), "lookup", "ghost"], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 3 and "Traceback" not in missing.stderr
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "nameplate" in version.stdout
