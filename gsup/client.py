"""The socket client used by the CLI and the Python API. It imports no peewee."""

from __future__ import annotations

import itertools
import os
import socket
import threading
from pathlib import Path
from typing import Any

from gsup.config import Paths, resolve_home
from gsup.protocol import JobSpec, LineReader, encode


class GsupError(Exception):
    """An error to show the user as one line."""


class DaemonNotRunning(GsupError):
    def __init__(self, paths: Paths) -> None:
        super().__init__(
            f"no gsup daemon is running for {paths.home} (start one with: gsup daemon"
            f"{'' if paths.home == resolve_home() else f' --home {paths.home}'})"
        )


def daemon_is_up(paths: Paths) -> bool:
    """Whether a daemon listens on the state dir's socket (it need not answer)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(paths.socket))
        except OSError:
            return False
    return True


class Client:
    """One connection to the daemon; requests are answered in order."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.paths = Paths(resolve_home(home))
        self._sock: socket.socket | None = None
        self._reader = LineReader()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # one request at a time on the connection
        self._pid = os.getpid()

    def _connect(self) -> socket.socket:
        if self._pid != os.getpid():  # a forked child must not share its parent's stream
            self._sock, self._reader, self._pid = None, LineReader(), os.getpid()
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.paths.socket))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                raise DaemonNotRunning(self.paths) from None
            except OSError as exc:
                sock.close()
                raise GsupError(f"cannot reach the daemon at {self.paths.socket}: {exc}") from None
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, verb: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return its reply; raise GsupError if it failed."""
        with self._lock:
            reply = self._exchange(verb, timeout, fields)
        if not reply.get("ok"):
            raise GsupError(reply.get("error", "the daemon refused the request"))
        return reply

    def _exchange(self, verb: str, timeout: float | None, fields: dict[str, Any]) -> dict:
        sock = self._connect()
        request_id = next(self._ids)
        try:
            sock.settimeout(None)
            sock.sendall(encode({"verb": verb, "id": request_id, **fields}))
            sock.settimeout(None if timeout is None else max(timeout, 1e-3))
            reply = self._receive(sock, request_id)
        except TimeoutError:
            self.close()  # the late reply would confuse the next request
            raise
        except OSError as exc:
            self.close()
            raise GsupError(f"lost the connection to the daemon: {exc}") from None
        return reply

    def _receive(self, sock: socket.socket, request_id: int) -> dict[str, Any]:
        while True:
            data = sock.recv(1 << 16)
            if not data:
                raise OSError("the daemon closed the connection")
            for reply in self._reader.feed(data):
                if reply.get("id") in (request_id, None):
                    return reply

    # --- one method per verb ---------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def add(self, jobs: list[JobSpec]) -> list[int]:
        return self.request("add", jobs=[job.to_wire() for job in jobs])["ids"]

    def get(self, job: int) -> dict[str, Any]:
        return self.request("get", job=job)["job"]

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

        On a connection of its own, so that other threads' requests go on meanwhile.
        """
        with Client(self.paths.home) as waiter:
            states = waiter.request("wait", timeout=timeout, jobs=jobs)["states"]
        return {int(job): state for job, state in states.items()}
