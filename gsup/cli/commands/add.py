"""`gsup add`: build job specs from words, check them or send them, print the ids."""

from __future__ import annotations

import itertools
import sys
from enum import Enum
from typing import Annotated, Any

import typer

from gsup.cli.app import UsageError, app
from gsup.cli.options import Backend, Home, LocalQueue
from gsup.config import DEFAULT_PRIORITY, pool_for
from gsup.errors import GsupError, PartlyAdded
from gsup.protocol import MAX_RETRIES, MAX_SECONDS, RETRY_CAUSES, JobSpec, is_retry_cause
from gsup.targets import TargetError, parse_keyword, parse_target, parse_value

# What retry_on names to retry a target that cannot be loaded (lifecycle.RECURRING; that
# module is not imported here, to keep `gsup add` quick to start).
UNLOADABLE = f"{TargetError.__module__}.{TargetError.__qualname__}"

OnLost = Enum("OnLost", {"requeue": "requeue", "fail": "fail"}, type=str)  # type: ignore[misc]


@app.command()
def add(
    target: Annotated[
        str | None,
        typer.Argument(
            metavar="TARGET",
            help="pkg.module:function, or with --cmd the program",
            show_default=False,
        ),
    ] = None,
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ARG", help="Arguments: Python literals, else strings", show_default=False
        ),
    ] = None,
    kw: Annotated[
        list[str] | None,
        typer.Option("--kw", metavar="NAME=VALUE", help="A keyword argument (repeatable)"),
    ] = None,
    as_str: Annotated[
        bool, typer.Option("--str", help="Pass every ARG and --kw value as a string, not a literal")
    ] = False,
    queue: Annotated[
        LocalQueue | None,
        typer.Option("--queue", "-q", help="The local pool to run in [default: user]"),
    ] = None,
    backend: Annotated[
        Backend | None,
        typer.Option(
            "--backend",
            "-b",
            help="What runs it: local (a pool thread), process (a process of its own),"
            " slurm (a Slurm batch job) or dask (a call on a Dask cluster) [default: the"
            " daemon's, local unless gsup.toml says otherwise]",
        ),
    ] = None,
    sbatch: Annotated[
        list[str] | None,
        typer.Option(
            "--sbatch-opt",
            metavar="--NAME=VALUE",
            help="An option of its sbatch, with --backend slurm (repeatable)",
        ),
    ] = None,
    priority: Annotated[
        int,
        typer.Option(
            "--priority", "-p", min=0, max=9, metavar="0-9", help="0 runs first; FIFO among equals"
        ),
    ] = DEFAULT_PRIORITY,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            max=MAX_SECONDS,
            metavar="S",
            help="Seconds before the job is stopped [default: none]",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option(metavar="TEXT", help="A name to show in gsup jobs")
    ] = None,
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_RETRIES,
            metavar="N",
            help="How many times to run it again after a failure or timeout",
        ),
    ] = 0,
    retry_delay: Annotated[
        float,
        typer.Option(min=0, max=MAX_SECONDS, metavar="S", help="Seconds before the first retry"),
    ] = 0.0,
    backoff: Annotated[
        float,
        typer.Option(min=1, max=1000, metavar="F", help="Each retry waits this many times longer"),
    ] = 2.0,
    retry_on: Annotated[
        list[str] | None,
        typer.Option(
            "--retry-on",
            metavar="NAME",
            help="Retry only on this exception (a built-in name, or a dotted path such as"
            " mymod.MyError; subclasses too), 'timeout' or 'exit' (a command's non-zero exit);"
            " repeatable [default: any failure or timeout but a target that cannot be loaded,"
            f" which would fail again: name {UNLOADABLE} to retry that too]",
        ),
    ] = None,
    on_lost: Annotated[
        OnLost, typer.Option(help="When its pool dies under it: requeue, or fail (runs once)")
    ] = OnLost.requeue,
    cmd: Annotated[
        bool, typer.Option("--cmd", help="Run a command: gsup add --cmd -- PROG ARG...")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Import the target and bind the arguments (and import --retry-on's dotted"
            " names) in a child, as a pool would; with --cmd, find the program; add nothing",
        ),
    ] = False,
    from_file: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="FILE",
            help="One job per line of FILE ('-': stdin): TARGET [ARG]..., or with --cmd a"
            " command line; the other options apply to all",
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            metavar="KEY",
            help="A batch key: the same jobs added again with it are not added twice (what"
            " a cut batch says to give)",
        ),
    ] = None,
    home: Home = None,
) -> None:
    """Add a job; prints its id once the journal holds it.

    \b
    gsup add mymod:f 123 --kw y='[1, 2]'
    gsup add --cmd -- sleep 30
    gsup add --from jobs.txt
    """
    _check_usage(target, from_file, cmd, bool(kw) or as_str)
    _check_retry_on(retry_on or [])
    batch_key = key and _batch_key(key)
    keywords = {} if cmd else _keywords(kw or [], as_str)
    try:
        pool = pool_for(backend and backend.value, queue and queue.value)
    except ValueError as exc:
        raise UsageError(f"--{exc}") from None
    if sbatch and pool != "slurm":
        raise UsageError("--sbatch-opt goes with --backend slurm")
    options = dict(
        pool=pool, sbatch=sbatch or None, priority=priority, timeout=timeout, name=name,
        retries=retries, retry_delay=retry_delay, backoff=backoff, retry_on=retry_on,
        on_lost=on_lost.value,
    )  # fmt: skip
    from gsup.client import Client
    from gsup.specs import command_spec

    lines = _job_lines(from_file) if from_file is not None else [[target, *(args or [])]]
    try:
        if cmd:
            specs = [command_spec(words, **options) for words in lines]  # type: ignore[arg-type]
        else:
            specs = _call_specs(lines, keywords, as_str, options)
    except TargetError as exc:
        raise GsupError(str(exc)) from None
    if check:
        for spec in specs:
            _check(spec)
        return
    try:
        ids = Client(home).add_many(specs, batch_key)
    except PartlyAdded as exc:  # the ids of those added first, then why not the rest
        sys.stdout.write("".join(f"{job}\n" for job in exc.ids))
        again = f"; run it again with --key {exc.key} to add the rest, never twice"
        raise GsupError(exc.outcome + (again if exc.key else "")) from None
    sys.stdout.write("".join(f"{job}\n" for job in ids))


def _check_usage(target: str | None, from_file: str | None, cmd: bool, call_args: bool) -> None:
    """What typer cannot check: one TARGET (or command) or --from, --cmd before the
    command, a call's argument options only for a call, and a TARGET that reads as one."""
    if target is None and from_file is None:
        if cmd:
            raise UsageError("give the command: gsup add --cmd -- PROG ARG..., or --from FILE")
        raise UsageError("give a TARGET, or --from FILE with one job per line")
    if target is not None and from_file is not None:
        raise UsageError(f"give a TARGET or --from FILE, not both ({target!r} and --from)")
    if cmd and _cmd_after(target):
        raise UsageError(f"--cmd goes before the command: gsup add --cmd -- {target} ...")
    if cmd and call_args:
        raise UsageError("--kw and --str are for a call's arguments; a command takes words")
    if target is not None and not cmd:
        _check_target(target)


def _check_retry_on(names: list[str]) -> None:
    """Each --retry-on names a cause (a dotted path is imported by --check only: it can
    be imported in the job's folder alone)."""
    for cause in names:
        if not is_retry_cause(cause):
            raise UsageError(f"--retry-on {cause}: give {RETRY_CAUSES}")


def _batch_key(key: str) -> str:
    from gsup.protocol import ProtocolError, check_batch_key

    try:
        return check_batch_key(key)
    except ProtocolError as exc:
        raise UsageError(f"--key: {exc}") from None


def _keywords(items: list[str], as_str: bool) -> dict[str, Any]:
    """The --kw NAME=VALUE pairs, each name once."""
    try:
        pairs = [parse_keyword(item, as_str) for item in items]
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    named: dict[str, Any] = {}
    for name, value in pairs:
        if name in named:
            raise UsageError(f"--kw {name} is given twice")
        named[name] = value
    return named


def _check_target(target: str) -> None:
    """A TARGET on the command line must look like pkg.module:function (a target on a
    line of --from is the file's, not a usage error)."""
    try:
        parse_target(target)
    except TargetError as exc:
        raise UsageError(str(exc)) from None


def _cmd_after(target: str | None) -> bool:
    """Whether `--cmd` came after the command's first word (`gsup add prog 1 --cmd`)."""
    words = sys.argv[2:]
    words = words[: words.index("--")] if "--" in words else words
    return "--cmd" in words and target in words and words.index(target) < words.index("--cmd")


def _call_specs(
    lines: list[list[str]], keywords: dict[str, Any], as_str: bool, options: dict
) -> list[JobSpec]:
    from gsup.specs import call_specs, cli_import_path, text_folder

    path = cli_import_path(text_folder())  # once for all lines
    specs: list[JobSpec] = []
    for target, run in itertools.groupby(lines, key=lambda words: words[0]):
        arguments = (tuple(parse_value(arg, as_str) for arg in words[1:]) for words in run)
        specs += call_specs(target, arguments, keywords, path, **options)  # one run at a time
    return specs


def _job_lines(source: str) -> list[list[str]]:
    """The words of each job line of a file; blank lines and # comments are skipped."""
    import shlex

    try:
        text = sys.stdin.read() if source == "-" else open(source).read()  # noqa: SIM115
    except OSError as exc:
        raise GsupError(f"cannot read {source}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise GsupError(f"{source} is not UTF-8 text: {exc.reason}") from None
    jobs = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                plain = not any(mark in line for mark in "'\"\\")
                jobs.append(line.split() if plain else shlex.split(line))
            except ValueError as exc:
                raise GsupError(f"{source}, line {number}: {exc}") from None
    if not jobs:
        raise GsupError(f"{source} holds no job")
    return jobs


def _check(spec: JobSpec) -> None:
    """Import the target in a short-lived child, as a pool would, and bind the arguments;
    print the verdict (warnings on stderr), or raise its reason (see specs.check_spec)."""
    from gsup.specs import check_spec

    print(check_spec(spec, warn=lambda line: print(line, file=sys.stderr)))
