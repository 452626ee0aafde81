"""Prometheus metrics of a daemon, made with prometheus_client from its `stats` reply.

A scrape costs the daemon one small request: it keeps its counters in memory (see
supervisor/stats.py); this collector, in the process that serves /metrics (`gsup
metrics --listen`, `gsup web`), turns them into metric families.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gsup.client import Client
from gsup.errors import GsupError
from gsup.stats import ATTEMPT_SECONDS, COMMIT_SECONDS, TURN_WRITES, Histogram

try:
    from prometheus_client.core import (
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError:  # pragma: no cover - the extra is missing
    raise GsupError(
        "metrics need the prometheus_client package: pip install 'gsup[metrics]'"
    ) from None

SCRAPE_TIMEOUT = 5.0  # seconds the daemon has to answer a scrape


class DaemonCollector:
    """Collects a daemon's metrics at each scrape; `gsup_up` 0 when it does not answer."""

    def __init__(self, home: str | Path | None) -> None:
        self.home = home
        self._client: Client | None = None

    def stats(self) -> dict[str, Any] | None:
        try:
            if self._client is None:
                self._client = Client(self.home)
            return self._client.request("stats", timeout=SCRAPE_TIMEOUT)
        except GsupError:
            if self._client is not None:
                self._client.close()
            self._client = None  # a daemon started again is a new connection
            return None

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        yield GaugeMetricFamily("gsup_up", "Whether the daemon answered", value=int(bool(stats)))
        if stats:
            yield from families(stats)


def families(stats: dict[str, Any]) -> Iterator[Metric]:
    """The metric families of a `stats` reply."""
    pools = stats["pools"]
    jobs = GaugeMetricFamily("gsup_jobs", "Jobs queued or running", labels=["pool", "state"])
    depth = GaugeMetricFamily(
        "gsup_queue_depth", "Jobs waiting for a worker (queued)", labels=["pool"]
    )
    in_flight = GaugeMetricFamily(
        "gsup_in_flight", "Jobs handed to the executor, started or not", labels=["pool"]
    )
    frozen = GaugeMetricFamily("gsup_pool_frozen", "Whether the pool is frozen", labels=["pool"])
    trouble = GaugeMetricFamily(
        "gsup_pool_trouble",
        "Whether the pool cannot run jobs now (a usable one)",
        labels=["pool"],
    )
    usable = GaugeMetricFamily(
        "gsup_pool_usable",
        "Whether the backend can run jobs at all (installed, set up)",
        labels=["pool"],
    )
    started = CounterMetricFamily(
        "gsup_jobs_started", "Attempts started since the daemon started", labels=["pool"]
    )
    ended = CounterMetricFamily(
        "gsup_jobs_ended",
        "Attempts ended since the daemon started, by the state each left its job in"
        " (queued: to run again)",
        labels=["pool", "outcome"],
    )
    restarts = CounterMetricFamily(
        "gsup_pool_restarts", "Pool processes started again after one ended", labels=["pool"]
    )
    durations = HistogramMetricFamily(
        "gsup_attempt_duration_seconds", "Run time of ended attempts", labels=["pool"]
    )
    for name, pool in pools.items():
        jobs.add_metric([name, "queued"], pool["queued"])
        jobs.add_metric([name, "running"], pool["running"])
        depth.add_metric([name], pool["queued"])
        in_flight.add_metric([name], pool["in_flight"])
        frozen.add_metric([name], int(pool["frozen"]))
        trouble.add_metric([name], int(pool["trouble"] is not None and not pool["unusable"]))
        usable.add_metric([name], int(not pool["unusable"]))
        started.add_metric([name], pool["started"])
        for outcome, count in sorted(pool["ended"].items()):
            ended.add_metric([name, outcome], count)
        restarts.add_metric([name], pool["restarts"])
        histogram = Histogram.from_wire(ATTEMPT_SECONDS, pool["attempt_seconds"])
        durations.add_metric([name], histogram.cumulative(), histogram.total)
    yield from (jobs, depth, in_flight, frozen, trouble, usable, started, ended, restarts,
                durations)  # fmt: skip
    yield _histogram("gsup_journal_commit_seconds", "Commit and sync time of a turn that wrote",
                     COMMIT_SECONDS, stats["commit_seconds"])  # fmt: skip
    yield _histogram("gsup_journal_turn_writes", "Statements written by a turn",
                     TURN_WRITES, stats["turn_writes"])  # fmt: skip
    yield CounterMetricFamily(
        "gsup_journal_stalls", "Times the journal could not be written", value=stats["stalls"]
    )
    yield GaugeMetricFamily("gsup_clients", "Connected clients", value=stats["clients"])
    yield GaugeMetricFamily(
        "gsup_event_followers", "Clients following the event stream", value=stats["followers"]
    )
    yield GaugeMetricFamily("gsup_tasks_running", "Tasks not ended", value=stats["tasks"])
    units = GaugeMetricFamily(
        "gsup_task_units", "Units of the tasks not ended, by state", labels=["state"]
    )
    for state, count in sorted(stats["units"].items()):
        units.add_metric([state], count)
    yield units


def _histogram(
    name: str, documentation: str, bounds: tuple[float, ...], wire: dict[str, Any]
) -> HistogramMetricFamily:
    histogram = Histogram.from_wire(bounds, wire)
    return HistogramMetricFamily(
        name, documentation, buckets=histogram.cumulative(), sum_value=histogram.total
    )


def registry(home: str | Path | None) -> CollectorRegistry:
    """A registry holding only the daemon's metrics (not this process's own)."""
    found = CollectorRegistry(auto_describe=False)
    found.register(DaemonCollector(home))  # type: ignore[arg-type]
    return found
