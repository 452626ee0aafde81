"""The journal: one SQLite file, written by the supervisor only, read by anyone.

Models describe the schema and serve the CLI's queries. The supervisor's hot path
uses prepared SQL through the same connection: a model statement costs about three
times a raw one. Every state change goes through `Writer.transition`, which checks it
against the state machine and writes the job row and its event row together.
The supervisor opens one transaction per turn of its loop (group commit).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee as pw

from gsup.lifecycle import Policy, State, check_transition
from gsup.protocol import JobSpec

database = pw.SqliteDatabase(None)


class BaseModel(pw.Model):
    class Meta:
        database = database


class Job(BaseModel):
    id = pw.AutoField()
    name = pw.TextField(null=True)
    pool = pw.TextField()
    kind = pw.TextField()  # "call" or "cmd"
    target = pw.TextField()
    display = pw.TextField()  # the command as tables show it
    spec = pw.TextField()  # JSON: what the pool needs to run it (arguments, path, cwd, ...)
    priority = pw.IntegerField()
    timeout = pw.FloatField(null=True)
    retries = pw.IntegerField(default=0)
    retry_delay = pw.FloatField(default=0.0)
    backoff = pw.FloatField(default=2.0)
    retry_on = pw.TextField(null=True)  # JSON list of names; NULL: retry on anything
    on_lost = pw.TextField(default="requeue")
    state = pw.TextField()
    attempts = pw.IntegerField(default=0)  # charged runs
    lost_count = pw.IntegerField(default=0)  # pool deaths it was in flight for
    worker = pw.TextField(null=True)  # set when a pool thread takes the job up
    created = pw.FloatField()
    started = pw.FloatField(null=True)
    ended = pw.FloatField(null=True)
    not_before = pw.FloatField(null=True)  # a delayed retry is not dispatched before then
    reason = pw.TextField(null=True)  # why it ended
    result = pw.TextField(null=True)
    result_type = pw.TextField(null=True)  # "json", or "repr" when not JSON-able
    error = pw.TextField(null=True)  # "ExceptionType: message"
    traceback = pw.TextField(null=True)

    class Meta:
        table_name = "jobs"


# The dispatcher's query: the next queued jobs of a pool, by priority then FIFO.
Job.add_index(
    Job.index(Job.pool, Job.priority, Job.id, name="jobs_queued_order").where(
        Job.state == State.QUEUED.value
    )
)
Job.add_index(Job.index(Job.state, name="jobs_state"))


class Event(BaseModel):
    seq = pw.AutoField()
    job = pw.IntegerField(index=True)
    before = pw.TextField(null=True)
    after = pw.TextField()
    at = pw.FloatField()
    why = pw.TextField(null=True)

    class Meta:
        table_name = "events"


class Command(BaseModel):
    """Every request that changes something, journaled before it is acted on."""

    seq = pw.AutoField()
    at = pw.FloatField()
    verb = pw.TextField()
    detail = pw.TextField()  # JSON
    uid = pw.IntegerField(null=True)
    pid = pw.IntegerField(null=True)

    class Meta:
        table_name = "commands"


class Pool(BaseModel):
    name = pw.TextField(primary_key=True)
    threads = pw.IntegerField()
    queue_size = pw.IntegerField()
    frozen = pw.BooleanField(default=False)

    class Meta:
        table_name = "pools"


MODELS = (Job, Event, Command, Pool)


class JournalError(Exception):
    pass


def open_database(path: Path, readonly: bool = False) -> pw.SqliteDatabase:
    """Bind the models to the journal at `path`. Readers never create or write it."""
    if readonly:
        if not path.exists():
            raise JournalError(f"no journal at {path} (has `gsup daemon` run here?)")
        database.init(f"file:{path}?mode=ro", uri=True, pragmas={"busy_timeout": 5000})
    else:
        database.init(
            str(path),
            pragmas={
                "journal_mode": "wal",
                "synchronous": "full",  # an acknowledged job survives a power cut
                "busy_timeout": 5000,
                "foreign_keys": 0,
            },
        )
    database.connect(reuse_if_open=True)
    if not readonly:
        database.create_tables(MODELS)
    return database


POLICY_COLUMNS = "retries, on_lost, attempts, lost_count, retry_delay, backoff, retry_on"


def policy_of(row: Sequence[Any]) -> Policy:
    """A job's retry policy from its POLICY_COLUMNS, in that order."""
    retries, on_lost, attempts, lost_count, retry_delay, backoff, retry_on = row
    return Policy(
        retries, on_lost, attempts, lost_count, retry_delay, backoff,
        None if retry_on is None else tuple(json.loads(retry_on)),
    )  # fmt: skip


@dataclass(frozen=True)
class QueuedJob:
    """What the dispatcher needs of a queued job."""

    id: int
    kind: str
    target: str
    spec: str
    timeout: float | None
    policy: Policy


def _runnable_json(spec: JobSpec, cache: dict[tuple, str]) -> str:
    """What the pool needs to run a job, as the `spec` column holds it. The parts jobs
    of one batch share (the very same objects) are encoded once, through `cache`."""
    key = (id(spec.argv), spec.cwd, id(spec.path), id(spec.env))
    shared = cache.get(key)
    if shared is None:
        shared = cache[key] = json.dumps(
            {"argv": spec.argv, "cwd": spec.cwd, "path": spec.path, "env": spec.env}
        )[1:]
    head = json.dumps({"arguments": spec.arguments, "pickled": spec.pickled})[:-1]
    return f"{head}, {shared}"


class JournalStalled(Exception):
    """A turn's writes could not be committed (disk full, I/O error); they are kept
    for `Writer.replay`, and nothing the turn decided may be acted on until then."""


class Writer:
    """The supervisor's statements; one transaction per loop turn (`commit`).

    Every write is also kept in a log until its turn commits, so that a turn that
    fails to commit can be written again, as it was, once the disk has room.
    """

    def __init__(self, db: pw.SqliteDatabase) -> None:
        self.db = db
        self.conn = db.connection()
        self._in_transaction = False
        self._log: list[tuple[str, Sequence[Any], bool]] = []
        self._savepoint: tuple[int, int] | None = None  # (log length, next job id)
        self.failure: sqlite3.Error | None = None  # a write of this turn failed
        self._next_job_id = (self._read("SELECT max(id) FROM jobs").fetchone()[0] or 0) + 1

    def _begin(self) -> None:
        if not self._in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True

    def _read(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        self._begin()  # inside the turn's transaction: it sees the turn's writes
        return self.conn.execute(sql, params)

    def _write(self, sql: str, params: Sequence[Any] = (), many: bool = False) -> Any:
        """Execute and log a write (`many`: one row of params each). Outside a request,
        a failure does not raise: the turn goes on, and its commit fails (see `commit`)."""
        self._log.append((sql, params, many))
        if self.failure is not None:
            return None
        self._begin()
        try:
            if self._in_transaction and not self.conn.in_transaction:
                # SQLite rolled the whole turn back (disk full, I/O error): executing
                # now would autocommit; the turn must be replayed instead.
                raise sqlite3.OperationalError("the turn's transaction was rolled back")
            if many:
                return self.conn.executemany(sql, params)
            return self.conn.execute(sql, params)
        except (sqlite3.Error, UnicodeEncodeError) as exc:
            if self._savepoint is not None:
                raise  # the request's savepoint undoes its writes
            self.failure = exc if isinstance(exc, sqlite3.Error) else sqlite3.DataError(str(exc))
            return None

    def commit(self) -> None:
        if self._in_transaction:
            self._settle(self._commit_turn)

    def replay(self) -> None:
        """Write a failed turn again; raises JournalStalled while that still fails."""
        self.failure = None
        self._settle(self._write_turn_again)

    def _settle(self, write: Callable[[], None]) -> None:
        try:
            write()
        except sqlite3.Error as exc:
            self._abandon()
            raise JournalStalled(str(exc)) from exc
        self._in_transaction = False
        self._log.clear()

    def _commit_turn(self) -> None:
        if self.failure is not None:
            raise self.failure
        self.conn.execute("COMMIT")

    def _write_turn_again(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        for sql, params, many in self._log:
            (self.conn.executemany if many else self.conn.execute)(sql, params)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self._abandon()  # a turn cut short by a crash is not committed
        self.db.close()

    def _abandon(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self._in_transaction = False

    # A request's writes are undone alone if its handler fails half-way.
    def savepoint(self) -> None:
        self._begin()
        self.conn.execute("SAVEPOINT request")
        self._savepoint = (len(self._log), self._next_job_id)

    def release_savepoint(self) -> None:
        self.conn.execute("RELEASE request")
        self._savepoint = None

    def rollback_to_savepoint(self) -> None:
        assert self._savepoint is not None
        log_length, self._next_job_id = self._savepoint
        del self._log[log_length:]
        self._savepoint = None
        try:
            self.conn.execute("ROLLBACK TO request")
            self.conn.execute("RELEASE request")
        except sqlite3.Error as exc:
            # SQLite rolled back the whole transaction, not just the request: the
            # turn's earlier writes (still in the log) must be written again.
            self.failure = exc

    # --- commands and pools -----------------------------------------------------

    def log_command(self, verb: str, detail: dict[str, Any], uid: int | None, pid: int | None):
        self._write(
            "INSERT INTO commands (at, verb, detail, uid, pid) VALUES (?, ?, ?, ?, ?)",
            (time.time(), verb, json.dumps(detail), uid, pid),
        )

    def register_pool(self, name: str, threads: int, queue_size: int) -> bool:
        """Record a pool's size; returns whether it is frozen (kept across restarts)."""
        self._write(
            "INSERT INTO pools (name, threads, queue_size, frozen) VALUES (?, ?, ?, 0) "
            "ON CONFLICT(name) DO UPDATE SET threads = excluded.threads, "
            "queue_size = excluded.queue_size",
            (name, threads, queue_size),
        )
        row = self._read("SELECT frozen FROM pools WHERE name = ?", (name,)).fetchone()
        return bool(row[0])

    def set_frozen(self, name: str, frozen: bool) -> None:
        self._write("UPDATE pools SET frozen = ? WHERE name = ?", (int(frozen), name))

    # --- jobs -------------------------------------------------------------------

    def insert_jobs(self, specs: Sequence[JobSpec], now: float) -> list[int]:
        # Explicit ids: a replayed turn gives the same ones.
        ids = list(range(self._next_job_id, self._next_job_id + len(specs)))
        encoded: dict[tuple, str] = {}  # objects the batch shares are alive meanwhile
        self._next_job_id += len(specs)
        self._write(
            "INSERT INTO jobs (id, name, pool, kind, target, display, spec, priority, timeout,"
            " retries, retry_delay, backoff, retry_on, on_lost, state, attempts, lost_count,"
            " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, 0, ?)",
            [
                (
                    job,
                    spec.name,
                    spec.pool,
                    spec.kind,
                    spec.target,
                    spec.display,
                    _runnable_json(spec, encoded),
                    spec.priority,
                    spec.timeout,
                    spec.retries,
                    spec.retry_delay,
                    spec.backoff,
                    None if spec.retry_on is None else json.dumps(spec.retry_on),
                    spec.on_lost,
                    now,
                )
                for job, spec in zip(ids, specs, strict=True)
            ],
            many=True,
        )
        self._write(
            "INSERT INTO events (job, before, after, at, why) VALUES (?, NULL, 'queued', ?, ?)",
            [(job, now, "added") for job in ids],
            many=True,
        )
        return ids

    def _event(self, job: int, before: str | None, after: State, now: float, why: str) -> None:
        self._write(
            "INSERT INTO events (job, before, after, at, why) VALUES (?, ?, ?, ?, ?)",
            (job, before, after.value, now, why),
        )

    def transition(
        self,
        job: int,
        before: State | str,
        after: State,
        why: str,
        now: float,
        *,
        charge: int = 0,
        lost: int = 0,
        outcome: dict[str, Any] | None = None,
        not_before: float | None = None,
    ) -> None:
        """Move `job` from `before` to `after`, with its event, in this turn's transaction.

        `charge` adds to the charged attempts (1 on dispatch, -1 for a run that was
        interrupted through no fault of its own); `lost` counts a pool death;
        `outcome` holds result/result_type/error/traceback of an ended run;
        `not_before` delays a retry.
        """
        check_transition(before, after)
        if after == State.QUEUED or after == State.RUNNING:
            sql = (
                "UPDATE jobs SET state = ?, attempts = attempts + ?, lost_count = lost_count + ?,"
                " worker = NULL, started = NULL, ended = NULL, not_before = ?"
                " WHERE id = ? AND state = ?"
            )
            params: tuple = (after.value, charge, lost, not_before, job, str(before))
        else:
            outcome = outcome or {}
            sql = (
                "UPDATE jobs SET state = ?, attempts = attempts + ?, lost_count = lost_count + ?,"
                " ended = ?, reason = ?, result = ?, result_type = ?, error = ?, traceback = ?"
                " WHERE id = ? AND state = ?"
            )
            params = (
                after.value,
                charge,
                lost,
                now,
                why,
                outcome.get("result"),
                outcome.get("result_type"),
                outcome.get("error"),
                outcome.get("traceback"),
                job,
                str(before),
            )
        cursor = self._write(sql, params)
        if cursor is not None and cursor.rowcount != 1:
            raise JournalError(f"job {job} is not {before}")
        self._event(job, str(before), after, now, why)

    def mark_started(self, job: int, worker: str, started: float) -> None:
        self._write(
            "UPDATE jobs SET worker = ?, started = ? WHERE id = ? AND state = 'running'",
            (worker, started, job),
        )

    def next_queued(self, pool: str, limit: int, now: float) -> list[QueuedJob]:
        """The next jobs to dispatch: by priority, then FIFO; delayed retries when due."""
        rows = self._read(
            f"SELECT id, kind, target, spec, timeout, {POLICY_COLUMNS} FROM jobs"
            " WHERE state = 'queued' AND pool = ? AND (not_before IS NULL OR not_before <= ?)"
            " ORDER BY priority, id LIMIT ?",
            (pool, now, limit),
        ).fetchall()
        return [QueuedJob(*row[:5], policy_of(row[5:])) for row in rows]

    def next_retry_time(self, pool: str, now: float) -> float | None:
        """When the earliest delayed retry of a pool falls due."""
        return self._read(
            "SELECT min(not_before) FROM jobs WHERE state = 'queued' AND pool = ?"
            " AND not_before > ?",
            (pool, now),
        ).fetchone()[0]

    def queued_ids(self, pool: str | None) -> list[int]:
        if pool is None:
            rows = self._read("SELECT id FROM jobs WHERE state = 'queued'").fetchall()
        else:
            rows = self._read(
                "SELECT id FROM jobs WHERE state = 'queued' AND pool = ?", (pool,)
            ).fetchall()
        return [row[0] for row in rows]

    def states_of(self, jobs: list[int]) -> dict[int, str]:
        states: dict[int, str] = {}
        for start in range(0, len(jobs), 500):
            chunk = jobs[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._read(f"SELECT id, state FROM jobs WHERE id IN ({marks})", chunk)
            states.update(rows.fetchall())
        return states

    def job_row(self, job: int) -> dict[str, Any] | None:
        cursor = self._read("SELECT * FROM jobs WHERE id = ?", (job,))
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([c[0] for c in cursor.description], row, strict=True))


# --- what the daemon and `gsup recover` read ---------------------------------------


def unfinished_jobs() -> tuple[int, list[tuple[int, str, Policy]]]:
    """What a daemon left behind: how many jobs are queued; each running one's
    id, pool and policy."""
    queued = Job.select().where(Job.state == State.QUEUED).count()
    cursor = database.execute_sql(
        f"SELECT id, pool, {POLICY_COLUMNS} FROM jobs WHERE state = 'running' ORDER BY id"
    )
    return queued, [(row[0], row[1], policy_of(row[2:])) for row in cursor.fetchall()]
