"""Fixtures: a real daemon process in a temp state dir, and the real CLI entry point."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import slurm_cluster

import gsup as gsup_under_test

READY_TIMEOUT = 30.0

JOBS_MODULE = textwrap.dedent(
    """
    import os, sys, time, threading

    def add(x, y=0):
        return x + y

    def echo(*args, **kwargs):
        return [list(args), kwargs]

    def types(*args):
        return [type(a).__name__ for a in args]

    def shout(label, n=200):
        for i in range(n):
            print(label, i)
            if i % 20 == 0:
                time.sleep(0.001)
        print(label, "to stderr", file=sys.stderr)
        return label

    def sleep(seconds):
        time.sleep(seconds)
        return seconds

    def spin(seconds):
        end = time.time() + seconds
        while time.time() < end:
            pass
        return "spun"

    def boom():
        raise ValueError("bad value")

    def die():
        os._exit(3)

    def record(path, label):
        with open(path, "a") as f:
            f.write(label + "\\n")
        return label

    def wait_for_file(path, timeout=30):
        end = time.time() + timeout
        while not os.path.exists(path) and time.time() < end:
            time.sleep(0.01)
        return os.path.exists(path)

    def cwd():
        return os.getcwd()

    def unjsonable():
        return {1, 2}

    not_callable = 42
    """
)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
    """Wait for a condition that has no event to wait on (a file, a process table)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


class Daemon:
    """A `gsup daemon` subprocess; its output is collected line by line."""

    def __init__(self, home: Path, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.home = home
        self.env = env
        self.args = args
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self, *extra: str) -> Daemon:
        self.lines = []
        self._ready.clear()
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "gsup", "daemon", *self.args, *extra],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        if not self._ready.wait(READY_TIMEOUT) or self.process.poll() is not None:
            raise AssertionError("daemon did not become ready:\n" + self.output)
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)
            if "gsup: ready:" in line:
                self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def said(self, text: str) -> bool:
        """Whether the daemon printed `text`, waiting for the line to be read."""
        wait_until(lambda: text in self.output, what=f"the daemon to say {text!r}")
        return True

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def home() -> Iterator[Path]:
    # Short paths: a unix socket path has ~100 bytes at most.
    path = Path(tempfile.mkdtemp(prefix="gsup-", dir="/tmp")) / "state"
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def workdir(home: Path) -> Path:
    """A folder holding `jobs.py`, as a user's project folder would."""
    path = home.parent / "work"
    path.mkdir()
    (path / "jobs.py").write_text(JOBS_MODULE)
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    # The daemons and CLIs the tests start run the gsup under test (the one pytest
    # imported), whatever else is installed: its folder is their only $PYTHONPATH.
    source = Path(gsup_under_test.__file__).resolve().parent.parent
    env = dict(os.environ, GSUP_HOME=str(home), COLUMNS="200", PYTHONPATH=str(source))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # .pyc files are written, as users' are
    return env


@pytest.fixture
def make_daemon(env: dict[str, str], home: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(*args: str, start: bool = True) -> Daemon:
        daemon = Daemon(home, env, args)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in started:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.stop(signal.SIGKILL)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


class States(dict):
    """End states by job id. Not a truth value: `assert gsup.wait(job)` would pass
    whatever the job ended in."""

    def __bool__(self) -> bool:
        raise TypeError("compare the end states: assert gsup.wait(job) == {job: 'done'}")


class Cli:
    """Runs `python -m gsup ...` (the `gsup` entry point) in the work folder."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.home = Path(env["GSUP_HOME"])

    def __call__(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            # -P: like the `gsup` script, it does not import from the folder it runs in
            [sys.executable, "-P", "-m", "gsup", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"gsup {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def add(self, *args: str) -> int:
        return int(self("add", *args).stdout.strip())

    def wait(self, *jobs: int) -> States:
        """`gsup wait`: the jobs' end states, to compare (`== {job: "done"}`)."""
        result = self("wait", *map(str, jobs), check=False)
        states = States()
        for line in result.stdout.splitlines():
            job, _, state = line.partition(": ")
            states[int(job)] = state
        assert len(states) == len(jobs), result.stderr
        return states

    def run(self, *args: str) -> str:
        """Add a job and wait for it: its end state."""
        job = self.add(*args)
        return self.wait(job)[job]

    def show(self, job: int) -> dict:
        import json

        return json.loads(self("show", str(job), "--json").stdout)

    def running(self, job: int) -> bool:
        """Whether a worker has started the job (its attempt is open)."""
        return self.show(job)["state"] == "running"

    def handed_over(self, job: int) -> bool:
        """Whether the job's pool holds it, no worker having started it yet."""
        attempts = self.show(job)["attempts_list"]
        return bool(attempts) and attempts[-1]["started"] is None and attempts[-1]["ended"] is None


@pytest.fixture
def gsup(env: dict[str, str], workdir: Path) -> Cli:
    return Cli(env, workdir)


def run_daemon_expecting_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `gsup daemon` where it must refuse to start; its exit and output."""
    return subprocess.run(
        [sys.executable, "-P", "-m", "gsup", "daemon"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def journal_rows(home: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(f"file:{home / 'journal.sqlite'}?mode=ro", uri=True) as db:
        return db.execute(sql, params).fetchall()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[slurm_cluster.SlurmCluster]:
    """One real single-node Slurm cluster for the session; its `env` reaches it."""
    missing = slurm_cluster.missing_programs()
    how = "`python3 tests/slurm_cluster.py install` installs it"
    if "sinfo" in missing:
        pytest.skip(f"Slurm is not installed (no sinfo): {how}")
    if missing:
        pytest.skip(f"Slurm is incomplete (no {', '.join(missing)}): {how}")
    with slurm_cluster.SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


CHAIN_JOBS = """
from gsup import current

def gen(n):
    (current().outdir / "n.txt").write_text(str(n))

def square():
    run = current()
    n = int(run.inputs[0].read_text())
    (run.outdir / "sq.txt").write_text(f"{n * n}\\n")
"""


def chain_task(backend: str, extra: str = "") -> str:
    """A task file whose local stage makes 1, 2, 3 and whose second stage, on `backend`
    (with the `extra` lines), squares them into merged.txt; its jobs in CHAIN_JOBS."""
    return f"""
[task]
name = "chain"

[[transform]]
name = "gen"
target = "chainjobs:gen"
units = [[1], [2], [3]]
outputs = ["n.txt"]

[[transform]]
name = "square"
backend = "{backend}"
{extra}
target = "chainjobs:square"
inputs_from = "gen"
outputs = ["sq.txt"]
merger = "text"
"""
