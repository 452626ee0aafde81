"""Text for people: the queues, job lists, one job.

Plain aligned columns, coloured only on a terminal (and not with NO_COLOR). Not rich:
importing rich's console costs ~25 ms, and a command must answer within 1.3x of
typer's own import (see bench/); these tables need no more than column widths.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from gsup.journal.queries import PoolSnapshot, SlurmSnapshot
from gsup.text import visible, visible_lines

STATE_COLOURS = {  # ANSI SGR codes
    "queued": "36",
    "running": "33",
    "done": "32",
    "failed": "31",
    "timeout": "31",
    "lost": "35",
    "cancelled": "2",
}
GAP = "  "
SHOWN_RESULT = 2000  # characters of a result `gsup show` prints; --json prints it all


class Style:
    """Whether and how wide to draw: a terminal gets colours and lines cut to its width."""

    def __init__(self, terminal: bool | None = None) -> None:
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.colour = self.terminal and not os.environ.get("NO_COLOR")
        self.width = shutil.get_terminal_size().columns if self.terminal else None

    def paint(self, text: str, code: str | None) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def state(self, state: str) -> str:
        return self.paint(state, STATE_COLOURS.get(state))


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], style: Style, flexible: int = -1
) -> list[str]:
    """Columns as wide as their widest cell; on a terminal, the `flexible` column is cut
    with … so that a line fits. Cells may hold colour codes (they take no width)."""
    cells = [list(headers), *(list(row) for row in rows)]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    if style.width is not None:
        flexible %= len(headers)
        others = sum(widths) - widths[flexible] + len(GAP) * (len(headers) - 1)
        widths[flexible] = max(len(headers[flexible]), min(widths[flexible], style.width - others))
        for row in cells:
            row[flexible] = _cut(row[flexible], widths[flexible])
    lines = [_line(row, widths) for row in cells]
    lines[0] = style.paint(lines[0], "1")
    return lines


def _width(cell: str) -> int:
    return len(_plain(cell))


def _plain(cell: str) -> str:
    while "\x1b[" in cell:
        start = cell.index("\x1b[")
        cell = cell[:start] + cell[cell.index("m", start) + 1 :]
    return cell


def _cut(cell: str, width: int) -> str:
    plain = _plain(cell)
    return cell if len(plain) <= width else plain[: max(0, width - 1)] + "…"


def _line(row: Sequence[str], widths: Sequence[int], gap: str = GAP) -> str:
    padded = [cell + " " * (width - _width(cell)) for cell, width in zip(row, widths, strict=True)]
    return gap.join(padded).rstrip()


def print_lines(lines: list[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))


# --- values ---------------------------------------------------------------------------


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def duration(seconds: float) -> str:
    """`12m13s`, `3d4h`: the two largest units."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value]
    return "".join(shown[:2]) or "0s"


def short_time(timestamp: float | None) -> str:
    """The time of day for today, else the date: one narrow column."""
    if timestamp is None:
        return "-"
    moment = time.localtime(timestamp)
    today = time.localtime()[:3] == moment[:3]
    return time.strftime("%H:%M:%S" if today else "%Y-%m-%d", moment)


def timeout_left(job: dict[str, Any], now: float) -> str:
    if job.get("timeout") is None or job.get("started") is None:
        return "N/A"
    left = max(0.0, job["timeout"] - (now - job["started"]))
    return f"{left:.0f}s of {job['timeout']:g}s"


# --- the views ------------------------------------------------------------------------


def jobs_table(jobs: list[dict[str, Any]], style: Style) -> list[str]:
    rows = [
        (
            str(job["id"]),
            style.state(job["state"]),
            job["pool"],
            visible(job["display"]),
            str(job["attempts"]),
            short_time(job["created"]),
            visible(job["reason"] or ""),
        )
        for job in jobs
    ]
    headers = ("ID", "State", "Queue", "Command", "Tries", "Created", "Reason")
    return table(headers, rows, style, flexible=3)


def queues_view(pools: list[PoolSnapshot], daemon_up: bool, style: Style) -> list[str]:
    """Ganga's view: each pool's workers side by side, then what each has pending."""
    now = time.time()
    if daemon_up:
        lines = [style.paint("daemon: running", "32"), ""]
    else:
        lines = [style.paint("daemon: not running (showing the journal as it was left)", "33"), ""]
    column_width = None if style.width is None else max(30, (style.width - 4) // len(pools))
    narrow = Style(terminal=False)
    narrow.colour, narrow.width = style.colour, column_width
    blocks = [_workers_table(pool, now, narrow) for pool in pools]
    widths = [max(_width(line) for line in block) for block in blocks]
    for parts in itertools.zip_longest(*blocks, fillvalue=""):  # pools differ in threads
        padded = [
            part + " " * (width - _width(part)) for part, width in zip(parts, widths, strict=True)
        ]
        lines.append("    ".join(padded).rstrip())
    lines.append("")
    for pool in pools:
        lines += _pending_lines(pool, style)
    return lines


def slurm_view(slurm: SlurmSnapshot, style: Style) -> list[str]:
    """The Slurm backend's jobs, when it has or awaits any: Slurm's id and state of each."""
    if not slurm.running_count and not slurm.queued_count:
        return []
    head = f"gsup slurm: {slurm.running_count} in Slurm, {slurm.queued_count} queued"
    lines = ["", style.paint(head, "1")]
    for job in slurm.running:
        state = (job["state"] or "").removeprefix("Slurm: ") or "submitted"
        line = f"  #{job['id']} Slurm {job['slurm_id']} {state}: {visible(job['display'])}"
        lines.append(line if style.width is None else _cut(line, style.width))
    if slurm.running_count > len(slurm.running):
        lines.append(f"  … and {slurm.running_count - len(slurm.running)} more")
    return lines


def _workers_table(pool: PoolSnapshot, now: float, style: Style) -> list[str]:
    title = f"gsup {pool.name} threads" + (" (frozen)" if pool.frozen else "")
    by_worker = {job["worker"]: job for job in pool.running}
    rows = []
    for index in range(pool.threads):
        name = f"Worker_{index}"
        job = by_worker.get(name)
        command = f"#{job['id']} {visible(job['display'])}" if job else "idle"
        rows.append((name, command, timeout_left(job, now) if job else "N/A"))
    return [style.paint(title, "1"), *table(("Name", "Command", "Timeout"), rows, style, 1)]


def _pending_lines(pool: PoolSnapshot, style: Style) -> list[str]:
    lines = [style.paint(f"gsup {pool.name} queue: {pool.pending_count} pending", "1")]
    for job in pool.pending:
        due = job.get("not_before")
        later = f" (retry at {short_time(due)})" if due and due > time.time() else ""
        line = f"  #{job['id']} [p{job['priority']}] {visible(job['display'])}{later}"
        lines.append(line if style.width is None else _cut(line, style.width))
    if pool.pending_count > len(pool.pending):
        lines.append(f"  … and {pool.pending_count - len(pool.pending)} more")
    return lines


def job_view(job: dict[str, Any], style: Style) -> list[str]:
    fields = [
        ("id", str(job["id"])),
        ("name", visible(job["name"] or "-")),
        ("state", style.state(job["state"])),
        ("reason", visible(job["reason"] or "-")),
        ("queue", job["pool"]),
        ("kind", job["kind"]),
        ("command", visible(job["display"])),
        ("cwd", visible(job["spec"].get("cwd") or "-")),
        ("priority", str(job["priority"])),
        ("timeout", "-" if job["timeout"] is None else f"{job['timeout']:g}s"),
        ("retries", str(job["retries"])),
        ("on lost", job["on_lost"]),
        ("attempts", str(job["attempts"])),
        ("created", when(job["created"])),
        ("ended", when(job["ended"])),
        ("retry at", when(job["not_before"])),
        ("result", visible(_result(job))),
        ("error", visible(job["error"] or "-")),
    ]
    lines = [f"{style.paint(f'{name:<9}', '1')} {value}" for name, value in fields]
    lines += ["", style.paint("attempts", "1"), *attempts_table(job["attempts_list"], style)]
    if job["traceback"]:
        lines += ["", style.paint(visible_lines(job["traceback"].rstrip()), "31")]
    return lines


def _result(job: dict[str, Any]) -> str:
    result = job["result"]
    if result is None:
        return "-"
    if len(result) <= SHOWN_RESULT:
        return f"{result} ({job['result_type']})"
    return (
        f"{result[:SHOWN_RESULT]}… ({job['result_type']}, {len(result):,} characters;"
        f" gsup show --json {job['id']} prints it whole)"
    )


def attempts_table(attempts: list[dict[str, Any]], style: Style) -> list[str]:
    """Each run of a job: where, when, how it ended, and what it used where known."""
    rows = []
    for number, attempt in enumerate(attempts, 1):
        where = visible(
            attempt["executor"] + (f"/{attempt['external_id']}" if attempt["external_id"] else "")
        )
        outcome = attempt["outcome"] or ("running" if attempt["started"] else "handed over")
        charged = "" if attempt["charged"] else " (not charged)"
        rows.append(
            (
                str(number),
                where,
                short_time(attempt["started"] or attempt["dispatched"]),
                short_time(attempt["ended"]),
                style.state(outcome),
                "-" if attempt["exit_status"] is None else str(attempt["exit_status"]),
                "-" if attempt["cpu_seconds"] is None else f"{attempt['cpu_seconds']:.2f}s",
                "-" if attempt["peak_rss_kb"] is None else f"{attempt['peak_rss_kb'] / 1024:.0f}M",
                visible(attempt["reason"] or "") + charged,
            )
        )
    headers = ("#", "On", "Started", "Ended", "Outcome", "Exit", "CPU", "RSS", "Why")
    return table(headers, rows, style)


def queues_for(paths: Any) -> str:
    """The `gsup queues` view of a state dir, read from its journal, as plain text."""
    from gsup.client import daemon_is_up
    from gsup.journal import queries
    from gsup.journal.queries import read_journal

    up = daemon_is_up(paths)
    with read_journal(paths.home) as conn:
        lines = queues_view(queries.queues_snapshot(conn), up, Style(terminal=False))
    return "\n".join(lines) + "\n"


def tasks_view(rows: list[dict[str, Any]], style: Style) -> list[str]:
    """The `gsup task list` table of task rows (gsup.tasks.records.task_rows)."""
    cells = [(str(r["id"]), r["name"], style.state(r["state"]), str(r["float"])) for r in rows]
    return table(("ID", "NAME", "STATE", "FLOAT"), cells, style, flexible=1)


def tasks_for(paths: Any, limit: int) -> str:
    """The `gsup task list` view of a state dir, read from its journal, as plain text."""
    from gsup.journal.queries import read_journal
    from gsup.tasks.records import task_rows

    with read_journal(paths.home) as conn:
        rows = task_rows(conn, limit)
    return "\n".join(tasks_view(rows, Style(terminal=False))) + "\n"
