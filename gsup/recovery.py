"""Startup reconciliation: what becomes of the jobs the previous daemon left unfinished.

All crash-restore policy is in `plan`:
- queued: stays queued; nothing ran.
- running: its pool died with the previous daemon, so the attempt is `lost`. The job
  goes back to the queue if its on_lost policy is `requeue` (and it is not already
  poison); otherwise it stays `lost` (on_lost=fail: jobs that must not run twice).
  A daemon's death is not counted against the job as a pool death is.
`apply` journals those decisions and the report in the daemon's first transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gsup.journal import Writer, unfinished_jobs
from gsup.lifecycle import State, lost_reason, should_retry

LOST_WITH_DAEMON = "lost with the daemon"


@dataclass
class Decision:
    job: int
    pool: str
    requeue: bool
    why: str


@dataclass
class RecoveryReport:
    queued: int = 0
    decisions: list[Decision] = field(default_factory=list)

    @property
    def requeued(self) -> list[int]:
        return [d.job for d in self.decisions if d.requeue]

    @property
    def lost(self) -> list[int]:
        return [d.job for d in self.decisions if not d.requeue]

    def lines(self) -> list[str]:
        return [self.summary()] + [
            f"  job {d.job} ({d.pool}): {'requeue' if d.requeue else 'ends lost'}: {d.why}"
            for d in self.decisions
        ]

    def summary(self) -> str:
        return (
            f"recovery: {self.queued} queued kept, {len(self.requeued)} running requeued"
            f"{_ids(self.requeued)}, {len(self.lost)} running ended lost{_ids(self.lost)}"
        )


def _ids(ids: list[int], limit: int = 20) -> str:
    if not ids:
        return ""
    shown = ", ".join(map(str, ids[:limit]))
    return f" ({shown}{', …' if len(ids) > limit else ''})"


def plan() -> RecoveryReport:
    """Decide, from the journal alone, what becomes of each unfinished job."""
    queued, running = unfinished_jobs()
    report = RecoveryReport(queued=queued)
    for job, pool, policy in running:
        requeue = should_retry(State.LOST, policy)
        why = LOST_WITH_DAEMON if requeue else lost_reason(policy, LOST_WITH_DAEMON)
        report.decisions.append(Decision(job, pool, requeue, why))
    return report


def apply(journal: Writer, report: RecoveryReport, now: float) -> None:
    if not report.decisions:
        return
    journal.log_command("recover", {"requeued": report.requeued, "lost": report.lost}, None, None)
    for decision in report.decisions:
        journal.transition(decision.job, State.RUNNING, State.LOST, decision.why, now)
        if decision.requeue:
            journal.transition(decision.job, State.LOST, State.QUEUED, "requeued after loss", now)
