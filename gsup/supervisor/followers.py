"""Clients following the event stream (`gsup events --follow`, live views, the web).

A follower names the last event it has; after each turn is committed, the daemon sends
it the events numbered after that one (of its job or task, if it names one), in one
message. Nothing is sent on a turn that wrote no event, and nobody polls.

The daemon never buffers much for a follower: one that is more than PAGE events
behind, or has not read what it was sent, is told `behind` (with the last event it
was sent) and is followed no more. Its client reads the rest from the journal file,
which costs the daemon nothing, and follows again from there: no event is missed or
repeated, however slow the reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gsup.journal import queries
from gsup.journal.queries import EventFilter
from gsup.journal.writer import Writer
from gsup.supervisor.connections import Connection
from gsup.supervisor.jobs import Answer

PAGE = 2_000  # events a follower is sent in one message
MAX_UNREAD = 1 << 20  # bytes a follower may leave unread before it is told `behind`


@dataclass(eq=False)
class Follower:
    conn: Connection
    request_id: Any
    last: int  # the last event it has
    wanted: EventFilter


class Followers:
    def __init__(self, journal: Writer, reply: Answer) -> None:
        self.journal = journal
        self.reply = reply
        self._by_conn: dict[int, list[Follower]] = {}  # by id(): connections are not hashable
        self._sent = 0  # the last event every follower has been sent (see `push`)

    def follow(self, conn: Connection, request_id: Any, since: int, wanted: EventFilter) -> None:
        """Follow from event `since` (committed ones are sent at the turn's end)."""
        follower = Follower(conn, request_id, since, wanted)
        self._by_conn.setdefault(id(conn), []).append(follower)
        self._sent = min(self._sent, since)

    def forget(self, conn: Any) -> None:
        self._by_conn.pop(id(conn), None)

    def __len__(self) -> int:
        return sum(len(followers) for followers in self._by_conn.values())

    def push(self) -> None:
        """After a commit: each follower gets the events it has not had yet. Called with
        no transaction open, so that what is read is what was committed."""
        last = self.journal.last_event
        if last <= self._sent:
            return  # the turn wrote no event (an idle or a busy daemon alike)
        reader = self.journal.reader
        for conn_id, followers in list(self._by_conn.items()):
            for follower in list(followers):
                if follower.last < last and not self._send(reader, follower, last):
                    followers.remove(follower)
            if not followers:
                del self._by_conn[conn_id]
        self._sent = last

    def _send(self, reader: Any, follower: Follower, last: int) -> bool:
        """Send `follower` its events up to `last`; False if it is behind instead."""
        rows = []
        if follower.conn.backlog <= MAX_UNREAD:
            rows = queries.events_after(reader, follower.last, last, follower.wanted, PAGE + 1)
        if follower.conn.backlog > MAX_UNREAD or len(rows) > PAGE:
            self.reply(follower.conn, follower.request_id, {"ok": True, "behind": follower.last})
            return False
        if rows:
            self.reply(follower.conn, follower.request_id, {"ok": True, "events": rows})
        follower.last = last
        return True
