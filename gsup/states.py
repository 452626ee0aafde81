"""The states a job can be in: the words that the journal, the daemon and every client
share. What may follow what, and why, is `gsup.lifecycle`'s. Kept import-light: CLI
commands import it.
"""

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
