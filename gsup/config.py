"""Where gsup keeps its state, and the limits that clients and the daemon share.

Kept import-light: every CLI command imports this module; the daemon's settings, which
only the daemon reads, are in `gsup.settings`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gsup.errors import GsupError

# Backends run jobs; a job's `pool` names the executor that runs it. The local backend
# runs jobs in the threads of its two pools; the process backend's pool runs each job in
# a process of its own; Slurm and Dask each have one executor. `--queue` picks a local
# pool, `--backend` a backend.
LOCAL_POOLS = ("user", "monitoring")
PROCESS_POOL = "process"
POOL_NAMES = (*LOCAL_POOLS, PROCESS_POOL)  # every pool the daemon runs
SLURM = "slurm"  # the Slurm backend's one executor
DASK = "dask"  # the Dask backend's one executor
EXECUTOR_NAMES = (*POOL_NAMES, SLURM, DASK)  # what a job's `pool` may name
BACKENDS = ("local", "process", SLURM, DASK)
DEFAULT_POOL = "user"
DEFAULT_PRIORITY = 5
MAX_MESSAGE = 8 * 1024 * 1024  # bytes in one socket message
MAX_JOB_ID = 2**63 - 1  # SQLite's largest integer
MB = 1_000_000
DAY = 86_400.0
TASKS_LISTED = 20  # tasks `gsup task list` (and `tasks` at a prompt) show, newest first


class PlacementError(ValueError):
    """A backend or queue that cannot be used; `key` names which."""

    def __init__(self, key: str, message: str, value: object = None) -> None:
        if value is not None:  # a client's value, shown short whatever its size
            from gsup.protocol import shown

            message = message.format(shown(value))
        super().__init__(message)
        self.key = key


def pool_for(backend: str | None, queue: str | None) -> str | None:
    """The pool of a job from its backend and queue (each None when not given): None
    when neither is (the daemon's default backend runs it). PlacementError for an
    unknown one, or a queue given with a backend other than local (whose pools they are)."""
    if queue is not None and queue not in LOCAL_POOLS:
        raise PlacementError(
            "queue", "unknown queue {}; choose from " + ", ".join(LOCAL_POOLS), queue
        )
    if backend is not None and backend not in BACKENDS:
        raise PlacementError(
            "backend", "unknown backend {}; choose from " + ", ".join(BACKENDS), backend
        )
    if backend not in (None, "local") and queue is not None:
        raise PlacementError(
            "queue", f"queue {queue} is a pool of the local backend, not of {backend}"
        )
    if backend == "local":
        return queue or DEFAULT_POOL  # the others' executor is named as they are
    return queue if backend is None else backend


def resolve_home(home: str | Path | None = None) -> Path:
    """The state dir: `--home`, else $GSUP_HOME, else $XDG_STATE_HOME/gsup."""
    if home:
        return _expanded(home)
    if os.environ.get("GSUP_HOME"):
        return _expanded(os.environ["GSUP_HOME"])
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return _expanded(xdg) / "gsup"


def _expanded(folder: str | Path) -> Path:
    try:
        return Path(folder).expanduser().absolute()
    except RuntimeError:  # ~name of no user
        raise GsupError(f"cannot find the home folder of {str(folder).split('/')[0]}") from None


@dataclass(frozen=True)
class Paths:
    """The files of one state dir."""

    home: Path

    @property
    def socket(self) -> Path:
        return self.home / "gsup.sock"

    @property
    def tag(self) -> str:
        """Six hex digits that tell this state dir's jobs from others' on a shared
        engine (Slurm's job names, Dask's keys)."""
        import hashlib

        return hashlib.sha1(str(self.home).encode()).hexdigest()[:6]

    @property
    def journal(self) -> Path:
        return self.home / "journal.sqlite"

    @property
    def journal_files(self) -> list[Path]:
        """The journal and its write-ahead log and shared-memory index."""
        return [self.home / f"journal.sqlite{suffix}" for suffix in ("", "-wal", "-shm")]

    @property
    def lock(self) -> Path:
        return self.home / "daemon.lock"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def tasks(self) -> Path:
        """Tasks' unit output folders: tasks/TASK/TRANSFORM/INDEX/."""
        return self.home / "tasks"

    @property
    def slurm(self) -> Path:
        """Slurm jobs' scripts, and their calls' attempt and outcome files:
        JOB.ATTEMPT.sh, .call, .outcome (the nodes must share it)."""
        return self.home / "slurm"

    @property
    def config(self) -> Path:
        return self.home / "gsup.toml"

    def job_output(self, job_id: int, stream: str, attempt: int | None = None) -> Path:
        """Where attempt `attempt` (its id) of job `job_id` writes `stream` ("out" or
        "err"); without an attempt, where gsup 0.2.0.dev0 and older wrote a job's."""
        if attempt is None:
            return self.logs / f"{job_id}.{stream}"
        return self.logs / f"{job_id}.{attempt}.{stream}"

    def printed(self, job_id: int, stream: str, attempt: int | None) -> Path:
        """Where to read what an attempt printed: its file, or for a job run before
        attempts had files of their own, the job's."""
        path = self.job_output(job_id, stream, attempt)
        return path if attempt is None or path.exists() else self.job_output(job_id, stream)
