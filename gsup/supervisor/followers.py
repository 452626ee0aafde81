"""Clients following the event stream (`gsup events --follow`, live views, the web).

A follower names the last event it has; after each turn is committed, the daemon sends
it the events numbered after that one (of its job or task, if it names one), in one
message. Nothing is sent on a turn that wrote no event, and nobody polls.

The daemon never buffers much for a follower: one that is more than PAGE events
behind, or has not read what it was sent, is told `behind` (with the last event it
was sent) and is followed no more. Its client reads the rest from the journal file,
which costs the daemon nothing, and follows again from there: no event is missed or
repeated, however slow the reader.

A brief follower (`gsup web`) is sent only the number of the last event, at most
every BRIEF_EVERY seconds (a timer sends the last one of a burst): it reads the
events it wants from the journal itself, as often as it likes, and costs the daemon
no query, and during a drain a few messages a second. One that leaves them unread
is sent none until it has read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gsup.journal import queries
from gsup.journal.queries import EventFilter
from gsup.journal.writer import Writer
from gsup.supervisor.connections import Connection
from gsup.supervisor.jobs import Answer, Clock

PAGE = 2_000  # events a follower is sent in one message
BRIEF_EVERY = 0.05  # seconds between two messages to a brief follower, at least
UNREAD_RETRY = 1.0  # seconds until a brief follower that has not read is tried again
MAX_FOLLOWERS = 256  # followers sent events (each costs a query a turn); brief ones aside
MAX_UNREAD = 1 << 20  # bytes a follower may leave unread before it is told `behind`


@dataclass(eq=False)
class Follower:
    conn: Connection
    request_id: Any
    last: int  # the last event it has
    wanted: EventFilter
    brief: bool = False  # sent only the last event's number
    told_at: float = -1.0  # when it was last sent one (monotonic)


class Followers:
    def __init__(self, journal: Writer, reply: Answer, clock: Clock) -> None:
        self.journal = journal
        self.reply = reply
        self.clock = clock
        self._timer: Any = None  # a brief follower's delayed message is due then
        self._due = False  # the timer fired: push to the brief followers
        self._by_conn: dict[int, list[Follower]] = {}  # by id(): connections are not hashable
        self._sent = 0  # the last event every follower has been sent (see `push`)

    def refusal(self, conn: Connection, brief: bool) -> str | None:
        """Why `conn` may not follow (None: it may): a connection follows once, and
        the followers sent events are bounded, as each costs a query a turn."""
        if id(conn) in self._by_conn:
            return "this connection follows the events already; open another"
        full = sum(not f.brief for followers in self._by_conn.values() for f in followers)
        if not brief and full >= MAX_FOLLOWERS:
            return f"too many clients follow the events ({MAX_FOLLOWERS}); try again later"
        return None

    def follow(self, conn: Connection, request_id: Any, since: int, wanted: EventFilter,
               brief: bool = False) -> None:  # fmt: skip
        """Follow from event `since` (committed ones are sent at the turn's end)."""
        follower = Follower(conn, request_id, since, wanted, brief)
        self._by_conn.setdefault(id(conn), []).append(follower)
        self._sent = min(self._sent, since)

    def forget(self, conn: Any) -> None:
        self._by_conn.pop(id(conn), None)

    def __len__(self) -> int:
        return sum(len(followers) for followers in self._by_conn.values())

    def push(self) -> bool:
        """After a commit: each follower gets the events it has not had yet (whether any
        was sent). Called with no transaction open: what is read is what was committed."""
        last = self.journal.last_event
        if last <= self._sent and not self._due:
            return False  # the turn wrote no event (an idle or a busy daemon alike)
        self._due = False
        reader = self.journal.reader
        told = False
        for conn_id, followers in list(self._by_conn.items()):
            for follower in list(followers):
                if follower.last < last:
                    told = True
                    if not self._send(reader, follower, last):
                        followers.remove(follower)
            if not followers:
                del self._by_conn[conn_id]
        self._sent = last
        return told

    def _tell_briefly(self, follower: Follower, last: int) -> None:
        """Send the last event's number, unless one went less than BRIEF_EVERY ago or
        is still unread: then a timer's turn sends it (the timer does nothing itself:
        the turn pushes)."""
        now = self.clock.now()
        due = follower.told_at + BRIEF_EVERY
        if follower.conn.unsent:  # it reads slowly, or not at all: ask again later
            due = max(due, now + UNREAD_RETRY)
        if now < due:
            if self._timer is None:
                self._timer = self.clock.call_at(due, self._timer_fired)
            return
        self.reply(follower.conn, follower.request_id, {"ok": True, "last": last})
        follower.last, follower.told_at = last, now

    def _timer_fired(self) -> None:
        self._timer = None
        self._due = True

    def _send(self, reader: Any, follower: Follower, last: int) -> bool:
        """Send `follower` its events up to `last`; False if it is behind instead."""
        if follower.brief:
            self._tell_briefly(follower, last)
            return True
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
