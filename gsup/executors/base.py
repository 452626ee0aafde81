"""The executor contract: what runs attempts for the supervisor.

The supervisor decides what runs and when (priority, retries, timeouts, the journal);
an executor only runs what it is handed and says what became of it. Each executor
serves one pool of jobs (jobs whose `pool` is its `name`). The local pools are the
first executors (executors/local/); fake.py is the smallest one, for tests.

Seen from an executor, an attempt goes:

    submit ─> held ─> started ─> ended: done | failed | stopped | interrupted | lost
                 └─> ended: recalled        (given back before any of its code ran)

The supervisor calls an executor from its loop's one thread. The executor answers
through the `Reports` it was given at `start`, from callbacks it registered with the
loop (a socket, a pidfd, a timer), never from inside a call the supervisor makes
(`halt` excepted): a report then always finds the supervisor between two steps.
Whatever an executor is asked, every attempt it accepted ends with exactly one
`ended` report, and a `started` report comes before any of the attempt's own code
runs. Messages it sends to its workers leave in `flush`, which the supervisor calls
only once the turn that decided them is in the journal: first written (a crash of
the daemon cannot undo it), then again once it is also on the disk.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from gsup.journal.pending import Unfinished
from gsup.lifecycle import Ending


@dataclass(frozen=True)
class Attempt:
    """One run of a job, as it is handed to an executor."""

    job: int
    attempt: int  # its id in the journal; names its output files
    kind: str  # "call" or "cmd"
    target: str
    spec: str  # JSON: arguments, import path, folder, environment...
    priority: int  # 0 first: what the executor starts next among those it holds
    # The job must not run twice: it starts only once `confirm` says the journal holds
    # its start, so that a crash can never leave a run the journal does not know of.
    runs_once: bool = False
    timeout: float | None = None  # seconds: the supervisor stops it then; an executor that
    # cannot stop a running attempt (Dask) enforces it where the attempt runs


@dataclass(frozen=True)
class AttemptEnd:
    """How an attempt ended (see Ending), and what it left."""

    ending: Ending
    why: str
    outcome: dict[str, Any] = field(default_factory=dict)  # result, result_type, error,
    # traceback, causes (the exception's class names, for retry_on)
    usage: dict[str, Any] = field(default_factory=dict)  # exit_status, cpu_seconds,
    # peak_rss_kb: where the executor knows them


class Reports(Protocol):
    """What an executor tells the supervisor."""

    def started(self, executor: Executor, job: int, external_id: str, at: float) -> None:
        """The attempt of `job` has started, on `external_id` (a worker, a batch job id),
        at wall time `at`."""

    def ended(self, executor: Executor, job: int, end: AttemptEnd) -> None:
        """The attempt of `job` has ended; the executor holds it no more."""

    def noted(self, executor: Executor, job: int, text: str) -> None:
        """What the executor says of the started attempt of `job` (Slurm's state:
        `PENDING (Resources)`), shown as its attempt's reason until it ends."""


class Timer(Protocol):
    def cancel(self) -> None: ...


class Loop(Protocol):
    """What the supervisor's loop offers an executor."""

    def now(self) -> float:
        """Monotonic seconds, for deadlines."""

    def watch(self, fileobj: Any, callback: Callable[[int], None]) -> None:
        """Call `callback(mask)` when `fileobj` is readable (or writable, once asked)."""

    def unwatch(self, fileobj: Any) -> None: ...

    def want_write(self, fileobj: Any, wanted: bool) -> None: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Call `callback()` in the first turn at or after monotonic time `when`."""

    def say(self, message: str) -> None:
        """A line for the operator."""


class Executor(abc.ABC):
    """Runs the attempts of one pool. Subclasses say what they are in `backend`."""

    backend: ClassVar[str]
    # Attempts share a process, so that one can kill the others: a job that was in
    # flight when the executor died then runs alone (see the dispatcher).
    shared_fate: ClassVar[bool] = False
    # Its started attempts run on without the daemon (batch jobs): a stop does not wait
    # for them, `halt` leaves them running, and the next start re-attaches them.
    outlives_daemon: ClassVar[bool] = False
    kinds: ClassVar[tuple[str, ...]] = ("call", "cmd")  # the kinds of job it runs

    def __init__(self, name: str) -> None:
        self.name = name
        self.restarts = 0  # processes it started again after one ended (metrics)

    @abc.abstractmethod
    def start(self, loop: Loop, reports: Reports) -> None:
        """Begin serving. Called once, before the supervisor starts any thread."""

    @abc.abstractmethod
    def capacity(self) -> int:
        """How many more attempts it takes now (0 while it cannot run any). The
        supervisor may go beyond it by one for each attempt it asks back at the same
        time (a better priority taking a held attempt's place)."""

    @property
    def trouble(self) -> str | None:
        """Why it cannot run attempts now, for `gsup status`; None when it can."""
        return None

    @property
    def unusable(self) -> str | None:
        """Why it can never run attempts while the daemon runs (its tools are missing):
        new jobs for it are refused. None when it can."""
        return None

    @abc.abstractmethod
    def submit(self, attempt: Attempt) -> None:
        """Take an attempt; among those it holds, it starts the best priority first,
        then the lowest job id."""

    @abc.abstractmethod
    def confirm(self, job: int) -> None:
        """Let `job` (an attempt that `runs_once`, reported started) run: the turn that
        journals its start is decided. The go-ahead must take effect only at the next
        `flush(durable=True)`, once that turn is on the disk."""

    @abc.abstractmethod
    def stop(self, job: int) -> None:
        """Stop the attempt of `job`, started or not. It ends `stopped`, or `recalled` if
        none of its code had run, within the executor's own grace period: an executor
        that cannot stop it gently stops it by force."""

    @abc.abstractmethod
    def recall(self, job: int) -> None:
        """Give back the attempt of `job` if it has not started (it ends `recalled`);
        if it has, let it run."""

    def reattach(self, unfinished: Unfinished) -> bool:
        """At start-up, for an attempt the journal says is running: whether it is still
        running and now followed again (a batch job outlives the daemon). False: it
        was lost with the daemon. Local attempts always are: their pools died with it."""
        return False

    @abc.abstractmethod
    def flush(self, durable: bool) -> None:
        """Send what this turn decided: the turn is written to the journal; `durable`:
        it is on the disk too, and confirms may go."""

    @abc.abstractmethod
    def halt(self, why: str) -> None:
        """End every attempt now (the daemon is stopping): each ends `interrupted`, or
        `recalled` if it had not started, reported before this returns. An executor
        that `outlives_daemon` leaves its started attempts running, unreported."""

    def close(self) -> None:  # noqa: B027 (an optional step)
        """Release what is left once halted (wait for processes to end)."""
