"""Tasks from Python (`from gsup import Task, Transform, tasks`) and for the CLI: submit
a checked task, follow it through the journal.

    task = Task("sweep", [Transform("gen", target="mymod:gen", units=[[1], [2]])])
    handle = tasks.submit(task)
    handle.wait()  # its end state
"""

from __future__ import annotations

import os
from typing import Any

from gsup.client import Client, DaemonFacade
from gsup.errors import GsupError, WaitTimeout
from gsup.journal import queries
from gsup.specs import cli_import_path, python_path
from gsup.tasks import spec as specs
from gsup.tasks.records import TransformProgress, progress, task_row


class TaskHandle:
    """A submitted task; its state and progress are read from the journal."""

    def __init__(self, client: Client, task: int) -> None:
        self._client = client
        self.id = task

    def __repr__(self) -> str:
        return f"<task {self.id}: {self.state}>"

    def row(self) -> dict[str, Any]:
        """Its row: id, name, state, float, created, ended, reason."""
        with queries.read_journal(self._client.paths.home) as conn:
            row = task_row(conn, self.id)
        if row is None:
            raise GsupError(f"no task {self.id}")
        return row

    @property
    def state(self) -> str:
        return self.row()["state"]

    def progress(self) -> list[TransformProgress]:
        """Each transform's state and its units counted by state."""
        with queries.read_journal(self._client.paths.home) as conn:
            return progress(conn, self.id)

    def wait(self, timeout: float | None = None) -> str:
        """Its end state, once it has one (the daemon answers as it ends); WaitTimeout
        after `timeout` seconds."""
        try:
            return self._client.wait_task(self.id, timeout)
        except WaitTimeout:
            raise WaitTimeout(f"task {self.id} is still {self.state} after {timeout:g}s") from None

    def control(self, action: str, unit: str | None = None) -> str:
        """pause, resume, retry_failed, retry_merge, reset (of `unit`, TRANSFORM/INDEX):
        what was done."""
        reply = self._client.request("task_control", task=self.id, action=action, unit=unit)
        return reply["said"]


class Tasks(DaemonFacade):
    """The daemon's tasks: `tasks.submit(task)`, `tasks.get(id)`; at a prompt, the
    `gsup task list` table."""

    def submit(self, task: specs.Task) -> TaskHandle:
        """Check a task (its targets imported as `gsup add --check` does) and submit it."""
        specs.check(task)
        specs.check_targets(task)
        return TaskHandle(self.client, submit(self.client, task, python_path()))

    def get(self, task: int) -> TaskHandle:
        handle = TaskHandle(self.client, task)
        handle.state  # noqa: B018 (GsupError if there is none)
        return handle

    def __repr__(self) -> str:
        from gsup.config import TASKS_LISTED, Paths, resolve_home
        from gsup.render import tasks_for

        try:
            return tasks_for(Paths(resolve_home(self._home)), TASKS_LISTED)
        except Exception as exc:  # a repr must not raise at a prompt
            return f"<gsup tasks: {exc}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def submit(client: Client, task: specs.Task, import_path: list[str]) -> int:
    """Send a checked task with where it comes from; its id."""
    context = {"cwd": str(task.base), "path": import_path, "env": dict(os.environ)}
    return client.request("task_submit", task=specs.task_to_json(task), context=context)["task"]


def cli_path(task: specs.Task) -> list[str]:
    """The import path of a task file's calls: its folder, then $PYTHONPATH, as
    `python` run there would have it (and as `gsup add` does)."""
    return cli_import_path(str(task.base))
