"""The slurm backend against plain sbatch, on a private single-node Slurm started for
the run (tests/slurm_cluster.py: 32 CPUs declared, so that `true` jobs start ~30/s).

Both sides run the same `true` jobs and learn of their end at the same rate: gsup's
default poll (2 s), and a shell loop that runs squeue every 2 s. A squeue on the
daemon's PATH counts its calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.gsup_side import REPOSITORY, gsup_cli, new_home, running_daemon

POLL = 2.0  # seconds: gsup's default poll, and the shell loop's
TIMEOUT = 1800.0


@dataclass(frozen=True)
class SlurmFigures:
    gsup_seconds: float  # `jobs` true jobs through gsup, from `gsup add` to `gsup wait`
    sbatch_seconds: float  # the same jobs, sbatch --wrap in a loop, squeue every 2 s
    squeue_per_poll: float  # squeue calls per poll interval while gsup followed them
    followed: int  # jobs followed at once for the next figure
    followed_per_poll: float  # squeue calls per poll interval while those were followed


def available() -> bool:
    return shutil.which("sinfo") is not None and shutil.which("slurmctld") is not None


@contextmanager
def private_cluster(root: Path) -> Iterator[object]:
    sys.path.insert(0, str(REPOSITORY / "tests"))
    from slurm_cluster import SlurmCluster

    cluster = SlurmCluster(root / "slurm")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@contextmanager
def slurm_environment(cluster: object, shims: Path) -> Iterator[Path]:
    """The clients (and daemons) this process starts reach the cluster, with a squeue
    that writes a line to the returned file each time it is called."""
    calls = shims / "squeue.calls"
    real = shutil.which("squeue")
    shims.mkdir(exist_ok=True)
    (shims / "squeue").write_text(f'#!/bin/sh\necho x >> {calls}\nexec {real} "$@"\n')
    (shims / "squeue").chmod(0o755)
    saved = dict(os.environ)
    os.environ.update(cluster.env)  # type: ignore[attr-defined]
    os.environ["PATH"] = f"{shims}:{os.environ['PATH']}"
    try:
        yield calls
    finally:
        os.environ.clear()
        os.environ.update(saved)


def measure(root: Path, jobs: int, followed: int) -> SlurmFigures:
    with private_cluster(root) as cluster, slurm_environment(cluster, root / "shims") as calls:
        sbatch_seconds = _sbatch_loop(root, jobs)
        gsup_seconds, per_poll = _through_gsup(root, jobs, calls)
        followed_per_poll = _squeue_while_following(root, followed, calls)
    return SlurmFigures(gsup_seconds, sbatch_seconds, per_poll, followed, followed_per_poll)


def _sbatch_loop(root: Path, jobs: int) -> float:
    """What a user without gsup does: submit in a loop, then poll squeue until empty."""
    out = root / "sbatch-out"
    out.mkdir(exist_ok=True)
    script = (
        f"for i in $(seq {jobs}); do sbatch --parsable --output={out}/%j.out --wrap true"
        f" > /dev/null || exit 1; done\n"
        f'while [ -n "$(squeue --noheader --me --format %i)" ]; do sleep {POLL:g}; done\n'
    )
    start = time.perf_counter()
    subprocess.run(["sh", "-c", script], check=True, timeout=TIMEOUT)
    return time.perf_counter() - start


def _through_gsup(root: Path, jobs: int, calls: Path) -> tuple[float, float]:
    """Seconds from `gsup add --backend slurm --cmd --from` to `gsup wait` returning on
    all of them; and squeue calls per poll interval meanwhile."""
    lines = root / "true.txt"
    lines.write_text("true\n" * jobs)
    home = new_home(root)
    with running_daemon(home):
        gsup = gsup_cli()
        before, start = _count(calls), time.perf_counter()
        added = subprocess.run(
            [*gsup, "add", "--home", str(home), "--backend", "slurm", "--cmd", "--from",
             str(lines)], capture_output=True, text=True, check=True, timeout=TIMEOUT,
        )  # fmt: skip
        ids = added.stdout.split()
        waited = subprocess.run([*gsup, "wait", "--home", str(home), *ids],
                                capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
        elapsed = time.perf_counter() - start
        polls = (_count(calls) - before) / (elapsed / POLL)
    states = {line.partition(": ")[2] for line in waited.stdout.splitlines()}
    if waited.returncode != 0 or states != {"done"} or len(ids) != jobs:
        raise RuntimeError(f"slurm jobs through gsup did not all end done: {waited.stderr}")
    return elapsed, polls


def _squeue_while_following(root: Path, jobs: int, calls: Path) -> float:
    """Squeue calls per poll interval over 10 s while gsup follows `jobs` Slurm jobs
    (most of them pending: the node runs 32 at once); then they are cancelled."""
    lines = root / "sleep.txt"
    lines.write_text("sleep 120\n" * jobs)
    home = new_home(root)
    gsup = gsup_cli()
    with running_daemon(home):
        added = subprocess.run(
            [*gsup, "add", "--home", str(home), "--backend", "slurm", "--cmd", "--from",
             str(lines)], capture_output=True, text=True, check=True, timeout=TIMEOUT,
        )  # fmt: skip
        ids = added.stdout.split()
        _wait_for_squeue_to_list(jobs)
        before, start = _count(calls), time.perf_counter()
        time.sleep(10.0)
        per_poll = (_count(calls) - before) / ((time.perf_counter() - start) / POLL)
        subprocess.run([*gsup, "cancel", "--home", str(home), *ids], capture_output=True,
                       timeout=TIMEOUT)  # fmt: skip
        subprocess.run([*gsup, "wait", "--home", str(home), *ids], capture_output=True,
                       timeout=TIMEOUT)  # fmt: skip
    return per_poll


def _wait_for_squeue_to_list(jobs: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        listed = subprocess.run(["squeue", "--noheader", "--me", "--format", "%i"],
                                capture_output=True, text=True).stdout.split()  # fmt: skip
        if len(listed) >= jobs:
            return
        time.sleep(0.5)
    raise RuntimeError(f"Slurm never listed the {jobs} jobs gsup submitted")


def _count(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0
