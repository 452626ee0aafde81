"""An executor in the supervisor's own process, driven by hand: for tests of the
scheduling (which run in milliseconds, with no process to start), and the smallest
example of the contract in base.py.

Nothing runs by itself: a test plays the executor's workers with `begin` and
`finish`, which report at once, as a callback of the loop would. What the contract
says happens later (an attempt given back after `recall`) waits in `pending` until
`deliver` is called, as the next turn of a real loop would bring it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gsup.executors.base import Attempt, AttemptEnd, Executor, Loop, Reports
from gsup.lifecycle import Ending


@dataclass
class FakeAttempt:
    attempt: Attempt
    started: bool = False
    confirmed: bool = False


class FakeExecutor(Executor):
    backend = "fake"

    def __init__(self, name: str, slots: int = 2, shared_fate: bool = False) -> None:
        super().__init__(name)
        self.slots = slots
        self.shared_fate = shared_fate  # type: ignore[misc]
        self.held: dict[int, FakeAttempt] = {}
        self.submitted: list[int] = []  # job ids, in the order they were handed over
        self.stopped: list[int] = []
        self.recalled: list[int] = []
        self.pending: list[Callable[[], None]] = []
        self.flushes = 0

    # --- the contract --------------------------------------------------------------

    def start(self, loop: Loop | None, reports: Reports) -> None:
        self.reports = reports

    def capacity(self) -> int:
        return max(0, self.slots - len(self.held))

    def submit(self, attempt: Attempt) -> None:
        self.held[attempt.job] = FakeAttempt(attempt)
        self.submitted.append(attempt.job)

    def confirm(self, job: int) -> None:
        self.held[job].confirmed = True  # a test checks it after the turn's commit

    def stop(self, job: int) -> None:
        self.stopped.append(job)
        held = self.held.get(job)
        if held is not None and not held.started:
            self.pending.append(lambda: self._end(job, Ending.RECALLED, "given back"))

    def recall(self, job: int) -> None:
        self.recalled.append(job)
        held = self.held.get(job)
        if held is not None and not held.started:
            self.pending.append(lambda: self._end(job, Ending.RECALLED, "given back"))

    def flush(self, durable: bool) -> None:
        self.flushes += durable

    def halt(self, why: str) -> None:
        for job, held in list(self.held.items()):
            self._end(job, Ending.INTERRUPTED if held.started else Ending.RECALLED, why)

    # --- playing the workers ----------------------------------------------------------

    def next_up(self) -> int:
        """The job a free worker would take now: best priority, then lowest id."""
        waiting = [h.attempt for h in self.held.values() if not h.started]
        return min(waiting, key=lambda a: (a.priority, a.job)).job

    def begin(self, job: int | None = None, worker: str = "fake-worker") -> int:
        """A worker takes a job up (by default, the one `next_up` names)."""
        job = self.next_up() if job is None else job
        self.held[job].started = True
        self.reports.started(self, job, worker, 0.0)
        return job

    def finish(
        self, job: int, ending: Ending = Ending.DONE, why: str = "returned", **outcome: Any
    ) -> None:
        usage = outcome.pop("usage", {})
        self._end(job, ending, why, outcome, usage)

    def deliver(self) -> None:
        """Send the reports that were due to come later."""
        pending, self.pending = self.pending, []
        for report in pending:
            report()

    def _end(
        self,
        job: int,
        ending: Ending,
        why: str,
        outcome: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        if self.held.pop(job, None) is not None:
            self.reports.ended(self, job, AttemptEnd(ending, why, outcome or {}, usage or {}))
