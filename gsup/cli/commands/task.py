"""`gsup task ...`: submit a task file, follow tasks, pause, resume, retry, merge, reset."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gsup.cli.app import command_group, job_id, print_json, watch_or_json
from gsup.cli.options import Home, Json, Watch
from gsup.config import TASKS_LISTED
from gsup.errors import GsupError

if TYPE_CHECKING:
    from gsup.tasks.records import TransformProgress

task = command_group("task", "Tasks: campaigns of units over chained transforms.")

TaskId = Annotated[str, typer.Argument(metavar="ID", help="Task id", show_default=False)]
BAR = 24  # characters of a progress bar


def _task_id(text: str) -> int:
    return job_id(text, "task")


Progress = tuple[dict[str, Any], list["TransformProgress"]]  # a task's row, its transforms'


def _read(text: str, home: Path | None, every_failure: bool = False) -> Progress:
    """A task's row and its transforms' progress, from the journal (the daemon may be
    down; not through the API, which costs `show` its 1.3x of typer's import)."""
    from gsup.journal.queries import read_journal
    from gsup.tasks.records import FAILURES_SHOWN, progress, task_row

    task_id = _task_id(text)
    with read_journal(home) as conn:
        row = task_row(conn, task_id)
        if row is None:
            raise GsupError(f"no task {task_id}")
        return row, progress(conn, task_id, None if every_failure else FAILURES_SHOWN)


@task.command()
def submit(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A task file (TOML)")],
    home: Home = None,
) -> None:
    """Check a task file (its targets imported as `gsup add --check` does) and submit
    it; prints the task's id."""
    from gsup.client import Client
    from gsup.tasks import api, spec

    loaded = spec.load_task(file)
    spec.check_targets(loaded)
    print(api.submit(Client(home), loaded, api.cli_path(loaded)))


@task.command("list")
def list_tasks(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, metavar="N")] = TASKS_LISTED,
    as_json: Json = False,
    home: Home = None,
) -> None:
    """Tasks, newest first."""
    from gsup.journal.queries import read_journal
    from gsup.tasks.records import task_rows

    with read_journal(home) as conn:
        rows = task_rows(conn, limit)
    if as_json:
        print_json(rows)
        return
    from gsup.render import Style, print_lines, tasks_view

    print_lines(tasks_view(rows, Style()))


@task.command()
def show(task_id: TaskId, as_json: Json = False, watch: Watch = False, home: Home = None) -> None:
    """A task: per transform, a progress bar, its units by state, rate and ETA."""
    watch_or_json(watch, as_json)
    row, transforms = _read(task_id, home, every_failure=as_json)
    if as_json:
        print_json({**row, "transforms": [t.to_json() for t in transforms]})
        return
    if not watch:
        print(_shown(row, transforms))
        return
    from gsup.cli.live import watch as live
    from gsup.journal.queries import EventFilter
    from gsup.tasks.records import TASK_END_STATES

    def view() -> str:
        nonlocal row, transforms
        row, transforms = _read(task_id, home)
        return _shown(row, transforms)

    live(home, view, EventFilter(task=row["id"]), lambda: row["state"] in TASK_END_STATES)


def _shown(row: dict[str, Any], transforms: list[TransformProgress]) -> str:
    head = f"task {row['id']} {row['name']}: {row['state']}" + _reason(row)
    from gsup.text import visible  # a task's texts may hold control characters

    lines = [head, *_progress_lines(transforms, row), *_detail_lines(transforms)]
    return "\n".join(map(visible, lines))


def _reason(row: dict[str, Any]) -> str:
    return f" ({row['reason']})" if row.get("reason") else ""


def _progress_lines(transforms: list[TransformProgress], row: dict[str, Any]) -> list[str]:
    """A line per transform: bar, ended/total, counts, rate and ETA while it runs."""
    elapsed = (row["ended"] or time.time()) - row["created"]
    width = max(len(t.name) for t in transforms)
    lines = []
    for t in transforms:
        ended = t.counts["done"] + t.counts["failed"] + t.counts["skipped"]
        filled = BAR * ended // t.total if t.total else 0
        counts = ", ".join(f"{n} {state}" for state, n in t.counts.items() if n)
        rate = ended / elapsed if elapsed > 0 else 0.0
        running = t.state == "running" and row["state"] == "running"  # not paused
        eta = f", ETA {(t.total - ended) / rate:.0f}s" if rate and running else ""
        lines.append(
            f"  {t.name:<{width}} [{'#' * filled}{'.' * (BAR - filled)}] {ended}/{t.total}"
            f" {t.state}" + (f" ({t.reason})" if t.reason else "")
            + f": {counts or 'no units yet'}; {rate:.1f} units/s{eta}"
        )  # fmt: skip
    return lines


def _detail_lines(transforms: list[TransformProgress]) -> list[str]:
    """Under `show`'s progress: each merged file, and the first failed units' reasons."""
    lines = []
    for t in transforms:
        if t.merge is not None:
            m = t.merge
            units = f"{m.merged} unit{'s' * (m.merged != 1)}"
            held = f"{m.file} ({units})" if m.file else "no file yet"
            lines.append(f"  {t.name} merged: {held}"
                         + (f"; last merge {m.state}: {m.error}" if m.error else ""))  # fmt: skip
        lines += [f"  {t.name}/{idx} failed: {why}" for idx, why in t.failures]
        if len(t.failures) < t.counts["failed"]:
            lines.append(f"  {t.name}: {t.counts['failed'] - len(t.failures)} more failed")
    return lines


@task.command()
def why(task_id: TaskId, home: Home = None) -> None:
    """Why a task's units wait (a pause, its float, their inputs) or how they ended:
    a line on the task, then one per transform."""
    from gsup.journal.queries import read_journal
    from gsup.text import visible
    from gsup.why import explain_task

    with read_journal(home) as conn:
        print("\n".join(map(visible, explain_task(conn, _task_id(task_id)))))


@task.command()
def wait(
    task_id: TaskId,
    timeout: Annotated[
        float | None, typer.Option(min=0, metavar="S", help="Give up after this many seconds")
    ] = None,
    home: Home = None,
) -> None:
    """Wait for a task to end, with a progress bar per transform on a terminal; exits
    0 only if it completed. The daemon answers as it ends."""
    from gsup.client import Client
    from gsup.errors import WaitTimeout

    row, _ = _read(task_id, home)
    try:
        if sys.stderr.isatty():
            row = _wait_with_bars(row["id"], timeout, home)
        else:
            Client(home).wait_task(row["id"], timeout)
            row, _ = _read(task_id, home)
    except WaitTimeout:
        row, _ = _read(task_id, home)
        raise GsupError(f"task {row['id']} is still {row['state']} after {timeout:g}s") from None
    print(f"task {row['id']} {row['state']}" + _reason(row))
    if row["state"] != "completed":
        raise typer.Exit(1)


def _wait_with_bars(task_id: int, timeout: float | None, home: Path | None) -> dict[str, Any]:
    """Redraw a bar per transform as the task's events come, until it ends."""
    from gsup.cli.live import EventTicker, bar_redraws, progress_bars
    from gsup.client import Client
    from gsup.errors import WaitTimeout
    from gsup.journal.queries import EventFilter
    from gsup.tasks.records import TASK_END_STATES

    deadline = None if timeout is None else time.monotonic() + timeout
    ticker = EventTicker(home, EventFilter(task=task_id))
    bars_of: dict[int, Any] = {}
    with progress_bars("units") as bars:
        for _ in bar_redraws(ticker, bars):
            row, transforms = _read(str(task_id), home)
            for t in transforms:
                if t.id not in bars_of:
                    bars_of[t.id] = bars.add_task(t.name, total=t.total)
                ended = t.counts["done"] + t.counts["failed"] + t.counts["skipped"]
                bars.update(bars_of[t.id], total=t.total, completed=ended)
            bars.refresh()
            if row["state"] in TASK_END_STATES:
                return row
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"task {task_id} still {row['state']}")
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    Client(home).wait_task(task_id, left)  # the events could not be followed: no bars
    return _read(str(task_id), home)[0]


def _control(task_id: str, action: str, home: Path | None, unit: str | None = None) -> None:
    from gsup.client import Client

    reply = Client(home).request("task_control", task=_task_id(task_id), action=action,
                                 unit=unit)  # fmt: skip
    print(reply["said"])


@task.command()
def pause(task_id: TaskId, home: Home = None) -> None:
    """Submit no more of its units (those running go on)."""
    _control(task_id, "pause", home)


@task.command()
def resume(task_id: TaskId, home: Home = None) -> None:
    """Submit its units again."""
    _control(task_id, "resume", home)


@task.command("retry-failed")
def retry_failed(task_id: TaskId, home: Home = None) -> None:
    """Run its failed and skipped units again, and the units they fed (an ended task
    runs again)."""
    _control(task_id, "retry_failed", home)


@task.command("retry-merge")
def retry_merge(task_id: TaskId, home: Home = None) -> None:
    """Merge again, anew, each transform whose merge failed (an ended task runs again)."""
    _control(task_id, "retry_merge", home)


@task.command()
def reset(
    task_id: TaskId,
    unit: Annotated[str, typer.Argument(metavar="UNIT", help="TRANSFORM/INDEX")],
    home: Home = None,
) -> None:
    """Run one unit again, whatever it ended in; its outputs go aside."""
    _control(task_id, "reset", home, unit)
