"""`gsup retry`."""

from __future__ import annotations

from gsup.cli.app import app, each_job
from gsup.cli.options import Home, JobIds


@app.command()
def retry(jobs: JobIds, home: Home = None) -> None:
    """Queue jobs that failed, timed out, were lost or cancelled, again."""
    each_job(jobs, lambda client, job: client.retry(job)["state"], home)
