"""What runs on a Dask worker: one call, sent by value, and how it ended.

The bridge (bridge.py) sends the callable and its arguments as cloudpickle bytes, the
job's own modules by value: the worker imports none of the job's files, so jobs of
different folders that share a worker never share a module (nor see each other's).
`run` never raises: a job's exception, a payload that cannot be loaded here, a result
too large, all come back as an outcome, with what the call printed.

A running Dask task cannot be interrupted, so a job with a timeout runs in a process
of its own (`python -P -m gsup.executors.dask.remote CALL OUTCOME`) under gsup's
guardian, as the process backend runs a call: killed with everything it started once
its timeout and a grace have passed (or its worker died), so that a timed-out job does
not keep the worker's thread. One without a timeout runs in the worker's thread, its
output caught per thread (see OutputRouter). Files go to a private scratch folder per
daemon on the worker, and are removed once read.

Dask runs a task again when the worker that had it dies (allowed-failures): a job that
must not run twice asks the scheduler first whether that happened, and if so ends lost.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import cloudpickle

from gsup.config import Paths
from gsup.executors import child
from gsup.executors.local.output import OutputRouter
from gsup.executors.local.runner import (
    Outcome,
    PoolJob,
    describe,
    invoke,
    run_call_in_process,
    stop_command,
)
from gsup.lifecycle import Ending
from gsup.settings import PoolSettings

GRACE = 2.0  # seconds past its timeout before a job's process is killed on the worker
STREAMS = ("out", "err")
RAN_BEFORE = "its Dask worker died while it ran, and Dask ran it again: it must not run twice"

_router: OutputRouter | None = None
_lock = threading.Lock()
_local = threading.local()  # the scratch folder of the job on this thread


def run(payload: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """Run one call: `meta` has job, attempt, key, tag, target, unit, timeout, runs_once,
    max_result, max_log. Returns the outcome's fields and the call's output (each stream
    at most max_log bytes)."""
    job = PoolJob(meta["job"], meta["attempt"], "call", meta["target"], {"unit": meta["unit"]})
    paths = None
    try:
        paths = _scratch(meta["tag"])
        if meta["runs_once"] and _ran_before(meta["key"]):
            outcome = Outcome(Ending.LOST, RAN_BEFORE)
        elif meta["timeout"] is None:
            outcome = _in_thread(job, paths, payload, meta)
        else:
            outcome = _in_process(job, paths, payload, meta)
    except Exception as exc:  # the worker's own trouble (its disk, its limits)
        why = f"gsup could not run it on the Dask worker: {describe(exc)}"
        outcome = Outcome(Ending.FAILED, why, {"error": why})
    output = {stream: _read_log(paths, job, stream, meta["max_log"]) for stream in STREAMS}
    return {"ending": outcome.ending.value, "why": outcome.why, "fields": outcome.fields,
            "usage": outcome.usage, "output": output}  # fmt: skip


def _ran_before(key: str) -> bool:
    """Whether a worker died while this task was on it: Dask then runs it again
    (allowed-failures), which a job that must not run twice may not do."""
    from distributed import get_client

    def suspicious(dask_scheduler: Any) -> int:
        task = dask_scheduler.tasks.get(key)
        return 0 if task is None else task.suspicious

    return bool(get_client().run_on_scheduler(suspicious))


def _in_thread(job: PoolJob, paths: Paths, payload: bytes, meta: dict[str, Any]) -> Outcome:
    _local.paths = paths
    router = _output_router(meta["max_log"])
    with router.capture(job.id, job.attempt):
        return _call(job, payload, meta["max_result"])


def _call(job: PoolJob, payload: bytes, max_result: int) -> Outcome:
    try:
        func, args, kwargs = cloudpickle.loads(payload)
    except Exception as exc:  # a module the call needs that this worker lacks
        why = f"cannot load the call on the Dask worker: {describe(exc)}"
        return Outcome(Ending.FAILED, why, {"error": why, "causes": ["TargetError"]})
    return invoke(job, func, args, kwargs, max_result)


def _in_process(job: PoolJob, paths: Paths, payload: bytes, meta: dict[str, Any]) -> Outcome:
    """Under gsup's guardian, as the process backend runs a call: its output within
    max_log, its whole session killed at the deadline, or if this worker dies."""
    settings = PoolSettings("dask", max_result=meta["max_result"], max_log=meta["max_log"])
    deadline = meta["timeout"] + GRACE
    timers: list[threading.Timer] = []

    def spawned(process: Any) -> None:
        timers.append(threading.Timer(deadline, stop_command, (process,)))
        timers[0].start()

    def write_call(file: Path) -> None:
        file.write_bytes(cloudpickle.dumps((job, payload, meta["max_result"])))

    try:
        outcome = run_call_in_process(replace(job, spec={"unit": meta["unit"]}), paths,
                                      settings, spawned, __name__, write_call)  # fmt: skip
    finally:
        for timer in timers:
            timer.cancel()
    if timers and timers[0].finished.is_set() and outcome.ending != Ending.DONE:
        why = f"timed out: killed on the Dask worker after {deadline:g}s"
        return Outcome(Ending.FAILED, why, {"error": why, "causes": ["Timeout"]}, outcome.usage)
    return outcome


def _output_router(max_log: int) -> OutputRouter:
    """The worker's per-thread stand-ins for sys.stdout and sys.stderr, installed once;
    a thread's job writes in its own daemon's scratch folder."""
    global _router
    with _lock:
        if _router is None:
            _router = OutputRouter(
                lambda job, stream, attempt: _local.paths.job_output(job, stream, attempt),
                max_log, 0,
            )  # fmt: skip
        return _router


def _scratch(tag: str) -> Paths:
    """The worker's folder for the jobs of the daemon `tag`: TMPDIR/gsup-dask-UID/TAG,
    private. Job and attempt ids are unique within one daemon's."""
    root = Path(tempfile.gettempdir(), f"gsup-dask-{os.getuid()}")
    with _lock:
        root.mkdir(mode=0o700, exist_ok=True)
        found = os.lstat(root)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
            raise OSError(f"{root} is not a folder of this user's")
        paths = Paths(root / tag)
        paths.logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    return paths


def _read_log(paths: Paths | None, job: PoolJob, stream: str, limit: int) -> str:
    """What the call wrote to `stream`, up to `limit` bytes (a cut says so); the file goes."""
    if paths is None:
        return ""
    file = paths.job_output(job.id, stream, job.attempt)
    try:
        with open(file, "rb") as opened:
            data = opened.read(limit + 1)
    except FileNotFoundError:
        return ""
    finally:
        with contextlib.suppress(OSError):
            file.unlink()
    text = data[:limit].decode("utf-8", "replace")
    if len(data) > limit:
        text += f"\n[gsup: output beyond {limit:,} bytes dropped]\n"
    return text


def main(call_file: str, outcome_file: str) -> int:
    """A job's own process on the worker (its guardian measures what it uses)."""
    job, payload, max_result = cloudpickle.loads(Path(call_file).read_bytes())
    outcome = _call(job, payload, max_result)
    sys.stdout.flush()
    sys.stderr.flush()
    child.write_outcome(Path(outcome_file), outcome)
    return 0 if outcome.ending == Ending.DONE else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
