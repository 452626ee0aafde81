"""Job bookkeeping: what runs where, what each attempt's end means, who waits for what.

The book hands queued jobs to executors (priority, then FIFO; suspects alone), follows
each one it handed over (a `Flight`) until its executor reports the end, maps that
end onto the life-cycle, and answers the clients waiting for jobs to end. It is the
supervisor's only caller of `Writer.transition`, so every state change also reaches
its subscribers (`subscribe`). It needs no socket and no process: tests drive it
with a fake executor and a clock of their own.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from gsup.executors.base import Attempt, AttemptEnd, Executor
from gsup.journal import pending, queries
from gsup.journal.pending import QueuedJob, Unfinished
from gsup.journal.writer import JournalConflict, Writer
from gsup.lifecycle import (
    Ending,
    Policy,
    Settled,
    StateChange,
    Stop,
    lost_reason,
    settle,
    should_retry,
)
from gsup.protocol import JobSpec
from gsup.states import State
from gsup.supervisor.loop import report_bug, say
from gsup.supervisor.waiters import Waiter, Waiters


class Clock(Protocol):
    """The loop's timers (monotonic deadlines)."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Any: ...


Answer = Callable[[Any, Any, dict[str, Any]], None]  # (connection, request id, reply)


@dataclass
class Flight:
    """A job handed to an executor, until the executor reports its end."""

    job: int
    pool: str
    priority: int
    timeout: float | None
    policy: Policy  # its `attempts` include this run once it has started
    attempt: int  # the journal's attempt, written at the hand-over
    started: bool = False
    stop: Stop | None = None  # why the book asked the executor to stop it
    recalling: bool = False  # asked back before it started (displaced, frozen, stopping)
    cancel_unstarted: bool = False  # a purge asked it back: if it comes back, cancel it
    timer: Any = None  # its timeout

    @property
    def waiting(self) -> bool:
        """Held by its executor, no worker has it, and it is not being asked back."""
        return not self.started and not self.recalling and self.stop is None

    @property
    def key(self) -> tuple[int, int]:
        return self.priority, self.job


@dataclass
class Lane:
    """One executor's side of the book."""

    executor: Executor
    frozen: bool = False
    flights: dict[int, Flight] = field(default_factory=dict)
    maybe_queued: bool = True  # cleared when a dispatch finds no job ready
    maybe_better: bool = False  # a job queued that beats one the executor holds
    wake: Any = None  # timer: the earliest delayed retry falls due...
    wake_at: float = math.inf  # ...at this wall time

    def waiting(self) -> list[Flight]:
        """The jobs its executor holds for a free worker, best first."""
        return sorted((f for f in self.flights.values() if f.waiting), key=lambda f: f.key)

    def worst_waiting(self) -> Flight | None:
        waiting = [f for f in self.flights.values() if f.waiting]
        return max(waiting, key=lambda f: f.key) if waiting else None

    def coming_back(self) -> int:
        """Jobs it holds unstarted that are on their way back (asked back, or stopped):
        still queued in the journal, so a query for the next jobs finds them too."""
        return sum(not f.started and not f.waiting for f in self.flights.values())


class JobBook:
    def __init__(
        self,
        journal: Writer,
        executors: Iterable[Executor],
        clock: Clock,
        answer: Answer,
        wall: Callable[[], float] = time.time,  # times stored in the journal
    ) -> None:
        self.journal = journal
        self.lanes = {executor.name: Lane(executor) for executor in executors}
        self.clock = clock
        self.wall = wall
        self.answer = answer
        self.waiters = Waiters()
        self.hooks: list[Callable[[StateChange], None]] = []
        self.end_hooks: list[Callable[[int, State], None]] = []
        self.added_hooks: list[Callable[[list[JobSpec]], None]] = []
        self.stopping = False

    def subscribe(self, hook: Callable[[StateChange], None]) -> None:
        """Call `hook` on every state change, as it is written (in the same turn: what
        the hook writes is committed with it)."""
        self.hooks.append(hook)

    def subscribe_ends(self, hook: Callable[[int, State], None]) -> None:
        """Call `hook(job, state)` when a job reaches its final state (no retry follows)."""
        self.end_hooks.append(hook)

    def transition(self, job: int, pool: str, before: State | None, after: State, why: str,
                   at: float, **columns: Any) -> None:  # fmt: skip
        """The one way the supervisor changes a job's state (see Writer.transition)."""
        self.journal.transition(job, before, after, why, at, **columns)  # type: ignore[arg-type]
        change = StateChange(job, pool, before, after, why, at)
        for hook in self.hooks:
            hook(change)

    def in_flight(self) -> int:
        """Attempts running that a stop waits for (not batch jobs, which outlive it)."""
        return sum(
            f.started
            for lane in self.lanes.values()
            if not lane.executor.outlives_daemon
            for f in lane.flights.values()
        )

    def flight(self, job: int, pool: str) -> Flight | None:
        lane = self.lanes.get(pool)
        return None if lane is None else lane.flights.get(job)

    # --- jobs entering the queue -----------------------------------------------------

    def queued(self, pool: str, priority: int, job: int | None = None) -> None:
        """A job of `pool` is queued (added, retried, requeued, given back); `job`: its
        id (None: a new job, which comes after every other of its priority)."""
        lane = self.lanes[pool]
        lane.maybe_queued = True
        worst = lane.worst_waiting()
        if worst is not None and (priority, math.inf if job is None else job) < worst.key:
            lane.maybe_better = True

    def added(self, specs: list[JobSpec]) -> None:
        """New jobs were written (queued): they are dispatched as their turn comes."""
        for hook in self.added_hooks:
            hook(specs)
        best: dict[str, int] = {}
        for spec in specs:
            best[spec.pool] = min(best.get(spec.pool, 9), spec.priority)
        for pool, priority in best.items():
            self.queued(pool, priority)

    # --- dispatch ---------------------------------------------------------------------

    def dispatch(self) -> None:
        """Hand queued jobs to executors with room, in priority then FIFO order.

        An executor holds jobs ahead of a free worker, best first; a job of better
        priority than one it holds takes that one's place (which is asked back), so
        that an urgent job waits only for a free worker.

        A suspect, a job that was in flight when its executor died, runs alone where
        jobs share a process: if it kills the executor again, no innocent neighbour is
        charged, and a job only becomes poison by deaths it alone can have caused.
        """
        if self.stopping:
            return
        for lane in self.lanes.values():
            if lane.frozen or (lane.executor.shared_fate and self._suspect_aboard(lane)):
                continue
            free = lane.executor.capacity()
            if lane.maybe_better:
                self._dispatch_better(lane, free)
            elif free > 0 and lane.maybe_queued:
                self._fill(lane, free)

    def look_again(self) -> None:
        """A stalled turn was written again: what its reads missed (the turn's own
        writes) may be queued jobs, so the next dispatch looks in every lane."""
        for lane in self.lanes.values():
            lane.maybe_queued = True

    @staticmethod
    def _suspect_aboard(lane: Lane) -> bool:
        return any(f.policy.lost_count for f in lane.flights.values())

    def _fill(self, lane: Lane, free: int) -> None:
        """Jobs that come after the last one the executor holds (all before it are held)."""
        worst = lane.worst_waiting()
        limit = free + lane.coming_back()
        jobs, more = self._candidates(lane, limit, after=worst.key if worst else None)
        if not more:
            self._sleep_until_due(lane)
        for job in jobs[:free]:
            if self._hand_over(lane, job) is None:
                break

    def _dispatch_better(self, lane: Lane, free: int) -> None:
        """Some queued job may come before one the executor holds: fill the free room with
        the best, and let a better priority take the place of the worst held job."""
        held = lane.waiting()
        limit = free + 2 * len(held) + lane.coming_back()
        jobs, more = self._candidates(lane, limit)
        if not more:
            self._sleep_until_due(lane)
        lane.maybe_better = False
        for job in jobs:
            if self._must_wait_alone(lane, job):
                return
            if free > 0:
                free -= 1
            elif held and job.priority < held[-1].priority:
                displaced = held.pop()
                displaced.recalling = True
                lane.executor.recall(displaced.job)
            else:  # it waits for room; until then, look before the held jobs again
                lane.maybe_better = bool(held) and (job.priority, job.id) < held[-1].key
                return
            flight = self._hand_over(lane, job)
            if flight is None:
                return
            bisect.insort(held, flight, key=lambda f: f.key)
        lane.maybe_better = more and bool(held)

    def _candidates(
        self, lane: Lane, limit: int, after: tuple[int, int] | None = None
    ) -> tuple[list[QueuedJob], bool]:
        """The next queued jobs no executor holds; whether there may be more."""
        if limit <= 0:
            return [], True
        jobs = pending.next_queued(
            self.journal.reader, lane.executor.name, limit, self.wall(), after=after
        )
        return [job for job in jobs if job.id not in lane.flights], len(jobs) == limit

    def _sleep_until_due(self, lane: Lane) -> None:
        """Nothing more is ready: look again when a job is queued or a delayed retry
        falls due."""
        lane.maybe_queued = False
        due = pending.next_retry_time(self.journal.reader, lane.executor.name, self.wall())
        if due is not None:
            self._wake_at(lane, due)

    def _wake_at(self, lane: Lane, due: float) -> None:
        """Look at `lane` again at wall time `due`, when a delayed retry falls due."""
        if due >= lane.wake_at:
            return  # an earlier wake comes first, and looks again then
        if lane.wake is not None:
            lane.wake.cancel()
        lane.wake_at = due
        lane.wake = self.clock.call_at(
            self.clock.now() + max(0.0, due - self.wall()), lambda: self._due(lane)
        )

    def wall_clock_stepped(self, by: float) -> None:
        """The wall clock was stepped `by` seconds: delayed retries keep the delay they
        had left, as timeouts do (the journal keeps wall times: they are moved)."""
        self.journal.shift_delays(by)
        for lane in self.lanes.values():
            if lane.wake is not None:
                lane.wake.cancel()
            lane.wake, lane.wake_at = None, math.inf
            lane.maybe_queued = True  # dispatch looks again, and sets the wake anew

    def _due(self, lane: Lane) -> None:
        """A delayed retry falls due: it may come before what the executor holds."""
        lane.wake, lane.wake_at = None, math.inf
        lane.maybe_queued = lane.maybe_better = True
        later = pending.next_retry_time(self.journal.reader, lane.executor.name, self.wall())
        if later is not None:
            self._wake_at(lane, later)

    @staticmethod
    def _suspect(lane: Lane, job: QueuedJob) -> bool:
        return lane.executor.shared_fate and job.policy.lost_count > 0

    def _must_wait_alone(self, lane: Lane, job: QueuedJob) -> bool:
        """A suspect waits until its executor holds nothing (and so does what follows it)."""
        if self._suspect(lane, job) and lane.flights:
            lane.maybe_queued = True
            return True
        return False

    def _hand_over(self, lane: Lane, job: QueuedJob) -> Flight | None:
        """Submit `job`; None when nothing may follow it now: it runs alone (a suspect),
        or it must itself wait until it can."""
        if self._must_wait_alone(lane, job):
            return None
        suspect = self._suspect(lane, job)
        executor = lane.executor
        attempt = self.journal.open_attempt(job.id, executor.name, executor.backend, self.wall())
        flight = Flight(job.id, executor.name, job.priority, job.timeout, job.policy, attempt)
        lane.flights[job.id] = flight
        runs_once = job.policy.runs_once
        executor.submit(Attempt(job.id, attempt, job.kind, job.target, job.spec, job.priority,
                                runs_once, job.timeout))  # fmt: skip
        if suspect:
            lane.maybe_queued = True
            return None
        return flight

    # --- cancelling, asking jobs back or to stop --------------------------------------------

    def cancel_queued(self, job: int, pool: str, why: str, at: float) -> None:
        """Cancel a queued job that no executor holds."""
        self.transition(job, pool, State.QUEUED, State.CANCELLED, why, at)
        self._ended(job, State.CANCELLED)

    def stop_flight(self, flight: Flight, why: Stop) -> None:
        if flight.stop is None:
            flight.stop = why
            self.lanes[flight.pool].executor.stop(flight.job)

    def recall_unstarted(self, pool: str | None, cancel: bool) -> int:
        """Ask back what executors hold but have not started; each comes back (to be
        cancelled if `cancel`), or runs if a worker took it meanwhile."""
        asked = 0
        for lane in self._selected(pool):
            for flight in lane.flights.values():
                if flight.started or flight.stop is not None:
                    continue
                flight.cancel_unstarted = flight.cancel_unstarted or cancel
                if not flight.recalling:
                    flight.recalling = True
                    lane.executor.recall(flight.job)
                asked += 1
        return asked

    def set_frozen(self, pool: str | None, frozen: bool) -> None:
        for lane in self._selected(pool):
            lane.frozen, lane.maybe_queued = frozen, True
        if frozen:
            self.recall_unstarted(pool, cancel=False)

    def _selected(self, pool: str | None) -> list[Lane]:
        return list(self.lanes.values()) if pool is None else [self.lanes[pool]]

    def _time_out(self, flight: Flight) -> None:
        flight.timer = None
        if self.lanes[flight.pool].flights.get(flight.job) is flight:  # not a later attempt
            self.stop_flight(flight, Stop.TIMEOUT)

    def adopt(self, job: Unfinished) -> None:
        """Follow again an attempt that outlived the daemon (recovery reattached it)."""
        assert job.attempt is not None
        flight = Flight(job.job, job.pool, job.priority, job.timeout, job.policy, job.attempt,
                        started=True)  # fmt: skip
        self.lanes[job.pool].flights[job.job] = flight
        if job.timeout is not None and job.started is not None:
            left = job.timeout - (self.wall() - job.started)
            flight.timer = self.clock.call_at(
                self.clock.now() + max(0.0, left), lambda: self._time_out(flight)
            )

    # --- what executors report -----------------------------------------------------------

    def started(self, executor: Executor, job: int, external_id: str, at: float) -> None:
        flight = self.lanes[executor.name].flights.get(job)
        if flight is None or flight.started:
            return
        try:
            self._start(flight, executor, external_id, at)
        except Exception:  # a bug must not take the daemon down; its end will settle it
            report_bug()
            return
        if flight.timeout is not None:
            flight.timer = self.clock.call_at(
                self.clock.now() + flight.timeout, lambda: self._time_out(flight)
            )
        if flight.policy.runs_once:
            self.journal.must_sync()  # its go-ahead leaves once the start is on the disk
            executor.confirm(job)

    def _start(self, flight: Flight, executor: Executor, external_id: str | None,
               at: float) -> None:  # fmt: skip
        """Journal the start of `flight`'s attempt: the job is running."""
        self.journal.start_attempt(flight.attempt, external_id, at)
        flight.started, flight.recalling = True, False  # it runs: too late to ask it back
        flight.policy = replace(flight.policy, attempts=flight.policy.attempts + 1)
        why = f"started on {executor.name}/{external_id}" if external_id else "started"
        self.transition(flight.job, flight.pool, State.QUEUED, State.RUNNING, why, at, charge=1,
                        attempt=flight.attempt)  # fmt: skip

    def noted(self, executor: Executor, job: int, text: str) -> None:
        flight = self.lanes[executor.name].flights.get(job)
        if flight is not None and flight.started:
            self.journal.note_attempt(flight.attempt, text)

    def ended(self, executor: Executor, job: int, end: AttemptEnd) -> None:
        flight = self.lanes[executor.name].flights.pop(job, None)
        if flight is None:
            return
        if flight.timer is not None:
            flight.timer.cancel()
        try:
            self._settle(executor, flight, end)
        except Exception as exc:  # a bug must not leave the job running with nobody on it
            report_bug()
            self._settle_as_lost(flight, exc)

    def _settle(self, executor: Executor, flight: Flight, end: AttemptEnd) -> None:
        settled = settle(end.ending, end.why, flight.stop, flight.timeout, flight.cancel_unstarted)
        now = self.wall()
        if not flight.started and end.ending != Ending.RECALLED:
            self._start(flight, executor, None, now)  # it ran, unannounced
        if flight.started:
            self._settle_run(flight, end, settled, now)
        else:
            self._given_back(flight, settled, now)

    def _given_back(self, flight: Flight, settled: Settled, now: float) -> None:
        """None of it ran: there was no attempt, and the job is queued still (or
        cancelled, if that is what it was asked back for)."""
        self.journal.drop_attempt(flight.attempt)
        if settled.state == State.CANCELLED:
            self.cancel_queued(flight.job, flight.pool, settled.why, now)
        else:
            self.queued(flight.pool, flight.priority, flight.job)

    def _settle_run(self, flight: Flight, end: AttemptEnd, settled: Settled, now: float) -> None:
        """A run ended: journal it, then requeue the job or end it, by its policy."""
        state, why, charged = settled.state or State.QUEUED, settled.why, settled.charged
        if state == State.QUEUED and end.ending != Ending.RECALLED and flight.policy.runs_once:
            state, charged = State.LOST, True  # it may have run: it must not run again
        lost = int(state == State.LOST)
        policy = replace(flight.policy, lost_count=flight.policy.lost_count + lost)
        retry = should_retry(state, policy, tuple(end.outcome.get("causes", ())))
        if state == State.LOST and not retry:
            why = lost_reason(policy, why)
        self.journal.close_attempt(flight.attempt, state, why, now, charged, end.usage)
        self.transition(flight.job, flight.pool, State.RUNNING, state, why, now,
                        charge=0 if charged else -1, lost=lost, outcome=end.outcome)  # fmt: skip
        if state == State.QUEUED:
            self.queued(flight.pool, flight.priority, flight.job)
        elif retry:
            self._retry(flight, state, policy.delay() if state != State.LOST else 0.0, now)
        else:
            self._ended(flight.job, state)

    def _retry(self, flight: Flight, after: State, delay: float, now: float) -> None:
        why = f"retry after {after}" + (f" in {delay:g}s" if delay else "")
        self.transition(flight.job, flight.pool, after, State.QUEUED, why, now,
                        not_before=now + delay if delay else None)  # fmt: skip
        if delay:
            self._wake_at(self.lanes[flight.pool], now + delay)
        else:
            self.queued(flight.pool, flight.priority, flight.job)

    def _settle_as_lost(self, flight: Flight, exc: Exception) -> None:
        """An end that could not be journaled as it came: the job ends lost, so that it
        is not left running with nothing following it."""
        if not flight.started:
            self.journal.drop_attempt(flight.attempt)
            self.queued(flight.pool, flight.priority, flight.job)
            return
        if isinstance(exc, JournalConflict):
            say(f"job {flight.job}: {exc}; its end is not recorded")
            return
        why = f"gsup could not record its end ({type(exc).__name__}: {exc})"
        now = self.wall()
        try:
            self.transition(flight.job, flight.pool, State.RUNNING, State.LOST, why, now)
        except Exception:
            report_bug()
            say(f"job {flight.job}: its end could not be journaled; the next start recovers it")
            return
        with contextlib.suppress(Exception):
            self.journal.close_attempt(flight.attempt, State.LOST, why, now)
        self._ended(flight.job, State.LOST)

    # --- the daemon stopping ---------------------------------------------------------------

    def begin_stop(self) -> None:
        """Take no new work; ask back what has not started."""
        self.stopping = True
        self.recall_unstarted(None, cancel=False)

    def halt(self, why: str) -> None:
        """End every attempt now; executors report each (requeued, or lost if it must
        not run twice)."""
        for lane in self.lanes.values():
            lane.executor.halt(why)
        for waiter in self.waiters.take_all():
            self.answer(waiter.conn, waiter.request_id, {"ok": False, "error": "daemon stopped"})

    # --- waiters ----------------------------------------------------------------------------

    def wait(self, conn: Any, request_id: Any, jobs: set[int], then_get: int | None = None,
             states: dict[int, str] | None = None) -> None:  # fmt: skip
        """Answer `request_id` on `conn` once every job of `jobs` has ended."""
        self.waiters.add(Waiter(conn, request_id, set(jobs), states or {}, then_get))

    def forget(self, conn: Any) -> None:
        """A client went away: nobody waits on its behalf any more."""
        self.waiters.forget(conn)

    def _ended(self, job: int, state: State) -> None:
        """A job reached its final state: tell the subscribers, answer who waits for it."""
        for hook in self.end_hooks:
            hook(job, state)
        for waiter in self.waiters.ended(job, state.value):
            self.answer(waiter.conn, waiter.request_id, self._waited(waiter))

    def wait_task(self, conn: Any, request_id: Any, task: int) -> None:
        """Answer `request_id` on `conn` once task `task` has ended (`task_ended`)."""
        self.waiters.add(Waiter(conn, request_id, {("task", task)}))

    def task_ended(self, task: int, state: str) -> None:
        for waiter in self.waiters.ended(("task", task), state):
            self.answer(waiter.conn, waiter.request_id, {"ok": True, "state": state})

    def _waited(self, waiter: Waiter) -> dict[str, Any]:
        if waiter.then_get is None:
            return {"ok": True, "states": waiter.states}
        row = queries.job_row(self.journal.reader, waiter.then_get)
        assert row is not None
        return {"ok": True, "job": queries.summary(self.journal.reader, row, queries.INLINE_RESULT)}
