"""`gsup retry`."""

from __future__ import annotations

from gsup.cli.app import app, job_id
from gsup.cli.options import Home, JobIds
from gsup.client import Client


@app.command()
def retry(jobs: JobIds, home: Home = None) -> None:
    """Queue jobs that failed, timed out, were lost or cancelled, again."""
    ids = [job_id(job) for job in jobs]
    client = Client(home)
    for job in ids:
        print(f"{job}: {client.retry(job)['state']}")
