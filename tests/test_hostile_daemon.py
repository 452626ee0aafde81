"""The daemon holds under hostile surroundings: a journal another process keeps locked,
signals it was not asked to stop by. (A request SQLite fails whole: tests/test_book.py.)"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

from conftest import wait_until


def _lock_journal(home: Path) -> sqlite3.Connection:
    """Another process's connection holding the journal's write lock."""
    blocker = sqlite3.connect(home / "journal.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_a_journal_another_process_keeps_locked_stalls_the_turn_until_released(daemon, gsup):
    blocker = _lock_journal(daemon.home)
    ids: list[int] = []
    adding = threading.Thread(target=lambda: ids.append(gsup.add("jobs:add", "1", "2")))
    adding.start()
    daemon.said("cannot write the journal (database is locked); retrying every 1s")
    blocker.execute("ROLLBACK")
    adding.join(60)
    daemon.said("the journal is writable again")
    assert gsup.wait(*ids) == {ids[0]: "done"}


def test_a_journal_another_process_keeps_locked_at_start_is_waited_for(make_daemon, gsup):
    make_daemon().stop()  # a journal to lock
    blocker = _lock_journal(gsup.home)
    daemon = make_daemon(start=False)
    starting = threading.Thread(target=daemon.start)
    starting.start()
    daemon.said("cannot write the journal (database is locked); retrying every 1s")
    blocker.execute("ROLLBACK")
    starting.join(60)
    daemon.said("gsup: ready:")
    assert gsup.run("jobs:add", "1") == "done"


STATE_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)


def test_hup_usr1_usr2_and_quit_say_the_state_and_stop_nothing(daemon, gsup, workdir):
    go = workdir / "go"
    job = gsup.add("jobs:wait_for_file", str(go))
    wait_until(lambda: gsup.running(job), what="the job to start")
    for number in STATE_SIGNALS:
        os.kill(daemon.pid, number)
        name = signal.Signals(number).name
        if number == signal.SIGHUP:
            name += " ignored (settings are read at start only)"
        daemon.said(f"{name}: running, pid {daemon.pid}, up ")
    assert "user 5 threads (1 running, 0 handed over)" in daemon.output
    go.touch()
    assert gsup.wait(job) == {job: "done"}
    assert daemon.stop() == 0 and "gsup: stopped" in daemon.output


def test_a_hangup_of_the_daemons_process_group_leaves_its_jobs_running(
    make_daemon, gsup, workdir, monkeypatch
):
    """As a closed terminal does: SIGHUP to the group the daemon leads."""
    with monkeypatch.context() as patch:  # the daemon leads a session and group of its own
        patch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen,
                                                             start_new_session=True))  # fmt: skip
        daemon = make_daemon()
    go = workdir / "go"
    call = gsup.add("jobs:wait_for_file", str(go))
    command = gsup.add("--cmd", "--", "sh", "-c", "until [ -e go ]; do sleep 0.02; done")
    wait_until(lambda: gsup.running(call) and gsup.running(command), what="the jobs to start")
    os.killpg(daemon.pid, signal.SIGHUP)
    daemon.said("SIGHUP ignored")
    go.touch()
    assert gsup.wait(call, command) == {call: "done", command: "done"}


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as file:
        return [int(child) for child in file.read().split()]


def test_a_signal_sent_to_a_pool_kills_it_as_a_crash_and_its_job_runs_again(daemon, gsup,
                                                                             workdir):  # fmt: skip
    """Pools do not keep the supervisor's handlers: they die of these signals, on record."""
    go = workdir / "go"
    job = gsup.add("jobs:wait_for_file", str(go))
    wait_until(lambda: gsup.running(job), what="the job to start")
    for pool in _children(daemon.pid):
        os.kill(pool, signal.SIGUSR1)
    wait_until(lambda: len(gsup.show(job)["attempts_list"]) == 2, what="a second attempt")
    go.touch()
    assert gsup.wait(job) == {job: "done"}
    first = gsup.show(job)["attempts_list"][0]
    assert (first["outcome"], "SIGUSR1" in first["reason"]) == ("lost", True)
