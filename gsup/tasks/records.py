"""The task tables (journal/schema.py: tasks, transforms, units): their states, and
the reads that the engine and the CLI share (one definition of each)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

FAILURES_SHOWN = 5  # failed units whose reason `gsup task show` prints, by transform


class TaskState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPLETED_WITH_FAILURES = "completed_with_failures"


TASK_END_STATES = frozenset(
    {TaskState.COMPLETED, TaskState.FAILED, TaskState.COMPLETED_WITH_FAILURES}
)


class UnitState(StrEnum):
    WAITING = "waiting"  # not submitted yet (float, a pause, or its turn has not come)
    SUBMITTED = "submitted"  # its job is queued or running
    DONE = "done"  # its job succeeded and its declared outputs exist
    FAILED = "failed"
    SKIPPED = "skipped"  # never run: its transform failed first


UNIT_STATES = tuple(state.value for state in UnitState)  # plain texts, for JSON and reprs


def end_state(done: int, failed: int, aborted: bool) -> TaskState:
    """How a transform (or a task, by its transforms) ends, from what its units did."""
    if aborted or (failed and not done):
        return TaskState.FAILED
    return TaskState.COMPLETED_WITH_FAILURES if failed else TaskState.COMPLETED


@dataclass
class MergeProgress:
    out: str  # the merged file
    file: str | None  # what there is of it: out, or out.partial (a transform's failed units)
    state: str  # of its last merge: running | done | stale | failed
    merged: int  # units in the file
    size: int | None  # its size after the last merge that landed
    error: str | None  # why the last merge failed

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class TransformProgress:
    id: int
    name: str
    state: str
    reason: str | None
    counts: dict[str, int]  # units by state
    merge: MergeProgress | None = None  # None: no merge has run yet
    failures: list[tuple[int, str]] = field(default_factory=list)  # (index, why), the first

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        failures = [{"unit": idx, "reason": why} for idx, why in self.failures]
        merge = self.merge.to_json() if self.merge else None
        return {"name": self.name, "state": self.state, "reason": self.reason,
                "units": self.counts, "total": self.total, "merge": merge,
                "failures": failures}  # fmt: skip


def task_row(conn: sqlite3.Connection, task: int) -> dict[str, Any] | None:
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute(
            "SELECT id, name, state, float, created, ended, reason FROM tasks WHERE id = ?",
            (task,),
        ).fetchone()
    finally:
        conn.row_factory = None
    return None if row is None else dict(row)


def task_rows(conn: sqlite3.Connection, limit: int) -> list[dict[str, Any]]:
    """The newest tasks first."""
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT id, name, state, float, created, ended, reason FROM tasks"
            " ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
    finally:
        conn.row_factory = None
    return [dict(row) for row in rows]


def progress(conn: sqlite3.Connection, task: int,
             failures: int | None = FAILURES_SHOWN) -> list[TransformProgress]:  # fmt: skip
    """Each transform of a task, in order, with its units counted by state, and the
    reasons of its first `failures` failed units (None: of all)."""
    transforms = conn.execute(
        "SELECT id, name, state, reason FROM transforms WHERE task = ? ORDER BY position",
        (task,),
    ).fetchall()
    counted: dict[int, dict[str, int]] = {
        row[0]: dict.fromkeys(UNIT_STATES, 0) for row in transforms
    }
    for transform, state, count in conn.execute(
        "SELECT transform, state, count(*) FROM units WHERE transform IN"
        " (SELECT id FROM transforms WHERE task = ?) GROUP BY transform, state",
        (task,),
    ):
        counted[transform][state] = count
    return [TransformProgress(id_, name, state, reason, counted[id_], _merge(conn, id_),
                              _failures(conn, id_, failures))
            for id_, name, state, reason in transforms]  # fmt: skip


def _merge(conn: sqlite3.Connection, transform: int) -> MergeProgress | None:
    last = conn.execute(
        "SELECT out, state, error FROM merges WHERE transform = ? AND job != 0"  # 0: a mark
        " ORDER BY id DESC LIMIT 1",
        (transform,),
    ).fetchone()
    if last is None:
        return None
    # The units in the file: those of its last done merge that wrote it anew, and of
    # the done merges that added to it since (a merge's units are all in it once done).
    merged, size = conn.execute(
        "SELECT sum(units), (SELECT size FROM merges WHERE transform = ?1 AND state = 'done'"
        "                    ORDER BY id DESC LIMIT 1)"
        " FROM merges WHERE transform = ?1 AND state = 'done' AND id >= coalesce("
        "  (SELECT max(id) FROM merges WHERE transform = ?1 AND state = 'done' AND full), 0)",
        (transform,),
    ).fetchone()
    out = last[0]
    file = next((f for f in (out, f"{out}.partial") if os.path.exists(f)), None)
    return MergeProgress(out, file, last[1], merged or 0, size, last[2])


def _failures(conn: sqlite3.Connection, transform: int,
              limit: int | None) -> list[tuple[int, str]]:  # fmt: skip
    return conn.execute(
        "SELECT idx, reason FROM units WHERE transform = ? AND state = 'failed'"
        " ORDER BY idx LIMIT ?",
        (transform, -1 if limit is None else limit),
    ).fetchall()
