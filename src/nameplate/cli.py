"""The ``nameplate`` command: thin click commands over the Registry (one call and formatting each)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .errors import NameplateError
from .registry import Registry


class _Settings:
    def __init__(self, db: str | None, workspace: str | None, as_json: bool) -> None:
        self.db = db
        self.workspace = workspace
        self.as_json = as_json

    def open(self) -> Registry:
        return Registry(self.db)


def _fail_cleanly(command: Callable[..., Any]) -> Callable[..., Any]:
    """Library errors become one line on stderr and the error class's exit code; no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except NameplateError as error:
            click.echo(f"nameplate: error: {error}", err=True)
            sys.exit(error.exit_code)

    return wrapper


def _emit(settings: _Settings, data: Any, human: Callable[[], None]) -> None:
    if settings.as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nameplate")
@click.option("--db", metavar="PATH", envvar=None, help="Database file (default: discovery, see `nameplate path`).")
@click.option("--workspace", "-w", metavar="NAME", help="Workspace to act in (default: NAMEPLATE_WORKSPACE or core).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def main(ctx: click.Context, db: str | None, workspace: str | None, as_json: bool) -> None:
    """nameplate: an embedded registry of names, ids, leases and definitions for one host."""
    ctx.obj = _Settings(db, workspace, as_json)


@main.command()
@click.pass_obj
@_fail_cleanly
def path(settings: _Settings) -> None:
    """Show which database file is used and why."""
    from ._paths import locate

    location = locate(settings.db)
    _emit(settings, {"path": str(location), "source": location.source, "reason": location.reason},
          lambda: click.echo(f"{location}\n  ({location.reason})"))


@main.command()
@click.argument("name")
@click.option("--kind", "-k", required=True, help="Kind of the component (node, module, step, ...).")
@click.option("--meta", "-m", "meta", multiple=True, metavar="KEY=VALUE",
              help="Metadata to store (repeatable; VALUE parsed as JSON when it is valid JSON).")
@click.pass_obj
@_fail_cleanly
def resolve(settings: _Settings, name: str, kind: str, meta: tuple[str, ...]) -> None:
    """Print the id of NAME, creating the entry if it does not exist."""
    metadata = _parse_pairs(meta)
    with settings.open() as registry:
        entry_id = registry.resolve(name, kind, metadata or None, workspace=settings.workspace)
    _emit(settings, {"name": name, "kind": kind, "id": entry_id}, lambda: click.echo(entry_id))


@main.command()
@click.argument("name")
@click.option("--kind", "-k", help="Kind, needed when NAME exists under several kinds.")
@click.pass_obj
@_fail_cleanly
def lookup(settings: _Settings, name: str, kind: str | None) -> None:
    """Print the id of NAME without creating anything (exit 3 if absent)."""
    with settings.open() as registry:
        entry_id = registry.lookup(name, kind, workspace=settings.workspace)
    if entry_id is None:
        from .errors import EntryNotFoundError

        raise EntryNotFoundError(f"no entry {name!r}" + (f" of kind {kind}" if kind else ""), name=name)
    _emit(settings, {"name": name, "kind": kind, "id": entry_id}, lambda: click.echo(entry_id))


def _parse_pairs(pairs: tuple[str, ...]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        try:
            result[key] = json.loads(raw)
        except json.JSONDecodeError:
            result[key] = raw
    return result
