"""The supervisor <-> pool channel: length-prefixed frames, each a pickled list of tuples.

Messages are plain tuples of builtins (stdlib pickle, fast); user callables travel
inside them as the dill text the client made, and only the pool unpickles that.

supervisor -> pool: ("run", job_id, attempt_id, kind, target, spec_json, priority, runs_once)
                    ("go", job_id)              a runs-once job's start is journaled
                    ("stop", job_id)            stop it, whether it has started or not
                    ("recall", job_id)          give it back if it has not started
pool -> supervisor: ("ready", pid)
                    ("start", job_id, worker_index, at)
                    ("end", job_id, ending, why, outcome, usage)
                    where ending is an Ending's value (gsup.lifecycle)
                    ("stale", why)              a file its jobs imported changed: it
                                                gives back what it holds, and exits
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 * 1024 * 1024  # far above any report (results are 4 MiB at most)


def frame(messages: list[tuple[Any, ...]]) -> bytes:
    payload = pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Turns received bytes into messages, however the stream was cut."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        self._buffer += data
        messages: list[tuple[Any, ...]] = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > MAX_FRAME:
                raise ValueError(f"a frame of {size} bytes")
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            messages.extend(pickle.loads(self._buffer[_HEADER.size : end]))
            del self._buffer[:end]
        return messages
