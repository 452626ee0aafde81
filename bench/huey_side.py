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

from bench.measure import idle_cpu_percent
from bench.plan import HUEY_FAST_POLLING, HUEY_POLL
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
    """`huey_consumer bench_huey_tasks.huey -w 4 -k thread -q [polling]`; -q keeps it from
    logging every task (logging is not what is measured). SIGINT is its graceful stop."""

    def __init__(self, ws: HueyWorkspace, polling: tuple[str, ...] = HUEY_FAST_POLLING) -> None:
        argv = [*console_script("huey_consumer", "huey.bin.huey_consumer"), f"{MODULE}.huey"]
        argv += ["-w", "4", "-k", "thread", "-q", *polling]
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


def drain_rate(ws: HueyWorkspace, jobs: int) -> float:
    """Jobs/s for a running consumer to work through `jobs` that appear at once.

    huey has no freeze: the messages, made by huey's own serializer, are inserted in
    one transaction while the consumer polls every millisecond (the analogue of
    unfreezing), and the clock starts once that transaction has committed. It stops
    when the result store holds them all (counted every 5 ms).
    """
    huey = ws.huey
    huey.flush()
    with HueyConsumer(ws):
        huey.flush()  # the start-up task's result
        messages = [huey.serialize_task(ws.tasks.noop.s()) for _ in range(jobs)]
        storage = huey.storage
        rows = [(storage.name, storage.to_blob(m), 0) for m in messages]
        with storage.db(commit=True) as cursor:
            cursor.executemany("INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)", rows)
        start = time.perf_counter()
        while storage.result_store_size() < jobs:
            time.sleep(POLL_RESULTS)
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
    """Seconds from `noop()` to its result, one at a time, consumer at fastest polling.

    huey's result.get(blocking=True) polls the result store too: here every
    millisecond (backoff=1, max_delay=0.001), as fast as the consumer polls its queue.
    """
    ws.huey.flush()
    with HueyConsumer(ws):
        for _ in range(5):
            _wait(ws.tasks.noop())
        seconds = []
        for _ in range(trips):
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
