"""Running one job inside a pool thread: a callable, or a command in its own session."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsup.config import Paths
from gsup.output import OutputRouter, tail
from gsup.targets import TargetError, load_call

GUARD = str(Path(__file__).with_name("guard.py"))
MAX_RESULT = 4 * 1024 * 1024  # characters of a result kept: well within a message


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
        text = json.dumps(value, allow_nan=False)
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


def describe(exc: BaseException) -> str:
    """`Type: message`, even for an exception whose __str__ raises."""
    try:
        message = str(exc)
    except Exception:
        message = "<its str() raised>"
    return f"{type(exc).__name__}: {message}"


def _failure(exc: BaseException) -> Outcome:
    """A job's exception; its traceback starts in the job's code, not in gsup's."""
    error = describe(exc)
    inner = exc.__traceback__.tb_next if exc.__traceback__ else None
    try:
        text = "".join(traceback.format_exception(type(exc), exc, inner))
    except Exception:
        text = "".join(traceback.format_tb(inner)) + error
    causes = [cls.__name__ for cls in type(exc).__mro__[:-1]]  # for --retry-on
    return Outcome("failed", error, {"error": error, "traceback": text, "causes": causes})


def run_call(job: PoolJob, router: OutputRouter) -> Outcome:
    spec = job.spec
    try:
        func, args, kwargs = load_call(
            job.target, spec.get("arguments"), spec.get("pickled"), spec.get("path", [])
        )
    except TargetError as exc:
        error = f"TargetError: {exc}"
        return Outcome("failed", str(exc), {"error": error, "causes": ["TargetError"]})
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
    """Run `argv` under its guardian (guard.py), which kills its whole process group
    when the job is stopped, when the command ends, and when this pool dies."""
    spec = job.spec
    argv, cwd, env = spec["argv"], spec.get("cwd") or None, spec.get("env")
    if _find_program(argv[0], cwd, env) is None:
        error = f"command not found: {argv[0]}"
        return Outcome("failed", error, {"error": error})
    out_path, err_path = paths.job_output(job.id, "out"), paths.job_output(job.id, "err")
    watch_r, watch_w = os.pipe()  # the guardian sees end-of-file when this process dies
    try:
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", GUARD, str(watch_r), *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                pass_fds=(watch_r,),
            )
    except (OSError, ValueError, TypeError) as exc:  # a bad folder, a NUL in an argument...
        os.close(watch_w)
        error = f"cannot run {argv[0]!r}: {getattr(exc, 'strerror', None) or exc}"
        return Outcome("failed", error, {"error": error})
    finally:
        os.close(watch_r)
    try:
        on_spawn(process)
        code = process.wait()
    finally:
        os.close(watch_w)
    result = {"exit_code": code, "stdout": tail(out_path), "stderr": tail(err_path)}
    fields = {"result": json.dumps(result), "result_type": "json"}
    if code == 0:
        return Outcome("done", "exit code 0", fields)
    why = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
    return Outcome("failed", why, {**fields, "error": why, "causes": ["exit"]})


def _find_program(name: str, cwd: str | None, env: dict[str, str] | None) -> str | None:
    if "/" in name:
        path = os.path.join(cwd or ".", name)
        return path if os.access(path, os.X_OK) and os.path.isfile(path) else None
    return shutil.which(name, path=(env if env is not None else os.environ).get("PATH"))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def stop_command(process: subprocess.Popen) -> None:
    """Ask a command's guardian to kill the command's whole process group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
