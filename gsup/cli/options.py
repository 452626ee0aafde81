"""Parameters that several commands share, defined once."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gsup.config import BACKENDS, LOCAL_POOLS, POOL_NAMES

Queue = Enum("Queue", {name: name for name in POOL_NAMES}, type=str)  # type: ignore[misc]
LocalQueue = Enum("LocalQueue", {name: name for name in LOCAL_POOLS}, type=str)  # type: ignore[misc]
Backend = Enum("Backend", {name: name for name in BACKENDS}, type=str)  # type: ignore[misc]

Home = Annotated[
    Path | None,
    typer.Option(
        "--home",
        envvar="GSUP_HOME",
        show_envvar=True,
        metavar="DIR",
        help="State dir [default: $XDG_STATE_HOME/gsup]",
        show_default=False,
    ),
]
OneQueue = Annotated[Queue | None, typer.Option("--queue", "-q", help="One queue only")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output")]
Watch = Annotated[
    bool, typer.Option("--watch", "-w", help="Stay, and redraw as the daemon's events come")
]
JobId = Annotated[str, typer.Argument(metavar="ID", help="Job id", show_default=False)]
JobIds = Annotated[list[str], typer.Argument(metavar="ID", help="Job ids", show_default=False)]


def pool_name(queue: Queue | None) -> str | None:
    """The pool a `--queue` names; None for all."""
    return None if queue is None else queue.value
