"""`gsup journal check` and `gsup journal salvage`."""

from __future__ import annotations

from typing import Annotated

import typer

from gsup.cli.app import command_group
from gsup.cli.options import Home
from gsup.config import Paths, resolve_home
from gsup.errors import GsupError

journal = command_group("journal", "Check the journal; salvage a damaged one.")


@journal.command()
def check(
    full: Annotated[
        bool, typer.Option("--full", help="Also check every index against its table (slower)")
    ] = False,
    home: Home = None,
) -> None:
    """Check the journal with SQLite's own checks, read-only (the daemon may be up).
    Exits 0 only if it is healthy."""
    from gsup.journal.health import PROBLEMS_SHOWN, damage_line, problems
    from gsup.journal.queries import Unreadable, check_journal_file

    path = Paths(resolve_home(home)).journal
    try:
        check_journal_file(path)
    except Unreadable as exc:
        raise GsupError(str(exc)) from None
    found = problems(path, full)
    if not found:
        print(f"{path}: ok")
        return
    for line in found[:PROBLEMS_SHOWN]:
        print(line)
    if len(found) > PROBLEMS_SHOWN:
        print(f"… and {len(found) - PROBLEMS_SHOWN} more")
    raise GsupError(damage_line(path, found, checked=True))


@journal.command()
def salvage(home: Home = None) -> None:
    """With the daemon down: copy what is readable of a damaged journal into a new one
    that takes its place, and say how many jobs were kept and lost. The damaged
    journal is kept aside (journal.sqlite.damaged). A journal that passes SQLite's full
    check is left as it is."""
    from gsup.journal.health import SalvageError, healthy_line
    from gsup.journal.health import salvage as salvage_journal

    paths = Paths(resolve_home(home))
    try:
        salvaged = salvage_journal(paths)
    except SalvageError as exc:
        raise GsupError(str(exc)) from None
    print(salvaged.line() if salvaged else healthy_line(paths.journal))
