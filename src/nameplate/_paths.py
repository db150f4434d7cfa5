"""Where the database lives, and why there.

First match wins: an explicit path or URL, then ``NAMEPLATE_DB``, then the nearest ``.nameplate/``
directory walking up from the current directory, then the user data directory from platformdirs.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import platformdirs
import psutil

from .errors import DatabaseLocationError, InvalidInputError, NetworkFilesystemError, StorageError

ENV_DB = "NAMEPLATE_DB"
PROJECT_DIR = ".nameplate"
DB_FILENAME = "registry.db"

# SQLite's WAL index lives in shared memory, which does not work across hosts: these are refused.
_NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb", "smb2", "smbfs", "smb3", "afs", "ncpfs", "9p", "ceph",
     "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "davfs", "fuse.sshfs", "sshfs", "fuse.s3fs",
     "fuse.rclone", "beegfs", "ocfs2", "gfs2"}
)


@dataclass(frozen=True, slots=True)
class Location:
    """Where a registry's database is, and which rule chose it.

    ``source`` is one of ``"explicit"``, ``"env"``, ``"project"`` or ``"user"``; ``reason`` says it in
    words, e.g. ``"found .nameplate/ in /home/ada/lab (nearest upward from /home/ada/lab/run)"``.
    ``url`` is set for server databases (PostgreSQL), where ``path`` is ``None``.
    """

    path: Path | None
    source: str
    reason: str
    url: str | None = None

    def __str__(self) -> str:
        if self.path is None:
            return redacted(self.url or "")  # a password never reaches a message, a log or `nameplate path`
        return str(self.path)

    def __repr__(self) -> str:
        return (f"Location(path={self.path!r}, source={self.source!r}, reason={self.reason!r}, "
                f"url={None if self.url is None else redacted(self.url)!r})")


def locate(explicit: str | os.PathLike[str] | None = None, *, cwd: Path | None = None) -> Location:
    """Decide which database to open, without touching the filesystem beyond reading it."""
    if explicit is not None:
        return _from_spec(os.fspath(explicit), "explicit", "given explicitly")
    env = os.environ.get(ENV_DB)
    if env:
        return _from_spec(env, "env", f"{ENV_DB} is set")
    start = (cwd or Path.cwd()).resolve()
    for directory in (start, *start.parents):
        candidate = directory / PROJECT_DIR
        if candidate.is_dir():
            return Location(candidate / DB_FILENAME, "project",
                            f"found {PROJECT_DIR}/ in {directory} (nearest upward from {start})")
    data_dir = Path(platformdirs.user_data_dir("nameplate", appauthor=False))
    return Location(data_dir / DB_FILENAME, "user",
                    f"no {ENV_DB} and no {PROJECT_DIR}/ above {start}: the user data directory")


def _from_spec(spec: str, source: str, why: str) -> Location:
    if "://" not in spec:
        return Location(_absolute(spec), source, why)
    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        return Location(None, source, why, url=spec)
    if scheme != "sqlite":
        raise InvalidInputError(
            f"unsupported database URL scheme {parts.scheme!r} in {redacted(spec)!r}: this version stores "
            "registries in SQLite files or PostgreSQL; use a file path, sqlite:///path/to/registry.db or "
            "postgresql://user@host:5432/database",
            spec=redacted(spec))
    # sqlite:///relative.db and sqlite:////abs.db as SQLAlchemy spells them; sqlite://x.db (two
    # slashes) would be an in-memory database in playhouse.db_url, silently losing every write.
    if parts.netloc:
        raise InvalidInputError(
            f"{spec!r} has a host part; write sqlite:///relative/path.db or sqlite:////absolute/path.db",
            spec=spec)
    raw = unquote(parts.path)
    if not raw or raw == "/" or raw.endswith(":memory:"):
        raise InvalidInputError(
            f"{spec!r} names no file: nameplate is shared between processes, so it needs a file path",
            spec=spec)
    return Location(_absolute(raw[1:]), source, why)


def _absolute(spec: str) -> Path:
    # Absolute, but the last component is not resolved: a symlink there must stay visible, so that
    # prepare() can refuse one that dangles instead of creating a database where it points.
    return Path(os.path.abspath(Path(spec).expanduser()))


def prepare(location: Location) -> None:
    """Create the database's directory (0700) and file (0600) if missing; refuse network filesystems,
    dangling symlinks and paths that are not regular files. Raises :class:`DatabaseLocationError`
    (or :class:`StorageError` when the disk is full) and never a bare ``OSError``."""
    assert location.path is not None
    path = location.path
    try:
        _make_private_dirs(path.parent)
        _refuse_network_filesystem(path.parent)
        _refuse_unusable(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            _refuse_unusable(path)  # it appeared meanwhile: judge it as any existing path
            return
        os.close(fd)
    except DatabaseLocationError:
        raise  # ours (an OSError subclass too): already specific
    except OSError as error:
        raise location_error(error, path) from None


def _refuse_unusable(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise DatabaseLocationError(
                f"{path} is a symbolic link to {target}, which does not exist; nameplate does not create a "
                "database through a dangling link (create the target, or point nameplate at a real path)",
                path=str(path), target=target) from None
    if stat.S_ISDIR(info.st_mode):
        raise DatabaseLocationError(f"{path} is a directory, not a database file; point nameplate at a file",
                                    path=str(path))
    if not stat.S_ISREG(info.st_mode):
        what = ("a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode) else "a character device"
                if stat.S_ISCHR(info.st_mode) else "a block device" if stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise DatabaseLocationError(f"{path} is {what}; a registry lives in a regular file (--db or {ENV_DB})",
                                    path=str(path))


def location_error(error: OSError, path: Path) -> DatabaseLocationError | StorageError:
    """A specific, actionable error for an ``OSError`` met while preparing ``path``."""
    where = error.filename or path
    if error.errno == errno.ENAMETOOLONG:
        return DatabaseLocationError(f"{where}: the name is too long for the filesystem (at most "
                                     f"{_name_max(path)} bytes per path component); choose a shorter path",
                                     path=str(path))
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"cannot create {where}: no space left on the device; free disk space and retry",
                            path=str(path))
    if error.errno in (errno.EACCES, errno.EPERM):
        return DatabaseLocationError(f"cannot create {where}: permission denied; choose a writable location "
                                     f"with --db or {ENV_DB}", path=str(path))
    if error.errno == errno.EROFS:
        return DatabaseLocationError(f"cannot create {where}: the filesystem is read-only; choose another "
                                     f"location with --db or {ENV_DB}", path=str(path))
    if error.errno == errno.ELOOP:
        return DatabaseLocationError(f"{where}: too many levels of symbolic links", path=str(path))
    if error.errno == errno.ENOTDIR:
        return DatabaseLocationError(f"{where}: a component of the path is not a directory", path=str(path))
    return DatabaseLocationError(f"cannot use {where}: {error.strerror or error}", path=str(path))


def _name_max(path: Path) -> int:
    for directory in (path.parent, *path.parents):
        try:
            return os.pathconf(directory, "PC_NAME_MAX")
        except OSError:
            continue
    return 255


def _make_private_dirs(directory: Path) -> None:
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask


def filesystem_type(directory: Path) -> str | None:
    """The filesystem type of the mount holding ``directory`` (longest mount-point prefix)."""
    best: tuple[int, str] | None = None
    target = str(directory.resolve())
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if target == mount or target.startswith(mount.rstrip("/") + "/") or mount == "/":
            if best is None or len(mount) > best[0]:
                best = (len(mount), part.fstype)
    return best[1] if best else None


def _refuse_network_filesystem(directory: Path) -> None:
    fstype = filesystem_type(directory)
    if fstype is None:
        return
    if fstype.lower() in _NETWORK_FILESYSTEMS:
        raise NetworkFilesystemError(
            f"{directory} is on a {fstype} network filesystem; SQLite's WAL mode needs shared memory on "
            "one host, so processes could corrupt the registry. Put the database on a local disk "
            f"(--db or {ENV_DB}).", path=str(directory), fstype=fstype)
    if fstype.startswith("fuse."):
        warnings.warn(f"{directory} is on a {fstype} FUSE filesystem; if it is network-backed, SQLite "
                      "WAL mode is unsafe there", RuntimeWarning, stacklevel=3)


def redacted(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) replaced by ``***``,
    for messages and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{user}:***@{host}")
    if "password=" in parts.query.lower():
        query = "&".join("password=***" if item.lower().startswith("password=") else item
                         for item in parts.query.split("&"))
        parts = parts._replace(query=query)
    return parts.geturl()
