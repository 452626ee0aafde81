"""The Dask backend's executor: the local pool's machinery, with bridges for processes.

Calls are grouped by import context as a local pool groups them, each context served
by a forked bridge (bridge.py) that submits its calls to the scheduler and reports
their ends. What a pool does with its processes (start them, restart one that died,
retire one whose files changed, recall what waits) it does with its bridges. Its
`threads` are the calls Dask holds at once (`[backends.dask] slots`).

A bridge that dies takes its client with it: Dask forgets its futures, and the jobs it
held end lost (the supervisor resubmits them). So does a stop of the daemon: the next
start resubmits what ran, as it does for a local pool.
"""

from __future__ import annotations

import importlib.util
import socket
from typing import Any

from gsup.config import DASK, Paths
from gsup.executors.base import Attempt
from gsup.executors.local.executor import Context, LocalPool
from gsup.settings import DaskSettings, PoolSettings


def _bridge_main(*args: Any) -> None:
    """In the forked bridge: only there are Dask's modules imported (the supervisor
    stays light, and runs without the dask extra)."""
    from gsup.executors.dask.bridge import bridge_main

    bridge_main(*args)


BRIDGES = 8  # import contexts served at once; another waits for one to be idle


class DaskPool(LocalPool):
    backend = DASK  # type: ignore[assignment]
    shared_fate = False  # its jobs run on Dask's workers: a bridge's death is no job's doing
    kinds = ("call",)
    process_main = staticmethod(_bridge_main)

    def __init__(self, dask: DaskSettings, pool: PoolSettings, paths: Paths,
                 stop_grace: float) -> None:  # fmt: skip
        super().__init__(pool, paths, stop_grace)
        self.backend = DASK
        self.dask = dask
        self._unusable = _why_unusable(dask)

    @property
    def unusable(self) -> str | None:
        return self._unusable

    @property
    def trouble(self) -> str | None:
        return self._unusable or super().trouble

    def start(self, loop: Any, reports: Any) -> None:
        if self.unusable is None:
            super().start(loop, reports)
        else:  # no job is ever placed here: nothing to start
            self.loop, self.reports = loop, reports

    def process_args(self, channel: socket.socket, context: Context) -> tuple[Any, ...]:
        return (self.dask, self.settings, channel, str(self.paths.home), list(context))

    def most_processes(self) -> int:
        return BRIDGES

    def run_message(self, a: Attempt) -> tuple[Any, ...]:
        return (*super().run_message(a), a.timeout)


def _why_unusable(dask: DaskSettings) -> str | None:
    if importlib.util.find_spec("distributed") is None:
        return "the distributed package is not installed: pip install 'gsup[dask]'"
    if dask.address is None:
        return (
            "no scheduler address: set [backends.dask] address in gsup.toml (or GSUP_DASK_ADDRESS)"
        )
    return None
