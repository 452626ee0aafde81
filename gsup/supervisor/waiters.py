"""Clients waiting for jobs to end (`wait`, and a `get` that waits) or for a task to
end (`task_wait`), indexed by what they wait for and by connection: a job's end costs
its own waiters, not every waiter's (40,000 pending waits must not slow a drain), and a
client that leaves takes only its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Awaited = int | tuple[str, int]  # a job's id, or ("task", a task's id)


@dataclass(eq=False)  # one per request: kept in sets, by identity
class Waiter:
    conn: Any
    request_id: Any
    pending: set[Awaited]
    states: dict[Awaited, str] = field(default_factory=dict)
    then_get: int | None = None  # a `get` that waited: answer with this job's summary


class Waiters:
    def __init__(self) -> None:
        self._by_awaited: dict[Awaited, set[Waiter]] = {}
        self._by_conn: dict[int, set[Waiter]] = {}  # by id(): connections are not hashable

    def add(self, waiter: Waiter) -> None:
        for job in waiter.pending:
            self._by_awaited.setdefault(job, set()).add(waiter)
        self._by_conn.setdefault(id(waiter.conn), set()).add(waiter)

    def ended(self, job: Awaited, state: str) -> list[Waiter]:
        """Note `job`'s end state; the waiters it was the last one of (now removed)."""
        answered = []
        for waiter in self._by_awaited.pop(job, ()):
            waiter.pending.discard(job)
            waiter.states[job] = state
            if not waiter.pending:
                self._discard(waiter)
                answered.append(waiter)
        return answered

    def forget(self, conn: Any) -> None:
        """A client went away: nobody waits on its behalf any more."""
        for waiter in list(self._by_conn.get(id(conn), ())):
            self._discard(waiter)

    def take_all(self) -> list[Waiter]:
        """Every waiter, removed."""
        waiters = [waiter for mine in self._by_conn.values() for waiter in mine]
        self._by_awaited.clear()
        self._by_conn.clear()
        return waiters

    def __len__(self) -> int:
        return sum(len(waiters) for waiters in self._by_conn.values())

    def _discard(self, waiter: Waiter) -> None:
        for job in waiter.pending:
            waiting = self._by_awaited.get(job)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._by_awaited[job]
        mine = self._by_conn[id(waiter.conn)]
        mine.discard(waiter)
        if not mine:
            del self._by_conn[id(waiter.conn)]
