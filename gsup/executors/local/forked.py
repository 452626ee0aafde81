"""A pool process, forked: a plain os.fork, so that the child holds nothing it did not
ask for (multiprocess's Process kept two pipes of its own open in the child, and its
`join` relies on one of them), and is reaped through its pidfd, which the supervisor
watches anyway."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import traceback
from collections.abc import Callable
from typing import Any


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
