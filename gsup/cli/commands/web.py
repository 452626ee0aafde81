"""`gsup web`: the read-only dashboard, served until interrupted."""

from __future__ import annotations

from typing import Annotated

import typer

from gsup.cli.app import app, web_settings
from gsup.cli.options import Home


@app.command()
def web(
    listen: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Where to serve it [default: [web] listen in gsup.toml, else 127.0.0.1:8765];"
            " beyond this machine only with [web] token set",
            show_default=False,
        ),
    ] = None,
    home: Home = None,
) -> None:
    """The dashboard (needs gsup[web]): pools, jobs, tasks, live events and /metrics, read
    from the journal; a process of its own, which the daemon does not need."""
    from gsup.serving import serve
    from gsup.web.app import Dashboard

    settings = web_settings(home)
    serve(Dashboard(home), listen or settings.listen, settings.token, "dashboard")
