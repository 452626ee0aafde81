"""`gsup recover`."""

from __future__ import annotations

from typing import Annotated

import typer

from gsup.cli.app import app
from gsup.cli.options import Home
from gsup.config import Paths, resolve_home
from gsup.errors import GsupError
from gsup.journal.queries import read_journal


@app.command()
def recover(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the decisions only")] = False,
    home: Home = None,
) -> None:
    """Show what the next daemon start will decide for jobs left unfinished."""
    from gsup import recovery
    from gsup.client import daemon_is_up
    from gsup.settings import ConfigError, load_settings
    from gsup.supervisor.daemon import make_executors

    paths = Paths(resolve_home(home))
    if not dry_run:
        raise GsupError("recovery runs when the daemon starts; --dry-run shows what it will do")
    if daemon_is_up(paths):
        raise GsupError(f"a daemon is running for {paths.home}; it recovered when it started")
    try:
        executors = make_executors(load_settings(paths.home))
    except ConfigError as exc:
        raise GsupError(str(exc)) from None
    with read_journal(paths.home) as conn:
        print("\n".join(recovery.plan(conn, executors).lines()))
