"""Building job specs from what a user gives: a target string or a callable, and arguments.

Shared by the CLI and the Python API; import-light (no dill until a callable must
travel by value).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gsup.protocol import JobSpec
from gsup.targets import (
    TargetError,
    describe_call,
    dumps_by_value,
    literal_text,
    parse_target,
    reference_of,
)


def text_folder() -> str:
    """The current folder, whose name the journal keeps as text: TargetError if it is
    not UTF-8 (stored, its name would be another folder's, and the job would fail)."""
    cwd = os.getcwd()
    try:
        cwd.encode("utf-8")
    except UnicodeEncodeError:
        raise TargetError(f"this folder's name is not UTF-8 ({cwd!r}); run from another") from None
    return cwd


def cli_import_path(cwd: str) -> list[str]:
    """What `python` would put first on sys.path here: the cwd, then $PYTHONPATH."""
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [cwd, *(os.path.abspath(p) for p in extra)]


def call_spec(
    target: str | Callable[..., Any],
    args: tuple = (),
    kwargs: dict[str, Any] | None = None,
    path: list[str] | None = None,
    **options: Any,
) -> JobSpec:
    """A job that calls `target(*args, **kwargs)` in a pool thread.

    `target` is `pkg.mod:attr` or a callable; an importable callable travels by
    reference, anything else (a lambda, a closure, a function of __main__) by value.
    """
    return next(call_specs(target, [tuple(args)], kwargs, path, **options))


def call_specs(
    target: str | Callable[..., Any],
    argument_tuples: Iterable[tuple],
    kwargs: dict[str, Any] | None = None,
    path: list[str] | None = None,
    **options: Any,
) -> Iterator[JobSpec]:
    """One job per tuple of positional arguments, all calling `target` (see call_spec);
    made one at a time, so that a batch can be sent while the next is made."""
    kwargs = dict(kwargs or {})
    by_value = None
    if not (isinstance(target, str) or callable(target)):
        raise TargetError(f"{target!r} is neither callable nor a 'pkg.module:function' string")
    if isinstance(target, str):
        parse_target(target)
        name = target
    else:
        reference = reference_of(target)
        name = reference or f"{getattr(target, '__module__', '?')}:" + getattr(
            target, "__qualname__", type(target).__name__
        )
        if reference is None:
            by_value = target
    cwd = text_folder()
    path = path if path is not None else cli_import_path(cwd)
    for args in argument_tuples:
        arguments = None if by_value is not None else literal_text(args, kwargs)
        pickled = None if arguments is not None else dumps_by_value((by_value, args, kwargs))
        yield (
            JobSpec(
                kind="call",
                target=name,
                display=describe_call(name, args, kwargs),
                arguments=arguments,
                pickled=pickled,
                cwd=cwd,
                path=path,
                **options,
            )
        )


def command_spec(argv: list[str], **options: Any) -> JobSpec:
    """A job that runs `argv` as a child process in its own session."""
    import shlex

    for word in argv:
        try:
            word.encode("utf-8")
        except UnicodeEncodeError:
            raise TargetError(f"a command's words must be UTF-8 text; {word!r} is not") from None

    return JobSpec(
        kind="cmd",
        target=argv[0],
        display=shlex.join(argv),
        argv=list(argv),
        cwd=text_folder(),
        env=dict(os.environ),
        **options,
    )


def check_spec(spec: JobSpec, warn: Callable[[str], None]) -> str:
    """What `gsup add --check` does for one job: a command's program must be found (on
    PATH, or a path from the job's folder); a call's target is imported and its arguments
    bound in a short-lived child, as a pool would (see targets._check_main). Returns the
    verdict, `ok: DISPLAY`; raises TargetError with the reason. `warn` gets each warning
    line of the child (a module of the folder that a pool would not use)."""
    if spec.kind == "cmd":
        import shutil

        program = spec.argv[0]
        found = os.path.join(spec.cwd, program) if os.sep in program else program
        if shutil.which(found) is None:
            raise TargetError(f"command not found: {program}")
        return f"ok: {spec.display}"
    import json
    import subprocess

    child = subprocess.run(
        [sys.executable, "-P", "-m", "gsup.targets"],  # -P: a gsup.py in the folder is no gsup
        input=json.dumps(spec.to_wire()),
        capture_output=True,
        text=True,
        cwd=spec.cwd,
    )
    lines = (child.stdout.strip() or child.stderr.strip() or "the check failed").splitlines()
    for line in lines[:-1]:
        if line.startswith("gsup: warning: "):  # else what the target printed
            warn(line)
    if child.returncode != 0:
        raise TargetError(lines[-1].removeprefix("gsup: error: "))
    return lines[-1]


def python_path() -> list[str]:
    """The calling interpreter's import path, for jobs added from Python (the same
    list object while sys.path and the folder stay as they are)."""
    key = (tuple(sys.path), os.getcwd())
    if _python_path[0] != key:
        _python_path[:] = [key, [os.path.abspath(p or ".") for p in sys.path]]
    return _python_path[1]


_python_path: list[Any] = [None, []]  # (sys.path and cwd, the list made of them)
