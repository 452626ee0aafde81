"""`gsup metrics`: the daemon's metrics in Prometheus' text format, once or served."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gsup.cli.app import app, web_settings
from gsup.cli.options import Home


@app.command()
def metrics(
    listen: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Serve them at http://HOST:PORT/metrics until interrupted (beyond this"
            " machine only with [web] token set)",
        ),
    ] = None,
    home: Home = None,
) -> None:
    """The daemon's metrics for Prometheus (needs gsup[metrics]); without --listen,
    printed once."""
    from gsup.metrics import registry

    found = registry(home)
    if listen is None:
        from prometheus_client import generate_latest

        sys.stdout.write(generate_latest(found).decode())
        return
    from prometheus_client import make_wsgi_app

    from gsup.serving import serve

    serve(make_wsgi_app(found), listen, web_settings(home).token, "metrics", "/metrics")
