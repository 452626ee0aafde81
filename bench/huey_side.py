"""The huey side: SqliteHuey in a temp dir, its consumer as a subprocess, and the same
workloads as gsup_side.

huey stores its queue and results in one SQLite file, opened here with fsync=True
(synchronous=FULL, WAL), the durability gsup's journal has. It does not store a None
result by default, so the instance keeps them (store_none=True): the bench waits for
results, and the no-op job returns None on both sides.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.measure import gaps, idle_cpu_percent
from bench.plan import HUEY_FAST_POLLING, HUEY_POLL, WORKERS
from bench.processes import Spawned, console_script

MODULE = "bench_huey_tasks"  # the consumer imports it by this name, as the bench does
TASKS_SOURCE = """\
import os

from huey import SqliteHuey

huey = SqliteHuey(filename=os.environ["BENCH_HUEY_DB"], fsync=True, store_none=True)


@huey.task()
def noop():
    return None
"""
RESULT_TIMEOUT = 900.0
SETTLE = 1.0  # seconds an idle consumer gets before its CPU is sampled
POLL_RESULTS = 0.005  # seconds between counts of stored results while a drain runs


def huey_version() -> str | None:
    """huey's version, or None when it is not installed (the smoke run goes on)."""
    try:
        import huey
    except ImportError:
        return None
    return str(getattr(huey, "__version__", "?"))


@dataclass(frozen=True)
class HueyWorkspace:
    folder: Path
    tasks: ModuleType

    @property
    def huey(self) -> Any:
        return self.tasks.huey

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(self.folder), os.environ.get("PYTHONPATH")) if p)
        return {**os.environ, "PYTHONPATH": path}


def make_workspace(root: Path) -> HueyWorkspace:
    """Write the tasks module, with one SQLite file for the whole run (flushed between
    figures), and import it as the consumer will."""
    folder = root / "huey"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(TASKS_SOURCE)
    os.environ["BENCH_HUEY_DB"] = str(folder / "huey.db")
    sys.path.insert(0, str(folder))
    return HueyWorkspace(folder, importlib.import_module(MODULE))


class HueyConsumer(Spawned):
    """`huey_consumer bench_huey_tasks.huey -w 5 -k thread -q [polling]`; -q keeps it from
    logging every task (logging is not what is measured). SIGINT is its graceful stop."""

    def __init__(self, ws: HueyWorkspace, polling: tuple[str, ...] = HUEY_FAST_POLLING) -> None:
        argv = [*console_script("huey_consumer", "huey.bin.huey_consumer"), f"{MODULE}.huey"]
        argv += ["-w", str(WORKERS), "-k", "thread", "-q", *polling]
        super().__init__(argv, cwd=ws.folder, env=ws.env(), stop_signal=signal.SIGINT)
        self.ws = ws

    def start(self) -> HueyConsumer:
        """Start, and return once it has run a task (it prints nothing when ready)."""
        super().start()
        try:
            _wait(self.ws.tasks.noop())
        except BaseException:
            self.stop()
            raise
        return self


def _wait(result: Any) -> None:
    """Block for a result the way a huey user would, polling as fast as the consumer."""
    result.get(blocking=True, timeout=RESULT_TIMEOUT, backoff=1.0, max_delay=HUEY_POLL)


# --- figures --------------------------------------------------------------------------


def _released(ws: HueyWorkspace, jobs: int) -> list[Any]:
    """`jobs` tasks that appear at once before a running consumer; their calls.

    huey has no freeze: the messages, made by huey's own serializer, are inserted in
    one transaction while the consumer polls every millisecond (the analogue of
    unfreezing). The clock starts when this returns.
    """
    huey = ws.huey
    huey.flush()  # the start-up task's result
    calls = [ws.tasks.noop.s() for _ in range(jobs)]
    storage = huey.storage
    rows = [(storage.name, storage.to_blob(huey.serialize_task(call)), 0) for call in calls]
    with storage.db(commit=True) as cursor:
        cursor.executemany("INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)", rows)
    return calls


def drain_rate(ws: HueyWorkspace, jobs: int) -> float:
    """Jobs/s for a running consumer to work through `jobs` that appear at once, until
    the result store holds them all (counted every 5 ms)."""
    ws.huey.flush()
    with HueyConsumer(ws):
        _released(ws, jobs)
        start = time.perf_counter()
        while ws.huey.storage.result_store_size() < jobs:
            time.sleep(POLL_RESULTS)
        return jobs / (time.perf_counter() - start)


def drain_by_results_rate(ws: HueyWorkspace, jobs: int) -> float:
    """The same, until each task's result has been read, one after another, blocking
    as a huey user would."""
    from huey.api import Result

    ws.huey.flush()
    with HueyConsumer(ws):
        calls = _released(ws, jobs)
        start = time.perf_counter()
        for call in calls:
            _wait(Result(ws.huey, call))
        return jobs / (time.perf_counter() - start)


def enqueue_rate(ws: HueyWorkspace, calls: int) -> float:
    """Calls/s of `noop()` (huey's enqueue), no consumer running."""
    huey = ws.huey
    huey.flush()
    ws.tasks.noop()  # open the connection first
    start = time.perf_counter()
    for _ in range(calls):
        ws.tasks.noop()
    elapsed = time.perf_counter() - start
    huey.flush()
    return calls / elapsed


def latencies(ws: HueyWorkspace, trips: int) -> list[float]:
    """Seconds from `noop()` to its result, one after another, consumer at fastest polling.

    huey's result.get(blocking=True) polls the result store too: here every
    millisecond (backoff=1, max_delay=0.001), as fast as the consumer polls its queue.
    """
    return _trips(ws, [0.0] * trips)


def gap_latencies(ws: HueyWorkspace, trips: int) -> list[float]:
    """The same, with the tasks 20-50 ms apart, as on gsup's side."""
    return _trips(ws, gaps(trips))


def _trips(ws: HueyWorkspace, pauses: list[float]) -> list[float]:
    ws.huey.flush()
    with HueyConsumer(ws):
        for _ in range(5):
            _wait(ws.tasks.noop())
        seconds = []
        for pause in pauses:
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            _wait(ws.tasks.noop())
            seconds.append(time.perf_counter() - start)
    ws.huey.flush()
    return seconds


def idle_cpu(ws: HueyWorkspace, seconds: float) -> float:
    """% of one core the consumer uses with an empty queue, at fastest polling."""
    ws.huey.flush()
    with HueyConsumer(ws) as consumer:
        time.sleep(SETTLE)
        return idle_cpu_percent(consumer.pid, seconds)
