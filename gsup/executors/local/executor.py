"""The local executor: a pool process of N worker threads, forked once and reused.

All that is particular to pools stays here: the process and its socket, its
threads, the recycling of a process whose job did not stop in time, its restart
after a death, and (in the pool) the guardians of command jobs.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
from dataclasses import dataclass
from typing import Any

import multiprocess

from gsup.config import Paths, PoolSettings
from gsup.executors.base import Attempt, AttemptEnd, Executor, Loop, Reports, Timer
from gsup.executors.local.channel import FrameReader, frame, report_limit
from gsup.executors.local.pool import pool_main
from gsup.lifecycle import Ending

QUICK_DEATH = 1.0  # a pool that dies this soon after its start is restarted this much later


@dataclass
class Held:
    """An attempt the pool holds, from its hand-over to its end."""

    attempt: Attempt
    started: bool = False
    confirmed: bool = False  # a runs-once attempt may run, once the turn is on the disk
    go_sent: bool = False  # ...and the pool was told so
    stopping: bool = False
    stop_timer: Timer | None = None
    overdue: bool = False  # asked to stop, it did not within the grace: pool recycled

    @property
    def may_have_run(self) -> bool:
        return self.started and (self.go_sent or not self.attempt.runs_once)


class LocalPool(Executor):
    backend = "local"
    shared_fate = True

    def __init__(self, settings: PoolSettings, paths: Paths, stop_grace: float) -> None:
        super().__init__(settings.name)
        self.settings = settings
        self.paths = paths
        self.stop_grace = stop_grace
        self.held: dict[int, Held] = {}
        self.process: Any = None
        self.sock: socket.socket | None = None
        self.pidfd: int | None = None
        self.reader = FrameReader(report_limit(self.settings.max_result))
        self.outbox: list[tuple[Any, ...]] = []
        self.confirms: list[int] = []  # jobs whose go-ahead waits for the disk
        self.unsent = bytearray()
        self.started_at = 0.0
        self.recycling = False  # the supervisor killed it on purpose
        self.halted = False
        self.halt_reason = ""
        self.broken: str | None = None  # why its channel could not be read
        self.restart: Timer | None = None

    @property
    def alive(self) -> bool:
        return self.sock is not None

    # --- the contract --------------------------------------------------------------

    def start(self, loop: Loop, reports: Reports) -> None:
        self.loop, self.reports = loop, reports
        self._spawn()

    def capacity(self) -> int:
        if not self.alive or self.halted or self.recycling:
            return 0
        return max(0, self.settings.threads + self.settings.queue_size - len(self.held))

    def submit(self, attempt: Attempt) -> None:
        self.held[attempt.job] = Held(attempt)
        a = attempt
        self.outbox.append(("run", a.job, a.kind, a.target, a.spec, a.priority, a.runs_once))

    def confirm(self, job: int) -> None:
        held = self.held.get(job)
        if held is not None and not held.confirmed:
            held.confirmed = True
            self.confirms.append(job)

    def stop(self, job: int) -> None:
        held = self.held.get(job)
        if held is None or held.stopping:
            return
        held.stopping = True
        self.outbox.append(("stop", job))
        held.stop_timer = self.loop.call_at(
            self.loop.now() + self.stop_grace, lambda: self._overdue(job)
        )

    def recall(self, job: int) -> None:
        held = self.held.get(job)
        if held is not None and not held.started and not held.stopping:
            self.outbox.append(("recall", job))

    def flush(self, durable: bool) -> None:
        if durable:
            for job in self.confirms:
                if job in self.held:
                    self.held[job].go_sent = True
                    self.outbox.append(("go", job))
            self.confirms.clear()
        if self.outbox and self.alive:
            self.unsent += frame(self.outbox)
        self.outbox.clear()
        if self.unsent:
            self._send()

    def halt(self, why: str) -> None:
        self.halted, self.halt_reason = True, why
        if self.restart is not None:
            self.restart.cancel()
        self._kill()
        if self.process is not None:
            self.process.join(5)
        self._exited()  # what it reported before it died counts

    def close(self) -> None:
        if self.process is not None:
            self.process.join(5)

    # --- the pool process ------------------------------------------------------------

    def _spawn(self) -> None:
        self.restart = None
        try:
            self._fork()
        except OSError as exc:  # out of file descriptors or processes: try again soon
            self.loop.say(
                f"cannot start pool {self.name} ({exc.strerror or exc}); trying again in"
                f" {QUICK_DEATH:g}s"
            )
            self.restart = self.loop.call_at(self.loop.now() + QUICK_DEATH, self._spawn)

    def _fork(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = multiprocess.get_context("fork").Process(
                target=pool_main,
                args=(
                    self.name,
                    self.settings.threads,
                    theirs,
                    str(self.paths.home),
                    [*self.loop.private_fds(), ours.fileno()],
                    self.settings.max_result,
                ),
                name=f"gsup-pool-{self.name}",
            )
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        with contextlib.suppress(OSError):
            os.setpgid(process.pid, process.pid)  # set on both sides: no window without it
        try:
            pidfd = os.pidfd_open(process.pid)
        except OSError:
            os.kill(process.pid, signal.SIGKILL)
            process.join(5)
            ours.close()
            raise
        ours.setblocking(False)
        self.process, self.sock, self.pidfd = process, ours, pidfd
        self.reader = FrameReader(report_limit(self.settings.max_result))
        self.started_at, self.recycling, self.broken = self.loop.now(), False, None
        self.loop.watch(ours, self._on_io)
        self.loop.watch(pidfd, lambda mask: self._exited())

    def _send(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # it is dying: its pidfd will tell
        del self.unsent[:sent]
        self.loop.want_write(self.sock, bool(self.unsent))

    def _on_io(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._send()
        if mask & selectors.EVENT_READ and self.sock is not None and self._receive() is None:
            self._exited()

    def _receive(self) -> bool | None:
        """Read and handle what the pool sent: whether anything came; None once the
        pool has closed its end."""
        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return None
        if not data:
            return None
        if self.broken is None:  # else what comes is dropped until the pool is gone
            try:
                for message in self.reader.feed(data):
                    self._message(message)
            except Exception as exc:  # a job wrote to the pool's socket, or worse
                self._break(f"its channel was corrupted: {type(exc).__name__}: {exc}")
        return True

    def _break(self, why: str) -> None:
        """The pool sent what cannot be read: nothing it says can be trusted any more.
        It dies as if of its own accord: the jobs it started are lost, as suspects."""
        self.broken = why
        self.loop.say(f"pool {self.name}: {why}; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def _message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "start":
            _, job, worker, at = message
            held = self.held.get(job)
            if held is not None:
                held.started = True
                self.reports.started(self, job, f"Worker_{worker}", at)
        elif kind == "end":
            _, job, ending, why, outcome, usage = message
            if job in self.held:
                self._end(job, Ending(ending), why, outcome, usage)

    def _end(
        self,
        job: int,
        ending: Ending,
        why: str,
        outcome: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> None:
        held = self.held.pop(job)
        if held.stop_timer is not None:
            held.stop_timer.cancel()
        self.reports.ended(self, job, AttemptEnd(ending, why, outcome or {}, usage or {}))

    def _overdue(self, job: int) -> None:
        """A stopped job has not ended within the grace: its thread may be blocked in C,
        where no exception reaches it. Only a new process ends it."""
        held = self.held.get(job)
        if held is None or self.recycling:
            return
        held.overdue = True
        self.loop.say(
            f"job {job} did not stop within {self.stop_grace:g}s: recycling pool {self.name}"
        )
        self._kill()

    def _kill(self) -> None:
        """SIGKILL the pool and its commands' guardians; `_exited` does the rest."""
        if self.process is None or self.recycling:
            return
        self.recycling = True  # its commands' guardians kill them as it dies
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)

    def _exited(self) -> None:
        """The pool process ended: read what it sent before, settle its jobs, restart it."""
        if self.sock is None:
            return
        while self._receive():  # its last reports: a job it started, then died of
            pass  # (a process the pool forked may still hold the socket: no end-of-file)
        self.loop.unwatch(self.sock)
        self.loop.unwatch(self.pidfd)
        os.close(self.pidfd)
        self.sock.close()
        self.sock = self.pidfd = None
        self.unsent.clear()
        self.confirms.clear()
        self.process.join(1)
        death = self.broken or _describe_exit(self.process.exitcode)
        if not self.recycling:
            self.loop.say(f"pool {self.name} died ({death}); restarting it")
        for job, held in list(self.held.items()):
            self._end(job, *self._fate(held, death))
        if not self.halted:
            quick = self.loop.now() - self.started_at < QUICK_DEATH and not self.recycling
            self.restart = self.loop.call_at(
                self.loop.now() + (QUICK_DEATH if quick else 0.0), self._spawn
            )

    def _fate(self, held: Held, death: str) -> tuple[Ending, str]:
        """What became of a job its pool held when the pool ended."""
        if not held.may_have_run:
            return Ending.RECALLED, "its pool ended before it ran"
        if self.halted:
            return Ending.INTERRUPTED, self.halt_reason
        if self.recycling and held.overdue:
            return Ending.STOPPED, f"did not stop within {self.stop_grace:g}s; pool recycled"
        if self.recycling:
            return Ending.INTERRUPTED, "its pool was recycled"
        return Ending.LOST, f"pool died ({death})"


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
