"""Scale: a journal of a million jobs, and the daemon's memory over a million jobs run.

The big journal is built fast but true to the schema: a real daemon writes two
template jobs (one run to its end, one queued in the frozen user pool), then their
rows and events are cloned with executemany under new ids. Whatever columns the
journal has, the clones have them, as the daemon wrote them.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gsup_side import (
    CHECKED,
    WAIT_TIMEOUT,
    GsupDaemon,
    Workspace,
    check_done,
    gsup_cli,
    new_home,
    running_daemon,
)
from bench.measure import descendants, rss_kb, run_seconds

TIME_COLUMNS = {"created", "dispatched", "started", "ended", "at"}  # shifted: clones in id order
SPACING = 1e-4  # seconds between cloned jobs
ADD_BATCH = 10_000  # jobs per add_many call in the RSS run (the API's request size)
RSS_SETTLE = 0.5  # seconds after the last job ends before memory is read


# --- the million-job journal ----------------------------------------------------------


def build_journal(ws: Workspace, done: int, queued: int) -> Path:
    """A state dir whose journal holds `done` ended jobs, then `queued` jobs waiting in
    the frozen user pool (newest last, as a real history would be)."""
    home = new_home(ws.root)
    with running_daemon(home) as daemon:
        queues = daemon.queues()
        ended = queues.add(ws.noop)
        ended.result(WAIT_TIMEOUT)
        queues.freeze("user")  # kept in the journal's pools table across restarts
        waiting = queues.add(ws.noop)
    first_clone = waiting.id + 1
    conn = sqlite3.connect(home / "journal.sqlite", isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # building the fixture is not measured
        conn.execute("BEGIN")
        _clone(conn, ended.id, range(first_clone, first_clone + done - 1))
        start = first_clone + done - 1
        _clone(conn, waiting.id, range(start, start + queued - 1))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a long-lived journal is checkpointed
    finally:
        conn.close()
    return home


def _clone(conn: sqlite3.Connection, template: int, ids: range) -> None:
    """Copy job `template`, its attempts, events and result under each id of `ids`."""
    job_columns, job_rows = _select(conn, "SELECT * FROM jobs WHERE id = ?", template)
    conn.executemany(_insert("jobs", job_columns), _copies(job_columns, job_rows[0], template, ids))
    for table, key in (("attempts", "id"), ("events", "seq")):
        columns, rows = _select(conn, f"SELECT * FROM {table} WHERE job = ? ORDER BY {key}",
                                template, allow_none=table == "attempts")  # fmt: skip
        keep = [i for i, name in enumerate(columns) if name != key]  # SQLite numbers them
        columns = [columns[i] for i in keep]
        copies = (
            copy
            for row in rows
            for copy in _copies(columns, [row[i] for i in keep], template, ids, id_column="job")
        )
        conn.executemany(_insert(table, columns), copies)
    columns, rows = _select(conn, "SELECT * FROM results WHERE job = ?", template, allow_none=True)
    for row in rows:
        conn.executemany(_insert("results", columns),
                         _copies(columns, row, template, ids, id_column="job"))  # fmt: skip


def _select(
    conn: sqlite3.Connection, sql: str, job: int, allow_none: bool = False
) -> tuple[list[str], list[tuple]]:
    cursor = conn.execute(sql, (job,))
    columns = [c[0] for c in cursor.description]
    rows = cursor.fetchall()
    if not rows and not allow_none:
        raise RuntimeError(f"the template job {job} is missing: {sql}")
    return columns, rows


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _copies(
    columns: Sequence[str],
    row: Sequence[Any],
    template: int,
    ids: range,
    id_column: str = "id",
) -> Iterator[list[Any]]:
    at_id = columns.index(id_column)
    times = [i for i, name in enumerate(columns) if name in TIME_COLUMNS and row[i] is not None]
    for job in ids:
        copy = list(row)
        copy[at_id] = job
        shift = (job - template) * SPACING
        for i in times:
            copy[i] = row[i] + shift
        yield copy


def check_journal(home: Path, queued: int) -> None:
    """The CLI sees what was built: the user pool frozen with `queued` jobs pending."""
    out = subprocess.run(
        [*gsup_cli(), "queues", "--json", "--home", str(home)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    pools = {pool["name"]: pool for pool in json.loads(out)["pools"]}
    user = pools["user"]
    if not user["frozen"] or user["pending_count"] != queued:
        raise RuntimeError(f"the built journal is not as planned: {user}")


# --- figures on it ------------------------------------------------------------------------


def ready_seconds(home: Path, runs: int) -> list[tuple[float, float]]:
    """Seconds from spawning `gsup daemon` to its ready line, and to its journal check
    having passed (from then on it dispatches), one start after another."""
    seconds = []
    for _ in range(runs):
        daemon = GsupDaemon(home)
        try:
            daemon.start()
            seconds.append((daemon.wait_ready(), daemon.wait_seen(CHECKED)))
        finally:
            daemon.stop()
    return seconds


@dataclass
class CliTimes:
    floor: list[float]  # python -c "import typer": the process start every CLI pays
    jobs: list[float]  # gsup jobs --limit 50
    queues: list[float]  # gsup queues


def cli_seconds(home: Path, runs: int) -> CliTimes:
    """Whole-process times of the query commands on the big journal, daemon running,
    interleaved with the floor the CLI library sets."""
    floor = [sys.executable, "-c", "import typer"]
    jobs = [*gsup_cli(), "jobs", "--limit", "50", "--home", str(home)]
    queues = [*gsup_cli(), "queues", "--home", str(home)]
    times = CliTimes([], [], [])
    with running_daemon(home):
        for argv in (floor, jobs, queues):  # warm the page cache
            run_seconds(argv)
        for _ in range(runs):
            times.floor.append(run_seconds(floor))
            times.jobs.append(run_seconds(jobs))
            times.queues.append(run_seconds(queues))
    return times


# --- a pruned journal against a fresh one -------------------------------------------------

PRUNED_AGE_DAYS = 30  # the jobs to prune are made this old; `gsup prune --older-than 7d`


@dataclass
class PrunedVsFresh:
    prune_seconds: float  # `gsup prune --older-than 7d`, daemon down, on the big journal
    ready: tuple[list[float], list[float]]  # start to ready: pruned, fresh
    jobs: tuple[list[float], list[float]]  # gsup jobs --limit 50: pruned, fresh


def pruned_vs_fresh(ws: Workspace, total: int, keep: int, ready_runs: int,
                    cli_runs: int) -> PrunedVsFresh:  # fmt: skip
    """A journal that ran `total` jobs, pruned to its newest `keep` (a tenth of them
    queued), against a fresh journal of the same `keep` jobs."""
    queued = keep // 10
    fresh = build_journal(ws, keep - queued, queued)
    pruned = build_journal(ws, total - queued, queued)
    conn = sqlite3.connect(pruned / "journal.sqlite", isolation_level=None)
    try:  # all but the newest `keep` ran a month ago
        (last_old,) = conn.execute(
            "SELECT id FROM jobs ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,)
        ).fetchone()
        shift = PRUNED_AGE_DAYS * 86400
        conn.execute("UPDATE jobs SET created = created - ?, ended = ended - ? WHERE id <= ?",
                     (shift, shift, last_old))  # fmt: skip
    finally:
        conn.close()
    prune = run_seconds([*gsup_cli(), "prune", "--older-than", "7d", "--home", str(pruned)])
    check_journal(pruned, queued)
    times = {home: ([ready for ready, _ in ready_seconds(home, ready_runs)],
                    cli_seconds(home, cli_runs).jobs) for home in (pruned, fresh)}  # fmt: skip
    return PrunedVsFresh(
        prune,
        (times[pruned][0], times[fresh][0]),
        (times[pruned][1], times[fresh][1]),
    )


# --- memory over a long run -----------------------------------------------------------------


@dataclass
class RssReading:
    processed: int
    supervisor_kb: int
    tree_kb: int  # the supervisor and its pool processes (shared pages counted in each)
    rate: float  # jobs/s, added and run, from the start of the run to this reading


def rss_over_run(ws: Workspace, checkpoints: Sequence[int]) -> list[RssReading]:
    """Push no-op jobs through one daemon with add_many, 10,000 at a time (the next batch
    is added while the last one runs), and read its memory when `checkpoints` jobs
    have been processed."""
    readings = []
    with running_daemon(new_home(ws.root)) as daemon:
        queues = daemon.queues()
        submitted, busy = 0, 0.0
        for checkpoint in checkpoints:
            start = time.perf_counter()
            running: list[int] = []
            while submitted < checkpoint:
                count = min(ADD_BATCH, checkpoint - submitted)
                added = [job.id for job in queues.add_many(ws.noop, [()] * count)]
                submitted += count
                if running:
                    check_done(queues.client.wait(running, WAIT_TIMEOUT), len(running))
                running = added
            check_done(queues.client.wait(running, WAIT_TIMEOUT), len(running))
            busy += time.perf_counter() - start
            time.sleep(RSS_SETTLE)
            tree = sum(rss_kb(pid) for pid in descendants(daemon.pid))
            readings.append(RssReading(checkpoint, rss_kb(daemon.pid), tree, submitted / busy))
    return readings
