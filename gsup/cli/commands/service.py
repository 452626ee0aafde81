"""`gsup service install`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gsup.cli.app import command_group
from gsup.cli.options import Home

service = command_group("service", "systemd units for this gsup.")


@service.command()
def install(
    user: Annotated[
        bool, typer.Option("--user", help="For your own systemd (systemctl --user)")
    ] = False,
    run_as: Annotated[
        str, typer.Option("--run-as", metavar="NAME", help="The system unit's user")
    ] = "gsup",
    show: Annotated[bool, typer.Option("--print", help="Print the unit; write nothing")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing unit")] = False,
    home: Home = None,
) -> None:
    """Write a unit that runs this gsup's daemon (its absolute path, so a virtualenv
    works) for the state dir, and say how to enable it. System units (the default)
    go to /etc/systemd/system and run as --run-as; --user units to
    ~/.config/systemd/user."""
    from gsup.service import install as write
    from gsup.service import system_unit, user_unit

    unit = user_unit(home) if user else system_unit(Path(home) if home else None, run_as)
    if show:
        print(unit.text, end="")
        return
    write(unit, force)
    print(f"wrote {unit.path}; enable and start it with:\n  {unit.enable_hint()}")
