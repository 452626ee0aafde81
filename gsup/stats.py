"""The daemon's counters, as its `stats` request answers them.

The supervisor keeps them in memory as it works (a few additions per job), so that
a scrape asks it for nothing but this reply: gsup/metrics.py turns the reply into
Prometheus metrics, outside the daemon. Kept free of prometheus_client: the
supervisor imports this module.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

# Bucket bounds (upper, seconds or rows) of the histograms; +Inf is implicit.
ATTEMPT_SECONDS = (0.01, 0.1, 0.5, 1, 5, 30, 60, 300, 1800, 3600, 6 * 3600, 24 * 3600)
COMMIT_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
TURN_WRITES = (1, 2, 5, 10, 50, 100, 1_000, 10_000, 100_000)


@dataclass
class Histogram:
    """Observations counted in buckets (not cumulative; the last is +Inf), and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def to_wire(self) -> dict[str, Any]:
        return {"counts": self.counts, "sum": self.total}

    @classmethod
    def from_wire(cls, bounds: tuple[float, ...], data: dict[str, Any]) -> Histogram:
        return cls(bounds, list(data["counts"]), data["sum"])

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations up to it) pairs, as Prometheus writes them."""
        pairs, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs
