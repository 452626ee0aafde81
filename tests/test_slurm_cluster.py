"""The test cluster (tests/slurm_cluster.py) runs real Slurm jobs, as the `slurm` executor will.

How a finished job is read back without slurmdbd: the cluster writes finished jobs with
jobcomp/filetxt, and `sacct -c` (--completion) reads that file:

    sacct -c --parsable2 --noheader --format=JobID,State,ExitCode -j ID   ->   7|FAILED|3:0

Plain `sacct` (no -c) fails there: "Slurm accounting storage is disabled". ExitCode is
"<exit status>:<signal>". A job leaves `squeue` (without -t all) once it has ended, and
`squeue -h -j ID` then prints nothing (or fails with "Invalid job id" once purged).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import wait_until
from slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slurm

JOB_TIMEOUT = 60.0


def submit(slurm: SlurmCluster, *args: str) -> str:
    """sbatch a job; its id."""
    return slurm.run("sbatch", "--parsable", *args).stdout.strip()


def ended(slurm: SlurmCluster, job: str) -> bool:
    return not slurm.run("squeue", "-h", "-j", job, check=False).stdout.strip()


def state(slurm: SlurmCluster, job: str) -> str:
    """The state `squeue` shows ("" once the job has ended)."""
    return slurm.run("squeue", "-h", "-j", job, "-o", "%T", check=False).stdout.strip()


def record(slurm: SlurmCluster, job: str) -> tuple[str, str] | None:
    """(State, ExitCode) of an ended job, as `sacct -c` reads them from the jobcomp file."""
    out = slurm.run(
        "sacct", "-c", "--parsable2", "--noheader", "--format=JobID,State,ExitCode", "-j", job
    ).stdout
    for line in out.splitlines():
        job_id, job_state, exit_code = line.split("|")
        if job_id == job:
            return job_state, exit_code
    return None


def finish(slurm: SlurmCluster, job: str) -> tuple[str, str]:
    """Wait for the job to end and be recorded; its (State, ExitCode)."""
    wait_until(lambda: ended(slurm, job), JOB_TIMEOUT, f"job {job} to leave squeue")
    return wait_until(lambda: record(slurm, job), JOB_TIMEOUT, f"job {job} in sacct -c")


def test_a_job_runs_to_completed_and_writes_its_output(slurm: SlurmCluster, tmp_path: Path):
    output = tmp_path / "hello.out"
    job = submit(slurm, f"--output={output}", "--wrap", "echo hello")
    assert job.isdigit()
    assert finish(slurm, job) == ("COMPLETED", "0:0")
    assert output.read_text() == "hello\n"


def test_a_job_that_exits_3_is_recorded_with_exit_code_3(slurm: SlurmCluster):
    job = submit(slurm, "--output=/dev/null", "--wrap", "exit 3")
    assert finish(slurm, job) == ("FAILED", "3:0")


def test_scancel_ends_a_running_job_cancelled(slurm: SlurmCluster):
    job = submit(slurm, "--output=/dev/null", "--wrap", "sleep 600")
    wait_until(lambda: state(slurm, job) == "RUNNING", JOB_TIMEOUT, f"job {job} to run")
    slurm.run("scancel", job)
    assert finish(slurm, job)[0] == "CANCELLED"


def test_one_squeue_call_lists_every_queued_job(slurm: SlurmCluster):
    # Held, so that all 20 are still queued when squeue runs, whatever the node's CPUs.
    jobs = [submit(slurm, "--hold", "--output=/dev/null", "--wrap", "true") for _ in range(20)]
    try:
        listed = slurm.run("squeue", "-h", "-o", "%i %T").stdout.split("\n")
        states = dict(line.split() for line in listed if line)
        assert {job: states.get(job) for job in jobs} == dict.fromkeys(jobs, "PENDING")
    finally:
        slurm.run("scancel", *jobs)
