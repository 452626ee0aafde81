"""`gsup unfreeze`."""

from __future__ import annotations

from gsup.cli.app import app
from gsup.cli.commands.freeze import _show_frozen
from gsup.cli.options import Home, OneQueue, pool_name
from gsup.client import Client


@app.command()
def unfreeze(queue: OneQueue = None, home: Home = None) -> None:
    """Let a frozen pool (all pools by default) start jobs again."""
    _show_frozen(Client(home).freeze(pool_name(queue), False))
