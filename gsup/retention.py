"""Retention: deleting ended jobs older than an age, with all the journal and the
logs hold of them (`gsup prune`, and the daemon's daily prune under `keep_days`).

The journal has one writer. With the daemon up, it prunes, in batches between its
other work (the `prune` request); with the daemon down, `prune` here does it on the
journal directly while holding the daemon's lock, so that no daemon starts meanwhile.

Which jobs: those in an end state (never queued or running) that ended before the
cutoff. They are found by walking the jobs in id order, a batch at a time, up to the
first job created at or after the cutoff (a job ends after it is created, and ids
are given in the order jobs are created): no index is needed, and nothing is added
to the hot path of the daemon.

WAL policy: SQLite checkpoints the WAL every 1,000 pages and, with
journal_size_limit, truncates it back to 16 MiB when it starts over; after a prune
the WAL is checkpointed and truncated to nothing (TRUNCATE), unless readers are in
the way at that moment (then the limit still applies at the next reset).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsup.config import Paths
from gsup.states import END_STATES

BATCH = 2_000  # jobs looked at, and deleted at most, per batch (per turn of the daemon)
WAL_LIMIT = 16 * 1024 * 1024  # bytes of WAL kept after a checkpoint (journal_size_limit)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_AGE = 36_500 * 86_400.0  # a century: older cutoffs are before any job, and before time_t
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class PruneError(Exception):
    """A prune that cannot be done; the message says why."""


def parse_duration(text: str) -> float:
    """Seconds of `30s`, `10m`, `12h` or `7d`; ValueError with a one-line reason."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: a number and s, m, h or d (30s, 12h, 7d)")
    seconds = float(match[1]) * UNITS[match[2]]
    if seconds <= 0:
        raise ValueError(f"{text!r}: the age must be more than 0")
    if seconds > MAX_AGE:
        raise ValueError(f"{text!r}: the age must be at most 36500d")
    return seconds


def check_state(state: str | None) -> str | None:
    if state is not None and state not in END_STATES:
        ends = ", ".join(sorted(END_STATES))
        raise ValueError(f"only ended jobs are pruned: the state must be one of {ends}")
    return state


# --- one batch, on whichever connection writes -------------------------------------------


@dataclass
class Scan:
    """Where a prune is: the jobs before `after` have been looked at."""

    cutoff: float  # wall time: jobs that ended before it go
    state: str | None  # only jobs in this end state (None: any end state)
    after: int = 0
    done: bool = False
    jobs: int = 0  # deleted so far
    logs: int = 0  # log files deleted so far


def next_batch(conn: sqlite3.Connection, scan: Scan, limit: int = BATCH) -> list[int]:
    """The ids of the next batch's jobs to delete; moves `scan` past what it looked at."""
    rows = conn.execute(
        "SELECT id, state, ended, created FROM jobs WHERE id > ? ORDER BY id LIMIT ?",
        (scan.after, limit),
    ).fetchall()
    states = {scan.state} if scan.state else END_STATES
    doomed = []
    for job, state, ended, created in rows:
        if created >= scan.cutoff:
            scan.done = True
            break
        if state in states and ended is not None and ended < scan.cutoff:
            doomed.append(job)
        scan.after = job
    if len(rows) < limit:
        scan.done = True
    return doomed


DELETES = tuple(
    f"DELETE FROM {table} WHERE {column} = ?"
    for table, column in (
        ("events", "job"),
        ("attempts", "job"),
        ("results", "job"),
        ("jobs", "id"),
    )
)
# A keyed batch is forgotten once none of its jobs is left (see schema.Batch).
FORGET_BATCHES = (
    "DELETE FROM batches WHERE created < ?1 AND NOT EXISTS"
    " (SELECT 1 FROM jobs WHERE id >= batches.first AND id < batches.first + batches.count)"
)
# A task that ended before the cutoff is forgotten whole (its unit folders are left).
FORGET_TASKS = (
    *(f"DELETE FROM {table} WHERE task IN (SELECT id FROM tasks WHERE ended < ?1)"
      for table in ("merges", "units", "transforms")),
    "DELETE FROM tasks WHERE ended < ?1",
)  # fmt: skip


def forgotten(state: str | None) -> tuple[str, ...]:
    """What a prune forgets besides jobs (each statement takes the cutoff): tasks only
    when it prunes jobs of every end state (a task's jobs are of several)."""
    return (FORGET_BATCHES, *(FORGET_TASKS if state is None else ()))


# The numbered tables: their number column, and the mark of the highest number given.
ID_MARKS = {
    "jobs": ("id", "last_job_id"),
    "attempts": ("id", "last_attempt_id"),
    "events": ("seq", "last_event_seq"),
    "tasks": ("id", "last_task_id"),  # a task's id names its output folders too
}


def highest_ids(conn: sqlite3.Connection) -> dict[str, int]:
    """The marks that keep pruned ids from being given again (see schema.Mark)."""
    marks = dict(conn.execute("SELECT name, value FROM marks"))
    return {
        mark: max(
            conn.execute(f"SELECT coalesce(max({column}), 0) FROM {table}").fetchone()[0],
            marks.get(mark, 0),
        )
        for table, (column, mark) in ID_MARKS.items()
    }


MARK = (
    "INSERT INTO marks (name, value) VALUES (?, ?)"
    " ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)"
)


def output_files(conn: sqlite3.Connection, paths: Paths, jobs: Sequence[int]) -> list[Path]:
    """The output files of the jobs' attempts, and each job's own (from before attempts
    had files of their own); read before the attempts' rows go."""
    streams = ("out", "err")
    files = [paths.job_output(job, stream) for job in jobs for stream in streams]
    for start in range(0, len(jobs), 500):  # below SQLite's limit of bound values
        chunk = jobs[start : start + 500]
        rows = conn.execute(
            f"SELECT job, id FROM attempts WHERE job IN ({','.join('?' * len(chunk))})", chunk
        )
        files += [paths.job_output(job, s, attempt) for job, attempt in rows for s in streams]
    return files


def remove_logs(files: Sequence[Path]) -> int:
    """Delete output files; how many there were."""
    removed = 0
    for file in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file)
            removed += 1
    return removed


def checkpoint(conn: sqlite3.Connection, wait_ms: int) -> bool:
    """Checkpoint the WAL and truncate it to nothing, waiting at most `wait_ms` for
    readers; whether it was done."""
    (previous,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError:
        busy = 1
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(previous)}")
    return not busy


# --- the command -------------------------------------------------------------------------


@dataclass
class Pruned:
    jobs: int
    logs: int
    by: str  # "daemon" or "journal" (the daemon was down)

    def line(self) -> str:
        where = "by the daemon" if self.by == "daemon" else "the daemon is down"
        return f"pruned {self.jobs} jobs and {self.logs} log files ({where})"


def prune(home: Path, older_than: float, state: str | None) -> Pruned:
    """Delete ended jobs older than `older_than` seconds (of `state` only, if given):
    through the daemon if it is up, else on the journal. PruneError says why not."""
    from gsup.client import Client, DaemonNotRunning, GsupError

    paths = Paths(home)
    for _ in range(50):  # a daemon starting holds the lock before it listens
        try:
            with Client(home) as client:
                reply = client.request("prune", older_than=older_than, state=state)
            return Pruned(reply["jobs"], reply["logs"], "daemon")
        except DaemonNotRunning:
            pass
        except GsupError as exc:
            raise PruneError(str(exc)) from None
        done = prune_journal(paths, older_than, state)
        if done is not None:
            return done
        time.sleep(0.1)
    raise PruneError(f"a daemon holds the lock of {paths.home} but does not answer")


def prune_journal(paths: Paths, older_than: float, state: str | None) -> Pruned | None:
    """Prune the journal directly, holding the daemon's lock; None if a daemon holds
    it (one is starting)."""
    from gsup.journal.queries import SCHEMA_VERSION, journal_version
    from gsup.supervisor.lifetime import DaemonError, DaemonRunning, take_lock

    if not paths.journal.exists():
        raise PruneError(f"no journal at {paths.journal} (has `gsup daemon` run here?)")
    try:
        lock = take_lock(paths)
    except DaemonRunning:
        return None
    except (DaemonError, OSError) as exc:
        raise PruneError(str(exc)) from None
    try:
        conn = sqlite3.connect(paths.journal, isolation_level=None, timeout=5)
        try:
            version = journal_version(conn)
            if version != SCHEMA_VERSION:
                raise PruneError(
                    f"the journal {paths.journal} is version {version}; this gsup prunes"
                    f" version {SCHEMA_VERSION} (`gsup daemon` upgrades it when it starts)"
                )
            conn.execute("PRAGMA journal_mode = wal")
            conn.execute("PRAGMA synchronous = full")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
            scan = Scan(time.time() - older_than, state)
            _in_transaction(conn, lambda: conn.executemany(MARK, highest_ids(conn).items()))
            while not scan.done:
                doomed: list[int] = []
                files: list[Path] = []

                def batch(doomed: list[int] = doomed, files: list[Path] = files) -> None:
                    doomed += next_batch(conn, scan)
                    files += output_files(conn, paths, doomed)
                    for sql in DELETES:
                        conn.executemany(sql, [(job,) for job in doomed])

                _in_transaction(conn, batch)
                scan.jobs += len(doomed)
                scan.logs += remove_logs(files)
            _in_transaction(conn, lambda: [conn.execute(sql, (scan.cutoff,))
                                           for sql in forgotten(scan.state)])  # fmt: skip
            checkpoint(conn, 5000)
        except sqlite3.Error as exc:
            raise PruneError(f"cannot prune the journal {paths.journal}: {exc}") from None
        finally:
            conn.close()
    finally:
        os.close(lock)
    return Pruned(scan.jobs, scan.logs, "journal")


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], Any]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        work()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
