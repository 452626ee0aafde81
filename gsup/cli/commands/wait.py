"""`gsup wait`."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Annotated, Any

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
    """Block until the jobs end; exit 0 only if all are done. On a terminal, more than
    one job get a progress bar (rate, ETA)."""
    ids = [job_id(job) for job in jobs]
    client = Client(home)
    try:
        if len(ids) > 1 and sys.stderr.isatty():
            states = _with_progress(client, ids, timeout, home)
        else:
            states = client.wait(ids, timeout)
    except TimeoutError:
        raise GsupError(f"timed out after {timeout:g}s") from None
    for job in ids:
        print(f"{job}: {states[job]}")
    if any(state != "done" for state in states.values()):
        raise typer.Exit(1)


def _with_progress(
    client: Client, ids: list[int], timeout: float | None, home: Path | None
) -> dict[int, str]:
    """The daemon's answer to the wait, while a bar counts the jobs' ends as their
    events come."""
    from gsup.cli.live import EventTicker, bar_redraws, progress_bars
    from gsup.journal.queries import read_journal, states_of
    from gsup.states import END_STATES

    ticker = EventTicker(home)  # before the states are read: no end falls between
    with read_journal(home) as conn:
        latest = states_of(conn, ids)
    answer: dict[str, Any] = {}

    def wait_for_all() -> None:
        try:
            answer["states"] = client.wait(ids, timeout)
        except BaseException as exc:
            answer["error"] = exc
        ticker.wake()

    waiting = threading.Thread(target=wait_for_all, daemon=True)
    waiting.start()
    wanted = set(ids)
    with progress_bars("jobs") as bars:
        bar = bars.add_task("ended", total=len(wanted))
        for events in bar_redraws(ticker, bars):
            latest.update((e.job, e.after) for e in events if e.job in wanted)
            ended = sum(state in END_STATES for state in latest.values())
            bars.update(bar, completed=ended, refresh=True)
            if answer:
                break
    waiting.join()
    if "error" in answer:
        raise answer["error"]
    return answer["states"]
