"""The pools as a user sees and steers them: queues, freeze, priorities, cancel, purge."""

from __future__ import annotations

import json
import os

from conftest import journal_rows, wait_until


def test_queues_shows_both_pools_with_their_workers(daemon, gsup):
    out = gsup("queues").stdout
    assert "daemon: running" in out
    assert "gsup user threads" in out and "gsup monitoring threads" in out
    for header in ("Name", "Command", "Timeout"):
        assert header in out
    assert out.count("Worker_4") == 2 and "Worker_5" not in out
    assert "gsup user queue: 0 pending" in out


def test_queues_shows_a_running_job_with_its_timeout(daemon, gsup, workdir):
    flag = workdir / "go"
    job = gsup.add("jobs:wait_for_file", str(flag), "--timeout", "60")
    snapshot = wait_until(
        lambda: [p for p in json.loads(gsup("queues", "--json").stdout)["pools"] if p["running"]],
        what="the job to start",
    )
    assert snapshot[0]["running"][0]["id"] == job
    out = gsup("queues").stdout
    assert f"#{job} jobs:wait_for_file(" in out
    assert "s of 60s" in out
    flag.touch()
    assert gsup.wait(job) == {job: "done"}


def test_thread_counts_come_from_flags_and_environment(make_daemon, gsup, env):
    env["GSUP_MONITORING_THREADS"] = "2"
    env["GSUP_PROCESS_THREADS"] = "9"
    make_daemon("--user-threads", "3", "--process-threads", "4")
    pools = {p["name"]: p["threads"] for p in json.loads(gsup("queues", "--json").stdout)["pools"]}
    assert pools == {"user": 3, "monitoring": 2, "process": 4}


def test_thread_counts_come_from_gsup_toml(make_daemon, gsup, home):
    home.mkdir(parents=True)
    (home / "gsup.toml").write_text("[pools.user]\nthreads = 2\n")
    make_daemon()
    pools = {p["name"]: p["threads"] for p in json.loads(gsup("queues", "--json").stdout)["pools"]}
    assert pools == {"user": 2, "monitoring": 5, "process": os.cpu_count()}


def test_frozen_pool_starts_nothing_and_the_freeze_survives_a_restart(make_daemon, gsup):
    daemon = make_daemon()
    assert gsup("freeze", "--queue", "user").stdout.splitlines() == [
        "user: frozen",
        "monitoring: running",
        "process: running",
    ]
    job = gsup.add("jobs:add", "1")
    other = gsup.add("jobs:add", "2", "--queue", "monitoring")
    assert gsup.wait(other) == {other: "done"}
    assert gsup.show(job)["state"] == "queued"
    assert "gsup user threads (frozen)" in gsup("queues").stdout
    assert f"#{job} [p5] jobs:add(1)" in gsup("queues").stdout
    assert daemon.stop() == 0
    make_daemon()
    assert gsup.show(job)["state"] == "queued"
    gsup("unfreeze")
    assert gsup.wait(job) == {job: "done"}


def test_priority_then_fifo(make_daemon, gsup, workdir):
    make_daemon("--user-threads", "1")
    gsup("freeze")
    side = str(workdir / "order")
    for label, priority in [("a9", 9), ("b0", 0), ("c5", 5), ("d0", 0), ("e5", 5)]:
        gsup.add("jobs:record", side, label, "--priority", str(priority))
    gsup("unfreeze")
    last = json.loads(gsup("jobs", "--json", "--limit", "5").stdout)
    gsup.wait(*[j["id"] for j in last])
    assert (workdir / "order").read_text().split() == ["b0", "d0", "c5", "e5", "a9"]


def test_cancel_a_queued_and_a_running_job(daemon, gsup, workdir):
    running = gsup.add("jobs:spin", "60")
    wait_until(lambda: gsup.running(running), what="the job to start")
    assert gsup("cancel", str(running)).stdout.strip() == f"{running}: stopping"
    assert gsup.wait(running) == {running: "cancelled"}
    gsup("freeze")
    queued = gsup.add("jobs:add", "1")
    assert gsup("cancel", str(queued)).stdout.strip() == f"{queued}: cancelled"
    assert gsup.show(queued)["state"] == "cancelled"
    again = gsup("cancel", str(queued), check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"gsup: error: job {queued} has already ended (cancelled)"


def test_cancel_a_running_command_kills_it(daemon, gsup):
    job = gsup.add("--cmd", "--", "sleep", "60")
    wait_until(lambda: gsup.running(job), what="the command to start")
    gsup("cancel", str(job))
    assert gsup.wait(job) == {job: "cancelled"}


def test_purge_asks_first_and_cancels_pending_jobs(daemon, gsup):
    gsup("freeze")
    jobs = [gsup.add("jobs:add", str(i)) for i in range(3)]
    refused = gsup("purge", check=False)  # no answer on stdin: nothing happens
    assert refused.returncode == 1
    assert all(gsup.show(job)["state"] == "queued" for job in jobs)
    assert gsup("purge", input="y\n").stdout.splitlines()[-1] == "cancelled 3 pending jobs"
    assert all(gsup.show(job)["state"] == "cancelled" for job in jobs)
    gsup.add("jobs:add", "1", "--queue", "monitoring")
    assert gsup("purge", "--queue", "user", "--yes").stdout.strip() == "cancelled 0 pending jobs"


def test_timeout_stops_a_sleeping_job_by_recycling_its_pool(daemon, gsup):
    job = gsup.add("jobs:sleep", "60", "--timeout", "0.5")
    assert gsup.wait(job) == {job: "timeout"}
    assert "timed out after 0.5s" in gsup.show(job)["reason"]
    after = gsup.add("jobs:add", "1")  # the recycled pool works
    assert gsup.wait(after) == {after: "done"}


def test_timeout_stops_a_spinning_job_without_disturbing_its_neighbours(daemon, gsup, workdir):
    flag = workdir / "go"
    neighbour = gsup.add("jobs:wait_for_file", str(flag))
    job = gsup.add("jobs:spin", "60", "--timeout", "0.5")
    assert gsup.wait(job) == {job: "timeout"}
    assert gsup.show(job)["reason"] == "timed out after 0.5s"
    flag.touch()
    assert gsup.wait(neighbour) == {neighbour: "done"}
    assert gsup.show(neighbour)["attempts"] == 1


def _busy_pool_holding_two(make_daemon, gsup, workdir):
    """One thread, busy; the pool's queue holds the next two jobs, not yet started."""
    make_daemon("--user-threads", "1")
    flag = workdir / "go"
    busy = gsup.add("jobs:wait_for_file", str(flag))
    held = [gsup.add("jobs:add", str(i)) for i in range(2)]
    wait_until(
        lambda: gsup.running(busy) and all(gsup.handed_over(job) for job in held),
        what="the pool to hold two jobs",
    )
    assert [gsup.show(job)["state"] for job in held] == ["queued", "queued"]
    out = gsup("queues").stdout
    assert "gsup user queue: 2 pending" in out
    assert f"#{held[0]} [p5] jobs:add(0)" in out and f"#{busy} jobs:wait_for_file" in out
    return flag, busy, held


def test_freeze_takes_back_jobs_a_pool_holds_but_has_not_started(make_daemon, gsup, workdir):
    flag, busy, held = _busy_pool_holding_two(make_daemon, gsup, workdir)
    gsup("freeze")
    wait_until(lambda: not any(gsup.handed_over(job) for job in held), what="the jobs to come back")
    assert [gsup.show(job)["attempts_list"] for job in held] == [[], []]  # there was no run
    flag.touch()
    assert gsup.wait(busy) == {busy: "done"}
    gsup("unfreeze")
    assert gsup.wait(*held) == {job: "done" for job in held}
    ((unfrozen,),) = journal_rows(gsup.home, "SELECT at FROM commands WHERE verb = 'unfreeze'")
    for job in held:  # none started while the pool was frozen
        (attempt,) = gsup.show(job)["attempts_list"]
        assert attempt["started"] > unfrozen


def test_purge_cancels_jobs_a_pool_holds_but_has_not_started(make_daemon, gsup, workdir):
    flag, busy, held = _busy_pool_holding_two(make_daemon, gsup, workdir)
    out = gsup("purge", "--yes").stdout.strip()
    assert out == "cancelled 0 pending jobs; asked 2 back from the pools"
    assert gsup.wait(*held) == {job: "cancelled" for job in held}
    assert [gsup.show(job)["attempts_list"] for job in held] == [[], []]
    flag.touch()
    assert gsup.wait(busy) == {busy: "done"}


def test_cancel_a_job_a_pool_holds_but_has_not_started(make_daemon, gsup, workdir):
    flag, busy, held = _busy_pool_holding_two(make_daemon, gsup, workdir)
    assert gsup("cancel", str(held[0])).stdout.strip() == f"{held[0]}: cancelling"
    assert gsup.wait(held[0]) == {held[0]: "cancelled"}
    assert gsup.show(held[0])["reason"] == "cancelled before it started"
    flag.touch()
    assert gsup.wait(busy, held[1]) == {busy: "done", held[1]: "done"}


def test_an_urgent_job_waits_only_for_a_free_thread(make_daemon, gsup, workdir):
    """Jobs the pool holds ahead of its threads do not go before a better priority."""
    make_daemon("--user-threads", "2")
    flags = [workdir / f"go{i}" for i in range(12)]
    blockers = [gsup.add("jobs:wait_for_file", str(flag)) for flag in flags]
    wait_until(lambda: all(gsup.running(job) for job in blockers[:2]), what="two to start")
    wait_until(lambda: gsup.handed_over(blockers[2]), what="the pool to hold the next")
    urgent = gsup.add("jobs:add", "1", "--priority", "0")
    pending = gsup("queues").stdout.split("gsup user queue:")[1]
    assert pending.splitlines()[1].strip().startswith(f"#{urgent} [p0]")  # listed first
    flags[0].touch()
    assert gsup.wait(urgent) == {urgent: "done"}
    for flag in flags:
        flag.touch()
    assert set(gsup.wait(*blockers).values()) == {"done"}
    starts = {job: gsup.show(job)["attempts_list"][-1]["started"] for job in [*blockers, urgent]}
    assert sorted(starts, key=starts.__getitem__)[:3] == [*blockers[:2], urgent]


def test_freezing_and_unfreezing_in_a_loop_loses_and_repeats_nothing(make_daemon, workdir, home):
    from gsup.client import Client
    from gsup.specs import call_spec

    make_daemon("--user-threads", "2")
    side = workdir / "runs"
    records = [
        call_spec("jobs:record", (str(side), str(i)), path=[str(workdir)]) for i in range(60)
    ]
    failures = [call_spec("jobs:boom", path=[str(workdir)], retries=2) for _ in range(20)]
    with Client(home) as client:
        ids = client.add(records + failures)
        for _ in range(40):
            client.freeze(None)
            client.freeze(None, False)
        states = client.wait(ids, timeout=120)
    assert sorted(side.read_text().split(), key=int) == [str(i) for i in range(60)]
    assert [states[job] for job in ids] == ["done"] * 60 + ["failed"] * 20
