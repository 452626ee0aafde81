"""A merge, as it runs: a job on the monitoring pool that the task engine submits
(gsup/tasks/merging.py decides what each merge holds; gsup/tasks/mergers.py writes)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from gsup.tasks.mergers import MergeError, Part, merger_for


def merge(out: str, kind: str, root: str, units: list[int], outputs: list[str],
          base: int | None, overwrite: bool) -> dict[str, int | None]:  # fmt: skip
    """Add the outputs of `units` (folders `root`/INDEX) to the merged file `out`, which
    the journal says is `base` bytes long; with `base` None, write `out` anew from them.

    Returns {"size": bytes after}, or {"stale": bytes found} when `out` is not `base`
    bytes long (this merge's own earlier run landed before a crash, or a hand changed
    the file): nothing is written then, and the engine writes the file anew."""
    merger = merger_for(kind, overwrite=overwrite)
    path = Path(out)
    parts = [_part(Path(root), idx, outputs) for idx in units]
    if base is None or not merger.incremental:
        size = merger.merge(parts, path)
        with contextlib.suppress(FileNotFoundError):  # what a transform with failed units
            os.unlink(f"{path}.partial")  # left: this one holds every unit again
        return {"size": size}
    found = os.stat(path).st_size if os.path.lexists(path) else None
    if found != base:
        return {"stale": found}
    return {"size": merger.append(parts, path)}


def _part(root: Path, idx: int, outputs: list[str]) -> Part:
    """A unit's files: those its declared outputs match, in their order (every file of
    its folder if it declares none). A declared output that is gone is an error: it
    existed when the unit was done, so someone removed it before it was merged."""
    folder = root / str(idx)
    if not outputs:
        return Part(str(idx), tuple(sorted(p for p in folder.rglob("*") if p.is_file())), folder)
    files: dict[Path, None] = {}
    for pattern in outputs:
        found = sorted(folder.glob(pattern))
        if not found:
            raise MergeError(f"unit {idx}: its output {pattern} disappeared before it was merged")
        files.update(dict.fromkeys(found))
    return Part(str(idx), tuple(files), folder)
