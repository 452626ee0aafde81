"""The local executor: N worker threads, in one pool process per import context.

A call job runs in a process that serves its import context alone (its spec's `path`,
see gsup.imports): what one folder brings is never seen by another folder's jobs.
The pool forks those processes from the supervisor, which never imports user code,
and keeps at most `threads` of them, reusing one while it lives and its files have
not changed. Command jobs import nothing and go to any live process.

Threads stay one budget: while every attempt the pool holds shares one context, they
all go to its process at once (ahead of a free thread, as a single process would
take them); else one is sent only while fewer than `threads` are sent and not
ended, best first, and the others wait here.

All that is particular to pools stays here: the processes and their sockets, the
recycling of a process whose job did not stop in time, its restart after a death,
and (in the pool) the guardians of command jobs.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import os
import selectors
import signal
import socket
from dataclasses import dataclass
from typing import Any

from gsup.config import Paths
from gsup.executors.base import Attempt, AttemptEnd, Executor, Loop, Reports, Timer
from gsup.executors.local.channel import FrameReader, frame, report_limit
from gsup.executors.local.forked import Forked
from gsup.executors.local.pool import pool_main
from gsup.imports import import_context
from gsup.lifecycle import Ending
from gsup.settings import PoolSettings

QUICK_DEATH = 1.0  # a pool that dies this soon after its start is restarted this much later
START_RETRY = 10.0  # seconds between starts of a pool that reported it cannot start
# A process that dies this soon after its fork, having run no job, died "at start": its
# restarts back off (FIRST_BACKOFF seconds, doubled at each such death in a row, at
# most MAX_BACKOFF), as a broken environment or a killer in a loop will do it again.
AT_START = 5.0
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 60.0
Context = tuple[str, ...]  # an import path


@dataclass
class Held:
    """An attempt the pool holds, from its hand-over to its end."""

    attempt: Attempt
    context: Context | None  # None: a command, which imports nothing
    process: PoolProcessHandle | None = None  # where it was sent; None: it waits here
    given_back: bool = False  # asked back while it waited here: its end is due
    started: bool = False
    confirmed: bool = False  # a runs-once attempt may run, once the turn is on the disk
    go_sent: bool = False  # ...and the pool was told so
    stopping: bool = False
    stop_timer: Timer | None = None
    overdue: bool = False  # asked to stop, it did not within the grace: process recycled

    @property
    def may_have_run(self) -> bool:
        return self.started and (self.go_sent or not self.attempt.runs_once)


class PoolProcessHandle:
    """The supervisor's side of one pool process: its socket, pidfd and messages."""

    def __init__(self, pool: LocalPool, context: Context) -> None:
        self.pool = pool
        self.context = context
        self.process: Forked | None = None
        self.sock: socket.socket | None = None
        self.pidfd: int | None = None
        self.reader = FrameReader(report_limit(pool.settings.max_result))
        self.outbox: list[tuple[Any, ...]] = []
        self.unsent = bytearray()
        self.jobs: set[int] = set()  # sent to it and not ended
        self.started_at = 0.0
        self.served = False  # a job has started in the current process
        self.deaths_at_start = 0  # in a row: see AT_START
        self.last_used = 0.0
        self.recycling = False  # the supervisor killed it on purpose
        self.retiring = False  # it takes no more jobs, and is not restarted
        self.broken: str | None = None  # why its channel could not be read
        self.restart: Timer | None = None

    @property
    def alive(self) -> bool:
        return self.sock is not None

    @property
    def loop(self) -> Loop:
        return self.pool.loop

    def spawn(self) -> None:
        self.restart = None
        try:
            self._fork()
        except OSError as exc:  # out of file descriptors or processes: try again soon
            self.pool.cannot_start_because(f"fork failed: {exc.strerror or exc}")
            self.restart = self.loop.call_at(self.loop.now() + QUICK_DEATH, self.spawn)

    def _fork(self) -> None:
        ours, theirs = socket.socketpair()
        pool = self.pool
        try:
            # It closes every descriptor but `theirs` and its stdio (see descriptors.py).
            process = Forked(pool.process_main, pool.process_args(theirs, self.context))
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
        self.reader = FrameReader(report_limit(self.pool.settings.max_result))
        self.started_at, self.recycling, self.broken = self.loop.now(), False, None
        self.served = False
        self.last_used = self.started_at
        self.loop.watch(ours, self._on_io)
        self.loop.watch(pidfd, lambda mask: self.exited())

    def flush(self) -> None:
        if self.outbox and self.alive:
            self.unsent += frame(self.outbox)
        self.outbox.clear()
        if self.unsent:
            self._send()

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
            self.exited()

    def _receive(self) -> bool | None:
        """Read and handle what the process sent: whether anything came; None once it
        has closed its end."""
        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return None
        if not data:
            return None
        if self.broken is None:  # else what comes is dropped until the process is gone
            try:
                for message in self.reader.feed(data):
                    self.pool.message(self, message)
            except Exception as exc:  # a job wrote to the pool's socket, or worse
                self._break(f"its channel was corrupted: {type(exc).__name__}: {exc}")
        return True

    def _break(self, why: str) -> None:
        """The process sent what cannot be read: nothing it says can be trusted any more.
        It dies as if of its own accord: the jobs it started are lost, as suspects."""
        self.broken = why
        self.loop.say(f"pool {self.pool.name}: {why}; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the process and its commands' guardians; `exited` does the rest."""
        if self.process is None or self.recycling or not self.alive:
            return
        self.recycling = True  # its commands' guardians kill them as it dies
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)

    def exited(self) -> None:
        """The process ended: read what it sent before, then let the pool settle its jobs."""
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
        self.outbox.clear()
        self.process.join(1)
        if self.process.exitcode is None:  # its channel closed, yet it lives: of no use
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.join(5)
        self.pool.process_ended(self, self.broken or _describe_exit(self.process.exitcode))

    def stop_restarting(self) -> None:
        if self.restart is not None:
            self.restart.cancel()
            self.restart = None


class LocalPool(Executor):
    backend = "local"
    shared_fate = True

    process_main = staticmethod(pool_main)  # what its forked processes run

    def __init__(self, settings: PoolSettings, paths: Paths, stop_grace: float) -> None:
        super().__init__(settings.name)
        self.backend = "process" if settings.isolated else "local"  # type: ignore[misc]
        self.settings = settings
        self.paths = paths
        self.stop_grace = stop_grace
        self.held: dict[int, Held] = {}
        self.waiting: list[tuple[int, int]] = []  # (priority, job) of held jobs not sent
        self.contexts: collections.Counter[Context] = collections.Counter()  # of held calls
        self.sent = 0  # held attempts sent to a process
        self.processes: dict[Context, PoolProcessHandle] = {}  # one per context, reusable
        self.retiring: set[PoolProcessHandle] = set()  # taking no more jobs, not yet gone
        self.confirms: list[int] = []  # jobs whose go-ahead waits for the disk
        self.given_back: list[int] = []  # asked back while waiting here: their ends are due
        self.given_back_timer: Timer | None = None
        self.cannot_start: str | None = None  # why its processes fail to start, till one does
        self.halted = False
        self.halt_reason = ""

    @property
    def alive(self) -> bool:
        return any(handle.alive for handle in self.processes.values())

    def process_args(self, channel: socket.socket, context: Context) -> tuple[Any, ...]:
        """The arguments of `process_main` in the process for `context`."""
        return (self.settings, channel, str(self.paths.home), list(context))

    def most_processes(self) -> int:
        """Processes kept at once: one per thread at most (each context needs one)."""
        return self.settings.threads

    # --- the contract --------------------------------------------------------------

    def start(self, loop: Loop, reports: Reports) -> None:
        self.loop, self.reports = loop, reports
        self._new_process(())  # for commands, and to fail early: importing nothing

    def capacity(self) -> int:
        if self.halted or self.cannot_start is not None:
            return 0  # what is queued waits in the journal, not in a pool that cannot run it
        return max(0, self.settings.threads + self.settings.queue_size - len(self.held))

    def submit(self, attempt: Attempt) -> None:
        # A call that runs in a process of its own imports in that process: any pool
        # process runs it, as a command.
        in_thread = attempt.kind == "call" and not self.settings.isolated
        context = import_context(attempt.spec) if in_thread else None
        self.held[attempt.job] = Held(attempt, context)
        if context is not None:
            self.contexts[context] += 1
        heapq.heappush(self.waiting, (attempt.priority, attempt.job))

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
        if held.process is None:
            self._give_back(held)
            return
        held.process.outbox.append(("stop", job))
        held.stop_timer = self.loop.call_at(
            self.loop.now() + self.stop_grace, lambda: self._overdue(job)
        )

    def recall(self, job: int) -> None:
        held = self.held.get(job)
        if held is None or held.started or held.stopping:
            return
        if held.process is None:
            self._give_back(held)
        else:
            held.process.outbox.append(("recall", job))

    def flush(self, durable: bool) -> None:
        if durable:
            for job in self.confirms:
                held = self.held.get(job)
                if held is not None and held.process is not None:
                    held.go_sent = True
                    held.process.outbox.append(("go", job))
            self.confirms.clear()
        self._send_waiting()
        for handle in [*self.processes.values(), *self.retiring]:
            handle.flush()

    def halt(self, why: str) -> None:
        self.halted, self.halt_reason = True, why
        handles = [*self.processes.values(), *self.retiring]
        for handle in handles:
            handle.stop_restarting()
            handle.kill()
        for handle in handles:
            if handle.process is not None:
                handle.process.join(5)
            handle.exited()  # what it reported before it died counts
        for job in list(self.held):  # waiting here: none of it ran
            self._end(job, Ending.RECALLED, "given back before it started")

    def close(self) -> None:
        for handle in [*self.processes.values(), *self.retiring]:
            if handle.process is not None:
                handle.process.join(5)

    # --- sending attempts to processes ------------------------------------------------

    def _send_waiting(self) -> None:
        """Send waiting attempts, best first, as far as the thread budget allows."""
        while self.waiting:
            held = self.held.get(self.waiting[0][1])
            if held is None or held.process is not None or held.given_back:
                heapq.heappop(self.waiting)  # ended, or sent
                continue
            if self.sent < self.settings.threads:
                handle = self._process_for(held)
            else:
                handle = self._hand_ahead_to(held)
            if handle is None:
                return
            heapq.heappop(self.waiting)
            self._send(held, handle)

    def _send(self, held: Held, handle: PoolProcessHandle) -> None:
        a = held.attempt
        held.process = handle
        handle.jobs.add(a.job)
        handle.last_used = self.loop.now()
        self.sent += 1
        handle.outbox.append(self.run_message(a))

    def run_message(self, a: Attempt) -> tuple[Any, ...]:
        return ("run", a.job, a.attempt, a.kind, a.target, a.spec, a.priority, a.runs_once)

    def _hand_ahead_to(self, held: Held) -> PoolProcessHandle | None:
        """Where `held` may go ahead of a free thread: only while every attempt held is of
        one context, into the process that has all those sent (no more than `threads`
        can then run at once)."""
        if len(self.contexts) > 1:
            return None
        handle = self._live_process(held)
        return handle if handle is not None and len(handle.jobs) == self.sent else None

    def _live_process(self, held: Held) -> PoolProcessHandle | None:
        if held.context is None:  # a command: the busiest live process, else the latest used
            live = [handle for handle in self.processes.values() if handle.alive]
            return max(live, key=lambda h: (len(h.jobs), h.last_used), default=None)
        handle = self.processes.get(held.context)
        return handle if handle is not None and handle.alive else None

    def _process_for(self, held: Held) -> PoolProcessHandle | None:
        """The live process to run `held`, started if need be; None: it waits (its process
        is starting again, or every process is busy and there is room for no other)."""
        handle = self._live_process(held)
        if handle is None and held.context is not None and held.context not in self.processes:
            handle = self._new_process(held.context)
        return handle if handle is not None and handle.alive else None

    def _new_process(self, context: Context) -> PoolProcessHandle | None:
        if len(self.processes) >= self.most_processes() and not self._retire_idle():
            return None
        handle = self.processes[context] = PoolProcessHandle(self, context)
        handle.spawn()
        return handle

    def _retire_idle(self) -> bool:
        """Make room for another process: end the least recently used one that holds no
        job (it has nothing to finish: it is killed)."""
        idle = [handle for handle in self.processes.values() if not handle.jobs]
        if not idle:
            return False
        handle = min(idle, key=lambda h: h.last_used)
        self._retire(handle)
        handle.stop_restarting()
        handle.kill()
        return True

    def _retire(self, handle: PoolProcessHandle) -> None:
        """The process takes no more jobs; a new one serves its context from now on."""
        handle.retiring = True
        if self.processes.get(handle.context) is handle:
            del self.processes[handle.context]
        if handle.alive:
            self.retiring.add(handle)

    # --- what the processes say --------------------------------------------------------

    def message(self, handle: PoolProcessHandle, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "start":
            _, job, where, at = message
            held = self.held.get(job)
            if held is not None and held.process is handle:
                held.started = True
                handle.served = True
                self.reports.started(self, job, where, at)
        elif kind == "end":
            _, job, ending, why, outcome, usage = message
            held = self.held.get(job)
            if held is not None and held.process is handle:
                self._end(job, Ending(ending), why, outcome, usage)
        elif kind == "stale":  # it gives back what it holds, and goes
            self._retire(handle)
        elif kind == "ready":
            if self.cannot_start is not None:
                self.loop.say(f"pool {self.name} started")
            self.cannot_start = None
        elif kind == "unstartable":
            self.cannot_start_because(message[1])

    @property
    def trouble(self) -> str | None:
        return None if self.cannot_start is None else f"cannot start: {self.cannot_start}"

    def cannot_start_because(self, why: str) -> None:
        """Its processes fail to start: said once (not at every try), and no job is
        handed to it until one starts."""
        if why != self.cannot_start:
            self.loop.say(
                f"pool {self.name} cannot start: {why}; its jobs stay queued till it does"
            )
        self.cannot_start = why

    def _give_back(self, held: Held) -> None:
        """End an attempt that waits here `recalled`, from a timer: not inside the
        supervisor's call."""
        if held.given_back:
            return
        held.given_back = True
        self.given_back.append(held.attempt.job)
        if self.given_back_timer is None:
            self.given_back_timer = self.loop.call_at(self.loop.now(), self._report_given_back)

    def _report_given_back(self) -> None:
        self.given_back_timer = None
        jobs, self.given_back = self.given_back, []
        for job in jobs:
            if job in self.held:
                self._end(job, Ending.RECALLED, "given back before it started")

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
        if held.process is not None:
            held.process.jobs.discard(job)
            self.sent -= 1
        if held.context is not None:
            self.contexts[held.context] -= 1
            if not self.contexts[held.context]:
                del self.contexts[held.context]
        self.reports.ended(self, job, AttemptEnd(ending, why, outcome or {}, usage or {}))

    def _overdue(self, job: int) -> None:
        """A stopped job has not ended within the grace: its thread may be blocked in C,
        where no exception reaches it. Only a new process ends it."""
        held = self.held.get(job)
        if held is None or held.process is None or held.process.recycling:
            return
        held.overdue = True
        self.loop.say(
            f"job {job} did not stop within {self.stop_grace:g}s: recycling pool {self.name}"
        )
        held.process.kill()

    def process_ended(self, handle: PoolProcessHandle, death: str) -> None:
        """Settle the jobs of a process that ended; restart it unless it was retiring."""
        self.retiring.discard(handle)
        lived = self.loop.now() - handle.started_at
        at_start = not handle.served and lived < AT_START and not handle.recycling
        handle.deaths_at_start = handle.deaths_at_start + 1 if at_start else 0
        delay = self._restart_delay(handle, lived)
        if not (handle.recycling or handle.retiring or self.halted or self.cannot_start):
            self.loop.say(self._death_line(handle.deaths_at_start, death, delay))
        for job in sorted(handle.jobs):
            self._end(job, *self._fate(self.held[job], handle, death))
        if handle.retiring or self.halted:
            return
        self.restarts += 1
        handle.restart = self.loop.call_at(self.loop.now() + delay, handle.spawn)

    def _restart_delay(self, handle: PoolProcessHandle, lived: float) -> float:
        if self.cannot_start:
            return START_RETRY
        if handle.deaths_at_start:
            return backoff(handle.deaths_at_start)
        return QUICK_DEATH if lived < QUICK_DEATH and not handle.recycling else 0.0

    def _death_line(self, deaths_at_start: int, death: str, delay: float) -> str:
        """One line per death; a pool that keeps dying at start says so, and when it
        is tried again (each line comes later than the one before: see backoff)."""
        if deaths_at_start > 1:
            return (
                f"pool {self.name} keeps dying at start ({death}; {deaths_at_start} times"
                f" in a row): restarting it in {delay:g}s"
            )
        if deaths_at_start == 1:
            return f"pool {self.name} died at start ({death}); restarting it in {delay:g}s"
        return f"pool {self.name} died ({death}); restarting it"

    def _fate(self, held: Held, handle: PoolProcessHandle, death: str) -> tuple[Ending, str]:
        """What became of a job its process held when the process ended."""
        if not held.may_have_run:
            return Ending.RECALLED, "its pool ended before it ran"
        if self.halted:
            return Ending.INTERRUPTED, self.halt_reason
        if handle.recycling and held.overdue:
            return Ending.STOPPED, f"did not stop within {self.stop_grace:g}s; pool recycled"
        if handle.recycling:
            return Ending.INTERRUPTED, "its pool was recycled"
        return Ending.LOST, f"pool died ({death})"


def backoff(deaths_at_start: int) -> float:
    """Seconds before the restart of a process that died at start so many times in a row."""
    doublings = min(deaths_at_start - 1, 32)  # a day of deaths must not overflow a float
    return min(FIRST_BACKOFF * 2**doublings, MAX_BACKOFF)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
