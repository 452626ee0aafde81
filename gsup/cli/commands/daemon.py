"""`gsup daemon`."""

from __future__ import annotations

from typing import Annotated

import typer

from gsup.cli.app import app
from gsup.cli.options import Home
from gsup.config import resolve_home
from gsup.errors import GsupError


@app.command()
def daemon(
    home: Home = None,
    user_threads: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Threads of the user pool [default: 5]")
    ] = None,
    monitoring_threads: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Threads of the monitoring pool [default: 5]"),
    ] = None,
    process_threads: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Jobs the process backend runs at once [default: cores]"
        ),
    ] = None,
    grace: Annotated[
        float | None,
        typer.Option(
            min=0, metavar="S", help="Seconds running jobs get when the daemon stops [default: 10]"
        ),
    ] = None,
) -> None:
    """Run the supervisor in the foreground (under systemd, or by hand)."""
    from gsup.settings import ConfigError, load_settings
    from gsup.supervisor.daemon import serve
    from gsup.supervisor.lifetime import DaemonError, trusted_home

    try:
        settings = load_settings(
            trusted_home(resolve_home(home)),
            {"user": user_threads, "monitoring": monitoring_threads, "process": process_threads},
            grace,
        )
    except (ConfigError, DaemonError) as exc:
        raise GsupError(str(exc)) from None
    raise typer.Exit(serve(settings))
