"""The daemon's own life: one per state dir, clean stops, pool restarts, recovery."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

from conftest import alive, journal_rows, run_daemon_expecting_exit, wait_until

from gsup.config import POOL_NAMES


def _pool_pids(daemon_pid: int) -> list[int]:
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(daemon_pid)], capture_output=True, text=True
    ).stdout.split()
    return [int(pid) for pid in children]


def test_state_dir_and_socket_are_private(daemon, home):
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "gsup.sock").stat().st_mode) == 0o600
    assert (home / "journal.sqlite").exists()
    assert journal_rows(home, "PRAGMA journal_mode") == [("wal",)]


def test_a_second_daemon_for_the_same_state_dir_exits_at_once(daemon, env, home):
    second = run_daemon_expecting_exit(env)
    assert second.returncode == 1
    assert second.stderr.strip() == (
        f"gsup: error: a daemon is already running for {home} (pid {daemon.pid})"
    )


def test_sigterm_stops_cleanly_and_queued_jobs_wait_for_the_next_start(make_daemon, gsup):
    daemon = make_daemon()
    gsup("freeze")
    queued = [gsup.add("jobs:add", str(i)) for i in range(3)]
    pools = _pool_pids(daemon.pid)
    assert len(pools) == len(POOL_NAMES)
    assert daemon.stop(signal.SIGTERM) == 0
    assert daemon.said("gsup: stopped")
    assert not any(alive(pid) for pid in pools)
    assert not (daemon.home / "gsup.sock").exists()
    assert [row[0] for row in journal_rows(daemon.home, "SELECT state FROM jobs")] == ["queued"] * 3
    make_daemon()
    gsup("unfreeze")
    assert set(gsup.wait(*queued).values()) == {"done"}


def test_running_jobs_get_the_grace_period_then_are_requeued(make_daemon, gsup, workdir):
    daemon = make_daemon("--grace", "0.5")
    job = gsup.add("jobs:wait_for_file", str(workdir / "never"))
    wait_until(lambda: gsup.running(job), what="the job to start")
    assert daemon.stop(signal.SIGTERM) == 0
    shown = gsup.show(job)
    assert shown["state"] == "queued"
    assert shown["attempts"] == 0  # not charged: it was not the job's fault
    assert shown["events"][-1]["why"] == "daemon stopped before it ended"


def test_a_finishing_job_is_waited_for_on_sigterm(make_daemon, gsup, workdir):
    daemon = make_daemon("--grace", "60")
    flag = workdir / "go"
    job = gsup.add("jobs:wait_for_file", str(flag))
    wait_until(lambda: gsup.running(job), what="the job to start")
    daemon.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "stopping: 1 job in flight" in daemon.output, what="the stop to begin")
    refused = gsup("add", "jobs:add", "1", check=False)
    assert "the daemon is stopping" in refused.stderr
    flag.touch()
    assert daemon.process.wait(60) == 0
    assert gsup.show(job)["state"] == "done"


def test_a_dead_pool_is_restarted_and_its_job_handled_by_policy(daemon, gsup):
    job = gsup.add("jobs:die", "--on-lost", "fail")
    assert gsup.wait(job) == {job: "lost"}
    assert "pool died (exit code 3); on_lost=fail" in gsup.show(job)["reason"]
    after = gsup.add("jobs:add", "1")
    assert gsup.wait(after) == {after: "done"}
    assert daemon.said("pool user died (exit code 3); restarting it")


def test_a_job_that_keeps_killing_its_pool_is_quarantined(daemon, gsup, workdir):
    flag = workdir / "go"
    neighbour = gsup.add("jobs:wait_for_file", str(flag))
    wait_until(lambda: gsup.running(neighbour), what="the neighbour to start")
    job = gsup.add("jobs:die")
    wait_until(lambda: gsup.show(neighbour)["lost_count"] == 1, what="the first pool death")
    flag.touch()  # the neighbour, older, runs alone first
    assert gsup.wait(job, neighbour) == {job: "lost", neighbour: "done"}
    shown = gsup.show(job)
    assert shown["reason"].startswith("poison: in flight during 3 deaths of its pool or the daemon")
    assert [e["after"] for e in shown["events"]].count("running") == 3
    innocent = gsup.show(neighbour)  # lost once beside it, then ran alone
    assert (innocent["lost_count"], innocent["attempts"]) == (1, 2)


def test_killed_supervisor_takes_its_pools_along_and_recovers_on_restart(make_daemon, gsup):
    daemon = make_daemon()
    requeued = gsup.add("jobs:sleep", "60")
    lost = gsup.add("jobs:sleep", "60", "--on-lost", "fail")
    gsup("freeze", "--queue", "monitoring")
    queued = gsup.add("jobs:add", "1", "--queue", "monitoring")
    wait_until(lambda: gsup.running(requeued) and gsup.running(lost))
    pools = _pool_pids(daemon.pid)
    daemon.kill()
    wait_until(lambda: not any(alive(pid) for pid in pools), what="the pools to die")
    restarted = make_daemon()
    assert (
        f"recovery: 1 queued kept, 1 running requeued ({requeued}), 1 running ended lost ({lost})"
        in restarted.output
    )
    assert gsup.show(lost)["state"] == "lost"
    assert "lost with the daemon; on_lost=fail" in gsup.show(lost)["reason"]
    assert gsup.show(requeued)["state"] == "running"  # dispatched again
    assert gsup.show(queued)["state"] == "queued"
    recovered = "SELECT verb FROM commands WHERE verb = 'recover'"
    assert journal_rows(restarted.home, recovered) == [("recover",)]


def test_the_console_script_is_installed():
    gsup = shutil.which("gsup", path=os.path.dirname(sys.executable))  # not another install
    assert gsup == os.path.join(os.path.dirname(sys.executable), "gsup")
    result = subprocess.run([gsup, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "queues" in result.stdout


def test_every_command_has_help(gsup):
    for command in (
        "daemon",
        "add",
        "queues",
        "jobs",
        "show",
        "logs",
        "cancel",
        "retry",
        "purge",
        "wait",
        "freeze",
        "unfreeze",
    ):
        result = gsup(command, "--help")
        assert "usage: " in result.stdout.lower() and command in result.stdout


def test_a_daemon_whose_output_is_gone_still_stops_cleanly(env):
    daemon = subprocess.Popen(
        [sys.executable, "-P", "-m", "gsup", "daemon"], env=env, stdout=subprocess.PIPE, text=True
    )
    for line in daemon.stdout:
        if "gsup: ready:" in line:
            break
    pools = _pool_pids(daemon.pid)
    daemon.stdout.close()  # as when `gsup daemon | head` or a log reader goes away
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    wait_until(lambda: not any(alive(pid) for pid in pools), what="the pools to end")


def _vm_size_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmSize:")[1].split()[0]) * 1024


def test_a_pool_that_cannot_start_its_threads_is_the_daemons_trouble_not_the_jobs(
    make_daemon, gsup
):
    daemon = make_daemon("--user-threads", "1024")  # started before the limit: it can
    pools = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(daemon.pid)], capture_output=True, text=True
    ).stdout.split()
    # 1,024 thread stacks do not fit in 200 MB more than the supervisor's address space
    limit = _vm_size_bytes(daemon.pid) + 200_000_000
    resource.prlimit(daemon.pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    for pid in pools:
        os.kill(int(pid), signal.SIGKILL)
    assert daemon.said("pool user cannot start: 1024 threads, but thread")
    job = gsup.add("jobs:add", "1")
    status = gsup("status").stdout
    assert "user 1024 threads (0 in flight, cannot start: 1024 threads, but thread" in status
    assert gsup.show(job)["state"] == "queued"
    resource.prlimit(daemon.pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)
    assert gsup.wait(job) == {job: "done"}  # at the next try to start it
    assert daemon.said("pool user started")
    assert gsup.show(job)["attempts"] == 1
    assert "Traceback" not in daemon.output
