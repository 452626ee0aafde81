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
    from gsup.errors import GsupError
    from gsup.journal.queries import job_runs, read_journal
    from gsup.text import visible
    from gsup.why import explain

    number = job_id(job)
    with read_journal(home) as conn:
        if job_runs(conn, number) is None:  # said before the daemon is asked
            raise GsupError(f"no job {number}")
        facts, absent = daemon_facts(home, number)
        print(visible(explain(conn, number, facts, absent)))


ANSWER_WITHIN = 5.0  # seconds the daemon has to say what it knows


def daemon_facts(home: Path | None, job: int) -> tuple[dict[str, Any] | None, str]:
    """The daemon's `why` reply, or None and why there is none."""
    from gsup.client import Client
    from gsup.errors import DaemonNotRunning, WaitTimeout
    from gsup.why import NO_DAEMON

    try:
        return Client(home).request("why", timeout=ANSWER_WITHIN, job=job), NO_DAEMON
    except DaemonNotRunning:
        return None, NO_DAEMON
    except WaitTimeout:
        return None, f"The daemon did not answer within {ANSWER_WITHIN:g}s"
