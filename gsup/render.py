"""Tables for people: the queues, job lists, one job. Only query commands import rich."""

from __future__ import annotations

import datetime as dt
import io
import time
from typing import Any

from rich import box
from rich.columns import Columns
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from gsup.journal.queries import PoolSnapshot

STATE_STYLES = {
    "queued": "cyan",
    "running": "yellow",
    "done": "green",
    "failed": "red",
    "timeout": "red",
    "lost": "magenta",
    "cancelled": "dim",
}


def timeout_left(job: dict[str, Any], now: float) -> str:
    if job.get("timeout") is None or job.get("started") is None:
        return "N/A"
    left = max(0.0, job["timeout"] - (now - job["started"]))
    return f"{left:.0f}s of {job['timeout']:g}s"


def _workers_table(pool: PoolSnapshot, now: float) -> Table:
    title = f"gsup {pool.name} threads" + (" (frozen)" if pool.frozen else "")
    table = Table("Name", "Command", "Timeout", title=title, box=box.SIMPLE_HEAD)
    by_worker = {job["worker"]: job for job in pool.running}
    for index in range(pool.threads):
        name = f"Worker_{index}"
        job = by_worker.get(name)
        command = f"#{job['id']} {job['display']}" if job else "idle"
        table.add_row(
            name,
            Text(command, overflow="ellipsis", no_wrap=True),
            timeout_left(job, now) if job else "N/A",
        )
    return table


def _pending_lines(pool: PoolSnapshot) -> RenderableType:
    lines = [Text(f"gsup {pool.name} queue: {pool.pending_count} pending", style="bold")]
    for job in pool.pending:
        due = job.get("not_before")
        later = f" (retry at {short_time(due)})" if due and due > time.time() else ""
        lines.append(
            Text(
                f"  #{job['id']} [p{job['priority']}] {job['display']}{later}",
                overflow="ellipsis",
                no_wrap=True,
            )
        )
    if pool.pending_count > len(pool.pending):
        lines.append(Text(f"  … and {pool.pending_count - len(pool.pending)} more", style="dim"))
    return Group(*lines)


def queues_view(pools: list[PoolSnapshot], daemon_up: bool) -> RenderableType:
    now = time.time()
    header = (
        Text("daemon: running", style="green")
        if daemon_up
        else Text("daemon: not running (showing the journal as it was left)", style="yellow")
    )
    workers = Columns([_workers_table(pool, now) for pool in pools], padding=(0, 4))
    return Group(header, workers, *(_pending_lines(pool) for pool in pools))


def to_text(renderable: RenderableType, width: int = 120) -> str:
    """Render without a terminal (for `repr(queues)`)."""
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def short_time(timestamp: float | None) -> str:
    """The time of day for today, else the date: one narrow column."""
    if timestamp is None:
        return "-"
    moment = dt.datetime.fromtimestamp(timestamp)
    return moment.strftime("%H:%M:%S" if moment.date() == dt.date.today() else "%Y-%m-%d")


def _state(state: str) -> Text:
    return Text(state, style=STATE_STYLES.get(state, ""))


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(
        "ID", "State", "Queue", "Command", "Tries", "Created", "Reason", box=box.SIMPLE_HEAD
    )
    for job in jobs:
        table.add_row(
            str(job["id"]),
            _state(job["state"]),
            job["pool"],
            Text(job["display"], overflow="ellipsis", no_wrap=True),
            str(job["attempts"]),
            short_time(job["created"]),
            job["reason"] or "",
        )
    return table


def job_view(job: dict[str, Any]) -> RenderableType:
    fields = Table.grid(padding=(0, 2))
    rows = [
        ("id", str(job["id"])),
        ("name", job["name"] or "-"),
        ("state", _state(job["state"])),
        ("reason", job["reason"] or "-"),
        ("queue", job["pool"]),
        ("kind", job["kind"]),
        ("command", job["display"]),
        ("cwd", job["spec"].get("cwd") or "-"),
        ("priority", str(job["priority"])),
        ("timeout", "-" if job["timeout"] is None else f"{job['timeout']:g}s"),
        ("retries", str(job["retries"])),
        ("on lost", job["on_lost"]),
        ("attempts", str(job["attempts"])),
        ("created", when(job["created"])),
        ("ended", when(job["ended"])),
        ("retry at", when(job["not_before"])),
        ("result", "-" if job["result"] is None else f"{job['result']} ({job['result_type']})"),
        ("error", job["error"] or "-"),
    ]
    for name, value in rows:
        fields.add_row(Text(name, style="bold"), value)
    parts: list[RenderableType] = [fields, attempts_table(job["attempts_list"])]
    if job["traceback"]:
        parts.append(Text(job["traceback"].rstrip(), style="red"))
    return Group(*parts)


def attempts_table(attempts: list[dict[str, Any]]) -> Table:
    """Each run of a job: where, when, how it ended, and what it used where known."""
    table = Table(title="attempts", box=box.SIMPLE_HEAD, title_justify="left")
    for name in ("#", "On", "Started", "Ended", "Outcome", "Exit", "CPU", "RSS"):
        table.add_column(name, no_wrap=True)
    table.add_column("Why", min_width=16)  # the one column that wraps
    for number, attempt in enumerate(attempts, 1):
        where = attempt["executor"] + (
            f"/{attempt['external_id']}" if attempt["external_id"] else ""
        )
        charged = "" if attempt["charged"] else " (not charged)"
        table.add_row(
            str(number),
            where,
            short_time(attempt["started"] or attempt["dispatched"]),
            short_time(attempt["ended"]),
            _state(attempt["outcome"] or ("running" if attempt["started"] else "handed over")),
            "-" if attempt["exit_status"] is None else str(attempt["exit_status"]),
            "-" if attempt["cpu_seconds"] is None else f"{attempt['cpu_seconds']:.2f}s",
            "-" if attempt["peak_rss_kb"] is None else f"{attempt['peak_rss_kb'] / 1024:.0f}M",
            (attempt["reason"] or "") + charged,
        )
    return table


def queues_for(paths: Any) -> RenderableType:
    """The `gsup queues` view of a state dir, read from its journal."""
    from gsup.client import daemon_is_up
    from gsup.fast_cli import read_journal
    from gsup.journal import queries

    up = daemon_is_up(paths)
    with read_journal(paths.home) as conn:
        return queues_view(queries.queues_snapshot(conn), up)


def print_rich(renderable: RenderableType) -> None:
    Console().print(renderable)
