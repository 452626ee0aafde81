"""The event stream of `gsup web`: one brief follower of the daemon for all open pages.

While at least one page listens, a thread follows the daemon briefly: after each
commit that wrote events, the daemon sends only the last one's number (no query of
its own). Each page's stream then reads the events it has not had from the journal
file, at most RATE times a second and the newest PER_MESSAGE at a time: a page shows
what a person can read, at a cost to the web process alone, whatever the daemon's
pace. A page that reconnects says the last event it had (Last-Event-ID) and goes on
from there. With no page open, the web process follows nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from gsup.client import Client
from gsup.errors import GsupError
from gsup.events import Event
from gsup.journal import queries
from gsup.journal.queries import ALL_EVENTS

RETRY = 2.0  # seconds between attempts to follow a daemon that is not running
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (a closed page is noticed)
PER_MESSAGE = 100  # events in one server-sent event, at most: the newest
RATE = 4  # server-sent events a second, at most, per page


class Broadcaster:
    def __init__(self, home: str | Path | None) -> None:
        self.home = home
        self._changed = threading.Condition()
        self._last = 0  # the last event the daemon said it committed
        self._listeners = 0
        self._thread: threading.Thread | None = None
        self.trouble: str | None = None  # why the daemon's events do not come

    def listen(self, since: int | None) -> Iterator[bytes]:
        """A page's stream of server-sent events from event `since` (None: from now)."""
        with self._changed:
            self._listeners += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._follow, daemon=True,
                                                 name="gsup-web-events")  # fmt: skip
                self._thread.start()
        try:
            yield from self._stream(since)
        except GsupError as exc:  # the journal cannot be read (any more): end the stream
            yield f": {exc}\n\n".encode()
        finally:
            with self._changed:
                self._listeners -= 1

    def _stream(self, since: int | None) -> Iterator[bytes]:
        """Each message: the events after the last one sent, up to the last committed."""
        with queries.read_journal(self.home) as conn:
            last = queries.last_event(conn)
            since = last if since is None else min(since, last)
            yield b"retry: 2000\n\n"
            while True:
                with self._changed:
                    self._changed.wait_for(lambda s=since: self._last > s, KEEPALIVE)
                    told = self._last
                last = max(told, queries.last_event(conn))
                if last <= since:
                    yield b": keepalive\n\n"
                    continue
                since = max(since, last - PER_MESSAGE)  # a person reads the newest
                rows = queries.events_after(conn, since, last, ALL_EVENTS, PER_MESSAGE)
                since = last
                if rows:
                    yield _message([Event(*row) for row in rows], last)
                time.sleep(1 / RATE)  # events meanwhile come in the next message

    def _follow(self) -> None:
        """Follow the daemon while pages listen; when it is not running, try again."""
        while True:
            with self._changed:
                if not self._listeners:
                    self._thread = None
                    return
            try:
                with queries.read_journal(self.home) as conn:
                    start = queries.last_event(conn)
                for message in Client(self.home).stream("follow", since=start, brief=True):
                    self.trouble = None
                    with self._changed:
                        self._last = max(self._last, message["last"])
                        self._changed.notify_all()
                    if not self._listeners:
                        break
            except GsupError as exc:
                self.trouble = str(exc)
                time.sleep(RETRY)


def _message(events: list[Event], last: int) -> bytes:
    """One server-sent event of their JSON; its id the last event's number."""
    data = json.dumps([event.to_json() for event in events])
    return f"id: {last}\ndata: {data}\n\n".encode()
