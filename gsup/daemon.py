"""The supervisor: one single-threaded loop that owns the journal and the pools.

Each turn of the loop reads like a checklist:
  1. wait on the socket, the clients, the pools and the signal pipe (no polling);
  2. handle what arrived: requests, pool reports, pool deaths, signals;
  3. fire timers: job timeouts, stops that did not land, the shutdown deadline;
  4. dispatch queued jobs to pools with free slots;
  5. commit everything the turn wrote in one transaction (group commit);
  6. only then act on it: send jobs to pools, replies to clients.
It never imports user code; it forks its pools before it could have any thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import selectors
import signal
import socket
import sqlite3
import stat
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import multiprocess

from gsup import recovery
from gsup.access import Access, peer_credentials
from gsup.channel import FrameReader, frame
from gsup.config import ConfigError, PoolSettings, Settings
from gsup.journal import JournalStalled, QueuedJob, Writer, open_database
from gsup.lifecycle import END_STATES, RETRYABLE, Policy, State, lost_reason, should_retry
from gsup.pool import pool_main
from gsup.protocol import MUTATING, JobSpec, LineReader, ProtocolError, check_request, encode
from gsup.systemd import Notifier

STALL_RETRY = 1.0  # seconds between attempts to write a turn that failed to commit
ACCEPT_PAUSE = 1.0  # seconds without new connections when file descriptors run out


class DaemonError(Exception):
    """The daemon cannot start; the message says why."""


class RequestError(Exception):
    """A request that is well-formed but cannot be done; sent back to the client."""


def say(message: str) -> None:
    """A line for the operator (the terminal, or journald under systemd). Whoever reads
    it may be gone: a daemon must not fall over a closed stdout."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} gsup: {message}", flush=True)


def report_bug() -> None:
    """The traceback of the exception being handled, on stderr if it is still there."""
    with contextlib.suppress(OSError, ValueError):
        traceback.print_exc()


# --- the parts the loop watches ------------------------------------------------------


@dataclass
class Flight:
    """A job handed to a pool, until the pool reports its end."""

    job: int
    timeout: float | None
    policy: Policy  # its attempts count this run
    worker: int | None = None
    started: float | None = None
    stop: str | None = None  # why the supervisor stopped it: "timeout" or "cancelled"
    recall: str | None = None  # asked back before it started, to "requeue" or "cancel"
    stop_deadline: float | None = None  # recycle the pool if it has not ended by then

    def policy_after(self, lost: int) -> Policy:
        return replace(self.policy, lost_count=self.policy.lost_count + lost)


@dataclass
class PoolHandle:
    settings: PoolSettings
    frozen: bool = False
    process: Any = None
    sock: socket.socket | None = None
    pidfd: int | None = None
    reader: FrameReader = field(default_factory=FrameReader)
    outbox: list[tuple[Any, ...]] = field(default_factory=list)
    unsent: bytearray = field(default_factory=bytearray)
    flights: dict[int, Flight] = field(default_factory=dict)
    maybe_queued: bool = True  # cleared when a dispatch finds no job ready
    wake_at: float | None = None  # when its earliest delayed retry falls due
    recycling: bool = False  # the supervisor killed it on purpose
    started_at: float = 0.0
    restart_at: float | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def alive(self) -> bool:
        return self.sock is not None

    @property
    def free_slots(self) -> int:
        return self.settings.threads + self.settings.queue_size - len(self.flights)


@dataclass
class Connection:
    sock: socket.socket
    reader: LineReader
    uid: int
    pid: int
    unsent: bytearray = field(default_factory=bytearray)
    # Refused (bad peer, broken message): after the error reply, its input is read
    # and dropped until it hangs up, so the reply is not lost to a reset.
    refused: bool = False


@dataclass
class Waiter:
    conn: Connection
    request_id: Any
    pending: set[int]
    states: dict[int, str]
    then_get: int | None = None  # a `get` that waited: answer with this job's summary


# --- the supervisor -------------------------------------------------------------------


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.access = Access.for_group(settings.group)
        self.selector = selectors.DefaultSelector()
        self.pools = {p.name: PoolHandle(p) for p in settings.pools}
        self.connections: dict[int, Connection] = {}
        self.waiters: list[Waiter] = []
        self.replies: list[tuple[Connection, dict[str, Any]]] = []
        self.signals = 0
        self.stopping = False
        self.stop_deadline = 0.0
        self.done = False
        self.exit_code = 0
        self.accept_resume_at: float | None = None  # new connections paused until then
        self.systemd = Notifier()
        self.next_watchdog = 0.0
        self.lock_fd = -1
        self.listener: socket.socket | None = None
        self.wakeup_r = self.wakeup_w = -1
        self.journal: Writer
        self._current_request_id: Any = None  # for handlers that answer later (wait)
        self.handlers: dict[str, Callable[[Connection, dict[str, Any]], dict | None]] = {
            "ping": self.handle_ping,
            "add": self.handle_add,
            "get": self.handle_get,
            "cancel": self.handle_cancel,
            "retry": self.handle_retry,
            "purge": self.handle_purge,
            "freeze": self.handle_freeze,
            "wait": self.handle_wait,
        }

    # --- start and stop -------------------------------------------------------------

    def run(self) -> int:
        self._prepare_home()
        self._take_lock()
        self.journal = Writer(open_database(self.paths.journal))
        for path in self.paths.journal_files:
            self.access.protect(path, self.access.file_mode)
        report = recovery.plan()
        recovery.apply(self.journal, report, time.time())
        for pool in self.pools.values():
            pool.frozen = self.journal.register_pool(
                pool.name, pool.settings.threads, pool.settings.queue_size
            )
        self.journal.commit()
        for line in report.lines():
            say(line)
        self._listen()
        self._catch_signals()
        for pool in self.pools.values():
            self._start_pool(pool)
        sizes = ", ".join(f"{p.name} {p.settings.threads} threads" for p in self.pools.values())
        say(f"ready: home {self.paths.home}, pools {sizes}, pid {os.getpid()}")
        self.systemd.ready(f"ready: pools {sizes}")
        try:
            while not self.done:
                self._turn()
        except BaseException:  # a bug: end like a crash, but leave no pool behind
            for pool in self.pools.values():
                self._kill_pool(pool)
            self.exit_code = 1
            report_bug()
            say("crashed; the next start recovers from the journal")
        self._close()
        say("stopped")
        return self.exit_code

    def _prepare_home(self) -> None:
        home = self.paths.home
        if home.exists() and _shared(home):
            raise DaemonError(
                f"state dir {home} is not private (owned by another user or writable by"
                " others); use a folder of its own"
            )
        try:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.access.protect(home, self.access.dir_mode)
            self.paths.logs.mkdir(mode=0o700, exist_ok=True)
            self.access.protect(self.paths.logs, self.access.dir_mode)
        except OSError as exc:
            raise DaemonError(f"cannot use state dir {home}: {exc.strerror or exc}") from None
        if len(os.fsencode(self.paths.socket)) > 100:
            raise DaemonError(f"state dir path too long for a unix socket: {home}")

    def _take_lock(self) -> None:
        self.lock_fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(self.lock_fd, 32, 0).decode().strip() or "?"
            raise DaemonError(
                f"a daemon is already running for {self.paths.home} (pid {pid})"
            ) from None
        os.ftruncate(self.lock_fd, 0)
        os.pwrite(self.lock_fd, f"{os.getpid()}\n".encode(), 0)

    def _listen(self) -> None:
        _raise_open_files_limit()
        path = self.paths.socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a daemon that died; we hold the lock
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(path))
        finally:
            os.umask(old_umask)
        self.access.protect(path, self.access.socket_mode)
        listener.listen(128)
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, self._accept)

    def _catch_signals(self) -> None:
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wakeup_w, warn_on_full_buffer=False)
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.selector.register(self.wakeup_r, selectors.EVENT_READ, self._drain_wakeups)

    def _on_signal(self, number: int, frame: Any) -> None:
        self.signals += 1

    def _drain_wakeups(self, mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wakeup_r, 512):
                pass

    def _begin_stop(self, now: float) -> None:
        """First signal: take no new work, give running jobs the grace period.
        A second signal ends the grace period at once."""
        if self.stopping:
            self.stop_deadline = now
            return
        self.stopping = True
        self.stop_deadline = now + self.settings.grace
        running = sum(len(p.flights) for p in self.pools.values())
        say(f"stopping: {running} jobs in flight get {self.settings.grace:g}s")
        self.systemd.stopping(f"stopping: {running} jobs in flight")
        for pool in self.pools.values():
            self._recall_unstarted(pool, "requeue")

    def _finish_stop(self, now: float) -> None:
        for pool in self.pools.values():
            for flight in list(pool.flights.values()):
                self._requeue(pool, flight, "daemon stopped before it ended", now)
            self._kill_pool(pool)
        for waiter in self.waiters:
            self._reply(waiter.conn, waiter.request_id, {"ok": False, "error": "daemon stopped"})
        self.waiters.clear()
        if self._commit():
            self._flush()
        self.done = True

    def _close(self) -> None:
        for pool in self.pools.values():
            if pool.process is not None:
                pool.process.join(5)
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
        self.journal.close()
        os.close(self.lock_fd)

    # --- the loop ---------------------------------------------------------------------

    def _turn(self) -> None:
        for key, mask in self.selector.select(self._seconds_to_next_timer()):
            key.data(mask)
        now = time.time()
        if self.signals:
            self.signals = 0
            self._begin_stop(now)
        self._fire_timers(now)
        if self.done:
            return
        self._dispatch(now)
        if self._commit():
            self._flush()

    def _commit(self) -> bool:
        """Commit the turn; if the journal cannot be written, act on none of it
        (no reply, no hand-over) until it has been: see `_stall`."""
        try:
            self.journal.commit()
        except JournalStalled as exc:
            self._stall(exc)
        return not self.done

    def _stall(self, exc: JournalStalled) -> None:
        """Retry the failed turn every second, doing nothing else meanwhile. A signal
        ends the daemon: what the turn decided was never acted on, and the journal's
        last committed state is what the next start recovers."""
        say(f"cannot write the journal ({exc}); retrying every {STALL_RETRY:g}s")
        self.systemd.status(f"stalled: cannot write the journal ({exc})")
        signals_only = selectors.DefaultSelector()
        signals_only.register(self.wakeup_r, selectors.EVENT_READ)
        while True:
            signals_only.select(STALL_RETRY)
            self._drain_wakeups(0)
            if self.signals:
                say("stopping with the journal not writable; the last turn is dropped")
                for pool in self.pools.values():
                    self._kill_pool(pool)
                self.done, self.exit_code = True, 1
                return
            if self.systemd.watchdog_interval is not None:
                self.systemd.watchdog()
            try:
                self.journal.replay()
            except JournalStalled:
                continue
            say("the journal is writable again")
            self.systemd.status("running")
            return

    def _seconds_to_next_timer(self) -> float | None:
        deadlines = [self.stop_deadline] if self.stopping else []
        if self.systemd.watchdog_interval is not None:
            deadlines.append(self.next_watchdog)
        if self.accept_resume_at is not None:
            deadlines.append(self.accept_resume_at)
        for pool in self.pools.values():
            deadlines.extend(t for t in (pool.restart_at, pool.wake_at) if t is not None)
            for flight in pool.flights.values():
                deadlines.extend(d for d in self._deadlines(flight) if d is not None)
        if not deadlines:
            return None
        # Capped: select() cannot wait for weeks, and waking once an hour costs nothing.
        return min(max(0.0, min(deadlines) - time.time()), 3600.0)

    @staticmethod
    def _deadlines(flight: Flight) -> tuple[float | None, float | None]:
        timeout_at = None
        if flight.timeout is not None and flight.started is not None and flight.stop is None:
            timeout_at = flight.started + flight.timeout
        return timeout_at, flight.stop_deadline

    def _fire_timers(self, now: float) -> None:
        if self.accept_resume_at is not None and now >= self.accept_resume_at:
            self.accept_resume_at = None
            self.selector.register(self.listener, selectors.EVENT_READ, self._accept)
        if self.systemd.watchdog_interval is not None and now >= self.next_watchdog:
            self.systemd.watchdog()  # sent from the loop: a hung loop stops the pings
            self.next_watchdog = now + self.systemd.watchdog_interval
        for pool in self.pools.values():
            if pool.restart_at is not None and now >= pool.restart_at and not self.stopping:
                self._start_pool(pool)
            if pool.wake_at is not None and now >= pool.wake_at:
                pool.wake_at, pool.maybe_queued = None, True
            for flight in list(pool.flights.values()):
                timeout_at, recycle_at = self._deadlines(flight)
                if timeout_at is not None and now >= timeout_at:
                    self._stop_flight(pool, flight, "timeout", now)
                elif recycle_at is not None and now >= recycle_at and not pool.recycling:
                    say(
                        f"job {flight.job} did not stop within {self.settings.stop_grace:g}s: "
                        f"recycling pool {pool.name}"
                    )
                    self._kill_pool(pool)
        if self.stopping and (
            now >= self.stop_deadline or not any(p.flights for p in self.pools.values())
        ):
            self._finish_stop(now)

    def _dispatch(self, now: float) -> None:
        """Hand queued jobs to pools with free slots, in priority then FIFO order.

        A suspect, a job that was in flight when its pool died, runs alone: if it
        kills the pool again, no innocent neighbour is charged, and a job only becomes
        poison by pool deaths it alone can have caused.
        """
        if self.stopping:
            return
        for pool in self.pools.values():
            if pool.frozen or not pool.alive or not pool.maybe_queued or pool.free_slots <= 0:
                continue
            if any(flight.policy.lost_count for flight in pool.flights.values()):
                continue  # a suspect runs alone
            wanted = pool.free_slots
            jobs = self.journal.next_queued(pool.name, wanted, now)
            if len(jobs) < wanted:
                pool.maybe_queued = False
                pool.wake_at = self.journal.next_retry_time(pool.name, now)
            for job in jobs:
                suspect = job.policy.lost_count > 0
                if suspect and pool.flights:
                    pool.maybe_queued = True  # it waits until the pool is empty
                    break
                self._hand_over(pool, job, now)
                if suspect:
                    pool.maybe_queued = True  # the rest wait until it has ended
                    break

    def _hand_over(self, pool: PoolHandle, job: QueuedJob, now: float) -> None:
        self.journal.transition(job.id, State.QUEUED, State.RUNNING, "dispatched", now, charge=1)
        policy = replace(job.policy, attempts=job.policy.attempts + 1)
        pool.flights[job.id] = Flight(job.id, job.timeout, policy)
        pool.outbox.append(("run", job.id, job.kind, job.target, job.spec))

    def _flush(self) -> None:
        for conn, message in self.replies:
            conn.unsent += encode(message)
        self.replies.clear()
        for conn in list(self.connections.values()):
            if conn.unsent:
                self._send_to_client(conn)
        for pool in self.pools.values():
            if pool.outbox and pool.alive:
                pool.unsent += frame(pool.outbox)
            pool.outbox.clear()
            if pool.unsent:
                self._send_to_pool(pool)

    # --- clients ------------------------------------------------------------------------

    def _accept(self, mask: int) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: take no one for a moment
                say(f"cannot take a connection ({exc.strerror}); pausing for {ACCEPT_PAUSE:g}s")
                self.selector.unregister(self.listener)
                self.accept_resume_at = time.time() + ACCEPT_PAUSE
                return
            pid, uid, gid = peer_credentials(sock)
            sock.setblocking(False)
            conn = Connection(sock, LineReader(self.settings.max_message), uid, pid)
            self.connections[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, lambda m, c=conn: self._client(c, m))
            if not self.access.allows(uid, gid):
                self._refuse(conn, "permission denied")

    def _client(self, conn: Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._send_to_client(conn)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = conn.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._drop_client(conn)
            return
        if conn.refused:
            return
        try:
            messages = conn.reader.feed(data)
        except ProtocolError as exc:
            self._refuse(conn, str(exc))
            return
        for message in messages:
            self._request(conn, message)

    def _refuse(self, conn: Connection, error: str) -> None:
        self._reply(conn, None, {"ok": False, "error": error})
        conn.refused = True

    def _request(self, conn: Connection, message: dict[str, Any]) -> None:
        request_id = self._current_request_id = message.get("id")
        try:
            verb, fields = check_request(message)
            reply = self._handle(conn, verb, fields)
        except (ProtocolError, RequestError) as exc:
            reply = {"ok": False, "error": str(exc)}
        if reply is not None:
            self._reply(conn, request_id, {"ok": True, **reply} if "ok" not in reply else reply)

    def _handle(self, conn: Connection, verb: str, fields: dict[str, Any]) -> dict | None:
        """Run a verb's handler; one that changes something runs in a savepoint, so
        that a failure half-way leaves the journal as it was."""
        if verb in MUTATING:
            if self.stopping:
                raise RequestError("the daemon is stopping; try again once it has restarted")
            if self.journal.failure is not None:
                raise RequestError(f"cannot write the journal ({self.journal.failure})")
            self.journal.savepoint()
        try:
            reply = self.handlers[verb](conn, fields)
        except Exception as exc:
            if verb in MUTATING:
                self.journal.rollback_to_savepoint()
            if isinstance(exc, RequestError):
                raise
            if isinstance(exc, sqlite3.Error):
                raise RequestError(f"cannot write the journal ({exc}); nothing changed") from exc
            if isinstance(exc, UnicodeEncodeError):
                raise RequestError("a text of the request is not valid UTF-8") from exc
            report_bug()  # a bug must not take the daemon down
            raise RequestError(f"internal error: {type(exc).__name__}: {exc}") from exc
        if verb in MUTATING:
            self.journal.release_savepoint()
        return reply

    def _reply(self, conn: Connection, request_id: Any, message: dict[str, Any]) -> None:
        self.replies.append((conn, {"id": request_id, **message}))

    def _send_to_client(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._drop_client(conn)
            return
        del conn.unsent[:sent]
        if not conn.unsent and conn.refused:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
        self._watch_writable(conn.sock, bool(conn.unsent))

    def _watch_writable(self, sock: socket.socket, writable: bool) -> None:
        """Wake for writability only while output is pending."""
        key = self.selector.get_key(sock)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writable else 0)
        if key.events != events:
            self.selector.modify(sock, events, key.data)

    def _drop_client(self, conn: Connection) -> None:
        if self.connections.pop(conn.sock.fileno(), None) is None:
            return
        self.selector.unregister(conn.sock)
        conn.sock.close()
        self.waiters = [w for w in self.waiters if w.conn is not conn]

    # --- request handlers: one per verb ------------------------------------------------

    def handle_ping(self, conn: Connection, fields: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid(), "stopping": self.stopping}

    def handle_add(self, conn: Connection, fields: dict[str, Any]) -> dict[str, Any]:
        self._check_room(fields["jobs"])
        specs = fields["jobs"]
        self.journal.log_command("add", {"jobs": len(specs)}, conn.uid, conn.pid)
        ids = self.journal.insert_jobs(specs, time.time())
        for spec in specs:
            self.pools[spec.pool].maybe_queued = True
        return {"ids": ids}

    def _check_room(self, specs: list[JobSpec]) -> None:
        """Refuse new jobs when they would leave the disk nearly full: the room left is
        kept for the journal's records of the jobs already accepted."""
        stats = os.statvfs(self.paths.home)
        free_mb = stats.f_bavail * stats.f_frsize / 1e6
        if free_mb - _journal_mb(specs) < self.settings.min_free_mb:
            raise RequestError(
                f"the disk of {self.paths.home} is nearly full ({free_mb:.1f} MB free); the last"
                f" {self.settings.min_free_mb:g} MB are kept for the jobs already accepted"
            )

    def handle_get(self, conn: Connection, fields: dict[str, Any]) -> dict[str, Any] | None:
        job = fields["job"]
        row = self._job_row(job)
        if fields["wait"] and row["state"] not in END_STATES:
            self.waiters.append(Waiter(conn, self._current_request_id, {job}, {}, then_get=job))
            return None
        return {"job": _summary(row)}

    def handle_cancel(self, conn: Connection, fields: dict[str, Any]) -> dict[str, Any]:
        job = fields["job"]
        row = self._job_row(job)
        self.journal.log_command("cancel", {"job": job}, conn.uid, conn.pid)
        now = time.time()
        if row["state"] == State.QUEUED:
            self._end_queued(job, "cancelled by request", now)
            return {"state": State.CANCELLED.value}
        pool = self.pools[row["pool"]]
        if row["state"] == State.RUNNING and job in pool.flights:
            self._stop_flight(pool, pool.flights[job], "cancelled", now)
            return {"state": State.RUNNING.value, "stopping": True}
        raise RequestError(f"job {job} has already ended ({row['state']})")

    def handle_retry(self, conn: Connection, fields: dict[str, Any]) -> dict[str, Any]:
        job = fields["job"]
        row = self._job_row(job)
        if row["state"] not in RETRYABLE:
            raise RequestError(
                f"job {job} is {row['state']}; only an ended job that did not "
                "succeed can be retried"
            )
        self.journal.log_command("retry", {"job": job}, conn.uid, conn.pid)
        self.journal.transition(job, row["state"], State.QUEUED, "retried by request", time.time())
        self.pools[row["pool"]].maybe_queued = True
        return {"state": State.QUEUED.value}

    def handle_purge(self, conn: Connection, fields: dict[str, Any]) -> dict[str, Any]:
        pool_name = fields["pool"]
        self.journal.log_command("purge", {"pool": pool_name}, conn.uid, conn.pid)
        now = time.time()
        ids = self.journal.queued_ids(pool_name)
        for job in ids:
            self._end_queued(job, "purged", now)
        handed_over = 0
        for pool in self._selected_pools(pool_name):
            handed_over += self._recall_unstarted(pool, "cancel")
        return {"cancelled": len(ids), "recalled": handed_over}

    def handle_freeze(self, conn: Connection, fields: dict[str, Any]) -> dict[str, Any]:
        frozen = fields["frozen"]
        verb = "freeze" if frozen else "unfreeze"
        self.journal.log_command(verb, {"pool": fields["pool"]}, conn.uid, conn.pid)
        for pool in self._selected_pools(fields["pool"]):
            self.journal.set_frozen(pool.name, frozen)
            pool.frozen = frozen
            pool.maybe_queued = True
            if frozen:
                self._recall_unstarted(pool, "requeue")
        return {"pools": {p.name: p.frozen for p in self.pools.values()}}

    def handle_wait(self, conn: Connection, fields: dict[str, Any]) -> dict[str, Any] | None:
        jobs = fields["jobs"]
        states = self.journal.states_of(jobs)
        missing = [job for job in jobs if job not in states]
        if missing:
            raise RequestError(f"no job {missing[0]}")
        pending = {job for job, state in states.items() if state not in END_STATES}
        if not pending:
            return {"states": states}
        self.waiters.append(Waiter(conn, self._current_request_id, pending, states))
        return None

    def _job_row(self, job: int) -> dict[str, Any]:
        row = self.journal.job_row(job)
        if row is None:
            raise RequestError(f"no job {job}")
        return row

    def _selected_pools(self, name: str | None) -> list[PoolHandle]:
        return list(self.pools.values()) if name is None else [self.pools[name]]

    # --- job endings ---------------------------------------------------------------------

    def _end_queued(self, job: int, why: str, now: float) -> None:
        self.journal.transition(job, State.QUEUED, State.CANCELLED, why, now)
        self._ended(job, State.CANCELLED)

    def _stop_flight(self, pool: PoolHandle, flight: Flight, why: str, now: float) -> None:
        """Ask the pool to stop a job; recycle the pool if it has not ended in time."""
        if flight.stop is not None:
            return
        flight.stop = why
        flight.stop_deadline = now + self.settings.stop_grace
        pool.outbox.append(("stop", flight.job))

    def _recall_unstarted(self, pool: PoolHandle, then: str) -> int:
        """Ask back the jobs a pool holds but has not started; each comes back
        "recalled" (to requeue or cancel), or runs if a worker took it meanwhile."""
        recalled = 0
        for flight in pool.flights.values():
            if flight.started is None and flight.recall is None and flight.stop is None:
                flight.recall = then
                pool.outbox.append(("recall", flight.job))
                recalled += 1
        return recalled

    def _end_run(
        self,
        pool: PoolHandle,
        flight: Flight,
        state: State,
        why: str,
        now: float,
        outcome: dict[str, Any] | None = None,
    ) -> None:
        """A run ended: journal it, then requeue it or report it final, by its policy."""
        pool.flights.pop(flight.job, None)
        lost = int(state == State.LOST)
        policy = flight.policy_after(lost)
        retry = should_retry(state, policy, tuple((outcome or {}).get("causes", ())))
        if state == State.LOST and not retry:
            why = lost_reason(policy, why)
        self.journal.transition(
            flight.job, State.RUNNING, state, why, now, lost=lost, outcome=outcome
        )
        if retry:
            delay = policy.delay() if state != State.LOST else 0.0
            self.journal.transition(
                flight.job, state, State.QUEUED, f"retry after {state}"
                + (f" in {delay:g}s" if delay else ""), now,
                not_before=now + delay if delay else None,
            )  # fmt: skip
            pool.maybe_queued = True
        else:
            self._ended(flight.job, state)

    def _requeue(
        self, pool: PoolHandle, flight: Flight, why: str, now: float, never_ran: bool = False
    ) -> None:
        """Back to the queue without charging an attempt: it was not the job's fault.
        A job that must not run twice (on_lost=fail) and may have started ends lost."""
        if flight.policy.on_lost == "fail" and not never_ran:
            self._end_run(pool, flight, State.LOST, why, now)
            return
        pool.flights.pop(flight.job, None)
        self.journal.transition(flight.job, State.RUNNING, State.QUEUED, why, now, charge=-1)
        pool.maybe_queued = True

    def _ended(self, job: int, state: State) -> None:
        """A job reached its final state: answer whoever waits for it."""
        for waiter in list(self.waiters):
            if job in waiter.pending:
                waiter.pending.discard(job)
                waiter.states[job] = state.value
                if not waiter.pending:
                    self.waiters.remove(waiter)
                    self._reply(waiter.conn, waiter.request_id, self._waited(waiter))

    def _waited(self, waiter: Waiter) -> dict[str, Any]:
        if waiter.then_get is None:
            return {"ok": True, "states": waiter.states}
        return {"ok": True, "job": _summary(self._job_row(waiter.then_get))}

    # --- pools ----------------------------------------------------------------------------

    def _start_pool(self, pool: PoolHandle) -> None:
        ours, theirs = socket.socketpair()
        inherited = [self.lock_fd, self.wakeup_r, self.wakeup_w, ours.fileno()]
        inherited += [p.sock.fileno() for p in self.pools.values() if p.sock is not None]
        inherited += list(self.connections)
        if self.listener is not None:
            inherited.append(self.listener.fileno())
        settings = pool.settings
        process = multiprocess.get_context("fork").Process(
            target=pool_main,
            args=(
                settings.name,
                settings.threads,
                settings.queue_size,
                theirs,
                str(self.paths.home),
                inherited,
            ),
            name=f"gsup-pool-{settings.name}",
        )
        process.start()
        with contextlib.suppress(OSError):
            os.setpgid(process.pid, process.pid)  # set on both sides: no window without it
        theirs.close()
        ours.setblocking(False)
        pool.process, pool.sock, pool.reader = process, ours, FrameReader()
        pool.pidfd = os.pidfd_open(process.pid)
        pool.started_at, pool.restart_at, pool.recycling = time.time(), None, False
        pool.maybe_queued = True
        self.selector.register(ours, selectors.EVENT_READ, lambda m, p=pool: self._pool_io(p, m))
        self.selector.register(
            pool.pidfd, selectors.EVENT_READ, lambda m, p=pool: self._pool_exit(p)
        )

    def _send_to_pool(self, pool: PoolHandle) -> None:
        assert pool.sock is not None
        try:
            sent = pool.sock.send(pool.unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # it is dying: its pidfd will tell
        del pool.unsent[:sent]
        self._watch_writable(pool.sock, bool(pool.unsent))

    def _pool_io(self, pool: PoolHandle, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._send_to_pool(pool)
        if not mask & selectors.EVENT_READ or pool.sock is None:
            return
        try:
            data = pool.sock.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._pool_exit(pool)
            return
        now = time.time()
        for message in pool.reader.feed(data):
            try:
                self._pool_message(pool, message, now)
            except Exception:  # a bug must not take the daemon down
                report_bug()

    def _pool_message(self, pool: PoolHandle, message: tuple[Any, ...], now: float) -> None:
        kind = message[0]
        if kind == "start":
            _, job, worker, started = message
            flight = pool.flights.get(job)
            if flight is not None:
                flight.worker, flight.started = worker, started
                self.journal.mark_started(job, f"Worker_{worker}", started)
        elif kind == "end":
            _, job, result, why, outcome = message
            flight = pool.flights.get(job)
            if flight is not None:
                self._pool_ended_job(pool, flight, result, why, outcome, now)

    def _pool_ended_job(
        self,
        pool: PoolHandle,
        flight: Flight,
        result: str,
        why: str,
        outcome: dict[str, Any],
        now: float,
    ) -> None:
        """Map what the pool reports onto the life-cycle, by what the supervisor had asked."""
        why = _valid_text(why)  # a job's own texts may hold what UTF-8 cannot
        outcome = {key: _valid_text(value) for key, value in outcome.items()}
        unstarted = result == "recalled"  # the pool gave it back before a thread took it
        if result == "done":
            self._end_run(pool, flight, State.DONE, why, now, outcome)
        elif flight.stop == "cancelled" and (result == "stopped" or unstarted):
            self._end_run(pool, flight, State.CANCELLED, "cancelled by request", now, outcome)
        elif flight.stop == "timeout" and result == "stopped":
            self._end_run(pool, flight, State.TIMEOUT, f"timed out after {flight.timeout:g}s", now)
        elif unstarted and flight.recall == "cancel":
            self._end_run(pool, flight, State.CANCELLED, "purged before it started", now)
        elif unstarted:
            self._requeue(pool, flight, "given back before it started", now, never_ran=True)
        else:
            self._end_run(pool, flight, State.FAILED, why, now, outcome)

    def _kill_pool(self, pool: PoolHandle) -> None:
        """SIGKILL a pool and its commands; `_pool_exit` does the rest."""
        if pool.process is None or pool.recycling:
            return
        pool.recycling = True  # its commands' guardians kill them as it dies
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pool.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pool.process.pid, signal.SIGKILL)

    def _pool_exit(self, pool: PoolHandle) -> None:
        """A pool process ended: settle its jobs, then start a new one."""
        if pool.sock is None:
            return
        self.selector.unregister(pool.sock)
        self.selector.unregister(pool.pidfd)
        os.close(pool.pidfd)
        pool.sock.close()
        pool.sock = pool.pidfd = None
        pool.unsent.clear()
        pool.process.join(1)
        code = pool.process.exitcode
        now = time.time()
        if not pool.recycling:
            say(f"pool {pool.name} died ({_describe_exit(code)}); restarting it")
        for flight in list(pool.flights.values()):
            self._settle_after_pool_exit(pool, flight, code, now)
        if not self.stopping:
            # A pool that dies at once must not be restarted in a tight loop.
            quick = now - pool.started_at < 1.0 and not pool.recycling
            pool.restart_at = now + (1.0 if quick else 0.0)

    def _settle_after_pool_exit(
        self, pool: PoolHandle, flight: Flight, code: int | None, now: float
    ) -> None:
        overdue = flight.stop_deadline is not None and now >= flight.stop_deadline
        if pool.recycling and flight.stop == "timeout" and overdue:
            why = f"timed out after {flight.timeout:g}s; did not stop, pool recycled"
            self._end_run(pool, flight, State.TIMEOUT, why, now)
        elif pool.recycling and flight.stop == "cancelled" and overdue:
            self._end_run(pool, flight, State.CANCELLED, "cancelled; pool recycled", now)
        elif pool.recycling:
            self._requeue(pool, flight, "its pool was recycled", now)
        else:
            self._end_run(pool, flight, State.LOST, f"pool died ({_describe_exit(code)})", now)


def _raise_open_files_limit() -> None:
    """Each client holds a connection: allow as many as the hard limit lets us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _journal_mb(specs: list[JobSpec]) -> float:
    """A generous guess of what adding `specs` takes on disk: rows, indexes, WAL."""
    payload = sum(len(s.arguments or "") + len(s.pickled or "") + len(s.display) for s in specs)
    commands = sum(1 for s in specs if s.env)  # a command's environment is ~2-4 KB
    return (len(specs) * 2_000 + commands * 8_000 + payload * 3) / 1e6


def _valid_text(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    return value


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "pool", "state", "reason", "result", "result_type", "error")
    return {key: row[key] for key in keys}


def _shared(folder: Path) -> bool:
    """Whether a folder belongs to others: not ours, or writable by group or others."""
    stats = folder.stat()
    return stats.st_uid != os.getuid() or bool(stats.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def serve(settings: Settings) -> int:
    try:
        return Supervisor(settings).run()
    except (DaemonError, ConfigError) as exc:
        print(f"gsup: error: {exc}", file=sys.stderr)
        return 1
