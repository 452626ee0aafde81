"""The daemon's side of retention (see gsup/retention.py): `prune` requests and the
daily prune under `keep_days`, done a batch per turn of the loop, so that the loop
is never held for long; the WAL checkpointed and truncated once a prune is done."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsup import retention
from gsup.config import DAY
from gsup.journal.writer import Writer
from gsup.retention import Scan
from gsup.settings import Settings
from gsup.supervisor.loop import Loop, say

FIRST_DAILY = 60.0  # seconds after the start before the first daily prune
CHECKPOINT_WAIT_MS = 100  # how long the loop waits for readers to let the WAL be truncated


@dataclass
class Task:
    scan: Scan
    conn: Any = None  # who asked (None: the daily prune)
    request_id: Any = None
    files: list[Path] | None = None  # the last batch's output files: they go once it committed


class Pruner:
    def __init__(self, settings: Settings, journal: Writer, loop: Loop,
                 reply: Callable[[Any, Any, dict[str, Any]], None]) -> None:  # fmt: skip
        self.settings = settings
        self.paths = settings.paths
        self.journal = journal
        self.loop = loop
        self.reply = reply
        self.tasks: deque[Task] = deque()
        self.timer: Any = None
        self.checkpoint_due = False

    def start_daily(self) -> None:
        """Under keep_days: a first prune soon after the start, then one every day."""
        if self.settings.keep_days is not None:
            first = min(FIRST_DAILY, self.settings.prune_every)
            self.loop.call_at(self.loop.now() + first, self._daily)

    def _daily(self) -> None:
        keep_days = self.settings.keep_days
        assert keep_days is not None
        self.loop.call_at(self.loop.now() + self.settings.prune_every, self._daily)
        if not self.journal.failure:
            self.journal.log_command("prune", {"keep_days": keep_days}, None, None)
            self.prune(keep_days * DAY, None)

    def prune(self, older_than: float, state: str | None, conn: Any = None,
              request_id: Any = None) -> None:  # fmt: skip
        """Start pruning (after those already under way); the reply comes when done."""
        self.journal.mark_ids()  # the ids of the jobs it deletes are never given again
        self.tasks.append(Task(Scan(time.time() - older_than, state), conn, request_id))
        self._schedule()

    def _schedule(self) -> None:
        """The next batch, at the next firing of timers (one batch per turn)."""
        if self.timer is None and self.tasks:
            self.timer = self.loop.call_at(self.loop.now(), self._step)

    def _step(self) -> None:
        self.timer = None
        task = self.tasks[0]
        self._remove_logs(task)
        if task.scan.done:
            self.journal.forget(task.scan.cutoff, task.scan.state)
            self.tasks.popleft()
            self._finish(task)
        else:
            deleted = retention.next_batch(self.journal.reader, task.scan)
            task.files = retention.output_files(self.journal.reader, self.paths, deleted)
            self.journal.delete_jobs(deleted)
            task.scan.jobs += len(deleted)
        self._schedule()

    def _remove_logs(self, task: Task) -> None:
        """The logs of the batch that the last turn committed."""
        if task.files:
            task.scan.logs += retention.remove_logs(task.files)
        task.files = None

    def _finish(self, task: Task) -> None:
        scan = task.scan
        self.checkpoint_due = self.checkpoint_due or scan.jobs > 0
        if scan.jobs or task.conn is not None:
            which = f"{scan.state} jobs" if scan.state else "ended jobs"
            ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(scan.cutoff))
            say(f"pruned {scan.jobs} {which} that ended before {ended}, {scan.logs} log files")
        if task.conn is not None:
            self.reply(task.conn, task.request_id, {"ok": True, "jobs": scan.jobs,
                                                    "logs": scan.logs})  # fmt: skip

    def after_sync(self) -> None:
        """Once a prune is done and the turn on the disk: checkpoint the WAL, and
        truncate it, if readers let it be done at once."""
        if self.checkpoint_due and self.journal.checkpoint(CHECKPOINT_WAIT_MS) is not None:
            self.checkpoint_due = False

    def stop(self) -> None:
        """The daemon is stopping: prunes under way end where they are."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for task in self.tasks:
            if task.files:
                task.scan.logs += retention.remove_logs(task.files)
            if task.conn is not None:
                self.reply(task.conn, task.request_id, {"ok": False, "error": (
                    f"the daemon is stopping; {task.scan.jobs} jobs were pruned, the rest"
                    " are left: prune again once it has restarted")})  # fmt: skip
        self.tasks.clear()
