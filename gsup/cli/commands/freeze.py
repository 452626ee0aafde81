"""`gsup freeze`."""

from __future__ import annotations

from gsup.cli.app import app
from gsup.cli.options import Home, OneQueue, pool_name
from gsup.client import Client


@app.command()
def freeze(queue: OneQueue = None, home: Home = None) -> None:
    """Start nothing new in a pool (all pools by default); jobs keep queuing."""
    _show_frozen(Client(home).freeze(pool_name(queue), True))


def _show_frozen(pools: dict[str, bool]) -> None:
    for name, frozen in pools.items():
        print(f"{name}: {'frozen' if frozen else 'running'}")
