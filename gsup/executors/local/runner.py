"""Running one job inside a pool thread: a callable, or a command in its own session."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gsup.config import MB, Paths
from gsup.context import running
from gsup.executors.local.output import OutputRouter, tail
from gsup.lifecycle import RECURRING, Ending
from gsup.settings import PoolSettings
from gsup.targets import TargetError, load_call

# The guardian's source, read once: a reinstall of gsup under a running daemon cannot
# take it away from the pools.
GUARD = Path(__file__).with_name("guard.py").read_text()
MAX_RESULT = PoolSettings.max_result  # bytes (UTF-8) of a result: a larger one fails the job
MAX_ERROR = 16 * 1024  # characters of an exception's message kept (a cut says so)
MAX_TRACEBACK = 64 * 1024  # characters of a traceback kept, from its end (a cut says so)


Call = tuple[Callable[..., Any], tuple, dict[str, Any]]  # a callable, its args and kwargs


class JobStopped(BaseException):
    """Raised asynchronously in a job's thread when the supervisor stops the job.

    A BaseException so that a job's `except Exception` does not swallow it.
    """


@dataclass
class PoolJob:
    id: int
    attempt: int  # its id in the journal: its output files are this attempt's
    kind: str
    target: str
    spec: dict[str, Any]
    runs_once: bool = False


@dataclass
class Outcome:
    ending: Ending
    why: str
    fields: dict[str, Any] = field(default_factory=dict)  # result, error, traceback...
    usage: dict[str, Any] = field(default_factory=dict)  # exit_status, cpu_seconds, peak_rss_kb

    def __post_init__(self) -> None:
        """Every text of an ending is bounded here, whatever made it: a reason or error
        may quote a job's own text (a 7 MB target, a program's name), and each is
        stored up to four times and sent in replies."""
        self.why = clip(self.why, MAX_ERROR)
        if isinstance(self.fields.get("error"), str):
            self.fields["error"] = clip(self.fields["error"], MAX_ERROR)
        if isinstance(self.fields.get("traceback"), str):
            self.fields["traceback"] = clip(self.fields["traceback"], MAX_TRACEBACK, keep_end=True)


def encode_result(value: Any) -> dict[str, Any]:
    """A return value for the journal, whole: JSON if it can be, else its repr. None is
    no result: nothing is stored (most jobs return nothing; a write per job is saved)."""
    if value is None:
        return {}
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
        if not _is_utf8(text):  # a lone surrogate: JSON's \u escapes keep it exactly
            text = json.dumps(value, allow_nan=False)
        return {"result": text, "result_type": "json"}
    except (TypeError, ValueError, OverflowError, RecursionError):
        pass
    try:
        text = repr(value)
    except Exception as exc:  # a user __repr__ that raises
        text = f"<{type(value).__name__} whose repr raised {type(exc).__name__}>"
    return {"result": text, "result_type": "repr"}


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


def _returned(value: Any, usage: dict[str, Any], max_result: int) -> Outcome:
    """A job's return value, stored whole; above `max_result` bytes, the job fails."""
    fields = encode_result(value)
    size = _utf8_size(fields.get("result", ""))
    if size > max_result:
        shown = f"{size / MB:.1f} MB"
        if shown == f"{max_result / MB:.1f} MB":  # just over: the bytes say it
            shown = f"{size:,} bytes"
        why = f"result too large ({shown}, limit {max_result / MB:g} MB)"
        return Outcome(Ending.FAILED, why, {"error": why, "causes": ["ResultTooLarge"]}, usage)
    return Outcome(Ending.DONE, "returned", fields, usage)


def clip(text: str, limit: int, keep_end: bool = False) -> str:
    """`text`, cut to `limit` characters with the note that says so (its end kept, for
    a traceback). A cut text fits its limit, so a second cut leaves it as it is."""
    if len(text) <= limit:
        return text
    kept = limit - 40  # room for the note
    note = f"[… {len(text) - kept:,} characters cut]"
    return f"{note}\n{text[-kept:]}" if keep_end else f"{text[:kept]} {note}"


def describe(exc: BaseException) -> str:
    """`Type: message`, even for an exception whose __str__ raises."""
    try:
        message = str(exc)
    except Exception:
        message = "<its str() raised>"
    return f"{type(exc).__name__}: {message}"


def _failure(exc: BaseException) -> Outcome:
    """A job's exception; its traceback starts in the job's code, not in gsup's (both
    are cut by Outcome)."""
    error = describe(exc)
    inner = exc.__traceback__.tb_next if exc.__traceback__ else None
    try:
        text = "".join(traceback.format_exception(type(exc), exc, inner))
    except Exception:
        text = "".join(traceback.format_tb(inner)) + error
    classes = type(exc).__mro__[:-1]  # for --retry-on: by name, or by dotted path
    causes = [c.__name__ for c in classes] + [f"{c.__module__}.{c.__qualname__}" for c in classes]
    return Outcome(Ending.FAILED, error, {"error": error, "traceback": text, "causes": causes})


def run_call(
    job: PoolJob,
    router: OutputRouter,
    notes: list[str],
    imported: Callable[[], None],
    max_result: int = MAX_RESULT,
) -> Outcome:
    """Import and call the job's target in this thread; what either prints goes to the
    job's log, after `notes` (warnings about its import path). `imported` is told once
    the target's modules are in. A result over `max_result` bytes fails the job."""
    with router.capture(job.id, job.attempt):
        for note in notes:
            print(note, file=sys.stderr)
        return call_target(job, imported, max_result)


def call_target(job: PoolJob, imported: Callable[[], None], max_result: int) -> Outcome:
    """Import the job's target and call it: how it ended, and its thread's CPU time."""
    loaded = load_target(job, imported)
    if isinstance(loaded, Outcome):
        return loaded
    return invoke(job, *loaded, max_result)


def load_target(job: PoolJob, imported: Callable[[], None]) -> Call | Outcome:
    """The job's callable and arguments, or why they cannot be had; `imported` is told
    once the target's modules are in, whatever came of it."""
    spec = job.spec
    try:
        return load_call(job.target, spec.get("arguments"), spec.get("pickled"))
    except TargetError as exc:
        return unloadable(exc)
    finally:
        imported()


def unloadable(exc: TargetError) -> Outcome:
    """A target that cannot be imported or called so: it will not be better on a retry."""
    error = f"TargetError: {exc}"
    return Outcome(Ending.FAILED, str(exc), {"error": error, "causes": ["TargetError", RECURRING]})


def invoke(job: PoolJob, func: Callable[..., Any], args: tuple, kwargs: dict[str, Any],
           max_result: int) -> Outcome:  # fmt: skip
    """Call a loaded target in this thread: how it ended, and its thread's CPU time."""
    spec = job.spec
    cpu = time.thread_time()
    try:
        _make_outdir(spec)
        with running(job.id, job.attempt, spec.get("unit")):
            value = func(*args, **kwargs)
    except JobStopped:
        raise
    except BaseException as exc:  # SystemExit and KeyboardInterrupt end the job, not the thread
        outcome = _failure(exc)
        outcome.usage["cpu_seconds"] = time.thread_time() - cpu
        return outcome
    usage = {"cpu_seconds": time.thread_time() - cpu}
    return _returned(value, usage, max_result)


def _make_outdir(spec: dict[str, Any]) -> None:
    """A unit of a task gets its output folder here, in the pool, not in the supervisor
    (a mkdir per unit was a sixth of its time on a task of no-op units)."""
    unit = spec.get("unit")
    if unit:
        os.makedirs(unit["outdir"], exist_ok=True)


def _pipe() -> tuple[int, int]:
    """A pipe whose ends are not 0, 1 or 2, even where a job closed those: the child's
    stdin, stdout and stderr would overwrite an end passed to it there."""
    ends = []
    for fd in os.pipe():
        if fd <= 2:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = high
        ends.append(fd)
    return ends[0], ends[1]


def run_command(
    job: PoolJob,
    paths: Paths,
    settings: PoolSettings,
    on_spawn: Callable[[subprocess.Popen], None],
) -> Outcome:
    """Run `argv` under its guardian (guard.py), which kills its whole process group
    when the job is stopped, when the command ends, and when this pool dies, and which
    copies its output into the job's logs, within the pool's log limits."""
    spec = job.spec
    argv, cwd, env = spec["argv"], spec.get("cwd") or None, spec.get("env")
    try:
        _make_outdir(spec)  # a unit's command runs in it
    except OSError as exc:
        error = f"cannot make the unit's output folder: {exc}"
        return Outcome(Ending.FAILED, error, {"error": error})
    if _find_program(argv[0], cwd, env) is None:
        error = f"command not found: {argv[0]}"
        return Outcome(Ending.FAILED, error, {"error": error})
    out_path, err_path = (
        paths.job_output(job.id, stream, job.attempt) for stream in ("out", "err")
    )
    watch_r, watch_w = _pipe()  # the guardian sees end-of-file when this process dies
    usage_r, usage_w = _pipe()  # the guardian writes what the command used
    try:
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            guard_args = (watch_r, usage_w, settings.max_log, settings.min_free)
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", GUARD, *map(str, guard_args), *argv],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                pass_fds=(watch_r, usage_w),
            )
    except (OSError, ValueError, TypeError) as exc:  # a bad folder, a NUL in an argument...
        os.close(watch_w)
        os.close(usage_r)
        error = f"cannot run {argv[0]!r}: {getattr(exc, 'strerror', None) or exc}"
        return Outcome(Ending.FAILED, error, {"error": error})
    finally:
        os.close(watch_r)
        os.close(usage_w)
    try:
        on_spawn(process)
        ended = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        if ended.si_code != os.CLD_EXITED:  # killed, maybe by its command: see _kill_session
            _kill_session(process.pid)
        code = process.wait()
        usage = _usage(usage_r, code)
    finally:
        os.close(watch_w)
        os.close(usage_r)
    result = {"exit_code": code, "stdout": tail(out_path), "stderr": tail(err_path)}
    fields = {"result": json.dumps(result), "result_type": "json"}
    if code == 0:
        return Outcome(Ending.DONE, "exit code 0", fields, usage)
    why = f"killed by {_signal_name(-code)}" if code < 0 else f"exit code {code}"
    if code < 0 and "cpu_seconds" not in usage:  # the guardian reports before it goes
        why = f"its guardian was {why}; the command was killed with it"
    return Outcome(Ending.FAILED, why, {**fields, "error": why, "causes": ["exit"]}, usage)


def run_call_in_process(
    job: PoolJob,
    paths: Paths,
    settings: PoolSettings,
    on_spawn: Callable[[subprocess.Popen], None],
    module: str = "",
    write_call: Callable[[Path], None] | None = None,
) -> Outcome:
    """Run a call job in a process of its own (gsup/executors/child.py, or `module`, which
    reads the call `write_call` wrote), under a guardian as a command is: its ending is
    what the child wrote, its usage the process's."""
    from gsup.executors import child

    call_file, outcome_file = (
        paths.job_output(job.id, part, job.attempt) for part in ("call", "outcome")
    )
    try:
        if write_call is None:
            child.write_call(call_file, job, settings.max_result)
        else:
            write_call(call_file)
        module = module or child.MODULE
        argv = [sys.executable, "-P", "-m", module, str(call_file), str(outcome_file)]
        spec = {"argv": argv, "cwd": job.spec.get("cwd"), "unit": job.spec.get("unit")}
        ran = run_command(replace(job, kind="cmd", spec=spec), paths, settings, on_spawn)
        outcome = child.read_outcome(outcome_file)
    finally:
        for file in (call_file, outcome_file):
            with contextlib.suppress(OSError):
                file.unlink()
    if outcome is None:  # killed, or its interpreter could not start: the process says
        why = f"its process ended before the call did: {ran.why}"
        return Outcome(Ending.FAILED, why, {"error": why, "causes": ["exit"]}, ran.usage)
    outcome.usage.update(ran.usage)  # the whole process's CPU time, peak memory, exit
    return outcome


def _kill_session(guardian: int) -> None:
    """SIGKILL every process of the guardian's session (its pid: it started one): if the
    guardian was killed, by its command or the OOM killer, the command would otherwise
    run on, unrecorded, out of reach of a cancel or a stop. Called while the guardian is
    a zombie, unreaped: its pid, the session's id, cannot have been reused. Scanned
    again until none is left: one may fork while the last scan reads /proc."""
    for _ in range(100):  # each round kills at least one: a fork bomb is out-killed
        living = _session_members(guardian)
        if not living:
            return
        for pid in living:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _session_members(session: int) -> list[int]:
    """The processes of `session` that are not dead yet (zombies are)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                state, _, _, sid = stat.read().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(sid) == session and state != "Z":
            members.append(int(entry))
    return members


def _usage(usage_r: int, code: int) -> dict[str, Any]:
    """What the guardian said the command used (nothing if it was killed first)."""
    usage: dict[str, Any] = {"exit_status": code}
    try:
        user, system, peak = os.read(usage_r, 256).split()
        usage.update(cpu_seconds=float(user) + float(system), peak_rss_kb=int(peak))
    except (OSError, ValueError):
        pass
    return usage


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
