"""Where the database lives: discovery order, URLs, permissions, network filesystems."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from nameplate import DatabaseLocationError, InvalidInputError, NetworkFilesystemError, Registry, StorageError, _paths
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


# -- paths that cannot hold a registry: each its own error and exit code, nothing created --------------


def _cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nameplate", "--db", str(path), *args], capture_output=True,
                          text=True, timeout=60)


def test_a_name_too_long_for_the_filesystem_is_a_location_error(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300 + ".db")
    with pytest.raises(DatabaseLocationError) as caught:
        Registry(path)
    assert "too long for the filesystem" in str(caught.value)
    result = _cli(path, "resolve", "lh1", "--kind", "node")
    assert result.returncode == 6 and result.stderr.count("\n") == 1 and "too long" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("special", ["fifo", "/dev/null", "directory"])
def test_a_path_that_is_not_a_regular_file_is_refused_for_what_it_is(tmp_path: Path, special: str) -> None:
    if special == "fifo":
        path = tmp_path / "pipe.db"
        os.mkfifo(path)
        expected = "named pipe"
    elif special == "directory":
        path = tmp_path / "folder.db"
        path.mkdir()
        expected = "is a directory"
    else:
        path, expected = Path(special), "character device"
    with pytest.raises(DatabaseLocationError) as caught:
        Registry(path)
    assert expected in str(caught.value) and "disk space" not in str(caught.value)
    result = _cli(path, "ls")
    assert result.returncode == 6 and expected in result.stderr and result.stderr.count("\n") == 1


def test_no_database_is_created_through_a_dangling_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "registry.db"
    link = tmp_path / "registry.db"
    link.symlink_to(target)
    with pytest.raises(DatabaseLocationError) as caught:
        Registry(link)
    assert "dangling" in str(caught.value) and str(target) in str(caught.value)
    assert not target.exists() and not target.parent.exists()
    target.parent.mkdir()
    Registry(target).close()  # once the target exists, the link is a fine way to reach it
    with Registry(link) as registry:
        assert registry.path == link and registry.resolve("lh1", "node")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk that really fills up (mounting needs root, which CI has)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_is_a_storage_error_and_loses_nothing(tiny_disk: Path) -> None:
    path = tiny_disk / "registry.db"
    filler = tiny_disk / "filler"
    created: dict[str, str] = {}
    with Registry(path) as registry:
        registry.resolve("first", "node")
        with open(filler, "wb") as handle:  # leave about 200 KiB for the registry to fill
            handle.write(b"\0" * (1024 * 1024 - 200 * 1024 - os.path.getsize(path) - os.path.getsize(f"{path}-wal")))
        with pytest.raises(StorageError) as caught:
            for index in range(10_000):
                name = f"node_{index}"
                created[name] = registry.resolve(name, "node", {"padding": "x" * 2000})
        assert "disk is full" in str(caught.value) and caught.value.exit_code == 7
        result = _cli(path, "resolve", "one_more", "--kind", "node", "--meta", f"padding={'y' * 8000}")
        assert result.returncode == 7 and "disk is full" in result.stderr and result.stderr.count("\n") == 1
        filler.unlink()  # free the disk: the same Registry carries on
        created["after"] = registry.resolve("after", "node", {"padding": "z" * 2000})
    with Registry(path) as registry:  # every acknowledged resolve is there, and the file is sound
        assert {name: registry.lookup(name, "node") for name in created} == created
        assert registry.lookup("one_more", "node") is None
        assert registry.check().ok


def test_check_reports_who_else_can_write_the_registry(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "registry.db"
    with Registry(path) as registry:
        assert not [f for f in registry.check().warnings if f.check == "permissions"]
        os.chmod(path, 0o666)
        report = registry.check()
        assert not report.ok and any(f.check == "permissions" and "every user" in f.message
                                     for f in report.problems)
        os.chmod(path, 0o600)
        os.chmod(path.parent, 0o770)
        report = registry.check()
        assert report.ok and any("writable by its group" in f.message for f in report.warnings)
        os.chmod(path.parent, 0o1777)
        report = registry.check()
        assert report.ok and any("sticky" in f.message for f in report.warnings)
        os.chmod(path.parent, 0o777)
        assert any(f.check == "permissions" for f in registry.check().problems)
        os.chmod(path.parent, 0o700)
        if os.geteuid() == 0:  # only root can give the file away
            os.chown(path, 65534, 65534)
            assert any("is owned by" in f.message for f in registry.check().warnings)
