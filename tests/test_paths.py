"""Where the database lives: discovery order, URLs, permissions, network filesystems."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from nameplate import InvalidInputError, NetworkFilesystemError, Registry
from nameplate import _paths
from nameplate._paths import locate


def test_explicit_path_wins_over_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMEPLATE_DB", str(tmp_path / "env.db"))
    (tmp_path / ".nameplate").mkdir()
    location = locate(tmp_path / "explicit.db", cwd=tmp_path)
    assert (location.path, location.source) == (tmp_path / "explicit.db", "explicit")


def test_env_variable_beats_project_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAMEPLATE_DB", str(tmp_path / "env.db"))
    (tmp_path / ".nameplate").mkdir()
    location = locate(cwd=tmp_path)
    assert (location.path, location.source) == (tmp_path / "env.db", "env")
    assert "NAMEPLATE_DB" in location.reason


def test_nearest_project_directory_upward(tmp_path: Path) -> None:
    outer = tmp_path / "lab"
    inner = outer / "runs" / "today"
    inner.mkdir(parents=True)
    (outer / ".nameplate").mkdir()
    location = locate(cwd=inner)
    assert location.path == outer / ".nameplate" / "registry.db"
    assert location.source == "project" and str(outer) in location.reason
    (outer / "runs" / ".nameplate").mkdir()
    assert locate(cwd=inner).path == outer / "runs" / ".nameplate" / "registry.db"


def test_user_data_directory_is_the_last_resort(tmp_path: Path) -> None:
    lonely = tmp_path / "nowhere"
    lonely.mkdir()
    location = locate(cwd=lonely)
    assert location.source == "user"
    assert location.path == tmp_path / "xdg-data" / "nameplate" / "registry.db"


def test_registry_reports_path_and_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".nameplate").mkdir()
    monkeypatch.chdir(tmp_path)
    with Registry() as registry:
        assert registry.path == tmp_path / ".nameplate" / "registry.db"
        assert registry.location.source == "project"
        assert "found .nameplate/" in registry.location.reason


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:////abs/dir/x.db", Path("/abs/dir/x.db")),
    ("sqlite:///rel/x.db", Path("rel/x.db").resolve()),
])
def test_sqlite_urls(url: str, expected: Path) -> None:
    assert locate(url).path == expected


@pytest.mark.parametrize("url", ["sqlite://x.db", "sqlite:///:memory:", "sqlite://", "mysql://h/db"])
def test_urls_that_would_lose_data_or_are_unsupported_are_refused(url: str) -> None:
    with pytest.raises(InvalidInputError):
        locate(url)


def test_created_file_and_directories_are_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "registry.db"
    old_umask = os.umask(0o022)
    try:
        Registry(path).close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700


def test_existing_directory_permissions_are_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    Registry(shared / "registry.db").close()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_network_filesystems_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mounts = [SimpleNamespace(mountpoint="/", fstype="ext4"),
                   SimpleNamespace(mountpoint=str(tmp_path), fstype="nfs4")]
    monkeypatch.setattr(_paths.psutil, "disk_partitions", lambda all=True: fake_mounts)
    with pytest.raises(NetworkFilesystemError) as caught:
        Registry(tmp_path / "registry.db")
    assert "nfs4" in str(caught.value)
    assert not (tmp_path / "registry.db").exists()


def test_the_real_temp_directory_is_local() -> None:
    assert _paths.filesystem_type(Path("/tmp")) not in _paths._NETWORK_FILESYSTEMS
