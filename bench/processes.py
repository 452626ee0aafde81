"""Long-running processes the bench starts: each is stopped in a `finally`, by its pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from bench.measure import descendants

STOP_TIMEOUT = 30.0


def console_script(name: str, module: str) -> list[str]:
    """The command that runs `name` with this interpreter: the console script installed
    next to sys.executable (what a user runs), else `python -m module`."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", module]


class Spawned:
    """A child process whose output is read by a thread (so it never blocks on a full
    pipe), with the time at which a line containing `ready_text`, or each of
    `timed_texts`, first appeared."""

    def __init__(
        self,
        argv: Sequence[str],
        ready_text: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stop_signal: int = signal.SIGTERM,
        timed_texts: Sequence[str] = (),
    ) -> None:
        self.argv = list(argv)
        self.ready_text = ready_text
        self.timed_texts = [text for text in (ready_text, *timed_texts) if text]
        self.cwd = cwd
        self.env = env
        self.stop_signal = stop_signal
        self.process: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.seen_at: dict[str, float] = {}
        self.output: deque[str] = deque(maxlen=200)  # the last lines, for error messages
        self._seen = threading.Condition()
        self._exited = False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def ready_at(self) -> float | None:
        return self.seen_at.get(self.ready_text) if self.ready_text else None

    def start(self) -> Spawned:
        self.started_at = time.perf_counter()
        self.process = subprocess.Popen(
            self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            now = time.perf_counter()
            for text in self.timed_texts:
                if text not in self.seen_at and text in line:
                    with self._seen:
                        self.seen_at[text] = now
                        self._seen.notify_all()
            self.output.append(line.rstrip("\n"))
        with self._seen:  # it exited: let a waiter see that
            self._exited = True
            self._seen.notify_all()

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds from spawn to the ready line."""
        assert self.ready_text is not None
        return self.wait_seen(self.ready_text, timeout)

    def wait_seen(self, text: str, timeout: float = 60.0) -> float:
        """Seconds from spawn to the first line containing `text` (one of timed_texts)."""
        with self._seen:
            self._seen.wait_for(lambda: text in self.seen_at or self._exited, timeout)
        if text not in self.seen_at:
            self.stop()
            tail = "\n".join(self.output)
            raise RuntimeError(f"{' '.join(self.argv)} never said {text!r}:\n{tail}")
        return self.seen_at[text] - self.started_at

    def stop(self) -> None:
        """Ask it to stop; kill it, and what it started, if it does not in time."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # Still alive, so what runs below it now is ours; children first.
            for pid in reversed(descendants(self.process.pid)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def __enter__(self) -> Spawned:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
