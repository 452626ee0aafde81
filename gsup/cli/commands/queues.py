"""`gsup queues`."""

from __future__ import annotations

from gsup.cli.app import app, print_json
from gsup.cli.options import Home, Json


@app.command()
def queues(as_json: Json = False, home: Home = None) -> None:
    """Show each pool's workers (Name / Command / Timeout) and pending queue."""
    from dataclasses import asdict

    from gsup.client import daemon_is_up
    from gsup.config import Paths, resolve_home
    from gsup.journal import queries
    from gsup.journal.queries import read_journal

    paths = Paths(resolve_home(home))
    up = daemon_is_up(paths)
    with read_journal(home) as conn:
        pools = queries.queues_snapshot(conn)
        slurm = queries.slurm_snapshot(conn)
    if as_json:
        print_json({"daemon": "running" if up else "not running",
                    "pools": [asdict(pool) for pool in pools], "slurm": asdict(slurm)})  # fmt: skip
    else:
        from gsup.render import Style, print_lines, queues_view, slurm_view

        style = Style()
        print_lines(queues_view(pools, up, style) + slurm_view(slurm, style))
