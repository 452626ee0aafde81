"""The supervisor's children (pool processes, the outputs' watcher), forked: a plain
os.fork, so that the child holds nothing it did not ask for (multiprocess's Process
kept two pipes of its own open in the child, and its `join` relies on one of them),
reaped through its pidfd, which the supervisor watches anyway; and what each child
does first to hold only its own (`leave_supervisor`)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from gsup.executors.local.descriptors import STDIO, channel_above_stdio, close_all_but

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


class Forked:
    def __init__(self, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.target = target
        self.args = args
        self.pid = 0
        self.exitcode: int | None = None  # as multiprocess's: -N if killed by signal N

    def start(self) -> None:
        pid = os.fork()
        if pid == 0:
            self._child()
        self.pid = pid

    def _child(self) -> None:
        """Run the target and exit; never return into the supervisor's code."""
        code = 1
        try:
            self.target(*self.args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
                sys.stderr.flush()
        finally:
            os._exit(code)

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for it to end, and reap it once it has."""
        if self.exitcode is not None or not self.pid:
            return
        try:
            pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:  # gone already: an unreaped zombie still has a pidfd
            return
        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exitcode = os.waitstatus_to_exitcode(status)


def leave_supervisor(sock: socket.socket, name: bytes, keep: Iterable[int] = ()) -> socket.socket:
    """In a child just forked: hold only stdio, its channel to the supervisor (returned,
    moved above 2 if need be) and `keep`; die with the supervisor; take the signals
    the supervisor catches back to their defaults, in a process group of its own (a
    Ctrl-C at the terminal is for the supervisor); be `name` in ps and /proc/PID/comm."""
    signal.set_wakeup_fd(-1)  # the supervisor's: before it is closed, or its number reused
    # The supervisor's journal, sockets, selector... are no child's to reach.
    sock = channel_above_stdio(sock)
    close_all_but({*STDIO, sock.fileno(), *keep})
    with contextlib.suppress(OSError, AttributeError):  # not Linux: end-of-file still ends it
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        libc.prctl(_PR_SET_NAME, name)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)  # not the supervisor's: a child dies of them
    if os.getppid() == 1:
        os._exit(0)  # the supervisor died before PDEATHSIG was set
    return sock
