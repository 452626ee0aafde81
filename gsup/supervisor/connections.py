"""Client connections: accepting, reading request lines, queueing replies, dropping.

A reply is queued during the turn and sent only once the turn is in the journal
(`flush`): a client never hears of something that a crash could still undo.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import selectors
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gsup.access import Access
from gsup.peers import peer_credentials
from gsup.protocol import LineReader, ProtocolError, encode, request_id
from gsup.supervisor.loop import Loop, Timer, say

ACCEPT_PAUSE = 1.0  # seconds without new connections when file descriptors run out
# Replies a client has not read yet. A client past its bound is dropped when it is
# sent one more; past the total, the client holding most is dropped. One client's
# bound holds the replies of an add_many of ~3 million jobs, which reads none of them
# until it has sent them all.
MAX_CLIENT_BACKLOG = 32 << 20
MAX_TOTAL_BACKLOG = 128 << 20
# Unfinished request lines, over all clients (at least one whole message): past it,
# the client holding most is refused. A line that stops coming for INPUT_STALL
# seconds is refused too: a client sends a request whole, in one go.
MAX_TOTAL_INPUT = 64 << 20
INPUT_STALL = 10.0
# Descriptors kept for the daemon's own needs (pool restarts, the journal, output
# files), out of reach of clients: at most a quarter of the open-files limit.
FD_RESERVE = 64
MAX_CLIENTS = 10_000  # connections at once; idle ones cost memory too
ACCEPTS_PER_TURN = 64  # then the turn goes on: clients that closed are dropped meanwhile
OWN_FDS_EVERY = 1.0  # seconds between counts of the daemon's own descriptors


@dataclass
class Connection:
    sock: socket.socket
    reader: LineReader
    uid: int
    pid: int
    held: list[bytes] = field(default_factory=list)  # this turn's replies, encoded
    held_bytes: int = 0
    unsent: bytearray = field(default_factory=bytearray)
    # Refused (bad peer, broken message): after the error reply, its input is read
    # and dropped until it hangs up, so the reply is not lost to a reset.
    refused: bool = False
    # Doomed (it does not read its replies): dropped at the next safe point, as a
    # drop in the middle of a handler or of the book's rounds could upset them.
    doomed: bool = False
    closed: bool = False
    last_input: float = 0.0  # monotonic time of the last bytes it sent
    stall_timer: Timer | None = None  # armed while it holds an unfinished line

    @property
    def backlog(self) -> int:
        """Bytes of replies it has not read: this turn's and those the socket refused."""
        return self.held_bytes + len(self.unsent)


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
        self.replying: list[Connection] = []  # those holding replies of this turn
        self.doomed: list[Connection] = []
        self.backlog = 0  # of all connections
        self.input = 0  # bytes of unfinished lines, of all connections
        self.max_input = max(MAX_TOTAL_INPUT, max_message)
        self.listener: socket.socket | None = None
        self.refusing: str | None = None  # while set, each request gets it as its error
        self.turning_away = False  # said so; said again after a client is taken
        self._own_fds = (-math.inf, 0)  # (when counted, the daemon's own descriptors)

    def listen(self, listener: socket.socket) -> None:
        self.listener = listener
        self.loop.watch(listener, self._accept)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    def _accept(self, mask: int) -> None:
        """Take waiting clients, a bounded number per turn: a client that connects and
        closes in a loop must not keep the loop from reading the others (and dropping
        those that closed)."""
        assert self.listener is not None
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: take no one for a moment
                say(f"cannot take a connection ({exc.strerror}); pausing for {ACCEPT_PAUSE:g}s")
                self.loop.unwatch(self.listener)
                self.loop.call_at(self.loop.now() + ACCEPT_PAUSE, self._resume_accepting)
                return
            limit = self._client_limit()
            if len(self.open) >= limit:
                connected = len(self.open)
                self._turn_away(sock, f"too many clients: {connected} connected, limit {limit}")
                continue
            self.turning_away = False
            pid, uid, gid = peer_credentials(sock)
            sock.setblocking(False)
            conn = Connection(sock, LineReader(self.max_message), uid, pid)
            self.open[sock.fileno()] = conn
            self.loop.watch(sock, lambda mask, c=conn: self._on_io(c, mask))
            if not self.access.allows(uid, gid):
                self.refuse(conn, "permission denied")

    def _client_limit(self) -> int:
        """How many clients may be connected: MAX_CLIENTS, or fewer if the open-files
        limit (which may be changed from outside) would leave the daemon short."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return MAX_CLIENTS
        return max(0, min(MAX_CLIENTS, soft - self._own() - min(FD_RESERVE, soft // 4)))

    def _own(self) -> int:
        """The daemon's own descriptors (not its clients', nor the one just taken),
        counted at most once a second: listing /proc/self/fd at every accept made a
        client that connects in a loop cost the daemon time that grew with its clients."""
        when, count = self._own_fds
        if self.loop.now() - when >= OWN_FDS_EVERY:
            count = _open_fds() - len(self.open) - 1
            self._own_fds = (self.loop.now(), count)
        return count

    def _turn_away(self, sock: socket.socket, error: str) -> None:
        """One line, then close at once: a refused client keeps no descriptor. What it
        sent is read first: closing on unread input would reset the connection, and
        the client would lose the line."""
        if not self.turning_away:
            say(f"refusing new clients: {error}")
            self.turning_away = True
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            _drain(sock)
            sock.send(encode({"id": None, "ok": False, "error": error}))
            sock.shutdown(socket.SHUT_WR)
            _drain(sock)
        sock.close()

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
        if not data or conn.doomed:
            self.drop(conn)
            return
        if conn.refused:
            return
        try:
            messages = self._feed(conn, data)
        except ProtocolError as exc:
            self.refuse(conn, str(exc))
            return
        for message in messages:
            if conn.doomed or conn.closed:
                break
            if self.refusing is None:
                self.on_request(conn, message)
            else:  # nothing can be journaled: say so now, not after the stall
                self._refuse_now(conn, message)
        if self.input > self.max_input:
            self._refuse_input(
                max(self.open.values(), key=lambda c: c.reader.pending),
                f"unfinished messages of all clients exceed {self.max_input >> 20} MB;"
                " this one's is dropped",
            )

    def _feed(self, conn: Connection, data: bytes) -> list[dict[str, Any]]:
        """The messages `data` completes; what it leaves unfinished is counted, and
        must go on coming."""
        before = conn.reader.pending
        try:
            return conn.reader.feed(data)
        finally:
            self.input += conn.reader.pending - before
            conn.last_input = self.loop.now()
            if conn.reader.pending and conn.stall_timer is None:
                self._check_stall_at(conn, conn.last_input + INPUT_STALL)

    def _refuse_now(self, conn: Connection, message: dict[str, Any]) -> None:
        """While the journal is stalled (no turn ends, so nothing is flushed): the
        refusal goes out at once, within the same bounds as any reply."""
        data = encode({"id": request_id(message), "ok": False, "error": self.refusing})
        if conn.backlog + len(data) > MAX_CLIENT_BACKLOG:
            say(f"dropping a client (pid {conn.pid}) that did not read its replies")
            self.drop(conn)  # safe here: no handler runs while the journal is stalled
            return
        conn.unsent += data
        self.backlog += len(data)
        self._send(conn)

    def _check_stall_at(self, conn: Connection, when: float) -> None:
        conn.stall_timer = self.loop.call_at(when, lambda: self._check_stall(conn))

    def _check_stall(self, conn: Connection) -> None:
        """An unfinished line must keep coming; a deadline moved by each read."""
        conn.stall_timer = None
        if conn.closed or conn.refused or not conn.reader.pending:
            return
        due = conn.last_input + INPUT_STALL
        if due > self.loop.now():
            self._check_stall_at(conn, due)
        else:
            self._refuse_input(conn, f"message unfinished: nothing more came for {INPUT_STALL:g}s")

    def _refuse_input(self, conn: Connection, error: str) -> None:
        self._forget_input(conn)
        self.refuse(conn, error)

    def _forget_input(self, conn: Connection) -> None:
        self.input -= conn.reader.pending
        conn.reader.clear()
        if conn.stall_timer is not None:
            conn.stall_timer.cancel()
            conn.stall_timer = None

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
        """Queue a reply; it leaves with `flush`, once the turn is committed. A client
        that has not read its backlog gets no more: it is dropped."""
        if conn.doomed or conn.closed:
            return
        if conn.backlog >= MAX_CLIENT_BACKLOG:
            self._doom(conn)
            return
        data = encode({"id": request_id, **message})
        if not conn.held:
            self.replying.append(conn)
        conn.held.append(data)
        conn.held_bytes += len(data)
        self.backlog += len(data)
        while self.backlog > MAX_TOTAL_BACKLOG:
            self._doom(max(self.open.values(), key=lambda c: c.backlog))

    def _doom(self, conn: Connection) -> None:
        """Drop a client that does not read at the next safe point; free its replies now."""
        say(
            f"dropping a client (pid {conn.pid}) that did not read its replies"
            f" ({conn.backlog / (1 << 20):.1f} MB unread)"
        )
        self._forget_backlog(conn)
        conn.doomed = True
        self.doomed.append(conn)

    def _forget_backlog(self, conn: Connection) -> None:
        self.backlog -= conn.backlog
        conn.held, conn.held_bytes, conn.unsent = [], 0, bytearray()

    def flush(self) -> None:
        for conn in self.replying:
            for data in conn.held:
                conn.unsent += data
            conn.held, conn.held_bytes = [], 0
        self.replying.clear()
        for conn in self.doomed:
            self.drop(conn)
        self.doomed.clear()
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
        self.backlog -= sent
        if not conn.unsent and conn.refused:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)
        self.loop.want_write(conn.sock, bool(conn.unsent))

    def drop(self, conn: Connection) -> None:
        if conn.closed:
            return
        del self.open[conn.sock.fileno()]
        self._forget_backlog(conn)
        self._forget_input(conn)
        conn.closed = True
        self.loop.unwatch(conn.sock)
        conn.sock.close()
        self.on_drop(conn)


def _open_fds() -> int:
    """Descriptors the daemon has open (listing them takes one more)."""
    return len(os.listdir("/proc/self/fd")) - 1


def _drain(sock: socket.socket) -> None:
    """Read and drop what a non-blocking socket holds."""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while sock.recv(1 << 16):
            pass
