"""A pool process: a fixed number of worker threads fed by a bounded priority queue.

It serves the jobs of one import context (their spec's `path`: see gsup.imports) and
command jobs. The supervisor forks it and reuses it while the files its jobs imported
stay as they were: once one has changed, it gives back every job it has not started,
lets the running ones end and exits, and a fresh process takes its jobs. It talks to
the supervisor over one socket (see channel.py). The main thread reads that socket;
each worker thread runs one job at a time and sends its own reports, so that a job's
start is in the socket before any of its code runs (a job that kills the pool at once
is still known to have started). A stopped job gets an asynchronous JobStopped in its
thread (a command gets its process group killed); a thread blocked in C never sees
that, which is why the supervisor recycles the whole process when a stop does not
land in time.
The pool dies with the supervisor: PR_SET_PDEATHSIG, and end-of-file on its socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from gsup.config import Paths
from gsup.executors.local.channel import FrameReader, frames, receive
from gsup.executors.local.descriptors import Stdio, wal_indexes
from gsup.executors.local.forked import leave_supervisor
from gsup.executors.local.output import OutputRouter
from gsup.executors.local.runner import (
    JobStopped,
    Outcome,
    PoolJob,
    describe,
    run_call,
    run_call_in_process,
    run_command,
    stop_command,
)
from gsup.imports import LoadedFiles, use_import_path
from gsup.lifecycle import Ending
from gsup.settings import PoolSettings


def _raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule `exc` in another thread (None clears a pending one)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc else None
    )


class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.thread_id: int | None = None
        # Guarded by PoolProcess.lock:
        self.job: int | None = None
        self.stopping = False
        self.live = False  # the job's code may be running: a stop is raised in the thread
        self.confirmed: bool | None = None  # a runs-once job: "go" (True) or "stop" (False)
        self.process: subprocess.Popen | None = None


class Reporter:
    """Sends reports from any thread; reports queued while another thread sends go
    out with the next send, in one frame. `report` returns once its message is sent."""

    def __init__(self, sock: socket.socket, on_broken: Any) -> None:
        self.sock = sock
        self.on_broken = on_broken
        self._queue_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._queued: list[tuple[Any, ...]] = []
        self._tickets = 0  # reports queued so far
        self._sent = 0  # reports sent so far

    def report(self, *message: Any) -> None:
        self.report_all([message])

    def report_all(self, messages: list[tuple[Any, ...]]) -> None:
        with self._queue_lock:
            self._queued.extend(messages)
            self._tickets += len(messages)
            ticket = self._tickets
        with self._send_lock:
            if self._sent >= ticket:
                return  # another thread sent it with its own
            with self._queue_lock:
                batch, self._queued = self._queued, []
                upto = self._tickets
            try:
                self.sock.sendall(frames(batch))
            except OSError:
                self.on_broken()
            self._sent = upto


class PoolProcess:
    def __init__(self, settings: PoolSettings, sock: socket.socket, paths: Paths,
                 context: list[str], stdio: Stdio) -> None:  # fmt: skip
        self.settings = settings
        self.stdio = stdio
        user_entries, self.notes = use_import_path(context)
        self.loaded = LoadedFiles(user_entries)
        self.retiring: str | None = None  # why it takes no more jobs, once a file changed
        self.sock = sock
        self.paths = paths
        self.workers = [Worker(i) for i in range(settings.threads)]
        self.router = OutputRouter(paths.job_output, settings.max_log, settings.min_free)
        self.reporter = Reporter(sock, self.exit)
        # One lock orders "a worker takes a job up" against "the supervisor stops or
        # recalls it"; it guards `waiting`, `order` and each worker's fields.
        self.lock = threading.Lock()
        self.job_ready = threading.Condition(self.lock)
        self.confirmed = threading.Condition(self.lock)
        # The bounded queue: jobs handed over and not yet taken up, and their order
        # (priority, then job id); entries of jobs given back are skipped when popped.
        self.waiting: dict[int, PoolJob] = {}
        self.order: list[tuple[int, int]] = []

    def report(self, *message: Any) -> None:
        self.reporter.report(*message)

    # --- the main thread ------------------------------------------------------------

    def serve(self) -> None:
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._in_forked_child)
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.router.install()
        self._start_workers()
        self.report("ready", os.getpid())
        reader = FrameReader()
        while data := receive(self.sock):
            for message in reader.feed(data):
                self._handle(message)
        self.exit()

    def _start_workers(self) -> None:
        """Every thread, or a report of why not and an exit: a pool short of its threads
        is the daemon's trouble (its settings, the machine's limits), never a job's."""
        for worker in self.workers:
            thread = threading.Thread(
                target=self._work, args=(worker,), name=f"Worker_{worker.index}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # a limit on processes or memory
                why = f"{len(self.workers)} threads, but thread {worker.index + 1} failed: {exc}"
                self.report("unstartable", why)
                self.exit()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "run":
            _, job_id, attempt, job_kind, target, spec, priority, runs_once = message
            job = PoolJob(job_id, attempt, job_kind, target, json.loads(spec), runs_once)
            with self.job_ready:
                retiring = self.retiring
                if retiring is None:
                    self.waiting[job_id] = job
                    heapq.heappush(self.order, (priority, job_id))
                    self.job_ready.notify()
            if retiring is not None:
                self.report("end", job_id, Ending.RECALLED.value, retiring, {}, {})
        elif kind == "go":
            self._confirm(message[1])
        elif kind == "stop":
            self.stop(message[1])
        elif kind == "recall":
            self.recall(message[1])

    def stop(self, job_id: int) -> None:
        """Stop a job, running or waiting; one that has ended already is left alone."""
        with self.lock:
            given_back = self.waiting.pop(job_id, None) is not None
            for worker in self.workers:
                if worker.job == job_id:
                    worker.stopping = True
                    if worker.process is not None:
                        stop_command(worker.process)
                    elif worker.live and worker.thread_id is not None:
                        _raise_in_thread(worker.thread_id, JobStopped)
                    elif worker.confirmed is None:
                        worker.confirmed = False
                        self.confirmed.notify_all()
        if given_back:
            self._report_given_back(job_id)

    def recall(self, job_id: int) -> None:
        """Give a job back if no worker has taken it up (then it just runs)."""
        with self.lock:
            given_back = self.waiting.pop(job_id, None) is not None
        if given_back:
            self._report_given_back(job_id)

    def _report_given_back(self, job_id: int) -> None:
        """Outside the lock: a report may block, and the workers need the lock."""
        self.report("end", job_id, Ending.RECALLED.value, "given back before it started", {}, {})

    def _confirm(self, job_id: int) -> None:
        """A runs-once job's start is on the disk: it may run."""
        with self.lock:
            for worker in self.workers:
                if worker.job == job_id and worker.confirmed is None:
                    worker.confirmed = True
                    self.confirmed.notify_all()

    def _in_forked_child(self) -> None:
        """A job forked (multiprocessing, os.fork): the child must not speak for the pool,
        nor keep its socket open, which would hide the pool's death from the supervisor."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def exit(self) -> None:
        """Leave no command running unsupervised, then go."""
        with self.lock:
            for worker in self.workers:
                if worker.process is not None:
                    stop_command(worker.process)
        os._exit(0)

    # --- worker threads ---------------------------------------------------------------

    def _work(self, worker: Worker) -> None:
        worker.thread_id = threading.get_ident()
        while (job := self._take(worker)) is not None:
            changed = self.loaded.changed() if job.kind == "call" else None
            if changed is not None:
                self._retire(worker, job, f"given back: {changed} changed since it was imported")
                continue
            # In the socket before any of the job's code runs (see the module's doc).
            started = time.time()
            self.report("start", job.id, f"Worker_{worker.index}", started)
            outcome = self._run(worker, job)
            self.stdio.restore()  # a job that closed 0, 1 or 2 does not break the next
            # What it imported as it ran, before its end is told: a client may edit a
            # file as soon as it sees the end, and that edit must count as a change.
            self.loaded.note(since=started)
            self.report("end", job.id, outcome.ending.value, outcome.why, outcome.fields,
                        outcome.usage)  # fmt: skip
            if self.retiring is not None:
                self._exit_when_idle()

    def _retire(self, worker: Worker, job: PoolJob, why: str) -> None:
        """A file a job imported has changed: the code in this process is not what is on
        disk. It gives back `job` and every job not started, and ends once idle."""
        with self.lock:
            self.retiring = self.retiring or why
            given_back = [job.id, *self.waiting]
            self.waiting.clear()
            self.order.clear()
            self.job_ready.notify_all()
        self.report("stale", self.retiring)  # first: the supervisor sends no more
        for job_id in given_back:
            self.report("end", job_id, Ending.RECALLED.value, self.retiring, {}, {})
        with self.lock:
            worker.job = None
        self._exit_when_idle()

    def _exit_when_idle(self) -> None:
        """The last worker to end its job ends the retiring process."""
        with self.lock:
            if all(worker.job is None for worker in self.workers):
                os._exit(0)

    def _take(self, worker: Worker) -> PoolJob | None:
        """The best waiting job, now this worker's (one atomic step for `stop`); None
        once the process retires."""
        with self.job_ready:
            while True:
                while not self.order and self.retiring is None:
                    self.job_ready.wait()
                if self.retiring is not None:
                    return None
                _, job_id = heapq.heappop(self.order)
                job = self.waiting.pop(job_id, None)
                if job is not None:
                    break
            worker.job, worker.stopping = job.id, False
            worker.confirmed = None if job.runs_once else True
            return job

    def _run(self, worker: Worker, job: PoolJob) -> Outcome:
        """Run the job; a stop may land anywhere until it is detached under the lock."""
        outcome: Outcome | None = None
        while True:
            try:
                if outcome is None:
                    outcome = self._execute(worker, job)
                    if os.getpid() != self.pid:  # a process the job forked came back here
                        os._exit(0 if outcome.ending == Ending.DONE else 1)
                with self.lock:
                    stopped = worker.stopping and self._in_process(job)
                    if stopped and outcome.ending != Ending.RECALLED:
                        outcome = Outcome(Ending.STOPPED, "stopped", outcome.fields, outcome.usage)
                    worker.job, worker.process, worker.live = None, None, False
                    _raise_in_thread(worker.thread_id, None)  # drop a stop that came too late
                return outcome
            except JobStopped:
                outcome = outcome or Outcome(Ending.STOPPED, "stopped")

    def _execute(self, worker: Worker, job: PoolJob) -> Outcome:
        with self.lock:
            while worker.confirmed is None:  # a runs-once job waits for the journal
                self.confirmed.wait()
            if not worker.confirmed or worker.stopping:
                return Outcome(Ending.RECALLED, "stopped before it ran")
            worker.live = not self._in_process(job)  # a stop raises in its thread
        try:
            if job.kind == "cmd":
                return run_command(
                    job, self.paths, self.settings, lambda p: self._spawned(worker, p)
                )
            if self.settings.isolated:
                return run_call_in_process(
                    job, self.paths, self.settings, lambda p: self._spawned(worker, p)
                )
            return run_call(
                job, self.router, self.notes, self.loaded.note, self.settings.max_result
            )
        except JobStopped:
            return Outcome(Ending.STOPPED, "stopped")
        except Exception as exc:  # what the daemon let through must not kill the thread
            why = f"gsup could not run it: {describe(exc)}"
            return Outcome(Ending.FAILED, why, {"error": why})

    def _in_process(self, job: PoolJob) -> bool:
        """Whether the job runs in a process of its own (a command, or any job of the
        process backend's pool), which a stop kills, rather than in its thread."""
        return job.kind == "cmd" or self.settings.isolated

    def _spawned(self, worker: Worker, process: subprocess.Popen) -> None:
        with self.lock:
            worker.process = process
            if worker.stopping:  # stopped while it was being spawned
                stop_command(process)


def pool_main(settings: PoolSettings, sock: socket.socket, home: str,
              context: list[str]) -> None:  # fmt: skip
    """Entry point of the forked pool process, serving jobs whose import path is `context`."""
    sock = leave_supervisor(sock, b"gsup-pool", keep=wal_indexes())
    stdio = Stdio()
    PoolProcess(settings, sock, Paths(Path(home)), context, stdio).serve()
