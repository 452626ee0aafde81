"""What a task is: its file (TOML), the same from Python, every check made at submit,
its units, and its JSON for the journal.

    [task]                                 Task(name, transforms, float=10)
    name = "sweep"
    float = 8
    [[transform]]                          Transform(name, target=..., units=..., ...)
    name = "gen"
    target = "mymod:generate"

An error is one line; in a task file it names the file and the line of the key.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsup.config import DEFAULT_POOL, DEFAULT_PRIORITY, POOL_NAMES
from gsup.errors import GsupError
from gsup.protocol import MAX_RETRIES, MAX_SECONDS, RETRY_CAUSES, JobSpec, is_retry_cause
from gsup.targets import TargetError, parse_target, reference_of

NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")  # a task's or transform's name: it names folders
MERGER_KINDS = ("text", "csv", "jsonl", "tar")
MODES = ("each", "all")
DEFAULT_FLOAT = 10


class TaskError(GsupError):
    """A task that cannot be submitted; one line (in a file: FILE, line N: ...)."""


@dataclass(frozen=True)
class InputsFrom:
    """A transform fed by another: a unit per finished unit (`each`), or one unit over
    all of them once it has ended (`all`); include/exclude: globs on file names."""

    transform: str
    mode: str = "each"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Merger:
    kind: str  # text | csv | jsonl | tar | pkg.mod:func
    ignore_failed: bool = False
    overwrite: bool = False


@dataclass
class Transform:
    name: str
    target: Any = None  # "pkg.mod:attr" (or, from Python, an importable function)
    cmd: list[str] | None = None
    units: list[Any] | None = None  # argument lists (a scalar is one argument)
    params: dict[str, list[Any]] | None = None  # their product, as keywords
    files: str | None = None  # a glob, relative to the task's folder
    files_per_unit: int = 1
    inputs_from: Any = None  # a transform's name, or InputsFrom
    outputs: tuple[str, ...] = ()
    retries: int = 0
    retry_on: list[str] | None = None
    retry_recurring: bool = False
    abort_after: int | str | None = None  # a count, or "5%"
    merger: Any = None  # a kind, or Merger
    queue: str = DEFAULT_POOL
    priority: int = DEFAULT_PRIORITY
    timeout: float | None = None


@dataclass
class Task:
    name: str
    transforms: list[Transform]
    float: int = DEFAULT_FLOAT
    base: Path = field(default_factory=Path.cwd)  # files globs and call imports start here
    source: str | None = None  # the task file, if it came from one


@dataclass(frozen=True)
class Unit:
    index: int
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()  # absolute paths


TASK_KEYS = {"name", "float"}
TRANSFORM_KEYS = {f.name for f in dataclasses.fields(Transform)}


# --- a task file -------------------------------------------------------------------


def load_task(path: str | Path) -> Task:
    """Read and check a task file; TaskError naming its line if anything is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    where = _Lines(path.name, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        message = re.sub(r" \(at line \d+, column \d+\)", "", str(exc))
        raise TaskError(where.at(int(line[1]) if line else None, message)) from None
    try:
        task = _task_from_data(data, path.resolve().parent, str(path))
        _check(task)
    except _KeyError as exc:
        raise TaskError(where.key(exc.section, exc.key, exc.message)) from None
    return task


class _KeyError(Exception):
    """A wrong key: the section (None: [task]; n: the n-th [[transform]]) and key
    let a task file's error name its line."""

    def __init__(self, section: int | None, key: str | None, message: str) -> None:
        super().__init__(message)
        self.section, self.key, self.message = section, key, message


class _Lines:
    """Finds the line of a key in a task file's text (tomllib gives no positions)."""

    def __init__(self, name: str | None, text: str) -> None:
        self.name = name  # None: a task built in Python, whose errors name no place
        self.lines = text.splitlines()

    def at(self, line: int | None, message: str) -> str:
        if self.name is None:
            return message
        return f"{self.name}, line {line}: {message}" if line else f"{self.name}: {message}"

    def key(self, section: int | None, key: str | None, message: str) -> str:
        header = r"\[task\]" if section is None else r"\[\[transform\]\]"
        starts = [n for n, line in enumerate(self.lines) if re.match(rf"\s*{header}", line)]
        index = 0 if section is None else section
        if index >= len(starts):
            return self.at(None, message)
        start = starts[index]
        end = next(
            (n for n, line in enumerate(self.lines) if n > start and re.match(r"\s*\[", line)),
            len(self.lines),
        )
        for n in range(start, end):
            if key and re.match(rf"\s*\"?{re.escape(key)}\"?\s*=", self.lines[n]):
                return self.at(n + 1, message)
        return self.at(start + 1, message)


def _task_from_data(data: dict[str, Any], base: Path, source: str) -> Task:
    unknown = sorted(set(data) - {"task", "transform"})
    if unknown:
        raise _KeyError(None, None, f"unknown table [{unknown[0]}]")
    head = data.get("task")
    if not isinstance(head, dict):
        raise _KeyError(None, None, "a task file needs a [task] table with its name")
    for key in head:
        if key not in TASK_KEYS:
            raise _KeyError(None, key, f"unknown key {key!r} in [task]")
    rows = data.get("transform", [])
    if not isinstance(rows, list) or not rows:
        raise _KeyError(None, None, "a task needs at least one [[transform]]")
    transforms = []
    for n, row in enumerate(rows):
        for key in row:
            if key not in TRANSFORM_KEYS:
                name = row.get("name", n + 1)
                raise _KeyError(n, key, f"unknown key {key!r} in transform {name!r}")
        transforms.append(_transform_from_data(n, row))
    return Task(head.get("name"), transforms, head.get("float", DEFAULT_FLOAT), base, source)


def _transform_from_data(n: int, row: dict[str, Any]) -> Transform:
    values = dict(row)
    source = values.get("inputs_from")
    if isinstance(source, dict):
        unknown = sorted(set(source) - {"transform", "mode", "include", "exclude"})
        if unknown:
            raise _KeyError(n, "inputs_from", f"unknown key {unknown[0]!r} in inputs_from")
        values["inputs_from"] = InputsFrom(
            source.get("transform"),
            source.get("mode", "each"),
            _globs(source.get("include")),
            _globs(source.get("exclude")),
        )
    merger = values.get("merger")
    if isinstance(merger, dict):
        unknown = sorted(set(merger) - {"kind", "ignore_failed", "overwrite"})
        if unknown:
            raise _KeyError(n, "merger", f"unknown key {unknown[0]!r} in merger")
        values["merger"] = Merger(**merger)
    if "outputs" in values and isinstance(values["outputs"], list):
        values["outputs"] = tuple(values["outputs"])
    return Transform(**values)


def _globs(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


# --- checks ------------------------------------------------------------------------


def check(task: Task) -> None:
    """Every check that needs no import; TaskError, one line (a task file's names its
    line: see load_task)."""
    try:
        _check(task)
    except _KeyError as exc:
        raise TaskError(_where(task).key(exc.section, exc.key, exc.message)) from None


def _where(task: Task) -> _Lines:
    """How errors name a place in the task's file, if it came from one."""
    if task.source is None:
        return _Lines(None, "")
    try:
        return _Lines(Path(task.source).name, Path(task.source).read_text())
    except OSError:
        return _Lines(Path(task.source).name, "")


def _check(task: Task) -> None:
    _expect(
        isinstance(task.name, str) and NAME.fullmatch(task.name),
        None,
        "name",
        f"a task's name is 1 to 100 letters, digits and . _ -, not {task.name!r}",
    )
    _expect(
        _is_int(task.float) and task.float >= 1,
        None,
        "float",
        f"float must be a whole number from 1, not {task.float!r}",
    )
    seen: set[str] = set()
    for n, transform in enumerate(task.transforms):
        _check_transform(n, transform)
        _expect(
            transform.name not in seen, n, "name", f"two transforms are named {transform.name!r}"
        )
        seen.add(transform.name)
    for n, transform in enumerate(task.transforms):
        source = _source(transform)
        if source is not None:
            _expect(
                source.transform in seen,
                n,
                "inputs_from",
                f"transform {transform.name!r}: inputs_from names {source.transform!r},"
                " which is not a transform of this task",
            )
    _check_cycles(task)
    for transform in task.transforms:
        if _source(transform) is None and not expand_units(task, transform):
            n = task.transforms.index(transform)
            key = (
                "files"
                if transform.files is not None
                else "units"
                if transform.units is not None
                else "params"
            )
            _expect(False, n, key, f"transform {transform.name!r} has no units")


def _check_transform(n: int, t: Transform) -> None:
    def expect(ok: Any, key: str, message: str) -> None:
        _expect(ok, n, key, f"transform {t.name!r}: {message}")

    _expect(
        isinstance(t.name, str) and NAME.fullmatch(t.name),
        n,
        "name",
        f"a transform's name is 1 to 100 letters, digits and . _ -, not {t.name!r}",
    )
    expect(
        (t.target is None) != (t.cmd is None),
        "target" if t.target else "cmd",
        "give target or cmd, not both" if t.target else "give target or cmd",
    )
    if t.target is not None:
        try:
            t.target = _target_text(t.target)
        except ValueError as exc:
            expect(False, "target", str(exc))
    if t.cmd is not None:
        expect(
            isinstance(t.cmd, list) and t.cmd and all(isinstance(w, str) for w in t.cmd),
            "cmd",
            "cmd must be a non-empty list of strings",
        )
    sources = [k for k in ("units", "params", "files", "inputs_from") if getattr(t, k) is not None]
    expect(
        len(sources) == 1,
        (sources[1:] or ["units"])[0],
        "give one of units, params, files or inputs_from" + (", not several" if sources else ""),
    )
    if t.units is not None:
        expect(isinstance(t.units, list), "units", "units must be a list of argument lists")
        for item in t.units:
            _plain(item, n, "units", t.name)
    if t.params is not None:
        expect(
            isinstance(t.params, dict) and all(isinstance(v, list) for v in t.params.values()),
            "params",
            "params must map names to lists of values",
        )
        expect(
            all(k.isidentifier() for k in t.params), "params", "params' names must be identifiers"
        )
        _plain(t.params, n, "params", t.name)
    if t.files is not None:
        expect(isinstance(t.files, str) and t.files, "files", "files must be a glob")
    expect(
        _is_int(t.files_per_unit) and t.files_per_unit >= 1,
        "files_per_unit",
        "files_per_unit must be a whole number from 1",
    )
    if t.inputs_from is not None:
        t.inputs_from = _source(t) or InputsFrom(t.inputs_from)
        expect(
            isinstance(t.inputs_from.transform, str), "inputs_from", "inputs_from names a transform"
        )
        expect(t.inputs_from.mode in MODES, "inputs_from", "inputs_from's mode is each or all")
    expect(
        all(
            isinstance(o, str) and o and ".." not in Path(o).parts and not o.startswith("/")
            for o in t.outputs
        ),
        "outputs",
        "outputs must be globs within the unit's folder",
    )
    expect(
        _is_int(t.retries) and 0 <= t.retries <= MAX_RETRIES,
        "retries",
        f"retries must be 0 to {MAX_RETRIES:,}",
    )
    expect(
        t.retry_on is None
        or (
            isinstance(t.retry_on, list)
            and all(isinstance(c, str) and is_retry_cause(c) for c in t.retry_on)
        ),
        "retry_on",
        f"retry_on: each must be {RETRY_CAUSES}",
    )
    expect(
        isinstance(t.retry_recurring, bool), "retry_recurring", "retry_recurring is true or false"
    )
    expect(
        _budget_ok(t.abort_after),
        "abort_after",
        'abort_after is a count from 1 or a share such as "5%"',
    )
    if t.merger is not None:
        t.merger = t.merger if isinstance(t.merger, Merger) else Merger(t.merger)
        kind = t.merger.kind
        expect(
            kind in MERGER_KINDS or (isinstance(kind, str) and ":" in kind),
            "merger",
            f"merger is one of {', '.join(MERGER_KINDS)} or pkg.mod:func, not {kind!r}",
        )
    expect(t.queue in POOL_NAMES, "queue", f"queue is one of {', '.join(POOL_NAMES)}")
    expect(_is_int(t.priority) and 0 <= t.priority <= 9, "priority", "priority is 0-9")
    expect(
        t.timeout is None or (isinstance(t.timeout, int | float) and 0 < t.timeout <= MAX_SECONDS),
        "timeout",
        f"timeout is a number of seconds up to {MAX_SECONDS:g}",
    )


def _target_text(target: Any) -> str:
    """A target as the journal keeps it: pkg.mod:attr; ValueError saying what is wrong."""
    if callable(target) and not isinstance(target, str):
        reference = reference_of(target)
        if reference is None:
            raise ValueError(
                f"{target!r} has no import path (a lambda, a closure, a function of"
                " __main__): a task's units run later, by name"
            )
        return reference
    if not isinstance(target, str):
        raise ValueError(f"target is 'pkg.mod:attr' or an importable function, not {target!r}")
    try:
        parse_target(target)
    except TargetError as exc:
        raise ValueError(str(exc)) from None
    return target


def _plain(value: Any, n: int, key: str, name: str) -> None:
    """What TOML and JSON can hold, nothing else (units are journaled as JSON)."""
    if isinstance(value, dict):
        for item in value.values():
            _plain(item, n, key, name)
    elif isinstance(value, list | tuple):
        for item in value:
            _plain(item, n, key, name)
    elif not isinstance(value, str | int | float | bool):
        message = f"{key}: {value!r} is not a text, number, boolean, list or table"
        _expect(False, n, key, f"transform {name!r}: {message}")


def _check_cycles(task: Task) -> None:
    feeds = {t.name: s.transform for t in task.transforms if (s := _source(t)) is not None}
    for n, transform in enumerate(task.transforms):
        chain, name = [transform.name], feeds.get(transform.name)
        while name is not None and name not in chain:
            chain.append(name)
            name = feeds.get(name)
        if name is not None:
            cycle = " -> ".join(repr(x) for x in [*chain[chain.index(name) :], name])
            _expect(False, n, "inputs_from", f"transforms {cycle} form a cycle")


def _source(t: Transform) -> InputsFrom | None:
    if isinstance(t.inputs_from, str):
        return InputsFrom(t.inputs_from)
    return t.inputs_from


def _budget_ok(budget: Any) -> bool:
    if budget is None:
        return True
    if isinstance(budget, str):
        share = budget.removesuffix("%")
        return budget.endswith("%") and _number(share) is not None and 0 < float(share) <= 100
    return _is_int(budget) and budget >= 1


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(ok: Any, section: int | None, key: str | None, message: str) -> None:
    if not ok:
        raise _KeyError(section, key, message)


# --- units --------------------------------------------------------------------------


def expand_units(task: Task, transform: Transform) -> list[Unit]:
    """A transform's units from units, params or files; [] for one fed by inputs_from
    (the engine makes those as its upstream's units finish)."""
    if transform.units is not None:
        return [
            Unit(i, tuple(item) if isinstance(item, list | tuple) else (item,))
            for i, item in enumerate(transform.units)
        ]
    if transform.params is not None:
        names = list(transform.params)
        combos = itertools.product(*(transform.params[name] for name in names))
        return [Unit(i, (), dict(zip(names, combo, strict=True))) for i, combo in enumerate(combos)]
    if transform.files is not None:
        found = sorted(glob.glob(os.path.join(task.base, transform.files), recursive=True))
        files = [os.path.abspath(p) for p in found if os.path.isfile(p)]
        size = transform.files_per_unit
        return [
            Unit(i, (), {}, tuple(files[at : at + size]))
            for i, at in enumerate(range(0, len(files), size))
        ]
    return []


# --- the journal's copy -------------------------------------------------------------


def task_to_json(task: Task) -> str:
    return json.dumps(_jsonable(dataclasses.asdict(task)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def task_from_json(text: str) -> Task:
    """A task as task_to_json wrote it; TaskError if it is not one."""
    try:
        data = json.loads(text)
        transforms = []
        for row in data["transforms"]:
            row = dict(row)
            if row.get("inputs_from") is not None:
                source = row["inputs_from"]
                row["inputs_from"] = InputsFrom(
                    source["transform"],
                    source["mode"],
                    tuple(source["include"]),
                    tuple(source["exclude"]),
                )
            if row.get("merger") is not None:
                row["merger"] = Merger(**row["merger"])
            row["outputs"] = tuple(row["outputs"])
            transforms.append(Transform(**row))
        return Task(data["name"], transforms, data["float"], Path(data["base"]), data["source"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TaskError(f"not a task: {exc}") from None


# --- imports ------------------------------------------------------------------------


def check_targets(task: Task) -> None:
    """Import each call transform's target and bind its first unit's arguments in a
    child, as `gsup add --check` does; a command's program must be on PATH."""
    import shutil

    from gsup.specs import check_in_child, cli_import_path
    from gsup.targets import describe_call, literal_text

    for n, transform in enumerate(task.transforms):
        if transform.cmd is not None:
            if shutil.which(transform.cmd[0]) is None:
                _fail(
                    task,
                    n,
                    "cmd",
                    f"transform {transform.name!r}: command not found: {transform.cmd[0]}",
                )
            continue
        first = next(iter(expand_units(task, transform)), Unit(0))
        spec = JobSpec(
            kind="call",
            target=transform.target,
            display=describe_call(transform.target, first.args, first.kwargs),
            arguments=literal_text(first.args, first.kwargs),
            cwd=str(task.base),
            path=cli_import_path(str(task.base)),
            retry_on=transform.retry_on,
        )
        _, verdict, ok = check_in_child(spec)
        if not ok:
            _fail(task, n, "target", f"transform {transform.name!r}: {verdict}")


def _fail(task: Task, section: int, key: str, message: str) -> None:
    raise TaskError(_where(task).key(section, key, message))
