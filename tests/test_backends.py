"""Backends: what runs a job. `local` runs it in a pool thread; `process` runs each job
in a process of its own, in its own session, under a guardian: its output in the job's
log files, its exit code, CPU time and peak memory in its attempt, its whole process
group killed on a timeout or a cancel."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from conftest import Cli, alive, journal_rows, run_daemon_expecting_exit, wait_until

from gsup import BadOptions, Queues

PROCESS_JOBS = textwrap.dedent(
    """
    import os, subprocess, sys, time

    COUNTER = []

    def count():
        COUNTER.append(1)  # a module shared with other jobs would keep counting
        return len(COUNTER)

    def pid():
        return os.getpid()

    def session():
        return [os.getsid(0), os.getpgid(0) == os.getpid()]

    def where():
        from gsup import current
        return [os.getcwd(), current().job]

    def loud():
        print("to stdout")
        print("to stderr", file=sys.stderr)
        return "quiet now"

    def grow(megabytes):
        block = bytearray(megabytes * 1024 * 1024)
        return len(block)

    def leave_a_child(pidfile):
        child = subprocess.Popen(["sleep", "300"])
        with open(pidfile, "w") as out:
            out.write(str(child.pid))
        time.sleep(300)

    def vanish(code):
        os._exit(code)

    def boom():
        raise KeyError("nope")
    """
)


@pytest.fixture
def proc(workdir: Path) -> str:
    """The module of this file's jobs, in the work folder."""
    (workdir / "procjobs.py").write_text(PROCESS_JOBS)
    return "procjobs"


def _result(gsup: Cli, job: int) -> object:
    return json.loads(gsup.show(job)["result"])


def _attempt(gsup: Cli, job: int) -> dict:
    (attempt,) = gsup.show(job)["attempts_list"]
    return attempt


def test_a_process_job_runs_in_a_fresh_interpreter_of_its_own_session(daemon, gsup, proc):
    jobs = [gsup.add("--backend", "process", f"{proc}:count") for _ in range(3)]
    assert gsup.wait(*jobs) == dict.fromkeys(jobs, "done")
    assert [_result(gsup, job) for job in jobs] == [1, 1, 1]  # no module shared
    first, second = (gsup.add("-b", "process", f"{proc}:pid") for _ in range(2))
    local = gsup.add(f"{proc}:pid")
    assert gsup.wait(first, second, local) == {first: "done", second: "done", local: "done"}
    pids = {_result(gsup, job) for job in (first, second, local)}
    assert len(pids) == 3 and daemon.pid not in pids
    own = gsup.add("-b", "process", f"{proc}:session")
    assert gsup.wait(own) == {own: "done"}
    session, leads_its_group = _result(gsup, own)
    assert session != os.getsid(daemon.pid) and leads_its_group
    assert gsup.show(own)["pool"] == "process"


def test_a_process_job_knows_its_job_and_runs_in_the_folder_it_was_added_from(
    daemon, gsup, proc, workdir
):
    job = gsup.add("-b", "process", f"{proc}:where")
    assert gsup.wait(job) == {job: "done"}
    assert _result(gsup, job) == [str(workdir), job]


def test_its_output_goes_to_the_job_logs_and_its_usage_to_the_attempt(daemon, gsup, proc):
    job = gsup.add("-b", "process", f"{proc}:loud")
    assert gsup.wait(job) == {job: "done"}
    assert _result(gsup, job) == "quiet now"
    logs = gsup("logs", str(job))
    assert (logs.stdout, logs.stderr) == ("to stdout\n", "to stderr\n")
    big = gsup.add("-b", "process", f"{proc}:grow", "200")
    assert gsup.wait(big) == {big: "done"}
    attempt = _attempt(gsup, big)
    assert attempt["exit_status"] == 0
    assert attempt["peak_rss_kb"] > 200 * 1024  # the child's peak, not the pool's
    assert attempt["cpu_seconds"] > 0
    assert "process/" in gsup("show", str(big)).stdout  # the attempts table, its worker


def test_a_failure_keeps_its_error_and_traceback_and_exit_status(daemon, gsup, proc):
    job = gsup.add("-b", "process", f"{proc}:boom")
    assert gsup.wait(job) == {job: "failed"}
    shown = gsup.show(job)
    assert shown["error"] == "KeyError: 'nope'"
    assert 'raise KeyError("nope")' in shown["traceback"]
    assert _attempt(gsup, job)["exit_status"] == 1


def test_a_process_that_exits_before_its_call_returns_fails_with_its_exit(daemon, gsup, proc):
    job = gsup.add("-b", "process", f"{proc}:vanish", "7")
    assert gsup.wait(job) == {job: "failed"}
    assert gsup.show(job)["error"] == "its process ended before the call did: exit code 7"
    assert _attempt(gsup, job)["exit_status"] == 7


def test_a_missing_target_fails_as_in_a_pool_and_is_not_retried(daemon, gsup, proc):
    job = gsup.add("-b", "process", "--retries", "3", f"{proc}:nothing_here")
    assert gsup.wait(job) == {job: "failed"}
    assert "has no attribute 'nothing_here'" in gsup.show(job)["error"]
    assert len(gsup.show(job)["attempts_list"]) == 1  # it would fail again


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_timeout_or_cancel_kills_the_process_and_what_it_started(
    daemon, gsup, proc, workdir, how
):
    pidfile = workdir / "child.pid"
    options = ["--timeout", "2"] if how == "timeout" else []
    job = gsup.add("-b", "process", *options, f"{proc}:leave_a_child", str(pidfile))
    wait_until(pidfile.exists, what="the job's child started")
    grandchild = int(wait_until(lambda: pidfile.read_text().strip(), what="its pid written"))
    if how == "cancel":
        gsup("cancel", str(job))
    assert gsup.wait(job) == {job: "timeout" if how == "timeout" else "cancelled"}
    wait_until(lambda: not alive(grandchild), what="the job's own child killed with it")


def test_the_queue_of_another_backend_is_refused_in_one_line(daemon, gsup, proc):
    refused = gsup("add", "--backend", "process", "--queue", "monitoring", f"{proc}:pid",
                   check=False)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.splitlines()[0] == (
        "gsup: error: --queue monitoring is a pool of the local backend, not of process"
        " (see: gsup add --help)"
    )
    unknown = gsup("add", "--backend", "cloud", f"{proc}:pid", check=False)
    assert unknown.returncode == 2 and "'cloud' is not one of" in unknown.stderr
    assert journal_rows(gsup.home, "SELECT count(*) FROM jobs") == [(0,)]


def test_the_api_takes_a_backend_and_refuses_an_unknown_one(
    daemon, proc, home, workdir, monkeypatch
):
    monkeypatch.syspath_prepend(str(workdir))  # the API sends the caller's sys.path
    queues = Queues(home)
    job = queues.add(f"{proc}:count", backend="process")
    assert (job.result(timeout=60), job.state) == (1, "done")
    assert journal_rows(home, "SELECT pool FROM jobs WHERE id = ?", (job.id,)) == [("process",)]
    with pytest.raises(
        BadOptions, match=r"^unknown backend 'cloud'; choose from local, process, slurm, dask$"
    ):
        queues.add(f"{proc}:count", backend="cloud")
    with pytest.raises(BadOptions, match=r"^queue user is a pool of the local backend, not of"):
        queues.add(f"{proc}:count", backend="process", queue="user")


def test_the_daemons_default_backend_runs_jobs_that_name_none(make_daemon, gsup, proc, home):
    home.mkdir(parents=True, exist_ok=True)
    (home / "gsup.toml").write_text('backend = "process"\n[pools.process]\nthreads = 3\n')
    make_daemon()
    default, queued = gsup.add(f"{proc}:pid"), gsup.add("--queue", "user", f"{proc}:pid")
    assert gsup.wait(default, queued) == {default: "done", queued: "done"}
    assert (gsup.show(default)["pool"], gsup.show(queued)["pool"]) == ("process", "user")
    assert "process 3 threads" in gsup("status").stdout


def test_an_unknown_default_backend_stops_the_daemon_at_start_in_one_line(env, home):
    home.mkdir(parents=True, exist_ok=True)
    (home / "gsup.toml").write_text('backend = "cloud"\n')
    ended = run_daemon_expecting_exit(env)
    assert ended.returncode != 0
    assert ended.stderr == (
        f"gsup: error: backend in {home}/gsup.toml must be one of local, process, slurm, dask,"
        " not 'cloud'\n"
    )


def test_jobs_of_many_folders_share_the_process_backends_one_pool_process(
    daemon, gsup, proc, workdir
):
    folders = []
    for index in range(3):
        folder = workdir.parent / f"project{index}"
        folder.mkdir()
        (folder / "procjobs.py").write_text(PROCESS_JOBS)
        folders.append(folder)
    daemon.said("the journal passed its check")  # its checker, a child too, has ended
    before = _pool_processes(daemon.pid)
    jobs = []
    for folder in folders:
        gsup.cwd = folder
        jobs.append(gsup.add("-b", "process", f"{proc}:count"))
    assert gsup.wait(*jobs) == dict.fromkeys(jobs, "done")
    assert _pool_processes(daemon.pid) == before  # no pool process per folder


def _pool_processes(pid: int) -> set[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {int(child) for child in children}
