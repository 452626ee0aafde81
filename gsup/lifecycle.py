"""The job state machine and the retry decision: the one place that says what may follow what.

    queued ─> running ─> done | failed | timeout | cancelled | lost
    queued ─> cancelled
    running ─> queued                       interrupted through no fault of its own
                                            (daemon stop, a neighbour's pool recycle):
                                            requeued without charging an attempt
    failed | timeout | lost | cancelled ─> queued      retry, by policy or by hand

A job is `queued` until an executor reports that it has started it (a pool thread took
it up, a batch system accepted it): jobs handed to an executor ahead of a free worker
are still `queued`, and may be asked back. Each start opens an attempt; each end of a
run closes it with an `Ending`, which `settle` maps onto the job's next state.
The states themselves, which every reader of the journal shares, are in `gsup.states`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from gsup.states import END_STATES, RETRYABLE, State

TRANSITIONS: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.CANCELLED}),
    State.RUNNING: frozenset(END_STATES | {State.QUEUED}),
    State.DONE: frozenset(),
    **{state: frozenset({State.QUEUED}) for state in RETRYABLE},
}

# A job that was in flight during this many deaths of its pool (or of the daemon, see
# recovery) is not requeued again: it is likely what kills them (a poison job). After
# its first, it runs alone, so that the deaths it is charged with can only be its own
# (see the dispatcher).
POISON_AFTER_LOST = 3
MAX_RETRY_DELAY = 24 * 3600.0


class TransitionError(Exception):
    pass


def check_transition(before: State | str | None, after: State) -> None:
    if before is None and after == State.QUEUED:
        return  # a new job
    if before is None or after not in TRANSITIONS.get(State(before), frozenset()):
        raise TransitionError(f"a job cannot go from {before} to {after}")


@dataclass(frozen=True)
class StateChange:
    """One transition, as the supervisor's subscribers see it (tasks, metrics)."""

    job: int
    pool: str
    before: State | None
    after: State
    why: str
    at: float


# --- how an attempt ended, and what becomes of its job ------------------------------


class Ending(StrEnum):
    """How an attempt ended, as its executor reports it."""

    DONE = "done"  # returned, or exit code 0
    FAILED = "failed"  # raised, exited non-zero, or could not be started
    STOPPED = "stopped"  # stopped because the supervisor asked (a timeout, a cancel)
    RECALLED = "recalled"  # given back before any of its code ran
    INTERRUPTED = "interrupted"  # ended through no fault of its own (a neighbour, a halt)
    LOST = "lost"  # the executor lost it: its process died


class Stop(StrEnum):
    """Why the supervisor asked an executor to stop an attempt."""

    TIMEOUT = "timeout"
    CANCEL = "cancel"


@dataclass(frozen=True)
class Settled:
    """What becomes of a job whose attempt ended: its next state (None: it stays
    queued, nothing ran), the reason, and whether the run counts as an attempt."""

    state: State | None
    why: str
    charged: bool = True


def settle(
    ending: Ending, why: str, stop: Stop | None, timeout: float | None, cancel_unstarted: bool
) -> Settled:
    """Map an executor's `ending` onto the job's next state, by what the supervisor had
    asked: `stop` (a timeout or a cancel), `cancel_unstarted` (a purge that asked it
    back). Retries are decided after this, by `should_retry`."""
    if ending == Ending.DONE:
        return Settled(State.DONE, why)
    if ending == Ending.RECALLED:
        if stop == Stop.CANCEL or cancel_unstarted:
            return Settled(State.CANCELLED, "cancelled before it started", charged=False)
        return Settled(None, why, charged=False)
    asked = ending in (Ending.STOPPED, Ending.INTERRUPTED)  # whatever ended it, it was asked
    if asked and stop == Stop.TIMEOUT:
        return Settled(State.TIMEOUT, f"timed out after {timeout:g}s" + _detail(why))
    if asked and stop == Stop.CANCEL:
        return Settled(State.CANCELLED, "cancelled by request" + _detail(why))
    if ending == Ending.INTERRUPTED:
        return Settled(State.QUEUED, why, charged=False)
    if ending == Ending.LOST:
        return Settled(State.LOST, why)
    return Settled(State.FAILED, why)


def _detail(why: str) -> str:
    return "" if why in ("", "stopped") else f"; {why}"


# --- retries --------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """What a job asked for when a run ends badly; `attempts` counts charged runs so far."""

    retries: int = 0
    on_lost: str = "requeue"
    attempts: int = 0
    lost_count: int = 0  # deaths of its pool or the daemon it was in flight for
    retry_delay: float = 0.0  # seconds before the first retry
    backoff: float = 2.0  # each further retry waits this many times longer
    retry_on: tuple[str, ...] | None = None  # None: any exception, timeout or exit code

    @property
    def runs_once(self) -> bool:
        """A job that must not run twice: it starts only once the journal holds its start."""
        return self.on_lost == "fail"

    def delay(self) -> float:
        """Seconds to wait before the next retry, after `attempts` runs (a day at most)."""
        growth = self.backoff ** min(max(0, self.attempts - 1), 20)  # 1000**20: no overflow
        return min(self.retry_delay * growth, MAX_RETRY_DELAY)


# The cause of a failure that a retry would meet again: the target cannot be loaded (a
# missing module or attribute, a syntax error, arguments that cannot be read). Arguments
# that do not bind fail inside the call, as a TypeError, and are retried as any failure.
RECURRING = "gsup.targets.TargetError"


def should_retry(state: State, policy: Policy, causes: tuple[str, ...] = ()) -> bool:
    """Whether a job that just ended in `state` goes back to the queue.

    `causes` name what ended the run: the exception's class and its bases, "exit"
    for a command's non-zero exit; a timeout is "timeout". A lost job follows its
    on_lost policy alone, until it looks like poison. A RECURRING failure is retried
    only if `retry_on` names it.
    """
    if state == State.LOST:
        return policy.on_lost == "requeue" and policy.lost_count < POISON_AFTER_LOST
    if state not in (State.FAILED, State.TIMEOUT) or policy.attempts > policy.retries:
        return False
    if RECURRING in causes:  # it would fail the same way: only if asked by name
        return policy.retry_on is not None and RECURRING in policy.retry_on
    if policy.retry_on is None:
        return True
    causes = ("timeout",) if state == State.TIMEOUT else causes
    return any(cause in policy.retry_on for cause in causes)


def lost_reason(policy: Policy, why: str) -> str:
    """The end reason of a lost job that is not requeued."""
    if policy.on_lost == "requeue" and policy.lost_count >= POISON_AFTER_LOST:
        return (
            f"poison: in flight during {policy.lost_count} deaths of its pool or the daemon ({why})"
        )
    return f"{why}; on_lost=fail"
