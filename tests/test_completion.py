"""Shell completion of entry names, kinds and workspaces, driven as the shells do: `_NAMEPLATE_COMPLETE`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from nameplate import Registry


def complete(line: str, *, env: dict[str, str] | None = None) -> list[str]:
    """What bash would be offered for ``line`` (the cursor at its end), from a real process."""
    words = line.split(" ")
    script = shutil.which("nameplate", path=os.path.dirname(sys.executable))
    assert script is not None, "the nameplate console script is not installed next to this Python"
    result = subprocess.run(
        [script],
        env={**os.environ, **(env or {}), "_NAMEPLATE_COMPLETE": "bash_complete", "COMP_WORDS": line,
             "COMP_CWORD": str(len(words) - 1)},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [item.partition(",")[2] for item in result.stdout.splitlines() if item]


def test_entry_names_follow_kind_and_workspace_layers(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.resolve("liquid_handler_1", "node")
        registry.resolve("liquid_handler_2", "node")
        registry.resolve("lidar", "module")
        registry.resolve("plate_reader", "node")
        registry.create_workspace("dev1")
        registry.resolve("liquid_local", "node", workspace="dev1")
        registry.hide("liquid_handler_2", "node", workspace="dev1")
    db = f"--db {db_path}"
    assert complete(f"nameplate {db} show li") == ["lidar", "liquid_handler_1", "liquid_handler_2"]
    assert complete(f"nameplate {db} show --kind node li") == ["liquid_handler_1", "liquid_handler_2"]
    assert complete(f"nameplate {db} -w dev1 lookup -k node liq") == ["liquid_handler_1", "liquid_local"]
    assert complete(f"nameplate {db} lock -k node pl") == ["plate_reader"]
    assert complete("nameplate show li", env={"NAMEPLATE_DB": str(db_path)}) == [
        "lidar", "liquid_handler_1", "liquid_handler_2"]


def test_kinds_and_workspaces_complete(db_path: Path) -> None:
    with Registry(db_path) as registry:
        registry.create_workspace("dev1")
        registry.create_workspace("dev2", "dev1")
        registry.define_kind("robot")
    db = f"--db {db_path}"
    assert complete(f"nameplate {db} ls --kind r") == ["robot"]
    assert complete(f"nameplate {db} resolve x -k m") == ["manager", "module"]
    assert complete(f"nameplate {db} -w de") == ["dev1", "dev2"]
    assert complete(f"nameplate {db} workspace rm d") == ["dev1", "dev2"]
    assert complete(f"nameplate {db} workspace create new --parent c") == ["core"]


def test_completion_never_creates_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "registry.db"
    assert complete(f"nameplate --db {missing} show a") == []
    assert complete("nameplate show a", env={"XDG_DATA_HOME": str(tmp_path / "data")}) == []
    assert not missing.parent.exists() and not (tmp_path / "data").exists()


def test_completion_of_a_foreign_or_damaged_file_offers_nothing(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    before = garbage.read_bytes()
    assert complete(f"nameplate --db {garbage} show a") == []
    assert garbage.read_bytes() == before
