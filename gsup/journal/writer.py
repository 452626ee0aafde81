"""The supervisor's writes: prepared SQL on one connection, one transaction per turn.

A peewee statement costs about three times a raw one, so the hot path is plain SQL
(the models in schema.py define the tables). Every state change goes through
`Writer.transition`, which checks it against the state machine and writes the job
row and its event row together. Reads go through queries.py on the same connection,
inside the turn's transaction, so they see what the turn wrote.

Durability comes in two steps. `commit` writes the turn to the WAL: from then on a
crash of the daemon cannot undo it, and the jobs it handed over may go to their
executors. `sync` (fdatasync of the WAL, what synchronous=FULL does) puts it on the
disk, before anything else it decided leaves the daemon: a reply, a result, a
runs-once job's go-ahead. Turns that only hand jobs over and record their starts need
no sync of their own: the next one takes them too (a power cut that loses them finds
those jobs queued, which is what a loss would have made of them). SQLite cannot
change synchronous inside a transaction, so the connection runs at NORMAL and the
writer syncs the WAL itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

from gsup import retention
from gsup.journal import queries
from gsup.lifecycle import check_transition
from gsup.protocol import BatchPart, JobSpec
from gsup.states import END_STATES, State


class JournalStalled(Exception):
    """A turn's writes could not be committed (disk full, I/O error); they are kept
    for `Writer.retry`, and nothing the turn decided may be acted on until then."""


class JournalSyncFailed(Exception):
    """The journal could not be synced. The kernel may have dropped what it failed to
    write, so a later sync proves nothing: what is on the disk is no longer known."""


class JournalConflict(Exception):
    """A write found the journal other than the supervisor believed: a bug."""


def _runnable_json(spec: JobSpec, cache: dict[tuple, str]) -> str:
    """What an executor needs to run a job, as the `spec` column holds it. The parts
    jobs of one batch share (the same command and folder, the very same path and
    environment objects) are encoded once, through `cache`."""
    key = (tuple(spec.argv), spec.cwd, id(spec.path), id(spec.env))
    shared = cache.get(key)
    if shared is None:
        shared = cache[key] = json.dumps(
            {"argv": spec.argv, "cwd": spec.cwd, "path": spec.path, "env": spec.env}
        )[1:]
    arguments, pickled = _json_text(spec.arguments), _json_text(spec.pickled)
    if spec.unit is not None:
        shared = f'"unit": {json_dumps(spec.unit)}, {shared}'
    if spec.sbatch:
        shared = f'"sbatch": {json_dumps(spec.sbatch)}, {shared}'
    return f'{{"arguments": {arguments}, "pickled": {pickled}, {shared}'


def _json_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps(value) makes an encoder at each call, which costs more than encoding a
# small value: the hot path makes one (json's own C encoder, with json.dumps' defaults).
_encoder = c_make_encoder(None, _json_default, encode_basestring_ascii, None, ": ", ", ",
                          False, False, True)  # fmt: skip


def json_dumps(value: Any) -> str:
    """json.dumps(value), for values of JSON's own types (no check of cycles)."""
    return "".join(_encoder(value, 0))


def _json_text(text: str | None) -> str:
    """json.dumps of a text or None, without its per-call overhead (the hot path)."""
    return "null" if text is None else encode_basestring_ascii(text)


def storable(value: Any) -> Any:
    """A value SQLite takes as it is: what an executor reports is made safe to bind
    (texts valid UTF-8, integers within 64 bits, anything else as its repr)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if value.isascii():  # the common case, and a large result is not copied
            return value
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return storable(repr(value))


SET_RESULT = (
    "INSERT INTO results (job, size, result) VALUES (?, ?, ?)"
    " ON CONFLICT(job) DO UPDATE SET size = excluded.size, result = excluded.result"
)
LARGE_RESULT = 1_000_000  # bytes: a result this large is not kept in memory after its turn


class Writer:
    """The supervisor's statements; one transaction per loop turn (`commit`).

    Every write is also kept in a log until its turn commits, so that a turn that
    fails to commit can be written again, as it was, once the disk has room.
    """

    def __init__(self, conn: sqlite3.Connection, wal: Path) -> None:
        self.conn = conn
        self.conn.execute("PRAGMA synchronous = NORMAL")  # see the module's doc
        self._wal = wal
        self._wal_fd: int | None = None
        self._must_sync = False  # a write of this turn must reach the disk before it acts
        self.sync_due = False  # a committed turn waits for `sync`
        self._in_transaction = False
        self._log: list[tuple[str, Sequence[Any], bool]] = []
        # A request's writes are undone alone if its handler fails half-way:
        # (log length, next job id, attempt id, event seq) when its savepoint was taken.
        self._savepoint: tuple[int, int, int, int] | None = None
        self.failure: sqlite3.Error | None = None  # a write of this turn failed
        self._large_result = False  # this turn wrote one: see `_unbind`
        # Ids and event numbers are given here, not by SQLite: a replayed turn gives
        # the same ones, and a pruned one is never given again (see schema.Mark).
        self._next_job_id = self._next_id("jobs")
        self._next_attempt_id = self._next_id("attempts")
        self._next_event_seq = self._next_id("events")

    def _next_id(self, table: str) -> int:
        """After the highest id the table holds, or ever held (see schema.Mark)."""
        column, mark = retention.ID_MARKS[table]
        (highest,) = self.conn.execute(
            f"SELECT max(coalesce((SELECT max({column}) FROM {table}), 0),"
            " coalesce((SELECT value FROM marks WHERE name = ?), 0))",
            (mark,),
        ).fetchone()
        return highest + 1

    @property
    def last_event(self) -> int:
        """The number of the latest event written (committed once the turn is)."""
        return self._next_event_seq - 1

    def _event_seqs(self, count: int) -> range:
        seqs = range(self._next_event_seq, self._next_event_seq + count)
        self._next_event_seq += count
        return seqs

    @property
    def reader(self) -> sqlite3.Connection:
        """The connection for queries.py. Inside the turn's transaction if it has written
        (a read sees the turn's writes); else each read is its own: nobody else writes."""
        return self.conn

    def _begin(self) -> None:
        if not self._in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True

    def write(self, sql: str, params: Sequence[Any] = (), many: bool = False) -> Any:
        """A write of another part of the supervisor (the task engine), in the turn's
        transaction and replayed with it (see `_write`)."""
        return self._write(sql, params, many)

    def _write(
        self, sql: str, params: Sequence[Any] = (), many: bool = False, lazy: bool = False
    ) -> Any:
        """Execute and log a write (`many`: one row of params each; `lazy`: it need not
        be on the disk before the turn acts, see the module's doc). Outside a request,
        a failure does not raise: the turn goes on, and its commit fails (see `commit`)."""
        self._log.append((sql, params, many))
        self._must_sync = self._must_sync or not lazy
        if self.failure is not None:
            return None
        try:
            self._begin()  # busy: another process holds the journal's write lock
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

    # --- the turn's transaction ----------------------------------------------------

    def commit(self) -> None:
        """Write the turn: from now on a crash of the daemon cannot undo it; `sync` puts
        it on the disk. Raises JournalStalled if it cannot be written (it is kept): also
        when an earlier write of the turn failed, whether or not a transaction is open."""
        if self._in_transaction or self.failure is not None:
            self._finish(self._commit_turn)

    @property
    def turn_writes(self) -> int:
        """Statements the open turn has written so far."""
        return len(self._log)

    def must_sync(self) -> None:
        """This turn must be on the disk before it acts, whatever it wrote."""
        self._must_sync = True

    def sync(self) -> None:
        """fsync the WAL if a committed turn waits for it: that turn, and every lazy one
        before it, is then on the disk. Raises JournalSyncFailed if that fails."""
        if not self.sync_due:
            return
        try:
            if self._wal_fd is None:
                self._wal_fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
            os.fdatasync(self._wal_fd)
        except OSError as exc:
            raise JournalSyncFailed(f"cannot sync the journal: {exc.strerror or exc}") from exc
        self.sync_due = False

    def retry(self) -> None:
        """After JournalStalled: write the failed turn again; raises JournalStalled while
        that still fails."""
        self.failure = None
        self._finish(self._write_turn_again)

    def _finish(self, write: Callable[[], None]) -> None:
        """Run the turn's COMMIT (`write`); on failure keep its writes for `retry`."""
        try:
            write()
        except sqlite3.Error as exc:
            self._abandon()
            if queries.is_damage(exc):
                raise  # no retry mends it: the daemon stops (see daemon.py)
            raise JournalStalled(str(exc)) from exc
        self.sync_due = self.sync_due or self._must_sync
        self._in_transaction = self._must_sync = False
        self._log.clear()
        if self._large_result:
            self._unbind()

    def _commit_turn(self) -> None:
        if self.failure is not None:
            raise self.failure
        self.conn.execute("COMMIT")

    def take_lock(self) -> None:
        """Open the turn's transaction, if it is not yet; raises JournalStalled when
        the journal's write lock stays taken by another process (busy_timeout)."""
        try:
            self._begin()
        except sqlite3.Error as exc:
            raise JournalStalled(str(exc)) from exc

    def _write_turn_again(self) -> None:
        self._replay()
        self.conn.execute("COMMIT")

    def _replay(self) -> None:
        """Open the turn's transaction again and write into it what the turn wrote."""
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        for sql, params, many in self._log:
            (self.conn.executemany if many else self.conn.execute)(sql, params)

    def close(self) -> None:
        self._abandon()  # a turn cut short by a crash is not committed
        self.conn.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)

    def _abandon(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self._in_transaction = False

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A request's writes: kept if the block ends normally, undone if it raises.
        Raises JournalStalled if the turn's transaction cannot be opened (another
        process holds the journal's write lock): nothing was written, see `take_lock`."""
        self.take_lock()
        self.conn.execute("SAVEPOINT request")
        self._savepoint = (len(self._log), self._next_job_id, self._next_attempt_id,
                           self._next_event_seq)  # fmt: skip
        try:
            yield
        except BaseException:
            self._rollback_to_savepoint()
            raise
        self.conn.execute("RELEASE request")
        self._savepoint = None

    def _rollback_to_savepoint(self) -> None:
        assert self._savepoint is not None
        log_length, self._next_job_id, self._next_attempt_id, self._next_event_seq = self._savepoint
        del self._log[log_length:]
        self._savepoint = None
        try:
            self.conn.execute("ROLLBACK TO request")
            self.conn.execute("RELEASE request")
            return
        except sqlite3.Error:
            pass
        # SQLite rolled back the whole transaction (disk full, I/O error), not just the
        # request: write the turn's earlier writes (the log) again at once, so that the
        # rest of the turn reads what it wrote; if that fails, the turn stalls.
        self._abandon()
        try:
            self._replay()
        except sqlite3.Error as exc:
            self._abandon()
            self.failure = exc

    # --- commands and pools ----------------------------------------------------------

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
        return queries.pool_frozen(self.reader, name)

    def set_frozen(self, name: str, frozen: bool) -> None:
        self._write("UPDATE pools SET frozen = ? WHERE name = ?", (int(frozen), name))

    # --- jobs ------------------------------------------------------------------------

    def insert_jobs(
        self, specs: Sequence[JobSpec], now: float, task: int | None = None
    ) -> list[int]:
        """Add jobs (of `task`, if they run its units or merge); their ids, in order."""
        ids = list(range(self._next_job_id, self._next_job_id + len(specs)))
        encoded: dict[tuple, str] = {}  # objects the batch shares are alive meanwhile
        self._next_job_id += len(specs)
        self._write(
            "INSERT INTO jobs (id, name, pool, kind, target, display, spec, priority, timeout,"
            " retries, retry_delay, backoff, retry_on, on_lost, state, attempts, lost_count,"
            " created, task) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            f" '{State.QUEUED}', 0, 0, ?, ?)",
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
                    task,
                )
                for job, spec in zip(ids, specs, strict=True)
            ],
            many=True,
        )
        self._write(
            "INSERT INTO events (seq, job, before, after, at, why)"
            f" VALUES (?, ?, NULL, '{State.QUEUED}', ?, 'added')",
            [(seq, job, now) for seq, job in zip(self._event_seqs(len(ids)), ids, strict=True)],
            many=True,
        )
        return ids

    def record_batch(self, uid: int, part: BatchPart, ids: list[int], now: float) -> None:
        """The ids that a part of a keyed batch was given (see schema.Batch)."""
        self._write(
            "INSERT INTO batches (uid, key, part, digest, first, count, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (uid, part.key, part.part, part.digest, ids[0], len(ids), now),
        )

    def shift_delays(self, by: float) -> None:
        """Move every delayed retry `by` seconds: the wall clock was stepped that much."""
        self._write(
            f"UPDATE jobs SET not_before = not_before + ? WHERE {queries.QUEUED}"
            " AND not_before IS NOT NULL",
            (by,),
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
        attempt: int | None = None,
    ) -> None:
        """Move `job` from `before` to `after`, with its event, in this turn's transaction.

        `charge` adds to the charged attempts (1 when a run starts, -1 when it was
        interrupted through no fault of its own); `lost` counts an executor's death;
        `outcome` holds result/result_type/error/traceback of an ended run;
        `not_before` delays a retry; `attempt` is the run that starts (to running).
        """
        check_transition(before, after)
        if after == State.RUNNING:
            sql = (
                "UPDATE jobs SET state = ?, attempts = attempts + ?, lost_count = lost_count + ?,"
                " attempt = ?, not_before = NULL WHERE id = ? AND state = ?"
            )
            params: tuple = (after.value, charge, lost, attempt, job, str(before))
        elif after == State.QUEUED:
            sql = (
                "UPDATE jobs SET state = ?, attempts = attempts + ?, lost_count = lost_count + ?,"
                " ended = NULL, not_before = ?, result_type = NULL WHERE id = ? AND state = ?"
            )
            params = (after.value, charge, lost, not_before, job, str(before))
            if before in END_STATES:  # a retry: the last run's result goes with it
                self._write("DELETE FROM results WHERE job = ?", (job,))
        else:
            outcome = outcome or {}
            sql = (
                "UPDATE jobs SET state = ?, attempts = attempts + ?, lost_count = lost_count + ?,"
                " ended = ?, reason = ?, result_type = ?, error = ?, traceback = ?"
                " WHERE id = ? AND state = ?"
            )
            params = (
                after.value,
                charge,
                lost,
                now,
                storable(why),
                *(storable(outcome.get(key)) for key in ("result_type", "error", "traceback")),
                job,
                str(before),
            )
        lazy = after == State.RUNNING  # a start: see the module's doc
        cursor = self._write(sql, params, lazy=lazy)
        if cursor is not None and cursor.rowcount != 1:
            raise JournalConflict(f"job {job} is not {before}")
        if outcome and outcome.get("result") is not None:  # only an end has one
            self._set_result(job, outcome["result"])
        event = (self._event_seqs(1)[0], job, None if before is None else str(before))
        self._write(
            "INSERT INTO events (seq, job, before, after, at, why) VALUES (?, ?, ?, ?, ?, ?)",
            (*event, after.value, now, storable(why)),
            lazy=lazy,
        )

    def _set_result(self, job: int, result: Any) -> None:
        """A run's result: the job has none at this point (a retry deleted its last)."""
        text = storable(result if isinstance(result, str) else repr(result))
        size = len(text) if text.isascii() else len(text.encode("utf-8"))
        self._large_result = self._large_result or size > LARGE_RESULT
        self._write(SET_RESULT, (job, size, text))

    def _unbind(self) -> None:
        """SQLite keeps a statement's last parameters, a copy of a large result, until
        the statement runs again: run it again on nothing, so that the daemon's memory
        comes back as it was."""
        self._large_result = False
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("BEGIN")
            try:
                self.conn.execute(SET_RESULT, (0, 0, ""))
            finally:
                self.conn.execute("ROLLBACK")

    # --- retention (see gsup/retention.py) --------------------------------------------

    def mark_ids(self) -> None:
        """Note the highest ids given so far: a prune may delete their rows."""
        self._write(
            retention.MARK,
            [("last_job_id", self._next_job_id - 1),
             ("last_attempt_id", self._next_attempt_id - 1),
             ("last_event_seq", self._next_event_seq - 1)],
            many=True,
        )  # fmt: skip
        self._write(
            "INSERT INTO marks (name, value) SELECT 'last_task_id', coalesce(max(id), 0)"
            " FROM tasks WHERE true"
            " ON CONFLICT(name) DO UPDATE SET value = max(value, excluded.value)"
        )

    def delete_jobs(self, jobs: Sequence[int]) -> None:
        """Delete ended jobs, and their events, attempts and results."""
        if jobs:
            for sql in retention.DELETES:
                self._write(sql, [(job,) for job in jobs], many=True)

    def forget(self, cutoff: float, state: str | None) -> None:
        """After a prune to `cutoff` (of jobs in `state`): forget the keyed batches whose
        jobs are all pruned, and the tasks that ended before it (retention.forgotten)."""
        for sql in retention.forgotten(state):
            self._write(sql, (cutoff,))

    def checkpoint(self, wait_ms: int) -> bool | None:
        """Checkpoint the WAL and truncate it (see retention.checkpoint): whether that
        was done; None if it cannot be tried now (a turn is open, or not synced)."""
        if self._in_transaction or self.sync_due or self.failure is not None:
            return None
        try:
            return retention.checkpoint(self.conn, wait_ms)
        except sqlite3.Error:
            return False

    # --- attempts --------------------------------------------------------------------

    def open_attempt(self, job: int, executor: str, backend: str, dispatched: float) -> int:
        """A run is handed to an executor; its id (explicit, so that a replayed turn
        gives the same one). Written before the executor has it: no run escapes."""
        attempt = self._next_attempt_id
        self._next_attempt_id += 1
        self._write(
            "INSERT INTO attempts (id, job, executor, backend, dispatched, charged)"
            " VALUES (?, ?, ?, ?, ?, 1)",
            (attempt, job, executor, backend, dispatched),
            lazy=True,
        )
        return attempt

    def start_attempt(self, attempt: int, external_id: str | None, started: float) -> None:
        self._write(
            "UPDATE attempts SET external_id = ?, started = ? WHERE id = ?",
            (storable(external_id), started, attempt),
            lazy=True,
        )

    def note_attempt(self, attempt: int, text: str) -> None:
        """A running attempt's reason: its executor's word on it until it ends."""
        self._write(
            "UPDATE attempts SET reason = ? WHERE id = ? AND ended IS NULL",
            (storable(text), attempt),
            lazy=True,
        )

    def drop_attempt(self, attempt: int) -> None:
        """The executor gave the run back before it started: there was no run."""
        self._write("DELETE FROM attempts WHERE id = ?", (attempt,), lazy=True)

    def close_attempt(
        self,
        attempt: int,
        outcome: State,
        reason: str,
        ended: float,
        charged: bool = True,
        usage: dict[str, Any] | None = None,
    ) -> None:
        """A run ended: in what state it left its job, and what it used where known."""
        usage = usage or {}
        self._write(
            "UPDATE attempts SET ended = ?, outcome = ?, reason = ?, charged = ?,"
            " exit_status = ?, cpu_seconds = ?, peak_rss_kb = ? WHERE id = ?",
            (
                ended,
                outcome.value,
                storable(reason),
                int(charged),
                *(storable(usage.get(key)) for key in ("exit_status", "cpu_seconds")),
                storable(usage.get("peak_rss_kb")),
                attempt,
            ),
        )
