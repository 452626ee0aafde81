"""What runs on a Dask worker: one call, sent by value, and how it ended.

The bridge (bridge.py) sends the callable and its arguments as cloudpickle bytes, the
job's own modules by value: the worker imports none of the job's files, so jobs of
different folders that share a worker never share a module (nor see each other's).
`run` never raises: a job's exception, a payload that cannot be loaded here, a result
too large, all come back as an outcome, with what the call printed.

A running Dask task cannot be interrupted, so a job with a timeout runs in a process
of its own (`python -P -m gsup.executors.dask.remote CALL OUTCOME`, its own session),
killed with its group once the timeout and a grace have passed: a timed-out job does
not keep the worker's thread. One without a timeout runs in the worker's thread, its
output caught per thread (see OutputRouter).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import cloudpickle

from gsup.executors import child
from gsup.executors.local.output import OutputRouter
from gsup.executors.local.runner import Outcome, PoolJob, describe, invoke
from gsup.lifecycle import Ending

GRACE = 2.0  # seconds past its timeout before a job's process is killed on the worker
STREAMS = ("out", "err")

_router: OutputRouter | None = None
_router_lock = threading.Lock()
_scratch = ""  # this worker's folder for jobs' files, made once


def run(payload: bytes, meta: dict[str, Any]) -> dict[str, Any]:
    """Run one call: `meta` has job, attempt, target, unit, timeout, max_result, max_log.
    Returns the outcome's fields and the call's output (each at most max_log bytes)."""
    job = PoolJob(meta["job"], meta["attempt"], "call", meta["target"], {"unit": meta["unit"]})
    try:
        if meta["timeout"] is None:
            outcome = _in_thread(job, payload, meta)
        else:
            outcome = _in_process(job, payload, meta)
    except Exception as exc:  # the worker's own trouble (its disk, its limits)
        why = f"gsup could not run it on the Dask worker: {describe(exc)}"
        outcome = Outcome(Ending.FAILED, why, {"error": why})
    output = {stream: _read_log(job, stream, meta["max_log"]) for stream in STREAMS}
    return {"ending": outcome.ending.value, "why": outcome.why, "fields": outcome.fields,
            "usage": outcome.usage, "output": output}  # fmt: skip


def _in_thread(job: PoolJob, payload: bytes, meta: dict[str, Any]) -> Outcome:
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


def _in_process(job: PoolJob, payload: bytes, meta: dict[str, Any]) -> Outcome:
    call_file, outcome_file = _file(job, "call"), _file(job, "outcome")
    call_file.write_bytes(cloudpickle.dumps((job, payload, meta["max_result"])))
    argv = [sys.executable, "-P", "-m", __name__, str(call_file), str(outcome_file)]
    try:
        with open(_file(job, "out"), "ab") as out, open(_file(job, "err"), "ab") as err:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                       start_new_session=True)  # fmt: skip
        try:
            code = process.wait(meta["timeout"] + GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            why = f"timed out: killed on the Dask worker after {meta['timeout'] + GRACE:g}s"
            return Outcome(Ending.FAILED, why, {"error": why, "causes": ["Timeout"]})
        outcome = child.read_outcome(outcome_file)
    finally:
        for file in (call_file, outcome_file):
            with contextlib.suppress(OSError):
                file.unlink()
    if outcome is None:
        why = f"its process ended before the call did: exit code {code}"
        usage = {"exit_status": code}
        return Outcome(Ending.FAILED, why, {"error": why, "causes": ["exit"]}, usage)
    outcome.usage["exit_status"] = code
    return outcome


def _output_router(max_log: int) -> OutputRouter:
    """The worker's per-thread stand-ins for sys.stdout and sys.stderr, installed once."""
    global _router
    with _router_lock:
        if _router is None:
            _router = OutputRouter(lambda job, stream, attempt: _file_of(job, stream, attempt),
                                   max_log, 0)  # fmt: skip
        return _router


def _file(job: PoolJob, part: str) -> Path:
    return _file_of(job.id, part, job.attempt)


def _file_of(job: int, part: str, attempt: int) -> Path:
    """A job's file in this worker's scratch folder (a job may run on any worker)."""
    global _scratch
    with _router_lock:
        if not _scratch:
            _scratch = tempfile.mkdtemp(prefix="gsup-dask-")
    return Path(_scratch, f"{job}.{attempt}.{part}")


def _read_log(job: PoolJob, stream: str, limit: int) -> str:
    """What the call wrote to `stream`, up to `limit` bytes (a cut says so); the file goes."""
    file = _file(job, stream)
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
    """A job's own process on the worker: the call, its outcome, and what it used."""
    job, payload, max_result = cloudpickle.loads(Path(call_file).read_bytes())
    outcome = _call(job, payload, max_result)
    sys.stdout.flush()
    sys.stderr.flush()
    used = resource.getrusage(resource.RUSAGE_SELF)
    outcome.usage.update(cpu_seconds=used.ru_utime + used.ru_stime, peak_rss_kb=used.ru_maxrss)
    child.write_outcome(Path(outcome_file), outcome)
    return 0 if outcome.ending == Ending.DONE else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
