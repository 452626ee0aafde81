"""`gsup cancel`."""

from __future__ import annotations

from gsup.cli.app import app, each_job
from gsup.cli.options import Home, JobIds


@app.command()
def cancel(jobs: JobIds, home: Home = None) -> None:
    """Cancel jobs: a queued job is cancelled, a running one stopped."""

    def cancelled(reply: dict) -> str:
        if reply.get("stopping"):  # its executor holds it: it ends once stopped
            return "stopping" if reply["state"] == "running" else "cancelling"
        return reply["state"]

    each_job(jobs, lambda client, job: cancelled(client.cancel(job)), home)
