"""A pool process: a fixed number of worker threads fed by a bounded queue.

The supervisor forks it once and reuses it; it talks to the supervisor over one
socket (see channel.py). The main thread reads that socket; a sender thread batches
reports; each worker thread runs one job at a time. A stopped job gets an
asynchronous JobStopped in its thread (a command gets its process group killed);
a thread blocked in C never sees that, which is why the supervisor recycles the
whole process when a stop does not land in time.
The pool dies with the supervisor: PR_SET_PDEATHSIG, and end-of-file on its socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gsup.channel import FrameReader, frame
from gsup.config import Paths
from gsup.output import OutputRouter
from gsup.runner import (
    JobStopped,
    Outcome,
    PoolJob,
    describe,
    run_call,
    run_command,
    stop_command,
)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: end-of-file on the socket still ends the pool


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
        self.kind = "call"
        self.stopping = False
        self.process: subprocess.Popen | None = None


class PoolProcess:
    def __init__(self, name: str, threads: int, queue_size: int, sock: socket.socket, paths: Paths):
        self.name = name
        self.sock = sock
        self.paths = paths
        self.workers = [Worker(i) for i in range(threads)]
        self.router = OutputRouter(paths.job_output)
        # One lock orders "a worker takes a job up" against "the supervisor stops or
        # recalls it"; it guards `waiting` and each worker's job.
        self.lock = threading.Lock()
        self.job_ready = threading.Condition(self.lock)
        # The bounded queue: jobs handed over and not yet taken up, oldest first. The
        # supervisor never hands over more than threads + queue_size at a time.
        self.waiting: OrderedDict[int, PoolJob] = OrderedDict()
        self._outbox: list[tuple[Any, ...]] = []
        self._outbox_ready = threading.Condition()

    # --- reporting -------------------------------------------------------------------

    def report(self, *message: Any) -> None:
        with self._outbox_ready:
            self._outbox.append(message)
            self._outbox_ready.notify()

    def _sender(self) -> None:
        while True:
            with self._outbox_ready:
                while not self._outbox:
                    self._outbox_ready.wait()
                batch, self._outbox = self._outbox, []
            try:
                self.sock.sendall(frame(batch))
            except OSError:
                self.exit()

    # --- the main thread ------------------------------------------------------------

    def serve(self) -> None:
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.router.install()
        for worker in self.workers:
            threading.Thread(
                target=self._work, args=(worker,), name=f"Worker_{worker.index}", daemon=True
            ).start()
        threading.Thread(target=self._sender, name="sender", daemon=True).start()
        self.report("ready", os.getpid())
        reader = FrameReader()
        while data := self._receive():
            for message in reader.feed(data):
                self._handle(message)
        self.exit()

    def _receive(self) -> bytes:
        try:
            return self.sock.recv(1 << 16)
        except OSError:
            return b""

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "run":
            _, job_id, job_kind, target, spec = message
            with self.job_ready:
                self.waiting[job_id] = PoolJob(job_id, job_kind, target, json.loads(spec))
                self.job_ready.notify()
        elif kind == "stop":
            self.stop(message[1])
        elif kind == "recall":
            self.recall(message[1])

    def stop(self, job_id: int) -> None:
        """Stop a job, running or waiting; one that has ended already is left alone."""
        with self.lock:
            for worker in self.workers:
                if worker.job == job_id:
                    worker.stopping = True
                    if worker.process is not None:
                        stop_command(worker.process)
                    elif worker.kind == "call" and worker.thread_id is not None:
                        _raise_in_thread(worker.thread_id, JobStopped)
                    return
            self._give_back(job_id)

    def recall(self, job_id: int) -> None:
        """Give a job back if no worker has taken it up (then it just runs)."""
        with self.lock:
            self._give_back(job_id)

    def _give_back(self, job_id: int) -> None:
        if self.waiting.pop(job_id, None) is not None:
            self.report("end", job_id, "recalled", "given back before it started", {})

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
        while True:
            self._run(worker, self._take(worker))

    def _take(self, worker: Worker) -> PoolJob:
        """The oldest waiting job, now this worker's (one atomic step for `stop`)."""
        with self.job_ready:
            while not self.waiting:
                self.job_ready.wait()
            _, job = self.waiting.popitem(last=False)
            worker.job, worker.kind, worker.stopping = job.id, job.kind, False
            return job

    def _run(self, worker: Worker, job: PoolJob) -> None:
        outcome: Outcome | None = None
        start_reported = job.kind == "cmd"  # a command's start is reported once spawned
        while True:  # a stop may land anywhere until the job is detached under the lock
            try:
                if not start_reported:
                    start_reported = True
                    self.report("start", job.id, worker.index, time.time())
                if outcome is None:
                    outcome = self._execute(worker, job)
                with self.lock:
                    if worker.stopping and job.kind == "cmd":
                        outcome = Outcome("stopped", "stopped", outcome.fields)
                    worker.job = None
                    worker.process = None
                    _raise_in_thread(worker.thread_id, None)  # drop a stop that came too late
                break
            except JobStopped:
                outcome = outcome or Outcome("stopped", "stopped")
        self.report("end", job.id, outcome.state, outcome.why, outcome.fields)

    def _execute(self, worker: Worker, job: PoolJob) -> Outcome:
        try:
            if job.kind == "cmd":
                return run_command(job, self.paths, lambda p: self._spawned(worker, job, p))
            return run_call(job, self.router)
        except JobStopped:
            return Outcome("stopped", "stopped")
        except Exception as exc:  # what the daemon let through must not kill the thread
            why = f"gsup could not run it: {describe(exc)}"
            return Outcome("failed", why, {"error": why})

    def _spawned(self, worker: Worker, job: PoolJob, process: subprocess.Popen) -> None:
        with self.lock:
            worker.process = process
            if worker.stopping:  # stopped while it was being spawned
                stop_command(process)
        self.report("start", job.id, worker.index, time.time())


def pool_main(
    name: str, threads: int, queue_size: int, sock: socket.socket, home: str, close: list[int]
) -> None:
    """Entry point of the forked pool process."""
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # its own group: a Ctrl-C at the terminal is for the supervisor
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)  # the supervisor's, inherited
    for fd in close:  # the supervisor's listener, lock and other pools' sockets
        with contextlib.suppress(OSError):
            os.close(fd)
    if os.getppid() == 1:
        os._exit(0)  # the supervisor died before PDEATHSIG was set
    PoolProcess(name, threads, queue_size, sock, Paths(Path(home))).serve()
