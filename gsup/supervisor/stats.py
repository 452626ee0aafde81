"""What the `stats` request answers: counters the supervisor keeps as it works.

Live jobs (queued, running) are counted by pool from the journal once at start, then
kept by the book's hooks; ends, starts and attempt durations are counted since the
start (Prometheus counters: a restart resets them, which it handles). Answering costs
a few dictionaries, however many jobs the journal holds.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from gsup.journal import queries
from gsup.lifecycle import StateChange
from gsup.protocol import JobSpec
from gsup.states import State
from gsup.stats import ATTEMPT_SECONDS, COMMIT_SECONDS, TURN_WRITES, Histogram

LIVE = (State.QUEUED, State.RUNNING)


class Stats:
    def __init__(self, reader: Any) -> None:
        self.live: Counter[tuple[str, str]] = Counter()
        for state, index, where in (
            (State.QUEUED, queries.QUEUED_INDEX, queries.QUEUED),
            (State.RUNNING, queries.RUNNING_INDEX, queries.RUNNING),
        ):  # along their partial indexes
            sql = f"SELECT pool, count(*) FROM jobs {index} WHERE {where} GROUP BY pool"
            for pool, count in reader.execute(sql):
                self.live[pool, state.value] = count
        self.started: Counter[str] = Counter()
        self.ended: Counter[tuple[str, str]] = Counter()  # by pool and outcome (requeued too)
        self.running_since: dict[int, float] = {}  # wall time each running job started
        self.attempts: dict[str, Histogram] = {}  # durations, by pool
        self.commits = Histogram(COMMIT_SECONDS)  # commit and sync of a turn that wrote
        self.turn_writes = Histogram(TURN_WRITES)
        self.stalls = 0  # times the journal could not be written

    def added(self, specs: list[JobSpec]) -> None:
        for spec in specs:
            self.live[spec.pool, State.QUEUED.value] += 1  # type: ignore[index]

    def changed(self, change: StateChange) -> None:
        pool = change.pool
        if change.before in LIVE:
            self.live[pool, change.before.value] -= 1  # type: ignore[union-attr]
        if change.after in LIVE:
            self.live[pool, change.after.value] += 1
        if change.after == State.RUNNING:
            self.started[pool] += 1
            self.running_since[change.job] = change.at
        elif change.before == State.RUNNING:
            self.ended[pool, change.after.value] += 1
            since = self.running_since.pop(change.job, None)
            if since is not None:
                histogram = self.attempts.get(pool)
                if histogram is None:
                    histogram = self.attempts[pool] = Histogram(ATTEMPT_SECONDS)
                histogram.observe(max(0.0, change.at - since))

    def turn(self, writes: int, seconds: float) -> None:
        self.turn_writes.observe(writes)
        self.commits.observe(seconds)

    def reply(self, book: Any, engine: Any, clients: int, followers: int) -> dict[str, Any]:
        """The `stats` reply (see gsup/metrics.py for what each field becomes)."""
        pools = {
            name: {"queued": self.live[name, State.QUEUED.value],
                   "running": self.live[name, State.RUNNING.value],
                   "in_flight": len(lane.flights), "frozen": lane.frozen,
                   "restarts": lane.executor.restarts, "started": self.started[name],
                   "trouble": lane.executor.trouble, "unusable": lane.executor.unusable,
                   "ended": {state: count for (pool, state), count in self.ended.items()
                             if pool == name},
                   "attempt_seconds": self.attempts.get(name, Histogram(ATTEMPT_SECONDS)).to_wire()}
            for name, lane in book.lanes.items()
        }  # fmt: skip
        units: Counter[str] = Counter()
        for task in engine.tasks.values():
            for transform in task.transforms:
                units.update(transform.counts)
        return {
            "time": time.time(),
            "pools": pools,
            "commit_seconds": self.commits.to_wire(),
            "turn_writes": self.turn_writes.to_wire(),
            "stalls": self.stalls,
            "clients": clients,
            "followers": followers,
            "tasks": len(engine.tasks),
            "units": dict(units),
        }
