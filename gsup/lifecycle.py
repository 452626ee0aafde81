"""The job state machine and the retry decision: the one place that says what may follow what.

    queued ─> running ─> done | failed | timeout | cancelled | lost
    queued ─> cancelled
    running ─> queued                       interrupted through no fault of its own
                                            (daemon stop, a neighbour's pool recycle):
                                            requeued without charging an attempt
    failed | timeout | lost | cancelled ─> queued      retry, by policy or by hand

`running` starts when the supervisor hands the job to a pool (journaled before the
hand-over); the pool reports the moment a thread takes it up, which sets `worker`
and `started` without a transition.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    LOST = "lost"


END_STATES = frozenset({State.DONE, State.FAILED, State.TIMEOUT, State.CANCELLED, State.LOST})
RETRYABLE = frozenset({State.FAILED, State.TIMEOUT, State.LOST, State.CANCELLED})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELLED}),
    State.RUNNING: frozenset(END_STATES | {State.QUEUED}),
    State.DONE: frozenset(),
    **{state: frozenset({State.QUEUED}) for state in RETRYABLE},
}

# A job that was in flight during this many pool deaths is not requeued again: it is
# likely what kills the pool (a poison job). After its first, it runs alone, so that
# the deaths it is charged with can only be its own (see the dispatcher).
POISON_AFTER_LOST = 3
MAX_RETRY_DELAY = 24 * 3600.0


class TransitionError(Exception):
    pass


def check_transition(before: State | str | None, after: State) -> None:
    if before is None and after == State.QUEUED:
        return  # a new job
    if after not in TRANSITIONS.get(State(before), frozenset()):
        raise TransitionError(f"a job cannot go from {before} to {after}")


@dataclass(frozen=True)
class Policy:
    """What a job asked for when a run ends badly; `attempts` counts charged runs so far."""

    retries: int = 0
    on_lost: str = "requeue"
    attempts: int = 0
    lost_count: int = 0  # pool deaths it was in flight for
    retry_delay: float = 0.0  # seconds before the first retry
    backoff: float = 2.0  # each further retry waits this many times longer
    retry_on: tuple[str, ...] | None = None  # None: any exception, timeout or exit code

    def delay(self) -> float:
        """Seconds to wait before the next retry, after `attempts` runs (a day at most)."""
        growth = self.backoff ** min(max(0, self.attempts - 1), 20)  # 1000**20: no overflow
        return min(self.retry_delay * growth, MAX_RETRY_DELAY)


def should_retry(state: State, policy: Policy, causes: tuple[str, ...] = ()) -> bool:
    """Whether a job that just ended in `state` goes back to the queue.

    `causes` name what ended the run: the exception's class and its bases, "exit"
    for a command's non-zero exit; a timeout is "timeout". A lost job follows its
    on_lost policy alone, until it looks like poison.
    """
    if state == State.LOST:
        return policy.on_lost == "requeue" and policy.lost_count < POISON_AFTER_LOST
    if state not in (State.FAILED, State.TIMEOUT) or policy.attempts > policy.retries:
        return False
    if policy.retry_on is None:
        return True
    causes = ("timeout",) if state == State.TIMEOUT else causes
    return any(cause in policy.retry_on for cause in causes)


def lost_reason(policy: Policy, why: str) -> str:
    """The end reason of a lost job that is not requeued."""
    if policy.on_lost == "requeue" and policy.lost_count >= POISON_AFTER_LOST:
        return f"poison: in flight during {policy.lost_count} pool deaths ({why})"
    return f"{why}; on_lost=fail"
