"""Noticing outputs as they land: a watcher process that tells the supervisor.

watchdog's observer runs threads, and the supervisor forks (pools, the journal's
check): so the observer runs in a child process of its own, forked when the first
folder is to be watched. It
watches the folders the supervisor names (the folders of transforms that declare
outputs, each unit's folder below them) and sends each file closed after writing,
moved in, or removed, as it happens, over a socket. Files written by processes gsup
did not start (a cluster job writing to a shared folder) are noticed the same way.
The child dies with the supervisor (PR_SET_PDEATHSIG, and end-of-file on its
socket); if it dies first, it is started again after a pause, and told the folders.

supervisor -> watcher: ("watch", folder)      below it, recursively
                       ("unwatch", folder)
watcher -> supervisor: ("landed", path, at)   a file was closed after writing, or moved in
                       ("gone", path, at)     a file was removed or moved out
                       ("watching", folder, at)  what lands below it is told from now on
                       ("trouble", folder, why)  it cannot watch it
                       ("unwatched", folder, at)  nothing more comes from below it

The units of a transform that declares outputs are submitted once its folder is
watched (`ready`), their folders made before that: a file closed in a folder not
watched yet would never be told. A unit folder made later (a chained unit's) is
watched as watchdog sees it made, which is at once, but not synchronously.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gsup.executors.base import Loop
from gsup.executors.local.channel import FrameReader, frame, frames
from gsup.executors.local.forked import Forked, leave_supervisor

UNWATCH_GRACE = 2.0  # seconds a folder is still watched once it is no longer needed
RESTART_PAUSE = 1.0  # seconds before a watcher that died is started again, doubling
MAX_PAUSE = 60.0
Landed = Callable[[list[tuple[str, str, Any]]], None]  # what the watcher sends (see above)


class Landings:
    """The supervisor's side: forks the watcher and hands what it sends to `landed`."""

    def __init__(self, loop: Loop, landed: Landed) -> None:
        self.loop = loop
        self.landed = landed
        self.process: Forked | None = None
        self.sock: socket.socket | None = None
        self.pidfd: int | None = None
        self.pause = RESTART_PAUSE
        self.closed = False
        self.restarting = False  # a start is due after a pause
        self.folders: set[str] = set()  # watched: told again to a watcher started anew
        self.pending: set[str] = set()  # told, not yet acknowledged
        self.unsent = bytearray()

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = Forked(_watch_main, (theirs,))
            process.start()
        except OSError as exc:  # out of processes or descriptors: try again later
            ours.close()
            self.loop.say(f"cannot start the outputs' watcher: {exc}")
            self._restart_later()
            return
        finally:
            theirs.close()
        try:
            self.pidfd = os.pidfd_open(process.pid)
        except OSError as exc:
            os.kill(process.pid, signal.SIGKILL)
            process.join(5)
            ours.close()
            self.loop.say(f"cannot follow the outputs' watcher: {exc}")
            self._restart_later()
            return
        ours.setblocking(False)
        self.process, self.sock, self.reader = process, ours, FrameReader()
        self.loop.watch(ours, self._on_io)
        self.loop.watch(self.pidfd, lambda mask: self._exited())
        self.unsent = bytearray(frame([("watch", folder) for folder in sorted(self.folders)]))
        self.pending = set(self.folders)
        self._send()

    def ready(self, folder: Path) -> bool:
        """Whether what lands below `folder` is told (or cannot be: no watcher runs)."""
        return self.sock is None or str(folder) not in self.pending

    def watch(self, folder: Path) -> None:
        """Tell the landings below `folder` (made now if it is not there yet)."""
        folder.mkdir(parents=True, exist_ok=True)
        if str(folder) in self.folders:
            return
        self.folders.add(str(folder))
        if self.process is None and not self.restarting:
            self.start()  # the first folder: a daemon that runs no task has no watcher
        elif self.sock is not None:  # else told when it starts again
            self.pending.add(str(folder))
            self._tell(("watch", str(folder)))

    def unwatch(self, folder: Path) -> None:
        """Let go of `folder` after a grace period: what landed there just before is
        still in the watcher, and would be dropped with the watch."""
        if str(folder) in self.folders:
            self.folders.discard(str(folder))
            self.loop.call_at(self.loop.now() + UNWATCH_GRACE, lambda: self._let_go(folder))

    def _let_go(self, folder: Path) -> None:
        if str(folder) not in self.folders:  # not watched again meanwhile
            self._tell(("unwatch", str(folder)))

    def _tell(self, message: tuple[str, str]) -> None:
        if self.sock is not None:
            self.unsent += frame([message])
            self._send()

    def _send(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.unsent) if self.unsent else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return  # it is dying: its pidfd will tell
        del self.unsent[:sent]
        self.loop.want_write(self.sock, bool(self.unsent))

    def _on_io(self, mask: int) -> None:
        if self.sock is None:  # its death was handled first, in the same turn
            return
        if mask & selectors.EVENT_WRITE:
            self._send()
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return
        events = self.reader.feed(data)
        for kind, what, why in events:
            if kind in ("watching", "trouble"):
                self.pending.discard(what)
            if kind == "trouble":
                self.loop.say(f"the outputs' watcher: cannot watch {what}: {why}")
        self.landed(events)
        self.pause = RESTART_PAUSE  # it works: a later death is restarted quickly again

    def _exited(self) -> None:
        self._forget()
        if not self.closed:
            self.loop.say(f"the outputs' watcher died; it starts again in {self.pause:g}s")
            self._restart_later()

    def _restart_later(self) -> None:
        self.restarting = True
        self.loop.call_at(self.loop.now() + self.pause, self._restart)
        self.pause = min(self.pause * 2, MAX_PAUSE)

    def _restart(self) -> None:
        self.restarting = False
        if not self.closed:
            self.start()

    def _forget(self) -> None:
        self.pending.clear()
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


def _watch_main(sock: socket.socket) -> None:
    """Entry point of the forked watcher: reports until its socket closes."""
    sock = leave_supervisor(sock, b"gsup-watcher")
    from watchdog.events import (
        FileClosedEvent,
        FileDeletedEvent,
        FileMovedEvent,
        FileSystemEvent,
        FileSystemEventHandler,
    )
    from watchdog.observers import Observer

    lock = threading.Lock()

    def send(kind: str, path: str, what: Any = None) -> None:
        with lock:
            try:
                sock.sendall(frames([(kind, path, time.time() if what is None else what)]))
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
    observer.start()
    reporter, wanted = Reporter(), [FileClosedEvent, FileMovedEvent, FileDeletedEvent]
    watches: dict[str, Any] = {}
    reader = FrameReader()
    while data := sock.recv(1 << 16):  # b"": the supervisor is gone
        for kind, folder in reader.feed(data):
            if kind == "unwatch" and folder in watches:
                observer.unschedule(watches.pop(folder))
                send("unwatched", folder)
            elif kind == "watch":
                try:
                    watches[folder] = observer.schedule(reporter, folder, recursive=True,
                                                        event_filter=wanted)  # fmt: skip
                    send("watching", folder)
                except OSError as exc:  # inotify's limits, or the folder is gone
                    send("trouble", folder, str(exc))
    os._exit(0)
