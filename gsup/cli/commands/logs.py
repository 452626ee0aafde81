"""`gsup logs`: what an attempt of a job printed, or follow it as it prints."""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path
from typing import IO, Annotated

import typer

from gsup.cli.app import app, job_id
from gsup.cli.options import Home, JobId
from gsup.config import Paths, resolve_home
from gsup.errors import GsupError
from gsup.journal.queries import chosen_attempt, read_journal

FOLLOW_POLL = 0.1  # seconds between looks at a followed job's files and state
STREAMS = ("out", "err")


@app.command()
def logs(
    job: JobId,
    attempt: Annotated[
        int | None,
        typer.Option(
            "--attempt",
            "-a",
            min=1,
            metavar="N",
            help="The Nth attempt, as gsup show numbers them [default: the last]",
        ),
    ] = None,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Print what the job prints as it runs, until it ends"),
    ] = False,
    home: Home = None,
) -> None:
    """What a job printed: its stdout, then its stderr (to stderr). Each attempt of a
    retried job keeps its own output."""  # fmt: skip
    number = job_id(job)
    paths = Paths(resolve_home(home))
    with read_journal(home) as conn:
        chosen = chosen_attempt(conn, number, attempt)
        if follow:
            _follow(conn, paths, number, attempt)
            return
    for stream, sink in (("out", sys.stdout), ("err", sys.stderr)):
        _copy(paths.printed(number, stream, chosen), 0, sink)


def _runs(conn: sqlite3.Connection, job: int) -> tuple[str, list[int]]:
    from gsup.journal import queries

    found = queries.job_runs(conn, job)
    if found is None:
        raise GsupError(f"no job {job}")
    return found


def _copy(path: Path, offset: int, sink: IO[str]) -> int:
    """Write what `path` holds from `offset` to `sink`; the new offset."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return offset
    except OSError as exc:  # not readable, a folder, a name too long...
        raise GsupError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data:
        sink.buffer.write(data)
        sink.flush()
    return offset + len(data)


def _follow(conn: sqlite3.Connection, paths: Paths, job: int, only: int | None) -> None:
    """Print each attempt's output as it grows (a retry's next attempt after), until
    the job has ended (or attempt `only` has) and its files have been read to the end."""
    from gsup.states import END_STATES

    shown: int | None = None
    offsets = dict.fromkeys(STREAMS, 0)
    while True:
        state, attempts = _runs(conn, job)  # before the files: nothing printed is missed
        current = attempts[only - 1] if only else (attempts[-1] if attempts else None)
        if current != shown and current is not None:
            if shown is not None:
                _drain(paths, job, shown, offsets)
                print(f"gsup: attempt {attempts.index(current) + 1}", file=sys.stderr)
            shown, offsets = current, dict.fromkeys(STREAMS, 0)
        moved = _drain(paths, job, shown, offsets) if shown is not None else False
        over = state in END_STATES or (only is not None and len(attempts) > only)
        if over and not moved:
            return
        if not moved:
            time.sleep(FOLLOW_POLL)


def _drain(paths: Paths, job: int, attempt: int, offsets: dict[str, int]) -> bool:
    moved = False
    for stream, sink in (("out", sys.stdout), ("err", sys.stderr)):
        offset = _copy(paths.printed(job, stream, attempt), offsets[stream], sink)
        moved |= offset != offsets[stream]
        offsets[stream] = offset
    return moved
