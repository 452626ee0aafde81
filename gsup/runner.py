"""Running one job inside a pool thread: a callable, or a command in its own session."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gsup.config import Paths
from gsup.output import OutputRouter, tail
from gsup.targets import TargetError, load_call

MAX_RESULT = 1024 * 1024  # characters of a result kept in the journal


class JobStopped(BaseException):
    """Raised asynchronously in a job's thread when the supervisor stops the job.

    A BaseException so that a job's `except Exception` does not swallow it.
    """


@dataclass
class PoolJob:
    id: int
    kind: str
    target: str
    spec: dict[str, Any]


@dataclass
class Outcome:
    state: str  # "done", "failed" or "stopped"
    why: str
    fields: dict[str, Any] = field(default_factory=dict)  # result, error, traceback...


def encode_result(value: Any) -> dict[str, Any]:
    """A return value for the journal: JSON if it can be, else its repr."""
    try:
        text = json.dumps(value)
        if len(text) <= MAX_RESULT:
            return {"result": text, "result_type": "json"}
    except (TypeError, ValueError, OverflowError, RecursionError):
        pass
    try:
        text = repr(value)
    except Exception as exc:  # a user __repr__ that raises
        text = f"<{type(value).__name__} whose repr raised {type(exc).__name__}>"
    if len(text) > MAX_RESULT:
        text = text[: MAX_RESULT - 1] + "…"
    return {"result": text, "result_type": "repr"}


def _failure(exc: BaseException) -> Outcome:
    """A job's exception; its traceback starts in the job's code, not in gsup's."""
    error = f"{type(exc).__name__}: {exc}"
    inner = exc.__traceback__.tb_next if exc.__traceback__ else None
    text = "".join(traceback.format_exception(type(exc), exc, inner))
    return Outcome("failed", error, {"error": error, "traceback": text})


def run_call(job: PoolJob, router: OutputRouter) -> Outcome:
    spec = job.spec
    try:
        func, args, kwargs = load_call(
            job.target, spec.get("arguments"), spec.get("pickled"), spec.get("path", [])
        )
    except TargetError as exc:
        return Outcome("failed", str(exc), {"error": f"TargetError: {exc}"})
    with router.capture(job.id):
        try:
            value = func(*args, **kwargs)
        except JobStopped:
            raise
        except BaseException as exc:  # SystemExit and KeyboardInterrupt end the job, not the thread
            return _failure(exc)
    return Outcome("done", "returned", encode_result(value))


def run_command(
    job: PoolJob, paths: Paths, on_spawn: Callable[[subprocess.Popen], None]
) -> Outcome:
    """Run `argv` in its own session (so its whole process group can be killed)."""
    spec = job.spec
    out_path, err_path = paths.job_output(job.id, "out"), paths.job_output(job.id, "err")
    with open(out_path, "ab") as out, open(err_path, "ab") as err:
        try:
            process = subprocess.Popen(
                spec["argv"],
                cwd=spec.get("cwd") or None,
                env=spec.get("env"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            error = f"cannot run {spec['argv'][0]!r}: {exc.strerror or exc}"
            return Outcome("failed", error, {"error": f"{type(exc).__name__}: {error}"})
        on_spawn(process)
        code = process.wait()
    result = {"exit_code": code, "stdout": tail(out_path), "stderr": tail(err_path)}
    fields = {"result": json.dumps(result), "result_type": "json"}
    if code == 0:
        return Outcome("done", "exit code 0", fields)
    why = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
    return Outcome("failed", why, {**fields, "error": why})


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def kill_group(pid: int) -> None:
    """SIGKILL a command's whole process group (its grandchildren too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
