"""What a pool process holds and keeps: its descriptors, its stdio, its restarts."""

from __future__ import annotations

import json
import os
import signal

from conftest import wait_until

FDS_MODULE = """
import os, stat

def fds():
    seen = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            seen[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listing's own descriptor, closed since
            pass
    return seen
"""


def _fds(pid: int) -> dict[int, str]:
    return {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def test_a_job_sees_only_its_pools_stdio_and_channel(daemon, gsup, home, workdir):
    """Not the journal or its WAL, the selector, the lock, other pools' sockets: a job
    could write into any of them through /proc/self/fd."""
    (workdir / "fds.py").write_text(FDS_MODULE)
    job = gsup.add("fds:fds")  # a process of its own: forked after the pools' first two
    assert gsup.wait(job) == {job: "done"}
    seen = {int(fd): target for fd, target in json.loads(gsup.show(job)["result"]).items()}
    supervisor = _fds(daemon.pid)
    stdio = ["/dev/null", supervisor[1], supervisor[2]]
    assert [seen.get(fd) for fd in (0, 1, 2)] == stdio
    others = [target for fd, target in seen.items() if fd > 2]
    channel = [target for target in others if target.startswith("socket:[")]
    assert len(channel) == 1 and channel[0] not in supervisor.values()  # its own end
    # The copies it puts back a stdio a job closed with, and SQLite's WAL index, which
    # SQLite's memory, copied by the fork, shares with a connection a job would open.
    kept = sorted([*stdio, f"{home}/journal.sqlite-shm"])
    assert sorted(target for target in others if target not in channel) == kept


READER_MODULE = """
import os, sqlite3

def count(state):
    journal = f"file:{os.environ['GSUP_HOME']}/journal.sqlite?mode=ro"
    with sqlite3.connect(journal, uri=True, timeout=1) as conn:
        query = "SELECT count(*) FROM jobs WHERE state = ?"
        return [conn.execute(query, (state,)).fetchone()[0] for _ in range(3)]
"""


def test_a_job_reads_the_journal_through_sqlite(daemon, gsup):
    """As gsup's API does for a result: SQLite in a pool process keeps what the fork
    copied of the supervisor's, which refers to the WAL index's descriptor."""
    (gsup.cwd / "reader.py").write_text(READER_MODULE)
    for n in (1, 2):  # in a new process, then in one that has served a job
        job = gsup.add("reader:count", "done")
        assert gsup.wait(job) == {job: "done"}
        assert json.loads(gsup.show(job)["result"]) == [n - 1] * 3


CLOSER_MODULE = """
import os, sys, time

def close_stdio(folder=None):
    for fd in (0, 1, 2):
        os.close(fd)
    if folder:  # hold them closed while other jobs of its pool run
        open(os.path.join(folder, "closed"), "w").close()
        while not os.path.exists(os.path.join(folder, "go")):
            time.sleep(0.01)
    return os.getpid()

def speak(label):
    print(label, "out")
    print(label, "err", file=sys.stderr)
    os.system(f"echo {label} from a shell")  # to the pool's stdout: the daemon's log
    return os.getpid()

def write_to_fd_1(label):
    print(label, "out")
    print(label, "err", file=sys.stderr)
    try:
        os.write(1, b"not in this job's log\\n")
    except OSError:  # closed: the job that closed it still runs
        pass
    return os.getpid()
"""


def _speaks(gsup, daemon, label: str, pid: str) -> None:
    """A job of process `pid` prints to its own log, and its shell to the daemon's."""
    job = gsup.add("closer:speak", label)
    assert gsup.wait(job) == {job: "done"}
    assert gsup.show(job)["result"] == pid
    logged = gsup("logs", str(job))
    assert (logged.stdout, logged.stderr) == (f"{label} out\n", f"{label} err\n")
    assert daemon.said(f"{label} from a shell")


def test_jobs_after_one_that_closed_its_pools_stdio_print_to_their_own_logs(daemon, gsup, workdir):
    (workdir / "closer.py").write_text(CLOSER_MODULE)
    closer = gsup.add("closer:close_stdio")
    assert gsup.wait(closer) == {closer: "done"}
    for label in ("one", "two"):
        _speaks(gsup, daemon, label, gsup.show(closer)["result"])
    command = gsup.add("--cmd", "--", "echo", "ran")
    assert gsup.wait(command) == {command: "done"}
    assert gsup("logs", str(command)).stdout == "ran\n"


def test_a_jobs_log_never_takes_the_stdio_another_job_holds_closed(daemon, gsup, workdir):
    (workdir / "closer.py").write_text(CLOSER_MODULE)
    closer = gsup.add("closer:close_stdio", str(workdir))
    wait_until(lambda: (workdir / "closed").exists(), what="the job to close 0, 1 and 2")
    beside = gsup.add("closer:write_to_fd_1", "beside")
    assert gsup.wait(beside) == {beside: "done"}
    logged = gsup("logs", str(beside))
    assert (logged.stdout, logged.stderr) == ("beside out\n", "beside err\n")
    (workdir / "go").touch()
    assert gsup.wait(closer) == {closer: "done"}
    pid = gsup.show(closer)["result"]
    assert gsup.show(beside)["result"] == pid
    _speaks(gsup, daemon, "after", pid)


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return {int(child) for child in children.read().split()}


def _kill_each_restart(daemon, known: set[int], until: str) -> int:
    """SIGKILL each process the daemon forks, at once, till it says `until`: how many."""
    kills = 0
    while until not in daemon.output:
        started = wait_until(
            lambda seen=known: (_children(daemon.pid) - seen) or until in daemon.output,
            what="a restart, or the line",
        )
        if isinstance(started, set):
            for pid in started:
                os.kill(pid, signal.SIGKILL)
            known |= started
            kills += 1
    return kills


def test_a_pool_that_keeps_dying_at_start_is_restarted_ever_later_saying_why(daemon, gsup):
    """Killed each time it starts, as by a broken environment or a killer in a loop: each
    restart waits twice as long as the one before, and each death is one line."""
    command = gsup.add("--cmd", "--", "sh", "-c", 'cut -d" " -f4 "/proc/$PPID/stat"')
    assert gsup.wait(command) == {command: "done"}
    served = int(gsup("logs", str(command)).stdout)  # the user pool (its guardian's parent)
    known = _children(daemon.pid)
    os.kill(served, signal.SIGKILL)  # it ran a job: it did not die at start
    last = "keeps dying at start (killed by SIGKILL; 3 times in a row): restarting it in 2s"
    assert _kill_each_restart(daemon, known, until=f"pool user {last}") == 3
    said = [line.split("gsup: pool user ", 1)[1] for line in daemon.lines if "pool user" in line]
    assert said == [
        "died (killed by SIGKILL); restarting it\n",
        "died at start (killed by SIGKILL); restarting it in 0.5s\n",
        "keeps dying at start (killed by SIGKILL; 2 times in a row): restarting it in 1s\n",
        f"{last}\n",
    ]
    assert gsup.run("--cmd", "--", "true") == "done"  # it lives again, two seconds later
