"""`gsup jobs`."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from gsup.cli.app import app, print_json, watch_or_json
from gsup.cli.options import Home, Json, OneQueue, Watch
from gsup.journal.queries import read_journal
from gsup.states import State

MAX_LIST = 1_000_000_000  # SQLite takes no LIMIT beyond 64 bits
StateName = Enum("StateName", {state.value: state.value for state in State}, type=str)  # type: ignore[misc]


@app.command()
def jobs(
    state: Annotated[
        StateName | None, typer.Option("--state", "-s", help="Only jobs in this state")
    ] = None,
    queue: OneQueue = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", "-n", min=1, max=MAX_LIST, metavar="N", help="How many, newest first"
        ),
    ] = 20,
    as_json: Json = False,
    watch: Watch = False,
    home: Home = None,
) -> None:
    """List jobs, newest first."""
    from gsup.journal import queries

    watch_or_json(watch, as_json)
    with read_journal(home) as conn:

        def listed() -> list[dict]:
            return queries.list_jobs(conn, state and state.value, queue and queue.value, limit)

        if as_json:
            print_json(listed())
            return
        from gsup.render import Style, jobs_table

        def view() -> str:
            return "\n".join(jobs_table(listed(), Style()))

        if watch:
            from gsup.cli.live import watch as live

            live(home, view)
        else:
            print(view())
