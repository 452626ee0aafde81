"""What a running callable may ask about its own run: `gsup.current()`.

A pool thread runs one job at a time, so the run is kept per thread; a unit of a task
learns its output folder and its input files here (a command gets them in its
environment instead: GSUP_OUTDIR, GSUP_INPUTS, and it runs in its output folder).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsup.errors import GsupError


@dataclass(frozen=True)
class Current:
    job: int
    attempt: int  # the attempt's id: its logs are this attempt's
    unit: str | None = None  # TASK/TRANSFORM/INDEX, for a unit of a task
    outdir: Path | None = None  # where the unit's declared outputs go
    inputs: tuple[Path, ...] = ()  # the unit's input files


_runs = threading.local()


def current() -> Current:
    """The job this thread runs; GsupError outside a job."""
    run = getattr(_runs, "current", None)
    if run is None:
        raise GsupError("gsup.current() is for code that a gsup job runs")
    return run


@contextmanager
def running(job: int, attempt: int, unit: dict[str, Any] | None) -> Iterator[None]:
    """Make `current()` answer for this job while it runs on this thread."""
    unit = unit or {}
    outdir = unit.get("outdir")
    _runs.current = Current(
        job,
        attempt,
        unit.get("name"),
        Path(outdir) if outdir else None,
        tuple(Path(p) for p in unit.get("inputs", ())),
    )
    try:
        yield
    finally:
        _runs.current = None
