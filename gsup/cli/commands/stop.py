"""`gsup stop`."""

from __future__ import annotations

from typing import Annotated

import typer

from gsup.cli.app import app
from gsup.cli.options import Home
from gsup.client import Client
from gsup.errors import GsupError
from gsup.text import stopping_line


@app.command()
def stop(
    now: Annotated[
        bool, typer.Option("--now", help="Do not give running jobs the grace period")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, metavar="S", help="Give up waiting after this many seconds"),
    ] = None,
    home: Home = None,
) -> None:
    """Stop the daemon gracefully (as SIGTERM does) and wait until it has ended.
    Running jobs get the grace period, then are requeued; queued jobs wait."""
    client = Client(home)
    reply = client.stop(now)
    if reply["in_flight"] and reply["grace"]:
        print(stopping_line(reply["in_flight"], reply["grace"]))
    if not client.wait_gone(timeout):
        raise GsupError(f"the daemon has not ended after {timeout:g}s; it is still stopping")
    print("stopped")
