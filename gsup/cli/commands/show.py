"""`gsup show`."""

from __future__ import annotations

from gsup.cli.app import app, job_details, job_id, print_json
from gsup.cli.options import Home, JobId, Json


@app.command()
def show(job: JobId, as_json: Json = False, home: Home = None) -> None:
    """Everything about one job: fields, attempts, result, error and traceback."""
    found = job_details(job_id(job), home)
    if as_json:
        print_json(found)
    else:
        from gsup.render import Style, job_view, print_lines

        print_lines(job_view(found, Style()))
