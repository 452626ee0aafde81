"""The journal's check at start: SQLite's quick_check, in a child process, while the
daemon answers its clients.

The check reads the whole file, about a second per million jobs, so it does not hold
up the start; jobs are held back until it has passed instead, so that a damaged
journal stops the daemon before it has started anything (jobs it would have to halt,
and whose deaths would count against them as poison at every start). Damage found
later, when the daemon reads a bad page, stops it the same way (see daemon.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import gsup
from gsup.journal.health import FOUND
from gsup.supervisor.loop import Loop, say


class JournalCheck:
    """Runs the checker and reports to `passed` or `damaged(findings)`, once."""

    def __init__(self, journal: Path, loop: Loop, passed: Callable[[], None],
                 damaged: Callable[[list[str]], None]) -> None:  # fmt: skip
        self.journal = journal
        self.loop = loop
        self.passed = passed
        self.damaged = damaged
        self.done = False
        self._process: subprocess.Popen[bytes] | None = None
        self._output = bytearray()
        self._started = 0.0

    def start(self) -> None:
        self._started = self.loop.now()
        package_root = str(Path(gsup.__file__).resolve().parent.parent)  # this very gsup
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [package_root, os.environ.get("PYTHONPATH")]))}  # fmt: skip
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-m", "gsup.journal.health", str(self.journal)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
            )  # fmt: skip
        except OSError as exc:
            self._unchecked(f"cannot start it: {exc}")
            return
        assert self._process.stdout is not None
        self.loop.watch(self._process.stdout, self._readable)

    def _readable(self, events: int) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        data = os.read(process.stdout.fileno(), 1 << 16)
        if data:
            self._output += data
            return
        self.loop.unwatch(process.stdout)
        process.stdout.close()
        status = process.wait()
        findings = self._output.decode("utf-8", "replace").splitlines()
        if status == 0:
            say(f"the journal passed its check ({self.loop.now() - self._started:.1f}s)")
            self._report(self.passed)
        elif status == FOUND and findings:
            self._report(lambda: self.damaged(findings))
        else:
            self._unchecked(f"the checker ended with status {status}")

    def _unchecked(self, why: str) -> None:
        """The check could not be made: the daemon goes on without it, as before checks."""
        say(f"the journal was not checked ({why}); going on: damage is found as it is read")
        self._report(self.passed)

    def _report(self, report: Callable[[], None]) -> None:
        self.done = True
        report()

    def close(self) -> None:
        """The daemon is stopping: a check still under way is ended."""
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            process.wait()
            if process.stdout is not None and not process.stdout.closed:
                self.loop.unwatch(process.stdout)
                process.stdout.close()
