"""`gsup purge`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gsup.cli.app import app
from gsup.cli.options import Home, OneQueue, pool_name
from gsup.client import Client
from gsup.errors import GsupError


@app.command()
def purge(
    queue: OneQueue = None,
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
    purged = client.purge(pool_name(queue))
    recalled = f"; asked {purged['recalled']} back from the pools" if purged["recalled"] else ""
    print(f"cancelled {purged['cancelled']} pending jobs{recalled}")
