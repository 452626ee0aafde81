"""The `gsup` commands but `add`: parse, call the client or read the journal, render.

Query commands import peewee and rich inside their own functions; `add` has a light
parser of its own (add_command.py), and `gsup.main` routes to it before typer loads.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from gsup.client import Client, GsupError
from gsup.config import POOL_NAMES, Paths, resolve_home

app = typer.Typer(
    name="gsup",
    help="A job supervisor: bounded worker pools, a SQLite journal that never forgets a job.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

PoolName = StrEnum("PoolName", {name: name for name in POOL_NAMES})  # type: ignore[misc]

Home = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="GSUP_HOME",
        show_envvar=True,
        help="State dir [default: $XDG_STATE_HOME/gsup]",
        show_default=False,
    ),
]
QueueOption = Annotated[PoolName | None, typer.Option("--queue", "-q", help="One queue only")]


def _paths(home: Path | None) -> Paths:
    return Paths(resolve_home(home))


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _console() -> Any:
    from rich.console import Console

    return Console()


# --- the daemon ---------------------------------------------------------------------------


@app.command()
def daemon(
    home: Home = None,
    user_threads: Annotated[
        int | None, typer.Option(min=1, help="Threads of the user pool [default: 5]")
    ] = None,
    monitoring_threads: Annotated[
        int | None, typer.Option(min=1, help="Threads of the monitoring pool [default: 5]")
    ] = None,
    grace: Annotated[
        float | None,
        typer.Option(min=0, help="Seconds running jobs get when the daemon stops [default: 10]"),
    ] = None,
) -> None:
    """Run the supervisor in the foreground (under systemd, or by hand)."""
    from gsup.config import ConfigError, load_settings
    from gsup.supervisor.daemon import serve

    try:
        settings = load_settings(
            resolve_home(home),
            {"user": user_threads, "monitoring": monitoring_threads},
            grace,
        )
    except ConfigError as exc:
        raise GsupError(str(exc)) from None
    raise typer.Exit(serve(settings))


@app.command()
def recover(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the decisions only")] = False,
    home: Home = None,
) -> None:
    """Show what the next daemon start will decide for jobs left unfinished."""
    from gsup import recovery
    from gsup.client import daemon_is_up
    from gsup.config import ConfigError, load_settings
    from gsup.fast_cli import read_journal
    from gsup.supervisor.daemon import local_executors

    paths = _paths(home)
    if not dry_run:
        raise GsupError("recovery runs when the daemon starts; --dry-run shows what it will do")
    if daemon_is_up(paths):
        raise GsupError(f"a daemon is running for {paths.home}; it recovered when it started")
    try:
        executors = local_executors(load_settings(paths.home))
    except ConfigError as exc:
        raise GsupError(str(exc)) from None
    with read_journal(paths.home) as conn:
        print("\n".join(recovery.plan(conn, executors).lines()))


# --- the commands on hot paths ---------------------------------------------------------------


def _fast(name: str, summary: str) -> None:
    """List a command of fast_cli.py in `gsup --help`; gsup.main runs it without typer."""

    @app.command(
        name=name,
        help=summary,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,
    )
    def command(ctx: typer.Context) -> None:
        from gsup.fast_cli import run

        raise typer.Exit(run(name, ctx.args))


_fast("add", "Add a job; prints its id once the journal holds it.")


# --- the queues ------------------------------------------------------------------------------


_fast("queues", "Show each pool's workers (Name / Command / Timeout) and pending queue.")


@app.command()
def freeze(queue: QueueOption = None, home: Home = None) -> None:
    """Start nothing new in a pool (all pools by default); jobs keep queuing."""
    _show_frozen(Client(home).freeze(_pool(queue), True))


@app.command()
def unfreeze(queue: QueueOption = None, home: Home = None) -> None:
    """Let a frozen pool (all pools by default) start jobs again."""
    _show_frozen(Client(home).freeze(_pool(queue), False))


def _pool(queue: Any) -> str | None:
    return None if queue is None else queue.value


def _show_frozen(pools: dict[str, bool]) -> None:
    for name, frozen in pools.items():
        print(f"{name}: {'frozen' if frozen else 'running'}")


@app.command()
def purge(
    queue: QueueOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask")] = False,
    home: Home = None,
) -> None:
    """Cancel every pending job (of one queue, or of all)."""
    client = Client(home)
    client.ping()  # fail before asking if there is no daemon
    which = f"the {queue.value} queue" if queue else "all queues"
    if not yes:
        print(f"Cancel every pending job of {which}? [y/N] ", end="", file=sys.stderr, flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise GsupError("not confirmed; nothing was cancelled (--yes skips the question)")
    purged = client.purge(_pool(queue))
    recalled = f"; asked {purged['recalled']} back from the pools" if purged["recalled"] else ""
    print(f"cancelled {purged['cancelled']} pending jobs{recalled}")


# --- jobs -------------------------------------------------------------------------------------


_fast("jobs", "List jobs, newest first.")


def _job_ids(jobs: list[int]) -> list[int]:
    from gsup.protocol import MAX_JOB_ID

    for job in jobs:
        if not 0 < job <= MAX_JOB_ID:
            raise GsupError(f"no job {job}")
    return jobs


def _details(job: int, home: Path | None) -> dict[str, Any]:
    from gsup.fast_cli import read_journal
    from gsup.journal import queries

    _job_ids([job])
    with read_journal(home) as conn:
        found = queries.job_details(conn, job)
    if found is None:
        raise GsupError(f"no job {job}")
    return found


@app.command()
def show(
    job: Annotated[int, typer.Argument(help="Job id")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
    home: Home = None,
) -> None:
    """Everything about one job: fields, attempts, result, error and traceback."""
    found = _details(job, home)
    if as_json:
        _print_json(found)
    else:
        from gsup.render import job_view

        _console().print(job_view(found))


@app.command()
def logs(job: Annotated[int, typer.Argument(help="Job id")], home: Home = None) -> None:
    """What a job printed: its stdout, then its stderr (to stderr)."""
    _details(job, home)
    import shutil

    paths = _paths(home)
    for stream, sink in (("out", sys.stdout), ("err", sys.stderr)):
        path = paths.job_output(job, stream)
        if path.exists():
            with open(path, "rb") as output:
                shutil.copyfileobj(output, sink.buffer)
            sink.flush()


@app.command()
def cancel(jobs: Annotated[list[int], typer.Argument(help="Job ids")], home: Home = None) -> None:
    """Cancel jobs: a queued job is cancelled, a running one stopped."""
    client = Client(home)
    for job in _job_ids(jobs):
        reply = client.cancel(job)
        if reply.get("stopping"):  # its executor holds it: it ends once stopped
            print(f"{job}: {'stopping' if reply['state'] == 'running' else 'cancelling'}")
        else:
            print(f"{job}: {reply['state']}")


@app.command()
def retry(jobs: Annotated[list[int], typer.Argument(help="Job ids")], home: Home = None) -> None:
    """Queue jobs that failed, timed out, were lost or cancelled, again."""
    client = Client(home)
    for job in _job_ids(jobs):
        print(f"{job}: {client.retry(job)['state']}")


@app.command()
def wait(
    jobs: Annotated[list[int], typer.Argument(help="Job ids")],
    timeout: Annotated[
        float | None, typer.Option(min=0, help="Give up after this many seconds")
    ] = None,
    home: Home = None,
) -> None:
    """Block until the jobs end; exit 0 only if all are done."""
    try:
        states = Client(home).wait(_job_ids(jobs), timeout)
    except TimeoutError:
        raise GsupError(f"timed out after {timeout:g}s") from None
    for job in jobs:
        print(f"{job}: {states[job]}")
    if any(state != "done" for state in states.values()):
        raise typer.Exit(1)


def main() -> None:
    from typer.exceptions import TyperException

    if len(sys.argv) == 1:
        sys.argv.append("--help")
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:  # a usage error: one line, not a usage block
        print(
            f"gsup: error: {exc.format_message()} (see: gsup {_command_name()}--help)",
            file=sys.stderr,
        )
        sys.exit(2)
    except (typer.Abort, EOFError):
        sys.exit(1)
    except GsupError as exc:
        print(f"gsup: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        os._exit(1)  # `gsup jobs | head`: the reader went away
    sys.exit(code if isinstance(code, int) else 0)


def _command_name() -> str:
    """The command of the failed invocation, if it names one, for the help hint."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    words = [word for word in sys.argv[1:2] if word in commands]
    return f"{words[0]} " if words else ""


@app.command()
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than", help="Age of the jobs to delete: 30s, 10m, 12h, 7d", show_default=False
        ),
    ],
    state: Annotated[
        str | None, typer.Option("--state", "-s", help="Only jobs that ended in this state")
    ] = None,
    home: Home = None,
) -> None:
    """Delete ended jobs older than an age, with their history, result and logs."""
    from gsup.retention import PruneError, check_state, parse_duration
    from gsup.retention import prune as prune_jobs

    try:
        seconds = parse_duration(older_than)
        check_state(state)
    except ValueError as exc:
        option = "--older-than" if "duration" in str(exc) or "age" in str(exc) else "--state"
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None
    try:
        print(prune_jobs(resolve_home(home), seconds, state).line())
    except PruneError as exc:
        raise GsupError(str(exc)) from None
