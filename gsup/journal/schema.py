"""The journal's tables, as peewee models: the one definition of the schema.

A new journal is created from these models; an older one is brought up to them by
migrations.py. Change a model, and add the migration step that makes an existing
journal match it (tests/test_journal.py checks that both end in the same schema).
"""

from __future__ import annotations

import peewee as pw

from gsup.journal.queries import SCHEMA_VERSION  # the version these models describe
from gsup.states import State

__all__ = ["MODELS", "SCHEMA_VERSION", "database"]

database = pw.SqliteDatabase(None)


class BaseModel(pw.Model):
    class Meta:
        database = database


class Job(BaseModel):
    id = pw.AutoField()  # never given twice: see Mark
    name = pw.TextField(null=True)
    pool = pw.TextField()  # the executor that runs it (a pool, later a backend)
    kind = pw.TextField()  # "call" or "cmd"
    target = pw.TextField()
    display = pw.TextField()  # the command as tables show it
    spec = pw.TextField()  # JSON: what the executor needs to run it (arguments, path, cwd...)
    priority = pw.IntegerField()
    timeout = pw.FloatField(null=True)
    retries = pw.IntegerField(default=0)
    retry_delay = pw.FloatField(default=0.0)
    backoff = pw.FloatField(default=2.0)
    retry_on = pw.TextField(null=True)  # JSON list of names; NULL: retry on anything
    on_lost = pw.TextField(default="requeue")
    state = pw.TextField()
    attempts = pw.IntegerField(default=0)  # charged runs
    lost_count = pw.IntegerField(default=0)  # executor deaths it was in flight for
    attempt = pw.IntegerField(null=True)  # its latest attempt (attempts.id)
    created = pw.FloatField()
    ended = pw.FloatField(null=True)  # when it reached its end state
    not_before = pw.FloatField(null=True)  # a delayed retry is not dispatched before then
    reason = pw.TextField(null=True)  # why it ended
    result_type = pw.TextField(null=True)  # "json", or "repr" when not JSON-able (text: results)
    error = pw.TextField(null=True)  # "ExceptionType: message"
    traceback = pw.TextField(null=True)
    task = pw.IntegerField(null=True)  # the task it runs a unit or a merge of

    class Meta:
        table_name = "jobs"


# The dispatcher's query: the next queued jobs of a pool, by priority then FIFO.
QUEUED_ORDER = Job.index(Job.pool, Job.priority, Job.id, name="jobs_queued_order").where(
    Job.state == State.QUEUED.value
)
Job.add_index(QUEUED_ORDER)
# What runs now, by pool (`gsup queues`, recovery). Partial indexes only: a full index
# on state would be one more page to write at every change of state.
Job.add_index(
    Job.index(Job.pool, Job.id, name="jobs_running").where(Job.state == State.RUNNING.value)
)
# A task's jobs (`gsup events --task`): only the jobs of tasks are in it.
Job.add_index(Job.index(Job.task, Job.id, name="jobs_task").where(Job.task.is_null(False)))


class Attempt(BaseModel):
    """One run of a job, from its hand-over to an executor to its end. Written before
    the executor has it, so that no run can escape the journal: one that never started
    is deleted when the executor gives it back."""

    id = pw.AutoField()
    job = pw.IntegerField()
    executor = pw.TextField()  # the executor's name (the pool)
    backend = pw.TextField()  # its kind: "local" (later "process", "slurm", "dask")
    external_id = pw.TextField(null=True)  # the pool's worker, later a Slurm job id
    dispatched = pw.FloatField()  # handed to the executor
    started = pw.FloatField(null=True)  # the executor started it (the job is running)
    ended = pw.FloatField(null=True)
    outcome = pw.TextField(null=True)  # the job state it ended in ("queued": requeued)
    reason = pw.TextField(null=True)
    charged = pw.BooleanField(default=True)  # counted against the job's retries
    exit_status = pw.IntegerField(null=True)  # a command's exit code (-N: signal N)
    cpu_seconds = pw.FloatField(null=True)
    peak_rss_kb = pw.IntegerField(null=True)

    class Meta:
        table_name = "attempts"


Attempt.add_index(Attempt.index(Attempt.job, name="attempts_job"))


class Result(BaseModel):
    """A job's return value, whole, however large: apart from its row, so that listing
    jobs never reads it. Its size comes first, so that reading it skips the text."""

    job = pw.IntegerField(primary_key=True)
    size = pw.IntegerField()  # bytes, UTF-8
    result = pw.TextField()

    class Meta:
        table_name = "results"


class Event(BaseModel):
    seq = pw.AutoField()
    job = pw.IntegerField(index=True)
    before = pw.TextField(null=True)
    after = pw.TextField()
    at = pw.FloatField()
    why = pw.TextField(null=True)

    class Meta:
        table_name = "events"


class Command(BaseModel):
    """Every request that changes something, journaled before it is acted on."""

    seq = pw.AutoField()
    at = pw.FloatField()
    verb = pw.TextField()
    detail = pw.TextField()  # JSON
    uid = pw.IntegerField(null=True)
    pid = pw.IntegerField(null=True)

    class Meta:
        table_name = "commands"


class Mark(BaseModel):
    """Numbers that must outlive the rows they come from: "last_job_id",
    "last_attempt_id", "last_event_seq" and "last_task_id", the highest ids ever
    given, written when a prune deletes the newest rows (the writer goes on from the
    larger of a mark and the table's max): an id names one thing ever (a task's, its
    output folders too), and a reader of events resuming from a number never gets an
    event it has not seen under a number it has."""

    name = pw.TextField(primary_key=True)
    value = pw.IntegerField()

    class Meta:
        table_name = "marks"


class Pool(BaseModel):
    name = pw.TextField(primary_key=True)
    threads = pw.IntegerField()
    queue_size = pw.IntegerField()
    frozen = pw.BooleanField(default=False)

    class Meta:
        table_name = "pools"


class Batch(BaseModel):
    """One add request of a keyed batch (an idempotency key): a request sent again
    with the same key and part gets the ids it was given, and adds nothing. A digest
    of its jobs tells a resent part from another batch under a key used twice."""

    uid = pw.IntegerField()  # keys are the sender's own: one user's key is not another's
    key = pw.TextField()
    part = pw.IntegerField()  # the request's place in its batch, from 0
    digest = pw.TextField()
    first = pw.IntegerField()  # the jobs' ids: first, first + 1, ..., first + count - 1
    count = pw.IntegerField()
    created = pw.FloatField()

    class Meta:
        table_name = "batches"
        primary_key = pw.CompositeKey("uid", "key", "part")


class Task(BaseModel):
    """A campaign (see gsup/tasks): its transforms' units run as jobs."""

    id = pw.AutoField()
    name = pw.TextField()
    spec = pw.TextField()  # JSON: the checked task (gsup.tasks.spec.task_to_json)
    context = pw.TextField()  # JSON: where it was submitted from (cwd, import path, env)
    state = pw.TextField()  # running | paused | completed | failed | completed_with_failures
    float = pw.IntegerField()  # units in flight at once, over the whole task
    created = pw.FloatField()
    ended = pw.FloatField(null=True)
    reason = pw.TextField(null=True)

    class Meta:
        table_name = "tasks"


class Transform(BaseModel):
    """A stage of a task; its position is its place in the task file."""

    id = pw.AutoField()
    task = pw.IntegerField()
    position = pw.IntegerField()
    name = pw.TextField()
    state = pw.TextField()  # running | completed | failed | completed_with_failures
    ended = pw.FloatField(null=True)
    reason = pw.TextField(null=True)

    class Meta:
        table_name = "transforms"
        indexes = ((("task", "position"), True),)


class Unit(BaseModel):
    """A unit of a transform's work; each run of it is a job (`job`: the latest)."""

    id = pw.AutoField()
    task = pw.IntegerField()
    transform = pw.IntegerField()  # transforms.id
    idx = pw.IntegerField()  # its place in its transform, from 0
    state = pw.TextField()  # waiting | submitted | done | failed | skipped
    call = pw.TextField()  # JSON: args, kwargs, inputs (absolute paths)
    upstream = pw.IntegerField(null=True)  # the unit whose outputs are its inputs
    job = pw.IntegerField(null=True)
    jobs = pw.IntegerField(default=0)  # jobs made for it (a reset makes a new one)
    reason = pw.TextField(null=True)  # why it failed or was skipped
    merged = pw.IntegerField(null=True)  # merges.id: the merge that put its outputs in
    landed = pw.FloatField(null=True)  # when its declared outputs were seen to land

    class Meta:
        table_name = "units"
        indexes = ((("transform", "idx"), True),)


class Merge(BaseModel):
    """One run of a transform's merger (a job on the monitoring pool): it adds the units
    whose `merged` is its id to the merged file, or (`full`) writes the file anew from
    them. A unit is in the merged file once its merge is `done`."""

    id = pw.AutoField()
    task = pw.IntegerField()
    transform = pw.IntegerField()
    job = pw.IntegerField()  # 0: a mark that the file must be written anew (a unit reset)
    out = pw.TextField()  # the merged file
    full = pw.BooleanField()
    state = pw.TextField()  # running | done | stale | failed
    units = pw.IntegerField()  # how many units it adds
    size = pw.IntegerField(null=True)  # the merged file's size after it
    error = pw.TextField(null=True)  # why it failed, in one line
    created = pw.FloatField()
    ended = pw.FloatField(null=True)

    class Meta:
        table_name = "merges"
        indexes = ((("transform",), False), (("job",), False))


# The engine's queries: the next waiting units of a task; the units in flight.
Unit.add_index(Unit.index(Unit.task, Unit.transform, Unit.idx, name="units_waiting").where(
    Unit.state == "waiting"))  # fmt: skip
Unit.add_index(Unit.index(Unit.job, name="units_submitted").where(Unit.state == "submitted"))
# `gsup task show`: units counted by state, the failed ones, from the index alone.
Unit.add_index(Unit.index(Unit.transform, Unit.state, name="units_state"))


MODELS = (Job, Attempt, Result, Event, Command, Pool, Mark, Batch, Task, Transform, Unit, Merge)
