"""The Slurm backend: each attempt is a Slurm batch job; Slurm runs it, gsup follows it.

An attempt goes: held here (`waiting`), then `sbatch` (a few at once) as a job named
gsup-TAG-JOB-ATTEMPT, then Slurm's: it is reported started as soon as Slurm has its id
(PENDING is running, seen from gsup; Slurm's state and reason are journaled as the
attempt's reason, `noted`). Every `poll` seconds one `squeue` lists the jobs followed,
and one more runs as soon as a job's outcome lands in the Slurm folder; a followed job
it no longer lists has ended, and one `sacct` for all of those says how (else what the
job wrote: a call's outcome, gsup/executors/child.py, or a command's exit code).

Batch jobs outlive the daemon: a stop leaves them running (`outlives_daemon`), the next
start follows them again by the Slurm id its attempt recorded (`reattach`) and cancels
this state dir's jobs that no attempt follows. Every Slurm command runs as a child of
the supervisor, by its absolute path, never waited for (commands.Run).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsup.config import Paths
from gsup.executors.base import Attempt, AttemptEnd, Executor, Loop, Reports, Timer
from gsup.executors.child import read_outcome, write_call
from gsup.executors.local.output import tail
from gsup.executors.local.runner import Outcome, PoolJob
from gsup.executors.slurm import commands
from gsup.executors.slurm.commands import Run
from gsup.journal.pending import Unfinished
from gsup.lifecycle import Ending
from gsup.settings import SlurmSettings
from gsup.tasks.landing import Landings

SUBMITTING = 8  # sbatch commands running at once
RETRY_SUBMIT = 10.0  # seconds before a submission the controller did not take is tried again
FORGOTTEN_AFTER = 5  # polls after which a job neither squeue nor sacct knows is lost
STOP_POLL = 0.5  # seconds after a scancel before squeue is asked again
CANCELS = 500  # Slurm ids one scancel command takes
LANDED_POLL = 0.2  # seconds after a call's outcome lands before squeue is asked


@dataclass
class SlurmJob:
    job: int
    attempt: int
    kind: str
    priority: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    target: str = ""
    slurm_id: str | None = None
    submitting: bool = False
    uncertain: bool = False  # an sbatch that failed may have reached the controller
    released: bool = True  # a runs-once job is submitted held, released once confirmed
    confirmed: bool = False
    stopping: bool = False
    listed_at: float = 0.0  # monotonic time of its sbatch's answer: a squeue must start after
    unknown: int = 0  # polls in a row that found it neither listed nor finished
    detail: str = ""  # Slurm's state (and reason), as last seen


class SlurmExecutor(Executor):
    backend = "slurm"
    outlives_daemon = True

    def __init__(self, name: str, settings: SlurmSettings, paths: Paths) -> None:
        super().__init__(name)
        self.settings = settings
        self.paths = paths
        self.jobs: dict[int, SlurmJob] = {}
        self.waiting: list[tuple[int, int]] = []  # (priority, job) not yet submitted
        self.submitting = 0
        self.to_release: list[SlurmJob] = []  # confirmed: released at the durable flush
        self.to_cancel: list[str] = []  # Slurm ids: one scancel for all, at the next flush
        self.poll_timer: Timer | None = None
        self.polling = False
        self.controller: str | None = None  # why the controller did not take a job
        self.retry_timer: Timer | None = None
        self.poll_timer_when = 0.0
        self.missing: list[str] = []
        self.halted = False
        self.completion_log = False  # sacct -c: once plain sacct has failed
        self.bad_lines = 0  # squeue lines not understood in the last poll
        self.landings: Landings | None = None
        # Slurm job names: gsup-TAG-JOB-ATTEMPT, TAG telling this state dir's from others'
        self.prefix = f"gsup-{paths.tag}-"
        self.tools: dict[str, str] = {}  # absolute paths: a command's PATH may lack them

    # --- the contract --------------------------------------------------------------

    def start(self, loop: Loop, reports: Reports) -> None:
        self.loop, self.reports = loop, reports
        self.tools = commands.find_tools()
        self.missing = [tool for tool in commands.TOOLS if tool not in self.tools]  # said by
        if self.missing:  # `gsup status`, not at each start
            return
        self._poll_soon(self.settings.poll)  # reattached jobs are followed from the start
        self._run(commands.ours_argv(), self._cancel_orphans)

    def _cancel_orphans(self, code: int, stdout: str, stderr: str) -> None:
        """Slurm jobs of this state dir that no attempt follows: submitted by a daemon
        that died (or stopped) before it could journal them. Their attempts were run
        again or given back: these must not run too."""
        orphans = []
        for slurm_id, name in commands.parse_ours(stdout, self.prefix):
            job, _, attempt = name.partition("-")
            found = self.jobs.get(int(job)) if job.isdigit() else None
            if found is None or str(found.attempt) != attempt:
                orphans.append(slurm_id)
        if orphans:
            self.loop.say(f"backend slurm: cancelling {len(orphans)} Slurm jobs no attempt follows")
            self.to_cancel += orphans

    @property
    def unusable(self) -> str | None:
        if self.missing:
            return f"{', '.join(self.missing)} not found on the daemon's PATH"
        return None

    @property
    def trouble(self) -> str | None:
        if self.missing:
            return self.unusable
        if self.controller is not None:
            return f"the controller did not take jobs ({self.controller}); trying again"
        return None

    def capacity(self) -> int:
        if self.missing:
            return 0
        return max(0, self.settings.slots - len(self.jobs))

    def submit(self, attempt: Attempt) -> None:
        spec = json.loads(attempt.spec)
        self.jobs[attempt.job] = SlurmJob(
            attempt.job, attempt.attempt, attempt.kind, attempt.priority, spec, attempt.target,
            released=not attempt.runs_once,
        )  # fmt: skip
        heapq.heappush(self.waiting, (attempt.priority, attempt.job))

    def confirm(self, job: int) -> None:
        found = self.jobs.get(job)
        if found is not None and not found.confirmed:
            found.confirmed = True
            self.to_release.append(found)

    def stop(self, job: int) -> None:
        found = self.jobs.get(job)
        if found is None or found.stopping:
            return
        found.stopping = True
        if found.slurm_id is None and not found.submitting:
            self._later(
                lambda: self._end(found, Ending.RECALLED, "stopped before it was submitted")
            )
        elif found.slurm_id is not None:
            self._cancel(found)  # else when sbatch answers

    def recall(self, job: int) -> None:
        found = self.jobs.get(job)
        if found is not None and found.slurm_id is None and not found.submitting:
            found.stopping = True
            self._later(
                lambda: self._end(found, Ending.RECALLED, "given back before it was submitted")
            )

    def reattach(self, unfinished: Unfinished) -> bool:
        slurm_id = unfinished.external_id
        if unfinished.attempt is None or not slurm_id or not slurm_id.isdigit():
            return False
        self.jobs[unfinished.job] = SlurmJob(
            unfinished.job, unfinished.attempt, unfinished.kind, slurm_id=slurm_id,
            listed_at=-1.0,  # listed by Slurm before this daemon started
        )  # fmt: skip
        return True

    def flush(self, durable: bool) -> None:
        for start in range(0, len(self.to_cancel), CANCELS):  # thousands at a `gsup purge`
            self._run(["scancel", *self.to_cancel[start : start + CANCELS]], self._ignore)
        self.to_cancel.clear()
        if durable:
            for found in self.to_release:
                if found.slurm_id is not None and not found.released and not found.stopping:
                    found.released = True
                    self._release(found)
            self.to_release = [f for f in self.to_release if f.slurm_id is None]
        self._submit_waiting()

    def halt(self, why: str) -> None:
        """Jobs Slurm has go on running (the next start follows them again); those it
        does not have yet are given back."""
        for found in list(self.jobs.values()):
            if found.slurm_id is None and not found.submitting:
                self._end(found, Ending.RECALLED, why)
            elif found.slurm_id is None:  # its sbatch may yet succeed: it may run
                self._end(found, Ending.INTERRUPTED, why)
        self.halted = True

    # --- submitting -----------------------------------------------------------------

    def _submit_waiting(self) -> None:
        if self.halted or self.retry_timer is not None:
            return
        while self.waiting and self.submitting < SUBMITTING:
            _, job = heapq.heappop(self.waiting)
            found = self.jobs.get(job)
            if found is None or found.stopping or found.slurm_id is not None:
                continue
            self._sbatch(found)

    def _sbatch(self, found: SlurmJob) -> None:
        if found.uncertain:  # look for it before submitting it again
            found.submitting = True
            self.submitting += 1
            self._run(commands.named_argv(self._name(found)),
                      lambda code, out, err: self._looked_up(found, code, out, err))  # fmt: skip
            return
        try:
            argv = self._prepare(found)
        except OSError as exc:
            why = f"cannot write its job script in {self.paths.slurm}: {exc.strerror or exc}"
            self._later(lambda: self._end(found, Ending.FAILED, why, {"error": why}))
            return
        found.submitting = True
        self.submitting += 1
        self._run(argv, lambda code, out, err: self._submitted(found, code, out, err),
                  env=self._environment(found))  # fmt: skip

    def _looked_up(self, found: SlurmJob, code: int, stdout: str, stderr: str) -> None:
        """What squeue knows of a job whose sbatch failed: its id if the controller took
        it after all (it is followed, not submitted twice); else it is submitted."""
        ids = stdout.split() if code == 0 else []
        if code != 0:
            self._submitted(found, code, "", stderr)  # still unreachable: later again
        elif ids:
            self._submitted(found, 0, ids[0], "")
        else:
            found.uncertain = False
            self.submitting -= 1
            found.submitting = False
            self._sbatch(found)

    def _prepare(self, found: SlurmJob) -> list[str]:
        """Write the job's script (and a call's attempt file) into its log folder; the
        sbatch command line that submits it."""
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.slurm.mkdir(parents=True, exist_ok=True)
        if self.landings is not None:
            self.landings.watch(self.paths.slurm)  # once: it is watched from then on
        call, outcome = self._files(found, "call"), self._files(found, "outcome")
        if found.kind == "call":
            job = PoolJob(found.job, found.attempt, "call", found.target, found.spec)
            write_call(call, job, self.settings.max_result)
        script = self._files(found, "sh")
        script.write_text(commands.job_script(found.kind, found.spec, str(call), str(outcome)))
        out, err = (str(self.paths.job_output(found.job, s, found.attempt)) for s in ("out", "err"))
        options = [*self.settings.sbatch, *found.spec.get("sbatch", ())]
        cwd = found.spec.get("cwd") or "/"
        argv = commands.sbatch_argv(
            self._name(found), str(script), out, err, cwd, not found.released, options
        )
        return [self.tools["sbatch"], *argv[1:]]

    def _name(self, found: SlurmJob) -> str:
        return f"{self.prefix}{found.job}-{found.attempt}"

    def _run(self, argv: list[str], done: Callable[[int, str, str], None],
             env: dict[str, str] | None = None) -> None:  # fmt: skip
        """A Slurm command, by the tool's absolute path."""
        Run(self.loop, [self.tools.get(argv[0], argv[0]), *argv[1:]], done, env)

    def _environment(self, found: SlurmJob) -> dict[str, str] | None:
        """A command's job gets the environment of its `gsup add`, as it would locally
        (with the daemon's Slurm settings, which sbatch needs); a call, the daemon's."""
        env = found.spec.get("env")
        if found.kind != "cmd" or env is None:
            return None
        own = {k: v for k, v in env.items() if not k.startswith(("SBATCH_", "SLURM_"))}
        return {**own, **{k: v for k, v in os.environ.items() if k.startswith("SLURM_CONF")}}

    def _submitted(self, found: SlurmJob, code: int, stdout: str, stderr: str) -> None:
        self.submitting -= 1
        found.submitting = False
        slurm_id = commands.parse_sbatch(stdout) if code == 0 else None
        if found.job not in self.jobs:  # halted meanwhile
            if slurm_id is not None:
                self.to_cancel.append(slurm_id)
            return
        if slurm_id is None:
            self._not_submitted(found, code, stderr or stdout)
        else:
            self.controller = None
            found.slurm_id, found.listed_at = slurm_id, self.loop.now()
            self.reports.started(self, found.job, slurm_id, time.time())
            self._note(found, "PENDING")
            if found.stopping:
                self._cancel(found)
            elif found.confirmed and not found.released:
                self.to_release.append(found)
            self._poll_soon(self.settings.poll)
        self._submit_waiting()

    def _not_submitted(self, found: SlurmJob, code: int, message: str) -> None:
        said = commands.one_line(message)
        if found.stopping:
            self._end(found, Ending.RECALLED, "stopped before Slurm took it")
        elif code != 127 and commands.unreachable(message):  # try again, later
            if self.controller is None:
                self.loop.say(f"backend slurm: sbatch failed, trying again: {said}")
            self.controller = said
            found.uncertain = True  # a timeout may come after the controller took it
            heapq.heappush(self.waiting, (found.priority, found.job))
            if self.retry_timer is None:
                self.retry_timer = self.loop.call_at(self.loop.now() + RETRY_SUBMIT, self._retry)
        else:
            why = f"sbatch failed: {said}"
            self._end(found, Ending.FAILED, why, {"error": why, "causes": ["SlurmError"]})

    def _retry(self) -> None:
        self.retry_timer = None
        self._submit_waiting()

    def _release(self, found: SlurmJob) -> None:
        assert found.slurm_id is not None
        self._run(["scontrol", "release", found.slurm_id],
                  lambda code, out, err: self._released(found, code, out, err))  # fmt: skip

    def _released(self, found: SlurmJob, code: int, stdout: str, stderr: str) -> None:
        if code != 0 and self.jobs.get(found.job) is found and not found.stopping:
            said = commands.one_line(stderr)
            self.loop.say(f"backend slurm: scontrol release failed, trying again: {said}")
            found.released = False
            self.to_release.append(found)  # at the flush of the turn the timer brings
            self.loop.call_at(self.loop.now() + RETRY_SUBMIT, lambda: None)

    def _cancel(self, found: SlurmJob) -> None:
        assert found.slurm_id is not None
        self.to_cancel.append(found.slurm_id)
        self._poll_soon(STOP_POLL)

    def _ignore(self, code: int, stdout: str, stderr: str) -> None:
        pass

    # --- following ------------------------------------------------------------------

    def _poll_soon(self, delay: float) -> None:
        if self.poll_timer is not None:
            if self.poll_timer_when <= self.loop.now() + delay:
                return
            self.poll_timer.cancel()
        self.poll_timer_when = self.loop.now() + delay
        self.poll_timer = self.loop.call_at(
            self.poll_timer_when, lambda: commands.guarded(self.loop, self._poll)
        )

    def _poll(self) -> None:
        self.poll_timer = None
        followed = [f for f in self.jobs.values() if f.slurm_id is not None]
        if self.polling or not followed or self.missing:
            if followed and not self.missing:
                self._poll_soon(self.settings.poll)
            return
        self.polling = True
        began = self.loop.now()
        ids = [found.slurm_id for found in followed if found.slurm_id]
        self._run(commands.squeue_argv(ids),
                  lambda code, out, err: self._listed(began, code, out, err))  # fmt: skip

    def _listed(self, began: float, code: int, stdout: str, stderr: str) -> None:
        if commands.forgotten(code, stderr):
            code, stdout = 0, ""
        if code != 0:
            self.polling = False
            self.loop.say(f"backend slurm: squeue failed: {commands.one_line(stderr)}")
            self._poll_soon(self.settings.poll)
            return
        listed, bad = commands.parse_squeue(stdout)
        if bad and not self.bad_lines:  # said once, not at every poll
            self.loop.say(
                f"backend slurm: {len(bad)} squeue lines not understood: {bad[0][:200]!r}"
            )
        self.bad_lines = len(bad)
        gone = []
        for found in self.jobs.values():
            if found.slurm_id is None:
                continue
            seen = listed.get(found.slurm_id)
            if seen is not None and seen.state in commands.LIVE_STATES:
                found.unknown = 0
                self._note(found, seen.state if seen.reason in ("None", "") else
                           f"{seen.state} ({seen.reason})")  # fmt: skip
            elif found.listed_at < began:  # submitted before squeue looked
                gone.append(found)
        if not gone:
            self.polling = False
            self._poll_soon(self.settings.poll)
            return
        self._sacct(gone)

    def _sacct(self, gone: list[SlurmJob]) -> None:
        ids = [found.slurm_id for found in gone if found.slurm_id]
        self._run(commands.sacct_argv(ids, self.completion_log),
                  lambda code, out, err: self._accounted(gone, code, out, err))  # fmt: skip

    def _accounted(self, gone: list[SlurmJob], code: int, stdout: str, stderr: str) -> None:
        if code != 0 and not self.completion_log and commands.accounting_disabled(stderr):
            self.completion_log = True  # no slurmdbd: the job completion log, if kept
            self._sacct(gone)
            return
        self.polling = False
        finished = commands.parse_sacct(stdout) if code == 0 else {}
        for found in gone:
            if self.jobs.get(found.job) is not found:
                continue
            end = finished.get(found.slurm_id or "") or self._own_word(found)
            if end is not None:
                self._finish(found, end)
                continue
            found.unknown += 1
            if found.unknown >= FORGOTTEN_AFTER:
                why = f"Slurm no longer knows job {found.slurm_id}"
                self._end(found, Ending.LOST, why)
        self._poll_soon(self.settings.poll)

    def _own_word(self, found: SlurmJob) -> commands.Finished | None:
        """How the job ended by what it wrote (where Slurm keeps no accounting, or is
        slow to): a command's exit code, a call's outcome."""
        outcome_file = self._files(found, "outcome")
        if found.kind == "cmd":
            code = commands.read_exit_code(str(outcome_file))
            return (
                None
                if code is None
                else commands.Finished("COMPLETED" if code == 0 else "FAILED", code)
            )
        outcome = read_outcome(outcome_file)
        if outcome is None:
            return None
        return commands.Finished("COMPLETED", 0 if outcome.ending == Ending.DONE else 1)

    def _finish(self, found: SlurmJob, end: commands.Finished) -> None:
        usage = {"exit_status": end.exit_code}
        if found.stopping and end.state == "CANCELLED":
            self._end(found, Ending.STOPPED, "stopped", {}, usage)
            return
        if end.state in ("NODE_FAIL", "BOOT_FAIL", "PREEMPTED"):
            self._end(found, Ending.LOST, f"Slurm: {end.state}", {}, usage)
            return
        outcome = self._outcome(found, end)
        outcome.usage.update(usage)
        self._end(found, outcome.ending, outcome.why, outcome.fields, outcome.usage)

    def _outcome(self, found: SlurmJob, end: commands.Finished) -> Outcome:
        code = end.exit_code
        why = (
            f"Slurm: {end.state}, exit code {code}"
            if code >= 0
            else f"Slurm: {end.state}, signal {-code}"
        )
        if found.kind == "call":
            outcome = read_outcome(self._files(found, "outcome"))
            if outcome is not None:
                return outcome
            why = f"its process ended before the call did: {why}"
            return Outcome(Ending.FAILED, why, {"error": why, "causes": ["exit"]})
        out, err = (self.paths.job_output(found.job, s, found.attempt) for s in ("out", "err"))
        result = {"exit_code": code, "stdout": tail(out), "stderr": tail(err)}
        fields = {"result": json.dumps(result), "result_type": "json"}
        if end.state == "COMPLETED" and code == 0:
            return Outcome(Ending.DONE, "exit code 0", fields)
        return Outcome(Ending.FAILED, why, {**fields, "error": why, "causes": ["exit"]})

    # --- outcomes landing ----------------------------------------------------------------

    def watch_with(self, landings: Landings) -> None:
        """The watcher that tells when a call's outcome lands in the Slurm folder (shared
        with the nodes): its job's end is looked for then, not at the next poll."""
        self.landings = landings

    def landed(self, events: list[tuple[str, str, Any]]) -> None:
        prefix = f"{self.paths.slurm}/"
        for kind, path, _ in events:
            if kind == "landed" and path.startswith(prefix) and path.endswith(".outcome"):
                job = path[len(prefix) :].partition(".")[0]
                if job.isdigit() and int(job) in self.jobs:
                    self._poll_soon(LANDED_POLL)

    # --- helpers ----------------------------------------------------------------------

    def _note(self, found: SlurmJob, detail: str) -> None:
        """Slurm's state of a job, journaled when it changes (not at every poll)."""
        if detail != found.detail:
            found.detail = detail
            self.reports.noted(self, found.job, f"Slurm: {detail}")

    def _files(self, found: SlurmJob, part: str) -> Path:
        """The job's script, attempt and outcome files, in the Slurm folder."""
        return self.paths.slurm / f"{found.job}.{found.attempt}.{part}"

    def _later(self, callback: Callable[[], None]) -> None:
        """Report from a timer: never inside a call the supervisor makes."""
        self.loop.call_at(self.loop.now(), lambda: commands.guarded(self.loop, callback))

    def _end(
        self, found: SlurmJob, ending: Ending, why: str,
        outcome: dict[str, Any] | None = None, usage: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        if self.jobs.get(found.job) is not found:
            return
        del self.jobs[found.job]
        for part in ("call", "outcome", "sh"):
            with contextlib.suppress(OSError):  # never written, or the folder is no folder
                self._files(found, part).unlink()
        self.reports.ended(self, found.job, AttemptEnd(ending, why, outcome or {}, usage or {}))
