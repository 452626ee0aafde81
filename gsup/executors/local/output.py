"""Per-job output in a pool process whose threads share one sys.stdout.

`contextlib.redirect_stdout` would swap sys.stdout for every thread at once. Instead
the pool installs, once, stand-ins for sys.stdout and sys.stderr that write to the
files of the attempt running on the calling thread, and to the pool's own streams
for any other thread. An attempt's files are created on its first write, and written
line by line, so that `gsup logs -f` sees each line as it is printed, within a
`LogBudget` (what a job writes through `.buffer` or the file descriptor is not counted).
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from gsup.executors.local.descriptors import open_above_stdio
from gsup.executors.local.guard import LogBudget


class RoutedStream(io.TextIOBase):
    def __init__(
        self, fallback: IO[str], path_of: Callable[[int, int], Path], max_log: int, min_free: int
    ) -> None:
        self._fallback = fallback
        self._path_of = path_of
        self._limits = max_log, min_free  # see LogBudget
        self._jobs: dict[int, tuple[int, int]] = {}  # thread id -> (job id, attempt id)
        self._files: dict[int, IO[str]] = {}  # thread id -> open file
        self._budgets: dict[int, LogBudget] = {}  # thread id -> what its file may take

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def _target(self) -> IO[str]:
        thread = threading.get_ident()
        job = self._jobs.get(thread)
        if job is None:
            return self._fallback
        file = self._files.get(thread)
        if file is None:
            # Kept open across writes; `detach` closes it when the job ends.
            file = open(self._path_of(*job), "a", encoding="utf-8", buffering=1,  # noqa: SIM115
                        opener=open_above_stdio)  # fmt: skip
            self._files[thread] = file
        return file

    def write(self, text: str) -> int:
        file = self._target()
        budget = self._budgets.get(threading.get_ident())
        if budget is None:  # not a job's: the pool's own stream
            return file.write(text)
        data: str | bytes = text if text.isascii() else text.encode("utf-8")
        kept = budget.allow(len(data), file.fileno())
        if kept == len(data):
            return file.write(text)
        head = data[:kept]
        if isinstance(head, bytes):
            head = head.decode("utf-8", "ignore")  # a character cut in two is left out
        file.write(head + budget.dropped_line().decode())
        return len(text)  # what is dropped is not the job's error

    def flush(self) -> None:
        self._target().flush()

    def fileno(self) -> int:
        return self._target().fileno()

    @property
    def buffer(self) -> IO[bytes]:  # type: ignore[override]
        """The binary stream under the job's (or the pool's) text stream, for
        `sys.stdout.buffer.write(...)`; what was written as text goes first."""
        target = self._target()
        target.flush()
        return target.buffer  # type: ignore[attr-defined]

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def attach(self, job: int, attempt: int) -> None:
        self._jobs[threading.get_ident()] = (job, attempt)
        self._budgets[threading.get_ident()] = LogBudget(*self._limits)

    def detach(self) -> None:
        thread = threading.get_ident()
        self._jobs.pop(thread, None)
        self._budgets.pop(thread, None)
        file = self._files.pop(thread, None)
        if file is not None:
            file.close()


class OutputRouter:
    """Routes the calling thread's sys.stdout/sys.stderr to one job's files."""

    def __init__(
        self, path_of: Callable[[int, str, int], Path], max_log: int, min_free: int
    ) -> None:
        """Each of a job's files takes `max_log` bytes at most, and nothing while the
        disk has less than `min_free` bytes free (see LogBudget)."""
        self.stdout = RoutedStream(
            sys.stdout, lambda job, attempt: path_of(job, "out", attempt), max_log, min_free
        )
        self.stderr = RoutedStream(
            sys.stderr, lambda job, attempt: path_of(job, "err", attempt), max_log, min_free
        )

    def install(self) -> None:
        sys.stdout = self.stdout
        sys.stderr = self.stderr

    @contextmanager
    def capture(self, job: int, attempt: int) -> Iterator[None]:
        self.install()  # again: an earlier job may have replaced sys.stdout
        self.stdout.attach(job, attempt)
        self.stderr.attach(job, attempt)
        try:
            yield
        finally:
            self.stdout.detach()
            self.stderr.detach()


def tail(path: Path, limit: int = 64 * 1024) -> str:
    """The last `limit` bytes of a file, as text ("" if there is none)."""
    try:
        with open(path, "rb") as file:
            file.seek(0, io.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - limit))
            data = file.read()
    except OSError:  # none, or not readable (a folder in its place): no output to keep
        return ""
    text = data.decode("utf-8", "replace")
    if size <= limit:
        return text
    return f"[… first {size - limit:,} bytes cut; `gsup logs` has them all]\n{text}"
