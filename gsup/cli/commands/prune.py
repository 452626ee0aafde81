"""`gsup prune`."""

from __future__ import annotations

from typing import Annotated

import typer

from gsup.cli.app import app
from gsup.cli.options import Home
from gsup.config import resolve_home
from gsup.errors import GsupError


@app.command()
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="AGE",
            show_default=False,
            help="Age of the jobs to delete: 30s, 10m, 12h, 7d",
        ),
    ],
    state: Annotated[
        str | None,
        typer.Option("--state", "-s", metavar="STATE", help="Only jobs that ended in this state"),
    ] = None,
    home: Home = None,
) -> None:
    """Delete ended jobs older than an age, with their history, result and logs."""  # fmt: skip
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
