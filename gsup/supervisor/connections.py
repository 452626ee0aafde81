"""Client connections: accepting, reading request lines, queueing replies, dropping.

A reply is queued during the turn and sent only once the turn is in the journal
(`flush`): a client never hears of something that a crash could still undo.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gsup.access import Access
from gsup.peers import peer_credentials
from gsup.protocol import LineReader, ProtocolError, encode
from gsup.supervisor.loop import Loop, say

ACCEPT_PAUSE = 1.0  # seconds without new connections when file descriptors run out


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


class Connections:
    def __init__(
        self,
        loop: Loop,
        access: Access,
        max_message: int,
        on_request: Callable[[Connection, dict[str, Any]], None],
        on_drop: Callable[[Connection], None],
    ) -> None:
        self.loop = loop
        self.access = access
        self.max_message = max_message
        self.on_request = on_request
        self.on_drop = on_drop
        self.open: dict[int, Connection] = {}
        self.replies: list[tuple[Connection, dict[str, Any]]] = []
        self.listener: socket.socket | None = None
        self.refusing: str | None = None  # while set, each request gets it as its error

    def listen(self, listener: socket.socket) -> None:
        self.listener = listener
        self.loop.watch(listener, self._accept)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    def _accept(self, mask: int) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: take no one for a moment
                say(f"cannot take a connection ({exc.strerror}); pausing for {ACCEPT_PAUSE:g}s")
                self.loop.unwatch(self.listener)
                self.loop.call_at(self.loop.now() + ACCEPT_PAUSE, self._resume_accepting)
                return
            pid, uid, gid = peer_credentials(sock)
            sock.setblocking(False)
            conn = Connection(sock, LineReader(self.max_message), uid, pid)
            self.open[sock.fileno()] = conn
            self.loop.watch(sock, lambda mask, c=conn: self._on_io(c, mask))
            if not self.access.allows(uid, gid):
                self.refuse(conn, "permission denied")

    def _resume_accepting(self) -> None:
        if self.listener is not None:
            self.loop.watch(self.listener, self._accept)

    def _on_io(self, conn: Connection, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._send(conn)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = conn.sock.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.drop(conn)
            return
        if conn.refused:
            return
        try:
            messages = conn.reader.feed(data)
        except ProtocolError as exc:
            self.refuse(conn, str(exc))
            return
        for message in messages:
            if self.refusing is None:
                self.on_request(conn, message)
            else:  # nothing can be journaled: say so now, not after the stall
                conn.unsent += encode({"id": message.get("id"), "ok": False,
                                       "error": self.refusing})  # fmt: skip
                self._send(conn)

    def watched(self) -> list[tuple[Any, int, Callable[[int], None]]]:
        """(file object, events, callback) of the listener and every client: what a
        stalled daemon still serves, with `refusing` set."""
        watched: list[tuple[Any, int, Callable[[int], None]]] = []
        if self.listener is not None:
            watched.append((self.listener, selectors.EVENT_READ, self._accept))
        for conn in self.open.values():
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.unsent else 0)
            watched.append((conn.sock, events, lambda mask, c=conn: self._on_io(c, mask)))
        return watched

    def refuse(self, conn: Connection, error: str) -> None:
        self.reply(conn, None, {"ok": False, "error": error})
        conn.refused = True

    def reply(self, conn: Connection, request_id: Any, message: dict[str, Any]) -> None:
        """Queue a reply; it leaves with `flush`, once the turn is committed."""
        self.replies.append((conn, {"id": request_id, **message}))

    def flush(self) -> None:
        for conn, message in self.replies:
            conn.unsent += encode(message)
        self.replies.clear()
        for conn in list(self.open.values()):
            if conn.unsent:
                self._send(conn)

    def _send(self, conn: Connection) -> None:
        try:
            sent = conn.sock.send(conn.unsent)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.drop(conn)
            return
        del conn.unsent[:sent]
        if not conn.unsent and conn.refused:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
        self.loop.want_write(conn.sock, bool(conn.unsent))

    def drop(self, conn: Connection) -> None:
        if self.open.pop(conn.sock.fileno(), None) is None:
            return
        self.loop.unwatch(conn.sock)
        conn.sock.close()
        self.on_drop(conn)
