"""`gsup logs`."""

from __future__ import annotations

import sys

from gsup.cli.app import app, job_details, job_id
from gsup.cli.options import Home, JobId
from gsup.config import Paths, resolve_home


@app.command()
def logs(job: JobId, home: Home = None) -> None:
    """What a job printed: its stdout, then its stderr (to stderr)."""
    number = job_id(job)
    job_details(number, home)  # one line if there is no such job
    import shutil

    paths = Paths(resolve_home(home))
    for stream, sink in (("out", sys.stdout), ("err", sys.stderr)):
        path = paths.job_output(number, stream)
        if path.exists():
            with open(path, "rb") as output:
                shutil.copyfileobj(output, sink.buffer)
            sink.flush()
