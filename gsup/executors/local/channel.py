"""The supervisor <-> pool channel: length-prefixed frames, each a pickled list of tuples.

Messages are plain tuples of builtins (stdlib pickle, fast); user callables travel
inside them as the dill text the client made, and only the pool unpickles that.

supervisor -> pool: ("run", job_id, attempt_id, kind, target, spec_json, priority, runs_once)
                    ("go", job_id)              a runs-once job's start is journaled
                    ("stop", job_id)            stop it, whether it has started or not
                    ("recall", job_id)          give it back if it has not started
pool -> supervisor: ("ready", pid)
                    ("start", job_id, where, at)   where: "Worker_3", a Dask key
                    ("end", job_id, ending, why, outcome, usage)
                    where ending is an Ending's value (gsup.lifecycle)
                    ("stale", why)              a file its jobs imported changed: it
                                                gives back what it holds, and exits
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024  # supervisor -> pool; pool -> supervisor: see report_limit
ALONE = 1024 * 1024  # a report larger than this goes in a frame of its own
_REPORT_EXTRA = 16 * 1024 * 1024  # a report's error, traceback, outputs' tails, pickling


def report_limit(max_result: int) -> int:
    """The largest frame a pool may send: one report, its result at most `max_result`
    bytes (a frame larger than that means the channel is corrupted)."""
    return max(MAX_FRAME, max_result + _REPORT_EXTRA)


def frame(messages: list[tuple[Any, ...]]) -> bytes:
    payload = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def frames(messages: list[tuple[Any, ...]]) -> bytes:
    """`messages` framed: in one frame, unless they are large (then one frame each, so
    that a frame never holds more than one large result)."""
    framed = frame(messages)
    if len(framed) <= ALONE or len(messages) == 1:
        return framed
    return b"".join(frame([message]) for message in messages)


class FrameReader:
    """Turns received bytes into messages, however the stream was cut. Linear in the
    bytes received, however large a frame: appended once, unpickled in place."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self._buffer += data
        messages: list[tuple[Any, ...]] = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > self.limit:
                raise ValueError(f"a frame of {size} bytes")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            with memoryview(self._buffer) as view, view[_HEADER.size : end] as payload:
                messages.extend(pickle.loads(payload))
            if len(self._buffer) == end:
                self._buffer = bytearray()  # a large frame's room goes back at once
            else:
                del self._buffer[:end]
        return messages


def receive(sock: socket.socket) -> bytes:
    """What the other side sent next, blocking; b"" once it has closed or broken."""
    try:
        return sock.recv(1 << 16)
    except OSError:
        return b""
