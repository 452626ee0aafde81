"""Clients following the event stream (`gsup events --follow`, live views, the web).

A follower names the last event it has; after each turn is committed, the daemon sends
it the events numbered after that one (of its job or task, if it names one), in one
message. Nothing is sent on a turn that wrote no event, and nobody polls.

The daemon never buffers much for a follower: one that is more than PAGE events
behind, or has not read what it was sent, is told `behind` (with the last event it
was sent) and is followed no more. Its client reads the rest from the journal file,
which costs the daemon nothing, and follows again from there: no event is missed or
repeated, however slow the reader.

A brief follower (`gsup web`) is sent only the number of the last event: all brief
followers at once, at most every BRIEF_EVERY seconds (a timer sends the last one of
a burst). It reads the events it wants from the journal itself, as often as it
likes: it costs the daemon no query, and during a drain a few messages a second.
One that leaves them unread is sent none until it has read them.

A connection follows once; a user follows at most PER_USER times, and everyone at
most MAX_FOLLOWERS times: what one user opens cannot take them all.
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
MAX_UNREAD = 1 << 20  # bytes a follower may leave unread before it is told `behind`
BRIEF_EVERY = 0.05  # seconds between two rounds of messages to brief followers, at least
UNREAD_RETRY = 1.0  # seconds until brief followers that had not read are tried again
MAX_FOLLOWERS = 1_000  # connections following at once, of everyone
PER_USER = 100  # of one uid


@dataclass(eq=False)
class Follower:
    conn: Connection
    request_id: Any
    last: int  # the last event it has
    wanted: EventFilter


class Followers:
    def __init__(self, journal: Writer, reply: Answer, clock: Clock) -> None:
        self.journal = journal
        self.reply = reply
        self.clock = clock
        # By id() of their connection (connections are not hashable).
        self._full: dict[int, Follower] = {}  # sent the events
        self._brief: dict[int, Follower] = {}  # sent the last one's number
        self._sent = 0  # the last event every full follower has been sent (see `push`)
        self._sent_brief = 0  # the last event of the last round to brief followers
        self._brief_next = 0.0  # monotonic time of the next round to brief followers
        self._brief_due = False  # a brief follower waits for the next round
        self._timer: Any = None  # that round's

    def refusal(self, conn: Connection, brief: bool) -> str | None:
        """Why `conn` may not follow (None: it may)."""
        if id(conn) in self._full or id(conn) in self._brief:
            return "this connection follows the events already; open another"
        everyone = [*self._full.values(), *self._brief.values()]
        if len(everyone) >= MAX_FOLLOWERS:
            return f"too many clients follow the events ({MAX_FOLLOWERS}); try again later"
        if sum(f.conn.uid == conn.uid for f in everyone) >= PER_USER:
            return f"your user follows the events {PER_USER} times already; close some"
        return None

    def follow(self, conn: Connection, request_id: Any, since: int, wanted: EventFilter,
               brief: bool = False) -> None:  # fmt: skip
        """Follow from event `since` (committed ones are sent at the turn's end)."""
        follower = Follower(conn, request_id, since, wanted)
        if brief:
            self._brief[id(conn)] = follower
            self._brief_due = True
        else:
            self._full[id(conn)] = follower
            self._sent = min(self._sent, since)

    def forget(self, conn: Any) -> None:
        self._full.pop(id(conn), None)
        self._brief.pop(id(conn), None)

    def __len__(self) -> int:
        return len(self._full) + len(self._brief)

    def push(self) -> bool:
        """After a commit: followers get the events they have not had yet; whether any
        message was queued. Called with no transaction open, so that what is read is
        what was committed."""
        last = self.journal.last_event
        told = self._push_full(last) if last > self._sent else False
        if self._brief and (self._brief_due or last > self._sent_brief):
            told = self._push_brief(last) or told
        return told

    def _push_full(self, last: int) -> bool:
        reader, told = self.journal.reader, False
        for key, follower in list(self._full.items()):
            if follower.last < last:
                told = True
                if not self._send(reader, follower, last):
                    del self._full[key]
        self._sent = last
        return told

    def _push_brief(self, last: int) -> bool:
        """A round to every brief follower behind, unless one went less than BRIEF_EVERY
        ago: then a timer's turn makes it (the timer does nothing itself: its turn
        pushes). One that has not read the last is tried again UNREAD_RETRY later."""
        now = self.clock.now()
        if now < self._brief_next:
            self._brief_due = True
            self._wake_at(self._brief_next)
            return False
        told, unread = False, False
        for follower in self._brief.values():
            if follower.last >= last:
                continue
            if follower.conn.unsent:
                unread = True
                continue
            self.reply(follower.conn, follower.request_id, {"ok": True, "last": last})
            follower.last, told = last, True
        self._sent_brief, self._brief_next, self._brief_due = last, now + BRIEF_EVERY, unread
        if unread:
            self._wake_at(now + UNREAD_RETRY)
        return told

    def _wake_at(self, when: float) -> None:
        if self._timer is None:
            self._timer = self.clock.call_at(when, self._woken)

    def _woken(self) -> None:
        self._timer = None

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
