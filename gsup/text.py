"""A job's texts as a terminal may show them. Kept import-light: commands that print
a job's text without a table (`why`, `events`, `task show`) import it alone."""

from __future__ import annotations

import re

# What a terminal acts on or hides (C0, DEL, C1, zero-width and bidi marks): in a job's
# texts it is shown as its escape, so that a text cannot clear the screen or reorder a line.
HIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def visible(text: str) -> str:
    """A job's text as it may be printed: hidden characters as their escapes (\\x1b)."""
    return HIDDEN.sub(lambda found: repr(found.group())[1:-1], text)


def count(number: int, thing: str) -> str:
    """`1 job`, `2 jobs`."""
    return f"{number:,} {thing}{'s' * (number != 1)}"


def stopping_line(in_flight: int, grace: float) -> str:
    """What a stop says, in the daemon's output and on the command line."""
    verb = "gets" if in_flight == 1 else "get"
    return f"stopping: {count(in_flight, 'job')} in flight {verb} {grace:g}s"


def visible_lines(text: str) -> str:
    """`visible`, keeping the text's line breaks (a traceback)."""
    return "\n".join(map(visible, text.split("\n")))
