"""The reads of the journal, as plain SQL over a sqlite3 connection.

One definition of each query, shared by the supervisor (through its writing
connection, inside its turn's transaction) and by the CLI (a read-only connection:
`gsup jobs`, `queues`, `show` work with the daemon down and start fast, without
peewee or the life-cycle's rules). The dispatcher's and recovery's reads, which carry
a job's retry policy, are in `pending`. State names come from `gsup.states`; a partial
index is only used when a query repeats its condition as written, so they are put
into the SQL text.
"""

from __future__ import annotations

import json
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsup.config import POOL_NAMES, SLURM, Paths, resolve_home
from gsup.errors import GsupError
from gsup.peers import untrusted_journal
from gsup.states import State

QUEUED = f"state = '{State.QUEUED}'"  # as the partial index jobs_queued_order says it
RUNNING = f"state = '{State.RUNNING}'"  # as jobs_running says it
# Partial indexes the planner cannot know are small: named where no pool narrows a query.
QUEUED_INDEX = "INDEXED BY jobs_queued_order"
RUNNING_INDEX = "INDEXED BY jobs_running"


# PRAGMA user_version of a journal that schema.py's models describe. 0.1.0 wrote
# version 1 (it left user_version at 0: a file with a `jobs` table and version 0).
SCHEMA_VERSION = 7


class Unreadable(Exception):
    """The journal cannot be read here; the message says why."""


DAMAGE = ("file is not a database", "database disk image is malformed")


def is_damage(exc: BaseException) -> bool:
    """Whether SQLite found the journal's file damaged (SQLITE_NOTADB, SQLITE_CORRUPT)."""
    return any(text in str(exc) for text in DAMAGE)


def _hint(exc: BaseException) -> str:
    return " (see: gsup journal check)" if is_damage(exc) else ""


def connect(path: Path) -> sqlite3.Connection:
    """A read-only connection to a journal of this version; it never creates or
    changes the journal."""
    check_journal_file(path)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        version = journal_version(conn)
    except sqlite3.Error as exc:
        raise Unreadable(f"cannot read the journal {path}: {exc}{_hint(exc)}") from None
    if version != SCHEMA_VERSION:
        conn.close()
        raise Unreadable(
            f"the journal {path} is version {version}; this gsup reads version"
            f" {SCHEMA_VERSION}"
            + (
                " (`gsup daemon` upgrades it when it starts)"
                if 0 < version < SCHEMA_VERSION
                else ""
            )
        )
    return conn


def check_journal_file(path: Path) -> None:
    """Unreadable unless `path` is a journal file to read: there, a regular file (a FIFO
    would block its reader), and ours or made where no one else could (peers.py)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise Unreadable(f"no journal at {path} (has `gsup daemon` run here?)") from None
    except OSError as exc:
        raise Unreadable(f"cannot read the journal {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise Unreadable(f"{path} is not a journal: not a regular file")
    distrust = untrusted_journal(path)
    if distrust is not None:
        raise Unreadable(distrust)


@contextmanager
def read_journal(home: str | Path | None) -> Iterator[sqlite3.Connection]:
    """The journal of a state dir, read-only, for the CLI and the API; GsupError (one
    line) if it cannot be read."""
    paths = Paths(resolve_home(home))
    try:
        conn = connect(paths.journal)
    except Unreadable as exc:
        raise GsupError(str(exc)) from None
    try:
        yield conn
    except sqlite3.Error as exc:
        raise GsupError(f"cannot read the journal: {exc}{_hint(exc)}") from None
    finally:
        conn.close()


def journal_version(conn: sqlite3.Connection) -> int:
    """The schema version of an open journal; 0 for an empty file."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if (
        version == 0
        and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
        ).fetchone()
    ):
        return 1  # 0.1.0 did not set user_version
    return version


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# --- what the supervisor's handlers read ------------------------------------------


def queued_jobs(conn: sqlite3.Connection, pool: str | None) -> list[tuple[int, str]]:
    """(id, pool) of every queued job, of one pool or of all."""
    if pool is None:
        return conn.execute(f"SELECT id, pool FROM jobs {QUEUED_INDEX} WHERE {QUEUED}").fetchall()
    return conn.execute(
        f"SELECT id, pool FROM jobs WHERE {QUEUED} AND pool = ?", (pool,)
    ).fetchall()


def states_of(conn: sqlite3.Connection, jobs: list[int]) -> dict[int, str]:
    states: dict[int, str] = {}
    for start in range(0, len(jobs), 500):
        chunk = jobs[start : start + 500]
        marks = ",".join("?" * len(chunk))
        states.update(conn.execute(f"SELECT id, state FROM jobs WHERE id IN ({marks})", chunk))
    return states


def job_row(conn: sqlite3.Connection, job: int) -> dict[str, Any] | None:
    """A job's fields, and `result_size` (bytes; None: no result), not its result."""
    found = _dicts(
        conn.execute(
            "SELECT j.*, r.size AS result_size FROM jobs j LEFT JOIN results r ON r.job = j.id"
            " WHERE j.id = ?",
            (job,),
        )
    )
    return found[0] if found else None


def job_result(conn: sqlite3.Connection, job: int) -> str | None:
    """A job's result, whole (the only read of a result's text)."""
    row = conn.execute("SELECT result FROM results WHERE job = ?", (job,)).fetchone()
    return None if row is None else row[0]


SUMMARY_FIELDS = ("id", "name", "pool", "state", "reason", "result_type", "result_size", "error")
# A result up to this size travels in a reply; a larger one is read from the journal
# by the client (`result` is then left out): a reply must stay within a message.
INLINE_RESULT = 1_000_000


def summary(conn: sqlite3.Connection, row: dict[str, Any], inline: int | None = None) -> dict:
    """What `get` answers about a job (the API's handles): with its result if that is
    at most `inline` bytes (None: whatever its size)."""
    found = {key: row[key] for key in SUMMARY_FIELDS}
    size = row["result_size"]
    if size is None:
        found["result"] = None
    elif inline is None or size <= inline:
        found["result"] = job_result(conn, row["id"])
    return found


def pool_frozen(conn: sqlite3.Connection, pool: str) -> bool:
    row = conn.execute("SELECT frozen FROM pools WHERE name = ?", (pool,)).fetchone()
    return bool(row and row[0])


# --- what the CLI shows -------------------------------------------------------------

LIST_FIELDS = "id, name, pool, state, display, priority, attempts, created, ended, reason"


def list_jobs(
    conn: sqlite3.Connection, state: str | None, pool: str | None, limit: int
) -> list[dict[str, Any]]:
    """Jobs, newest first."""
    where = [clause for clause, value in (("state = ?", state), ("pool = ?", pool)) if value]
    sql = f"SELECT {LIST_FIELDS} FROM jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    params = [value for value in (state, pool) if value]
    return _dicts(conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*params, limit)))


def job_details(conn: sqlite3.Connection, job: int) -> dict[str, Any] | None:
    """All of a job's fields, its runnable spec decoded, its attempts and its events."""
    details = job_row(conn, job)
    if details is None:
        return None
    details["result"] = job_result(conn, job) if details["result_size"] is not None else None
    details["spec"] = json.loads(details["spec"])
    details["attempts_list"] = _dicts(
        conn.execute("SELECT * FROM attempts WHERE job = ? ORDER BY id", (job,))
    )
    details["events"] = _dicts(
        conn.execute("SELECT before, after, at, why FROM events WHERE job = ? ORDER BY seq", (job,))
    )
    return details


@dataclass
class PoolSnapshot:
    name: str
    threads: int
    frozen: bool
    running: list[dict[str, Any]]  # jobs a worker has started
    pending: list[dict[str, Any]]  # the first queued jobs, in the order they will run
    pending_count: int


@dataclass
class SlurmSnapshot:
    running: list[dict[str, Any]]  # the first jobs Slurm has: id, display, Slurm id, state
    running_count: int
    queued_count: int  # waiting in gsup for room in Slurm (slots)


def slurm_snapshot(conn: sqlite3.Connection, limit: int = 10) -> SlurmSnapshot:
    """The Slurm backend's jobs, for `gsup queues`: Slurm's state of each is its running
    attempt's reason (`Slurm: PENDING (Resources)`)."""
    running = _dicts(
        conn.execute(
            "SELECT j.id, j.display, a.external_id AS slurm_id, a.reason AS state FROM jobs j"
            f" JOIN attempts a ON a.id = j.attempt WHERE j.{RUNNING} AND j.pool = ?"
            " ORDER BY j.id LIMIT ?",
            (SLURM, limit),
        )
    )
    (running_count,) = conn.execute(
        f"SELECT count(*) FROM jobs WHERE {RUNNING} AND pool = ?", (SLURM,)
    ).fetchone()
    (queued_count,) = conn.execute(
        f"SELECT count(*) FROM jobs WHERE {QUEUED} AND pool = ?", (SLURM,)
    ).fetchone()
    return SlurmSnapshot(running, running_count, queued_count)


def queues_snapshot(conn: sqlite3.Connection, pending_limit: int = 10) -> list[PoolSnapshot]:
    """What `gsup queues` shows, from the journal alone."""
    pools = conn.execute("SELECT name, threads, frozen FROM pools").fetchall()
    order = {name: index for index, name in enumerate(POOL_NAMES)}
    snapshots = []
    for name, threads, frozen in sorted(pools, key=lambda p: (order.get(p[0], 99), p[0])):
        running = _dicts(
            conn.execute(
                "SELECT j.id, j.display, j.timeout, a.external_id AS worker, a.started"
                f" FROM jobs j JOIN attempts a ON a.id = j.attempt WHERE j.{RUNNING}"
                " AND j.pool = ? ORDER BY j.id",
                (name,),
            )
        )
        pending = _dicts(
            conn.execute(
                f"SELECT id, display, priority, not_before FROM jobs WHERE {QUEUED}"
                " AND pool = ? ORDER BY priority, id LIMIT ?",
                (name, pending_limit),
            )
        )
        (count,) = conn.execute(
            f"SELECT count(*) FROM jobs WHERE {QUEUED} AND pool = ?", (name,)
        ).fetchone()
        snapshots.append(PoolSnapshot(name, threads, bool(frozen), running, pending, count))
    return snapshots


def state_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many jobs are in each state (`gsup status`)."""
    return dict(conn.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


def chosen_attempt(conn: sqlite3.Connection, job: int, number: int | None) -> int | None:
    """The id of attempt `number` (from 1, as `gsup show` numbers them) of `job`, or of
    its last (None if it has none); GsupError if there is no such job or attempt."""
    found = job_runs(conn, job)
    if found is None:
        raise GsupError(f"no job {job}")
    attempts = found[1]
    if number is not None and not 0 < number <= len(attempts):
        raise GsupError(f"job {job} has {len(attempts)} attempts, not {number}")
    return attempts[number - 1] if number else (attempts[-1] if attempts else None)


def job_runs(conn: sqlite3.Connection, job: int) -> tuple[str, list[int]] | None:
    """A job's state and the ids of its attempts, oldest first (None: no such job)."""
    row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()
    if row is None:
        return None
    ids = conn.execute("SELECT id FROM attempts WHERE job = ? ORDER BY id", (job,)).fetchall()
    return row[0], [attempt for (attempt,) in ids]


def batch_ids(
    conn: sqlite3.Connection, uid: int, key: str, part: int
) -> tuple[str, list[int]] | None:
    """The digest of a keyed batch's part and the ids it was given, if it was added."""
    row = conn.execute(
        "SELECT digest, first, count FROM batches WHERE uid = ? AND key = ? AND part = ?",
        (uid, key, part),
    ).fetchone()
    return None if row is None else (row[0], list(range(row[1], row[1] + row[2])))


# --- events (`gsup events`; the daemon's pushes to followers) -----------------------------

EVENT_FIELDS = ("seq", "job", "before", "after", "at", "why")


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants: all, one job's, or those of one task's jobs."""

    job: int | None = None
    task: int | None = None

    def clause(self) -> tuple[str, tuple[int, ...]]:
        if self.job is not None:
            return " AND e.job = ?", (self.job,)
        if self.task is not None:  # along the index jobs_task, per event: a few at a time
            return " AND e.job IN (SELECT id FROM jobs WHERE task = ?)", (self.task,)
        return "", ()


ALL_EVENTS = EventFilter()


def events_after(
    conn: sqlite3.Connection, after: int, upto: int | None, wanted: EventFilter, limit: int
) -> list[tuple[Any, ...]]:
    """Events numbered after `after` (up to `upto`), oldest first, at most `limit`:
    tuples of EVENT_FIELDS."""
    clause, params = wanted.clause()
    if upto is not None:
        clause, params = clause + " AND e.seq <= ?", (*params, upto)
    return conn.execute(
        f"SELECT e.seq, e.job, e.before, e.after, e.at, e.why FROM events e WHERE e.seq > ?"
        f"{clause} ORDER BY e.seq LIMIT ?",
        (after, *params, limit),
    ).fetchall()


def last_event(conn: sqlite3.Connection) -> int:
    """The number of the latest event ever written (its row may have been pruned)."""
    (last,) = conn.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM events), 0),"
        " coalesce((SELECT value FROM marks WHERE name = 'last_event_seq'), 0))"
    ).fetchone()
    return last


def check_wanted(conn: sqlite3.Connection, wanted: EventFilter) -> None:
    """GsupError (one line) if the job or task it names does not exist."""
    if wanted.job is not None and job_runs(conn, wanted.job) is None:
        raise GsupError(f"no job {wanted.job}")
    if (
        wanted.task is not None
        and not conn.execute("SELECT 1 FROM tasks WHERE id = ?", (wanted.task,)).fetchone()
    ):
        raise GsupError(f"no task {wanted.task}")
