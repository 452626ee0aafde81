"""`gsup wait`."""

from __future__ import annotations

from typing import Annotated

import typer

from gsup.cli.app import app, job_id
from gsup.cli.options import Home, JobIds
from gsup.client import Client
from gsup.errors import GsupError


@app.command()
def wait(
    jobs: JobIds,
    timeout: Annotated[
        float | None, typer.Option(min=0, metavar="S", help="Give up after this many seconds")
    ] = None,
    home: Home = None,
) -> None:
    """Block until the jobs end; exit 0 only if all are done."""
    ids = [job_id(job) for job in jobs]
    try:
        states = Client(home).wait(ids, timeout)
    except TimeoutError:
        raise GsupError(f"timed out after {timeout:g}s") from None
    for job in ids:
        print(f"{job}: {states[job]}")
    if any(state != "done" for state in states.values()):
        raise typer.Exit(1)
