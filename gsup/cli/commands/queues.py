"""`gsup queues`."""

from __future__ import annotations

import sqlite3

from gsup.cli.app import app, print_json, watch_or_json
from gsup.cli.options import Home, Json, Watch


@app.command()
def queues(as_json: Json = False, watch: Watch = False, home: Home = None) -> None:
    """Show each pool's workers (Name / Command / Timeout) and pending queue."""
    from dataclasses import asdict

    from gsup.client import daemon_is_up
    from gsup.config import Paths, resolve_home
    from gsup.journal import queries
    from gsup.journal.queries import read_journal

    watch_or_json(watch, as_json)
    paths = Paths(resolve_home(home))
    with read_journal(home) as conn:
        if watch:
            from gsup.cli.live import watch as live

            live(home, lambda: _view(conn, daemon_is_up(paths)))
            return
        up = daemon_is_up(paths)
        if as_json:
            pools, slurm = queries.queues_snapshot(conn), queries.slurm_snapshot(conn)
            print_json({"daemon": "running" if up else "not running",
                        "pools": [asdict(pool) for pool in pools],
                        "slurm": asdict(slurm)})  # fmt: skip
        else:
            print(_view(conn, up))


def _view(conn: sqlite3.Connection, up: bool) -> str:
    from gsup.journal import queries
    from gsup.render import Style, queues_view, slurm_view

    style = Style()
    pools, slurm = queries.queues_snapshot(conn), queries.slurm_snapshot(conn)
    return "\n".join(queues_view(pools, up, style) + slurm_view(slurm, style))
