"""`gsup why`: why a job is not running yet, or why it ended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gsup.cli.app import app, job_id
from gsup.cli.options import Home, JobId


@app.command()
def why(job: JobId, home: Home = None) -> None:
    """One paragraph on why a job waits (its pool frozen or full, a delayed retry, a
    suspect running alone...), what it runs on, or why it ended."""
    from gsup.journal.queries import read_journal
    from gsup.render import visible
    from gsup.why import explain

    number = job_id(job)
    with read_journal(home) as conn:
        explain(conn, number, None)  # an unknown job is said before the daemon is asked
        print(visible(explain(conn, number, daemon_facts(home, number))))


def daemon_facts(home: Path | None, job: int) -> dict[str, Any] | None:
    """The daemon's `why` reply; None if no daemon runs."""
    from gsup.client import Client
    from gsup.errors import DaemonNotRunning

    try:
        return Client(home).request("why", job=job)
    except DaemonNotRunning:
        return None
