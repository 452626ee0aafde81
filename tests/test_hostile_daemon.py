"""The daemon holds under hostile clients and surroundings: requests that fail after
writing, a journal another process keeps locked, signals it was not asked to stop by."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import Daemon, wait_until

from gsup.client import Client

SMALL_MB = 16  # a tmpfs of its own for the state dir, to fill up


@pytest.fixture
def small_home(home: Path):
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = home.parent / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_MB}m", "tmpfs", str(mount)],
                   check=True)  # fmt: skip
    yield mount / "state"
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _leave_free(folder: Path, free_bytes: int) -> None:
    """Fill the file system of `folder` until `free_bytes` are left."""
    stats = os.statvfs(folder)
    (folder.parent / "filler").write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - free_bytes))


def _request_lines(*requests: dict) -> bytes:
    return b"".join(json.dumps(request).encode() + b"\n" for request in requests)


def _replies(sock: socket.socket, count: int) -> dict:
    """The next `count` replies on a raw connection, by request id."""
    replies, reader = {}, sock.makefile("rb")
    for _ in range(count):
        reply = json.loads(reader.readline())
        replies[reply["id"]] = reply
    return replies


def test_a_request_sqlite_fails_whole_undoes_only_its_own_writes(small_home, env, workdir):
    """A small add and one the disk cannot hold (its commands' environments are larger
    than the free-space check guesses), read in one turn: on a full disk SQLite rolls
    back the whole turn, yet the first job is added, and runs."""
    small_home.mkdir()
    (small_home / "gsup.toml").write_text("min_free_mb = 0\n")
    env["GSUP_HOME"] = str(small_home)
    daemon = Daemon(small_home, env).start()
    command = {"kind": "cmd", "argv": ["true"], "cwd": str(workdir), "display": "true",
               "env": {"PATH": os.environ["PATH"]}}  # fmt: skip
    too_big = {**command, "env": {**command["env"], "BALLAST": "x" * 40_000}}
    try:
        _leave_free(small_home, 2_000_000)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(small_home / "gsup.sock"))
            sock.sendall(_request_lines(  # 40 KB: both in one read, so in one turn
                {"verb": "add", "id": 1, "jobs": [command]},
                {"verb": "add", "id": 2, "defaults": too_big, "jobs": [{}] * 100},
            ))  # fmt: skip
            replies = _replies(sock, 2)
        assert "disk is full" in replies[2]["error"]
        [job] = replies[1]["ids"]
        with Client(small_home) as client:
            assert client.wait([job], timeout=20) == {job: "done"}
    finally:
        daemon.stop(signal.SIGTERM)


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
