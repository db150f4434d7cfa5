"""The ``nameplate`` command: each subcommand is one Registry call plus formatting.

Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 held or conflict, 5 integrity problem (a damaged
database, another application's, one too new, or problems found by ``check``), 6 the database's location
cannot be used (permissions, not a regular file, dangling symlink, name too long, network filesystem), 7
out of disk space or a disk error, 8 ``nameplate lock`` lost its lease and stopped its command, 126/127 its
command cannot be run. Library errors carry their exit code
(:attr:`NameplateError.exit_code`); the CLI prints them as one line on stderr, never a traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from . import __version__
from ._completion import complete_entry, complete_kind, complete_path, complete_workspace
from ._context import ENV_WORKSPACE
from ._export_file import open_private
from ._leasing import DEFAULT_TTL
from ._lock_command import check_runnable, open_session, run_command, take_lease
from ._paths import ENV_DB, PROJECT_DIR, locate
from ._validation import MAX_DEPTH
from .errors import (
    EntryNotFoundError,
    IntegrityProblemError,
    InvalidInputError,
    InvalidMetadataError,
    NameplateError,
    StorageError,
    TargetImportError,
)
from .registry import Registry

EXIT_CODES = """\b
Exit codes: 0 ok, 1 error, 2 usage, 3 not found, 4 held or conflict,
5 integrity problem (damaged, foreign or too new database, or problems
found by check), 6 unusable location (permissions, not a file, name
too long, network filesystem), 7 disk full or disk error, 8 lock
(campaign, semaphore) lost its lease and stopped its command, 126/127
its command cannot run (otherwise they exit with their command's code).
Shell completion: add to ~/.bashrc
  eval "$(_NAMEPLATE_COMPLETE=bash_source nameplate)"
(zsh: zsh_source in ~/.zshrc; fish: fish_source in
~/.config/fish/completions/nameplate.fish)."""


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class Settings:
    """The global options, as every command sees them."""

    def __init__(self, db: str | None, workspace: str | None, as_json: bool, timeout: float) -> None:
        self.db = db
        self.workspace = workspace
        self.as_json = as_json
        self.timeout = timeout

    def open(self, **options: Any) -> Registry:
        return Registry(self.db, timeout=self.timeout, **options)


#: The library's messages speak to Python callers ("pass kind="); on the command line the same advice
#: names the flag. Each pair is checked by a CLI test that provokes the message, so a library rewording
#: that slips past this table fails there instead of reaching users half-translated.
CLI_WORDING: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(pattern), words) for pattern, words in (
    (re.escape("pass kind= to choose one"), "pass --kind to choose one"),
    (re.escape("pass force=True to delete them all"), "pass --force to delete them all"),
    (re.escape("pass replace=True to overwrite it"), "pass --replace to overwrite it"),
    (re.escape("(operators: release(..., force=True) or `nameplate release --force`)"),
     "(operators: nameplate release --force)"),
    (re.escape("break it with release(..., force=True)"), "break it with nameplate release --force"),
    (re.escape("pass wait=seconds to wait for it"), "pass --wait SECONDS to wait for it"),
    (re.escape("retry later or pass wait="), "retry later or pass --wait SECONDS"),
    (re.escape("pass wait=seconds to wait for "), "pass --wait SECONDS to wait for "),
    (r"it there \(workspace='([^']*)'\) or hide it here with hide\(\)",
     r"it there (--workspace \1), or hide it here with the library's Registry.hide()"),
    (re.escape("read it again (get()) and retry with its new revision"),
     "read it again (nameplate show) and retry with --if-revision set to its new revision"),
))


def cli_wording(message: str) -> str:
    for library_words, cli_words in CLI_WORDING:
        message = library_words.sub(cli_words, message)
    return message


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors become one line on stderr and the error class's exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except NameplateError as error:
            fail(cli_wording(str(error)), error.exit_code)
        except OSError as error:  # files the CLI itself reads or writes (export -o, ...)
            where = f"{error.filename}: " if error.filename else ""
            fail(f"{where}{error.strerror or error}", StorageError.exit_code if error.errno in _DISK_FULL else 1)

    return wrapper


pass_settings = click.make_pass_decorator(Settings)


def fail(message: str, code: int) -> None:
    """One line on stderr, then exit with ``code``."""
    click.echo(f"nameplate: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def emit(settings: Settings, data: Any, human: Callable[[], None]) -> None:
    if settings.as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human()


def ago(when: datetime | None) -> str:
    if when is None:
        return "-"
    seconds = max(0.0, time.time() - when.timestamp())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    if not rows:
        click.echo("(none)")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def size(count: int) -> str:
    """Bytes for humans: 4096 -> '4.0 KiB'."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)$")


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration like 45s, 30m, 12h, 7d or 2w")
    value, unit = float(match.group(1)), match.group(2)
    seconds = value * {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    if seconds <= 0:
        raise click.BadParameter("the duration must be positive")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise click.BadParameter(f"{text!r} is longer than a duration can be (about 2.7 million years)") from None


def parse_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
        except RecursionError:  # too deep for the JSON decoder: the library's own refusal, in its words
            raise InvalidMetadataError(f"metadata nests deeper than {MAX_DEPTH} levels (at metadata.{key}); "
                                       "flatten it", path=f"metadata.{key}", limit=MAX_DEPTH) from None
    return result


def kind_option(required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--kind", "-k", required=required, shell_complete=complete_kind,
                        help="Kind of the entry (node, module, step, ...)" +
                             ("." if required else "; needed when the name exists under several kinds."))


def _set_json(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        ctx.find_object(Settings).as_json = True  # type: ignore[union-attr]


#: ``--json`` on each command as well as on the group: ``nameplate ls --json`` and ``nameplate --json ls``
#: mean the same (sqlite-utils and etcdctl take output options on the command).
json_option = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_set_json,
                           help="Machine-readable JSON output (also accepted before the command).")


def _unless_from_environment(ctx: click.Context, name: str, value: str | None) -> str | None:
    # The library reads NAMEPLATE_DB and NAMEPLATE_WORKSPACE itself, and `nameplate path` reports
    # which of them chose the file; click reading them too would make every value look explicit.
    if ctx.get_parameter_source(name) is ParameterSource.ENVIRONMENT:
        return None
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, prog_name="nameplate")
@click.option("--db", metavar="PATH", envvar=ENV_DB, show_envvar=True, shell_complete=complete_path,
              help="Database file (default: discovery; see `nameplate path`).")
@click.option("--workspace", "-w", metavar="NAME", envvar=ENV_WORKSPACE, show_envvar=True,
              shell_complete=complete_workspace, help="Workspace to act in (default: core).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              metavar="SECONDS", envvar="NAMEPLATE_TIMEOUT", show_envvar=True,
              help="How long a write waits for other processes before giving up (exit 1, 'busy').")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output (also accepted after the command).")
@click.pass_context
def main(ctx: click.Context, db: str | None, workspace: str | None, timeout: float, as_json: bool) -> None:
    """nameplate: names, ids, leases and definitions shared by the processes of one host."""
    ctx.obj = Settings(_unless_from_environment(ctx, "db", db),
                       _unless_from_environment(ctx, "workspace", workspace), as_json, timeout)


# -- where ---------------------------------------------------------------------------------------------


@main.command()
@pass_settings
@handle_errors
def path(settings: Settings) -> None:
    """Show which database file is used and why."""
    location = locate(settings.db)
    emit(settings, {"path": str(location), "source": location.source, "reason": location.reason},
         lambda: click.echo(f"{location}\n  ({location.reason})"))


@main.command()
@pass_settings
@handle_errors
def init(settings: Settings) -> None:
    """Create .nameplate/ in the current directory: processes below it share its registry."""
    directory = Path.cwd() / PROJECT_DIR
    existed = directory.exists()
    with Registry(directory / "registry.db") as registry:
        location = registry.path
    emit(settings, {"path": str(location), "created": not existed},
         lambda: click.echo(f"{'using existing' if existed else 'created'} {location}"))


# -- entries -------------------------------------------------------------------------------------------


def entry_rows(entries: Iterable[Any]) -> list[list[Any]]:
    return [[e.kind, e.name, e.id, e.workspace, ",".join(sorted(e.capabilities)), ago(e.last_seen_at)]
            for e in entries]


@main.command("ls")
@kind_option()
@click.option("--capability", "-c", "capabilities", multiple=True, help="Only entries offering this (repeatable).")
@click.option("--stale", metavar="DURATION", help="Only entries not seen for this long (e.g. 7d).")
@click.option("--meta", "-m", "meta", multiple=True, metavar="KEY=VALUE",
              help="Only entries whose metadata has KEY with this value (repeatable; JSON when valid JSON; "
                   "needs --kind).")
@click.option("--prefix", metavar="TEXT", help="Only names starting with TEXT.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="At most N entries; when more follow, stderr says which --after gives the next page.")
@click.option("--after", metavar="[KIND:]NAME",
              help="Start after this entry (the previous page's last; KIND:NAME without --kind).")
@pass_settings
@handle_errors
def list_entries(settings: Settings, kind: str | None, capabilities: tuple[str, ...], stale: str | None,
                 meta: tuple[str, ...], prefix: str | None, limit: int | None, after: str | None) -> None:
    """List the entries visible in the workspace (by kind, then name)."""
    cutoff = None if stale is None else time.time() - parse_duration(stale).total_seconds()
    metadata = parse_pairs(meta)
    if metadata and kind is None:
        raise click.UsageError("--meta needs --kind")
    paged = prefix is not None or limit is not None or after is not None
    if paged and (capabilities or metadata or stale):
        raise click.UsageError("--prefix, --limit and --after page the plain listing; they do not combine with "
                               "--capability, --meta or --stale")
    start: str | tuple[str, str] | None = after
    if after is not None and kind is None:
        after_kind, sep, after_name = after.partition(":")
        if not sep:
            raise click.BadParameter("without --kind, give KIND:NAME (as the previous page printed it)",
                                     param_hint="--after")
        start = (after_kind, after_name)
    with settings.open() as registry:
        if paged:
            entries = registry.list(kind, workspace=settings.workspace, prefix=prefix, limit=limit, after=start)
        elif (capabilities or metadata) and kind:
            entries = registry.find(kind, capabilities, metadata=metadata or None, workspace=settings.workspace)
        else:
            entries = [e for e in registry.list(kind, workspace=settings.workspace)
                       if set(capabilities) <= e.capabilities]
    if cutoff is not None:
        entries = [e for e in entries if e.last_seen_at.timestamp() < cutoff]
    emit(settings, [e.to_dict() for e in entries],
         lambda: table(["kind", "name", "id", "workspace", "capabilities", "last seen"], entry_rows(entries)))
    if limit is not None and len(entries) == limit:
        last = entries[-1]
        click.echo(f"more may follow: --after {last.name if kind else f'{last.kind}:{last.name}'}", err=True)


@main.command()
@click.argument("name", shell_complete=complete_entry)
@kind_option()
@pass_settings
@handle_errors
def show(settings: Settings, name: str, kind: str | None) -> None:
    """Show one entry in full."""
    with settings.open() as registry:
        entry = registry.require(name, kind, workspace=settings.workspace)
        failure = registry.load_error(entry.name, entry.kind, workspace=settings.workspace)

    def human() -> None:
        for label, value in (("id", entry.id), ("name", entry.name), ("kind", entry.kind),
                             ("workspace", entry.workspace), ("target", entry.target or "-"),
                             ("load error", "-" if failure is None else
                              f"{failure} (pid {failure.pid} on {failure.hostname}, {ago(failure.at)})"),
                             ("capabilities", ", ".join(sorted(entry.capabilities)) or "-"),
                             ("created", f"{entry.created_at.isoformat()} ({ago(entry.created_at)})"),
                             ("updated", f"{entry.updated_at.isoformat()} ({ago(entry.updated_at)})"),
                             ("last seen", f"{entry.last_seen_at.isoformat()} ({ago(entry.last_seen_at)})"),
                             ("revision", entry.revision),
                             ("metadata", json.dumps(dict(entry.metadata), sort_keys=True)),
                             ("definition", "-" if entry.definition is None
                              else json.dumps(dict(entry.definition), sort_keys=True))):
            click.echo(f"{label + ':':<14}{value}")

    emit(settings, {**entry.to_dict(), "load_error": None if failure is None else failure.to_dict()}, human)


@main.command()
@click.argument("name", shell_complete=complete_entry)
@kind_option(required=True)
@pass_settings
@handle_errors
def explain(settings: Settings, name: str, kind: str) -> None:
    """Show how NAME resolves through the workspace layers."""
    with settings.open() as registry:
        explanation = registry.explain(name, kind, workspace=settings.workspace)
    emit(settings, explanation.to_dict(), lambda: click.echo(str(explanation)))


@main.command()
@click.argument("name", shell_complete=complete_entry)
@kind_option(required=True)
@click.option("--meta", "-m", "meta", multiple=True, metavar="KEY=VALUE",
              help="Metadata to store (repeatable; VALUE is parsed as JSON when it is valid JSON).")
@pass_settings
@handle_errors
def resolve(settings: Settings, name: str, kind: str, meta: tuple[str, ...]) -> None:
    """Print the id of NAME, creating the entry if it does not exist."""
    metadata = parse_pairs(meta)
    with settings.open() as registry:
        entry_id = registry.resolve(name, kind, metadata or None, workspace=settings.workspace)
    emit(settings, {"name": name, "kind": kind, "id": entry_id}, lambda: click.echo(entry_id))


@main.command()
@click.argument("name", shell_complete=complete_entry)
@kind_option()
@pass_settings
@handle_errors
def lookup(settings: Settings, name: str, kind: str | None) -> None:
    """Print the id of NAME without creating anything (exit 3 if absent)."""
    with settings.open() as registry:
        entry_id = registry.lookup(name, kind, workspace=settings.workspace)
    if entry_id is None:
        raise EntryNotFoundError(f"no entry {name!r}" + (f" of kind {kind}" if kind else ""), name=name)
    emit(settings, {"name": name, "kind": kind, "id": entry_id}, lambda: click.echo(entry_id))


@main.command()
@click.argument("old", shell_complete=complete_entry)
@click.argument("new")
@kind_option()
@pass_settings
@handle_errors
def rename(settings: Settings, old: str, new: str, kind: str | None) -> None:
    """Rename an entry; its id stays."""
    with settings.open() as registry:
        entry_id = registry.rename(old, new, kind, workspace=settings.workspace)
    emit(settings, {"old": old, "new": new, "id": entry_id}, lambda: click.echo(f"{old} -> {new} ({entry_id})"))


@main.command("rm")
@click.argument("name", shell_complete=complete_entry)
@kind_option()
@click.option("--if-revision", "if_revision", type=click.IntRange(min=0, max=2**63 - 1), metavar="REV",
              help="Only if the entry is still at this revision (compare-and-swap; exit 4 otherwise).")
@pass_settings
@handle_errors
def remove(settings: Settings, name: str, kind: str | None, if_revision: int | None) -> None:
    """Delete an entry (the event log keeps its history)."""
    with settings.open() as registry:
        entry = registry.delete(name, kind, workspace=settings.workspace, expected_revision=if_revision)
    emit(settings, entry.to_dict(), lambda: click.echo(f"deleted {entry.kind} {entry.name} ({entry.id})"))


# -- leases and sessions -----------------------------------------------------------------------------------


@main.command()
@pass_settings
@handle_errors
def locks(settings: Settings) -> None:
    """List the leases held right now."""
    with settings.open() as registry:
        held = registry.locks()
    emit(settings, [lease.to_dict() for lease in held],
         lambda: table(["kind", "name", "workspace", "token", "pid", "host", "label", "since"],
                       [[h.kind, h.name, h.workspace, h.token, h.pid, h.hostname, h.label, ago(h.acquired_at)]
                        for h in held]))


@main.command()
@click.argument("name", shell_complete=complete_entry)
@kind_option()
@click.option("--force", is_flag=True, help="Break a lease held by another process (logged).")
@pass_settings
@handle_errors
def release(settings: Settings, name: str, kind: str | None, force: bool) -> None:
    """Release the lease on NAME (another process's only with --force)."""
    with settings.open() as registry:
        released = registry.release(name, kind, force=force, workspace=settings.workspace)
    emit(settings, {"name": name, "released": released},
         lambda: click.echo(f"released {name}" if released else f"{name} was not leased"))


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name", shell_complete=complete_entry)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND...")
@kind_option()
@click.option("--wait", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Wait up to this long for the lease (default: fail at once, exit 4).")
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TTL, show_default=True,
              metavar="SECONDS", help="Session ttl: beats every ttl/3; a hung lock is presumed dead after it.")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True, metavar="SECONDS",
              help="On losing the lease: time between SIGTERM and SIGKILL of the command.")
@pass_settings
@handle_errors
def lock(settings: Settings, name: str, command: tuple[str, ...], kind: str | None, wait: float | None,
         ttl: float, grace: float) -> None:
    """Run COMMAND while holding the lease on NAME (like flock(1)).

    The command finds the fencing token in NAMEPLATE_FENCING_TOKEN and the entry's id in
    NAMEPLATE_ENTRY_ID. Exit: the command's own code; 4 if the lease is held (see --wait); 8 if the
    lease was lost meanwhile (the command got SIGTERM, then SIGKILL after --grace); 126/127 if the
    command cannot run. With --kind a missing entry is created. SIGINT, SIGTERM, SIGHUP and SIGQUIT are
    passed on to the command.
    """
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise click.UsageError("give the command to run after --: nameplate lock NAME -- COMMAND...")
    check_runnable(command)
    label = f"nameplate lock: {os.path.basename(command[0])}"  # the lease column names the entry
    try:
        with settings.open(ttl=ttl) as registry:
            lease = take_lease(registry, name, kind, settings.workspace, wait, label)
            code = run_command(lease, command, grace=grace)
    except KeyboardInterrupt:  # Ctrl-C while waiting for the lease: nothing was started
        fail("interrupted while waiting for the lease", 130)
    sys.exit(code)


_SESSION_COLUMNS = ["id", "pid", "host", "label", "state", "status", "last beat", "leases", "info"]


def _session_rows(found: Iterable[Any]) -> list[list[Any]]:
    return [[s.id, s.pid, s.hostname, s.label, s.state if s.alive or s.state != "live" else "unresponsive",
             s.status, ago(s.last_beat_at), ", ".join(f"{h.kind} {h.name} #{h.token}" for h in s.leases) or "-",
             json.dumps(dict(s.info), sort_keys=True)] for s in found]


#: Move the cursor home and clear the screen: a --watch refresh redraws in place, as watch(1) does.
_REDRAW = "\x1b[H\x1b[2J"


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Include ended sessions.")
@click.option("--watch", is_flag=True, help="Refresh until interrupted: redrawn in place on a terminal, "
                                            "one block (or with --json one JSON line) per refresh otherwise.")
@click.option("--interval", type=click.FloatRange(min=0.05), default=2.0, show_default=True, metavar="SECONDS",
              help="With --watch: time between refreshes.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="With --watch: stop after N refreshes.")
@pass_settings
@handle_errors
def sessions(settings: Settings, show_all: bool, watch: bool, interval: float, count: int | None) -> None:
    """List the processes registered here (live ones, judged now) and the leases they hold."""
    with settings.open() as registry:
        if not watch:
            found = registry.sessions(alive=not show_all)
            emit(settings, [s.to_dict() for s in found], lambda: table(_SESSION_COLUMNS, _session_rows(found)))
            return
        redraw = sys.stdout.isatty() and not settings.as_json
        refreshes = 0
        try:
            while True:
                found = registry.sessions(alive=not show_all)  # one short read; nothing held while sleeping
                at = datetime.now(UTC).astimezone()
                if settings.as_json:
                    click.echo(json.dumps({"at": at.isoformat(), "sessions": [s.to_dict() for s in found]},
                                          sort_keys=True))
                else:
                    if redraw:
                        click.echo(_REDRAW, nl=False)
                    click.echo(f"{at:%H:%M:%S}  {len(found)} session(s), "
                               f"{sum(len(s.leases) for s in found)} lease(s); every {interval:g} s")
                    table(_SESSION_COLUMNS, _session_rows(found))
                    if not redraw:
                        click.echo()
                refreshes += 1
                if count is not None and refreshes >= count:
                    return
                time.sleep(interval)
        except KeyboardInterrupt:
            return


@main.command()
@pass_settings
@handle_errors
def reap(settings: Settings) -> None:
    """End sessions whose process died or stopped beating, freeing their leases."""
    with settings.open() as registry:
        reaped = registry.reap()
    emit(settings, {"reaped": reaped}, lambda: click.echo(f"reaped {len(reaped)} session(s)"))


@main.command()
@click.option("--older-than", default="7d", show_default=True, help="Remove entries not seen for this long.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@pass_settings
@handle_errors
def clean(settings: Settings, older_than: str, dry_run: bool) -> None:
    """Remove entries (in every workspace) not seen for a while and not leased."""
    age = parse_duration(older_than)
    with settings.open() as registry:
        removed = registry.clean_stale(older_than=age, dry_run=dry_run)

    def human() -> None:
        table(["kind", "name", "id", "workspace", "capabilities", "last seen"], entry_rows(removed))
        entries = "entry" if len(removed) == 1 else "entries"
        click.echo(f"{'would remove' if dry_run else 'removed'} {len(removed)} {entries}")

    emit(settings, {"dry_run": dry_run, "entries": [e.to_dict() for e in removed]}, human)


# -- documents ---------------------------------------------------------------------------------------------

#: Imports, exports and cleans of more rows than this draw a progress bar (on a terminal only).
PROGRESS_THRESHOLD = 5000


def _progress_wanted(count: int) -> bool:
    return count > PROGRESS_THRESHOLD and sys.stderr.isatty()


class _ProgressBar:
    """A ``progress(done, total)`` callback drawing a bar on stderr once the total proves large."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._bar: Any = None
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if not _progress_wanted(total):
                return
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc_info)


@main.command()
@click.option("-o", "--output", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write to FILE (created 0600, replaced atomically), not stdout.")
@click.option("--format", "fmt", type=click.Choice(["nameplate", "madsci"]), default="nameplate", show_default=True,
              help="nameplate: everything, versioned; madsci: MADSci's registry.json of the workspace.")
@pass_settings
@handle_errors
def export(settings: Settings, output: str | None, fmt: str) -> None:
    """Export the registry as one point-in-time JSON document (stamped with its revision)."""
    with settings.open() as registry, _ProgressBar("exporting") as progress:
        if output is None or output == "-":
            registry.write_export(sys.stdout, fmt, workspace=settings.workspace, progress=progress)
            return
        with open_private(output) as handle:
            written = registry.write_export(handle, fmt, workspace=settings.workspace, progress=progress)
    count, revision = written["entries"], written["revision"]
    summary = {"path": output, "format": fmt, "entries": count, "revision": revision}
    at = f" at revision {revision}" if revision is not None else ""
    emit(settings, summary, lambda: click.echo(f"exported {count} entr{'y' if count == 1 else 'ies'} to {output}{at}"))


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--replace", is_flag=True, help="Make the file the registry (default: merge, keeping what exists).")
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--format", "fmt", type=click.Choice(["auto", "nameplate", "madsci"]), default="auto", show_default=True,
              help="auto recognises both by their shape.")
@pass_settings
@handle_errors
def import_(settings: Settings, file: str, replace: bool, dry_run: bool, fmt: str) -> None:
    """Import an export (or a MADSci registry.json) all-or-nothing.

    The whole file is validated before anything is written; then it is written in one transaction.
    A MADSci file goes into the workspace given with --workspace (default core).
    """
    with settings.open() as registry, _ProgressBar("validating") as progress:
        plan = registry.import_file(file, format=fmt, replace=replace, dry_run=dry_run, workspace=settings.workspace,
                                    progress=progress)

    def human() -> None:
        if dry_run:
            for label, items in (("add", plan.added), ("replace", plan.replaced), ("remove", plan.removed),
                                 ("hide", plan.tombstones_added), ("keep", plan.kept)):
                for item in items[:50]:
                    click.echo(f"  {label:<8}{item}")
                if len(items) > 50:
                    click.echo(f"  ... and {len(items) - 50} more to {label}")
        click.echo(plan.summary())

    emit(settings, plan.to_dict(), human)


# -- health --------------------------------------------------------------------------------------------------


@main.command()
@pass_settings
@handle_errors
def check(settings: Settings) -> None:
    """Check integrity, foreign keys, definitions, leases and layers (exit 5 on any problem)."""
    with settings.open() as registry:
        report = registry.check()

    def human() -> None:
        for problem in report.problems:
            click.echo(f"problem  {problem}")
        for warning in report.warnings:
            click.echo(f"warning  {warning}")
        counts = ", ".join(f"{v} {k}" for k, v in report.checked.items())
        click.echo(f"{'ok' if report.ok else 'FAILED'}: checked {counts}")
        if report.not_applicable:
            click.echo(f"not applicable on this database: {', '.join(report.not_applicable)}")

    emit(settings, report.to_dict(), human)
    if not report.ok:
        raise IntegrityProblemError(f"check found {len(report.problems)} problem(s)",
                                    problems=[str(p) for p in report.problems])


@main.command()
@pass_settings
@handle_errors
def vacuum(settings: Settings) -> None:
    """Rebuild the database file to reclaim free space."""
    with settings.open() as registry:
        result = registry.vacuum()
    emit(settings, result, lambda: click.echo(f"file {size(result['before']['file_bytes'])} -> "
                                              f"{size(result['after']['file_bytes'])}"))


@main.command()
@pass_settings
@handle_errors
def checkpoint(settings: Settings) -> None:
    """Copy the write-ahead log into the database and truncate it."""
    with settings.open() as registry:
        result = registry.checkpoint()
    if result.get("not_applicable"):
        emit(settings, result, lambda: click.echo("not applicable on this database: the server checkpoints its WAL"))
        return
    emit(settings, result, lambda: click.echo(f"WAL {size(result['wal_bytes_before'])} -> "
                                              f"{size(result['wal_bytes_after'])}" +
                                              (" (readers kept part of it busy)" if result["busy"] else "")))


@main.command()
@click.option("--status", is_flag=True, help="Only show applied and pending migrations; change nothing.")
@pass_settings
@handle_errors
def migrate(settings: Settings, status: bool) -> None:
    """Apply pending schema migrations (opening the registry does this too)."""
    applied: list[int] = []
    if status:
        state = Registry.schema_status(settings.db)
    else:
        with settings.open() as registry:
            applied = registry.migrations_applied
            state = registry.migration_status()
    data = {"current": state.current, "latest": state.latest, "applied_now": applied,
            "applied": [{"version": v, "name": n, "applied_at": datetime.fromtimestamp(a, UTC).isoformat()}
                        for v, n, a in state.applied],
            "pending": [{"version": v, "name": n} for v, n in state.pending]}

    def human() -> None:
        table(["version", "name", "applied"],
              [[v, n, ago(datetime.fromtimestamp(a, UTC))] for v, n, a in state.applied]
              + [[v, n, "pending"] for v, n in state.pending])
        click.echo(f"schema version {state.current} (latest {state.latest})"
                   + (f"; applied now: {', '.join(map(str, applied))}" if applied else ""))

    emit(settings, data, human)


_LOG_COLUMNS = ("rev", "when", "session", "action", "workspace", "kind", "name", "change")


def _log_row(event: Any) -> list[str]:
    detail = json.dumps(dict(event.detail), sort_keys=True)
    return [str(event.rev), ago(event.at), (event.session_id or "-")[-8:], event.action, event.workspace or "-",
            event.kind or "-", event.name or "-", detail if len(detail) <= 60 else detail[:57] + "..."]


@main.command()
@click.option("--since", default=0, show_default=True, type=click.IntRange(min=0, max=2**63 - 1), metavar="REV",
              help="Show revisions after this one.")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="At most this many events.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until interrupted (Ctrl-C).")
@click.option("--name", "name", metavar="NAME", help="Only events of this name (a rename: old or new name).")
@click.option("--prefix", metavar="TEXT", help="Only events of names starting with TEXT.")
@kind_option()
@click.option("--in-workspace", "in_workspace", metavar="NAME", shell_complete=complete_workspace,
              help="Only events that happened in this workspace (default: every workspace).")
@pass_settings
@handle_errors
def log(settings: Settings, since: int, limit: int | None, follow: bool, name: str | None, prefix: str | None,
        kind: str | None, in_workspace: str | None) -> None:
    """Show the audit log: revision, time, session, action, kind, name, change.

    With --json, prints a JSON list; with --json --follow, one JSON object per line.
    """
    widths = [6, 11, 8, 16, 10, 12, 20, 0]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    with settings.open() as registry:
        events = registry.changes(since, limit, name=name, prefix=prefix, kind=kind, workspace=in_workspace)
        if not follow:
            emit(settings, [e.to_dict() for e in events],
                 lambda: table(list(_LOG_COLUMNS), [_log_row(e) for e in events]))
            return
        if settings.as_json:
            for event in events:
                click.echo(json.dumps(event.to_dict(), sort_keys=True))
        else:
            click.echo(line([c.upper() for c in _LOG_COLUMNS]))
            for event in events:
                click.echo(line(_log_row(event)))
        # Not registry.revision: a commit between the read above and that one would be skipped.
        last = events[-1].rev if events else since
        try:
            for event in registry.follow(last, name=name, prefix=prefix, kind=kind, workspace=in_workspace):
                click.echo(json.dumps(event.to_dict(), sort_keys=True) if settings.as_json
                           else line(_log_row(event)))
        except KeyboardInterrupt:
            return


@main.command()
@click.option("--keep-days", required=True, type=click.FloatRange(min=0), metavar="N",
              help="Keep events of the last N days.")
@pass_settings
@handle_errors
def gc(settings: Settings, keep_days: float) -> None:
    """Prune old events and ended sessions (revisions are never reused)."""
    with settings.open() as registry:
        result = registry.gc_events(keep_days)
    emit(settings, result, lambda: click.echo(f"deleted {result['events_deleted']} events and "
                                              f"{result['sessions_deleted']} ended sessions"))


@main.command()
@pass_settings
@handle_errors
def stats(settings: Settings) -> None:
    """Counts per kind and workspace, file and WAL size, revision, schema version."""
    with settings.open() as registry:
        result = registry.stats()

    def human() -> None:
        rows = [("path", result["path"]),
                ("schema version", f"{result['schema_version']} (latest {result['latest_schema_version']})"),
                ("revision", f"{result['revision']} ({result['events']} events kept)"),
                ("entries", f"{result['entries']} (+ {result['tombstones']} tombstones)"),
                ("per kind", ", ".join(f"{k} {v}" for k, v in result["entries_per_kind"].items() if v) or "-"),
                ("per workspace", ", ".join(f"{k} {v}" for k, v in result["entries_per_workspace"].items())),
                ("kinds", result["kinds"]), ("live sessions", result["live_sessions"]), ("leases", result["leases"]),
                ("file", size(result["file_bytes"])),
                ("wal", "not applicable" if "wal_bytes" in result.get("not_applicable", ())
                 else size(result["wal_bytes"]))]
        for label, value in rows:
            click.echo(f"{label + ':':<16}{value}")

    emit(settings, result, human)


@main.command()
@pass_settings
@handle_errors
def kinds(settings: Settings) -> None:
    """List the kinds and their schemas."""
    with settings.open() as registry:
        found = registry.kinds()
    emit(settings, [k.to_dict() for k in found],
         lambda: table(["kind", "required", "optional", "pattern", "strict", "builtin", "description"],
                       [[k.name, ",".join(k.required), ",".join(k.optional), k.name_pattern or "", k.strict,
                         k.builtin, k.description] for k in found]))


# -- workspaces ------------------------------------------------------------------------------------------------


@main.group()
def workspace() -> None:
    """Manage workspaces (layers over core)."""


@workspace.command("ls")
@pass_settings
@handle_errors
def workspace_list(settings: Settings) -> None:
    """List workspaces."""
    with settings.open() as registry:
        found = registry.workspaces()
    emit(settings, [w.to_dict() for w in found],
         lambda: table(["workspace", "parent", "depth", "entries", "tombstones", "description"],
                       [[w.name, w.parent or "-", w.depth, w.entries, w.tombstones, w.description] for w in found]))


@workspace.command("tree")
@pass_settings
@handle_errors
def workspace_tree(settings: Settings) -> None:
    """Show the workspaces as a tree, with the entries and tombstones each defines."""
    with settings.open() as registry:
        found = registry.workspaces()
    by_name = {w.name: w for w in found}
    roots = [w for w in found if w.parent is None or w.parent not in by_name]

    def as_dict(info: Any) -> dict[str, Any]:
        return {"name": info.name, "entries": info.entries, "tombstones": info.tombstones,
                "description": info.description, "children": [as_dict(by_name[c]) for c in sorted(info.children)
                                                              if c in by_name]}

    def label(info: Any) -> str:
        counts = f"{info.entries} entr{'y' if info.entries == 1 else 'ies'}"
        if info.tombstones:
            counts += f", {info.tombstones} tombstone{'' if info.tombstones == 1 else 's'}"
        return f"{info.name} ({counts})" + (f"  {info.description}" if info.description else "")

    def draw(info: Any, prefix: str, last: bool, top: bool) -> None:
        click.echo(label(info) if top else f"{prefix}{'└── ' if last else '├── '}{label(info)}")
        children = [by_name[c] for c in sorted(info.children) if c in by_name]
        below = prefix if top else prefix + ("    " if last else "│   ")
        for index, child in enumerate(children):
            draw(child, below, index == len(children) - 1, False)

    def human() -> None:
        for root in roots:
            draw(root, "", True, True)

    emit(settings, [as_dict(root) for root in roots], human)


@workspace.command("create")
@click.argument("name")
@click.option("--parent", default="core", show_default=True, shell_complete=complete_workspace,
              help="The workspace it layers over.")
@click.option("--description", default="", help="What the workspace is for.")
@click.option("--exist-ok", is_flag=True, help="Succeed if it already exists over PARENT.")
@pass_settings
@handle_errors
def workspace_create(settings: Settings, name: str, parent: str, description: str, exist_ok: bool) -> None:
    """Create a workspace over PARENT."""
    with settings.open() as registry:
        before = registry.revision  # a create logs an event; an existing workspace is returned as it is
        info = registry.create_workspace(name, parent, description, exist_ok=exist_ok)
        existed = exist_ok and registry.revision == before
    done = "workspace {} already exists over {}" if existed else "created workspace {} over {}"
    emit(settings, info.to_dict(), lambda: click.echo(done.format(name, parent)))


@workspace.command("rm")
@click.argument("name", shell_complete=complete_workspace)
@click.option("--force", is_flag=True, help="Also delete its child workspaces.")
@pass_settings
@handle_errors
def workspace_remove(settings: Settings, name: str, force: bool) -> None:
    """Delete a workspace and everything defined in it."""
    with settings.open() as registry:
        deleted = registry.delete_workspace(name, force=force)
    emit(settings, {"deleted": deleted}, lambda: click.echo(f"deleted {', '.join(deleted)}"))


@workspace.command("diff")
@click.argument("a", shell_complete=complete_workspace)
@click.argument("b", shell_complete=complete_workspace)
@pass_settings
@handle_errors
def workspace_diff(settings: Settings, a: str, b: str) -> None:
    """Show what the views of workspaces A and B disagree on."""
    with settings.open() as registry:
        difference = registry.diff(a, b)

    def human() -> None:
        for entry in difference.only_in_a:
            click.echo(f"- {entry.kind} {entry.name} (only in {a}, from {entry.workspace})")
        for entry in difference.only_in_b:
            click.echo(f"+ {entry.kind} {entry.name} (only in {b}, from {entry.workspace})")
        for left, right in difference.changed:
            click.echo(f"~ {left.kind} {left.name} "
                       f"({a}: {left.workspace} {left.id}; {b}: {right.workspace} {right.id})")
        if difference.empty:
            click.echo("no differences")

    emit(settings, difference.to_dict(), human)


@workspace.command("promote")
@click.argument("name", shell_complete=complete_entry)
@kind_option()
@click.option("--replace", is_flag=True, help="Overwrite the parent's entry of the same name.")
@pass_settings
@handle_errors
def workspace_promote(settings: Settings, name: str, kind: str | None, replace: bool) -> None:
    """Move NAME from the workspace (--workspace) one layer up, keeping its id."""
    if settings.workspace is None:
        raise InvalidInputError("give the workspace to promote from: nameplate --workspace NAME workspace promote ...")
    with settings.open() as registry:
        entry = registry.promote(name, kind, workspace=settings.workspace, replace=replace)
    emit(settings, entry.to_dict(), lambda: click.echo(f"promoted {entry.kind} {entry.name} ({entry.id}) to "
                                                       f"{entry.workspace}"))


@workspace.command("conflicts")
@pass_settings
@handle_errors
def workspace_conflicts(settings: Settings) -> None:
    """List names defined differently in sibling workspaces, and shadowed entries."""
    with settings.open() as registry:
        found = registry.conflicts()
    emit(settings, [c.to_dict() for c in found],
         lambda: table(["type", "kind", "name", "workspaces"], [[c.type, c.kind, c.name, ", ".join(c.workspaces)]
                                                                for c in found]))


# -- schema ----------------------------------------------------------------------------------------------------


@main.group()
def schema() -> None:
    """Published formats (JSON Schema) of nameplate's documents."""


@schema.command("export")
def schema_export() -> None:
    """Print the JSON Schema of `nameplate export`'s document (shipped inside the package)."""
    click.echo(export_schema_text(), nl=False)


def export_schema_text() -> str:
    return resources.files("nameplate").joinpath(EXPORT_SCHEMA).read_text(encoding="utf-8")


#: The export document's JSON Schema, a file of the package (``nameplate/export.schema.json``).
EXPORT_SCHEMA = "export.schema.json"

# -- coordination, as etcd and Consul give it ---------------------------------------------------------


@main.command()
@click.argument("name", shell_complete=complete_entry)
@kind_option()
@click.option("--meta", "-m", "meta", multiple=True, required=True, metavar="KEY=VALUE",
              help="Metadata to set (repeatable; VALUE is parsed as JSON when it is valid JSON).")
@click.option("--merge", is_flag=True, help="Merge over the stored metadata instead of replacing it.")
@click.option("--if-revision", "if_revision", type=click.IntRange(min=0, max=2**63 - 1), metavar="REV",
              help="Only if the entry is still at this revision (compare-and-swap; exit 4 otherwise).")
@pass_settings
@handle_errors
def update(settings: Settings, name: str, kind: str | None, meta: tuple[str, ...], merge: bool,
           if_revision: int | None) -> None:
    """Set the metadata of an entry of this workspace; prints its new revision."""
    metadata = parse_pairs(meta)
    with settings.open() as registry:
        entry = registry.update(name, kind, metadata=metadata, merge=merge, workspace=settings.workspace,
                                expected_revision=if_revision)
    emit(settings, entry.to_dict(), lambda: click.echo(entry.revision))


@main.command()
@click.argument("name", shell_complete=complete_entry)
@kind_option(required=True)
@click.option("--since", type=click.IntRange(min=0, max=2**63 - 1), metavar="REV",
              help="Wake on a change after this revision (default: from now; a past one returns at once).")
@click.option("--timeout", "wait_timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Give up after this long (exit 1); default: wait until a change comes.")
@pass_settings
@handle_errors
def wait(settings: Settings, name: str, kind: str, since: int | None, wait_timeout: float | None) -> None:
    """Block until NAME changes as this workspace sees it, then print that event (Consul's blocking query).

    Loop on it with --since set to the printed revision to miss nothing.
    """
    with settings.open() as registry:
        try:
            event = registry.wait_for_change(name, kind, since=since, timeout=wait_timeout,
                                             workspace=settings.workspace)
        except KeyboardInterrupt:
            sys.exit(130)
    if event is None:
        fail(f"no change of {kind} {name!r} within {wait_timeout:g} s", 1)
        return
    emit(settings, event.to_dict(), lambda: click.echo("  ".join(_log_row(event))))


# -- coordination on leases: leader election and semaphores (see _election.py, _semaphore.py) --------------


def _command_after_dashes(command: tuple[str, ...], usage: str) -> tuple[str, ...]:
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise click.UsageError(f"give the command to run after --: {usage}")
    check_runnable(command)
    return command


def _leader_line(leader: Any) -> str:
    return (f"{json.dumps(leader.value, sort_keys=True)}  term {leader.term}  pid {leader.pid} on {leader.hostname}"
            f"  since {ago(leader.since)}")


@main.command()
@click.argument("name")
@click.option("--watch", is_flag=True, help="Print each new leader as it takes over (one JSON line each with "
                                            "--json), until interrupted.")
@click.option("--count", type=click.IntRange(min=1), metavar="N", help="With --watch: stop after N leaders.")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS", help="With --watch: stop after this long.")
@pass_settings
@handle_errors
def leader(settings: Settings, name: str, watch: bool, count: int | None, timeout: float | None) -> None:
    """Show who leads election NAME: its value, term (fencing token) and process. Exit 3 if nobody leads."""
    with settings.open() as registry:
        if not watch:
            current = registry.leader(name, workspace=settings.workspace)
            if current is None:
                fail(f"nobody leads election {name!r} now", EntryNotFoundError.exit_code)
                return
            emit(settings, current.to_dict(), lambda: click.echo(_leader_line(current)))
            return
        shown: list[Any] = []
        try:
            for current in registry.observe(name, workspace=settings.workspace, timeout=timeout,
                                            stop=lambda: count is not None and len(shown) >= count):
                shown.append(current)
                click.echo(json.dumps(current.to_dict(), sort_keys=True) if settings.as_json
                           else _leader_line(current))
        except KeyboardInterrupt:
            return


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("value")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND...")
@click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Give up (exit 4) if not leading by then (default: wait as long as it takes).")
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TTL, show_default=True,
              metavar="SECONDS", help="Session ttl: a hung leader is replaced after it (and the lock-delay).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True, metavar="SECONDS",
              help="On losing the leadership: time between SIGTERM and SIGKILL of the command.")
@pass_settings
@handle_errors
def campaign(settings: Settings, name: str, value: str, command: tuple[str, ...], timeout: float | None,
             ttl: float, grace: float) -> None:
    """Wait to lead election NAME with VALUE, then run COMMAND as the leader (like etcdctl elect).

    Campaigners are served in arrival order. The command finds its term (the fencing token) in
    NAMEPLATE_FENCING_TOKEN and VALUE in NAMEPLATE_LEADER_VALUE. Exit: the command's own code; 4 on
    --timeout; 8 if the leadership was lost meanwhile (the command got SIGTERM, then SIGKILL after
    --grace); the leadership ends with the command.
    """
    command = _command_after_dashes(command, "nameplate campaign NAME VALUE -- COMMAND...")
    try:
        with settings.open(ttl=ttl) as registry:
            open_session(registry, f"nameplate campaign: {os.path.basename(command[0])}")
            leadership = registry.campaign(name, value, timeout=timeout, workspace=settings.workspace)
            code = run_command(leadership.lease, command, grace=grace, extra_env={"NAMEPLATE_LEADER_VALUE": value})
    except KeyboardInterrupt:
        fail("interrupted while campaigning", 130)
    sys.exit(code)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- COMMAND...")
@click.option("--limit", "-n", type=click.IntRange(min=1), required=True, metavar="N",
              help="At most N holders at once (fixed by the first user of NAME).")
@click.option("--wait", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Wait up to this long for a slot (default: fail at once, exit 4).")
@click.option("--ttl", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TTL, show_default=True,
              metavar="SECONDS", help="Session ttl: a hung holder's slot is freed after it (and the lock-delay).")
@click.option("--grace", type=click.FloatRange(min=0), default=10.0, show_default=True, metavar="SECONDS",
              help="On losing the slot: time between SIGTERM and SIGKILL of the command.")
@pass_settings
@handle_errors
def semaphore(settings: Settings, name: str, command: tuple[str, ...], limit: int, wait: float | None, ttl: float,
              grace: float) -> None:
    """Run COMMAND holding one of the N slots of semaphore NAME: at most N such commands at once.

    The command finds its slot in NAMEPLATE_SEMAPHORE_SLOT and the slot's fencing token in
    NAMEPLATE_FENCING_TOKEN. Exit: the command's own code; 4 if no slot is free (see --wait); 8 if the
    slot was lost meanwhile (the command got SIGTERM, then SIGKILL after --grace).
    """
    command = _command_after_dashes(command, "nameplate semaphore NAME --limit N -- COMMAND...")
    try:
        with settings.open(ttl=ttl) as registry:
            open_session(registry, f"nameplate semaphore: {os.path.basename(command[0])}")
            slot = registry.semaphore(name, limit, wait, workspace=settings.workspace)
            code = run_command(slot, command, grace=grace, extra_env={"NAMEPLATE_SEMAPHORE_SLOT": slot.name})
    except KeyboardInterrupt:
        fail("interrupted while waiting for a slot", 130)
    sys.exit(code)


#: Commands whose standard output is not nameplate's: ``lock`` (and ``campaign``, ``semaphore``) pass their
#: command's output through.
WITHOUT_JSON = frozenset({"lock", "campaign", "semaphore"})


def _add_json_option(group: click.Group) -> None:
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _add_json_option(command)
        elif command.name not in WITHOUT_JSON and not any(param.name == "as_json" for param in command.params):
            json_option(command)


_add_json_option(main)


# -- plugins ---------------------------------------------------------------------------------------------------


@main.command()
@click.argument("group", default="nameplate.components")
@click.option("--kind", "-k", default="provider", show_default=True, shell_complete=complete_kind,
              help="Kind of entry points named without a 'kind:' prefix.")
@click.option("--forget-missing", is_flag=True,
              help="Delete entries discovered earlier whose distribution is gone or no longer declares them.")
@json_option
@pass_settings
@handle_errors
def discover(settings: Settings, group: str, kind: str, forget_missing: bool) -> None:
    """Register the entry points of GROUP installed in this Python environment.

    Entries discovered earlier (in this environment) whose distribution was uninstalled or no longer
    declares the entry point are listed as missing; --forget-missing deletes them.
    """
    with settings.open() as registry:
        found = registry.discover(group, kind=kind, workspace=settings.workspace, forget_missing=forget_missing)

    def human() -> None:
        table(["kind", "name", "target", "distribution", "version"],
              [[e.kind, e.name, e.target, e.metadata.get("distribution", "-"), e.metadata.get("version", "-")]
               for e in found])
        forgotten = {e.id for e in found.forgotten}
        for stale in found.missing:
            click.echo(f"{'forgot' if stale.entry.id in forgotten else 'missing'}  {stale}")
        if found.missing and not found.forgotten:
            click.echo(f"{len(found.missing)} missing; `nameplate discover --forget-missing` deletes them")

    emit(settings, found.to_dict(), human)


@main.command("load-all")
@click.argument("kind", shell_complete=complete_kind)
@json_option
@pass_settings
@handle_errors
def load_all(settings: Settings, kind: str) -> None:
    """Import the target of every KIND entry in this process; exit 1 if any fails.

    Each failure is recorded on its entry (see `nameplate show NAME`); a success clears it. The
    targets are imported in this Python environment, which may differ from your application's.
    """
    with settings.open() as registry:
        results = registry.load_all(kind, workspace=settings.workspace)
        targets = {e.name: e.target for e in registry.list(kind, workspace=settings.workspace)}
    rows = [[name, targets.get(name) or "(bound)", "ok"] for name in sorted(results.loaded)]
    rows += [[name, failure.target, str(failure)] for name, failure in sorted(results.failed.items())]
    emit(settings, results.to_dict(), lambda: table(["name", "target", "result"], sorted(rows)))
    if results.failed:
        raise TargetImportError(f"{len(results.failed)} of {len(results.failed) + len(results.loaded)} {kind} "
                                f"entries failed to load: {', '.join(sorted(results.failed))}",
                                failed=sorted(results.failed))
