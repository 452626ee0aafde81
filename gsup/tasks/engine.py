"""The task engine: a task's units run as jobs, event-driven, inside the supervisor.

Job ends reach it through the job book's end hook. Each turn, before dispatch,
`settle` records the units those jobs ran, makes the units that chaining brings
(`inputs_from`), submits waiting units while fewer than a task's `float` are in
flight, and ends transforms and tasks. Every write goes through the supervisor's
writer, in the turn's transaction: a unit's job and its `submitted` state are one
commit, so a crash neither loses a unit nor submits one twice.

A unit's retries are its job's (retries, retry_on, the same policy as any job; a
failure that would recur is retried only if asked, see lifecycle.should_retry). A
unit whose job succeeded is done only if each declared output matches a non-empty
file in its output folder; an attempt that failed and is retried has its folder
moved aside first, so that its partial outputs are never taken for the next run's.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shlex
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from gsup.config import pool_for
from gsup.journal import queries
from gsup.journal.writer import Writer, json_dumps
from gsup.lifecycle import RECURRING, StateChange
from gsup.protocol import JobSpec
from gsup.states import END_STATES, State
from gsup.supervisor.jobs import JobBook
from gsup.supervisor.loop import say
from gsup.targets import describe_call, literal_text
from gsup.tasks import spec as specs
from gsup.tasks.landing import Landings
from gsup.tasks.merging import Merging, TransformMerge
from gsup.tasks.records import TaskState, UnitState, end_state

RETRY_ANYTHING = ["BaseException", "timeout", "exit"]  # retry_on that names every cause


class TaskRequestError(Exception):
    """A task request that cannot be done; the message says why."""


@dataclass
class LiveTransform:
    id: int
    spec: specs.Transform
    pool: str  # where its units' jobs run: its backend's, or queue's
    counts: dict[str, int]  # its units by state
    ended: bool = False
    aborted: bool = False
    next_index: int = 0  # the index its next chained unit gets
    merge: TransformMerge | None = None  # with a merger: where its merging stands

    @property
    def open_units(self) -> int:
        return self.counts[UnitState.WAITING] + self.counts[UnitState.SUBMITTED]

    @cached_property
    def job_options(self) -> dict[str, Any]:
        """What the jobs of all its units have alike."""
        spec = self.spec
        return dict(pool=self.pool, priority=spec.priority, timeout=spec.timeout,
                    retries=spec.retries, retry_on=_retry_on(spec),
                    sbatch=list(spec.sbatch) or None)  # fmt: skip


@dataclass
class LiveTask:
    id: int
    spec: specs.Task
    context: dict[str, Any]  # cwd, path (for calls), env (for commands) of the submitter
    paused: bool
    awaiting: int = 0  # units waiting for units they come from to run again (call 'null')
    transforms: list[LiveTransform] = field(default_factory=list)  # in order
    by_id: dict[int, LiveTransform] = field(default_factory=dict)

    def add(self, transform: LiveTransform) -> None:
        self.transforms.append(transform)
        self.by_id[transform.id] = transform

    @property
    def in_flight(self) -> int:
        return sum(t.counts[UnitState.SUBMITTED] for t in self.transforms)

    def transform(self, name: str) -> LiveTransform:
        return next(t for t in self.transforms if t.spec.name == name)


@dataclass
class UnitRow:
    id: int
    task: int
    transform: int
    idx: int
    call: dict[str, Any] = field(default_factory=dict)  # read only to submit it


class TaskEngine:
    def __init__(self, journal: Writer, book: JobBook, folder: Path, landings: Landings,
                 default_pool: str) -> None:  # fmt: skip
        self.journal = journal
        self.default_pool = default_pool  # of transforms that name no backend nor queue
        self.landings = landings  # told the folders of live transforms that declare outputs
        self.book = book
        self.folder = folder  # <state dir>/tasks: each unit's output folder is below it
        self.tasks: dict[int, LiveTask] = {}  # those that have not ended
        self.unit_of_job: dict[int, UnitRow] = {}  # the jobs of submitted units
        self._ends: list[tuple[int, State]] = []  # job ends of this turn
        self._dirty: set[int] = set()  # tasks to look at in `settle`
        self.merging = Merging(journal, book)
        self._landing: dict[tuple[int, int], set[str]] = {}  # outputs seen, by unit
        # TASK/TRANSFORM folders watched, until the watcher has let go of them (a landing
        # may be told after its unit's end, and its transform's): transforms.id, outputs.
        self._watched: dict[str, tuple[int, tuple[str, ...]]] = {}
        book.subscribe_ends(self._job_ended)
        book.subscribe(self._changed)

    # --- start ------------------------------------------------------------------------

    def load(self) -> None:
        """At start: follow again the tasks that had not ended; units whose job ended
        while nothing recorded it (none should) are settled in the first turn."""
        for (task_id,) in self.journal.reader.execute(
            "SELECT id FROM tasks WHERE state IN (?, ?)", (TaskState.RUNNING, TaskState.PAUSED)
        ).fetchall():
            self._load_task(task_id)
        for job in self.merging.merge_of_job:  # a merge that ended at recovery
            (state,) = self.journal.reader.execute(
                "SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()  # fmt: skip
            if state in END_STATES:
                self._ends.append((job, State(state)))
        for unit, task, transform, idx, job, job_state in self.journal.reader.execute(
            "SELECT u.id, u.task, u.transform, u.idx, u.job, j.state FROM units u"
            " JOIN jobs j ON j.id = u.job WHERE u.state = 'submitted'"
        ).fetchall():
            self.unit_of_job[job] = UnitRow(unit, task, transform, idx)
            if job_state in END_STATES:
                self._ends.append((job, State(job_state)))

    def _load_task(self, task_id: int) -> LiveTask:
        reader = self.journal.reader
        spec_text, context, state = reader.execute(
            "SELECT spec, context, state FROM tasks WHERE id = ?", (task_id,)
        ).fetchone()
        task = LiveTask(task_id, specs.task_from_json(spec_text), json.loads(context),
                        paused=state == TaskState.PAUSED)  # fmt: skip
        for transform_id, position, transform_state in reader.execute(
            "SELECT id, position, state FROM transforms WHERE task = ? ORDER BY position",
            (task_id,),
        ).fetchall():
            spec = task.spec.transforms[position]
            task.add(LiveTransform(
                transform_id, spec, self._pool(spec), dict.fromkeys(UnitState, 0),
                ended=transform_state != TaskState.RUNNING,
            ))  # fmt: skip
        self._count_units(task)
        self._count_awaiting(task)
        self.merging.load(task)
        self._watch(task)
        self.tasks[task_id] = task
        self._dirty.add(task_id)
        return task

    def _count_units(self, task: LiveTask) -> None:
        for transform, state, count, top in self.journal.reader.execute(
            "SELECT transform, state, count(*), max(idx) FROM units WHERE task = ?"
            " GROUP BY transform, state",
            (task.id,),
        ):
            live = task.by_id[transform]
            live.counts[UnitState(state)] = count
            live.next_index = max(live.next_index, top + 1)

    # --- requests ---------------------------------------------------------------------

    def submit(self, task: specs.Task, text: str, context: dict[str, Any], now: float) -> int:
        """Journal a checked task (`text`: the JSON that task_from_json read it from) and
        its first units; they are submitted this turn."""
        cursor = self.journal.write(  # an id never given before, even to a pruned task
            "INSERT INTO tasks (id, name, spec, context, state, float, created) VALUES ("
            " max(coalesce((SELECT max(id) FROM tasks), 0),"
            "     coalesce((SELECT value FROM marks WHERE name = 'last_task_id'), 0)) + 1,"
            " ?, ?, ?, ?, ?, ?)",
            (task.name, text, json.dumps(context), TaskState.RUNNING, task.float, now),
        )
        live = LiveTask(cursor.lastrowid, task, context, paused=False)
        for position, transform in enumerate(task.transforms):
            row = self.journal.write(
                "INSERT INTO transforms (task, position, name, state) VALUES (?, ?, ?, ?)",
                (live.id, position, transform.name, TaskState.RUNNING),
            )
            counts = dict.fromkeys(UnitState, 0)
            merge = TransformMerge() if transform.merger is not None else None
            pool = self._pool(transform)
            live.add(LiveTransform(row.lastrowid, transform, pool, counts, merge=merge))
        for transform in live.transforms:
            units = specs.expand_units(task, transform.spec)
            self._add_units(live, transform, [
                ({"args": list(u.args), "kwargs": u.kwargs, "inputs": list(u.inputs)}, None)
                for u in units
            ])  # fmt: skip
        self.tasks[live.id] = live
        self._watch(live)
        self._dirty.add(live.id)
        say(f"task {live.id} ({task.name}) submitted")
        return live.id

    def control(self, task_id: int, action: str, unit: str | None = None) -> str:
        """pause, resume, retry_failed, retry_merge or reset (`unit`: TRANSFORM/INDEX);
        what it did. The last three take up an ended task again."""
        task = self.tasks.get(task_id)
        if task is None:
            task = self._revive(task_id, action)
        self._dirty.add(task_id)
        if action in ("pause", "resume"):
            task.paused = action == "pause"
            state = TaskState.PAUSED if task.paused else TaskState.RUNNING
            self.journal.write("UPDATE tasks SET state = ? WHERE id = ?", (state, task_id))
            return f"task {task_id} {'paused' if task.paused else 'resumed'}"
        if action == "retry_failed":
            count = self._requeue_units(task, None)
            return f"{count} failed or skipped units of task {task_id} to run again"
        if action == "retry_merge":
            return self._retry_merge(task)
        assert action == "reset" and unit is not None
        return self._reset(task, unit)

    def _revive(self, task_id: int, action: str) -> LiveTask:
        """An ended task, running again for `action` (retry_failed, reset)."""
        row = self.journal.reader.execute("SELECT state FROM tasks WHERE id = ?",
                                          (task_id,)).fetchone()  # fmt: skip
        if row is None:
            raise TaskRequestError(f"no task {task_id}")
        if action not in ("retry_failed", "retry_merge", "reset"):
            raise TaskRequestError(f"task {task_id} has ended ({row[0]})")
        self.journal.write("UPDATE tasks SET state = ?, ended = NULL, reason = NULL WHERE id = ?",
                           (TaskState.RUNNING, task_id))  # fmt: skip
        return self._load_task(task_id)

    def _requeue_units(self, task: LiveTask, only: int | None) -> int:
        """Failed and skipped units (or, with `only`, that one unit, whatever it ended
        in) wait again; so do the units their outputs fed, which wait for them."""
        rows = self.journal.reader.execute(
            "SELECT id, transform, idx, state FROM units WHERE task = ? AND "
            + ("id = ?" if only is not None else "state IN ('failed', 'skipped')"),
            (task.id, only) if only is not None else (task.id,),
        ).fetchall()
        ids = {row[0] for row in rows}
        fed = [row for row in self._fed_by(task, rows) if row[0] not in ids]
        running = next((row for row in fed if row[3] == UnitState.SUBMITTED), None)
        if running is not None:
            name = f"{task.by_id[running[1]].spec.name}/{running[2]}"
            raise TaskRequestError(f"unit {name} runs on its outputs; cancel its job first")
        self._wait_again(task, rows, "reset" if only is not None else "failed")
        self._wait_again(task, fed, "reset", awaiting=True)
        self._count_awaiting(task)
        self._reopen(task, task.transforms)
        return len(rows)

    def owner_of(self, job: int) -> str | None:
        """What a job is to a task (one of its units' runs, or a merge) and how to run
        that again; None if it is no task's."""
        reader = self.journal.reader
        (spec,) = reader.execute("SELECT spec FROM jobs WHERE id = ?", (job,)).fetchone()
        unit = json.loads(spec).get("unit")
        if unit is not None:
            found = reader.execute("SELECT task FROM units WHERE job = ?", (job,)).fetchone()
            task = found[0] if found else "ID"
            name = unit["name"].split("/", 1)[1]
            return f"ran unit {name} of a task: run it again with `gsup task reset {task} {name}`"
        merge = reader.execute("SELECT task FROM merges WHERE job = ?", (job,)).fetchone()
        if merge is not None:
            return f"is a merge of task {merge[0]}: `gsup task retry-merge {merge[0]}` runs it"
        return None

    def _count_awaiting(self, task: LiveTask) -> None:
        (task.awaiting,) = self.journal.reader.execute(
            "SELECT count(*) FROM units WHERE task = ? AND state = 'waiting' AND call = 'null'",
            (task.id,),
        ).fetchone()

    def _fed_by(self, task: LiveTask, rows: list[tuple]) -> list[tuple]:
        """The units made from the outputs of units `rows`, and from theirs in turn: one
        per unit (`inputs_from` each), or the one unit of a transform fed as a whole."""
        fed: list[tuple] = []
        while rows:
            ids, transforms = [row[0] for row in rows], {row[1] for row in rows}
            wholes = [t.id for t in task.transforms
                      if (source := t.spec.inputs_from) is not None and source.mode == "all"
                      and task.transform(source.transform).id in transforms]  # fmt: skip
            rows = self.journal.reader.execute(
                "SELECT id, transform, idx, state FROM units WHERE task = ? AND (upstream IN"
                f" ({', '.join('?' * len(ids))}) OR transform IN ({', '.join('?' * len(wholes))}))",
                (task.id, *ids, *wholes),
            ).fetchall()
            rows = [row for row in rows if row not in fed]
            fed += rows
        return fed

    def _wait_again(self, task: LiveTask, rows: list[tuple], why: str,
                    awaiting: bool = False) -> None:  # fmt: skip
        """Units wait again, their folders moved aside (IDX.`why`-N); `awaiting`: for
        their inputs too (made again as the units they come from end)."""
        for unit, transform, idx, state in rows:
            live = task.by_id[transform]
            self._move_aside(self._outdir(task, live, idx), why)
            if state == UnitState.DONE:
                self.merging.unit_reset(live, unit)
            live.counts[UnitState(state)] -= 1
            live.counts[UnitState.WAITING] += 1
        call = ", call = 'null'" if awaiting else ""
        self.journal.write(f"UPDATE units SET state = 'waiting', reason = NULL{call} WHERE id = ?",
                           [(row[0],) for row in rows], many=True)  # fmt: skip

    def _reopen(self, task: LiveTask, transforms: list[LiveTransform]) -> None:
        """Transforms that end anew (each, once what it waits for has ended)."""
        for live in transforms:
            live.ended = live.aborted = False
        self._watch(task)
        self.journal.write(
            "UPDATE transforms SET state = 'running', ended = NULL, reason = NULL WHERE id = ?",
            [(live.id,) for live in transforms],
            many=True,
        )

    def _retry_merge(self, task: LiveTask) -> str:
        retried = self.merging.retry(task)
        if not retried:
            raise TaskRequestError(f"task {task.id} has no failed merge")
        self._reopen(task, [t for t in retried if t.ended])
        return f"{len(retried)} merges of task {task.id} to run again, anew"

    def _reset(self, task: LiveTask, name: str) -> str:
        transform_name, _, index = name.rpartition("/")
        found = self.journal.reader.execute(
            "SELECT u.id, u.state FROM units u JOIN transforms t ON t.id = u.transform"
            " WHERE u.task = ? AND t.name = ? AND u.idx = ?",
            (task.id, transform_name, int(index) if index.isdigit() else -1),
        ).fetchone()
        if found is None:
            raise TaskRequestError(f"task {task.id} has no unit {name} (give TRANSFORM/INDEX)")
        if found[1] == UnitState.SUBMITTED:
            raise TaskRequestError(f"unit {name} is running; cancel its job first")
        self._requeue_units(task, found[0])
        return f"unit {name} of task {task.id} reset: it runs again"

    # --- what the job book reports --------------------------------------------------

    def _job_ended(self, job: int, state: State) -> None:
        if job in self.unit_of_job or job in self.merging.merge_of_job:
            self._ends.append((job, state))

    def _changed(self, change: StateChange) -> None:
        """A unit's job failed and is retried: its partial outputs go aside first."""
        if change.after != State.QUEUED or change.before in (None, State.RUNNING, State.QUEUED):
            return
        unit = self.unit_of_job.get(change.job)
        if unit is not None:
            task = self.tasks[unit.task]
            self._move_aside(self._outdir(task, task.by_id[unit.transform], unit.idx))

    # --- what the outputs' watcher reports (gsup/tasks/landing.py) -------------------

    def landed(self, events: list[tuple[str, str, float]]) -> None:
        """Files landed in, or gone from, unit folders (TASK/TRANSFORM/INDEX/NAME below
        the tasks folder): a unit whose declared outputs have all landed is noted
        (`units.landed`), even if its job's end came first; an output gone before its
        merge is told (the merge then fails, saying so too)."""
        prefix = f"{self.folder}/"
        for kind, path, _ in events:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/", 3)
            if kind in ("watching", "trouble"):  # its units may be submitted now
                self._dirty.add(int(parts[0]))
            elif kind == "unwatched":  # nothing more comes from it
                self._watched.pop("/".join(parts[:2]), None)
            elif len(parts) == 4 and parts[2].isdigit():
                self._landing_in(kind, parts[0], parts[1], int(parts[2]), parts[3])

    def _landing_in(self, kind: str, task: str, transform: str, idx: int, name: str) -> None:
        watched = self._watched.get(f"{task}/{transform}")
        if watched is None:
            return
        transform_id, outputs = watched
        matched = {p for p in outputs if fnmatch.fnmatchcase(name, p)}
        if kind == "gone":
            live = self.tasks.get(int(task))
            merge = live and live.by_id[transform_id].merge
            if matched and merge and idx in merge.waiting:
                say(f"task {task}: {transform}/{idx}/{name} disappeared before it was merged")
            return
        if outputs and not matched:
            return
        seen = self._landing.setdefault((transform_id, idx), set())
        seen |= matched
        if len(seen) == len(outputs):
            del self._landing[(transform_id, idx)]
            self.journal.write(
                "UPDATE units SET landed = ? WHERE transform = ? AND idx = ? AND landed IS NULL",
                (self.book.wall(), transform_id, idx),
            )

    # --- each turn ----------------------------------------------------------------------

    def settle(self) -> None:
        """Record the units this turn's job ends ran; chain, submit and end what follows."""
        ends, self._ends = self._ends, []
        ended: list[tuple[str, str | None, int]] = []  # the units' new states, written at once
        for job, state in ends:
            unit = self.unit_of_job.pop(job, None)
            if unit is not None:
                ended.append(self._unit_ended(unit, job, state))
            elif (merge := self.merging.merge_of_job.get(job)) is not None:
                task = self.tasks[merge[0]]
                self.merging.ended(job, state, task.by_id[merge[1]])
                self._dirty.add(task.id)
        if ended:  # before what follows reads units by state
            self.journal.write("UPDATE units SET state = ?, reason = ? WHERE id = ?", ended,
                               many=True)  # fmt: skip
        while self._dirty:
            task = self.tasks.get(self._dirty.pop())
            if task is not None:
                self.merging.start(task, self.folder)
                self._end_transforms(task)
                self._fill(task)
                self._end_task(task)

    def _unit_ended(self, unit: UnitRow, job: int, state: State) -> tuple[str, str | None, int]:
        """What the unit's job's end makes of it: its new state, why, and its id."""
        task = self.tasks[unit.task]
        transform = task.by_id[unit.transform]
        outdir = self._outdir(task, transform, unit.idx)
        if state == State.DONE:
            missing = _missing_output(outdir, transform.spec.outputs)
            after, why = (UnitState.FAILED, missing) if missing else (UnitState.DONE, None)
        else:
            after, why = UnitState.FAILED, f"job {job} ended {state}: {self._job_reason(job)}"
        transform.counts[UnitState.SUBMITTED] -= 1
        transform.counts[after] += 1
        self._dirty.add(task.id)
        if after == UnitState.DONE:
            self.merging.unit_done(transform, unit.idx)
            self._chain_each(task, transform, unit, outdir)
        else:
            name = f"{transform.spec.name}/{unit.idx}"
            self._skip_awaiting(task, [unit.id], None, f"the unit it comes from, {name}, failed")
            if _over_budget(transform):
                self._abort(task, transform)
        return after, why, unit.id

    def _job_reason(self, job: int) -> str:
        row = queries.job_row(self.journal.reader, job)
        return (row or {}).get("error") or (row or {}).get("reason") or "?"

    def _chain_each(self, task: LiveTask, upstream: LiveTransform, unit: UnitRow,
                    outdir: str) -> None:  # fmt: skip
        """A unit is done: each transform fed by its transform unit by unit gets one."""
        for transform in task.transforms:
            source = transform.spec.inputs_from
            if source is None or source.transform != upstream.spec.name or source.mode != "each":
                continue
            if transform.ended:
                continue
            inputs = _selected(_files(Path(outdir)), source)
            call = {"args": [], "kwargs": {}, "inputs": [str(p) for p in inputs]}
            if not self._give_inputs(task, transform, unit.id, call):
                self._add_units(task, transform, [(call, unit.id)])

    def _give_inputs(self, task: LiveTask, transform: LiveTransform, upstream: int | None,
                     call: dict[str, Any]) -> bool:  # fmt: skip
        """The unit of `transform` made from `upstream` (None: fed as a whole), if it
        awaits its inputs again (it was made before, then reset), gets them."""
        if not task.awaiting:
            return False
        found = self.journal.reader.execute(
            "SELECT id FROM units WHERE transform = ? AND upstream IS ? AND call = 'null'"
            " AND state = 'waiting'",
            (transform.id, upstream),
        ).fetchone()
        if found is None:
            return False
        self.journal.write("UPDATE units SET call = ? WHERE id = ?", (json.dumps(call), found[0]))
        task.awaiting -= 1
        self._dirty.add(task.id)
        return True

    def _skip_awaiting(self, task: LiveTask, upstream: list[int] | None, transform_id: int | None,
                       why: str) -> None:  # fmt: skip
        """Units awaiting inputs that will not come (from units `upstream`, or as a whole
        for `transform_id`) are skipped, and so are those awaiting theirs."""
        while task.awaiting and (upstream or transform_id is not None):
            where = ("upstream IN (" + ", ".join("?" * len(upstream)) + ")") if upstream \
                else "transform = ?"  # fmt: skip
            rows = self.journal.reader.execute(
                f"SELECT id, transform FROM units WHERE {where} AND call = 'null'"
                " AND state = 'waiting'",
                upstream or (transform_id,),
            ).fetchall()
            for _, transform in rows:
                live = task.by_id[transform]
                live.counts[UnitState.WAITING] -= 1
                live.counts[UnitState.SKIPPED] += 1
            self.journal.write("UPDATE units SET state = 'skipped', reason = ? WHERE id = ?",
                               [(why, row[0]) for row in rows], many=True)  # fmt: skip
            task.awaiting -= len(rows)
            upstream, transform_id = [row[0] for row in rows], None
            self._dirty.add(task.id)

    def _abort(self, task: LiveTask, transform: LiveTransform) -> None:
        """Its failure budget is spent: its waiting units will not run."""
        transform.aborted = True
        skipped = transform.counts[UnitState.WAITING]
        self.journal.write(
            "UPDATE units SET state = 'skipped', reason = 'its transform failed first'"
            " WHERE transform = ? AND state = 'waiting'",
            (transform.id,),
        )
        transform.counts[UnitState.WAITING] = 0
        transform.counts[UnitState.SKIPPED] += skipped
        say(f"task {task.id}: transform {transform.spec.name} failed: over abort_after")

    def _end_transforms(self, task: LiveTask) -> None:
        """End each transform whose units have all ended and whose upstream has ended;
        a transform fed by another as a whole gets its one unit once that has ended."""
        for transform in task.transforms:
            if transform.ended:
                continue
            source = transform.spec.inputs_from
            upstream = task.transform(source.transform) if source is not None else None
            if upstream is not None and not upstream.ended:
                continue
            whole = upstream is not None and source.mode == "all"
            if whole and self._chain_all(task, transform, upstream):
                continue
            if transform.open_units:
                continue
            if transform.merge is not None and not transform.merge.settled():
                continue  # its merged file is whole when it ends
            self._end_transform(task, transform, upstream)

    def _chain_all(self, task: LiveTask, transform: LiveTransform,
                   upstream: LiveTransform) -> bool:  # fmt: skip
        """Its one unit over the outputs of every done unit of `upstream`, made, or
        given its inputs again after a reset; False if it has it, or there are none."""
        awaiting = (
            task.awaiting
            and self.journal.reader.execute(
                "SELECT 1 FROM units WHERE transform = ? AND call = 'null' AND state = 'waiting'",
                (transform.id,),
            ).fetchone()
        )
        if transform.next_index > 0 and not awaiting:
            return False
        if upstream.aborted or not upstream.counts[UnitState.DONE]:
            why = f"its inputs' transform, {upstream.spec.name}, had no unit done"
            self._skip_awaiting(task, None, transform.id, why)
            return False
        source = transform.spec.inputs_from
        assert source is not None
        inputs: list[Path] = []
        for (idx,) in self.journal.reader.execute(
            "SELECT idx FROM units WHERE transform = ? AND state = 'done' ORDER BY idx",
            (upstream.id,),
        ):
            inputs += _selected(_files(Path(self._outdir(task, upstream, idx))), source)
        call = {"args": [], "kwargs": {}, "inputs": [str(p) for p in inputs]}
        if not self._give_inputs(task, transform, None, call):
            self._add_units(task, transform, [(call, None)])
        return True

    def _end_transform(self, task: LiveTask, transform: LiveTransform,
                       upstream: LiveTransform | None) -> None:  # fmt: skip
        counts = transform.counts
        not_done = counts[UnitState.FAILED] + counts[UnitState.SKIPPED]
        state = end_state(counts[UnitState.DONE], not_done, transform.aborted)
        reason = self.merging.finish(transform, self.folder / str(task.id))
        if reason is not None and state == TaskState.COMPLETED:
            state = TaskState.COMPLETED_WITH_FAILURES  # its merged file is not whole
        if transform.aborted:
            reason = f"over abort_after ({counts[UnitState.FAILED]} units failed)"
        elif counts[UnitState.FAILED] and not counts[UnitState.DONE]:
            reason = f"all {counts[UnitState.FAILED]} units failed"
        elif not counts[UnitState.DONE] and not counts[UnitState.FAILED]:
            state = TaskState.FAILED
            reason = f"no units: {upstream.spec.name} had none done" if upstream else "no units"
        transform.ended = True
        self.landings.unwatch(self._folder(task, transform))
        self._dirty.add(task.id)  # a transform it feeds may end, or get its unit, now
        self.journal.write(
            "UPDATE transforms SET state = ?, ended = ?, reason = ? WHERE id = ?",
            (state, self.book.wall(), reason, transform.id),
        )

    def _end_task(self, task: LiveTask) -> None:
        if not all(t.ended for t in task.transforms):
            return
        rows = self.journal.reader.execute(
            "SELECT name, state, reason FROM transforms WHERE task = ? ORDER BY position",
            (task.id,),
        ).fetchall()
        states = [row[1] for row in rows]
        if all(s == TaskState.COMPLETED for s in states):
            state = TaskState.COMPLETED
        elif TaskState.FAILED in states:
            state = TaskState.FAILED
        else:
            state = TaskState.COMPLETED_WITH_FAILURES
        # The first reason a transform gave, for `task wait`'s last line.
        reason = next((f"{name}: {why}" for name, _, why in rows if why), None)
        self.journal.write("UPDATE tasks SET state = ?, ended = ?, reason = ? WHERE id = ?",
                           (state, self.book.wall(), reason, task.id))  # fmt: skip
        del self.tasks[task.id]
        self.book.task_ended(task.id, state)
        say(f"task {task.id} ({task.spec.name}) ended {state}")

    # --- submitting units ----------------------------------------------------------

    def _add_units(self, task: LiveTask, transform: LiveTransform,
                   units: list[tuple[dict[str, Any], int | None]]) -> None:  # fmt: skip
        """New waiting units of `transform` (their call, and the unit they come from)."""
        first = transform.next_index
        transform.next_index += len(units)
        if transform.spec.outputs:  # made now, not as it runs: watched by then (landing.py)
            for n in range(first, first + len(units)):
                os.makedirs(self._outdir(task, transform, n), exist_ok=True)
        transform.counts[UnitState.WAITING] += len(units)
        self.journal.write(
            "INSERT INTO units (task, transform, idx, state, call, upstream, jobs)"
            " VALUES (?, ?, ?, 'waiting', ?, ?, 0)",
            [(task.id, transform.id, first + n, json_dumps(call), upstream)
             for n, (call, upstream) in enumerate(units)],
            many=True,
        )  # fmt: skip
        self._dirty.add(task.id)

    def _fill(self, task: LiveTask) -> None:
        """Submit waiting units up to the task's float: later transforms' first, so that
        results flow through a chain, each in index order; none of a transform whose
        folder the outputs' watcher has not taken yet."""
        room = task.spec.float - task.in_flight
        if task.paused or room <= 0:
            return
        rows: list[tuple] = []
        for transform in reversed(task.transforms):
            if len(rows) == room:
                break
            if not transform.counts[UnitState.WAITING] or (
                transform.spec.outputs and not self.landings.ready(self._folder(task, transform))
            ):  # fmt: skip
                continue
            rows += self.journal.reader.execute(  # along the index units_waiting
                "SELECT id, transform, idx, call FROM units WHERE task = ? AND transform = ?"
                " AND state = 'waiting' AND call != 'null' ORDER BY idx LIMIT ?",
                (task.id, transform.id, room - len(rows)),
            ).fetchall()
        if not rows:
            return
        units = [UnitRow(unit, task.id, transform, idx, json.loads(call))
                 for unit, transform, idx, call in rows]  # fmt: skip
        specs_ = [self._job_spec(task, task.by_id[u.transform], u) for u in units]
        jobs = self.journal.insert_jobs(specs_, self.book.wall(), task.id)
        self.journal.write(
            "UPDATE units SET state = 'submitted', job = ?, jobs = jobs + 1 WHERE id = ?",
            [(job, unit.id) for job, unit in zip(jobs, units, strict=True)],
            many=True,
        )
        self.unit_of_job.update(zip(jobs, units, strict=True))
        for unit in units:
            counts = task.by_id[unit.transform].counts
            counts[UnitState.WAITING] -= 1
            counts[UnitState.SUBMITTED] += 1
        self.book.added(specs_)

    def _job_spec(self, task: LiveTask, transform: LiveTransform, unit: UnitRow) -> JobSpec:
        spec = transform.spec
        outdir = self._outdir(task, transform, unit.idx)  # the executor makes it
        name = f"{task.spec.name}/{spec.name}/{unit.idx}"
        inputs = unit.call["inputs"]
        options = {**transform.job_options, "name": name,
                   "unit": {"name": name, "outdir": outdir, "inputs": inputs}}  # fmt: skip
        args, kwargs = tuple(unit.call["args"]), unit.call["kwargs"]
        if spec.cmd is not None:  # its arguments are words after the command's own
            argv = [*spec.cmd, *map(str, args), *(f"--{k}={v}" for k, v in kwargs.items())]
            env = {**task.context["env"], "GSUP_OUTDIR": outdir,
                   "GSUP_INPUTS": os.pathsep.join(inputs), "GSUP_UNIT": name}  # fmt: skip
            return JobSpec(kind="cmd", target=argv[0], display=shlex.join(argv), argv=argv,
                           cwd=outdir, env=env, **options)  # fmt: skip
        return JobSpec(
            kind="call", target=spec.target, display=describe_call(spec.target, args, kwargs),
            arguments=literal_text(args, kwargs), cwd=task.context["cwd"],
            path=task.context["path"], **options,
        )  # fmt: skip

    # --- helpers ----------------------------------------------------------------------

    def _pool(self, transform: specs.Transform) -> str:
        return pool_for(transform.backend, transform.queue) or self.default_pool

    def _folder(self, task: LiveTask, transform: LiveTransform) -> Path:
        return self.folder / str(task.id) / transform.spec.name

    def _outdir(self, task: LiveTask, transform: LiveTransform, idx: int) -> str:
        """A unit's output folder; a text, not a Path: it is made for every unit."""
        return f"{self.folder}/{task.id}/{transform.spec.name}/{idx}"

    def _watch(self, task: LiveTask) -> None:
        """Outputs land in the folders of its running transforms that declare some."""
        for transform in task.transforms:
            if transform.spec.outputs and not transform.ended:
                self._watched[f"{task.id}/{transform.spec.name}"] = (
                    transform.id, transform.spec.outputs)  # fmt: skip
                self.landings.watch(self._folder(task, transform))

    @staticmethod
    def _move_aside(folder: str, why: str = "failed") -> None:
        """A failed (or reset) attempt's folder goes aside (IDX.failed-N, IDX.reset-N),
        never merged or reused."""
        outdir = Path(folder)
        if not outdir.exists():
            return
        n = 1
        while (aside := outdir.with_name(f"{outdir.name}.{why}-{n}")).exists():
            n += 1
        with contextlib.suppress(OSError):
            outdir.rename(aside)


def _retry_on(spec: specs.Transform) -> list[str] | None:
    if not spec.retry_recurring:
        return None if spec.retry_on is None else list(spec.retry_on)
    return [*(spec.retry_on or RETRY_ANYTHING), RECURRING]


def _over_budget(transform: LiveTransform) -> bool:
    """Whether its failures reach abort_after (a count, or a share of its units)."""
    budget = transform.spec.abort_after
    failed = transform.counts[UnitState.FAILED]
    if budget is None:
        return False
    if isinstance(budget, str):  # "5%"
        total = sum(transform.counts.values())
        return failed * 100 >= float(budget.rstrip("%")) * total
    return failed >= budget


def _files(outdir: Path) -> list[Path]:
    """The files below a unit's output folder, in name order."""
    if not outdir.is_dir():
        return []
    return sorted(p for p in outdir.rglob("*") if p.is_file())


def _selected(files: list[Path], source: specs.InputsFrom) -> list[Path]:
    """The files an `inputs_from` takes: matching an include (all, if none) and no
    exclude; globs match the name relative to the unit's folder, or the base name."""

    def matches(path: Path, globs: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatch(path.name, g) for g in globs)

    return [p for p in files if (not source.include or matches(p, source.include))
            and not matches(p, source.exclude)]  # fmt: skip


def _missing_output(folder: str, outputs: tuple[str, ...]) -> str | None:
    """Why a unit whose job succeeded is not done: a declared output with no non-empty
    file to match it."""
    if not outputs:
        return None
    outdir = Path(folder)
    for pattern in outputs:
        try:
            found = sorted(outdir.glob(pattern)) if outdir.is_dir() else []
        except (OSError, ValueError, IndexError, AttributeError) as exc:  # never the daemon's end
            return f"output {pattern} cannot be looked for: {type(exc).__name__}: {exc}"
        if not found:
            return f"missing output {pattern}"
        for path in found:
            mode = path.lstat()
            if not stat.S_ISREG(mode.st_mode):  # a FIFO would block its merge; a link
                return f"output {path.relative_to(outdir)} is not a regular file"
            if not mode.st_size:
                return f"empty output {path.relative_to(outdir)}"
    return None
