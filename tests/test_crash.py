"""Nothing accepted is lost and no user code runs on unsupervised, whatever gets killed."""

from __future__ import annotations

import json
import subprocess

from conftest import alive, wait_until

from gsup.config import POOL_NAMES


def _processes_matching(marker: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def test_commands_and_what_they_started_die_with_a_killed_supervisor(make_daemon, gsup):
    daemon = make_daemon()
    marker = "sleep 3001"  # the grandchild, in the background
    job = gsup.add("--cmd", "--", "sh", "-c", f"{marker} & sleep 3002; wait")
    wait_until(lambda: len(_processes_matching("sleep 300[12]")) == 2, what="the command")
    assert gsup.show(job)["state"] == "running"
    daemon.kill()
    wait_until(lambda: not _processes_matching("sleep 300[12]"), what="the command to die")
    restarted = make_daemon()
    assert f"job {job} (user): requeue: lost with the daemon" in restarted.output


def test_a_command_past_its_timeout_is_killed_with_its_whole_group(daemon, gsup):
    job = gsup.add("--timeout", "0.5", "--cmd", "--", "sh", "-c", "sleep 3003 & sleep 3004")
    assert gsup.wait(job) == {job: "timeout"}
    wait_until(lambda: not _processes_matching("sleep 300[34]"), what="the group to die")


def test_what_a_command_leaves_running_dies_when_it_ends(daemon, gsup):
    job = gsup.add("--cmd", "--", "sh", "-c", "sleep 3005 & echo started")
    assert gsup.wait(job) == {job: "done"}
    wait_until(lambda: not _processes_matching("sleep 3005"), what="the leftover to die")


def test_timeouts_stop_jobs_blocked_on_a_lock(daemon, gsup, workdir):
    (workdir / "locks.py").write_text(
        "import threading\nheld = threading.Lock()\nheld.acquire()\n"
        "def stuck():\n    held.acquire()\n"
    )
    job = gsup.add("locks:stuck", "--timeout", "0.5")
    assert gsup.wait(job) == {job: "timeout"}
    assert gsup.run("jobs:add", "1") == "done"


def test_recover_dry_run_shows_what_the_next_start_decides(make_daemon, gsup):
    daemon = make_daemon()
    first = gsup.add("jobs:sleep", "60")
    second = gsup.add("jobs:sleep", "60", "--on-lost", "fail")
    wait_until(lambda: gsup.running(first) and gsup.running(second))
    assert "a daemon is running" in gsup("recover", "--dry-run", check=False).stderr
    daemon.kill()
    out = gsup("recover", "--dry-run").stdout.splitlines()
    assert out == [
        f"recovery: 0 queued kept, 1 running requeued ({first}), 1 running ended lost ({second})",
        f"  job {first} (user): requeue: lost with the daemon"
        " (1 death in flight; 3 make it poison)",
        f"  job {second} (user): ends lost: lost with the daemon; on_lost=fail",
    ]
    assert gsup.show(first)["state"] == "running"  # a dry run changes nothing
    make_daemon()
    assert gsup.show(second)["state"] == "lost"
    wait_until(lambda: gsup.running(first), what="the requeued job to run again")
    shown = gsup.show(first)  # its lost run was not its fault: not charged
    assert shown["attempts"] == 1
    assert [(a["outcome"], a["charged"]) for a in shown["attempts_list"]] == [
        ("lost", 0),
        (None, 1),
    ]


def test_pool_processes_die_with_a_killed_supervisor(make_daemon):
    daemon = make_daemon()
    daemon.said("the journal passed its check")  # its checker, a child too, has ended
    pools = [
        int(pid)
        for pid in subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(daemon.pid)], capture_output=True, text=True
        ).stdout.split()
    ]
    assert len(pools) == len(POOL_NAMES)  # one process each, for the default import path
    daemon.kill()
    wait_until(lambda: not any(alive(pid) for pid in pools), what="the pools to die")


def test_a_job_that_must_not_run_twice_is_not_rerun_when_a_neighbour_recycles_the_pool(
    daemon, gsup, workdir
):
    side = workdir / "runs"
    once = gsup.add("jobs:record", str(side), "once", "--on-lost", "fail")
    gsup.wait(once)  # warm: the module is imported
    flag = workdir / "never"
    must_not_repeat = gsup.add("jobs:wait_for_file", str(flag), "--on-lost", "fail")
    wait_until(lambda: gsup.running(must_not_repeat), what="the job to start")
    stuck = gsup.add("jobs:sleep", "30", "--timeout", "0.3")  # blocked in C: pool recycled
    assert gsup.wait(stuck) == {stuck: "timeout"}
    assert gsup.wait(must_not_repeat) == {must_not_repeat: "lost"}
    shown = gsup.show(must_not_repeat)
    assert shown["reason"] == "its pool was recycled; on_lost=fail"
    assert [e["after"] for e in shown["events"]].count("running") == 1


def test_what_a_command_started_in_a_session_of_its_own_dies_too(daemon, gsup):
    job = gsup.add("--timeout", "0.5", "--cmd", "--", "sh", "-c", "setsid sleep 3006 & sleep 3007")
    assert gsup.wait(job) == {job: "timeout"}
    wait_until(lambda: not _processes_matching("sleep 300[67]"), what="the escapee to die")
    ended = gsup.add("--cmd", "--", "sh", "-c", "setsid sleep 3008 &")
    assert gsup.wait(ended) == {ended: "done"}
    wait_until(lambda: not _processes_matching("sleep 3008"), what="the escapee to die")


def test_jobs_a_pool_held_when_the_daemon_died_may_have_started_and_say_so(
    make_daemon, gsup, workdir
):
    daemon = make_daemon("--user-threads", "1")
    flag = workdir / "go"
    busy = gsup.add("jobs:wait_for_file", str(flag))
    held = gsup.add("jobs:add", "1")
    wait_until(lambda: gsup.running(busy) and gsup.handed_over(held), what="the pool to hold it")
    daemon.kill()
    restarted = make_daemon()
    assert (
        f"job {held} (user): requeue: handed to its executor when the daemon died;"
        " it may have started (1 death in flight; 3 make it poison)"
    ) in restarted.output
    flag.touch()
    assert gsup.wait(busy, held) == {busy: "done", held: "done"}
    attempts = gsup.show(held)["attempts_list"]
    assert [(a["outcome"], a["charged"]) for a in attempts] == [("lost", 0), ("done", 1)]


HOSTILE_MODULE = """
import os, socket, stat, struct, sys, time

def _sockets():
    for fd in range(3, 64):
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                yield fd
        except OSError:
            pass

def scribble():
    for fd in _sockets():
        os.write(fd, struct.pack("!I", 5) + b"hello")
    time.sleep(1)

def fork_and_return(how):
    pid = os.fork()
    if pid == 0:
        if how == "exit":
            sys.exit(0)
        return "child"
    os.waitpid(pid, 0)
    return "parent"

def fork_a_sleeper_then_die():
    import multiprocessing
    multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,)).start()
    time.sleep(0.2)
    os._exit(1)
"""


def test_a_job_that_scribbles_on_its_pools_channel_is_quarantined(daemon, gsup, workdir):
    (workdir / "hostile.py").write_text(HOSTILE_MODULE)
    job = gsup.add("hostile:scribble")
    assert gsup.wait(job) == {job: "lost"}
    assert gsup.show(job)["reason"].startswith(
        "poison: in flight during 3 deaths of its pool or the daemon"
    )
    assert daemon.said("its channel was corrupted")
    after = gsup.add("jobs:add", "1")
    assert gsup.wait(after) == {after: "done"}


def test_a_job_that_forks_gets_its_own_result_not_its_childs(daemon, gsup, workdir):
    (workdir / "hostile.py").write_text(HOSTILE_MODULE)
    jobs = [gsup.add("hostile:fork_and_return", how) for how in ("return", "exit")]
    assert gsup.wait(*jobs) == {job: "done" for job in jobs}
    assert [json.loads(gsup.show(job)["result"]) for job in jobs] == ["parent", "parent"]


def test_a_pool_that_dies_while_a_process_it_forked_lives_is_settled_at_once(daemon, gsup, workdir):
    (workdir / "hostile.py").write_text(HOSTILE_MODULE)
    job = gsup.add("hostile:fork_a_sleeper_then_die", "--on-lost", "fail")
    assert gsup.wait(job) == {job: "lost"}  # not after the 30 s the child sleeps
    after = gsup.add("jobs:add", "1")
    assert gsup.wait(after) == {after: "done"}


KILLS_THE_DAEMON = """
import os, signal, sqlite3, time

def kill_daemon():
    journal = f"file:{os.environ['GSUP_HOME']}/journal.sqlite?mode=ro"
    with sqlite3.connect(journal, uri=True) as conn:  # once its start is journaled
        running = "SELECT count(*) FROM jobs WHERE state = 'running'"
        while conn.execute(running).fetchone() != (1,):
            time.sleep(0.01)
    pid = os.getpid()  # up to the topmost process of `gsup daemon`: the supervisor
    while True:
        parent = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
        if b"gsup\\0daemon" not in open(f"/proc/{parent}/cmdline", "rb").read():
            break
        pid = parent
    os.kill(pid, signal.SIGKILL)
"""


def test_a_job_that_keeps_killing_the_daemon_is_quarantined(make_daemon, gsup, workdir):
    (workdir / "deadly.py").write_text(KILLS_THE_DAEMON)
    daemon = make_daemon()
    job = gsup.add("deadly:kill_daemon")
    for death in (1, 2):
        assert daemon.process.wait(60) == -9
        daemon = make_daemon()
        deaths = f"{death} death{'s' * (death != 1)} in flight; 3 make it poison"
        assert f"job {job} (user): requeue: lost with the daemon ({deaths})" in daemon.output
    assert daemon.process.wait(60) == -9
    daemon = make_daemon()
    reason = "poison: in flight during 3 deaths of its pool or the daemon (lost with the daemon)"
    assert f"job {job} (user): ends lost: {reason}" in daemon.output
    shown = gsup.show(job)
    assert (shown["state"], shown["reason"], shown["lost_count"]) == ("lost", reason, 3)
    assert gsup.run("jobs:add", "1") == "done"  # and the daemon lives on


def test_commands_run_after_a_job_closed_its_pools_stdin(daemon, gsup, workdir):
    (workdir / "closer.py").write_text("import os\ndef close_stdin():\n    os.close(0)\n")
    assert gsup.run("closer:close_stdin") == "done"
    command = gsup.add("--cmd", "--", "echo", "ran")  # into the same pool process
    assert gsup.wait(command) == {command: "done"}
    assert gsup("logs", str(command)).stdout == "ran\n"


def test_a_command_that_kills_its_guardian_dies_with_it(daemon, gsup):
    marker = "sleep 3008"
    job = gsup.add("--retries", "1", "--cmd", "--", "sh", "-c", f"kill -9 $PPID; {marker}")
    assert gsup.wait(job) == {job: "failed"}
    shown = gsup.show(job)
    assert shown["attempts"] == 2
    assert shown["reason"] == "its guardian was killed by SIGKILL; the command was killed with it"
    wait_until(lambda: not _processes_matching(marker), what="both runs' commands to be gone")
