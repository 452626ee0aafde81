"""The dask backend against `client.map`, on one LocalCluster started for the run at
Dask's defaults (a worker process per core), when the dask extra is installed.

Both sides run the same no-op function on the same cluster: plain Dask maps it over
`jobs` arguments and gathers; gsup adds as many jobs with `backend="dask"` and waits
on them all, at gsup's defaults. The two alternate, so that a noisy moment of the
shared machine falls on both.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bench.gsup_side import WAIT_TIMEOUT, Workspace, check_done, new_home, running_daemon


@dataclass(frozen=True)
class DaskFigures:
    gsup_seconds: list[float]  # `jobs` no-op calls through gsup, add_many to the last end
    map_seconds: list[float]  # the same calls, client.map then gather


def available() -> bool:
    return importlib.util.find_spec("distributed") is not None


@contextmanager
def local_cluster() -> Iterator[str]:
    """A LocalCluster at Dask's defaults (no dashboard); its scheduler's address, also
    in GSUP_DASK_ADDRESS for the daemons this process starts."""
    from distributed import LocalCluster

    saved = os.environ.get("GSUP_DASK_ADDRESS")
    with LocalCluster(dashboard_address=None) as cluster:
        os.environ["GSUP_DASK_ADDRESS"] = cluster.scheduler_address
        try:
            yield cluster.scheduler_address
        finally:
            os.environ.pop("GSUP_DASK_ADDRESS")
            if saved is not None:
                os.environ["GSUP_DASK_ADDRESS"] = saved


def measure(ws: Workspace, jobs: int, reps: int) -> DaskFigures:
    from distributed import Client

    gsup_seconds, map_seconds = [], []
    with local_cluster() as address, Client(address) as client:
        for _ in range(reps):
            map_seconds.append(_mapped(client, ws, jobs))
            gsup_seconds.append(_through_gsup(ws, jobs))
    return DaskFigures(gsup_seconds, map_seconds)


def _mapped(client: object, ws: Workspace, jobs: int) -> float:
    start = time.perf_counter()
    futures = client.map(ws.noop, range(jobs), pure=False)  # type: ignore[attr-defined]
    client.gather(futures)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - start
    del futures  # released: the next side starts on an empty cluster
    return elapsed


def _through_gsup(ws: Workspace, jobs: int) -> float:
    """Seconds from `add_many` of `jobs` dask jobs to the answer of one wait on them all."""
    with running_daemon(new_home(ws.root)) as daemon:
        queues = daemon.queues()
        queues.client.request("ping")  # connected before the clock
        start = time.perf_counter()
        ids = [handle.id for handle in queues.add_many(ws.noop, range(jobs), backend="dask")]
        states = queues.client.wait(ids, WAIT_TIMEOUT)
        elapsed = time.perf_counter() - start
        check_done(states, jobs)
        return elapsed
