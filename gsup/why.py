"""`gsup why`: one paragraph on why a job is not running yet, or why it ended.

What the journal says (the job, its attempts, its place in the queue, its task) is
read here; what only the daemon knows (its pool's state, the job's hand-over, the
disk) comes from its `why` reply, or is said to be unknown when no daemon runs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from gsup.errors import GsupError
from gsup.journal import queries
from gsup.lifecycle import POISON_AFTER_LOST
from gsup.states import State
from gsup.text import count

NO_DAEMON = "No daemon is running"


def explain(conn: sqlite3.Connection, job: int, facts: dict[str, Any] | None,
            absent: str = NO_DAEMON, now: float | None = None) -> str:  # fmt: skip
    """The paragraph for `job`; `facts`: the daemon's `why` reply (None: `absent` says
    why there is none)."""
    row = queries.job_row(conn, job)
    if row is None:
        raise GsupError(f"no job {job}")
    now = time.time() if now is None else now
    attempt = _last_attempt(conn, job)
    state = State(row["state"])
    if state == State.QUEUED:
        sentences = _queued(conn, row, facts, now, absent)
    elif state == State.RUNNING:
        sentences = _running(row, attempt, facts, now, absent)
    else:
        sentences = _ended(row, attempt)
    sentences += _task_part(conn, job)
    if facts and state in (State.QUEUED, State.RUNNING):
        sentences += _disk(facts)
    return " ".join(sentences)


def _last_attempt(conn: sqlite3.Connection, job: int) -> dict[str, Any] | None:
    conn.row_factory = sqlite3.Row
    try:
        found = conn.execute(
            "SELECT * FROM attempts WHERE job = ? ORDER BY id DESC LIMIT 1", (job,)
        ).fetchone()
    finally:
        conn.row_factory = None
    return None if found is None else dict(found)


def _clock(at: float, now: float) -> str:
    """A time as `12:03:04 (42s ago)` or `(in 42s)`."""
    delta = at - now
    span = _span(abs(delta))
    return time.strftime("%H:%M:%S", time.localtime(at)) + (
        f" (in {span})" if delta > 0 else f" ({span} ago)"
    )


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _tries(row: dict[str, Any]) -> str:
    return f"attempt {row['attempts']} of {row['retries'] + 1}"


# --- queued ---------------------------------------------------------------------------


def _queued(conn: sqlite3.Connection, row: dict[str, Any], facts: dict[str, Any] | None,
            now: float, absent: str) -> list[str]:  # fmt: skip
    job, pool = row["id"], row["pool"]
    said = [f"Job {job} is queued in {pool} (priority {row['priority']})."]
    if row["not_before"] is not None and row["not_before"] > now:
        said.append(
            f"It is a retry ({_tries(row)} ran and ended {row['reason'] or 'without success'}),"
            f" delayed until {_clock(row['not_before'], now)}."
        )
    if facts is None:
        return [*said, f"{absent}: it runs once a daemon that answers is started."]
    if facts["stopping"]:
        return [*said, "The daemon is stopping: it starts no job until it is started again."]
    pool_facts, flight = facts["pool"], facts["flight"]
    if pool_facts["unusable"]:
        return [*said, f"The {pool} backend cannot run jobs: {pool_facts['unusable']}."]
    if pool_facts["frozen"]:
        unfreeze = f"gsup unfreeze --queue {pool}"
        said.append(f"Pool {pool} is frozen: nothing starts there until `{unfreeze}`.")
    if pool_facts["trouble"]:
        said.append(f"{pool.capitalize()} cannot run jobs now: {pool_facts['trouble']}.")
    if row["lost_count"]:
        said.append(
            f"It was in flight when its executor died {count(row['lost_count'], 'time')}"
            f" ({POISON_AFTER_LOST} make it poison): it runs alone, once nothing else runs"
            f" in {pool}{_naming(conn, pool_facts, ' (now: ', ')')}."
        )
    elif pool_facts["suspect"] is not None and pool_facts["suspect"] != job:
        said.append(
            f"Pool {pool} runs job {pool_facts['suspect']} alone (it was in flight when the"
            " pool died): others wait until it ends."
        )
    if flight is not None and not flight["started"]:
        said.append(
            f"The pool holds it ahead of a free worker{_naming(conn, pool_facts, ': busy with ')}."
        )
    elif pool_facts["free"] <= 0 and not pool_facts["frozen"]:
        threads = pool_facts["threads"]
        size = f"all {threads} threads" if threads else "all its slots"
        said.append(
            f"Pool {pool} is full: {size} busy{_naming(conn, pool_facts, ' (', ')')}, and"
            f" {pool_facts['held']} held ahead of a free worker."
        )
    ahead = _ahead(conn, row)
    if ahead:
        verb = "comes" if ahead == 1 else "come"
        said.append(
            f"{count(ahead, 'queued job')} of {pool} {verb} before it (priority, then age)."
        )
    return said


def _naming(conn: sqlite3.Connection, pool_facts: dict[str, Any], before: str,
            after: str = "") -> str:  # fmt: skip
    """The jobs running in the pool, as `#3 sleep 30, #4 mymod:f(1)` (and how many more)."""
    jobs = pool_facts["running"]
    if not jobs:
        return ""
    marks = ",".join("?" * len(jobs))
    shown = dict(conn.execute(f"SELECT id, display FROM jobs WHERE id IN ({marks})", jobs))
    named = ", ".join(f"#{job} {_short(shown.get(job, '?'))}" for job in jobs)
    more = pool_facts["running_count"] - len(jobs)
    return f"{before}{named}{f' and {more} more' if more > 0 else ''}{after}"


def _short(text: str, most: int = 40) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _ahead(conn: sqlite3.Connection, row: dict[str, Any]) -> int:
    """Queued jobs of its pool that the dispatcher takes before it."""
    (count,) = conn.execute(
        f"SELECT count(*) FROM jobs WHERE pool = ? AND {queries.QUEUED}"
        " AND (priority < ? OR (priority = ? AND id < ?))",
        (row["pool"], row["priority"], row["priority"], row["id"]),
    ).fetchone()
    return count


# --- running and ended ----------------------------------------------------------------


def _running(row: dict[str, Any], attempt: dict[str, Any] | None, facts: dict[str, Any] | None,
             now: float, absent: str) -> list[str]:  # fmt: skip
    job, pool = row["id"], row["pool"]
    where = pool if attempt is None or not attempt["external_id"] else (
        f"{pool}/{attempt['external_id']}")  # fmt: skip
    said = [f"Job {job} is running on {where}"]
    if attempt is not None and attempt["started"] is not None:
        said[0] += f" since {_clock(attempt['started'], now)}"
    said[0] += f", {_tries(row)}."
    if attempt is not None and attempt["reason"]:  # what the backend says of it (Slurm)
        said.append(f"{attempt['reason']}.")
    if row["timeout"] is not None and attempt is not None and attempt["started"] is not None:
        said.append(
            f"Its timeout is {row['timeout']:g}s: it is stopped at"
            f" {_clock(attempt['started'] + row['timeout'], now)} if it runs on."
        )
    flight = facts and facts["flight"]
    if flight and flight["stop"]:
        said.append(f"It has been asked to stop ({flight['stop']}).")
    if facts is None:
        said.append(f"{absent}: the daemon's next start finds out how it ended.")
    return said


def _ended(row: dict[str, Any], attempt: dict[str, Any] | None) -> list[str]:
    job, state = row["id"], State(row["state"])
    runs = f"{row['attempts']} attempt{'s' * (row['attempts'] != 1)}"
    ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["ended"] or 0))
    said = [f"Job {job} ended {state.value} at {ended}, after {runs}: {row['reason'] or '-'}."]
    if row["error"] and row["error"] not in (row["reason"] or ""):
        said.append(f"Its error: {row['error']}.")
    if attempt is not None and attempt["exit_status"] is not None and state != State.DONE:
        said.append(f"Its last run exited with status {attempt['exit_status']}.")
    if state == State.DONE or state == State.CANCELLED:
        return said
    if state == State.LOST and row["lost_count"] >= POISON_AFTER_LOST:
        said.append(
            f"Its executor died {row['lost_count']} times while it ran: it is taken for poison"
            " and not run again (`gsup retry` runs it anyway)."
        )
    elif row["retries"] == 0:
        said.append("It was not retried: it allows no retries (`gsup add --retries N`).")
    elif row["attempts"] > row["retries"]:
        used = "its 1 retry is" if row["retries"] == 1 else f"its {row['retries']} retries are"
        said.append(f"It was not retried: {used} used up.")
    elif row["retry_on"] is not None:
        causes = ", ".join(json.loads(row["retry_on"]))
        said.append(f"It was not retried: it retries only on {causes}.")
    return said


def _task_part(conn: sqlite3.Connection, job: int) -> list[str]:
    found = conn.execute(
        "SELECT t.id, t.name, t.state FROM jobs j JOIN tasks t ON t.id = j.task WHERE j.id = ?",
        (job,),
    ).fetchone()
    if found is None:
        return []
    task, name, state = found
    return [f"It belongs to task {task} ({name}, {state}): see `gsup task why {task}`."]


def _disk(facts: dict[str, Any]) -> list[str]:
    disk = facts["disk"]
    if disk["free_mb"] >= 2 * disk["min_free_mb"]:
        return []
    return [
        f"The disk of the state dir is nearly full ({disk['free_mb']:.0f} MB free; the last"
        f" {disk['min_free_mb']:g} MB are kept): new jobs are refused and job output is cut."
    ]


# --- tasks ------------------------------------------------------------------------------


def explain_task(conn: sqlite3.Connection, task: int) -> list[str]:
    """A line on the task, then one per transform: why its units wait, or how it ended."""
    from gsup.tasks.records import TASK_END_STATES, TaskState, progress, task_row

    row = task_row(conn, task)
    if row is None:
        raise GsupError(f"no task {task}")
    transforms = progress(conn, task)
    head = f"Task {task} ({row['name']}): {row['state']}"
    if row["state"] in TASK_END_STATES:
        return [f"{head}, {row['reason'] or 'every transform ended'}.",
                *(_transform_line(conn, t, None) for t in transforms)]  # fmt: skip
    in_flight = sum(t.counts["submitted"] for t in transforms)
    head += f"; {count(in_flight, 'unit')} in flight, its float {row['float']}."
    if row["state"] == TaskState.PAUSED:
        head += f" It is paused: no unit is submitted until `gsup task resume {task}`."
    elif in_flight >= row["float"]:
        head += " Its float is full: a unit is submitted as one in flight ends."
    return [head, *(_transform_line(conn, t, row) for t in transforms)]


def _transform_line(conn: sqlite3.Connection, t: Any, live: dict[str, Any] | None) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in t.counts.items() if n) or "no units yet"
    said = [f"{t.name}: {t.state}" + (f" ({t.reason})" if t.reason else "") + f"; {counts}."]
    if live is not None and t.state == "running":
        said += _waiting_units(conn, t)
    said += [f"Unit {t.name}/{idx} failed: {why}." for idx, why in t.failures]
    if t.merge is not None and t.merge.error:
        said.append(f"Its last merge {t.merge.state}: {t.merge.error}.")
    return "  " + " ".join(said)


def _waiting_units(conn: sqlite3.Connection, t: Any) -> list[str]:
    """Why its waiting units wait, and where its submitted units' jobs are."""
    said = []
    (awaiting,) = conn.execute(
        "SELECT count(*) FROM units WHERE transform = ? AND state = 'waiting' AND call = 'null'",
        (t.id,),
    ).fetchone()
    if awaiting:
        said.append(f"Waiting for the outputs of units still to end: {count(awaiting, 'unit')}.")
    jobs = dict(conn.execute(
        "SELECT j.state, min(j.id) FROM units u JOIN jobs j ON j.id = u.job"
        " WHERE u.transform = ? AND u.state = 'submitted' GROUP BY j.state",
        (t.id,),
    ).fetchall())  # fmt: skip
    if State.QUEUED.value in jobs:
        said.append(f"Its first queued job is {jobs[State.QUEUED.value]}"
                    f" (see `gsup why {jobs[State.QUEUED.value]}`).")  # fmt: skip
    return said
