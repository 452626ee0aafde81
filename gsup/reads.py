"""The journal as the query commands read it: plain SQL on a read-only connection.

Kept apart from journal.py so that `gsup jobs`, `gsup queues` and `gsup show` need
neither peewee nor the daemon: they work with the daemon down, and start fast.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsup.config import POOL_NAMES

SUMMARY = (
    "id, name, pool, state, display, priority, attempts, worker, created, started, ended, reason"
)


class NoJournal(Exception):
    pass


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection; it never creates or changes the journal."""
    if not path.exists():
        raise NoJournal(f"no journal at {path} (has `gsup daemon` run here?)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    conn.row_factory = sqlite3.Row
    return conn


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    return [dict(row) for row in cursor.fetchall()]


def list_jobs(
    conn: sqlite3.Connection, state: str | None, pool: str | None, limit: int
) -> list[dict[str, Any]]:
    """Jobs, newest first."""
    where = [clause for clause, value in (("state = ?", state), ("pool = ?", pool)) if value]
    sql = f"SELECT {SUMMARY} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    params = [value for value in (state, pool) if value]
    return _dicts(conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)))


def job_details(conn: sqlite3.Connection, job: int) -> dict[str, Any] | None:
    """All of a job's fields, its runnable spec decoded, and its events in order."""
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job,)).fetchone()
    if row is None:
        return None
    details = dict(row)
    details["spec"] = json.loads(details["spec"])
    details["events"] = _dicts(
        conn.execute("SELECT before, after, at, why FROM events WHERE job = ? ORDER BY seq", (job,))
    )
    return details


def attempts_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run of a job, derived from its events: from `running` to what followed."""
    attempts: list[dict[str, Any]] = []
    for event in events:
        if event["after"] == "running":
            attempts.append({"number": len(attempts) + 1, "dispatched": event["at"]})
        elif attempts and event["before"] == "running":
            attempts[-1].update(ended=event["at"], state=event["after"], why=event["why"])
    return attempts


@dataclass
class PoolSnapshot:
    name: str
    threads: int
    frozen: bool
    running: list[dict[str, Any]]  # jobs a worker has taken up
    pending: list[dict[str, Any]]  # the first waiting jobs, handed-over ones first
    pending_count: int


_QUEUE_FIELDS = "id, display, priority, worker, started, timeout, not_before"


def queues_snapshot(conn: sqlite3.Connection, pending_limit: int = 10) -> list[PoolSnapshot]:
    """What `gsup queues` shows, from the journal alone."""
    pools = conn.execute("SELECT name, threads, frozen FROM pools").fetchall()
    order = {name: index for index, name in enumerate(POOL_NAMES)}
    snapshots = []
    for name, threads, frozen in sorted(pools, key=lambda p: (order.get(p[0], 99), p[0])):
        running = _dicts(
            conn.execute(
                f"SELECT {_QUEUE_FIELDS} FROM jobs WHERE state = 'running' AND pool = ?"
                " AND worker IS NOT NULL",
                (name,),
            )
        )
        handed_over = _dicts(
            conn.execute(
                f"SELECT {_QUEUE_FIELDS} FROM jobs WHERE state = 'running' AND pool = ?"
                " AND worker IS NULL ORDER BY id",
                (name,),
            )
        )
        queued = _dicts(
            conn.execute(
                f"SELECT {_QUEUE_FIELDS} FROM jobs WHERE state = 'queued' AND pool = ?"
                " ORDER BY priority, id LIMIT ?",
                (name, pending_limit),
            )
        )
        (queued_count,) = conn.execute(
            "SELECT count(*) FROM jobs WHERE state = 'queued' AND pool = ?", (name,)
        ).fetchone()
        snapshots.append(
            PoolSnapshot(
                name=name,
                threads=threads,
                frozen=bool(frozen),
                running=running,
                pending=(handed_over + queued)[:pending_limit],
                pending_count=len(handed_over) + queued_count,
            )
        )
    return snapshots
