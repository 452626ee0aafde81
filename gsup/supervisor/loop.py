"""The supervisor's one thread: file descriptors, timers and signals, without polling.

Everything the supervisor waits on is either a file descriptor in one selector (the
listening socket, clients, pools' sockets and pidfds, the signal pipe) or a timer in
one heap (job timeouts, stop graces, pool restarts, delayed retries, the shutdown
deadline, systemd's watchdog). A turn waits until the first of them.
Deadlines are monotonic; times stored or shown come from the wall clock.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import selectors
import signal
import time
import traceback
from collections.abc import Callable
from typing import Any

MAX_WAIT = 3600.0  # select() cannot wait for weeks; waking once an hour costs nothing


def say(message: str) -> None:
    """A line for the operator (the terminal, or journald under systemd). Whoever reads
    it may be gone: a daemon must not fall over a closed stdout."""
    with contextlib.suppress(OSError, ValueError):
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} gsup: {message}", flush=True)


def report_bug() -> None:
    """The traceback of the exception being handled, on stderr if it is still there."""
    with contextlib.suppress(OSError, ValueError):
        traceback.print_exc()


class Timer:
    __slots__ = ("callback", "cancelled", "timers", "when")

    def __init__(self, when: float, callback: Callable[[], None], timers: Timers) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False
        self.timers = timers

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled, self.callback = True, None  # what it held can go at once
            self.timers.cancelled += 1


class Timers:
    """Callbacks due at monotonic times. A cancelled one stays in the heap until it
    comes up, or until cancelled ones are most of the heap (one timeout per job)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.now = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self.cancelled = 0  # of the timers in the heap

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        if self.cancelled > 64 and self.cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self.cancelled = 0
        timer = Timer(when, callback, self)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            self._pop()
        return self._heap[0][0] if self._heap else None

    def fire_due(self) -> None:
        now = self.now()
        while self._heap and self._heap[0][0] <= now:
            timer = self._pop()
            callback = timer.callback
            if callback is not None:
                timer.cancelled = True  # out of the heap: a late cancel must not count it
                callback()

    def __len__(self) -> int:
        return len(self._heap)

    def _pop(self) -> Timer:
        _, _, timer = heapq.heappop(self._heap)
        if timer.cancelled:
            self.cancelled -= 1
        return timer


class Loop:
    """The selector, the timers and the signal pipe of the supervisor (see base.Loop)."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self.signals: list[int] = []
        self._wakeup_r = -1

    def now(self) -> float:
        return self.timers.now()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return self.timers.call_at(when, callback)

    def watch(self, fileobj: Any, callback: Callable[[int], None]) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def unwatch(self, fileobj: Any) -> None:
        self.selector.unregister(fileobj)

    def want_write(self, fileobj: Any, wanted: bool) -> None:
        """Wake for writability only while output is pending."""
        key = self.selector.get_key(fileobj)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0)
        if key.events != events:
            self.selector.modify(fileobj, events, key.data)

    def say(self, message: str) -> None:
        say(message)

    # --- signals ---------------------------------------------------------------------

    def catch_signals(self, numbers: tuple[int, ...]) -> None:
        """Note these signals for `take_signals`; a signal wakes the loop through a pipe."""
        self._wakeup_r, wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        for number in numbers:
            signal.signal(number, lambda number, frame: self.signals.append(number))
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.watch(self._wakeup_r, lambda mask: self._drain_wakeups())

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 512):
                pass

    def take_signals(self) -> list[int]:
        taken, self.signals = self.signals, []
        return taken

    def sleep_unless_signalled(
        self,
        seconds: float,
        numbers: tuple[int, ...],
        serving: Callable[[], list[tuple[Any, int, Callable[[int], None]]]] = list,
    ) -> bool:
        """Wait `seconds`, or less if one of these signals comes; whether one came
        (others are kept for `take_signals`). Meanwhile, serve only what `serving`
        gives: (file object, events, callback), asked anew after each wake-up."""
        deadline = self.now() + seconds
        while not any(number in numbers for number in self.signals):
            left = deadline - self.now()
            if left <= 0:
                break
            with selectors.DefaultSelector() as selector:
                selector.register(self._wakeup_r, selectors.EVENT_READ)
                for fileobj, events, callback in serving():
                    selector.register(fileobj, events, callback)
                for key, mask in selector.select(left):
                    if key.data is not None:
                        key.data(mask)
            self._drain_wakeups()
        return any(number in numbers for number in self.signals)

    # --- a turn's first steps ------------------------------------------------------------

    def wait(self) -> None:
        """Wait for the first file descriptor or timer; run the descriptors' callbacks."""
        deadline = self.timers.next_deadline()
        timeout = None if deadline is None else min(max(0.0, deadline - self.now()), MAX_WAIT)
        for key, mask in self.selector.select(timeout):
            key.data(mask)

    def fire_timers(self) -> None:
        self.timers.fire_due()
