"""The event stream of `gsup web`: one follower of the daemon for every open page.

A thread follows the daemon's events (gsup/events.py) while at least one page listens,
keeps the latest in memory, and wakes the pages' server-sent-event streams. A page
that reconnects says the last event it had (Last-Event-ID) and gets those after it,
from memory or, if they are older, from the journal file. With no page open, the web
process follows nothing: it costs the daemon nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from gsup.errors import GsupError
from gsup.events import Event
from gsup.journal import queries
from gsup.journal.queries import ALL_EVENTS

KEPT = 10_000  # events kept in memory for pages that reconnect
RETRY = 2.0  # seconds between attempts to follow a daemon that is not running
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (a closed page is noticed)
PER_MESSAGE = 500  # events in one server-sent event


class Broadcaster:
    def __init__(self, home: str | Path | None) -> None:
        self.home = home
        self._kept: deque[Event] = deque(maxlen=KEPT)
        self._changed = threading.Condition()
        self._last = 0  # the last event known
        self._from = 0  # memory holds every event after this one (up to `_last`)
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
            yield b"retry: 2000\n\n"
            if since is None:
                since = self._current_last()
            while True:
                events = self._after(since)
                if events:
                    yield from _messages(events)
                    since = events[-1].seq
                else:
                    yield b": keepalive\n\n"
        finally:
            with self._changed:
                self._listeners -= 1

    def _current_last(self) -> int:
        with queries.read_journal(self.home) as conn:
            return max(queries.last_event(conn), self._last)

    def _after(self, since: int) -> list[Event]:
        """Events after `since`, waiting up to KEEPALIVE for one."""
        with self._changed:
            self._changed.wait_for(lambda: self._last > since, KEEPALIVE)
            if since >= self._from:
                return [event for event in self._kept if event.seq > since][:PER_MESSAGE]
        with queries.read_journal(self.home) as conn:  # older than memory holds
            rows = queries.events_after(conn, since, None, ALL_EVENTS, PER_MESSAGE)
        return [Event(*row) for row in rows]

    def _follow(self) -> None:
        """Follow the daemon while pages listen; when it is not running, try again."""
        from gsup.events import events

        while True:
            with self._changed:
                if not self._listeners:
                    self._thread = None
                    return
            try:
                with queries.read_journal(self.home) as conn:
                    start = queries.last_event(conn)
                stream = events(self.home, start, ALL_EVENTS, follow=True)
                with self._changed:  # what came before `start` is read from the journal
                    self._kept.clear()
                    self._from = self._last = start
                    self._changed.notify_all()
                for batch in stream:
                    self.trouble = None
                    with self._changed:
                        self._kept.extend(batch)
                        self._from = max(self._from, self._kept[0].seq - 1)
                        self._last = batch[-1].seq
                        self._changed.notify_all()
                    if not self._listeners:
                        break
            except GsupError as exc:
                self.trouble = str(exc)
                time.sleep(RETRY)


def _messages(events: list[Event]) -> Iterator[bytes]:
    """One server-sent event of their JSON; its id the last one's number."""
    data = json.dumps([event.to_json() for event in events])
    yield f"id: {events[-1].seq}\ndata: {data}\n\n".encode()
