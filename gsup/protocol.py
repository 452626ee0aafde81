"""The socket protocol, shared by the client and the daemon.

One message is one line of JSON. A request is `{"verb": ..., "id": n, ...fields}`;
its reply is `{"id": n, "ok": true, ...}` or `{"id": n, "ok": false, "error": "..."}`.
Each verb has one schema here, one client method and one daemon handler.
Kept import-light: the CLI's `add` path imports it.
"""

from __future__ import annotations

import builtins
import json
import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gsup.config import (
    DEFAULT_PRIORITY,
    EXECUTOR_NAMES,
    MAX_JOB_ID,
    MAX_MESSAGE,
    POOL_NAMES,
    SLURM,
)

KINDS = ("call", "cmd")
ON_LOST = ("requeue", "fail")


class ProtocolError(Exception):
    """A message that breaks the protocol; the text is sent back to the client."""


def encode(message: dict[str, Any]) -> bytes:
    """One line of UTF-8 JSON (a lone surrogate, which UTF-8 cannot hold, becomes '?')."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "replace") + b"\n"


class LineReader:
    """Splits a byte stream into JSON messages, refusing lines over `limit` bytes."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._scanned = 0  # bytes at the buffer's start known to hold no newline

    @property
    def pending(self) -> int:
        """Bytes of a line not finished yet."""
        return len(self._buffer)

    def clear(self) -> None:
        self._buffer, self._scanned = bytearray(), 0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        # A long line arriving in pieces is scanned once (rescanned after a bad line).
        start, self._scanned = self._scanned, 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = self._buffer[:end]
            del self._buffer[: end + 1]
            start = 0
            messages.append(decode(line, self.limit))
        self._scanned = len(self._buffer)
        if len(self._buffer) > self.limit:
            self.clear()
            raise ProtocolError(f"message larger than {self.limit} bytes")
        return messages


def decode(line: bytes | bytearray, limit: int = MAX_MESSAGE) -> dict[str, Any]:
    if len(line) > limit:
        raise ProtocolError(f"message larger than {limit} bytes")
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError("message must be a JSON object")
    return message


# --- field checks -------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MAX_SECONDS = 365 * 24 * 3600.0  # timeouts and retry delays: a year at most
MAX_RETRIES = 1_000_000
MAX_NAME = 1_000  # characters: a name travels in every reply about its job


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not inf or nan, not an int beyond a float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxlong = _SHOWN.maxother = 60


def shown(value: Any) -> str:
    """A client's value as an error quotes it: short whatever its size, so that a
    refusal cannot outgrow a message (a string of backslashes doubles when repr'd,
    and again in JSON)."""
    return _SHOWN.repr(value)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ProtocolError(message)


def check_job_id(value: Any) -> int:
    _check(
        _is_int(value) and 0 < value <= MAX_JOB_ID,
        f"job id must be a positive integer, not {shown(value)}",
    )
    return value


def check_pool(value: Any, allow_all: bool = False) -> str | None:
    if value is None and allow_all:
        return None
    _check(
        value in POOL_NAMES, f"unknown queue {shown(value)}; choose from {', '.join(POOL_NAMES)}"
    )
    return value


@dataclass
class JobSpec:
    """What a client asks to run. The daemon stores it and never interprets `call` parts.

    A callable travels by reference (`target` is `pkg.mod:attr`) or by value
    (`pickled` holds it, dill-encoded, and `target` is only a label). Arguments travel
    as Python literal text (`arguments`, readable in the journal) or inside `pickled`.
    """

    kind: str = "call"
    target: str = ""
    display: str = ""
    arguments: str | None = None  # literal text of (args, kwargs)
    pickled: str | None = None  # base64 of dill((callable or None, args, kwargs))
    argv: list[str] = field(default_factory=list)  # kind == "cmd"
    cwd: str = "/"
    path: list[str] = field(default_factory=list)  # prepended to sys.path for imports
    env: dict[str, str] | None = None  # kind == "cmd": the client's environment
    pool: str | None = None  # None: the daemon's default backend runs it
    priority: int = DEFAULT_PRIORITY
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 0.0
    backoff: float = 2.0
    retry_on: list[str] | None = None
    on_lost: str = "requeue"
    name: str | None = None
    unit: dict[str, Any] | None = None  # a unit of a task: name, outdir, inputs (the daemon's)
    sbatch: list[str] | None = None  # options of its sbatch (the slurm backend's jobs)

    def to_wire(self) -> dict[str, Any]:
        """The fields that differ from their defaults (the daemon fills in the rest)."""
        defaults = _SPEC_DEFAULTS
        return {name: value for name, value in vars(self).items() if value != defaults[name]}

    def text_size(self) -> int:
        """Characters of its texts (what its journal row holds beyond fixed columns):
        a command's environment can be hundreds of kilobytes."""
        texts = [self.target, self.display, self.arguments, self.pickled, self.cwd, self.name]
        size = sum(len(text) for text in texts if text)
        size += sum(len(item) for item in (*self.argv, *self.path, *(self.sbatch or ())))
        return size + sum(len(key) + len(value) for key, value in (self.env or {}).items())

    @classmethod
    def from_wire(cls, data: Any, defaults: dict[str, Any] | None = None) -> JobSpec:
        """Validate a job sent by a client; raises ProtocolError naming the bad field.
        `defaults` are fields checked already, shared with other jobs."""
        _check_fields(data)
        spec = cls(**{**defaults, **data}) if defaults else cls(**data)
        if spec.kind == "cmd":
            _check(bool(spec.argv), "a command job needs a command")
        else:
            _check(bool(spec.target), "a call job needs a target")
            _check(
                spec.arguments is not None or spec.pickled is not None,
                "a call job needs arguments or a pickled call",
            )
        if spec.timeout is not None:
            spec.timeout = float(spec.timeout)
        _check(
            not spec.sbatch or spec.pool in (None, SLURM),
            f"sbatch options are for jobs of the slurm backend, not of {spec.pool}",
        )
        return spec


MAX_KEY = 100  # characters of a batch key
_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")


class BatchPart:
    """An add request's place in a keyed batch (see journal/schema.Batch). A plain
    class: a dataclass costs `gsup add` 0.6 ms to make at import."""

    __slots__ = ("digest", "key", "part")

    def __init__(self, key: str, part: int, digest: str) -> None:
        self.key = key
        self.part = part  # from 0, in the order the client sends them
        self.digest = digest  # of the request's jobs: see `batch_digest`

    @classmethod
    def from_wire(cls, data: Any) -> BatchPart:
        _check(isinstance(data, dict) and data.keys() == {"key", "part", "digest"},
               "batch must be an object of key, part and digest")  # fmt: skip
        check_batch_key(data["key"])
        _check(_is_int(data["part"]) and 0 <= data["part"] <= MAX_JOB_ID,
               "a batch part must be a whole number from 0")  # fmt: skip
        _check(isinstance(data["digest"], str) and 0 < len(data["digest"]) <= 128,
               "a batch digest must be a text of 1 to 128 characters")  # fmt: skip
        return cls(data["key"], data["part"], data["digest"])


def check_batch_key(key: Any) -> str:
    _check(
        isinstance(key, str) and 0 < len(key) <= MAX_KEY and _KEY_CHARS.issuperset(key),
        f"a batch key is 1 to {MAX_KEY} letters, digits and . _ : -, not {shown(key)}",
    )
    return key


def batch_digest(jobs: list[JobSpec]) -> str:
    """What makes a part of a batch the same jobs when it is sent again: what each job
    runs and where (not its environment, which a new shell changes)."""
    import hashlib  # here: off the import path of a one-job `gsup add`

    digest = hashlib.blake2b(digest_size=16)
    for job in jobs:
        words = (job.kind, job.target, job.display, job.arguments or "", job.cwd, job.pool or "",
                 job.name or "", *job.argv)  # fmt: skip
        digest.update("\0".join(words).encode("utf-8", "replace") + b"\1")
    return digest.hexdigest()


# What gsup's own sbatch command line says (commands.sbatch_argv): a job may not change.
GSUP_SBATCH = ("--output", "--error", "--chdir", "--hold", "--parsable", "--wrap", "--array",
               "--wait", "--test-only", "--job-name")  # fmt: skip


def is_sbatch_option(option: str) -> bool:
    """`--name=value` or `--flag`, long names only: a short one (-o) could hide one of
    GSUP_SBATCH, as could an abbreviation (sbatch takes --arr for --array), and a word
    without dashes would be taken as the script."""
    name = option.partition("=")[0]
    return (
        option.startswith("--")
        and name[2:].replace("-", "").isalnum()
        and not any(reserved.startswith(name) for reserved in GSUP_SBATCH)
    )


def _check_fields(data: Any) -> None:
    _check(isinstance(data, dict), "a job must be a JSON object")
    unknown = data.keys() - _SPEC_RULES.keys()
    _check(not unknown, "unknown job fields: " + ", ".join(sorted(unknown)))
    for name, value in data.items():  # fields left out keep their valid defaults
        valid, message = _SPEC_RULES[name]
        if not valid(value):
            raise ProtocolError(message.format(value=shown(value)))


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_os_text(value: Any) -> bool:
    """A text the system takes as a path, word or variable: no NUL, valid UTF-8 (a lone
    surrogate, sent escaped, is none). One that is not kills its pool at every start."""
    if not isinstance(value, str) or "\0" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_os_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(map(_is_os_text, value))


RETRY_CAUSES = (
    "a built-in exception name (ValueError), the dotted path of one (mymod.MyError),"
    " 'timeout' or 'exit'"
)


def is_retry_cause(name: str) -> bool:
    """What --retry-on may name: a built-in exception, a dotted path (checked by --check,
    as it can only be imported in the job's folder), 'timeout' or 'exit'."""
    if name in ("timeout", "exit"):
        return True
    if "." in name:
        return all(part.isidentifier() for part in name.split("."))
    found = getattr(builtins, name, None)
    return isinstance(found, type) and issubclass(found, BaseException)


def _is_optional_str(value: Any) -> bool:
    return value is None or isinstance(value, str)


# Each field's test, and the message (formatted with the value) when it fails.
_SPEC_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "kind": (lambda v: v in KINDS, "job kind must be one of " + ", ".join(KINDS)),
    "target": (lambda v: isinstance(v, str), "target must be a string"),
    "display": (lambda v: isinstance(v, str), "display must be a string"),
    "arguments": (_is_optional_str, "arguments must be a string"),
    "pickled": (_is_optional_str, "pickled must be a string"),
    "argv": (_is_os_text_list, "argv must be a list of UTF-8 strings without NUL"),
    "cwd": (_is_os_text, "cwd must be a UTF-8 string without NUL"),
    "path": (_is_os_text_list, "path must be a list of UTF-8 strings without NUL"),
    "env": (
        lambda v: v is None or (isinstance(v, dict) and all(map(_is_os_text, v.values()))),
        "env must map names to UTF-8 strings without NUL",
    ),
    "pool": (
        lambda v: v is None or v in EXECUTOR_NAMES,
        "unknown queue {value}; choose from " + ", ".join(EXECUTOR_NAMES),
    ),
    "priority": (lambda v: _is_int(v) and 0 <= v <= 9, "priority must be 0-9, not {value}"),
    "timeout": (
        lambda v: v is None or (_is_number(v) and 0 < v <= MAX_SECONDS),
        f"timeout must be a positive number of seconds up to {MAX_SECONDS:g}, not {{value}}",
    ),
    "retries": (
        lambda v: _is_int(v) and 0 <= v <= MAX_RETRIES,
        f"retries must be 0 to {MAX_RETRIES:,}, not {{value}}",
    ),
    "retry_delay": (
        lambda v: _is_number(v) and 0 <= v <= MAX_SECONDS,
        f"retry_delay must be 0 to {MAX_SECONDS:g} seconds",
    ),
    "backoff": (lambda v: _is_number(v) and 1 <= v <= 1000, "backoff must be 1 to 1000"),
    "retry_on": (
        lambda v: v is None or (_is_str_list(v) and all(map(is_retry_cause, v))),
        f"retry_on: each must be {RETRY_CAUSES}; not {{value}}",
    ),
    "on_lost": (lambda v: v in ON_LOST, "on_lost must be one of " + ", ".join(ON_LOST)),
    "name": (
        lambda v: v is None or (isinstance(v, str) and len(v) <= MAX_NAME),
        f"name must be a string of at most {MAX_NAME:,} characters",
    ),
    "unit": (lambda v: v is None, "unit is set by the daemon's task engine, not by a client"),
    "sbatch": (
        lambda v: v is None or (_is_os_text_list(v) and all(map(is_sbatch_option, v))),
        "sbatch options must look like --name=value, and not be one gsup sets"
        f" ({', '.join(GSUP_SBATCH)}); not {{value}}",
    ),
}


_SPEC_DEFAULTS = {name: getattr(JobSpec(), name) for name in JobSpec.__dataclass_fields__}


# --- requests -------------------------------------------------------------------

MAX_JOBS_PER_REQUEST = 100_000  # an add's jobs, a wait's ids: a reply stays small


def request_id(message: dict[str, Any]) -> int | None:
    """The id a reply echoes: the request's if it is valid, else None (an id that is
    not an integer, such as NaN, would make the reply invalid JSON)."""
    found = message.get("id")
    return found if _is_int(found) and abs(found) <= MAX_JOB_ID else None


def check_request(message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return (verb, checked fields) of a request, or raise ProtocolError."""
    sent = message.get("id")
    _check(
        sent is None or request_id(message) is not None,
        "a request id must be an integer of 64 bits",
    )
    verb = message.get("verb")
    checker = _REQUESTS.get(verb) if isinstance(verb, str) else None
    _check(checker is not None, f"unknown request {shown(verb)}")
    return verb, checker(message)  # type: ignore[misc]


def _ping(message: dict[str, Any]) -> dict[str, Any]:
    return {}


def _add(message: dict[str, Any]) -> dict[str, Any]:
    """`jobs`, each a JobSpec's fields; `defaults`, fields shared by all of them, sent
    (and checked) once; `batch`, its BatchPart if the batch has a key."""
    jobs = message.get("jobs")
    _check(isinstance(jobs, list) and jobs, "add needs a non-empty list of jobs")
    _check_count(jobs)
    defaults = message.get("defaults") or {}
    _check_fields(defaults)
    batch = message.get("batch")
    return {
        "jobs": [JobSpec.from_wire(job, defaults) for job in jobs],
        "batch": None if batch is None else BatchPart.from_wire(batch),
    }


def _check_count(jobs: list[Any]) -> None:
    _check(len(jobs) <= MAX_JOBS_PER_REQUEST, f"at most {MAX_JOBS_PER_REQUEST} jobs per request")


def shared_fields(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fields all jobs of a batch have alike: an add request sends them once."""
    first, rest = jobs[0], jobs[1:]
    missing = object()
    return {
        name: value
        for name, value in first.items()
        if all((other := job.get(name, missing)) is value or other == value for job in rest)
    }


def _one_job(message: dict[str, Any]) -> dict[str, Any]:
    return {"job": check_job_id(message.get("job"))}


def _get(message: dict[str, Any]) -> dict[str, Any]:
    """`wait`: answer once the job has ended."""
    wait = message.get("wait", False)
    _check(isinstance(wait, bool), "wait must be true or false")
    return {"job": check_job_id(message.get("job")), "wait": wait}


def _stop(message: dict[str, Any]) -> dict[str, Any]:
    """`now`: end the grace period at once (as a second SIGTERM does)."""
    now = message.get("now", False)
    _check(isinstance(now, bool), "now must be true or false")
    return {"now": now}


def _purge(message: dict[str, Any]) -> dict[str, Any]:
    return {"pool": check_pool(message.get("pool"), allow_all=True)}


def _freeze(message: dict[str, Any]) -> dict[str, Any]:
    frozen = message.get("frozen")
    _check(isinstance(frozen, bool), "frozen must be true or false")
    return {"pool": check_pool(message.get("pool"), allow_all=True), "frozen": frozen}


def _wait(message: dict[str, Any]) -> dict[str, Any]:
    jobs = message.get("jobs")
    _check(isinstance(jobs, list) and jobs, "wait needs a non-empty list of job ids")
    _check_count(jobs)
    return {"jobs": [check_job_id(job) for job in jobs]}


def _prune(message: dict[str, Any]) -> dict[str, Any]:
    """Delete the jobs in an end state (`state`: that one only) that ended more than
    `older_than` seconds ago, and all that is kept of them."""
    from gsup.retention import MAX_AGE  # here: off the import path of `gsup add`
    from gsup.states import END_STATES

    older_than, state = message.get("older_than"), message.get("state")
    _check(
        _is_number(older_than) and 0 < older_than <= MAX_AGE,
        f"older_than must be a positive number of seconds up to {MAX_AGE:g},"
        f" not {shown(older_than)}",
    )
    _check(state is None or state in END_STATES,
           "state must be one of " + ", ".join(sorted(END_STATES)))  # fmt: skip
    return {"older_than": float(older_than), "state": state}


TASK_ACTIONS = ("pause", "resume", "retry_failed", "retry_merge", "reset")


def _task_submit(message: dict[str, Any]) -> dict[str, Any]:
    """`task`: the task as gsup.tasks.spec.task_to_json writes it (the daemon checks
    it); `context`: where it was submitted from: cwd, the import path, the environment
    (for its commands)."""
    task, context = message.get("task"), message.get("context")
    _check(isinstance(task, str), "task must be the task's JSON text")
    _check(isinstance(context, dict), "context must be an object")
    cwd, path, env = context.get("cwd"), context.get("path"), context.get("env")
    _check(_is_os_text(cwd) and cwd.startswith("/"), "context.cwd must be an absolute path")
    _check(_is_os_text_list(path), "context.path must be a list of UTF-8 strings without NUL")
    _check(
        env is not None and _SPEC_RULES["env"][0](env),
        _SPEC_RULES["env"][1].replace("env", "context.env"),
    )
    return {"task": task, "context": {"cwd": cwd, "path": path, "env": env}}


def _task_id(message: dict[str, Any]) -> int:
    task = message.get("task")
    _check(
        _is_int(task) and 0 < task <= MAX_JOB_ID,
        f"task id must be a positive integer, not {shown(task)}",
    )
    return task


def _task_control(message: dict[str, Any]) -> dict[str, Any]:
    """`action` on task `task`; `unit` (TRANSFORM/INDEX) for a reset."""
    task, action, unit = _task_id(message), message.get("action"), message.get("unit")
    _check(action in TASK_ACTIONS, "action must be one of " + ", ".join(TASK_ACTIONS))
    _check((unit is not None) == (action == "reset"), "a reset, and only a reset, names a unit")
    _check(
        unit is None or (isinstance(unit, str) and len(unit) <= MAX_NAME),
        "unit must be TRANSFORM/INDEX",
    )
    return {"task": task, "action": action, "unit": unit}


def _task_wait(message: dict[str, Any]) -> dict[str, Any]:
    """Answer with task `task`'s end state once it has one."""
    return {"task": _task_id(message)}


def _follow(message: dict[str, Any]) -> dict[str, Any]:
    """Push the events numbered after `since` as they are committed, of job `job` or of
    task `task`'s jobs if one is named; `brief`: only the number of the last event
    after each commit that wrote one (see supervisor/followers.py)."""
    since, job, task = message.get("since"), message.get("job"), message.get("task")
    brief = message.get("brief", False)
    _check(_is_int(since) and 0 <= since <= 2**63 - 1,
           f"since must be an event number from 0, not {shown(since)}")  # fmt: skip
    _check(job is None or task is None, "follow one job or one task, not both")
    _check(isinstance(brief, bool), "brief must be true or false")
    _check(not brief or (job is None and task is None), "a brief follow names no job or task")
    return {
        "since": since,
        "job": None if job is None else check_job_id(job),
        "task": None if task is None else _task_id(message),
        "brief": brief,
    }


def _stats(message: dict[str, Any]) -> dict[str, Any]:
    return {}


_REQUESTS = {
    "ping": _ping,
    "follow": _follow,
    "stats": _stats,
    "why": _one_job,
    "add": _add,
    "get": _get,
    "cancel": _one_job,
    "retry": _one_job,
    "purge": _purge,
    "freeze": _freeze,
    "wait": _wait,
    "stop": _stop,
    "prune": _prune,
    "task_submit": _task_submit,
    "task_control": _task_control,
    "task_wait": _task_wait,
}
MUTATING = {"add", "cancel", "retry", "purge", "freeze", "prune", "task_submit", "task_control"}
