"""Startup reconciliation: what becomes of the jobs the previous daemon left unfinished.

All crash-restore policy is in `plan`:
- queued: stays queued. One that had been handed to an executor (its attempt is in
  the journal, its start is not: starts are journaled lazily) may have started just
  before the daemon died, and may be what killed it: it is taken for running (its
  start is recorded), as below. Only a job that must not run twice, whose start is
  journaled before it runs, cannot have started: it stays queued, its attempt
  closed as lost, so that `gsup show` tells of the hand-over.
- running: its attempt's executor decides. One whose attempt still runs elsewhere (a
  batch job outlives the daemon) takes it back, and the job stays running. Otherwise
  the attempt was lost with the daemon (a local pool dies with it): the job goes back
  to the queue if its on_lost policy is `requeue` (and it is not already poison), or
  ends `lost` (on_lost=fail: jobs that must not run twice). A daemon's death counts
  towards poison as a pool death does (a job may be what kills the daemon: after
  POISON_AFTER_LOST deaths in flight it ends lost), but the run is not charged to its
  retries.
`apply` journals those decisions in the daemon's first transaction.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from gsup.journal.pending import Unfinished, unfinished
from gsup.lifecycle import POISON_AFTER_LOST, lost_reason, should_retry
from gsup.states import State

if TYPE_CHECKING:
    from gsup.executors.base import Executor
    from gsup.supervisor.jobs import JobBook

LOST_WITH_DAEMON = "lost with the daemon"
REATTACHED = "reattached"
REQUEUE = "requeue"
ENDS_LOST = "ends lost"
STAYS_QUEUED = "stays queued"
HANDED_OVER = "handed to its executor when the daemon died; it may have started"
NOT_STARTED = "handed to its executor when the daemon died; not started (it must not run twice)"


@dataclass
class Decision:
    job: Unfinished
    action: str  # REATTACHED, REQUEUE, ENDS_LOST or STAYS_QUEUED
    why: str
    handed: bool = False  # queued, handed to its executor: it may have started


@dataclass
class RecoveryReport:
    queued: int = 0
    decisions: list[Decision] = field(default_factory=list)

    def jobs(self, action: str) -> list[int]:
        return [d.job.job for d in self.decisions if d.action == action]

    def lines(self) -> list[str]:
        return [self.summary()] + [
            f"  job {d.job.job} ({d.job.pool}): {d.action}: {d.why}" for d in self.decisions
        ]

    def summary(self) -> str:
        requeued, lost = self.jobs(REQUEUE), self.jobs(ENDS_LOST)
        text = (
            f"recovery: {self.queued} queued kept, {len(requeued)} running requeued"
            f"{_ids(requeued)}, {len(lost)} running ended lost{_ids(lost)}"
        )
        handed = self.jobs(STAYS_QUEUED)
        if handed:
            text += f", {len(handed)} queued handed over, not started{_ids(handed)}"
        reattached = self.jobs(REATTACHED)
        if reattached:
            text += f", {len(reattached)} still running, followed again{_ids(reattached)}"
        return text


def _ids(ids: list[int], limit: int = 20) -> str:
    if not ids:
        return ""
    shown = ", ".join(map(str, ids[:limit]))
    return f" ({shown}{', …' if len(ids) > limit else ''})"


def plan(conn: sqlite3.Connection, executors: Mapping[str, Executor]) -> RecoveryReport:
    """Decide, from the journal and each attempt's executor, what becomes of each
    unfinished job."""
    queued, running, handed = unfinished(conn)
    report = RecoveryReport(queued=queued)
    for job in handed:
        if job.policy.runs_once:
            report.decisions.append(Decision(job, STAYS_QUEUED, NOT_STARTED))
        else:
            report.decisions.append(_lost(job, HANDED_OVER, handed=True))
    for job in running:
        executor = executors.get(job.executor or job.pool)
        if job.attempt is not None and executor is not None and executor.reattach(job):
            report.decisions.append(Decision(job, REATTACHED, f"on {job.external_id}"))
        else:
            report.decisions.append(_lost(job, LOST_WITH_DAEMON))
    return report


def _lost(job: Unfinished, why: str, handed: bool = False) -> Decision:
    """A run lost with the daemon: requeued, unless the job must not run twice or is
    poison (this death counts towards it)."""
    policy = replace(job.policy, lost_count=job.policy.lost_count + 1)
    if should_retry(State.LOST, policy):
        count = policy.lost_count
        deaths = f"{count} death{'s' * (count != 1)} in flight; {POISON_AFTER_LOST} make it poison"
        return Decision(job, REQUEUE, f"{why} ({deaths})", handed)
    return Decision(job, ENDS_LOST, lost_reason(policy, why), handed)


def apply(book: JobBook, report: RecoveryReport) -> None:
    if not report.decisions:
        return
    now = time.time()
    detail = {"requeued": report.jobs(REQUEUE), "lost": report.jobs(ENDS_LOST),
              "reattached": report.jobs(REATTACHED)}  # fmt: skip
    book.journal.log_command("recover", detail, None, None)
    for decision in report.decisions:
        job = decision.job
        if decision.action == REATTACHED:
            book.adopt(job)
            continue
        if decision.action == STAYS_QUEUED:
            assert job.attempt is not None
            book.journal.close_attempt(job.attempt, State.LOST, decision.why, now, charged=False)
            continue
        requeue = decision.action == REQUEUE  # not the job's fault: its run is not charged
        if decision.handed:  # its start is recorded: it may have run
            book.transition(job.job, job.pool, State.QUEUED, State.RUNNING, HANDED_OVER, now,
                            charge=1, attempt=job.attempt)  # fmt: skip
        if job.attempt is not None:
            book.journal.close_attempt(job.attempt, State.LOST, decision.why, now, not requeue)
        book.transition(job.job, job.pool, State.RUNNING, State.LOST, decision.why, now,
                        charge=-1 if requeue else 0, lost=1)  # fmt: skip
        if requeue:
            book.transition(job.job, job.pool, State.LOST, State.QUEUED, "requeued after loss", now)
