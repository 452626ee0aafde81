"""One handler per request verb (the verbs and their fields are in protocol.py).

A handler that changes something runs in a savepoint of the turn's transaction: if
it fails half-way, the journal is as it was before the request. What it told an
executor or a waiting client before it failed is not taken back; such a failure is
a bug (the request was checked first) or the disk failing under it.
A handler returns its reply, or None when it answers later (a wait: the book
answers when the jobs end).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from gsup import __version__
from gsup.config import DASK, POOL_NAMES, SLURM, pool_for
from gsup.errors import GsupError
from gsup.journal import queries
from gsup.journal.queries import EventFilter
from gsup.journal.writer import Writer
from gsup.lifecycle import Stop
from gsup.protocol import MUTATING, BatchPart, JobSpec, ProtocolError, check_request, request_id
from gsup.settings import Settings
from gsup.states import END_STATES, RETRYABLE, State
from gsup.supervisor.connections import Connection
from gsup.supervisor.followers import Followers
from gsup.supervisor.jobs import JobBook
from gsup.supervisor.loop import report_bug
from gsup.supervisor.pruning import Pruner
from gsup.tasks import spec as task_spec
from gsup.tasks.engine import TaskEngine, TaskRequestError
from gsup.tasks.records import TASK_END_STATES, task_row

Reply = dict[str, Any] | None
MAX_NAMED = 5  # jobs a `why` names (those running in a full pool)


class RequestError(Exception):
    """A request that is well-formed but cannot be done; sent back to the client."""


class Handlers:
    def __init__(
        self,
        settings: Settings,
        journal: Writer,
        book: JobBook,
        reply: Callable[[Connection, Any, dict[str, Any]], None],
        pruner: Pruner,
        begin_stop: Callable[[bool], None],
        engine: TaskEngine,
        followers: Followers,
        stats: Callable[[], dict[str, Any]],
    ) -> None:
        self.stats_reply = stats
        self.pruner = pruner
        self.followers = followers
        self.engine = engine
        self.settings = settings
        self.begin_stop = begin_stop
        self.started = time.time()
        self.journal = journal
        self.book = book
        self.reply = reply
        self.verbs: dict[str, Callable[[Connection, Any, dict[str, Any]], Reply]] = {
            "ping": self.ping,
            "follow": self.follow,
            "stats": self.stats,
            "why": self.why,
            "add": self.add,
            "get": self.get,
            "cancel": self.cancel,
            "retry": self.retry,
            "purge": self.purge,
            "freeze": self.freeze,
            "wait": self.wait,
            "stop": self.stop,
            "prune": self.prune,
            "task_submit": self.task_submit,
            "task_control": self.task_control,
            "task_wait": self.task_wait,
        }

    def request(self, conn: Connection, message: dict[str, Any]) -> None:
        """Check a request, run its handler, queue its reply."""
        echoed = request_id(message)
        try:
            verb, fields = check_request(message)
            reply = self._run(conn, echoed, verb, fields)
        except (ProtocolError, RequestError) as exc:
            reply = {"ok": False, "error": str(exc)}
        if reply is not None:
            self.reply(conn, echoed, {"ok": True, **reply} if "ok" not in reply else reply)

    def _run(self, conn: Connection, request_id: Any, verb: str, fields: dict[str, Any]) -> Reply:
        handler = self.verbs[verb]
        if verb not in MUTATING:
            return self._guarded(handler, conn, request_id, fields)
        if self.book.stopping:
            raise RequestError("the daemon is stopping; try again once it has restarted")
        if self.journal.failure is not None:
            raise RequestError(f"cannot write the journal ({self.journal.failure})")
        with self.journal.savepoint():
            return self._guarded(handler, conn, request_id, fields)

    @staticmethod
    def _guarded(handler: Callable[..., Reply], *args: Any) -> Reply:
        """Run a handler; what it raises becomes a one-line refusal, never a crash."""
        try:
            return handler(*args)
        except RequestError:
            raise
        except sqlite3.Error as exc:
            if queries.is_damage(exc):
                raise  # the daemon stops (see daemon.py)
            raise RequestError(f"cannot write the journal ({exc}); nothing changed") from exc
        except UnicodeEncodeError as exc:
            raise RequestError("a text of the request is not valid UTF-8") from exc
        except Exception as exc:
            report_bug()  # a bug must not take the daemon down
            raise RequestError(f"internal error: {type(exc).__name__}: {exc}") from exc

    def _job_row(self, job: int) -> dict[str, Any]:
        row = queries.job_row(self.journal.reader, job)
        if row is None:
            raise RequestError(f"no job {job}")
        return row

    # --- the verbs ---------------------------------------------------------------------

    def ping(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        """Who answers, since when, and what its pools hold (`gsup status`)."""
        pools = [
            {"name": name, "threads": self.settings.pool(name).threads, "frozen": lane.frozen,
             "in_flight": len(lane.flights), "trouble": lane.executor.trouble}
            for name, lane in self.book.lanes.items() if name in POOL_NAMES
        ]  # fmt: skip
        slots = {SLURM: self.settings.slurm.slots, DASK: self.settings.dask.slots}
        backends = {
            name: {"slots": most, "in_flight": len(self.book.lanes[name].flights),
                   "trouble": self.book.lanes[name].executor.trouble}
            for name, most in slots.items()
        }  # fmt: skip
        return {"pid": os.getpid(), "version": __version__, "started": self.started,
                "stopping": self.book.stopping, "pools": pools, "backends": backends}  # fmt: skip

    def follow(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        """Answered at once with the last event committed; then the events after `since`
        come, with this request's id, as turns commit them (see followers.py)."""
        wanted = EventFilter(fields["job"], fields["task"])
        try:
            queries.check_wanted(self.journal.reader, wanted)
        except GsupError as exc:
            raise RequestError(str(exc)) from None
        last = self.journal.last_event
        if fields["since"] > last:
            raise RequestError(f"there is no event {fields['since']} yet; the last is {last}")
        refusal = self.followers.refusal(conn, fields["brief"])
        if refusal is not None:
            raise RequestError(refusal)
        self.followers.follow(conn, request_id, fields["since"], wanted, fields["brief"])
        return {"last": last}

    def stats(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        """The counters a metrics scrape reads (see supervisor/stats.py)."""
        return self.stats_reply()

    def why(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        """What the daemon alone knows of why a job waits or runs (`gsup why` says the
        rest from the journal): its pool's state, and the job's hand-over."""
        row = self._job_row(fields["job"])
        lane = self.book.lanes[row["pool"]]
        flights = sorted(lane.flights.values(), key=lambda f: f.job)
        flight = lane.flights.get(row["id"])
        stats = os.statvfs(self.settings.paths.home)
        return {
            "stopping": self.book.stopping,
            "pool": {
                "frozen": lane.frozen, "trouble": lane.executor.trouble,
                "unusable": lane.executor.unusable, "free": lane.executor.capacity(),
                "running": [f.job for f in flights if f.started][:MAX_NAMED],
                "running_count": sum(f.started for f in flights),
                "held": sum(not f.started for f in flights),
                "suspect": next((f.job for f in flights if f.policy.lost_count), None)
                if lane.executor.shared_fate else None,
                "threads": self.settings.pool(row["pool"]).threads
                if row["pool"] in POOL_NAMES else None,
            },
            "flight": None if flight is None else {
                "started": flight.started, "recalling": flight.recalling,
                "stop": flight.stop and flight.stop.value,
            },
            "disk": {"free_mb": stats.f_bavail * stats.f_frsize / 1e6,
                     "min_free_mb": self.settings.min_free_mb},
        }  # fmt: skip

    def stop(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        """Stop as SIGTERM does; the client sees the daemon go by its connection closing."""
        if self.journal.failure is None:  # a full disk must not keep it from stopping
            self.journal.log_command("stop", fields, conn.uid, conn.pid)
        in_flight = self.book.in_flight()
        self.begin_stop(fields["now"])
        return {"in_flight": in_flight, "grace": 0 if fields["now"] else self.settings.grace}

    def add(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        specs, batch = fields["jobs"], fields["batch"]
        if batch is not None:
            known = self._batch_ids(conn.uid, batch, len(specs))
            if known is not None:
                return {"ids": known}  # a part sent again: it was added before
        self._check_room(specs)
        self._place(specs)
        detail = {"jobs": len(specs)} if batch is None else {"jobs": len(specs), "key": batch.key}
        self.journal.log_command("add", detail, conn.uid, conn.pid)
        now = time.time()
        ids = self.journal.insert_jobs(specs, now)
        if batch is not None:
            self.journal.record_batch(conn.uid, batch, ids, now)
        self.book.added(specs)
        return {"ids": ids}

    def _batch_ids(self, uid: int, batch: BatchPart, count: int) -> list[int] | None:
        """The ids a keyed part was given when it was sent before; None if it was not."""
        known = queries.batch_ids(self.journal.reader, uid, batch.key, batch.part)
        if known is None:
            return None
        digest, ids = known
        if digest != batch.digest or len(ids) != count:
            raise RequestError(
                f"the batch key {batch.key} was given to other jobs before; give these a new key"
            )
        return ids

    def _place(self, specs: list[JobSpec]) -> None:
        """Give jobs that name no pool the default backend's; refuse jobs for a backend
        that cannot run any (its tools missing), rather than keep them queued forever."""
        default = self.settings.default_pool
        for spec in specs:
            spec.pool = spec.pool or default
            if spec.sbatch and spec.pool != SLURM:
                raise RequestError(
                    f"sbatch options are for jobs of the slurm backend, not {spec.pool}"
                )
        for pool, kind in {(spec.pool, spec.kind) for spec in specs}:
            self._check_runs(pool, kind)

    def _check_runs(self, pool: str, kind: str, where: str = "") -> None:
        executor = self.book.lanes[pool].executor
        if executor.unusable:
            raise RequestError(f"{where}the {pool} backend cannot run jobs: {executor.unusable}")
        if kind not in executor.kinds:
            raise RequestError(f"{where}the {pool} backend runs calls, not commands")

    def _check_room(self, specs: list[JobSpec]) -> None:
        """Refuse new jobs when they would leave the disk nearly full: the room left is
        kept for the journal's records of the jobs already accepted."""
        home = self.settings.paths.home
        stats = os.statvfs(home)
        free_mb = stats.f_bavail * stats.f_frsize / 1e6
        if free_mb - _journal_mb(specs) < self.settings.min_free_mb:
            raise RequestError(
                f"the disk of {home} is nearly full ({free_mb:.1f} MB free); the last"
                f" {self.settings.min_free_mb:g} MB are kept for the jobs already accepted"
            )

    def get(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        job = fields["job"]
        row = self._job_row(job)
        if fields["wait"] and row["state"] not in END_STATES:
            self.book.wait(conn, request_id, {job}, then_get=job)
            return None
        return {"job": queries.summary(self.journal.reader, row, queries.INLINE_RESULT)}

    def cancel(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        job = fields["job"]
        row = self._job_row(job)
        self.journal.log_command("cancel", {"job": job}, conn.uid, conn.pid)
        flight = self.book.flight(job, row["pool"])
        if flight is not None:  # held by its executor, started or not
            self.book.stop_flight(flight, Stop.CANCEL)
            return {"state": row["state"], "stopping": True}
        if row["state"] == State.QUEUED:
            self.book.cancel_queued(job, row["pool"], "cancelled by request", time.time())
            return {"state": State.CANCELLED.value}
        raise RequestError(f"job {job} has already ended ({row['state']})")

    def retry(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        job = fields["job"]
        row = self._job_row(job)
        if row["state"] not in RETRYABLE:
            raise RequestError(
                f"job {job} is {row['state']}; only an ended job that did not "
                "succeed can be retried"
            )
        owner = self.engine.owner_of(job)
        if owner is not None:  # its task would never learn of the new run
            raise RequestError(f"job {job} {owner}")
        self.journal.log_command("retry", {"job": job}, conn.uid, conn.pid)
        self.book.transition(job, row["pool"], State(row["state"]), State.QUEUED,
                             "retried by request", time.time())  # fmt: skip
        self.book.queued(row["pool"], row["priority"], job)
        return {"state": State.QUEUED.value}

    def purge(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        pool = fields["pool"]
        self.journal.log_command("purge", {"pool": pool}, conn.uid, conn.pid)
        now = time.time()
        cancelled = 0
        for job, job_pool in queries.queued_jobs(self.journal.reader, pool):
            if self.book.flight(job, job_pool) is None:  # those held are asked back below
                self.book.cancel_queued(job, job_pool, "purged", now)
                cancelled += 1
        recalled = self.book.recall_unstarted(pool, cancel=True)
        return {"cancelled": cancelled, "recalled": recalled}

    def freeze(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        frozen, pool = fields["frozen"], fields["pool"]
        self.journal.log_command("freeze" if frozen else "unfreeze", {"pool": pool},
                                 conn.uid, conn.pid)  # fmt: skip
        for name in [pool] if pool else POOL_NAMES:  # pools: Slurm's queue is Slurm's
            self.journal.set_frozen(name, frozen)
            self.book.set_frozen(name, frozen)
        return {"pools": {name: self.book.lanes[name].frozen for name in POOL_NAMES}}

    def wait(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        jobs = fields["jobs"]
        states = queries.states_of(self.journal.reader, jobs)
        missing = [job for job in jobs if job not in states]
        if missing:
            raise RequestError(f"no job {missing[0]}")
        pending = {job for job, state in states.items() if state not in END_STATES}
        if not pending:
            return {"states": states}
        self.book.wait(conn, request_id, pending, states=states)
        return None

    def prune(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        """Answered once done: a batch per turn (see pruning.py)."""
        self.journal.log_command("prune", fields, conn.uid, conn.pid)
        self.pruner.prune(fields["older_than"], fields["state"], conn, request_id)
        return None

    def task_submit(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        try:
            task = task_spec.task_from_json(fields["task"])
            task_spec.check(task)
        except task_spec.TaskError as exc:
            raise RequestError(str(exc)) from None
        for transform in task.transforms:  # its units would stay queued forever
            pool = pool_for(transform.backend, transform.queue) or self.settings.default_pool
            kind = "cmd" if transform.cmd else "call"
            self._check_runs(pool, kind, f"transform {transform.name!r}: ")
        self.journal.log_command("task_submit", {"name": task.name}, conn.uid, conn.pid)
        return {"task": self.engine.submit(task, fields["task"], fields["context"], time.time())}

    def task_control(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        self.journal.log_command("task_control", fields, conn.uid, conn.pid)
        try:
            said = self.engine.control(fields["task"], fields["action"], fields["unit"])
        except TaskRequestError as exc:
            raise RequestError(str(exc)) from None
        return {"said": said}

    def task_wait(self, conn: Connection, request_id: Any, fields: dict[str, Any]) -> Reply:
        """Answered with the task's end state once it has one."""
        row = task_row(self.journal.reader, fields["task"])
        if row is None:
            raise RequestError(f"no task {fields['task']}")
        if row["state"] in TASK_END_STATES:
            return {"state": row["state"]}
        self.book.wait_task(conn, request_id, fields["task"])
        return None


def _journal_mb(specs: list[JobSpec]) -> float:
    """A generous guess of what adding `specs` takes on disk: rows, indexes, WAL (each
    text written to the WAL, then to the table, and UTF-8 may take 4 bytes a character)."""
    return sum(2_000 + 4 * spec.text_size() for spec in specs) / 1e6
