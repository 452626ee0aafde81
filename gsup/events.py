"""Reading the event stream: the journal's event rows in order, then, when following,
those the daemon pushes as it commits them (see supervisor/followers.py).

History comes from the journal file (read-only: it costs the daemon nothing); the
daemon sends only what is new. A reader it finds too far behind is told so, reads
on from the file, and follows again from where it got to: every event is given
once, in order, whatever the reader's pace.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsup.client import Client, daemon_is_up
from gsup.config import resolve_home
from gsup.errors import DaemonNotRunning, GsupError
from gsup.journal import queries
from gsup.journal.queries import EVENT_FIELDS, EventFilter

READ_PAGE = 10_000  # events read from the journal file at a time


@dataclass(frozen=True)
class Event:
    seq: int
    job: int
    before: str | None
    after: str
    at: float
    why: str | None

    def to_json(self) -> dict[str, Any]:
        return dict(zip(EVENT_FIELDS, (self.seq, self.job, self.before, self.after, self.at,
                                       self.why), strict=True))  # fmt: skip

    def line(self) -> str:
        """One line for a terminal: number, time, job, change and why (a job's text,
        its control characters shown as escapes)."""
        from gsup.text import visible

        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.at))
        change = f"{self.before or 'new'} -> {self.after}"
        why = f"  {visible(self.why)}" if self.why else ""
        return f"{self.seq}  {at}.{int(self.at % 1 * 1000):03d}  job {self.job}  {change}{why}"


def events(
    home: str | Path | None, since: int | None, wanted: EventFilter, follow: bool
) -> Iterator[list[Event]]:
    """The events after event number `since` (None: from the first, or from now when
    following), in batches; following, it never ends but by an error (the daemon
    gone). A bad filter or number, or no daemon to follow, raises GsupError at once."""
    with queries.read_journal(home) as conn:
        queries.check_wanted(conn, wanted)
        last = queries.last_event(conn)
    if since is None:
        since = last if follow else 0
    if since > last:
        raise GsupError(f"--since {since} is beyond the last event, {last}")
    client = None
    if follow:
        client = Client(home)
        if not daemon_is_up(client.paths):
            raise DaemonNotRunning(client.paths.home, resolve_home())
    return _stream(home, since, wanted, client)


def _stream(home: str | Path | None, since: int, wanted: EventFilter,
            client: Client | None) -> Iterator[list[Event]]:  # fmt: skip
    with queries.read_journal(home) as conn:
        since = yield from _read(conn, since, wanted)
        while client is not None:
            behind = yield from _pushed(client, since, wanted)
            since = yield from _read(conn, behind, wanted)


def _read(conn: sqlite3.Connection, since: int, wanted: EventFilter) -> Iterator[list[Event]]:
    """The events the journal file holds after `since`; returns the number read up to
    (the last committed when it began: a filtered read may have found none near it)."""
    upto = queries.last_event(conn)
    while rows := queries.events_after(conn, since, upto, wanted, READ_PAGE):
        yield [Event(*row) for row in rows]
        since = rows[-1][0]
    return max(since, upto)


def _pushed(client: Client, since: int, wanted: EventFilter) -> Iterator[list[Event]]:
    """Follow from `since` until the daemon says this reader is behind: returns the
    last event it was sent (the stream's end is a GsupError)."""
    for message in client.stream("follow", since=since, job=wanted.job, task=wanted.task):
        if "behind" in message:
            return message["behind"]
        if "events" in message:
            yield [Event(*row) for row in message["events"]]
    raise GsupError("the daemon stopped")  # pragma: no cover - stream raises first
