"""Merging as outputs land, seen from the task engine.

A transform with a merger keeps one merged file, `<tasks>/TASK/TRANSFORM/merged.EXT`.
Its done units are added to it by merge jobs on the monitoring pool
(gsup/tasks/merge_job.py), one at a time per transform; the units done while one runs
go in the next, so that merges batch themselves under load. A transform ends only once
every done unit is merged (or its merging failed): the merged file is then complete.

The journal says what the file holds: a unit is in it once the merge whose id is its
`merged` is done. A merge is given the size the file had after the last done merge;
if it finds another size (its own earlier run landed before a crash, or a hand changed
the file), it writes nothing and says so, and the next merge writes the file anew from
every unit it should hold: no unit is ever in it twice, or missing, after a crash.
What makes the file hold what it should not (a merged unit reset, the file renamed
.partial) is journaled as a `stale` merge of no unit (job 0): the next merge, after a
restart too, writes the file anew.

A merge that fails (a merger that raises, an output gone before it was merged) stops
the transform's merging and is told with its error, in one line (its job keeps the
traceback); its units stay done. `retry` writes the file anew from all done units.
Without `ignore_failed`, a transform that ends with failed units has its merged file
renamed `merged.EXT.partial`: `merged.EXT` always holds every unit.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gsup.config import POOL_NAMES
from gsup.journal.queries import job_result, job_row
from gsup.journal.writer import Writer
from gsup.protocol import JobSpec
from gsup.states import State
from gsup.supervisor.jobs import JobBook
from gsup.supervisor.loop import say
from gsup.targets import literal_text
from gsup.tasks.records import UnitState

if TYPE_CHECKING:
    from gsup.tasks.engine import LiveTask, LiveTransform

MERGE_TARGET = "gsup.tasks.merge_job:merge"
MERGE_POOL = POOL_NAMES[1]  # monitoring: merges never wait behind the user's jobs
_EXTENSIONS = {"text": "txt", "csv": "csv", "jsonl": "jsonl", "tar": "tar"}


def merged_file(transform_folder: Path, kind: str) -> Path:
    """Where a transform's merged file is: merged.EXT (merged, for a custom merger)."""
    extension = _EXTENSIONS.get(kind)
    return transform_folder / (f"merged.{extension}" if extension else "merged")


def is_incremental(kind: str) -> bool:
    """Whether a merge can add to the file (the built-in kinds), or must write it anew
    from every unit (a custom merger); known without importing a custom one."""
    return kind in _EXTENSIONS


@dataclass
class TransformMerge:
    """Where a transform's merging stands."""

    waiting: list[int] = field(default_factory=list)  # done units not in a merge yet
    base: int | None = None  # the file's size after the last done merge
    anew: bool = True  # the next merge writes the file anew (base is no longer its size)
    running: int | None = None  # merges.id of the merge in flight
    error: str | None = None  # the last merge failed: none runs until `retry`
    merged_any: bool = False  # a merge has written the file: it may be replaced

    def settled(self) -> bool:
        """Nothing more to merge for now: the transform may end."""
        return self.running is None and (not self.waiting or self.error is not None)


class Merging:
    def __init__(self, journal: Writer, book: JobBook) -> None:
        self.journal = journal
        self.book = book
        self.merge_of_job: dict[int, tuple[int, int]] = {}  # job -> (task, transform)

    def load(self, task: LiveTask) -> None:
        """Where each transform's merging stood in the journal (at start, on a revive)."""
        reader = self.journal.reader
        for transform in task.transforms:
            if transform.spec.merger is None:
                continue
            merge = transform.merge = TransformMerge()
            merge.waiting = [idx for (idx,) in reader.execute(
                "SELECT idx FROM units WHERE transform = ? AND state = 'done'"
                " AND merged IS NULL ORDER BY idx", (transform.id,))]  # fmt: skip
            running = reader.execute(
                "SELECT id, job FROM merges WHERE transform = ? AND state = 'running'",
                (transform.id,),
            ).fetchone()
            if running is not None:  # its job was requeued at recovery, and will end
                merge.running = running[0]
                self.merge_of_job[running[1]] = (task.id, transform.id)
            last = reader.execute(
                "SELECT state, size, error FROM merges WHERE transform = ?"
                " AND state != 'running' ORDER BY id DESC LIMIT 1",
                (transform.id,),
            ).fetchone()
            merge.merged_any = running is not None or last is not None
            if last is not None:
                state, merge.base, error = last
                merge.anew = state != "done"
                merge.error = error if state == "failed" else None

    # --- what the engine tells -------------------------------------------------------

    def unit_done(self, transform: LiveTransform, idx: int) -> None:
        if transform.merge is not None:
            transform.merge.waiting.append(idx)

    def unit_reset(self, transform: LiveTransform, unit: int) -> None:
        """A done unit runs again: the file is written anew without it at the next merge."""
        merge = transform.merge
        if merge is None:
            return
        idx = self.journal.reader.execute(
            "SELECT idx FROM units WHERE id = ?", (unit,)).fetchone()[0]  # fmt: skip
        if idx in merge.waiting:
            merge.waiting.remove(idx)
        self.journal.write("UPDATE units SET merged = NULL WHERE id = ?", (unit,))
        self._write_anew(transform, f"unit {idx} was reset")

    def _write_anew(self, transform: LiveTransform, why: str) -> None:
        """The file holds what it should not: the next merge writes it anew. Journaled
        as a `stale` merge of no unit, which a restart reads the same way."""
        assert transform.merge is not None
        transform.merge.anew = True
        self.journal.write(
            "INSERT INTO merges (task, transform, job, out, full, state, units, error, created,"
            " ended) SELECT task, ?, 0, '', 0, 'stale', 0, ?, ?, ? FROM transforms WHERE id = ?",
            (transform.id, f"{why}: written anew", self.book.wall(), self.book.wall(),
             transform.id),
        )  # fmt: skip

    def retry(self, task: LiveTask) -> list[LiveTransform]:
        """Merge again, anew, each transform whose merging failed; those."""
        retried = [t for t in task.transforms if t.merge is not None and t.merge.error]
        for transform in retried:
            assert transform.merge is not None
            transform.merge.error, transform.merge.anew = None, True
        return retried

    # --- each turn ----------------------------------------------------------------------

    def start(self, task: LiveTask, tasks_folder: Path) -> None:
        """A merge for each transform that has units waiting and none running."""
        for transform in task.transforms:
            merge = transform.merge
            if transform.ended or merge is None or merge.running is not None or merge.error:
                continue
            if merge.waiting or (merge.anew and transform.counts[UnitState.DONE]):
                self._submit(task, transform, tasks_folder / str(task.id) / transform.spec.name)

    def _submit(self, task: LiveTask, transform: LiveTransform, folder: Path) -> None:
        merge, merger = transform.merge, transform.spec.merger
        assert merge is not None and merger is not None
        full = merge.anew or not is_incremental(merger.kind)
        units = self._everything(transform, merge) if full else merge.waiting
        kwargs = {
            "out": str(merged_file(folder, merger.kind)), "kind": merger.kind,
            "root": str(folder), "units": units, "outputs": list(transform.spec.outputs),
            "base": None if full else merge.base,
            "overwrite": merger.overwrite or merge.merged_any,
        }  # fmt: skip
        name = f"{task.spec.name}/{transform.spec.name}/merge"
        spec = JobSpec(
            kind="call", target=MERGE_TARGET, display=f"merge {name} ({len(units)} units)",
            arguments=literal_text((), kwargs), cwd=task.context["cwd"],
            path=task.context["path"], pool=MERGE_POOL, name=name,
        )  # fmt: skip
        (job,) = self.journal.insert_jobs([spec], self.book.wall(), task.id)
        merge.running = self.journal.write(
            "INSERT INTO merges (task, transform, job, out, full, state, units, created)"
            " VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
            (task.id, transform.id, job, kwargs["out"], full, len(units), self.book.wall()),
        ).lastrowid
        self.journal.write(
            "UPDATE units SET merged = ? WHERE transform = ? AND idx = ?",
            [(merge.running, transform.id, idx) for idx in units],
            many=True,
        )
        merge.waiting, merge.anew = [], False
        self.merge_of_job[job] = (task.id, transform.id)
        self.book.added([spec])

    def _everything(self, transform: LiveTransform, merge: TransformMerge) -> list[int]:
        """Every unit the file should hold: those merged already, in the order they
        were, then those waiting."""
        held = [idx for (idx,) in self.journal.reader.execute(
            "SELECT u.idx FROM units u JOIN merges m ON m.id = u.merged"
            " WHERE u.transform = ? AND m.state = 'done' ORDER BY u.merged, u.idx",
            (transform.id,))]  # fmt: skip
        seen = set(held)
        return held + [idx for idx in merge.waiting if idx not in seen]

    def ended(self, job: int, state: State, transform: LiveTransform) -> None:
        """A merge's job ended: what the file now holds, or why it does not."""
        self.merge_of_job.pop(job, None)
        merge = transform.merge
        assert merge is not None and merge.running is not None
        merge_id, merge.running = merge.running, None
        outcome = self._outcome(job, state)
        if "size" in outcome:
            merge.base, merge.merged_any = outcome["size"], True
            self._record(merge_id, "done", size=outcome["size"])
            return
        self._unmerge(merge_id, merge)
        if "stale" in outcome:
            found = outcome["stale"]
            why = f"the merged file was {'gone' if found is None else f'{found} bytes'},"
            self._record(merge_id, "stale", error=f"{why} not {merge.base}: written anew")
            merge.anew = True
            return
        merge.error = outcome["error"]
        self._record(merge_id, "failed", error=merge.error)
        say(f"merge of {transform.spec.name} failed: {merge.error}")

    def _outcome(self, job: int, state: State) -> dict:
        reader = self.journal.reader
        if state == State.DONE:
            return json.loads(job_result(reader, job) or "{}")
        row = job_row(reader, job) or {}
        return {"error": f"job {job} {state}: {row.get('error') or row.get('reason') or '?'}"}

    def _unmerge(self, merge_id: int, merge: TransformMerge) -> None:
        """The merge did not land: its units wait again (before those that came since)."""
        units = [idx for (idx,) in self.journal.reader.execute(
            "SELECT idx FROM units WHERE merged = ? ORDER BY idx", (merge_id,))]  # fmt: skip
        self.journal.write("UPDATE units SET merged = NULL WHERE merged = ?", (merge_id,))
        merge.waiting = units + merge.waiting

    def _record(self, merge_id: int, state: str, size: int | None = None,
                error: str | None = None) -> None:  # fmt: skip
        self.journal.write(
            "UPDATE merges SET state = ?, size = ?, error = ?, ended = ? WHERE id = ?",
            (state, size, error, self.book.wall(), merge_id),
        )

    # --- at the transform's end -------------------------------------------------------

    def finish(self, transform: LiveTransform, folder: Path) -> str | None:
        """The transform ends: why its merged file is not whole, if it is not."""
        merge, merger = transform.merge, transform.spec.merger
        if merge is None or merger is None:
            return None
        if merge.error is not None:
            return f"merge failed: {merge.error}"
        failed = transform.counts[UnitState.FAILED]
        if failed and not merger.ignore_failed:
            path = merged_file(folder / transform.spec.name, merger.kind)
            with contextlib.suppress(FileNotFoundError):
                path.rename(path.with_name(f"{path.name}.partial"))
            self._write_anew(transform, f"{path.name} was renamed {path.name}.partial")
            return (f"{failed} units failed: what the others made is in {path.name}.partial"
                    " (ignore_failed = true merges without them)")  # fmt: skip
        return None
