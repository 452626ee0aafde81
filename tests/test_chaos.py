"""Chaos: SIGKILL the supervisor and the pools at random moments while 2,000 jobs run.

At the end every job is in an end state, none is missing, none ran more often than
its policy allows (each run appends a line to a side file) and the journal is intact.
"""

from __future__ import annotations

import collections
import random
import signal
import sqlite3
import subprocess
import time

import pytest
from conftest import journal_rows

from gsup.client import Client
from gsup.lifecycle import POISON_AFTER_LOST
from gsup.specs import call_spec

JOBS = 2000
SUPERVISOR_KILLS = 10
POOL_KILLS = 10

CHAOS_MODULE = """
import os, time

def run(job, path):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{job}\\n".encode())
    os.close(fd)
    time.sleep(0.02)
    return job
"""


def _pool_pids(daemon_pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(daemon_pid)], capture_output=True, text=True
    ).stdout
    return [int(pid) for pid in out.split()]


@pytest.mark.slow
def test_chaos(make_daemon, home, workdir):
    rng = random.Random(20261126)
    (workdir / "chaos.py").write_text(CHAOS_MODULE)
    side = workdir / "runs"
    daemon = make_daemon()
    client = Client(home)
    must_not_repeat = set()
    ids = []
    for batch in range(JOBS // 200):
        specs = []
        for n in range(200):
            label = batch * 200 + n
            on_lost = "fail" if label % 10 == 0 else "requeue"
            specs.append(
                call_spec("chaos:run", (label, str(side)), path=[str(workdir)], on_lost=on_lost)
            )
        added = client.add(specs)
        ids += added
        must_not_repeat.update(
            job for job, s in zip(added, specs, strict=True) if s.on_lost == "fail"
        )
    client.close()

    kills = ["supervisor"] * SUPERVISOR_KILLS + ["pool"] * POOL_KILLS
    rng.shuffle(kills)
    for victim in kills:
        time.sleep(rng.uniform(0.05, 0.4))
        if victim == "supervisor":
            daemon.kill()
            daemon = make_daemon()
        else:
            pools = _pool_pids(daemon.pid)
            if pools:
                subprocess.run(["kill", "-KILL", str(rng.choice(pools))], check=False)

    with Client(home) as client:
        states = client.wait(ids, timeout=300)
    daemon.stop(signal.SIGTERM)

    runs = collections.Counter(int(line) for line in side.read_text().split())
    labels = {job: label for label, job in enumerate(ids)}
    attempts = dict(journal_rows(home, "SELECT job, count(*) FROM attempts GROUP BY job"))
    by_state = collections.Counter(states.values())
    print(
        f"\nchaos: {JOBS} jobs, {SUPERVISOR_KILLS} supervisor and {POOL_KILLS} pool kills;"
        f" end states {dict(by_state)}; {sum(runs.values())} runs,"
        f" {sum(1 for n in runs.values() if n > 1)} jobs ran more than once"
    )
    assert len(states) == JOBS
    # A job ends lost only by its own policy: it must not run twice, or it is poison.
    lost = dict(journal_rows(home, "SELECT id, reason FROM jobs WHERE state = 'lost'"))
    for job, state in states.items():
        if state != "done":
            why = "; on_lost=fail" if job in must_not_repeat else "poison: "
            assert (state, why in lost[job]) == ("lost", True), f"job {job}: {lost.get(job)}"
    for job in ids:
        ran = runs[labels[job]]
        assert ran <= attempts.get(job, 0), f"job {job} ran {ran} times, journaled fewer runs"
        if job in must_not_repeat:
            assert ran <= 1, f"job {job} (on_lost=fail) ran {ran} times"
        else:
            assert ran <= POISON_AFTER_LOST, f"job {job} ran {ran} times"
        if states[job] == "done":
            assert ran >= 1
    with sqlite3.connect(home / "journal.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    journaled = journal_rows(home, "SELECT count(*) FROM jobs")
    assert journaled == [(JOBS,)]
