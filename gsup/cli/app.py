"""The typer app every command registers on, and the helpers they share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from gsup.config import MAX_JOB_ID
from gsup.errors import DaemonNotRunning, GsupError

if TYPE_CHECKING:
    from gsup.client import Client
    from gsup.settings import WebSettings

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}  # on every command and group

app = typer.Typer(
    name="gsup",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)


class UsageError(GsupError):
    """A command line typer took but gsup refuses (no TARGET, a misplaced --cmd, a value
    that does not read as its option's): exit 2 with one line, as typer's own."""


GROUPS: dict[str, typer.Typer] = {}  # the command groups, by name


def command_group(name: str, help: str) -> typer.Typer:
    """`gsup NAME SUBCOMMAND`: a group of subcommands, with -h as --help."""
    group = typer.Typer(help=help, context_settings=HELP_OPTIONS)
    app.add_typer(group, name=name)
    GROUPS[name] = group
    return group


def keep_only(group: str, subcommand: str) -> None:
    """Of a group's subcommands, keep the one a command line names (if it names one):
    typer then builds one command, not all of them (~1 ms each)."""
    found = GROUPS.get(group)
    if found is None:
        return
    named = [c for c in found.registered_commands
             if (c.name or c.callback.__name__.replace("_", "-")) == subcommand]  # fmt: skip
    if named:
        found.registered_commands = named


def job_id(text: str, what: str = "job") -> int:
    """A job's (or a task's) id from the command line; one line naming it if it is none."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_JOB_ID:
        raise UsageError(f"{text!r} is not a {what} id (ids are whole numbers from 1)")
    return int(text)


def each_job(jobs: list[str], act: Callable[[Client, int], str], home: Path | None) -> None:
    """`act` on each job in turn, printing `ID: what became of it`; a job it cannot be
    done to gets one line on stderr and the others are still done (then exit 1)."""
    from gsup.client import Client

    ids = [job_id(job) for job in jobs]
    client = Client(home)
    failed = False
    for job in ids:
        try:
            print(f"{job}: {act(client, job)}", flush=True)
        except DaemonNotRunning:
            raise
        except GsupError as exc:
            print(f"gsup: error: {exc}", file=sys.stderr, flush=True)
            failed = True
    if failed:
        raise typer.Exit(1)


def print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, default=str))


def job_details(job: int, home: Path | None) -> dict[str, Any]:
    from gsup.journal import queries

    with queries.read_journal(home) as conn:
        found = queries.job_details(conn, job)
    if found is None:
        raise GsupError(f"no job {job}")
    return found


def web_settings(home: Path | None) -> WebSettings:
    """The [web] settings of the state dir (`gsup web`, `gsup metrics --listen`)."""
    from gsup.config import resolve_home
    from gsup.settings import ConfigError, load_settings

    try:
        return load_settings(resolve_home(home)).web
    except ConfigError as exc:
        raise GsupError(str(exc)) from None


def watch_or_json(watch: bool, as_json: bool) -> None:
    if watch and as_json:
        raise UsageError("--watch draws on a terminal and --json prints once: give one of them")
