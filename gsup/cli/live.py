"""Live views: redrawn when the daemon pushes events, with rich's live display.

A thread follows the event stream (gsup/events.py) and wakes the drawing loop; the
loop redraws at most REDRAWS times a second (a drain brings thousands of events a
second, a view needs a few), and once a second anyway, for the clocks a view shows
(a timeout's seconds left, a rate). Nothing polls the journal between events.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from gsup.errors import GsupError
from gsup.journal.queries import ALL_EVENTS, EventFilter

REDRAWS = 10  # at most, a second
TICK = 1.0  # seconds between redraws without events


class EventTicker:
    """Follows the event stream in a thread; `wait` returns once events came (or after
    `timeout`), with the events since the last call. An error ends the stream: `wait`
    raises it."""

    def __init__(self, home: str | Path | None, wanted: EventFilter = ALL_EVENTS) -> None:
        from gsup.events import events

        self._stream = events(home, None, wanted, follow=True)  # raises now if it cannot
        self._pending: list[Any] = []
        self._came = threading.Event()
        self._lock = threading.Lock()
        self.error: BaseException | None = None
        threading.Thread(target=self._follow, daemon=True, name="gsup-events").start()

    def _follow(self) -> None:
        try:
            for batch in self._stream:
                with self._lock:
                    self._pending += batch
                self._came.set()
        except BaseException as exc:  # the daemon went away: the view says so
            self.error = exc
            self._came.set()

    def wake(self) -> None:
        """Return from `wait` now (what is awaited came another way)."""
        self._came.set()

    def wait(self, timeout: float) -> list[Any]:
        self._came.wait(timeout)
        with self._lock:
            self._came.clear()
            taken, self._pending = self._pending, []
        error = self.error
        if error is not None and not taken:
            raise error if isinstance(error, GsupError) else GsupError(str(error))
        return taken


def watch(home: str | Path | None, draw: Callable[[], str],
          wanted: EventFilter = ALL_EVENTS, ended: Callable[[], bool] = lambda: False
          ) -> None:  # fmt: skip
    """Show `draw()` (text, ANSI colours allowed) and redraw it on events until
    `ended()` or Ctrl-C."""
    from rich.text import Text

    if not sys.stdout.isatty():
        raise GsupError("--watch draws on a terminal; in a pipe, read gsup events --follow")

    def text() -> Text:  # lines are cut to the terminal's width, never wrapped
        return Text.from_ansi(draw(), no_wrap=True, overflow="crop")

    ticker = EventTicker(home, wanted)
    with live_display(text()) as update:
        for _ in redraws(ticker):
            update(text())
            if ended():
                return


def redraws(ticker: EventTicker) -> Iterator[list[Any]]:
    """The events since the last redraw, at most REDRAWS times a second, and an empty
    list each TICK without any."""
    while True:
        began = time.monotonic()
        events = ticker.wait(TICK)
        yield events
        rest = 1 / REDRAWS - (time.monotonic() - began)
        if rest > 0 and events:
            time.sleep(rest)  # let more events gather: one redraw for them all


def bar_redraws(ticker: EventTicker, bars: Any) -> Iterator[list[Any]]:
    """`redraws` for progress bars: they end, the bars taken down, if the events
    cannot be followed (too many clients follow them): the caller waits without."""
    try:
        yield from redraws(ticker)
    except GsupError:
        bars.stop()


@contextmanager
def live_display(first: Any) -> Iterator[Callable[[Any], None]]:
    """rich's Live display of `first`; yields its update. Ctrl-C or SIGTERM leaves it
    drawn, and the terminal as it was (its cursor shown again)."""
    from rich.live import Live

    signal.signal(signal.SIGTERM, _interrupt)
    with Live(first, auto_refresh=False, transient=False) as live, suppress(KeyboardInterrupt):
        yield lambda renderable: live.update(renderable, refresh=True)


def _interrupt(number: int, frame: Any) -> None:
    raise KeyboardInterrupt


# --- progress bars ----------------------------------------------------------------------


def progress_bars(what: str) -> Any:
    """rich's Progress with a bar, N/M, a rate of `what`s a second and the ETA, on
    stderr (stdout keeps what the command prints)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-" if speed is None else f"{speed:.1f} {what}/s")

    signal.signal(signal.SIGTERM, _interrupt)  # the bars' end shows the cursor again
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    Rate(), TimeRemainingColumn(), console=Console(stderr=True),
                    auto_refresh=False)  # fmt: skip
