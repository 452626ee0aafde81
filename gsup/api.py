"""The Python API: `from gsup import queues; queues.add(f, args=(123,))`.

Every error it raises is a `gsup.GsupError` (the text is one line): `JobFailed` when a
job ended without a result, `WaitTimeout` (also a TimeoutError) when a wait gives up,
`DaemonNotRunning`, `TargetError` for a bad target or argument, `BadOptions` (also a
TypeError) for an unknown job option.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypedDict, Unpack

from gsup.client import Client, DaemonFacade, Pending
from gsup.config import MAX_JOB_ID, Paths, pool_for, resolve_home
from gsup.errors import BadOptions, GsupError, WaitTimeout
from gsup.protocol import JobSpec, ProtocolError, check_batch_key
from gsup.specs import call_specs, python_path


class JobOptions(TypedDict, total=False):
    """The options of a job, as `queues.add` and `add_many` take them: the one list of
    their names. One left out takes JobSpec's default (gsup/protocol.py)."""

    priority: int  # 0-9, 0 runs first; FIFO among equals
    timeout: float | None  # seconds before the job is stopped
    queue: str  # the local backend's pool: "user" or "monitoring"
    backend: str  # "local", "process" or "slurm"; neither this nor queue: the daemon's default
    sbatch: list[str] | None  # options of its sbatch, with backend="slurm": ["--partition=x"]
    name: str | None  # a name to show, 1,000 characters at most
    retries: int  # how many times it runs again after a failure or timeout
    retry_delay: float  # seconds before the first retry
    backoff: float  # each retry waits this many times longer
    retry_on: list[str] | None  # exception names, "timeout", "exit"; None: any failure
    # but a target that cannot be loaded (gsup/lifecycle.py should_retry)
    on_lost: str  # "requeue" or "fail": for jobs that must not run twice


JOB_OPTIONS = frozenset(JobOptions.__annotations__)


def _job_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """JobSpec's fields for `options`; BadOptions (a TypeError, as Python's own for an
    unexpected keyword) naming those that are no job option."""
    unknown = options.keys() - JOB_OPTIONS
    if unknown:
        raise BadOptions(f"unknown job options: {', '.join(sorted(unknown))}")
    fields = dict(options)
    try:
        fields["pool"] = pool_for(fields.pop("backend", None), fields.pop("queue", None))
    except ValueError as exc:
        raise BadOptions(str(exc)) from None
    return fields


class JobFailed(GsupError):
    """A job ended without a result: failed, timed out, was cancelled or lost."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        detail = job.get("error") or job.get("reason") or ""
        super().__init__(
            f"job {job['id']} ended {job['state']}" + (f": {detail}" if detail else "")
        )


class JobHandle:
    """A job added through the API (or found with `queues.job(ID)`).

    Its `id` is known once the journal holds the job: `queues.add` returns as soon as
    the request is sent, so that adds in a row share the daemon's commits; reading
    `id` (or `state`, `result()`, ...) waits for it, and raises the refusal if the
    daemon refused the job.
    """

    # A job added less than this long ago has rarely ended: `result` asks the daemon
    # at once rather than read the journal first.
    FRESH = 0.005

    def __init__(self, client: Client, added: Pending | int) -> None:
        self._client = client
        self._added = added
        self._added_at = time.monotonic()

    @property
    def id(self) -> int:
        if isinstance(self._added, Pending):
            self._added = self._added.reply()["ids"][0]
        return self._added

    @property
    def state(self) -> str:
        """queued, running, done, failed, timeout, cancelled or lost."""
        return self._client.get(self.id)["state"]

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the job to end; its return value, or JobFailed (failed, timed out,
        cancelled, lost). A value that was not JSON-able comes back as its repr.
        WaitTimeout if the job has not ended within `timeout` seconds."""
        fresh = time.monotonic() - self._added_at < self.FRESH
        job = self._ended(timeout, read_first=not fresh)
        if job["state"] != "done":
            raise JobFailed(job)
        if job["result_type"] == "json":
            return json.loads(job["result"])
        return job["result"]

    def wait(self, timeout: float | None = None) -> str:
        """Wait for the job to end; its end state (done, failed, timeout, cancelled,
        lost). WaitTimeout if it has not ended within `timeout` seconds."""
        return self._ended(timeout)["state"]

    def cancel(self) -> str:
        """Cancel the job if it is queued, stop it if it runs; its state now
        ("running" while it is being stopped)."""
        return self._client.cancel(self.id)["state"]

    def logs(self, attempt: int | None = None) -> str:
        """What the job printed (stdout, then stderr), in its last attempt or its
        `attempt`th (numbered from 1, as `gsup show` does). Read from the state dir's
        logs: this process must be allowed to read them."""
        from gsup.journal import queries

        with queries.read_journal(self._client.paths.home) as conn:
            chosen = queries.chosen_attempt(conn, self.id, attempt)
        paths = self._client.paths
        return "".join(_read_text(paths.printed(self.id, s, chosen)) for s in ("out", "err"))

    def _ended(self, timeout: float | None, read_first: bool = True) -> dict[str, Any]:
        _check_timeout(timeout)
        try:
            return self._client.get(self.id, wait=True, timeout=timeout, read_first=read_first)
        except WaitTimeout:
            raise WaitTimeout(f"job {self.id} has not ended within {timeout:g}s") from None

    def __repr__(self) -> str:
        """Never raises, never waits: a prompt may show a handle whose add is refused."""
        added = self._added
        if not isinstance(added, Pending):
            return f"<gsup job {added}>"
        if added.message is None:
            return "<gsup job (id not known yet)>"
        if not added.message.get("ok"):
            return f"<gsup job refused: {added.message.get('error')}>"
        return f"<gsup job {added.message['ids'][0]}>"


def _check_timeout(timeout: Any) -> None:
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if timeout is not None and not (number and 0 <= timeout < float("inf")):
        raise BadOptions(f"timeout must be None or a number of seconds from 0, not {timeout!r}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


class Queues(DaemonFacade):
    """The daemon's pools, as Ganga's `queues`.

    Printed at a prompt, it shows the same table as `gsup queues`.
    """

    def add(
        self,
        func: Callable[..., Any] | str,
        args: tuple | list = (),
        kwargs: dict[str, Any] | None = None,
        **options: Unpack[JobOptions],
    ) -> JobHandle:
        """Run `func(*args, **kwargs)` in a pool thread; returns once the request is sent
        (`id` waits until the job is journaled).

        `func` is a callable or "pkg.mod:attr"; `options` are those of JobOptions:
        priority (0 runs first), timeout (seconds), queue, name, retries, retry_delay,
        backoff, retry_on (exception names, "timeout" or "exit"; by default any failure
        but a target that cannot be loaded is retried), on_lost ("requeue" or "fail",
        for jobs that must not run twice). BadOptions for any other keyword.
        """
        if not isinstance(args, tuple | list) or not isinstance(kwargs, dict | None):
            raise BadOptions("args must be a tuple or list, and kwargs a dict")
        (spec,) = call_specs(func, [tuple(args)], kwargs, python_path(), **_job_options(options))
        wire = spec.to_wire()
        try:  # bad input fails here, not when the id is read
            JobSpec.from_wire(wire)
        except ProtocolError as exc:
            raise BadOptions(str(exc)) from None
        return JobHandle(self.client, self.client.send("add", jobs=[wire]))

    def add_many(
        self,
        func: Callable[..., Any] | str,
        arguments: Iterable[Any],
        kwargs: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        **options: Unpack[JobOptions],
    ) -> list[JobHandle]:
        """One job per item of `arguments`: a tuple of positional arguments, or one
        argument; `options` as for `add`. Sent in requests of up to 10,000 jobs.
        PartlyAdded if some were not added: the same call with its `key` adds the
        rest, and none twice (a batch of one request has a key only if given one)."""
        if key is not None:
            try:
                check_batch_key(key)
            except ProtocolError as exc:
                raise BadOptions(str(exc)) from None
        fields = _job_options(options)
        try:
            items = iter(arguments)
        except TypeError:
            raise BadOptions(f"arguments must be an iterable, not {arguments!r}") from None
        tuples = (item if isinstance(item, tuple) else (item,) for item in items)
        specs = call_specs(func, tuples, kwargs, python_path(), **fields)
        return [JobHandle(self.client, job) for job in self.client.add_many(specs, key)]

    def job(self, job_id: int) -> JobHandle:
        """A handle for a job that exists (added by anyone); GsupError if there is none."""
        if not (isinstance(job_id, int) and 0 < job_id <= MAX_JOB_ID):
            raise GsupError(f"{job_id!r} is not a job id (ids are whole numbers from 1)")
        self.client.get(job_id)  # the daemon says "no job N"
        return JobHandle(self.client, job_id)

    def freeze(self, queue: str | None = None) -> None:
        """Start nothing new in `queue` (all pools by default); jobs keep queuing."""
        self.client.freeze(queue, True)

    def unfreeze(self, queue: str | None = None) -> None:
        """Let a frozen pool (all pools by default) start jobs again."""
        self.client.freeze(queue, False)

    def __repr__(self) -> str:
        from gsup.render import queues_for

        try:
            return queues_for(Paths(resolve_home(self._home)))
        except Exception as exc:  # a repr must not raise at a prompt
            return f"<gsup queues: {exc}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))
