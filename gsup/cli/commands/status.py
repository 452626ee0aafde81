"""`gsup status`."""

from __future__ import annotations

import time
from typing import Any

import typer

from gsup.cli.app import app, print_json
from gsup.cli.options import Home, Json
from gsup.client import Client
from gsup.config import resolve_home
from gsup.errors import DaemonNotRunning, GsupError
from gsup.journal.queries import read_journal
from gsup.render import duration
from gsup.text import count


@app.command()
def status(as_json: Json = False, home: Home = None) -> None:
    """Whether a daemon runs for this state dir: pid, version, uptime, pools, jobs by
    state. Exits 0 only if one is up."""
    from gsup.journal import queries

    try:
        info = Client(home).ping()
    except DaemonNotRunning as exc:
        if as_json:
            print_json({"running": False, "home": str(resolve_home(home))})
            raise typer.Exit(1) from None
        raise GsupError(str(exc)) from None
    with read_journal(home) as conn:
        info["jobs"] = queries.state_counts(conn)
    info.update(running=True, home=str(resolve_home(home)))
    info.pop("ok", None)
    print_json(info) if as_json else print(_status_text(info))


def _status_text(info: dict[str, Any]) -> str:
    pools = ", ".join(
        f"{p['name']} {p['threads']} threads ({p['in_flight']} in flight"
        f"{', frozen' if p['frozen'] else ''}{', ' + p['trouble'] if p.get('trouble') else ''})"
        for p in info["pools"]
    )
    backends = "".join(
        f"\n{f'{name}:':6} {count(b['in_flight'], 'job')} (at most {b['slots']})"
        + (f"; {b['trouble']}" if b["trouble"] else "")
        for name, b in info["backends"].items()
    )
    jobs = ", ".join(f"{count} {state}" for state, count in sorted(info["jobs"].items()))
    state = "stopping" if info["stopping"] else "running"
    return (
        f"gsup {info['version']}: {state}, pid {info['pid']}, up"
        f" {duration(time.time() - info['started'])}\n"
        f"home:  {info['home']}\npools: {pools}{backends}\njobs:  {jobs or 'none'}"
    )
