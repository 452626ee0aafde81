"""The dashboard's pages, as HTML, from the journal (read-only) and the daemon's replies.

Each page is a `main` fragment; app.py puts it in the layout, or sends it alone when
the page's script asks for it again after an event. Every text from a job is escaped.
Reads are the CLI's own (journal/queries.py, tasks/records.py): indexed, and bounded
by a limit, so that a page costs the same with a million jobs as with ten.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from html import escape
from typing import Any

from gsup.config import EXECUTOR_NAMES
from gsup.journal import queries
from gsup.journal.queries import ALL_EVENTS
from gsup.render import duration, short_time, timeout_left, when
from gsup.states import State
from gsup.tasks import records

JOBS_SHOWN = 50  # rows of the jobs page, by default
MAX_JOBS_SHOWN = 1_000
EVENTS_SHOWN = 100
LOG_TAIL = 64 << 10  # bytes of each log a job page shows at first
PLOT_MINUTES = 60  # the throughput plot's span
PLOT_POINTS = 120  # steps of a transform's units-over-time chart


class NotFound(Exception):
    """The page names nothing the journal holds: a 404, with this text."""


def e(value: Any) -> str:
    return escape("" if value is None else str(value))


def state_badge(state: str) -> str:
    return f'<span class="state {e(state)}">{e(state)}</span>'


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (escape what comes from a job)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def job_link(job: int) -> str:
    return f'<a href="/jobs/{job}">{job}</a>'


# --- the overview --------------------------------------------------------------------------


def overview(conn: sqlite3.Connection, daemon: dict[str, Any] | None) -> str:
    """The daemon, each pool's workers (the `gsup queues` table), throughput, events."""
    parts = [_daemon_line(daemon), '<section class="pools">']
    for pool in queries.queues_snapshot(conn, pending_limit=5):
        parts.append(_pool_block(pool))
    parts.append("</section>")
    parts.append(f"<h2>Throughput</h2>{throughput_plot(conn, time.time())}")
    rows = queries.events_after(conn, max(0, queries.last_event(conn) - 20), None, ALL_EVENTS, 20)
    parts.append("<h2>Latest events</h2>" + events_table(list(reversed(rows))))
    return "".join(parts)


def _daemon_line(daemon: dict[str, Any] | None) -> str:
    if daemon is None:
        return '<p class="daemon down">daemon: not running (the journal as it was left)</p>'
    state = "stopping" if daemon["stopping"] else "running"
    troubles = [f"{e(p['name'])}: {e(p['trouble'])}" for p in daemon["pools"] if p["trouble"]]
    troubles += [f"{e(name)}: {e(b['trouble'])}" for name, b in daemon["backends"].items()
                 if b["trouble"] and b["in_flight"]]  # fmt: skip
    trouble = "".join(f"<br><span class=trouble>{t}</span>" for t in troubles)
    return (
        f'<p class="daemon up">daemon: {state}, gsup {e(daemon["version"])}, pid {daemon["pid"]},'
        f" up {duration(time.time() - daemon['started'])}{trouble}</p>"
    )


def _pool_block(pool: queries.PoolSnapshot) -> str:
    now = time.time()
    by_worker = {job["worker"]: job for job in pool.running}
    rows = []
    for index in range(pool.threads):
        job = by_worker.get(f"Worker_{index}")
        command = f"#{job_link(job['id'])} {e(job['display'])}" if job else "idle"
        rows.append([f"Worker_{index}", command, e(timeout_left(job, now)) if job else "N/A"])
    frozen = " (frozen)" if pool.frozen else ""
    pending = "".join(
        f"<li>#{job_link(job['id'])} [p{job['priority']}] {e(job['display'])}</li>"
        for job in pool.pending
    )
    more = pool.pending_count - len(pool.pending)
    pending += f"<li>… and {more} more</li>" if more > 0 else ""
    return (
        f'<div class="pool" id="pool-{e(pool.name)}"><h3>gsup {e(pool.name)} threads{frozen}</h3>'
        + table(["Name", "Command", "Timeout"], rows)
        + f"<p>gsup {e(pool.name)} queue: {pool.pending_count} pending</p><ul>{pending}</ul></div>"
    )


def throughput_plot(conn: sqlite3.Connection, now: float) -> str:
    """State changes per minute over the last hour, as SVG bars (drawn here: no
    script): the events of each minute are counted by their numbers, found by binary
    search, so that a busy hour costs no more than a quiet one."""
    bounds = [_first_event_after(conn, now - 60 * (PLOT_MINUTES - i)) for i in range(PLOT_MINUTES)]
    bounds.append(queries.last_event(conn) + 1)
    counts = [after - before for before, after in itertools.pairwise(bounds)]
    return bar_plot(counts, "state changes per minute, the last hour", "throughput")


def _first_event_after(conn: sqlite3.Connection, moment: float) -> int:
    """The number of the first event at or after `moment`: events are numbered in the
    order they are written, so their times rise with their numbers (a binary search
    on the primary key, not a scan)."""
    low, high = 1, queries.last_event(conn) + 1
    while low < high:
        middle = (low + high) // 2
        row = conn.execute(
            "SELECT at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (middle,)
        ).fetchone()
        if row is None or row[0] >= moment:
            high = middle
        else:
            low = middle + 1
    return low


def bar_plot(counts: list[int], title: str, name: str) -> str:
    width, height = 600, 120
    most = max(counts) or 1
    step = width / len(counts)
    bars = "".join(
        f'<rect x="{i * step:.1f}" y="{height - h:.1f}" width="{step - 1:.1f}" height="{h:.1f}">'
        f"<title>{count}</title></rect>"
        for i, count in enumerate(counts)
        if (h := height * count / most)
    )
    return (
        f'<figure class="plot {name}"><svg viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="{e(title)}">{bars}</svg><figcaption>{e(title)}; at most {max(counts)}'
        "</figcaption></figure>"
    )


# --- jobs ------------------------------------------------------------------------------------


def jobs_page(conn: sqlite3.Connection, params: dict[str, str]) -> str:
    state = params.get("state") or None
    pool = params.get("queue") or None
    try:
        limit = min(MAX_JOBS_SHOWN, max(1, int(params.get("limit") or JOBS_SHOWN)))
    except ValueError:
        limit = JOBS_SHOWN
    if state is not None and state not in State.__members__.values():
        raise NotFound(f"no state {state!r}; choose from {', '.join(State)}")
    if pool is not None and pool not in EXECUTOR_NAMES:
        raise NotFound(f"no queue {pool!r}; choose from {', '.join(EXECUTOR_NAMES)}")
    found = queries.list_jobs(conn, state, pool, limit)
    rows = [
        [job_link(job["id"]), state_badge(job["state"]), e(job["pool"]), e(job["display"]),
         str(job["attempts"]), e(short_time(job["created"])), e(job["reason"] or "")]
        for job in found
    ]  # fmt: skip
    return _filters(state, pool, limit) + table(
        ["ID", "State", "Queue", "Command", "Tries", "Created", "Reason"], rows, "jobs"
    )


def _filters(state: str | None, pool: str | None, limit: int) -> str:
    def options(values: list[str], chosen: str | None) -> str:
        return '<option value="">all</option>' + "".join(
            f"<option{' selected' if v == chosen else ''}>{e(v)}</option>" for v in values
        )

    return (
        '<form class="filters" method="get" action="/jobs">'
        f'<label>state <select name="state">{options([s.value for s in State], state)}</select>'
        f'</label><label>queue <select name="queue">{options(list(EXECUTOR_NAMES), pool)}</select>'
        f'</label><label>limit <input name="limit" type="number" min="1" value="{limit}"></label>'
        "<button>show</button></form>"
    )


def job_page(conn: sqlite3.Connection, job: int, logs: dict[str, tuple[str, int]]) -> str:
    """`logs`: the end of each stream's output, and the file's size (where to go on)."""
    details = queries.job_details(conn, job)
    if details is None:
        raise NotFound(f"no job {job}")
    fields = [
        ("state", state_badge(details["state"])), ("reason", e(details["reason"] or "-")),
        ("queue", e(details["pool"])), ("command", e(details["display"])),
        ("name", e(details["name"] or "-")), ("priority", str(details["priority"])),
        ("timeout", "-" if details["timeout"] is None else f"{details['timeout']:g}s"),
        ("retries", str(details["retries"])), ("attempts", str(details["attempts"])),
        ("created", e(when(details["created"]))), ("ended", e(when(details["ended"]))),
        ("result", f"<pre>{e(_cut(details['result']))}</pre>" if details["result"] else "-"),
        ("error", e(details["error"] or "-")),
    ]  # fmt: skip
    attempts = [
        [str(n), e(a["executor"] + (f"/{a['external_id']}" if a["external_id"] else "")),
         e(short_time(a["started"] or a["dispatched"])), e(short_time(a["ended"])),
         state_badge(a["outcome"] or ("running" if a["started"] else "handed over")),
         e("-" if a["exit_status"] is None else a["exit_status"]), e(a["reason"] or "")]
        for n, a in enumerate(details["attempts_list"], 1)
    ]  # fmt: skip
    events = [[e(when(ev["at"])), e(ev["before"] or "new"), state_badge(ev["after"]),
               e(ev["why"] or "")] for ev in details["events"]]  # fmt: skip
    traceback = f"<pre class=traceback>{e(details['traceback'])}</pre>" \
        if details["traceback"] else ""  # fmt: skip
    return (
        f'<h2 data-job="{job}" data-state="{e(details["state"])}">Job {job}</h2>'
        + table(["", ""], [[f"<b>{k}</b>", v] for k, v in fields], "fields") + traceback
        + "<h3>Attempts</h3>"
        + table(["#", "On", "Started", "Ended", "Outcome", "Exit", "Why"], attempts)
        + "<h3>Events</h3>" + table(["At", "Before", "After", "Why"], events)
        + "<h3>Output</h3>"
        + "".join(f'<h4>{stream}</h4><pre class="log" id="log-{stream}" data-next="{end}">'
                  f"{e(text)}</pre>" for stream, (text, end) in logs.items())
    )  # fmt: skip


def _cut(text: str, most: int = 2000) -> str:
    return text if len(text) <= most else text[:most] + f"… ({len(text):,} characters)"


# --- tasks -------------------------------------------------------------------------------


def tasks_page(conn: sqlite3.Connection) -> str:
    rows = [[f'<a href="/tasks/{r["id"]}">{r["id"]}</a>', e(r["name"]), state_badge(r["state"]),
             str(r["float"]), e(short_time(r["created"]))]
            for r in records.task_rows(conn, 100)]  # fmt: skip
    return table(["ID", "Name", "State", "Float", "Created"], rows, "tasks")


def task_page(conn: sqlite3.Connection, task: int, now: float) -> str:
    row = records.task_row(conn, task)
    if row is None:
        raise NotFound(f"no task {task}")
    transforms = records.progress(conn, task)
    parts = [f'<h2 data-task="{task}">Task {task} {e(row["name"])}: {state_badge(row["state"])}'
             f'{e(" (" + row["reason"] + ")") if row["reason"] else ""}</h2>']  # fmt: skip
    for t in transforms:
        ended = t.counts["done"] + t.counts["failed"] + t.counts["skipped"]
        counts = ", ".join(f"{n} {state}" for state, n in t.counts.items() if n) or "no units yet"
        merged = ""
        if t.merge is not None:
            m = t.merge
            merged = (f"<p>merged: {e(m.file or 'no file yet')} ({m.merged} units"
                      f"{', ' + format(m.size, ',') + ' bytes' if m.size else ''})"
                      f"{'; last merge ' + e(m.state) + ': ' + e(m.error) if m.error else ''}"
                      "</p>")  # fmt: skip
        parts.append(
            f'<div class="transform" data-transform="{e(t.name)}"><h3>{e(t.name)}: {e(t.state)}'
            f'</h3><progress max="{t.total}" value="{ended}"></progress>'
            f' <span class="count">{ended}/{t.total}</span> {e(counts)}{merged}'
            + units_plot(conn, t.id, row["created"], now)
            + "</div>"
        )
    return "".join(parts)


def units_plot(conn: sqlite3.Connection, transform: int, since: float, now: float) -> str:
    """A transform's units ended over time, in PLOT_POINTS steps (from the end times of
    its units' jobs, counted by step in SQL: a transform may have a million units)."""
    width, height = 600, 80
    step = max(now - since, 1e-3) / PLOT_POINTS
    by_step = dict(conn.execute(
        "SELECT min(CAST((j.ended - ?) / ? AS INTEGER), ?), count(*) FROM units u"
        " JOIN jobs j ON j.id = u.job WHERE u.transform = ? AND u.state IN ('done', 'failed')"
        " AND j.ended IS NOT NULL GROUP BY 1",
        (since, step, PLOT_POINTS - 1, transform),
    ).fetchall())  # fmt: skip
    total = sum(by_step.values())
    ended, points = 0, [(0.0, float(height))]
    for index in range(PLOT_POINTS):
        ended += by_step.get(index, 0)
        points.append((width * (index + 1) / PLOT_POINTS, height - height * ended / max(total, 1)))
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return (
        f'<figure class="plot units"><svg viewBox="0 0 {width} {height}" role="img"'
        f' aria-label="units ended over time"><polyline points="{path}"/></svg>'
        f"<figcaption>units ended over time: {total}</figcaption></figure>"
    )


# --- events -------------------------------------------------------------------------------


def events_page(conn: sqlite3.Connection) -> str:
    last = queries.last_event(conn)
    rows = queries.events_after(conn, max(0, last - EVENTS_SHOWN), None, ALL_EVENTS, EVENTS_SHOWN)
    return (
        f"<h2>Events</h2><p>Newest first, live. Resume a script with <code>gsup events"
        f" --follow --since {last}</code>.</p>" + events_table(list(reversed(rows)), "live-events")
    )


def events_table(rows: list[tuple], cls: str = "events") -> str:
    return table(["Seq", "At", "Job", "Change", "Why"], [event_cells(row) for row in rows], cls)


def event_cells(row: tuple) -> list[str]:
    seq, job, before, after, at, why = row
    return [str(seq), e(when(at)), job_link(job), f"{e(before or 'new')} → {state_badge(after)}",
            e(why or "")]  # fmt: skip
