"""The typer app every command registers on, and the helpers they share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from gsup.client import read_journal
from gsup.config import MAX_JOB_ID
from gsup.errors import GsupError

app = typer.Typer(
    name="gsup",
    help="A job supervisor: bounded worker pools, a SQLite journal that never forgets a job.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def job_id(text: str) -> int:
    """A job id from the command line; one line naming it if it is none."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_JOB_ID:
        raise GsupError(f"{text!r} is not a job id (ids are whole numbers from 1)")
    return int(text)


def print_json(data: Any) -> None:
    import json

    print(json.dumps(data, indent=2, default=str))


def job_details(job: int, home: Path | None) -> dict[str, Any]:
    from gsup.journal import queries

    with read_journal(home) as conn:
        found = queries.job_details(conn, job)
    if found is None:
        raise GsupError(f"no job {job}")
    return found
