"""A pool process's descriptors: only its own, and standard streams that stay in place.

A pool is forked from the supervisor, which holds the journal's files, its selector,
clients' and other pools' sockets, the checker's pipes...: a job could reach any of
them through /proc/self/fd. So the pool closes every descriptor but its stdio and its
channel at once, whatever the supervisor holds (a list of what to close would miss
what is added later). One kind is kept: SQLite's WAL indexes (`-shm` files). SQLite
shares one per database among the connections of a process, in memory the fork
copied, with its descriptor: a job that opens the journal (gsup's API does, to read
a result) would use that descriptor, closed or taken by another file. The index holds
no data (the journal and its WAL are closed), and it is mapped into the process
anyway.

A job may close 0, 1 or 2 (`os.close(1)`); the next `open` in the process would then
take that number, and whatever writes to "stdout" (a command a later job runs without
capturing it, C code) would write into that file. The pool puts them back after each
job (`Stdio.restore`), and opens its own files above 2 (`above_stdio`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys

STDIO = (0, 1, 2)


def above_stdio(fd: int) -> int:
    """`fd`, or a copy of it above 2 if it is one of 0, 1, 2 (then `fd` is closed)."""
    if fd > 2:
        return fd
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return high


def open_above_stdio(path: str, flags: int) -> int:
    """An `opener` for `open()`: never 0, 1 or 2, even while a job has closed them."""
    return above_stdio(os.open(path, flags | os.O_CLOEXEC, 0o666))


def channel_above_stdio(sock: socket.socket) -> socket.socket:
    """The channel, moved above 2 if the supervisor had its stdio closed when it made
    it: a job's `os.close(1)` must not close it, nor a write to stdout land in it."""
    if sock.fileno() > 2:
        return sock
    moved = socket.socket(fileno=above_stdio(sock.detach()))
    moved.setblocking(True)
    return moved


def _highest_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return os.sysconf("SC_OPEN_MAX")


def wal_indexes() -> set[int]:
    """The descriptors of SQLite WAL indexes (see the module's doc)."""
    found = set()
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}").endswith("-shm"):
                    found.add(int(name))
    return found


def close_all_but(keep: set[int]) -> None:
    """Close every descriptor not in `keep` (close_range: the number open costs nothing)."""
    low = 0
    for fd in [*sorted(keep), _highest_fd() + 1]:
        if low < fd:  # closerange(n, n) would close them all: close_range(n, n - 1)
            os.closerange(low, fd)
        low = fd + 1


class Stdio:
    """The pool's 0 (/dev/null), 1 and 2 (the supervisor's), kept in place."""

    def __init__(self) -> None:
        """Call with only the stdio and the channel open: the copies kept to put
        them back come right above them."""
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        os.dup2(null, 0)  # not the terminal the daemon may have been started from
        for fd in (1, 2):  # a supervisor started with these closed: nowhere to write
            if not _is_open(fd):
                os.dup2(null, fd)
        os.close(null)
        self._copies = {fd: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in STDIO}
        # The stdin multiprocess opened (above 2) is closed by now: read 0 instead.
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115

    def restore(self) -> None:
        """Put back any of 0, 1, 2 a job closed: three cheap syscalls when none was."""
        for fd in STDIO:
            if not _is_open(fd):
                self._reopen(fd)

    def _reopen(self, fd: int) -> None:
        """F_DUPFD, not dup2: if another thread's `open` took the number meanwhile, it
        keeps it (dup2 would close its file under it)."""
        try:
            placed = fcntl.fcntl(self._copies[fd], fcntl.F_DUPFD, fd)
            if placed != fd:
                os.close(placed)
        except OSError:
            pass  # a job closed our copy too: it stays closed


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True
