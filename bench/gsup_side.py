"""The gsup side: daemons in state dirs of their own, at default settings, and each
figure's workload.

The same figures can run against an earlier release of gsup installed in another
environment (`python -m bench --before PYTHON`): `Before` runs this module in that
interpreter, which imports its own gsup, so that both are measured in one run.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import gaps, idle_cpu_percent, run_seconds
from bench.processes import Spawned, console_script

NOOP_SOURCE = "def noop(*args):\n    return None\n"
WAIT_TIMEOUT = 900.0  # seconds; only a broken daemon takes this long
SETTLE = 1.0  # seconds an idle daemon gets before its CPU is sampled
REPOSITORY = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workspace:
    """Where a run keeps its files. `root` is short: a socket path must fit in ~100 bytes."""

    root: Path
    code: Path  # holds noop.py: on the API's sys.path, and the CLI's working folder
    noop: Callable[[], None]

    @property
    def target(self) -> str:
        return "noop:noop"


def make_workspace(root: Path) -> Workspace:
    """Write the no-op job's module and import it, so the API sends it by reference."""
    code = root / "code"
    code.mkdir()
    (code / "noop.py").write_text(NOOP_SOURCE)
    sys.path.insert(0, str(code))  # the API sends sys.path; the pools import from it
    module = importlib.import_module("noop")
    return Workspace(root=root, code=code, noop=module.noop)


def gsup_cli() -> list[str]:
    """How the bench runs `gsup`: the installed console script, as a user would."""
    return console_script("gsup", "gsup")


def new_home(root: Path) -> Path:
    """A fresh state dir, with no settings file: the daemon runs at its defaults."""
    return Path(tempfile.mkdtemp(prefix="g", dir=root))


CHECKED = "gsup: the journal passed its check"  # jobs go to the pools from then on


class GsupDaemon(Spawned):
    def __init__(self, home: Path) -> None:
        super().__init__([*gsup_cli(), "daemon", "--home", str(home)], ready_text="gsup: ready:",
                         timed_texts=[CHECKED])  # fmt: skip
        self.home = home

    def queues(self) -> Any:
        from gsup.api import Queues

        return Queues(self.home)


@contextmanager
def running_daemon(home: Path) -> Iterator[GsupDaemon]:
    """A daemon that is ready, stopped however the block ends."""
    daemon = GsupDaemon(home)
    try:
        daemon.start()
        daemon.wait_ready()
        yield daemon
    finally:
        daemon.stop()


def check_done(states: dict[int, str], expected: int) -> None:
    ended = [state for state in states.values() if state != "done"]
    if len(states) != expected or ended:
        raise RuntimeError(f"{len(ended)} of {expected} jobs did not end done: {ended[:5]}")


# --- figures --------------------------------------------------------------------------


def _queued_frozen(queues: Any, ws: Workspace, jobs: int) -> list[Any]:
    """`jobs` no-op jobs, added with the user pool frozen; their handles."""
    queues.freeze("user")
    handles = queues.add_many(ws.noop, [()] * jobs)
    for handle in handles:
        _ = handle.id  # journaled
    return handles


Around = Callable[[Path], AbstractContextManager[Any]]  # what else runs beside a daemon


def _alone(home: Path) -> AbstractContextManager[Any]:
    return nullcontext()


def drain_rate(ws: Workspace, jobs: int, pending_waits: int = 0, around: Around = _alone) -> float:
    """Jobs/s from unfreezing a user pool with `jobs` queued to the last one's end,
    awaited with one `wait` on all of them; `pending_waits` other waits, each on a job
    that does not end meanwhile, are pending all along (from another client). `around`:
    what runs beside the daemon all along (gsup web)."""
    with running_daemon(new_home(ws.root)) as daemon, around(daemon.home):
        queues = daemon.queues()
        ids = [handle.id for handle in _queued_frozen(queues, ws, jobs)]
        waiter = _wait_on_a_held_job(daemon, queues, ws, pending_waits)
        start = time.perf_counter()
        queues.unfreeze("user")
        states = queues.client.wait(ids, WAIT_TIMEOUT)  # answered when the last one ends
        elapsed = time.perf_counter() - start
        waiter.close()  # its waits are left unanswered, on purpose
        check_done(states, jobs)
        return jobs / elapsed


def task_rate(ws: Workspace, units: int, in_flight: int, frozen: bool = False) -> float:
    """Units/s of a task of `units` no-op units with float `in_flight`, to the daemon's
    answer that it has ended (its `wait`, as a drain's end is awaited): from its submit
    request, or (`frozen`) from unfreezing the user pool it was submitted to frozen."""
    from gsup.tasks.api import Tasks
    from gsup.tasks.spec import Task, Transform

    with running_daemon(new_home(ws.root)) as daemon:
        queues = daemon.queues()
        if frozen:
            queues.freeze("user")
        work = Transform("noop", target=ws.target, units=[[]] * units)
        tasks = Tasks(daemon.home)
        tasks.client.request("ping")  # connected before the clock, as jobs_rate is
        start = time.perf_counter()
        handle = tasks.submit(Task("bench", [work], float=in_flight, base=ws.code))
        if frozen:
            start = time.perf_counter()
            queues.unfreeze("user")
        state = handle.wait(WAIT_TIMEOUT)
        elapsed = time.perf_counter() - start
        if state != "completed":
            raise RuntimeError(f"the bench's task ended {state}")
        return units / elapsed


def jobs_rate(ws: Workspace, jobs: int) -> float:
    """Jobs/s of `jobs` plain no-op jobs, from their `add_many` to the daemon's answer
    to one `wait` on them all: what a task of as many units is held to."""
    with running_daemon(new_home(ws.root)) as daemon:
        queues = daemon.queues()
        queues.client.request("ping")  # connected before the clock
        start = time.perf_counter()
        ids = [handle.id for handle in queues.add_many(ws.noop, [()] * jobs)]
        states = queues.client.wait(ids, WAIT_TIMEOUT)
        elapsed = time.perf_counter() - start
        check_done(states, jobs)
        return jobs / elapsed


CSV_SOURCE = """\
import time
from gsup import current

def row(n):
    with open(current().outdir / "out.csv", "w") as out:
        out.write(f"n,closed\\n{n},{time.time()!r}\\n")  # closed right after this
"""


@dataclass
class MergeFigures:
    landed_ms: list[float]  # per unit: from its out.csv's close to the daemon noticing it
    merged_after: float  # seconds from the last unit's end to its merge's end
    show: list[float]  # `gsup task show` processes on the task (s)...
    typer: list[float]  # ...and `python -c "import typer"`, in turn


def merge_figures(ws: Workspace, units: int, in_flight: int, runs: int) -> MergeFigures:
    """A task of `units` units that each write a one-row CSV, merged by the csv merger:
    how soon each output was noticed, how soon after the last unit's end the merged
    file was whole (read from the journal's wall times), and `gsup task show` on it."""
    from gsup.journal.queries import read_journal
    from gsup.tasks.api import Tasks
    from gsup.tasks.spec import Task, Transform

    (ws.code / "benchcsv.py").write_text(CSV_SOURCE)
    with running_daemon(new_home(ws.root)) as daemon:
        work = Transform("rows", target="benchcsv:row", units=[[n] for n in range(units)],
                         outputs=["out.csv"], merger="csv")  # fmt: skip
        handle = Tasks(daemon.home).submit(Task("csv", [work], float=in_flight, base=ws.code))
        if handle.wait(WAIT_TIMEOUT) != "completed":
            raise RuntimeError(f"the bench's csv task ended {handle.state}")
        with read_journal(daemon.home) as conn:
            landed = dict(conn.execute("SELECT idx, landed FROM units WHERE landed IS NOT NULL"))
            (last_end,) = conn.execute("SELECT max(ended) FROM jobs WHERE name LIKE 'csv/rows/%'"
                                       " AND name != 'csv/rows/merge'").fetchone()  # fmt: skip
            (merged,) = conn.execute("SELECT max(ended) FROM merges").fetchone()
        merged_file = daemon.home / "tasks" / str(handle.id) / "rows" / "merged.csv"
        rows = [line.split(",") for line in merged_file.read_text().splitlines()[1:]]
        if sorted(int(n) for n, _ in rows) != list(range(units)) or len(landed) != units:
            raise RuntimeError(f"{len(rows)} rows merged, {len(landed)} of {units} landings")
        argv = [*gsup_cli(), "task", "show", str(handle.id), "--home", str(daemon.home)]
        show, typer = [], []
        for run in range(runs + 1):  # the first, unmeasured, warms caches
            seconds = (run_seconds(argv, cwd=ws.code),
                       run_seconds([sys.executable, "-c", "import typer"]))  # fmt: skip
            if run:
                show.append(seconds[0])
                typer.append(seconds[1])
    landed_ms = [(landed[int(n)] - float(closed)) * 1000 for n, closed in rows]
    return MergeFigures(landed_ms, merged - last_end, show, typer)


def _wait_on_a_held_job(daemon: GsupDaemon, queues: Any, ws: Workspace, waits: int) -> Any:
    """A client with `waits` wait requests pending (none if 0), on a job held in the
    frozen monitoring pool."""
    from gsup.client import Client

    waiter = Client(daemon.home)
    if waits:
        queues.freeze("monitoring")
        held = queues.add(ws.noop, queue="monitoring").id
        for _ in range(waits):
            waiter.send("wait", jobs=[held])
        waiter.request("ping")  # answered once every wait before it is registered
    return waiter


def drain_by_results_rate(ws: Workspace, jobs: int) -> float:
    """Jobs/s from unfreezing a user pool with `jobs` queued until the `result()` of
    each handle has been read, one after another."""
    with running_daemon(new_home(ws.root)) as daemon:
        queues = daemon.queues()
        handles = _queued_frozen(queues, ws, jobs)
        start = time.perf_counter()
        queues.unfreeze("user")
        for handle in handles:
            handle.result(WAIT_TIMEOUT)
        return jobs / (time.perf_counter() - start)


def enqueue_rate(ws: Workspace, calls: int) -> float:
    """Single `queues.add` calls/s, until the journal holds the last one (a call returns
    once its request is sent; its id is read when the daemon has committed it). The pool
    is frozen so that only adding is measured, as huey's enqueue with no consumer."""
    with running_daemon(new_home(ws.root)) as daemon:
        queues = daemon.queues()
        queues.freeze("user")
        _ = queues.add(ws.noop).id  # connect first: a client's first call also connects
        start = time.perf_counter()
        handles = [queues.add(ws.noop) for _ in range(calls)]
        ids = [job.id for job in handles]  # each call counts once the journal holds it
        elapsed = time.perf_counter() - start
        assert len(set(ids)) == calls
        return calls / elapsed


def add_many_rate(ws: Workspace, jobs: int) -> float:
    """Jobs/s of one `queues.add_many` call (sent in requests of 10,000), pool frozen."""
    with running_daemon(new_home(ws.root)) as daemon:
        queues = daemon.queues()
        queues.freeze("user")
        start = time.perf_counter()
        ids = [job.id for job in queues.add_many(ws.noop, [()] * jobs)]
        elapsed = time.perf_counter() - start
        assert len(set(ids)) == jobs
        return jobs / elapsed


def cli_from_rate(ws: Workspace, jobs: int) -> float:
    """Jobs/s of one whole `gsup add --from FILE` process, one job per line, pool frozen."""
    lines = ws.root / f"jobs-{jobs}.txt"
    lines.write_text(f"{ws.target}\n" * jobs)
    home = new_home(ws.root)
    with running_daemon(home) as daemon:
        daemon.queues().freeze("user")
        elapsed = run_seconds([*gsup_cli(), "add", "--home", str(home), "--from", str(lines)])
        return jobs / elapsed


def latencies(ws: Workspace, trips: int) -> list[float]:
    """Seconds from `queues.add` to `.result()` returning, one job after another."""
    return _trips(ws, [0.0] * trips)


def gap_latencies(ws: Workspace, trips: int, around: Around = _alone) -> list[float]:
    """The same, with the jobs 20-50 ms apart: every process sleeps in between."""
    return _trips(ws, gaps(trips), around)


def _trips(ws: Workspace, pauses: Sequence[float], around: Around = _alone) -> list[float]:
    with running_daemon(new_home(ws.root)) as daemon, around(daemon.home):
        queues = daemon.queues()
        for _ in range(5):  # warm up: the connection, and the pool's first import
            queues.add(ws.noop).result(WAIT_TIMEOUT)
        seconds = []
        for pause in pauses:
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            queues.add(ws.noop).result(WAIT_TIMEOUT)
            seconds.append(time.perf_counter() - start)
        return seconds


def idle_cpu(ws: Workspace, seconds: float) -> float:
    """% of one core used by the supervisor and its pools while nothing happens."""
    with running_daemon(new_home(ws.root)) as daemon:
        daemon.queues().add(ws.noop).result(WAIT_TIMEOUT)  # it has worked once
        time.sleep(SETTLE)
        return idle_cpu_percent(daemon.pid, seconds)


# Every command, as a user runs it (from the folder of noop.py), with the daemon up, job 1
# done and the monitoring pool frozen ({queued}: a job queued there, one per run); each
# must succeed. "typer" is the floor: `python -c "import typer"`.
COMMANDS = {
    "add": ["add", "{target}"],
    "jobs": ["jobs"],
    "queues": ["queues"],
    "status": ["status"],
    "show": ["show", "1"],
    "logs": ["logs", "1"],
    "wait": ["wait", "1"],
    "cancel": ["cancel", "{queued}"],
    "freeze": ["freeze", "--queue", "user"],
    "unfreeze": ["unfreeze", "--queue", "user"],
    "add --help": ["add", "--help"],
    "--version": ["--version"],
}


def command_processes_vs_typer(ws: Workspace, runs: int) -> dict[str, list[float]]:
    """Wall seconds of whole `gsup` processes, one list per command and one of
    `python -c "import typer"`, run in turn so that they share the machine's moods."""
    home = new_home(ws.root)
    words = {**COMMANDS, "typer": []}
    times: dict[str, list[float]] = {name: [] for name in words}
    with running_daemon(home) as daemon:
        queues = daemon.queues()
        queues.add(ws.noop).result(WAIT_TIMEOUT)  # job 1, done
        queues.freeze("monitoring")
        for run in range(runs + 1):  # the first, unmeasured, warms caches and writes .pyc
            queued = queues.add(ws.noop, queue="monitoring").id
            for name, argv in _command_lines(words, home, ws.target, queued).items():
                seconds = run_seconds(argv, cwd=ws.code)
                if run:
                    times[name].append(seconds)
    return times


def _command_lines(
    commands: dict[str, list[str]], home: Path, target: str, queued: int
) -> dict[str, list[str]]:
    lines = {
        name: [*gsup_cli(), *(w.format(target=target, queued=queued) for w in words),
               "--home", str(home)]
        for name, words in commands.items()
    }  # fmt: skip
    lines["--version"] = [*gsup_cli(), "--version"]
    lines["typer"] = [sys.executable, "-c", "import typer"]
    return lines


# --- an earlier release, in an interpreter of its own ----------------------------------

FIGURES: dict[str, Callable[[Workspace, Any], Any]] = {
    "drain": drain_rate,
    "drain_results": drain_by_results_rate,
    "enqueue": enqueue_rate,
    "add_many": add_many_rate,
    "cli_from": cli_from_rate,
    "latency": latencies,
    "gap_latency": gap_latencies,
    "idle": idle_cpu,
}

# Run in the earlier release's interpreter: its own gsup comes first on sys.path, this
# checkout's bench package after it.
_BOOT = (
    "import sys; sys.path.append(sys.argv.pop(1)); "
    "from bench.gsup_side import measure_main; measure_main(sys.argv[1:])"
)


def measure_main(argv: list[str]) -> None:
    """`FIGURE AMOUNT ROOT`: measure one figure here, print it as JSON."""
    figure, amount, root = argv
    ws = make_workspace(Path(tempfile.mkdtemp(prefix="b", dir=root)))
    print(json.dumps(FIGURES[figure](ws, json.loads(amount))))


@dataclass(frozen=True)
class Before:
    """An earlier release of gsup, installed (not editable) in the environment of
    `python`, measured by this module's figures in a subprocess of that interpreter."""

    python: str
    root: Path

    def version(self) -> str:
        return subprocess.run(
            [self.python, "-I", "-c", "import importlib.metadata as m; print(m.version('gsup'))"],
            capture_output=True, text=True, check=True, cwd=self.root,
        ).stdout.strip()  # fmt: skip

    def measure(self, figure: str, amount: Any) -> Any:
        done = subprocess.run(
            [self.python, "-I", "-c", _BOOT, str(REPOSITORY), figure, json.dumps(amount),
             str(self.root)],
            capture_output=True, text=True, cwd=self.root,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"the earlier gsup failed on {figure}: {done.stderr.strip()}")
        return json.loads(done.stdout.splitlines()[-1])
