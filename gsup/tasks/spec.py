"""Task descriptions: task files (TOML) and tasks built in Python, every check made at
submit time, the units of a transform, and the JSON the journal keeps.

A task holds transforms (stages); a transform splits its work into units; each run of a
unit is a job, which the daemon's engine makes. Every error is one TaskError line; for a
task file it names the file and the line of the offending key:
`sweep.toml, line 12: unknown key 'flaot' in [task]`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NoReturn

from gsup.config import DEFAULT_PRIORITY, SLURM, PlacementError, pool_for
from gsup.errors import GsupError
from gsup.protocol import (
    MAX_RETRIES,
    MAX_SECONDS,
    RETRY_CAUSES,
    JobSpec,
    _is_int,
    _is_number,
    is_retry_cause,
    is_sbatch_option,
    shown,
)
from gsup.targets import TargetError, parse_target, reference_of

DEFAULT_FLOAT = 10  # units in flight at once, over the whole task
MAX_TASK_NAME = 100  # characters of a task's or a transform's name
MERGER_KINDS = ("text", "csv", "jsonl", "tar")
INPUT_MODES = ("each", "all")
SOURCES = ("units", "params", "files", "inputs_from")  # where a transform's units come from

# Where an error is in a task file: (table, transform number, key). The table is "task",
# "transform" or "" (the top level); the key None stands for the table's header.
Where = tuple[str, int, str | None]


class TaskError(GsupError):
    """A task that cannot be run; one line, which for a task file names the file and the
    line of the offending key."""

    def __init__(self, message: str, where: Where | None = None) -> None:
        super().__init__(message)
        self.where = where


# --- the model -----------------------------------------------------------------


@dataclass
class InputsFrom:
    """The units of an inputs_from transform: the outputs of `transform`'s units that match
    `include` (everything if empty) and no `exclude` glob; one unit per finished unit of
    `transform` ("each"), or one unit of them all once all have finished ("all")."""

    transform: str
    mode: str = "each"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.include = _as_globs(self.include)
        self.exclude = _as_globs(self.exclude)


@dataclass
class Merger:
    """How a transform's unit outputs become one: a kind of MERGER_KINDS or the
    `pkg.mod:func` of a custom merger."""

    kind: str
    ignore_failed: bool = False  # merge what the units that succeeded made
    overwrite: bool = False  # replace a merged output already there


@dataclass
class Transform:
    """One stage of a task: a target (`pkg.mod:attr`, or in Python an importable function)
    or a command, run once per unit. The units come from exactly one of `units` (argument
    lists; an item x that is no list stands for [x]), `params` (keyword lists, whose
    cartesian product is taken in key order), `files` (a glob relative to the task's
    folder, `files_per_unit` files to a unit) or `inputs_from` (another transform's
    outputs). A string `inputs_from` or `merger` is a shorthand for the dataclass."""

    name: str
    target: str | Callable[..., Any] | None = None
    cmd: tuple[str, ...] | None = None
    units: list[list[Any]] | None = None
    params: dict[str, list[Any]] | None = None
    files: str | None = None
    files_per_unit: int = 1
    inputs_from: InputsFrom | None = None
    outputs: tuple[str, ...] = ()  # globs in the unit's output folder
    retries: int = 0
    retry_on: tuple[str, ...] | None = None  # None: anything retryable
    retry_recurring: bool = False  # resubmit failures that will recur (TargetError) too
    abort_after: int | str | None = None  # failed units, or a percentage such as "5%"
    merger: Merger | None = None
    queue: str | None = None  # a local pool; neither this nor backend: the daemon's default
    backend: str | None = None
    sbatch: tuple[str, ...] = ()  # options of its jobs' sbatch (backend "slurm")
    priority: int = DEFAULT_PRIORITY
    timeout: float | None = None

    def __post_init__(self) -> None:
        # One shape for what can be given several ways: a file and Python then agree,
        # and the JSON of a task reads back equal. Wrong types are left for check().
        if callable(self.target):
            self.target = _reference(self.target, self.name)
        self.cmd = _as_tuple(self.cmd)
        self.outputs = _as_tuple(self.outputs)
        self.retry_on = _as_tuple(self.retry_on)
        self.sbatch = _as_tuple(self.sbatch) or ()
        if isinstance(self.units, list | tuple | range):
            self.units = [list(u) if isinstance(u, list | tuple) else [u] for u in self.units]
        if isinstance(self.params, dict):
            self.params = {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()
            }
        self.inputs_from = _as_dataclass(InputsFrom, self.inputs_from)
        self.merger = _as_dataclass(Merger, self.merger)


@dataclass
class Task:
    """A campaign: its transforms, and how many units may be in flight at once (`float`).
    `base` is the folder its files globs are relative to, where its targets are imported
    from: the task file's folder, or for a task built in Python the cwd at creation."""

    name: str
    transforms: list[Transform]
    float: int = DEFAULT_FLOAT
    base: str = field(default_factory=os.getcwd)
    origin: TaskFile | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.transforms, tuple):
            self.transforms = list(self.transforms)
        self.base = os.path.abspath(self.base)


@dataclass(frozen=True)
class Unit:
    """One unit of a transform: the arguments of its call (or the words after a command's),
    and the files it takes in (absolute paths)."""

    index: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    inputs: tuple[str, ...]


def _reference(target: Callable[..., Any], transform: str) -> str:
    """`module:qualname` of a function that a pool can import: a task's units are
    journaled and run later, maybe after a restart, so no callable travels by value."""
    found = reference_of(target)
    if found is None:
        what = getattr(target, "__qualname__", type(target).__name__)
        raise TaskError(
            f"transform {transform!r}: {what} cannot be imported by name (a lambda, a closure"
            " or a function of __main__); a task's units run later: give a module's function"
        )
    return found


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _as_globs(value: Any) -> Any:
    return (value,) if isinstance(value, str) else _as_tuple(value)


def _as_dataclass(kind: type, value: Any) -> Any:
    """A name, or a table of the dataclass's fields (a file's, JSON's), as the dataclass;
    anything else is left for check() to refuse."""
    first = fields(kind)[0].name
    if isinstance(value, str):
        return kind(value)
    names = {f.name for f in fields(kind)}
    if isinstance(value, dict) and first in value and value.keys() <= names:
        return kind(**value)
    return value


# --- checks ----------------------------------------------------------------------


def check(task: Task) -> None:
    """Every check made at submit time but the import of targets (check_targets): names,
    values and their limits, one source of units that yields at least one unit (a files
    glob must match), arguments that the journal can hold, inputs_from naming a transform
    of the task, and no cycle. Raises the first problem as a TaskError. The loader calls
    it; the daemon calls it again on what it receives."""
    error = next(_task_errors(task), None)
    if error is not None:
        _fail(task, error)


def _fail(task: Task, error: TaskError) -> NoReturn:
    """Raise the error, located in the task's file if it has one."""
    raise (task.origin.located(error) if task.origin else error) from None


NAME_RULE = f"1 to {MAX_TASK_NAME} letters, digits and . _ - (not only dots)"
_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_TASK_NAME}}}")


def _is_name(name: Any) -> bool:
    """A task's or transform's name: it names a folder, so '.' and '..' are none."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and name.strip(".") != ""


def _task_errors(task: Task) -> Iterator[TaskError]:
    """The task's problems in the order of a task file; each is looked for once those
    before it are ruled out (names are valid before they are compared)."""
    if not _is_name(task.name):
        yield TaskError(f"task name must be {NAME_RULE}, not {shown(task.name)}", _TASK_NAME)
    if not (_is_int(task.float) and task.float >= 1):
        yield TaskError(
            f"float must be a whole number from 1 (units in flight), not {shown(task.float)}",
            ("task", 0, "float"),
        )
    if not (isinstance(task.transforms, list) and task.transforms):
        yield TaskError("the task needs at least one transform", ("task", 0, None))
    for index, transform in enumerate(task.transforms):
        yield from _transform_errors(task, index, transform)
    yield from _name_errors(task.transforms)
    yield from _chain_errors(task.transforms)


_TASK_NAME: Where = ("task", 0, "name")


def _transform_errors(task: Task, index: int, t: Transform) -> Iterator[TaskError]:
    if not isinstance(t, Transform):
        yield TaskError(f"transform #{index + 1} is no Transform: {shown(t)}")
    elif not _is_name(t.name):
        yield TaskError(
            f"transform #{index + 1}: name must be {NAME_RULE}, not {shown(t.name)}",
            ("transform", index, "name"),
        )
    else:
        problems = itertools.chain(
            _program_problems(t), _source_problems(task, t), _option_problems(t)
        )
        for key, problem in problems:
            yield _transform_error(t, index, key, problem)


def _transform_error(transform: Transform, index: int, key: str | None, problem: str) -> TaskError:
    return TaskError(f"transform {transform.name!r}: {problem}", ("transform", index, key))


def _program_problems(t: Transform) -> Iterator[tuple[str | None, str]]:
    if t.target is not None and t.cmd is not None:
        yield "cmd", "give target or cmd, not both"
    elif t.target is None and t.cmd is None:
        yield None, "give target or cmd"
    elif t.cmd is not None:
        if not (isinstance(t.cmd, tuple) and t.cmd and all(isinstance(w, str) for w in t.cmd)):
            yield "cmd", f"cmd must be a non-empty list of strings, not {shown(t.cmd)}"
        elif not t.cmd[0]:
            yield "cmd", "cmd's program is an empty string"
    elif not isinstance(t.target, str):
        yield "target", f"target must be a 'pkg.module:function' string, not {shown(t.target)}"
    else:
        try:
            parse_target(t.target)
        except TargetError as exc:
            yield "target", str(exc)


def _source_problems(task: Task, t: Transform) -> Iterator[tuple[str | None, str]]:
    given = [source for source in SOURCES if getattr(t, source) is not None]
    if not given:
        yield None, "give its units: units, params, files or inputs_from"
    elif len(given) > 1:
        yield given[1], f"give one source of units, not both {given[0]} and {given[1]}"
    elif given[0] == "units":
        yield from _units_problems(t.units)
    elif given[0] == "params":
        yield from _params_problems(t.params)
    elif given[0] == "files":
        yield from _files_problems(task, t)
    else:
        yield from _inputs_from_problems(t.inputs_from)
    if t.files is None and t.files_per_unit != 1:
        yield "files_per_unit", "files_per_unit is given without files"


def _argument_problems(t: Transform) -> Iterator[tuple[str, str]]:
    """What would keep the transform's arguments out of the journal."""
    if t.units is not None:
        yield from _units_problems(t.units)
    if t.params is not None:
        yield from _params_problems(t.params)


def _units_problems(units: Any) -> Iterator[tuple[str, str]]:
    if not isinstance(units, list):
        yield "units", f"units must be a list of argument lists, not {shown(units)}"
    elif not units:
        yield "units", "units is an empty list: the transform has no units"
    else:
        yield from _value_problems("units", units)


def _params_problems(params: Any) -> Iterator[tuple[str, str]]:
    if not (isinstance(params, dict) and params):
        example = "{n = [1, 2]}"
        yield (
            "params",
            f"params must be a table of value lists, such as {example}, not {shown(params)}",
        )
        return
    for name, values in params.items():
        if not (isinstance(name, str) and name.isidentifier()):
            yield "params", f"params: {shown(name)} is not a keyword argument's name"
        elif not isinstance(values, list):
            yield "params", f"params: {name} must be a list of values, not {shown(values)}"
        elif not values:
            yield "params", f"params: {name} is an empty list: the transform has no units"
    yield from _value_problems("params", list(params.values()))


def _files_problems(task: Task, t: Transform) -> Iterator[tuple[str, str]]:
    size = t.files_per_unit
    if not (isinstance(t.files, str) and t.files):
        yield "files", f"files must be a glob, such as 'data/*.txt', not {shown(t.files)}"
    elif not (_is_int(size) and size >= 1):
        yield "files_per_unit", f"files_per_unit must be a whole number from 1, not {shown(size)}"
    elif not _matching_files(task.base, t.files):
        yield "files", f"files {t.files!r} matches no file in {task.base}"


def _inputs_from_problems(source: Any) -> Iterator[tuple[str, str]]:
    if isinstance(source, dict):
        yield "inputs_from", _table_problem("inputs_from", source, InputsFrom)
    elif not isinstance(source, InputsFrom):
        yield (
            "inputs_from",
            f"inputs_from must be a transform's name or a table, not {shown(source)}",
        )
    elif not isinstance(source.transform, str):
        yield "inputs_from", f"inputs_from: transform must be a name, not {shown(source.transform)}"
    elif source.mode not in INPUT_MODES:
        yield "inputs_from", f"inputs_from: mode must be each or all, not {shown(source.mode)}"
    else:
        yield from _globs_problems("inputs_from", "include", source.include)
        yield from _globs_problems("inputs_from", "exclude", source.exclude)


def _table_problem(key: str, table: dict[str, Any], kind: type) -> str:
    """Why a table was not made into `kind` (see _as_dataclass)."""
    names = [f.name for f in fields(kind)]
    unknown = [name for name in table if name not in names]
    return f"{key}: unknown key {unknown[0]!r}" if unknown else f"{key} needs a {names[0]}"


def _globs_problems(key: str, what: str, globs: Any) -> Iterator[tuple[str, str]]:
    """Globs in a unit's output folder: relative, and none that climbs out of it."""
    label = key if key == what else f"{key}: {what}"
    if not isinstance(globs, tuple):
        yield key, f"{label} must be a list of globs, not {shown(globs)}"
        return
    for glob in globs:
        # Each part a name or a pattern: ".", "..", "" (a leading, doubled or trailing /)
        # would name the folder itself, or climb out of it.
        if not isinstance(glob, str) or {"", ".", ".."} & set(glob.split("/")):
            yield key, (f"{label}: {shown(glob)} is not a glob relative to a unit's folder"
                        " (no /, . or .. parts)")  # fmt: skip


def _option_problems(t: Transform) -> Iterator[tuple[str, str]]:
    yield from _globs_problems("outputs", "outputs", t.outputs)
    if not (_is_int(t.retries) and 0 <= t.retries <= MAX_RETRIES):
        yield "retries", f"retries must be 0 to {MAX_RETRIES:,}, not {shown(t.retries)}"
    yield from _retry_on_problems(t.retry_on)
    if not isinstance(t.retry_recurring, bool):
        yield (
            "retry_recurring",
            f"retry_recurring must be true or false, not {shown(t.retry_recurring)}",
        )
    if t.abort_after is not None and not _is_abort_after(t.abort_after):
        rule = "a count from 1 or a percentage such as '5%' (over 0, up to 100)"
        yield "abort_after", f"abort_after must be {rule}, not {shown(t.abort_after)}"
    yield from _merger_problems(t.merger)
    yield from _placement_problems(t.backend, t.queue)
    yield from _sbatch_problems(t.sbatch, t.backend)
    if not (_is_int(t.priority) and 0 <= t.priority <= 9):
        yield "priority", f"priority must be 0-9, not {shown(t.priority)}"
    if t.timeout is not None and not (_is_number(t.timeout) and 0 < t.timeout <= MAX_SECONDS):
        rule = f"a positive number of seconds up to {MAX_SECONDS:g}"
        yield "timeout", f"timeout must be {rule}, not {shown(t.timeout)}"


def _retry_on_problems(names: Any) -> Iterator[tuple[str, str]]:
    if names is None:
        return
    if not (isinstance(names, tuple) and names):
        yield "retry_on", f"retry_on must be a non-empty list of names, not {shown(names)}"
        return
    for name in names:
        if not (isinstance(name, str) and is_retry_cause(name)):
            yield "retry_on", f"retry_on: each must be {RETRY_CAUSES}; not {shown(name)}"


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def _is_abort_after(value: Any) -> bool:
    if _is_int(value):
        return value >= 1
    percent = _PERCENT.fullmatch(value) if isinstance(value, str) else None
    return percent is not None and 0 < float(percent[1]) <= 100


def _merger_problems(merger: Any) -> Iterator[tuple[str, str]]:
    if merger is None:
        return
    if isinstance(merger, dict):
        yield "merger", _table_problem("merger", merger, Merger)
    elif not isinstance(merger, Merger):
        yield "merger", f"merger must be a kind or a table, not {shown(merger)}"
    elif not _is_merger_kind(merger.kind):
        kinds = f"{', '.join(MERGER_KINDS)} or a custom merger's 'pkg.module:function'"
        yield "merger", f"merger must be {kinds}, not {shown(merger.kind)}"
    elif not (isinstance(merger.ignore_failed, bool) and isinstance(merger.overwrite, bool)):
        yield "merger", "merger: ignore_failed and overwrite must be true or false"


def _is_merger_kind(kind: Any) -> bool:
    if kind in MERGER_KINDS:
        return True
    try:
        parse_target(kind)
    except (TargetError, AttributeError):  # AttributeError: no str
        return False
    return True


def _name_errors(transforms: list[Transform]) -> Iterator[TaskError]:
    seen: set[str] = set()
    for index, transform in enumerate(transforms):
        if transform.name in seen:
            yield TaskError(
                f"two transforms are named {transform.name!r} (each names a folder)",
                ("transform", index, "name"),
            )
        seen.add(transform.name)


def _chain_errors(transforms: list[Transform]) -> Iterator[TaskError]:
    """inputs_from must name another transform of the task, and no chain may come back."""
    names = {transform.name for transform in transforms}
    source_of = {t.name: t.inputs_from.transform for t in transforms if t.inputs_from}
    for index, transform in enumerate(transforms):
        source = source_of.get(transform.name)
        if source is not None and source not in names:
            problem = f"inputs_from names {source!r}, which is not a transform of this task"
            yield _transform_error(transform, index, "inputs_from", problem)
    for index, transform in enumerate(transforms):
        chain = [transform.name]  # each transform's source, back from this one
        while chain[-1] in source_of and chain[-1] not in chain[:-1]:
            chain.append(source_of[chain[-1]])
        if len(chain) > 1 and chain[-1] == transform.name:  # back where it started
            flow = " -> ".join(repr(name) for name in reversed(chain))
            yield TaskError(f"transforms {flow} form a cycle", ("transform", index, "inputs_from"))


ARGUMENT_TYPES = "str, int, finite float, bool, lists and tables"  # what JSON gives back equal


def _placement_problems(backend: Any, queue: Any) -> Iterator[tuple[str, str]]:
    """What runs a transform's units: a backend, or a pool of the local one."""
    try:
        pool_for(backend, queue)
    except PlacementError as exc:
        yield exc.key, str(exc)


def _sbatch_problems(options: Any, backend: Any) -> Iterator[tuple[str, str]]:
    if not options:
        return
    if not (isinstance(options, tuple) and all(isinstance(o, str) for o in options)):
        yield "sbatch", f"sbatch must be a list of options, not {shown(options)}"
    elif bad := [o for o in options if not is_sbatch_option(o)]:
        yield "sbatch", f"sbatch: {shown(bad[0])} is no option gsup passes on (--name=value)"
    elif backend != SLURM:
        yield "sbatch", 'sbatch options go with backend = "slurm"'


def _value_problems(key: str, values: list[Any]) -> Iterator[tuple[str, str]]:
    """Arguments are journaled as JSON and must read back equal: only ARGUMENT_TYPES."""
    for value in values:
        if bad := _unjournalable(value):
            what = f"{shown(bad[0])} (a {type(bad[0]).__name__})"
            yield key, f"{key}: cannot journal {what}: arguments are {ARGUMENT_TYPES}"
            return


def _unjournalable(value: Any) -> list[Any]:
    """The first part of `value` that JSON would not give back equal, as a 1-list; or []."""
    kind = type(value)
    if kind in (str, int, bool) or (kind is float and math.isfinite(value)):
        return []
    if kind is list:
        items: Iterable[Any] = value
    elif kind is dict and all(type(key) is str for key in value):
        items = value.values()
    else:
        return [value]
    for item in items:
        if found := _unjournalable(item):
            return found
    return []


def check_targets(task: Task, warn: Callable[[str], None] | None = None) -> None:
    """Import each call transform's target and bind its first unit's arguments in a
    short-lived child, exactly as `gsup add --check` does (gsup.specs.check_spec), from
    the task's folder and $PYTHONPATH; find each command's program. Units of files and
    inputs_from transforms take no arguments (their files are their inputs), so their
    targets are bound to none. `warn` gets the child's warnings (default: stderr).
    Call it on a task that check() passed."""
    from gsup.specs import check_spec

    warn = warn or (lambda line: print(line, file=sys.stderr))
    for index, transform in enumerate(task.transforms):
        try:
            check_spec(_first_job(task, transform), warn)
        except TargetError as exc:
            key = "cmd" if transform.cmd is not None else "target"
            _fail(task, _transform_error(transform, index, key, str(exc)))
        merger = transform.merger
        if merger is not None and ":" in merger.kind:  # a custom one: (files, out)
            try:
                check_spec(_merger_job(task, merger.kind), warn)
            except TargetError as exc:
                _fail(task, _transform_error(transform, index, "merger", str(exc)))


def _merger_job(task: Task, kind: str) -> JobSpec:
    """A custom merger, as its merge job calls it (the files, the file to write)."""
    from gsup.specs import call_spec, cli_import_path

    spec = call_spec(kind, ([], "merged"), {}, cli_import_path(task.base))
    return replace(spec, cwd=task.base)


def _first_job(task: Task, transform: Transform) -> JobSpec:
    """The job of the transform's first unit, as far as a check needs it."""
    from gsup.specs import call_spec, cli_import_path, command_spec

    if transform.cmd is not None:
        return replace(command_spec(list(transform.cmd)), cwd=task.base)
    args, kwargs = next(_unit_arguments(transform), ((), {}))
    retry_on = list(transform.retry_on) if transform.retry_on else None
    path = cli_import_path(task.base)
    spec = call_spec(transform.target, args, kwargs, path, retry_on=retry_on)  # type: ignore[arg-type]
    return replace(spec, cwd=task.base)


# --- units -----------------------------------------------------------------------


def expand_units(task: Task, transform: Transform) -> list[Unit]:
    """The units of a units, params or files transform of a checked task, numbered from 0.
    An inputs_from transform gets its units from the engine, as the units of its source
    finish: [] here."""
    if transform.files is not None:
        found = _matching_files(task.base, transform.files)
        size = transform.files_per_unit
        groups = [tuple(found[start : start + size]) for start in range(0, len(found), size)]
        return [Unit(index, (), {}, group) for index, group in enumerate(groups)]
    return [
        Unit(index, args, kwargs, ())
        for index, (args, kwargs) in enumerate(_unit_arguments(transform))
    ]


def _unit_arguments(transform: Transform) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """(args, kwargs) of each unit of a units or params transform (of others: none)."""
    if transform.units is not None:
        for args in transform.units:
            yield tuple(args), {}
    elif transform.params is not None:
        names = list(transform.params)
        for values in itertools.product(*transform.params.values()):
            yield (), dict(zip(names, values, strict=True))


def _matching_files(base: str, pattern: str) -> list[str]:
    """The files (not folders) a glob matches from `base`, as sorted absolute paths."""
    import glob

    # root_dir: a glob character in the base folder's own path is no pattern.
    found = glob.glob(pattern, root_dir=base, recursive=True)
    paths = (os.path.normpath(os.path.join(base, name)) for name in found)
    return sorted(path for path in paths if os.path.isfile(path))


# --- the JSON of the journal -----------------------------------------------------

_TASK_FIELDS = ("name", "transforms", "float", "base")  # not `origin`: a file's lines
_TRANSFORM_FIELDS = tuple(f.name for f in fields(Transform))


def task_to_json(task: Task) -> str:
    """The task as the journal keeps it; task_from_json reads it back equal. Refuses
    argument values that JSON would not give back equal."""
    for index, transform in enumerate(task.transforms):
        for key, problem in _argument_problems(transform):
            _fail(task, _transform_error(transform, index, key, problem))
    data = {name: getattr(task, name) for name in _TASK_FIELDS}
    data["transforms"] = [asdict(transform) for transform in task.transforms]
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TaskError(f"task {task.name!r} cannot be journaled: {exc}") from None


def task_from_json(text: str) -> Task:
    """The task that task_to_json wrote. Not checked again: the daemon calls check(). A
    transform field left out gets its default (a journal written before it existed)."""
    try:
        data = json.loads(text)
        _known_fields(data, _TASK_FIELDS, "a task", required=_TASK_FIELDS)
        tables = data["transforms"]
        if not isinstance(tables, list):
            raise ValueError("transforms must be a list")
        for table in tables:
            _known_fields(table, _TRANSFORM_FIELDS, "a transform", required=("name",))
        transforms = [Transform(**table) for table in tables]
        return Task(data["name"], transforms, data["float"], data["base"])
    except (ValueError, TypeError, RecursionError) as exc:
        raise TaskError(f"not the JSON of a task: {exc}") from None


def _known_fields(data: Any, names: tuple[str, ...], what: str, required: tuple[str, ...]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be an object")
    unknown = [name for name in data if name not in names]
    missing = [name for name in required if name not in data]
    if unknown:
        raise ValueError(f"{what} has no field {unknown[0]!r}")
    if missing:
        raise ValueError(f"{what} needs the field {missing[0]!r}")


# --- task files -------------------------------------------------------------------

TASK_KEYS = ("name", "float")


def load_task(path: str | os.PathLike[str]) -> Task:
    """The task a TOML task file describes, checked (see check()); its files globs and
    targets are relative to the file's folder."""
    import tomllib

    name = os.fspath(path)
    text = _read(name)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, line = _toml_position(str(exc), text)
        raise TaskError(f"{name}, line {line}: {message}") from None
    origin = TaskFile(name, _key_lines(text))
    try:
        task = _task_of(data, os.path.dirname(os.path.abspath(name)), origin)
    except TaskError as exc:
        raise origin.located(exc) from None
    check(task)
    return task


def _read(name: str) -> str:
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"{name} is not UTF-8 text: {exc.reason}") from None


_TOML_AT = re.compile(r"(.*) \(at (?:line (\d+), column \d+|end of document)\)", re.DOTALL)


def _toml_position(message: str, text: str) -> tuple[str, int]:
    """tomllib's message without its position, and the line of that position."""
    found = _TOML_AT.fullmatch(message)
    if found is None:
        return message, 1
    return found[1], int(found[2]) if found[2] else max(len(text.splitlines()), 1)


def _task_of(data: dict[str, Any], base: str, origin: TaskFile) -> Task:
    for key in data:
        if key not in ("task", "transform"):
            raise TaskError(
                f"unknown key {key!r} (a task file holds [task] and [[transform]] tables)",
                ("", 0, key),
            )
    head = data.get("task")
    if not isinstance(head, dict):
        problem = "no [task] table" if head is None else "task must be a table: [task]"
        raise TaskError(problem, ("", 0, "task"))
    for key in head:
        if key not in TASK_KEYS:
            raise TaskError(f"unknown key {key!r} in [task]", ("task", 0, key))
    if "name" not in head:
        raise TaskError("[task] needs a name", ("task", 0, None))
    tables = data.get("transform", [])
    if not (isinstance(tables, list) and all(isinstance(table, dict) for table in tables)):
        raise TaskError("transform must be an array of tables: [[transform]]", ("", 0, "transform"))
    transforms = [_transform_of(table, index) for index, table in enumerate(tables)]
    return Task(head["name"], transforms, head.get("float", DEFAULT_FLOAT), base, origin)


def _transform_of(table: dict[str, Any], index: int) -> Transform:
    name = table.get("name")
    label = f"transform {name!r}" if isinstance(name, str) else f"transform #{index + 1}"
    for key in table:
        if key not in _TRANSFORM_FIELDS:
            raise TaskError(f"{label}: unknown key {key!r}", ("transform", index, key))
    if "name" not in table:
        raise TaskError(f"transform #{index + 1} needs a name", ("transform", index, None))
    return Transform(**table)


@dataclass(frozen=True)
class TaskFile:
    """A loaded task's file, as its user named it, and the line of each of its keys, for
    errors found after loading (check, check_targets)."""

    name: str
    lines: dict[Where, int]

    def located(self, error: TaskError) -> TaskError:
        """The error, prefixed with the file and the line of its key (or the line of the
        key's table, or of the key that holds that table inline)."""
        if error.where is None:
            return TaskError(f"{self.name}: {error}")
        table, index, key = error.where
        for place in (error.where, (table, index, None), ("", 0, table or key)):
            if place in self.lines:
                return TaskError(f"{self.name}, line {self.lines[place]}: {error}", error.where)
        return TaskError(f"{self.name}, line 1: {error}", error.where)


# tomllib gives no positions for keys: a small scanner finds the table headers and the
# keys at the top nesting level, skipping strings, comments, and the insides of arrays
# and inline tables (whose lines could look like headers: `[2]`). The text has parsed.
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_KEY_PATH = rf"{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*"
_HEADER = re.compile(rf"(\[\[?)[ \t]*({_KEY_PATH})[ \t]*\]\]?")
_KEY = re.compile(rf"({_KEY_PATH})[ \t]*=")
_TABLES = ("task", "transform")


def _key_lines(text: str) -> dict[Where, int]:
    """The line of each header and key of a task file: (table, transform number, key)."""
    lines: dict[Where, int] = {}
    table: str | None = ""  # None: inside a table that is no task's (its header is noted)
    index, inner, transforms = 0, None, 0
    for line, brackets, parts in _statements(text):
        if brackets:  # a header: [task], [[transform]], [transform.merger], [other]
            if parts == ["transform"] and brackets == "[[":
                transforms += 1
            table = parts[0] if parts[0] in _TABLES else None
            index = transforms - 1 if table == "transform" else 0
            inner = parts[1] if table and len(parts) > 1 else None
            where: Where = (table, index, inner) if table else ("", 0, parts[0])
        elif table:  # a key of [task] or [[transform]], or of a table inside one
            where = (table, index, inner or parts[0])
        elif table is None:
            continue
        else:  # a key at the top level: `task.name = ...` is [task]'s name
            if parts[0] in _TABLES and len(parts) > 1:
                lines.setdefault((parts[0], 0, parts[1]), line)
            where = ("", 0, parts[0])
        lines.setdefault(where, line)
    return lines


def _statements(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line, "[" or "[[" for a header else "", key parts) of each header and each key
    at the top nesting level."""
    line, depth, i, at_start = 1, 0, 0, True
    while i < len(text):
        char = text[i]
        if char == "\n":
            line, at_start = line + 1, at_start or depth == 0
        elif char == "#":
            end = text.find("\n", i)
            i = (end if end >= 0 else len(text)) - 1
        elif char in " \t\r":
            pass
        elif at_start:
            at_start = False
            found = (_HEADER if char == "[" else _KEY).match(text, i)
            if found:
                brackets = found[1] if char == "[" else ""
                yield line, brackets, _key_parts(found[2] if char == "[" else found[1])
                i = found.end() - 1
        elif char in "\"'":
            end = _string_end(text, i)
            line += text.count("\n", i, end)
            i = end - 1
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        i += 1


def _string_end(text: str, start: int) -> int:
    """Where the TOML string that starts at `start` ends (just after its last quote)."""
    quote = text[start]
    delimiter = quote * 3 if text.startswith(quote * 3, start) else quote
    i = start + len(delimiter)
    while not text.startswith(delimiter, i):
        i += 2 if quote == '"' and text[i] == "\\" else 1  # literal strings have no escapes
    end = i + len(delimiter)
    if len(delimiter) == 3:  # up to two quotes before the closing ones are content: """a"""""
        while end < i + 5 and text.startswith(quote, end):
            end += 1
    return end


def _key_parts(path: str) -> list[str]:
    import tomllib

    parts = re.findall(_KEY_PART, path)
    return [tomllib.loads(f"k = {part}")["k"] if part[0] in "\"'" else part for part in parts]
