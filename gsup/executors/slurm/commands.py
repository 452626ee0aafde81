"""Slurm's commands as the Slurm executor uses them: their command lines, the job script,
what their output means; and `Run`, which runs one without blocking the supervisor.

Verified on Slurm 22.05: `sbatch --parsable` prints `ID` (or `ID;CLUSTER`); `squeue`
lists a job until shortly after it ends; `sacct -c` reads the job completion log
(JobCompType=jobcomp/filetxt), which works without slurmdbd, where plain `sacct`
fails with "accounting storage is disabled".
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gsup.executors.base import Loop, Timer
from gsup.executors.child import MODULE as CHILD_MODULE

TOOLS = ("sbatch", "squeue", "sacct", "scancel", "scontrol")
RUN_LIMIT = 120.0  # seconds a Slurm command may take before it is killed
# Slurm's job states in which the job has not ended (squeue's long names).
LIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
    "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD",
})  # fmt: skip
# Said by Slurm's clients when the controller cannot be reached, or found (no slurm.conf,
# no SLURM_CONF): a submission is tried again later rather than failed.
UNREACHABLE = (
    "Could not establish a configuration source",
    "Unable to process configuration file",
    "Unable to contact slurm controller",
    "Socket timed out",
    "Connection refused",
    "Communication connection failure",
    "Slurm temporarily unable",
    "Transport endpoint is not connected",
)


def find_tools() -> dict[str, str]:
    """Slurm's commands found on the daemon's PATH, by name: their absolute paths."""
    import shutil

    found = {tool: shutil.which(tool) for tool in TOOLS}
    return {tool: os.path.abspath(path) for tool, path in found.items() if path}


# --- the job script and sbatch ---------------------------------------------------------


def job_script(kind: str, spec: dict[str, Any], call_file: str, outcome_file: str) -> str:
    """A call runs as the daemon's interpreter (its absolute path: a job gets the
    submitter's PATH, not its virtualenv) running gsup's child, which writes its outcome;
    a command runs as it is, and its exit code is written to OUTCOME_FILE (whole, or not
    at all): its end is known where Slurm keeps no accounting."""
    if kind == "call":
        argv = [sys.executable, "-P", "-m", CHILD_MODULE, call_file, outcome_file]
        return f"#!/bin/sh\nexec {shlex.join(argv)}\n"
    partial = shlex.quote(outcome_file + ".partial")
    return (
        f"#!/bin/sh\n{shlex.join(spec['argv'])}\ncode=$?\n"
        f"echo $code > {partial} && mv {partial} {shlex.quote(outcome_file)}\nexit $code\n"
    )


def read_exit_code(path: str) -> int | None:
    """A command's exit code, as its job script wrote it; None if it wrote none."""
    try:
        with open(path) as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def sbatch_argv(
    name: str, script: str, out: str, err: str, cwd: str, hold: bool, options: list[str]
) -> list[str]:
    own = ["--parsable", f"--job-name={name}", f"--output={out}", f"--error={err}"]
    held = ["--hold"] if hold else []
    return ["sbatch", *options, *own, f"--chdir={cwd}", *held, script]  # gsup's last: they win


def parse_sbatch(stdout: str) -> str | None:
    """The job id `sbatch --parsable` printed; None if it printed none."""
    first = stdout.strip().split(";")[0]
    return first if first.isdigit() else None


def unreachable(message: str) -> bool:
    return any(sign in message for sign in UNREACHABLE)


def one_line(text: str, limit: int = 500) -> str:
    """Slurm's message, as one line for a reason or an error."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    joined = "; ".join(lines) or "no message"
    return joined if len(joined) <= limit else joined[: limit - 3] + "..."


# --- squeue and sacct -------------------------------------------------------------------

SQUEUE_FORMAT = "%i|%T|%r"


def squeue_argv(ids: list[str]) -> list[str]:
    """One call for every job followed: squeue lists those that have not ended (and
    ignores ids it has forgotten, unless it is given only one)."""
    return ["squeue", "--noheader", "--format", SQUEUE_FORMAT, "--jobs", ",".join(ids)]


def forgotten(code: int, stderr: str) -> bool:
    """squeue's answer for a single id it no longer knows: none of it is listed."""
    return code != 0 and "Invalid job id" in stderr


@dataclass(frozen=True)
class Listed:
    state: str  # Slurm's, e.g. PENDING
    reason: str  # why it waits, e.g. Resources; "None" when it does not


def named_argv(name: str) -> list[str]:
    """The id of a job by its name, ended or not (until Slurm forgets it)."""
    return ["squeue", "--noheader", "--states=all", "--format", "%i", "--name", name]


def ours_argv() -> list[str]:
    """Every job of the daemon's user that Slurm still lists, with its name."""
    return ["squeue", "--noheader", "--me", "--format", "%i|%j"]


def parse_ours(stdout: str, prefix: str) -> list[tuple[str, str]]:
    """(id, the name after `prefix`) of each listed job whose name starts with it."""
    ours = []
    for line in stdout.splitlines():
        slurm_id, _, name = line.strip().partition("|")
        if slurm_id.isdigit() and name.startswith(prefix):
            ours.append((slurm_id, name[len(prefix) :]))
    return ours


def parse_squeue(stdout: str) -> tuple[dict[str, Listed], list[str]]:
    """Jobs by id, and the lines that could not be read (said, not fatal)."""
    jobs, bad = {}, []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0].replace("_", "").isdigit() or not parts[1]:
            bad.append(line)
            continue
        jobs[parts[0]] = Listed(parts[1], parts[2])
    return jobs, bad


def accounting_disabled(stderr: str) -> bool:
    """sacct's answer on a cluster without slurmdbd: the completion log may serve."""
    return "accounting storage is disabled" in stderr.lower()


def sacct_argv(ids: list[str], completion_log: bool) -> list[str]:
    """sacct reads the accounting database (slurmdbd), or with `completion_log` the job
    completion log (`-c`), for a cluster whose accounting storage is disabled."""
    fields = "--format=JobID,State,ExitCode"
    source = ["-c"] if completion_log else []
    return ["sacct", *source, "--parsable2", "--noheader", fields, "-j", ",".join(ids)]


@dataclass(frozen=True)
class Finished:
    state: str  # COMPLETED, FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY...
    exit_code: int  # the script's exit code, or -N if a signal N ended it


def parse_sacct(stdout: str) -> dict[str, Finished]:
    """The end of each job sacct knows, by id: its batch job's line (`ID|STATE|CODE:SIG`);
    the last line of an id wins (a requeued job has several)."""
    ended = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3 or not parts[0].isdigit():
            continue  # steps (ID.batch), blank lines
        state = parts[1].split()[0] if parts[1] else ""  # "CANCELLED by 0"
        code, _, sig = parts[2].partition(":")
        try:
            exit_code = -int(sig) if sig and int(sig) else int(code)
        except ValueError:
            continue
        ended[parts[0]] = Finished(state, exit_code)
    return ended


# --- running a command without blocking -------------------------------------------------


def guarded(loop: Loop, callback: Callable[[], None]) -> None:
    """Run one of the executor's callbacks: a bug in it (what Slurm printed that no one
    foresaw) is said with its traceback, and does not take the daemon down."""
    try:
        callback()
    except Exception as exc:
        traceback.print_exc()
        loop.say(f"backend slurm: {type(exc).__name__}: {exc} (a bug: please report it)")


class Run:
    """One Slurm command, run without blocking the supervisor's loop: its output goes to
    temporary files (a pipe could fill and stall it), its end is seen on its pidfd, and
    `done(code, stdout, stderr)` is called from the loop. A command that cannot start
    ends with code 127; one that takes longer than RUN_LIMIT is killed (code -9)."""

    def __init__(
        self, loop: Loop, argv: list[str], done: Callable[[int, str, str], None],
        env: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.loop, self.done = loop, done
        self.out, self.err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (closed in _close)
        self.pidfd: int | None = None
        self.limit: Timer | None = None
        try:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, env=env,
                start_new_session=True,  # a Ctrl-C at the daemon's terminal is not for it
            )  # fmt: skip
            self.pidfd = os.pidfd_open(self.process.pid)
        except OSError as exc:
            self._close()
            why = f"cannot run {argv[0]}: {exc.strerror or exc}"
            loop.call_at(loop.now(), lambda: done(127, "", why))
            return
        loop.watch(self.pidfd, self._ended)
        self.limit = loop.call_at(loop.now() + RUN_LIMIT, self._overdue)

    def _overdue(self) -> None:
        self.limit = None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)

    def _ended(self, mask: int) -> None:
        assert self.pidfd is not None
        self.loop.unwatch(self.pidfd)
        if self.limit is not None:
            self.limit.cancel()
        code = self.process.wait()
        stdout, stderr = (self._read(file) for file in (self.out, self.err))
        self._close()
        guarded(self.loop, lambda: self.done(code, stdout, stderr))

    @staticmethod
    def _read(file: Any) -> str:
        file.seek(0)
        return file.read().decode("utf-8", "replace")

    def _close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        self.out.close()
        self.err.close()
