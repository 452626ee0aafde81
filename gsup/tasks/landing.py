"""Noticing outputs as they land: a watcher process that tells the supervisor.

watchdog's observer runs threads, and the supervisor forks (pools, the journal's
check): so the observer runs in a child process of its own, forked at start, which
watches the tasks folder (every unit's output folder below it) and sends each file
closed after writing, moved in, or removed, as it happens, over a socket. Files
written by processes gsup did not start (a cluster job writing to a shared folder)
are noticed the same way. The child dies with the supervisor (PR_SET_PDEATHSIG, and
end-of-file on its socket); if it dies first, it is started again after a pause.

watcher -> supervisor: ("landed", path, at)   a file was closed after writing, or moved in
                       ("gone", path, at)     a file was removed or moved out
                       ("trouble", why, at)   it cannot watch (then it exits)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import multiprocess

from gsup.executors.base import Loop
from gsup.executors.local.channel import FrameReader, frames
from gsup.executors.local.pool import _die_with_parent

RESTART_PAUSE = 1.0  # seconds before a watcher that died is started again, doubling
MAX_PAUSE = 60.0
Landed = Callable[[list[tuple[str, str, float]]], None]  # ("landed" | "gone", path, at)


class Landings:
    """The supervisor's side: forks the watcher and hands what it sends to `landed`."""

    def __init__(self, folder: Path, loop: Loop, landed: Landed) -> None:
        self.folder = folder
        self.loop = loop
        self.landed = landed
        self.process: Any = None
        self.sock: socket.socket | None = None
        self.pidfd: int | None = None
        self.pause = RESTART_PAUSE
        self.closed = False

    def start(self) -> None:
        self.folder.mkdir(exist_ok=True)
        ours, theirs = socket.socketpair()
        try:
            process = multiprocess.get_context("fork").Process(
                target=_watch_main,
                args=(str(self.folder), theirs, [*self.loop.private_fds(), ours.fileno()]),
                name="gsup-watcher",
            )
            process.start()
            self.pidfd = os.pidfd_open(process.pid)
        except OSError as exc:  # out of processes or descriptors: try again later
            ours.close()
            self.loop.say(f"cannot start the outputs' watcher: {exc}")
            self._restart_later()
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        self.process, self.sock, self.reader = process, ours, FrameReader()
        self.loop.watch(ours, self._on_io)
        self.loop.watch(self.pidfd, lambda mask: self._exited())

    def _on_io(self, mask: int) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return
        events = self.reader.feed(data)
        for kind, what, _ in events:
            if kind == "trouble":
                self.loop.say(f"the outputs' watcher: {what}")
        self.landed([event for event in events if event[0] != "trouble"])
        self.pause = RESTART_PAUSE  # it works: a later death is restarted quickly again

    def _exited(self) -> None:
        self._forget()
        if not self.closed:
            self.loop.say(f"the outputs' watcher died; it starts again in {self.pause:g}s")
            self._restart_later()

    def _restart_later(self) -> None:
        self.loop.call_at(self.loop.now() + self.pause, self._restart)
        self.pause = min(self.pause * 2, MAX_PAUSE)

    def _restart(self) -> None:
        if not self.closed:
            self.start()

    def _forget(self) -> None:
        for fileobj in (self.sock, self.pidfd):
            if fileobj is not None:
                self.loop.unwatch(fileobj)
        if self.sock is not None:
            self.sock.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
        if self.process is not None:
            self.process.join(1)
        self.process, self.sock, self.pidfd = None, None, None

    def close(self) -> None:
        self.closed = True
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self._forget()


# --- the watcher process ------------------------------------------------------------


def _watch_main(folder: str, sock: socket.socket, close: list[int]) -> None:
    """Entry point of the forked watcher: reports until its socket closes."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal is for the supervisor
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)  # the supervisor's, inherited
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    if os.getppid() == 1:
        os._exit(0)  # the supervisor died before PDEATHSIG was set
    from watchdog.events import (
        FileClosedEvent,
        FileDeletedEvent,
        FileMovedEvent,
        FileSystemEvent,
        FileSystemEventHandler,
    )
    from watchdog.observers import Observer

    lock = threading.Lock()

    def send(kind: str, path: str) -> None:
        with lock:
            try:
                sock.sendall(frames([(kind, path, time.time())]))
            except OSError:
                os._exit(0)  # the supervisor is gone

    class Reporter(FileSystemEventHandler):
        def on_closed(self, event: FileSystemEvent) -> None:
            send("landed", os.fsdecode(event.src_path))

        def on_moved(self, event: FileSystemEvent) -> None:
            send("gone", os.fsdecode(event.src_path))
            send("landed", os.fsdecode(event.dest_path))

        def on_deleted(self, event: FileSystemEvent) -> None:
            send("gone", os.fsdecode(event.src_path))

    observer = Observer()
    try:
        wanted = [FileClosedEvent, FileMovedEvent, FileDeletedEvent]
        observer.schedule(Reporter(), folder, recursive=True, event_filter=wanted)
        observer.start()
    except OSError as exc:  # inotify's limits (max_user_watches, max_user_instances)
        send("trouble", f"cannot watch {folder}: {exc}")
        os._exit(1)
    while sock.recv(1024):  # the supervisor never sends: this returns when it is gone
        pass
    os._exit(0)
