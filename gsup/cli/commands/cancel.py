"""`gsup cancel`."""

from __future__ import annotations

from gsup.cli.app import app, job_id
from gsup.cli.options import Home, JobIds
from gsup.client import Client


@app.command()
def cancel(jobs: JobIds, home: Home = None) -> None:
    """Cancel jobs: a queued job is cancelled, a running one stopped."""
    ids = [job_id(job) for job in jobs]
    client = Client(home)
    for job in ids:
        reply = client.cancel(job)
        if reply.get("stopping"):  # its executor holds it: it ends once stopped
            print(f"{job}: {'stopping' if reply['state'] == 'running' else 'cancelling'}")
        else:
            print(f"{job}: {reply['state']}")
