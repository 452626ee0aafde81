"""A Dask bridge: the process that hands one import context's calls to a Dask scheduler.

A Dask client runs its event loop in a thread, and the supervisor keeps threads out of
itself: so the Dask backend (executor.py) forks a bridge per import context, as the
local backend forks a pool process per context, and speaks to it over the same
channel (channel.py; a "run" carries the job's timeout last). The bridge imports a
job's target in its context as a pool process would, retiring once one of those files
has changed, then submits the call by value (see remote.py): cloudpickle, with the
context's own modules registered by value (not those of a virtualenv in the job's
folder: workers have their own). Dask's modules come with this module's, before the
job's import path is set: the daemon's PYTHONPATH, which a job's path replaces, may be
what provides them.

A job is reported started once it is handed to Dask, and ended when its future is:
finished (the call's outcome, and its output written to the job's logs), cancelled
without a stop of ours (the scheduler restarted, or the connection to it dropped:
interrupted, and resubmitted uncharged) or erred (the workers that ran it died: lost,
and resubmitted as the job's policy says).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import marshal
import os
import pickle
import socket
import sys
import threading
import time
import traceback
import types
from pathlib import Path
from typing import Any

import cloudpickle
from distributed import Client

from gsup.config import Paths
from gsup.executors.dask import remote
from gsup.executors.local.channel import FrameReader, receive
from gsup.executors.local.descriptors import wal_indexes
from gsup.executors.local.forked import leave_supervisor
from gsup.executors.local.pool import Reporter
from gsup.executors.local.runner import Outcome, PoolJob, clip, describe, load_target
from gsup.imports import LoadedFiles, in_environment, use_import_path
from gsup.lifecycle import RECURRING, Ending
from gsup.settings import DaskSettings, PoolSettings


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, but code keeps its file name (cloudpickle writes <dynamic-code>), so
    that a traceback from a worker names the job's files and, where it can read them,
    shows their lines. marshal's format is the interpreter's: a worker must run the
    daemon's Python version, as it must for cloudpickle's code objects anyway."""

    dispatch_table = collections.ChainMap(
        {types.CodeType: lambda code: (marshal.loads, (marshal.dumps(code),))},
        cloudpickle.Pickler.dispatch_table,
    )


def dumps(value: Any) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return out.getvalue()


WATCH = 0.5  # seconds between two looks at the client's connection
FORGOTTEN = "Dask forgot it: the scheduler restarted, or the connection to it dropped"
Prepared = tuple[PoolJob, bytes, dict[str, Any]]  # a job, its call's bytes, remote.run's meta


class Bridge:
    def __init__(self, dask: DaskSettings, pool: PoolSettings, sock: socket.socket,
                 paths: Paths, context: list[str]) -> None:  # fmt: skip
        self.dask, self.pool, self.paths = dask, pool, paths
        entries, self.notes = use_import_path(context)
        self.loaded = LoadedFiles(entries)
        self.registered = 0  # of loaded.modules, registered to be pickled by value
        self.reporter = Reporter(sock, self.exit)
        self.sock = sock
        self.prefix = f"gsup-{paths.tag}-"
        # A call's output comes back in its result: no more of it than of a result
        self.max_output = min(pool.max_log, pool.max_result)
        self.client: Any = None
        # Guarded by `lock`: what Dask holds (job -> future), the runs-once jobs that wait
        # for their go-ahead, and futures that are done and not yet settled.
        self.lock = threading.Lock()
        self.futures: dict[int, Any] = {}
        self.jobs_of: dict[str, int] = {}  # a future's key -> its job
        self.unconfirmed: dict[int, Prepared] = {}
        self.done: list[Any] = []
        self.done_ready = threading.Condition(self.lock)
        self.retiring: str | None = None
        self.connected = True  # as the settling thread last saw the client
        self._unreachable = f"lost the Dask scheduler at {dask.address}; reconnecting"

    # --- the main thread: the supervisor's messages -----------------------------------

    def serve(self) -> None:
        self.client = self._connect()
        self.reporter.report("ready", os.getpid())
        threading.Thread(target=self._settle_forever, name="settle", daemon=True).start()
        reader = FrameReader()
        while data := receive(self.sock):
            batch: list[Prepared] = []
            replies: list[tuple[Any, ...]] = []
            for message in reader.feed(data):
                self._handle(message, batch, replies)
            self.reporter.report_all(replies)
            self._submit(batch)
            if self._retired():
                self.exit()
        self.exit()

    def _connect(self) -> Any:
        """A client of the scheduler, or a report of why not and an exit. Client() can
        hang on a server that is not a scheduler's (a dashboard's port): a timer ends it."""
        address, most = self.dask.address, 2 * self.dask.connect + 5
        unanswered = f"cannot reach the Dask scheduler at {address}: no answer in {most:g}s"
        watchdog = threading.Timer(most, self._cannot_connect, (unanswered,))
        watchdog.start()
        try:
            return Client(address, timeout=self.dask.connect, set_as_default=False)
        except Exception as exc:  # unreachable, a bad address, a refused handshake
            self._cannot_connect(f"cannot reach the Dask scheduler at {address}: {describe(exc)}")
        finally:
            watchdog.cancel()

    def _cannot_connect(self, why: str) -> None:
        self.reporter.report("unstartable", why)
        self.exit()

    def _handle(self, message: tuple[Any, ...], batch: list[Prepared],
                replies: list[tuple[Any, ...]]) -> None:  # fmt: skip
        kind = message[0]
        if kind == "run":
            _, job_id, attempt, _, target, spec, _, runs_once, timeout = message
            job = PoolJob(job_id, attempt, "call", target, json.loads(spec), runs_once)
            self._take(job, timeout, batch, replies)
        elif kind == "go":
            with self.lock:
                prepared = self.unconfirmed.pop(message[1], None)
            if prepared is not None:
                batch.append(prepared)
        elif kind == "stop":
            replies.extend(self._stop(message[1], batch))
        # "recall": every job it was sent is handed to Dask (started) at once: it runs

    def _take(self, job: PoolJob, timeout: float | None, batch: list[Prepared],
              replies: list[tuple[Any, ...]]) -> None:  # fmt: skip
        if self.client.status != "running":  # reconnecting: the job waits in the journal
            self.reporter.report("unstartable", self._unreachable)
            replies.append(("end", job.id, Ending.RECALLED.value, self._unreachable, {}, {}))
            return
        changed = self.loaded.changed()
        if self.retiring is None and changed is not None:
            self._retire(f"given back: {changed} changed since it was imported", replies)
        if self.retiring is not None:
            replies.append(("end", job.id, Ending.RECALLED.value, self.retiring, {}, {}))
            return
        replies.append(("start", job.id, self._key(job), time.time()))
        prepared = self._prepare(job, timeout)
        if isinstance(prepared, Outcome):
            replies.append(("end", job.id, prepared.ending.value, prepared.why, prepared.fields,
                            prepared.usage))  # fmt: skip
        elif job.runs_once:
            with self.lock:
                self.unconfirmed[job.id] = prepared
        else:
            batch.append(prepared)

    def _prepare(self, job: PoolJob, timeout: float | None) -> Prepared | Outcome:
        """Import the target here, and make the bytes that carry it to a worker."""
        loaded = load_target(job, self._imported)
        if isinstance(loaded, Outcome):
            return loaded
        try:
            payload = dumps(loaded)
        except Exception as exc:  # a lock, an open file among the arguments...
            why = f"cannot send the call to Dask: {describe(exc)}"
            return Outcome(Ending.FAILED, why, {"error": why, "causes": [RECURRING]})
        if self.notes:  # warnings about its import path, as a pool would print them
            self._write_log(job.id, job.attempt, "err", "".join(f"{note}\n" for note in self.notes))
        meta = {"job": job.id, "attempt": job.attempt, "key": self._key(job),
                "tag": self.paths.tag, "target": job.target, "unit": job.spec.get("unit"),
                "timeout": timeout, "runs_once": job.runs_once,
                "max_result": self.pool.max_result, "max_log": self.max_output}  # fmt: skip
        return job, payload, meta

    def _imported(self) -> None:
        """The context's own modules travel with each call, never by name: a worker
        would import another folder's module of that name, or none."""
        self.loaded.note()
        modules = self.loaded.modules
        while self.registered < len(modules):
            module = sys.modules.get(modules[self.registered])
            if module is not None and not in_environment(getattr(module, "__file__", "")):
                cloudpickle.register_pickle_by_value(module)
            self.registered += 1

    def _key(self, job: PoolJob) -> str:
        return f"{self.prefix}{job.id}-{job.attempt}"

    def _submit(self, batch: list[Prepared]) -> None:
        """One map for all the calls of a turn: one message to the scheduler."""
        if not batch:
            return
        keys = [self._key(job) for job, _, _ in batch]
        payloads = [payload for _, payload, _ in batch]
        metas = [meta for _, _, meta in batch]
        try:
            futures = self.client.map(remote.run, payloads, metas, key=keys, pure=False)
        except Exception as exc:  # the client closed: it could not reconnect in time
            why = f"the Dask client could not submit it: {clip(describe(exc), 300)}"
            ends = [("end", job.id, Ending.INTERRUPTED.value, why, {}, {}) for job, _, _ in batch]
            self.reporter.report_all(ends)
            self._scheduler_lost(exc)
        with self.lock:
            for (job, _, _), key, future in zip(batch, keys, futures, strict=True):
                self.futures[job.id] = future
                self.jobs_of[key] = job.id
        for future in futures:
            future.add_done_callback(self._done)

    def _stop(self, job_id: int, batch: list[Prepared]) -> list[tuple[Any, ...]]:
        """A stopped job's future is cancelled: it ends at once. Dask cannot interrupt a
        running task: its worker ends it at its timeout (see remote.py), or lets it end."""
        unsent = [prepared for prepared in batch if prepared[0].id == job_id]
        for prepared in unsent:  # it came in the same read as its stop
            batch.remove(prepared)
        with self.lock:
            if unsent or self.unconfirmed.pop(job_id, None) is not None:
                return [("end", job_id, Ending.RECALLED.value, "stopped before it ran", {}, {})]
            future = self.futures.pop(job_id, None)
            if future is None:
                return []  # ended already
            self.jobs_of.pop(future.key, None)
        future.release()  # not cancel(), which waits for the scheduler: Dask drops it
        return [("end", job_id, Ending.STOPPED.value, "stopped", {}, {})]

    def _retire(self, why: str, replies: list[tuple[Any, ...]]) -> None:
        """A file of its context changed: it gives back the jobs not handed to Dask, and
        exits once Dask has none of its jobs left (see _settle)."""
        self.retiring = why
        replies.append(("stale", why))
        with self.lock:
            given_back, self.unconfirmed = list(self.unconfirmed), {}
        replies.extend(("end", job, Ending.RECALLED.value, why, {}, {}) for job in given_back)

    def _scheduler_lost(self, exc: Exception | None) -> None:
        """The client gave up reconnecting: the bridge goes (Dask has forgotten its jobs:
        they ended interrupted, to run again once a new bridge reaches the scheduler)."""
        why = f"lost the Dask scheduler at {self.dask.address}"
        if exc is not None:  # a closed client, or worse: said short (pickles can be long)
            why = f"the Dask client of {self.dask.address} failed: {clip(describe(exc), 300)}"
        self.reporter.report("unstartable", why)
        self.exit()

    def exit(self) -> None:
        os._exit(0)  # the scheduler forgets this client's futures: Dask stops what it can

    # --- the settling thread: futures that are done ---------------------------------------

    def _done(self, future: Any) -> None:
        """From Dask's callback thread: quick, the settling thread does the work."""
        with self.done_ready:
            self.done.append(future)
            self.done_ready.notify()

    def _settle_forever(self) -> None:
        """Settle what is done; on a bug here, exit (its jobs are lost and resubmitted)
        rather than leave them unsettled."""
        try:
            self._settle_until_retired()
        except BaseException:
            traceback.print_exc()
        self.exit()

    def _settle_until_retired(self) -> None:
        while not self._retired():
            with self.done_ready:
                self.done_ready.wait_for(lambda: self.done, timeout=WATCH)
                done, self.done = self.done, []
            self.reporter.report_all(self._settle(done))
            self._watch_connection()

    def _retired(self) -> bool:
        with self.lock:
            return self.retiring is not None and not self.futures and not self.unconfirmed

    def _watch_connection(self) -> None:
        """While the client reconnects, the pool takes no job (they wait in the journal);
        once it is back, it does again; a client that gave up ends the bridge."""
        status = self.client.status
        if status in ("closing", "closed"):
            self._scheduler_lost(None)
        connected = status == "running"
        if connected != self.connected:
            self.connected = connected
            if connected:
                self.reporter.report("ready", os.getpid())
            else:
                self.reporter.report("unstartable", self._unreachable)

    def _settle(self, done: list[Any]) -> list[tuple[Any, ...]]:
        with self.lock:
            ours = [(self.jobs_of.pop(f.key), f) for f in done if f.key in self.jobs_of]
            for job, _ in ours:
                del self.futures[job]
        finished = [future for _, future in ours if future.status == "finished"]
        results = dict(zip([f.key for f in finished], self._gather(finished), strict=True))
        ends = []
        for job, future in ours:
            if future.key in results:
                ends.append(self._finished(job, future.key, results[future.key]))
            else:
                ends.append(("end", job, *self._failed(future)))
        return ends

    def _gather(self, futures: list[Any]) -> list[Any]:
        """Their results in one round trip; one by one if that fails (a result lost
        meanwhile: that one is None)."""
        try:
            return self.client.gather(futures)
        except Exception:
            return [self._result(future) for future in futures]

    def _result(self, future: Any) -> Any:
        try:
            return future.result()
        except Exception:
            return None

    def _finished(self, job: int, key: str, result: Any) -> tuple[Any, ...]:
        if not isinstance(result, dict):
            return ("end", job, Ending.INTERRUPTED.value, FORGOTTEN, {}, {})
        attempt = int(key.rsplit("-", 1)[1])
        for stream, text in result["output"].items():
            if text:
                self._write_log(job, attempt, stream, text)
        return ("end", job, result["ending"], result["why"], result["fields"], result["usage"])

    def _failed(self, future: Any) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
        """A future that did not finish: cancelled by no stop of ours (no fault of the
        job's: it runs again, uncharged), or erred."""
        if future.status != "error":
            return Ending.INTERRUPTED.value, FORGOTTEN, {}, {}
        try:
            exc = future.exception()
        except Exception as raised:
            exc = raised
        why = f"Dask: {describe(exc)}"
        if type(exc).__name__ == "KilledWorker":  # the workers that ran it died
            return Ending.LOST.value, why, {}, {}
        return Ending.FAILED.value, why, {"error": why}, {}

    def _write_log(self, job: int, attempt: int, stream: str, text: str) -> None:
        file = self.paths.job_output(job, stream, attempt)
        with contextlib.suppress(OSError), open(file, "a") as log:  # a full disk loses
            log.write(text)  # output, never the job


def bridge_main(dask: DaskSettings, pool: PoolSettings, sock: socket.socket, home: str,
                context: list[str]) -> None:  # fmt: skip
    """Entry point of a forked bridge, for the calls whose import path is `context`."""
    sock = leave_supervisor(sock, b"gsup-dask", keep=wal_indexes())
    paths = Paths(Path(home))
    paths.logs.mkdir(parents=True, exist_ok=True)
    Bridge(dask, pool, sock, paths, context).serve()
