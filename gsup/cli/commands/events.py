"""`gsup events`: the journal's events, and with --follow those to come."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from gsup.cli.app import app, job_id
from gsup.cli.options import Home, Json
from gsup.errors import GsupError


@app.command()
def events(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Go on: print each event as it is committed")
    ] = False,
    since: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=2**63 - 1,
            metavar="SEQ",
            help="Only the events after this number [default: from the first; following, from now]",
            show_default=False,
        ),
    ] = None,
    job: Annotated[
        str | None, typer.Option("--job", metavar="ID", help="Only this job's events")
    ] = None,
    task: Annotated[
        str | None,
        typer.Option("--task", metavar="ID", help="Only the events of this task's jobs"),
    ] = None,
    as_json: Json = False,
    home: Home = None,
) -> None:
    """Every change of a job's state, numbered: SEQ, time, job, before -> after, why.
    A script resumes with --since SEQ (its last number) and misses none."""
    from gsup.cli.app import UsageError
    from gsup.events import events as read_events
    from gsup.journal.queries import EventFilter

    if job is not None and task is not None:
        raise UsageError("--job and --task: give one of them")
    wanted = EventFilter(
        job=None if job is None else job_id(job),
        task=None if task is None else job_id(task, "task"),
    )
    out, last = sys.stdout, since
    try:
        for batch in read_events(home, since, wanted, follow):
            if as_json:
                out.write("".join(json.dumps(event.to_json()) + "\n" for event in batch))
            else:
                out.write("".join(event.line() + "\n" for event in batch))
            out.flush()
            last = batch[-1].seq
    except GsupError as exc:
        if not follow or last is None:
            raise
        raise GsupError(f"{exc}; go on with --since {last}") from None
