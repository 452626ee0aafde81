"""The socket client used by the CLI and the Python API. It imports no peewee."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import sys
import threading

# The C module under `socket`: all a client needs, without the ~2 ms that socket.py's
# enum wrappers add to every `gsup` command that talks to the daemon.
from _socket import AF_UNIX, SOCK_STREAM
from _socket import socket as Socket
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from typing import Any

from gsup.config import MAX_MESSAGE, Paths, resolve_home
from gsup.errors import DaemonNotRunning, GsupError, PartlyAdded, WaitTimeout
from gsup.peers import untrusted_daemon
from gsup.protocol import (
    MAX_SECONDS,
    JobSpec,
    LineReader,
    ProtocolError,
    batch_digest,
    encode,
    shared_fields,
)

ADD_BATCH = 10_000  # jobs per add request


def _parts(jobs: Iterable[JobSpec]) -> Iterator[tuple[list[JobSpec], dict[str, Any]]]:
    """The add requests of a batch: its jobs, and the request's fields."""
    for batch in _batches(jobs):
        yield from _split(batch, [job.to_wire() for job in batch])


def _split(specs: list[JobSpec], wires: list[dict[str, Any]]
           ) -> list[tuple[list[JobSpec], dict[str, Any]]]:  # fmt: skip
    """One request, or several if the jobs are more than a message may hold."""
    shared = shared_fields(wires)
    fields = {
        "defaults": shared,
        "jobs": [{k: v for k, v in wire.items() if k not in shared} for wire in wires],
    }
    if len(wires) > 1 and len(encode(fields)) > MAX_MESSAGE:
        half = len(wires) // 2
        return _split(specs[:half], wires[:half]) + _split(specs[half:], wires[half:])
    return [(specs, fields)]


def _batches(items: Iterable[Any], size: int = ADD_BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


__all__ = ["Client", "DaemonNotRunning", "GsupError", "WaitTimeout"]


class Pending:
    """A request on its way; its reply is read when someone asks for it."""

    def __init__(self, client: Client, request_id: int) -> None:
        self.client = client
        self.request_id = request_id
        self.message: dict[str, Any] | None = None

    def reply(self, timeout: float | None = None) -> dict[str, Any]:
        """The reply; GsupError if the daemon refused, WaitTimeout after `timeout` s."""
        message = self.client._await(self, timeout)
        if not message.get("ok"):
            raise GsupError(message.get("error", "the daemon refused the request"))
        return message


def _socket_timeout(timeout: float | None) -> float | None:
    """A wait of more than a year is a wait without end: a socket's timeout has a
    limit (the system's time_t), and an overflow must not be the caller's error."""
    return None if timeout is None or timeout > MAX_SECONDS else timeout


def daemon_is_up(paths: Paths) -> bool:
    """Whether a daemon listens on the state dir's socket (it need not answer)."""
    probe = Socket(AF_UNIX, SOCK_STREAM)
    try:
        probe.connect(str(paths.socket))
    except OSError:
        return False
    finally:
        probe.close()
    return True


class Client:
    """One connection to the daemon; requests are answered in order."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.paths = Paths(resolve_home(home))
        self._sock: Socket | None = None
        self._reader = LineReader()
        self._ids = itertools.count(1)
        self._lock = threading.RLock()  # guards the connection and `_pending`
        self._pending: dict[int, Pending] = {}  # sent, reply not read yet
        self._waiters = threading.local()
        self._pid = os.getpid()
        self._exit_check = False

    def _after_fork(self) -> None:
        """A forked child must not share its parent's stream, lock or pending replies."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._sock, self._reader, self._lock = None, LineReader(), threading.RLock()
            for pending in self._pending.values():
                pending.message = {"ok": False, "error": "sent by the parent process"}
            self._pending = {}
            self._waiters = threading.local()

    def _connect(self) -> Socket:
        if self._sock is None:
            sock = Socket(AF_UNIX, SOCK_STREAM)
            try:
                sock.connect(str(self.paths.socket))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                raise DaemonNotRunning(self.paths.home, resolve_home()) from None
            except OSError as exc:
                sock.close()
                raise GsupError(f"cannot reach the daemon at {self.paths.socket}: {exc}") from None
            distrust = untrusted_daemon(sock, self.paths.socket)
            if distrust is not None:
                sock.close()
                raise GsupError(distrust)
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._salvage()
            self._sock.close()
            self._sock = None
        for pending in self._pending.values():  # their replies can no longer come
            pending.message = {
                "ok": False,
                "error": "lost the connection to the daemon",
                "lost": True,
            }  # it may or may not have been done
        self._pending.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, verb: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return its reply; raise GsupError if it failed."""
        return self.send(verb, **fields).reply(timeout)

    def send(self, verb: str, **fields: Any) -> Pending:
        """Send a request without waiting: many requests in a row share the daemon's
        commits. Its reply is read when `Pending.reply` asks for it."""
        self._after_fork()
        with self._lock:
            sock = self._connect()
            pending = Pending(self, next(self._ids))
            try:
                sock.sendall(encode({"verb": verb, "id": pending.request_id, **fields}))
            except OSError as exc:
                refusal = self._refusal()
                self.close()
                raise GsupError(refusal or f"lost the connection to the daemon: {exc}") from None
            self._pending[pending.request_id] = pending
            if not self._exit_check:
                self._exit_check = True
                atexit.register(self._report_unread)
            return pending

    def _refusal(self) -> str | None:
        """Why the daemon refused the connection, if it said so before closing it
        (too many clients: it may do so before the request arrives). The replies that
        came before it are delivered."""
        probe = self._pending[0] = Pending(self, 0)  # request ids start at 1
        self._salvage()
        self._pending.pop(0, None)
        return None if probe.message is None else probe.message.get("error")

    def _await(self, pending: Pending, timeout: float | None) -> dict[str, Any]:
        """Read replies, in order, until `pending`'s has come."""
        self._after_fork()
        with self._lock:
            while pending.message is None:
                self._read_replies(None if timeout is None else max(timeout, 1e-3))
        return pending.message

    def _read_replies(self, timeout: float | None) -> None:
        if self._sock is None:
            raise GsupError("lost the connection to the daemon")
        self._sock.settimeout(_socket_timeout(timeout))
        try:
            data = self._sock.recv(1 << 16)
        except TimeoutError:
            self.close()  # a late reply would be read as the answer to another request
            raise WaitTimeout(f"no answer from the daemon within {timeout:g}s") from None
        except OSError as exc:
            self.close()
            raise GsupError(f"lost the connection to the daemon: {exc}") from None
        if not data:
            self.close()
            raise GsupError("the daemon closed the connection")
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        """Hand each reply in `data` to the request it answers."""
        try:
            replies = self._reader.feed(data)
        except ProtocolError as exc:
            sock, self._sock = self._sock, None  # unreadable: nothing left to salvage
            if sock is not None:
                sock.close()
            self.close()
            raise GsupError(f"unreadable reply from the daemon: {exc}") from None
        for reply in replies:
            if reply.get("id") is None:  # a refusal of the whole connection
                for waiting in self._pending.values():
                    waiting.message = reply
                self._pending.clear()
            elif (waiting := self._pending.pop(reply["id"], None)) is not None:
                waiting.message = reply

    def _report_unread(self) -> None:
        """At exit: read the replies nobody asked for, so that a job the daemon refused
        (while stopping, say) is not dropped in silence by a fire-and-forget add."""
        if self._pid != os.getpid():
            return
        refused = []
        for pending in list(self._pending.values()):
            try:
                pending.reply(timeout=5.0)
            except (GsupError, TimeoutError) as exc:
                refused.append(str(exc))
        if refused:
            print(f"gsup: {len(refused)} request(s) not done: {refused[0]}", file=sys.stderr)

    def _salvage(self) -> None:
        """Read the replies already here before the connection goes: a job the daemon
        journaled must not be reported as lost."""
        assert self._sock is not None
        self._sock.setblocking(False)
        with contextlib.suppress(OSError, GsupError):
            while self._pending and (data := self._sock.recv(1 << 16)):
                self._deliver(data)

    def stream(self, verb: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """A request answered by a message now and more later (`follow`): each message,
        as it comes, on a connection of its own, until the daemon closes it or refuses
        the request (GsupError, with its reason)."""
        with Client(self.paths.home) as own:
            sock = own._connect()
            try:
                sock.sendall(encode({"verb": verb, "id": 1, **fields}))
            except OSError as exc:
                raise GsupError(f"lost the connection to the daemon: {exc}") from None
            reader = LineReader()
            while True:
                try:
                    data = sock.recv(1 << 16)
                    messages = reader.feed(data)
                except OSError as exc:
                    raise GsupError(f"lost the connection to the daemon: {exc}") from None
                except ProtocolError as exc:
                    raise GsupError(f"unreadable reply from the daemon: {exc}") from None
                if not data:
                    raise GsupError("the daemon closed the connection")
                for message in messages:
                    if not message.get("ok"):
                        raise GsupError(message.get("error", "the daemon refused the request"))
                    yield message

    # --- one method per verb ---------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def stop(self, now: bool = False) -> dict[str, Any]:
        return self.request("stop", now=now)

    def wait_gone(self, timeout: float | None) -> bool:
        """After `stop`: whether the daemon ended (its end of the connection closed)
        within `timeout` seconds."""
        assert self._sock is not None
        self._sock.settimeout(_socket_timeout(timeout))
        try:
            while self._sock.recv(1 << 16):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def add(self, jobs: list[JobSpec]) -> list[int]:
        return self.request("add", jobs=[job.to_wire() for job in jobs])["ids"]

    def add_many(self, jobs: Iterable[JobSpec], key: str | None = None) -> list[int]:
        """Add jobs in requests of ADD_BATCH, each sent while the daemon commits the
        one before; the ids in order. PartlyAdded if some were not: which were.

        A batch of more than one request gets a key (`key`, or one made here): the
        same jobs sent again with it are not added twice, whichever parts had been."""
        parts = _parts(jobs)
        ahead = list(itertools.islice(parts, 2))
        if key is None and len(ahead) > 1:
            key = os.urandom(8).hex()
        sent: list[tuple[Pending, int]] = []  # each request, and how many jobs it holds
        counted, failure = 0, None
        try:
            for number, (specs, fields) in enumerate(itertools.chain(ahead, parts)):
                counted += len(specs)
                if failure is not None:
                    continue  # the connection is gone: nothing more is sent, only counted
                if key is not None:
                    fields["batch"] = {"key": key, "part": number, "digest": batch_digest(specs)}
                try:
                    sent.append((self.send("add", **fields), len(specs)))
                except GsupError as exc:
                    failure = exc
        except KeyboardInterrupt:  # Ctrl-C: send no more, but say what was added
            failure = GsupError("interrupted")
        total = len(jobs) if isinstance(jobs, Sized) else counted
        if failure is not None and not sent:
            raise failure  # no daemon, or one that took nothing: no job was added
        return self._added(sent, total, failure, key)

    def _added(self, sent: list[tuple[Pending, int]], total: int, failure: GsupError | None,
               key: str | None) -> list[int]:  # fmt: skip
        """The ids the replies to a batch's requests give, or PartlyAdded."""
        why = None if failure is None else str(failure)
        ids: list[int] = []
        unsure = 0
        interrupted = False
        for request, count in sent:
            try:
                reply = {"ok": False, "error": "interrupted", "lost": True} if interrupted \
                    else self._await(request, None)  # fmt: skip
            except GsupError as exc:  # the connection is gone: this reply will not come
                reply = {"ok": False, "error": str(exc), "lost": True}
            except KeyboardInterrupt:  # a second Ctrl-C: wait no more
                interrupted = True
                reply = {"ok": False, "error": "interrupted", "lost": True}
            if reply.get("ok"):
                ids += reply["ids"]
                continue
            why = why or reply.get("error", "the daemon refused the request")
            unsure += count if reply.get("lost") else 0
        if not ids and not unsure:
            raise GsupError(str(why))  # none was added: the reason is all there is to say
        if len(ids) < total:
            raise PartlyAdded(str(why), ids, total, unsure, key)
        return ids

    def get(
        self, job: int, wait: bool = False, timeout: float | None = None, read_first: bool = True
    ) -> dict[str, Any]:
        """A job's summary; with `wait`, once it has ended (on this thread's waiting
        connection, so that other threads' requests go on meanwhile). `read_first`: look
        in the journal first, which costs the daemon nothing if the job has ended."""
        ended = self._read_ended(job) if read_first else None
        if ended is not None:
            return ended
        if not wait:
            return self._whole(self.request("get", job=job)["job"])
        reply = self._waiting().request("get", timeout=timeout, job=job, wait=True)
        return self._whole(reply["job"])

    def _whole(self, summary: dict[str, Any]) -> dict[str, Any]:
        """A summary from the daemon, with its result: one too large for a reply is
        left out of it, and read from the journal."""
        if "result" in summary:
            return summary
        ended = self._read_ended(summary["id"])
        if ended is None:
            raise GsupError(
                f"job {summary['id']}: its result ({summary['result_size']:,} bytes) is too"
                f" large for a reply, and the journal {self.paths.journal} cannot be read here"
            )
        return ended

    def _read_ended(self, job: int) -> dict[str, Any] | None:
        """The summary of `job` from the journal if it has ended; None if it has not,
        or if this process may not read the journal (then the daemon answers)."""
        import sqlite3

        from gsup.journal import queries
        from gsup.states import END_STATES

        local = self._waiters
        if getattr(local, "journal", None) is None:
            if getattr(local, "journal_failed", False):
                return None
            try:
                local.journal = queries.connect(self.paths.journal)
            except queries.Unreadable:
                local.journal_failed = True
                return None
        try:
            row = queries.job_row(local.journal, job)
            if row is None or row["state"] not in END_STATES:
                return None
            return queries.summary(local.journal, row)
        except sqlite3.Error:
            local.journal.close()
            local.journal, local.journal_failed = None, True
            return None

    def cancel(self, job: int) -> dict[str, Any]:
        return self.request("cancel", job=job)

    def retry(self, job: int) -> dict[str, Any]:
        return self.request("retry", job=job)

    def purge(self, pool: str | None) -> dict[str, int]:
        """Cancel pending jobs: {"cancelled": queued ones, "recalled": ones a pool held}."""
        reply = self.request("purge", pool=pool)
        return {"cancelled": reply["cancelled"], "recalled": reply["recalled"]}

    def freeze(self, pool: str | None, frozen: bool = True) -> dict[str, bool]:
        return self.request("freeze", pool=pool, frozen=frozen)["pools"]

    def wait(self, jobs: list[int], timeout: float | None = None) -> dict[int, str]:
        """Block until every job has ended; their end states by id.

        On this thread's waiting connection, so that other threads' requests go on.
        """
        states = self._waiting().request("wait", timeout=timeout, jobs=jobs)["states"]
        return {int(job): state for job, state in states.items()}

    def wait_task(self, task: int, timeout: float | None = None) -> str:
        """Block until task `task` has ended; its end state (as `wait` does for jobs)."""
        return self._waiting().request("task_wait", timeout=timeout, task=task)["state"]

    def _waiting(self) -> Client:
        """This thread's connection for requests that block until jobs end."""
        waiter = getattr(self._waiters, "client", None)
        if waiter is None:
            waiter = self._waiters.client = Client(self.paths.home)
        return waiter


class DaemonFacade:
    """What the API's entry points share (`queues`, `tasks`): a state dir, and a
    connection to its daemon made on first use (`from gsup import queues` connects
    to nothing)."""

    def __init__(self, home: str | Path | None = None) -> None:
        self._home = home
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._home)
        return self._client
