"""The commands on hot paths: `gsup add` (scripts adding jobs one process at a time),
`gsup jobs` and `gsup queues` (what people run in a loop to watch their jobs).

They are parsed with argparse, not typer: running a typer app imports pydantic (~60 ms
here), and these should cost little more than Python's own start. `add` imports
neither typer nor rich nor peewee nor user code; the queries read the journal with
plain SQL (gsup/journal/queries.py). `gsup.main` routes to them before typer loads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gsup.client import Client, GsupError
from gsup.config import DEFAULT_PRIORITY, POOL_NAMES, Paths, resolve_home
from gsup.lifecycle import State
from gsup.protocol import MAX_RETRIES, MAX_SECONDS, JobSpec
from gsup.specs import call_specs, cli_import_path, command_spec
from gsup.targets import TargetError, parse_keyword, parse_value

if TYPE_CHECKING:
    import sqlite3

DESCRIPTION = "Add a job; prints its id once the journal holds it."


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not a usage block
        print(f"gsup: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _home_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="state dir [default: $GSUP_HOME or $XDG_STATE_HOME/gsup]")


def _number(low: float, high: float, kind: type = float) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high]."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is not in {low:g}..{high:g}")
        return value

    return parse


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gsup add", description=DESCRIPTION)
    p.add_argument("target", nargs="?", help="pkg.module:function, or with --cmd the program")
    p.add_argument("args", nargs="*", help="arguments: Python literals, else strings")
    p.add_argument("--kw", action="append", default=[], metavar="NAME=VALUE",
                   help="keyword argument (repeatable)")  # fmt: skip
    p.add_argument("--str", dest="as_str", action="store_true",
                   help="pass every argument as a string")  # fmt: skip
    p.add_argument("-q", "--queue", choices=POOL_NAMES, default="user", help="pool to run in")
    p.add_argument("-p", "--priority", type=_number(0, 9, int), default=DEFAULT_PRIORITY,
                   help="0 runs first; FIFO among equals [default: 5]")  # fmt: skip
    p.add_argument("--timeout", type=_number(0.001, MAX_SECONDS),
                   help="seconds before the job is stopped")  # fmt: skip
    p.add_argument("--name", help="a name to show")
    p.add_argument("--retries", type=_number(0, MAX_RETRIES, int), default=0,
                   help="runs again after a failure or timeout")  # fmt: skip
    p.add_argument("--retry-delay", type=_number(0, MAX_SECONDS), default=0.0,
                   help="seconds before the first retry")  # fmt: skip
    p.add_argument("--backoff", type=_number(1, 1000), default=2.0,
                   help="each retry waits this many times longer [default: 2]")  # fmt: skip
    p.add_argument("--retry-on", action="append", metavar="NAME",
                   help="retry only on this exception (or a subclass), 'timeout' or 'exit'"
                   " (a command's non-zero exit); repeatable [default: all]")  # fmt: skip
    p.add_argument("--on-lost", choices=("requeue", "fail"), default="requeue",
                   help="requeue, or fail for jobs that must not run twice")  # fmt: skip
    p.add_argument("--cmd", action="store_true",
                   help="run a command: gsup add --cmd -- prog args...")  # fmt: skip
    p.add_argument("--check", action="store_true",
                   help="import the target and bind the arguments; add nothing")  # fmt: skip
    p.add_argument("--from", dest="from_file", metavar="FILE",
                   help="one job per line of FILE ('-': stdin): TARGET [ARG...], or with --cmd"
                   " a command line; the other options apply to all")  # fmt: skip
    _home_option(p)
    return p


def add_main(argv: Sequence[str]) -> int:
    options = _parse(list(argv))
    try:
        specs = _specs(options)
        if options.check:
            for spec in specs:
                _check(spec)
            return 0
        ids = Client(options.home).add_many(specs)
        sys.stdout.write("".join(f"{job}\n" for job in ids))
    except (GsupError, TargetError) as exc:
        print(f"gsup: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _parse(argv: list[str]) -> argparse.Namespace:
    """Options may come between arguments; after `--` everything is an argument
    (argparse's own handling of `--` among intermixed arguments is unreliable)."""
    rest: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, rest = argv[:cut], argv[cut + 1 :]
    options = parser().parse_intermixed_args(argv)
    words = [w for w in (options.target, *options.args) if w is not None] + rest
    options.target, options.args = (words[0], words[1:]) if words else (None, [])
    return options


def _specs(options: argparse.Namespace) -> list[JobSpec]:
    if (options.target is None) == (options.from_file is None):
        raise GsupError("give a TARGET, or --from FILE with one job per line")
    job_options = dict(
        pool=options.queue, priority=options.priority, timeout=options.timeout,
        name=options.name, retries=options.retries, retry_delay=options.retry_delay,
        backoff=options.backoff, retry_on=options.retry_on, on_lost=options.on_lost,
    )  # fmt: skip
    lines = (
        _job_lines(options.from_file)
        if options.from_file is not None
        else [[options.target, *options.args]]
    )
    if options.cmd:
        return [command_spec(words, **job_options) for words in lines]
    pairs = [parse_keyword(item, options.as_str) for item in options.kw]
    keywords = dict(pairs)
    if len(keywords) < len(pairs):
        raise TargetError("a keyword argument is given twice")
    path = cli_import_path(os.getcwd())  # once for all lines
    specs: list[JobSpec] = []
    for target, run in itertools.groupby(lines, key=lambda words: words[0]):
        arguments = (tuple(parse_value(arg, options.as_str) for arg in words[1:]) for words in run)
        specs += call_specs(target, arguments, keywords, path, **job_options)  # one run at a time
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
    """Import the target in a short-lived child, as a pool would, and bind the arguments
    (see targets._check_main)."""
    if spec.kind == "cmd":
        import shutil

        if shutil.which(spec.argv[0]) is None:
            raise GsupError(f"command not found: {spec.argv[0]}")
        print(f"ok: {spec.display}")
        return
    import subprocess

    child = subprocess.run(
        [sys.executable, "-P", "-m", "gsup.targets"],  # -P: a gsup.py in the folder is no gsup
        input=json.dumps(spec.to_wire()),
        capture_output=True,
        text=True,
        cwd=spec.cwd,
    )
    lines = (child.stdout.strip() or child.stderr.strip() or "the check failed").splitlines()
    for warning in lines[:-1]:
        if warning.startswith("gsup: warning: "):  # else what the target printed
            print(warning, file=sys.stderr)
    line = lines[-1]
    if child.returncode != 0:
        raise GsupError(line.removeprefix("gsup: error: "))
    print(line)


# --- the queries -------------------------------------------------------------------------


def jobs_main(argv: Sequence[str]) -> int:
    p = _Parser(prog="gsup jobs", description="List jobs, newest first.")
    p.add_argument("-s", "--state", choices=STATES, help="only jobs in this state")
    p.add_argument("-q", "--queue", choices=POOL_NAMES, help="one queue only")
    p.add_argument("-n", "--limit", type=_number(1, 1e9, int), default=20,
                   help="how many, newest first [default: 20]")  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _home_option(p)
    options = p.parse_args(argv)
    from gsup.journal import queries

    with read_journal(options.home) as conn:
        found = queries.list_jobs(conn, options.state, options.queue, options.limit)
    if options.json:
        _print_json(found)
    else:
        from gsup.render import jobs_table, print_rich

        print_rich(jobs_table(found))
    return 0


def queues_main(argv: Sequence[str]) -> int:
    p = _Parser(
        prog="gsup queues",
        description="Show each pool's workers (Name / Command / Timeout) and pending queue.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _home_option(p)
    options = p.parse_args(argv)
    from dataclasses import asdict

    from gsup.client import daemon_is_up
    from gsup.journal import queries

    paths = Paths(resolve_home(options.home))
    up = daemon_is_up(paths)
    with read_journal(options.home) as conn:
        pools = queries.queues_snapshot(conn)
    if options.json:
        _print_json({"daemon": "running" if up else "not running",
                     "pools": [asdict(pool) for pool in pools]})  # fmt: skip
    else:
        from gsup.render import print_rich, queues_view

        print_rich(queues_view(pools, up))
    return 0


STATES = tuple(state.value for state in State)


@contextmanager
def read_journal(home: str | Path | None) -> Iterator[sqlite3.Connection]:
    """The journal, read-only; GsupError (one line) if it cannot be read."""
    import sqlite3

    from gsup.journal.queries import Unreadable, connect

    paths = Paths(resolve_home(home))
    try:
        conn = connect(paths.journal)
    except Unreadable as exc:
        raise GsupError(str(exc)) from None
    try:
        yield conn
    except sqlite3.Error as exc:
        raise GsupError(f"cannot read the journal: {exc}") from None
    finally:
        conn.close()


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, default=str))


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "add": add_main,
    "jobs": jobs_main,
    "queues": queues_main,
}


def run(command: str, argv: Sequence[str]) -> int:
    """Run a fast command; one line on stderr and exit 1 for a known error."""
    try:
        return COMMANDS[command](argv)
    except GsupError as exc:
        print(f"gsup: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        os._exit(1)  # `gsup jobs | head`: the reader went away
