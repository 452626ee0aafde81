"""A call job run in a process of its own: `python -P -m gsup.executors.child CALL OUTCOME`.

The process backend (and the batch backends after it) run each call so, under the
daemon's interpreter: it imports what `python -c "from mod import attr"` would in the
job's folder and with its PYTHONPATH, and nothing before it, so jobs share no module.
CALL is the attempt as JSON, written by the executor (`write_call`); OUTCOME is where
the child writes how the call ended, atomically, before it exits (`read_outcome`): no
OUTCOME means the process died (killed, out of memory) before it could say. What the
call prints goes to the process's stdout and stderr: the job's log files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from gsup.executors.local.runner import Outcome, PoolJob, call_target
from gsup.imports import use_import_path
from gsup.lifecycle import Ending

MODULE = __name__  # run as `python -P -m MODULE CALL OUTCOME`


def write_call(path: Path, job: PoolJob, max_result: int) -> None:
    fields = {"job": job.id, "attempt": job.attempt, "target": job.target, "spec": job.spec}
    path.write_text(json.dumps({**fields, "max_result": max_result}))


def read_outcome(path: Path) -> Outcome | None:
    """How the call ended, as its process wrote it; None if it wrote nothing whole."""
    try:
        saved = json.loads(path.read_text())
        return Outcome(Ending(saved["ending"]), saved["why"], saved["fields"], saved["usage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_outcome(path: Path, outcome: Outcome) -> None:
    saved = {"ending": outcome.ending.value, "why": outcome.why}
    text = json.dumps({**saved, "fields": outcome.fields, "usage": outcome.usage})
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)  # whole or not at all: a kill mid-write leaves no outcome


def main(call_file: str, outcome_file: str) -> int:
    call = json.loads(Path(call_file).read_text())
    job = PoolJob(call["job"], call["attempt"], "call", call["target"], call["spec"])
    use_import_path(job.spec.get("path") or [])
    outcome = call_target(job, lambda: None, call["max_result"])
    sys.stdout.flush()
    sys.stderr.flush()
    write_outcome(Path(outcome_file), outcome)
    return 0 if outcome.ending == Ending.DONE else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
