"""The coordination commands: ls pages and metadata, log filters, update/rm with --if-revision, wait."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner, Result

from nameplate import Registry
from nameplate.cli import main


def run(db_path: Path, *args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, ["--db", str(db_path), *args], catch_exceptions=False)
    assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
    return result


def test_ls_pages_with_prefix_limit_and_the_printed_after(db_path: Path) -> None:
    with Registry(db_path) as registry:
        for i in range(5):
            registry.resolve(f"lh_{i}", "node", {"room": "A" if i < 2 else "B"})
        registry.resolve("other", "node")
        registry.resolve("job", "process")
    first = run(db_path, "ls", "--kind", "node", "--prefix", "lh_", "--limit", "3", "--json")
    assert [e["name"] for e in json.loads(first.stdout)] == ["lh_0", "lh_1", "lh_2"]
    assert "--after lh_2" in first.stderr
    rest = run(db_path, "ls", "-k", "node", "--prefix", "lh_", "--limit", "3", "--after", "lh_2", "--json")
    assert [e["name"] for e in json.loads(rest.stdout)] == ["lh_3", "lh_4"] and rest.stderr == ""
    mixed = run(db_path, "ls", "--limit", "6", "--json")
    assert "--after node:other" in mixed.stderr
    last = run(db_path, "ls", "--limit", "6", "--after", "node:other", "--json")
    assert [e["name"] for e in json.loads(last.stdout)] == ["job"] and last.stderr == ""  # kinds, then names
    assert [e["name"] for e in json.loads(run(db_path, "ls", "--after", "node:lh_4", "--json").stdout)] == [
        "other", "job"]
    by_meta = run(db_path, "ls", "-k", "node", "-m", "room=A", "--json")
    assert [e["name"] for e in json.loads(by_meta.stdout)] == ["lh_0", "lh_1"]
    assert "needs --kind" in run(db_path, "ls", "-m", "room=A", code=2).stderr
    assert "KIND:NAME" in run(db_path, "ls", "--after", "lh_2", code=2).stderr
    assert "do not combine" in run(db_path, "ls", "-k", "node", "--limit", "2", "-m", "room=A", code=2).stderr


def test_update_and_rm_with_if_revision_are_compare_and_swap(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("lh1", "node")
        revision = registry.require("lh1", "node").revision
    new = int(run(db_path, "update", "lh1", "-k", "node", "-m", "room=A", "--if-revision", str(revision)).stdout)
    assert new > revision
    stale = run(db_path, "update", "lh1", "-k", "node", "-m", "room=B", "--if-revision", str(revision), code=4)
    assert "expected at revision" in stale.stderr and "Traceback" not in stale.stderr
    assert "(nameplate show) and retry with --if-revision" in stale.stderr and "get()" not in stale.stderr
    assert "expected at revision" in run(db_path, "rm", "lh1", "--if-revision", str(revision), code=4).stderr
    shown = json.loads(run(db_path, "show", "lh1", "--json").stdout)
    assert shown["metadata"] == {"room": "A"} and shown["revision"] == new
    run(db_path, "rm", "lh1", "--if-revision", str(new))
    with Registry(db_path) as registry:
        assert registry.lookup("lh1", "node") is None


def test_log_filters_by_name_prefix_kind_and_workspace(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.create_workspace("lab")
        registry.resolve("lh1", "node")
        registry.resolve("lh2", "node", workspace="lab")
        registry.resolve("job", "process")

    def names(*args: str) -> list[str | None]:
        return [e["name"] for e in json.loads(run(db_path, "log", *args, "--json").stdout)]
    assert names("--name", "lh1") == ["lh1"]
    assert names("--prefix", "lh") == ["lh1", "lh2"]
    assert names("--kind", "process") == ["job"]
    assert names("--in-workspace", "lab") == [None, "lh2"]  # the workspace's creation, then its entry


def test_wait_prints_the_change_made_by_another_process_and_times_out_otherwise(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("lh1", "node")
        since = registry.revision
    waiter = subprocess.Popen([sys.executable, "-m", "nameplate", "--db", str(db_path), "wait", "lh1", "-k", "node",
                               "--since", str(since), "--timeout", "30", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        with Registry(db_path) as registry:
            registry.update("lh1", "node", metadata={"room": "A"})
        out, err = waiter.communicate(timeout=30)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, err
    assert json.loads(out)["action"] == "update"
    timed_out = run(db_path, "wait", "lh1", "-k", "node", "--timeout", "0.1", code=1)
    assert "no change of node 'lh1' within 0.1 s" in timed_out.stderr
