"""The dask backend against a real `distributed` cluster (a LocalCluster this process
starts, its workers processes of their own): calls go by value, results, output and
tracebacks come back, a timeout kills the call on the worker, a cancel ends the job,
and what Dask forgot (a scheduler restart, the daemon's death) is submitted again."""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CHAIN_JOBS, Cli, Daemon, alive, chain_task, journal_rows, wait_until

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

DASK_JOBS = textwrap.dedent(
    """
    import os, sys, time

    def where(label):
        # by value: the worker never imports this module, from any folder
        return [label, __name__ in sys.modules, os.getpid()]

    def loud(n):
        print("out", n)
        print("err", n, file=sys.stderr)
        return n * 2

    def boom():
        raise KeyError("nope")

    def linger(pidfile, seconds):
        with open(pidfile, "w") as out:
            out.write(str(os.getpid()))
        time.sleep(seconds)
        return seconds
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster(port: int = 0) -> distributed.LocalCluster:
    return distributed.LocalCluster(
        n_workers=1, threads_per_worker=4, scheduler_port=port, dashboard_address=None
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.LocalCluster]:
    with _cluster() as started:
        yield started


@pytest.fixture
def dask_env(env: dict[str, str], cluster, workdir: Path) -> dict[str, str]:
    (workdir / "daskjobs.py").write_text(DASK_JOBS)
    env["GSUP_DASK_ADDRESS"] = cluster.scheduler_address
    return env


def _result(gsup: Cli, job: int) -> object:
    return json.loads(gsup.show(job)["result"])


def test_a_call_runs_on_a_dask_worker_and_its_result_and_output_come_back(
    dask_env, make_daemon, gsup, cluster
):
    make_daemon()
    job = gsup.add("--backend", "dask", "daskjobs:loud", "21")
    assert gsup.wait(job) == {job: "done"}
    shown = gsup.show(job)
    assert (shown["pool"], _result(gsup, job)) == ("dask", 42)
    (attempt,) = shown["attempts_list"]
    assert attempt["backend"] == "dask"
    assert attempt["external_id"].startswith("gsup-") and attempt["external_id"].endswith(
        f"-{job}-{attempt['id']}"
    )
    logs = gsup("logs", str(job))
    assert (logs.stdout, logs.stderr) == ("out 21\n", "err 21\n")


def test_jobs_of_two_folders_get_their_own_code_and_the_worker_imports_neither(
    dask_env, make_daemon, gsup
):
    make_daemon()
    jobs = {}
    for label in ("a", "b"):
        folder = gsup.cwd / label
        folder.mkdir()
        (folder / "same.py").write_text(f"def who():\n    return {label!r}\n")
        (folder / "daskjobs.py").write_text(DASK_JOBS.replace("[label,", "[who(),"))
        (folder / "daskjobs.py").write_text(
            "from same import who\n" + (folder / "daskjobs.py").read_text()
        )
        jobs[label] = Cli(dask_env, folder).add("-b", "dask", "daskjobs:where", label)
    assert gsup.wait(*jobs.values()) == dict.fromkeys(jobs.values(), "done")
    (a_label, a_imported, a_pid), (b_label, b_imported, b_pid) = (
        _result(gsup, jobs[label]) for label in ("a", "b")
    )
    assert (a_label, b_label, a_imported, b_imported) == ("a", "b", False, False)
    assert a_pid == b_pid  # one worker served both


def test_a_failing_call_keeps_its_traceback_from_the_worker(dask_env, make_daemon, gsup):
    make_daemon()
    job = gsup.add("-b", "dask", "daskjobs:boom")
    assert gsup.wait(job) == {job: "failed"}
    shown = gsup.show(job)
    assert shown["error"] == "KeyError: 'nope'"
    assert 'raise KeyError("nope")' in shown["traceback"]
    assert "gsup/executors" not in shown["traceback"]  # it starts in the job's code


def test_a_timeout_kills_the_call_on_the_worker(dask_env, make_daemon, gsup, home, cluster):
    make_daemon()
    pidfile = home.parent / "linger.pid"
    job = gsup.add("-b", "dask", "--timeout", "1", "daskjobs:linger", str(pidfile), "300")
    assert gsup.wait(job) == {job: "timeout"}
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), what="the pid"))
    assert pid not in _worker_pids(cluster)  # a process of its own, not the worker's thread
    wait_until(lambda: not alive(pid), timeout=10, what="the call's process to be killed")


def _worker_pids(cluster) -> set[int]:
    with distributed.Client(cluster.scheduler_address, timeout=5) as client:
        return set(client.run(os.getpid).values())


def test_a_cancelled_dask_job_ends_at_once(dask_env, make_daemon, gsup, home):
    make_daemon()
    job = gsup.add("-b", "dask", "daskjobs:linger", str(home.parent / "pid"), "120")
    wait_until(lambda: gsup.running(job), what="the job to run")
    gsup("cancel", str(job))
    assert gsup.wait(job) == {job: "cancelled"}
    after = gsup.add("-b", "dask", "daskjobs:loud", "1")  # the backend still serves
    assert gsup.wait(after) == {after: "done"}


def test_a_job_dask_forgot_in_a_scheduler_restart_is_submitted_again(
    env, workdir, make_daemon, gsup, home
):
    (workdir / "daskjobs.py").write_text(DASK_JOBS)
    port = _free_port()
    env["GSUP_DASK_ADDRESS"] = f"tcp://127.0.0.1:{port}"
    first = _cluster(port)
    try:
        make_daemon()
        pidfile = home.parent / "pid"
        job = gsup.add("-b", "dask", "daskjobs:linger", str(pidfile), "3")
        wait_until(pidfile.exists, what="the job to run on the first cluster")
    finally:
        first.close()
    with _cluster(port):
        assert gsup.wait(job) == {job: "done"}
    first, second = gsup.show(job)["attempts_list"]
    assert (first["outcome"], first["charged"], second["outcome"]) == ("queued", 0, "done")
    assert first["reason"] == (
        "Dask forgot it: the scheduler restarted, or the connection to it dropped"
    )


def test_a_daemon_killed_under_a_running_dask_job_submits_it_again(
    dask_env, make_daemon, gsup, home
):
    daemon = make_daemon()
    pidfile = home.parent / "pid"
    job = gsup.add("-b", "dask", "daskjobs:linger", str(pidfile), "2")
    wait_until(pidfile.exists, what="the job to run")
    daemon.stop(signal.SIGKILL)
    make_daemon()
    assert gsup.wait(job) == {job: "done"}
    assert len(gsup.show(job)["attempts_list"]) == 2


def test_what_the_dask_backend_cannot_run_is_refused_in_one_line(env, make_daemon, gsup):
    make_daemon()
    refused = gsup("add", "-b", "dask", "jobs:add", "1", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "the dask backend cannot run jobs: no scheduler address: set [backends.dask] address"
        " in gsup.toml (or GSUP_DASK_ADDRESS)"
    )


def test_a_command_is_refused_by_the_dask_backend(dask_env, make_daemon, gsup):
    make_daemon()
    refused = gsup("add", "-b", "dask", "--cmd", "--", "echo", "hi", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("the dask backend runs calls, not commands")


def test_jobs_wait_while_the_scheduler_is_unreachable_and_run_once_it_is(
    env, workdir, make_daemon, gsup, home
):
    (workdir / "daskjobs.py").write_text(DASK_JOBS)
    port = _free_port()
    env["GSUP_DASK_ADDRESS"] = f"tcp://127.0.0.1:{port}"
    home.mkdir(parents=True, exist_ok=True)
    (home / "gsup.toml").write_text("[backends.dask]\nconnect = 0.5\n")
    daemon = make_daemon()
    trouble = f"cannot start: cannot reach the Dask scheduler at {env['GSUP_DASK_ADDRESS']}"
    daemon.said(f"pool dask {trouble}")
    job = gsup.add("-b", "dask", "daskjobs:loud", "2")  # kept in the journal meanwhile
    assert gsup.show(job)["state"] == "queued"
    (line,) = [line for line in gsup("status").stdout.splitlines() if line.startswith("dask:")]
    address = env["GSUP_DASK_ADDRESS"]
    timed_out = f"OSError: Timed out trying to connect to {address} after 0.5 s"
    assert line == f"dask:  0 jobs (at most 10000); {trouble}: {timed_out}"
    with _cluster(port):
        assert gsup.wait(job) == {job: "done"}


def test_a_local_stage_chains_into_a_dask_stage(dask_env, make_daemon, gsup, home):
    make_daemon()
    (gsup.cwd / "chainjobs.py").write_text(CHAIN_JOBS)
    (gsup.cwd / "chain.toml").write_text(chain_task("dask"))
    task = int(gsup("task", "submit", "chain.toml").stdout)
    waited = gsup("task", "wait", str(task), timeout=120)
    assert waited.stdout.splitlines()[-1] == f"task {task} completed"
    pools = journal_rows(home, "SELECT DISTINCT substr(name, 7, 3), pool FROM jobs"
                               " WHERE name GLOB 'chain/*/[0-9]*' ORDER BY 1")  # fmt: skip
    assert pools == [("gen", "user"), ("squ", "dask")]
    merged = home / "tasks" / str(task) / "square" / "merged.txt"
    assert sorted(merged.read_text().split()) == ["1", "4", "9"]


def test_a_task_of_commands_for_dask_is_refused(dask_env, make_daemon, gsup):
    make_daemon()
    (gsup.cwd / "t.toml").write_text(
        '[task]\nname = "t"\n[[transform]]\nname = "a"\nbackend = "dask"\n'
        'cmd = ["true"]\nunits = [[1]]\n'
    )
    refused = gsup("task", "submit", "t.toml", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "transform 'a': the dask backend runs calls, not commands"
    )


def test_two_daemons_on_one_cluster_keep_their_own_calls_and_output(
    dask_env, make_daemon, gsup, env
):
    """Their job and attempt ids are alike (two fresh journals): a worker's files for
    them must not be."""
    make_daemon()
    other_home = Path(env["GSUP_HOME"]).parent / "other"
    other_env = dict(env, GSUP_HOME=str(other_home))
    other = Daemon(other_home, other_env).start()
    try:
        other_gsup = Cli(other_env, gsup.cwd)
        in_thread, in_process = ("-b", "dask"), ("-b", "dask", "--timeout", "60")
        ours = [gsup.add(*in_thread, "daskjobs:loud", "1"),
                gsup.add(*in_process, "daskjobs:loud", "2")]  # fmt: skip
        theirs = [other_gsup.add(*in_thread, "daskjobs:loud", "3"),
                  other_gsup.add(*in_process, "daskjobs:loud", "4")]  # fmt: skip
        assert ours == theirs == [1, 2]
        assert gsup.wait(*ours) == other_gsup.wait(*theirs) == {1: "done", 2: "done"}
        for cli, numbers in ((gsup, (1, 2)), (other_gsup, (3, 4))):
            for job, n in zip((1, 2), numbers, strict=True):
                assert _result(cli, job) == 2 * n
                assert cli("logs", str(job)).stdout == f"out {n}\n"
    finally:
        other.stop()


def test_a_retired_bridge_that_holds_no_job_exits(dask_env, make_daemon, gsup):
    daemon = make_daemon()
    for n in range(3):
        job = gsup.add("-b", "dask", "daskjobs:loud", str(n))
        assert gsup.wait(job) == {job: "done"}
        source = gsup.cwd / "daskjobs.py"
        source.write_text(source.read_text() + f"\n# edit {n}\n")
        os.utime(source, (time.time() + n + 1,) * 2)  # a new mtime, however coarse the clock
    job = gsup.add("-b", "dask", "daskjobs:loud", "9")
    assert gsup.wait(job) == {job: "done"}
    wait_until(lambda: len(_bridges(daemon.pid)) == 2, what="one bridge for the folder, one idle")


def _bridges(daemon: int) -> list[int]:
    """The daemon's children named gsup-dask (bridges)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                name, rest = stat.read().rsplit(")", 1)
        except (OSError, ValueError):
            continue
        if name.endswith("(gsup-dask") and int(rest.split()[1]) == daemon:
            found.append(int(entry))
    return found


def test_a_job_that_must_not_run_twice_is_lost_not_rerun_when_its_worker_dies(
    env, workdir, make_daemon, gsup, home
):
    (workdir / "daskjobs.py").write_text(DASK_JOBS)
    with _cluster() as cluster:
        env["GSUP_DASK_ADDRESS"] = cluster.scheduler_address
        make_daemon()
        pidfile = home.parent / "pid"
        job = gsup.add("-b", "dask", "--on-lost", "fail", "daskjobs:linger", str(pidfile), "60")
        worker = int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), what="a run"))
        os.kill(worker, signal.SIGKILL)  # the worker process itself: its nanny starts another
        assert gsup.wait(job) == {job: "lost"}
        (attempt,) = gsup.show(job)["attempts_list"]
        assert attempt["reason"] == (
            "its Dask worker died while it ran, and Dask ran it again: it must not run twice;"
            " on_lost=fail"
        )
