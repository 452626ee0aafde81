"""What the supervisor reads of the jobs still to run: the dispatcher's next jobs, and
what a daemon left behind for recovery. With their retry policy, so the daemon's side of
the journal's reads (the rest are in `queries`, which every client imports).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gsup.journal.queries import QUEUED, QUEUED_INDEX, RUNNING, RUNNING_INDEX
from gsup.lifecycle import Policy

# --- a job's retry policy ----------------------------------------------------------

POLICY_COLUMNS = "retries, on_lost, attempts, lost_count, retry_delay, backoff, retry_on"


def policy_of(row: Sequence[Any]) -> Policy:
    """A job's retry policy from its POLICY_COLUMNS, in that order."""
    retries, on_lost, attempts, lost_count, retry_delay, backoff, retry_on = row
    return Policy(
        retries, on_lost, attempts, lost_count, retry_delay, backoff,
        None if retry_on is None else tuple(json.loads(retry_on)),
    )  # fmt: skip


# --- what the dispatcher reads -----------------------------------------------------


@dataclass(frozen=True)
class QueuedJob:
    """What the dispatcher needs of a queued job."""

    id: int
    kind: str
    target: str
    spec: str
    priority: int
    timeout: float | None
    policy: Policy


_QUEUED_JOB = f"SELECT id, kind, target, spec, priority, timeout, {POLICY_COLUMNS} FROM jobs"


def next_queued(
    conn: sqlite3.Connection,
    pool: str,
    limit: int,
    now: float,
    after: tuple[int, int] | None = None,
) -> list[QueuedJob]:
    """The next jobs of `pool` to run, by priority then FIFO, delayed retries once due:
    those that come `after` a (priority, id) if one is given."""
    where = f"{QUEUED} AND pool = ? AND (not_before IS NULL OR not_before <= ?)"
    params: list[Any] = [pool, now]
    if after is not None:
        where += " AND (priority, id) > (?, ?)"
        params += after
    rows = conn.execute(
        f"{_QUEUED_JOB} WHERE {where} ORDER BY priority, id LIMIT ?", (*params, limit)
    ).fetchall()
    return [QueuedJob(*row[:6], policy_of(row[6:])) for row in rows]


def next_retry_time(conn: sqlite3.Connection, pool: str, now: float) -> float | None:
    """When the earliest delayed retry of a pool falls due."""
    return conn.execute(
        f"SELECT min(not_before) FROM jobs WHERE {QUEUED} AND pool = ? AND not_before > ?",
        (pool, now),
    ).fetchone()[0]


# --- what recovery reads ----------------------------------------------------------


@dataclass(frozen=True)
class Unfinished:
    """A job the journal says is running, with its open attempt."""

    job: int
    pool: str
    priority: int
    timeout: float | None
    policy: Policy
    attempt: int | None
    executor: str | None
    backend: str | None
    external_id: str | None
    started: float | None
    kind: str = "call"


def unfinished(conn: sqlite3.Connection) -> tuple[int, list[Unfinished], list[Unfinished]]:
    """What a daemon left behind: how many jobs are queued; the running ones; and the
    queued ones that were handed to an executor (their start may not have reached
    the journal)."""
    (queued,) = conn.execute(f"SELECT count(*) FROM jobs {QUEUED_INDEX} WHERE {QUEUED}").fetchone()
    policy = ", ".join(f"j.{column}" for column in POLICY_COLUMNS.split(", "))
    columns = (
        "SELECT j.id, j.pool, j.priority, j.timeout, a.id, a.executor, a.backend,"
        f" a.external_id, a.started, j.kind, {policy}"
    )
    running = conn.execute(
        f"{columns} FROM jobs j {RUNNING_INDEX} LEFT JOIN attempts a ON a.id = j.attempt"
        f" AND a.ended IS NULL WHERE j.{RUNNING} ORDER BY j.id"
    ).fetchall()
    handed = conn.execute(
        f"{columns} FROM jobs j {QUEUED_INDEX} JOIN attempts a ON a.job = j.id"
        f" WHERE j.{QUEUED} AND a.ended IS NULL AND a.started IS NULL ORDER BY j.id"
    ).fetchall()
    return queued, *([Unfinished(*r[:4], policy_of(r[10:]), *r[4:10]) for r in rows]
                     for rows in (running, handed))  # fmt: skip
