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

from nameplate import NameplateError, Registry
from nameplate import cli as cli_module
from nameplate import errors as errors_module
from nameplate._export_file import encode_document
from nameplate.backends.migrate import available, latest_version
from nameplate.cli import main

from conftest import table_snapshot

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
    assert "exported 1 entry to" in cli("export", "-o", str(out))
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # an export holds what the registry holds
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
    assert cli("checkpoint").startswith("WAL ")
    assert json.loads(cli("--json", "migrate", "--status"))["pending"] == []
    assert f"schema version {latest_version()} (latest {latest_version()})" in cli("migrate")
    assert [k["name"] for k in json.loads(cli("--json", "kinds"))][:2] == ["builder", "election"]
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
    result = CliRunner().invoke(main, ["--db", str(db_path), "--json", "check"])
    assert result.exit_code == 5
    problems = json.loads(result.stdout)["problems"]
    assert [p["check"] for p in problems] == ["definition", "layer", "layer"]
    assert any("unknown field 'bogus'" in p["message"] for p in problems)
    assert any("no closure row" in p["message"] for p in problems)
    assert any("ancestry inconsistent" in p["message"] for p in problems)
    human = CliRunner().invoke(main, ["--db", str(db_path), "check"])
    assert human.stdout.count("problem  ") == 3 and "FAILED" in human.stdout


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
    # create and rename; the earlier gc's own event is the newest, kept so revisions never go back
    assert "deleted 2 events" in cli("gc", "--keep-days", "30")
    cli("resolve", "c", "-k", "node")
    assert json.loads(cli("--json", "log"))[-1]["rev"] > max(e["rev"] for e in events)  # never reused


@pytest.mark.parametrize("as_json", [False, True])
def test_log_follow_prints_new_events_from_other_processes(db_path: Path, as_json: bool) -> None:
    Registry(db_path).close()
    follower = subprocess.Popen([sys.executable, "-m", "nameplate", "--db", str(db_path),
                                 *(["--json"] if as_json else []), "log", "--follow"],
                                stdout=subprocess.PIPE, text=True)
    try:
        if not as_json:
            assert follower.stdout.readline().split()[:2] == ["REV", "WHEN"]  # it is up and polling
        else:
            time.sleep(1.0)  # let it start polling
        with Registry(db_path) as registry:
            registry.resolve("followed", "node")
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(follower.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=20)
        assert lines, "the follower printed nothing within 20 s"
        if as_json:
            event = json.loads(lines[0])
            assert (event["action"], event["name"]) == ("create", "followed")
        else:
            assert "create" in lines[0] and "followed" in lines[0]
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        follower.stdout.close()


def test_workspace_commands(cli) -> None:  # type: ignore[no-untyped-def]
    assert "created workspace dev1" in cli("workspace", "create", "dev1")
    assert "already exists over core" in cli("workspace", "create", "dev1", "--exist-ok")
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
    (["log", "--limit", "0"], 2),
    (["gc", "--keep-days", "-1"], 2),
    (["clean", "--older-than", "soon"], 2),
    (["export", "-o", "/nonexistent-dir/export.json"], 1),  # OSError: one line, no traceback
])
def test_exit_codes_by_error_class(cli, args: list[str], code: int) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "a", "-k", "node")
    cli("resolve", "b", "-k", "node")
    output = cli(*args, code=code)
    assert "Traceback" not in output
    if code != 2:
        assert output.startswith("nameplate: error:") and output.count("\n") == 1  # one line, no traceback


def test_every_command_speaks_json(cli, db_path: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cli("resolve", "a", "-k", "node")
    cli("resolve", "gone", "-k", "node")
    cli("resolve", "old", "-k", "node")
    export = tmp_path / "e.json"
    cli("export", "-o", str(export))
    monkeypatch.chdir(tmp_path)
    cases = {
        "path": ["path"], "init": ["init"], "ls": ["ls"], "show": ["show", "a"], "lookup": ["lookup", "a"],
        "resolve": ["resolve", "z", "-k", "node"], "rename": ["rename", "old", "older"], "rm": ["rm", "gone"],
        "explain": ["explain", "a", "-k", "node"], "locks": ["locks"], "release": ["release", "a"],
        "sessions": ["sessions"], "reap": ["reap"], "clean": ["clean", "--dry-run"],
        "export": ["export", "-o", str(tmp_path / "e2.json")],
        "import": ["import", str(export), "--replace", "--dry-run"],
        "check": ["check"], "vacuum": ["vacuum"], "checkpoint": ["checkpoint"], "migrate": ["migrate", "--status"],
        "log": ["log"], "gc": ["gc", "--keep-days", "365"], "kinds": ["kinds"], "stats": ["stats"],
        "workspace ls": ["workspace", "ls"], "workspace create": ["workspace", "create", "dev9"],
        "workspace diff": ["workspace", "diff", "core", "dev9"], "workspace conflicts": ["workspace", "conflicts"],
        "workspace promote": ["-w", "dev9", "workspace", "promote", "p", "-k", "node"],
        "workspace rm": ["workspace", "rm", "dev9"], "workspace tree": ["workspace", "tree"],
        "schema export": ["schema", "export"], "leader": ["leader", "primary"],
        "discover": ["discover", "np.no_such_group"], "load-all": ["load-all", "provider"],
        "update": ["update", "a", "-m", "x=1"], "wait": ["wait", "a", "-k", "node", "--since", "0"],
    }
    # lock's, campaign's and semaphore's standard output is their command's: they have no --json
    # (tests/test_cli_lock.py and tests/test_cli_election.py cover them).
    assert sorted([*cases, "lock", "campaign", "semaphore"]) == all_commands(), "a command has no --json case here"
    with Registry(db_path) as leading:
        leading.campaign("primary", "me")
        assert json.loads(cli("--json", *cases.pop("leader")))["value"] == "me"
    for name, args in cases.items():
        if name == "workspace promote":
            cli("-w", "dev9", "resolve", "p", "-k", "node")
        output = cli("--json", *args)
        assert isinstance(json.loads(output), (dict, list)), name
    # ... and after the command, as sqlite-utils and etcdctl take it
    for name, args in (("ls", ["ls"]), ("show", ["show", "a"]), ("workspace ls", ["workspace", "ls"]),
                       ("resolve", ["resolve", "z", "-k", "node"])):
        assert json.loads(cli(*args, "--json")) == json.loads(cli("--json", *args)), name


def test_init_creates_a_private_project_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["init"])
    assert result.exit_code == 0 and "created" in result.output
    assert (tmp_path / ".nameplate" / "registry.db").exists()
    assert oct((tmp_path / ".nameplate").stat().st_mode & 0o777) == "0o700"
    where = CliRunner().invoke(main, ["--json", "path"])
    assert json.loads(where.output)["source"] == "project"


def _command(name: str) -> click.Command:
    parts = name.split()
    command = main.commands[parts[0]]
    if len(parts) == 2:
        command = command.commands[parts[1]]  # type: ignore[attr-defined]
    return command


def test_every_command_and_option_has_help_text() -> None:
    for name in all_commands():
        command = _command(name)
        assert command.help and command.help.strip(), f"`nameplate {name}` has no help text"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"`nameplate {name} {param.opts[0]}` has no help text"
    for param in main.params:
        assert not isinstance(param, click.Option) or param.help, param.opts
    epilog = main.epilog or ""
    assert "_NAMEPLATE_COMPLETE=bash_source" in epilog and "zsh_source" in epilog  # shell completion documented
    assert all(re.search(rf"\b{code}\b", epilog) for code in [*range(9), 126, 127])  # every exit code documented


def test_every_command_is_mentioned_in_the_readme() -> None:
    readme = README.read_text()
    for name in all_commands():
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


def _error_classes() -> list[type[NameplateError]]:
    return [getattr(errors_module, name) for name in errors_module.__all__]


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda cls: cls.__name__)
def test_every_error_class_exits_with_its_documented_code(cli, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                          cls: type[NameplateError]) -> None:
    expected = (127 if cls is errors_module.CommandNotRunnableError else  # the shells' "command not found"
                8 if cls is errors_module.CommandLeaseLostError else      # `nameplate lock`'s own code
                3 if issubclass(cls, errors_module.NotFoundError) else
                4 if issubclass(cls, errors_module.ConflictError) else
                6 if issubclass(cls, errors_module.DatabaseLocationError) else
                7 if issubclass(cls, errors_module.StorageError) else
                5 if issubclass(cls, (errors_module.DatabaseError, errors_module.IntegrityProblemError)) else 1)
    assert cls.exit_code == expected

    def boom(self: Registry) -> None:
        raise cls(f"{cls.__name__} happened\nacross two lines", detail=1)

    monkeypatch.setattr(Registry, "stats", boom)
    output = cli("stats", code=expected)
    assert output == f"nameplate: error: {cls.__name__} happened across two lines\n"


def test_migrate_status_only_looks(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    result = CliRunner().invoke(main, ["--db", str(fresh), "--json", "migrate", "--status"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pending"] == [{"version": m.version, "name": m.name} for m in available()]
    assert not fresh.exists()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()  # a database file with no schema yet
    assert "pending" in CliRunner().invoke(main, ["--db", str(empty), "migrate", "--status"]).output
    assert sqlite3.connect(empty).execute("PRAGMA user_version").fetchone()[0] == 0  # still not migrated
    applied = CliRunner().invoke(main, ["--db", str(empty), "--json", "migrate"])
    assert json.loads(applied.output)["applied_now"] == [m.version for m in available()]
    assert json.loads(CliRunner().invoke(main, ["--db", str(empty), "--json", "migrate", "--status"]).output
                      )["pending"] == []


@pytest.mark.parametrize("fmt", ["nameplate", "madsci"])
def test_exported_text_is_the_same_with_or_without_a_progress_bar(db_path: Path, fmt: str) -> None:
    with Registry(db_path) as registry:
        for index in range(1200):
            registry.resolve(f"n{index}", "node", {"slot": index, "nested": {"a": [1, {"b": 2}]}})
        document = registry.export(fmt)
    calls: list[tuple[int, int]] = []
    text = encode_document(document, lambda done, total: calls.append((done, total)))
    assert text == json.dumps(document, indent=2, sort_keys=True)
    assert calls[0] == (0, 1200) and calls[-1] == (1200, 1200)
    empty = dict(document, entries={} if fmt == "madsci" else [])
    assert encode_document(empty) == json.dumps(empty, indent=2, sort_keys=True)


def test_export_to_stdout_and_the_progress_bar_wiring(cli, db_path: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cli("resolve", "a", "-k", "node")
    assert json.loads(cli("export", "-o", "-"))["entries"][0]["name"] == "a"
    monkeypatch.setattr(cli_module, "_progress_wanted", lambda count: True)
    result = CliRunner().invoke(main, ["--db", str(db_path), "export", "-o", str(tmp_path / "e.json")])
    assert result.exit_code == 0 and "exporting" in result.stderr and "exporting" not in result.stdout
    result = CliRunner().invoke(main, ["--db", str(tmp_path / "b.db"), "import", str(tmp_path / "e.json")])
    assert result.exit_code == 0 and "validating" in result.stderr


def test_import_conflicts_exit_4_and_change_nothing(cli, db_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "a", "-k", "node")
    export = tmp_path / "e.json"
    cli("export", "-o", str(export))
    with Registry(db_path) as holder:
        holder.acquire("a", "node")
        before = table_snapshot(db_path)
        output = cli("import", str(export), "--replace", code=4)
        assert "leased by a live process" in output
        assert table_snapshot(db_path) == before
    cli("rename", "a", "b")
    assert "already belongs to core/node/b" in cli("import", str(export), code=4)  # same id, other name


def test_import_dry_run_lists_what_would_change(cli, db_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("resolve", "a", "-k", "node")
    export = tmp_path / "e.json"
    cli("export", "-o", str(export))
    cli("resolve", "extra", "-k", "node")
    cli("workspace", "create", "dev1")
    before = table_snapshot(db_path)
    output = cli("import", str(export), "--replace", "--dry-run")
    assert "  remove  core/node/extra" in output and "  replace core/node/a" in output
    assert "would import (replace, nameplate): 0 added, 0 kept, 1 replaced, 1 removed" in output
    assert json.loads(cli("--json", "import", str(export), "--replace", "--dry-run"))["workspaces_removed"] == ["dev1"]
    assert table_snapshot(db_path) == before


@pytest.mark.parametrize("depth", [100, 5000])
def test_deeply_nested_input_is_one_line_never_a_traceback(tmp_path: Path, depth: int) -> None:
    db = tmp_path / "registry.db"
    deep = "[" * depth + "]" * depth
    resolved = subprocess.run([sys.executable, "-m", "nameplate", "--db", str(db), "resolve", "lh1", "--kind", "node",
                               "--meta", f"shape={deep}"], capture_output=True, text=True, timeout=60)
    assert resolved.returncode == 1 and resolved.stderr.count("\n") == 1, resolved.stderr
    assert "nests deeper than 64 levels" in resolved.stderr and "Traceback" not in resolved.stderr
    document = tmp_path / "deep.json"
    document.write_text('{"format": "nameplate-export", "version": 1, "entries": [{"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV",'
                        ' "workspace": "core", "kind": "node", "name": "lh1", "metadata": {"shape": ' + deep + '},'
                        ' "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",'
                        ' "last_seen_at": "2026-01-01T00:00:00Z"}]}')
    imported = subprocess.run([sys.executable, "-m", "nameplate", "--db", str(db), "import", str(document)],
                              capture_output=True, text=True, timeout=60)
    assert imported.returncode == 1 and imported.stderr.count("\n") == 1, imported.stderr
    assert "deeper than 64 levels" in imported.stderr and "Traceback" not in imported.stderr
    with Registry(db) as registry:
        assert registry.list() == []


def test_global_options_show_their_environment_variables() -> None:
    result = CliRunner().invoke(main, ["--help"], terminal_width=200)
    for variable in ("NAMEPLATE_DB", "NAMEPLATE_WORKSPACE", "NAMEPLATE_TIMEOUT"):
        assert f"env var: {variable}" in result.output, variable
    assert "--timeout SECONDS" in result.output


def test_environment_variables_reach_the_library_and_path_says_which(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMEPLATE_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("NAMEPLATE_WORKSPACE", "dev1")
    with Registry(tmp_path / "env.db") as registry:
        registry.create_workspace("dev1")
    where = json.loads(CliRunner().invoke(main, ["path", "--json"]).output)
    assert where == {"path": str(tmp_path / "env.db"), "source": "env", "reason": "NAMEPLATE_DB is set"}
    made = json.loads(CliRunner().invoke(main, ["resolve", "x", "-k", "node", "--json"]).output)
    with Registry(tmp_path / "env.db") as registry:
        assert registry.require("x", "node", workspace="dev1").id == made["id"]
        assert registry.get("x", "node", workspace="core") is None


def test_timeout_reaches_the_registry(db_path: Path, tmp_path: Path) -> None:
    Registry(db_path).close()
    blocker = sqlite3.connect(db_path)
    blocker.execute("BEGIN IMMEDIATE")  # another process's write lock, held
    try:
        result = CliRunner().invoke(main, ["--db", str(db_path), "--timeout", "0.2", "resolve", "x", "-k", "node"])
    finally:
        blocker.rollback()
        blocker.close()
    assert result.exit_code == 1 and "busy" in result.stderr.lower() and result.stderr.count("\n") == 1
    bad = CliRunner().invoke(main, ["--db", str(db_path), "--timeout", "0", "ls"])
    assert bad.exit_code == 2


def test_errors_name_cli_flags_not_python_keywords(cli, db_path: Path) -> None:  # type: ignore[no-untyped-def]
    python_words = re.compile(r"(?<![-\w])(kind|force|replace|wait|lease)=|\(\.\.\., ")
    cli("resolve", "twin", "-k", "node")
    cli("resolve", "twin", "-k", "module")
    ambiguous = cli("lookup", "twin", code=4)
    assert "pass --kind to choose one" in ambiguous
    cli("workspace", "create", "dev1")
    cli("workspace", "create", "child", "--parent", "dev1")
    children = cli("workspace", "rm", "dev1", code=4)
    assert "pass --force to delete them all" in children
    cli("resolve", "up", "-k", "node")
    inherited = cli("-w", "dev1", "rm", "up", "-k", "node", code=3)
    assert "delete it there (--workspace core)" in inherited
    cli("-w", "dev1", "resolve", "up2", "-k", "node")
    cli("resolve", "up2", "-k", "node")
    taken = cli("-w", "dev1", "workspace", "promote", "up2", "-k", "node", code=4)
    assert "pass --replace to overwrite it" in taken
    with Registry(db_path, label="holder") as holder:
        holder.acquire("twin", "node")
        not_yours = cli("release", "twin", "-k", "node", code=4)
        assert "(operators: nameplate release --force)" in not_yours
        held = cli("rename", "twin", "twin2", "-k", "node", code=4)
        assert "break it with nameplate release --force" in held
    for message in (ambiguous, children, inherited, taken, not_yours, held):
        assert not python_words.search(message), message


def test_an_unknown_database_url_is_refused_naming_what_is_supported() -> None:
    result = CliRunner().invoke(main, ["--db", "mysql://u:p@host/db", "ls"])
    assert result.exit_code == 1 and "SQLite files or PostgreSQL" in result.stderr
    assert ":p@" not in result.stderr


def test_a_postgresql_url_never_shows_its_password() -> None:
    url = "postgresql://u:s3cret@127.0.0.1:1/db?password=s3cret"
    path = CliRunner().invoke(main, ["--db", url, "path"])
    assert path.exit_code == 0 and "postgresql://u:***@127.0.0.1:1/db?password=***" in path.output
    failed = CliRunner().invoke(main, ["--db", url, "ls"])
    assert failed.exit_code == 6 and "cannot connect to postgresql://u:***@127.0.0.1:1/db" in failed.stderr
    assert "s3cret" not in path.output + failed.output + failed.stderr
