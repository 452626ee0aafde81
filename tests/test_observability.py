"""Seeing what goes on: `gsup events` (history, --since, --follow pushed by the daemon,
a slow follower), `gsup why`, `gsup task why`, `gsup metrics` (Prometheus)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import journal_rows, wait_until

from gsup.api import Queues
from gsup.protocol import LineReader, encode

prometheus_parser = pytest.importorskip("prometheus_client.parser")


def events_json(gsup, *args: str) -> list[dict]:
    return [json.loads(line) for line in gsup("events", "--json", *args).stdout.splitlines()]


def journal_events(home: Path) -> list[tuple]:
    return journal_rows(home, "SELECT seq, job, before, after, at, why FROM events ORDER BY seq")


# --- events ----------------------------------------------------------------------------


def test_events_are_the_journals_rows_in_order_and_since_resumes_after_a_number(daemon, gsup, home):
    job = gsup.add("jobs:add", "1", "2")
    assert gsup.wait(job) == {job: "done"}
    failed = gsup.add("jobs:boom")
    assert gsup.wait(failed) == {failed: "failed"}
    shown = events_json(gsup)
    assert [tuple(e.values()) for e in shown] == journal_events(home)
    assert [(e["job"], e["before"], e["after"]) for e in shown] == [
        (job, None, "queued"), (job, "queued", "running"), (job, "running", "done"),
        (failed, None, "queued"), (failed, "queued", "running"), (failed, "running", "failed"),
    ]  # fmt: skip
    assert events_json(gsup, "--since", str(shown[2]["seq"])) == shown[3:]
    assert events_json(gsup, "--job", str(failed)) == shown[3:]
    text = gsup("events", "--since", str(shown[4]["seq"])).stdout.splitlines()
    assert len(text) == 1
    assert text[0].startswith(f"{shown[5]['seq']}  ")
    assert text[0].endswith(f"job {failed}  running -> failed  ValueError: bad value")


def test_events_say_one_line_for_bad_input(daemon, gsup):
    job = gsup.add("jobs:add", "1")
    gsup.wait(job)
    beyond = gsup("events", "--since", "99", check=False)
    assert (beyond.returncode, beyond.stdout) == (1, "")
    assert beyond.stderr == "gsup: error: --since 99 is beyond the last event, 3\n"
    for args, error in ((("--job", "77"), "no job 77"), (("--task", "5"), "no task 5")):
        result = gsup("events", *args, "--follow", check=False)
        assert (result.returncode, result.stderr) == (1, f"gsup: error: {error}\n")
    both = gsup("events", "--job", "1", "--task", "1", check=False)
    assert both.returncode == 2
    assert both.stderr.startswith("gsup: error: --job and --task: give one of them")
    assert gsup("events", "--job", "x", check=False).returncode == 2
    assert gsup("status", check=False).returncode == 0  # the daemon is unaffected


class Follower:
    """`gsup events --follow --json` in the background; its lines as they come."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "gsup", "events", "--follow", "--json", *args],
            env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.events: list[dict] = []
        self.arrived: list[float] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.arrived.append(time.time())
            self.events.append(json.loads(line))

    def until(self, count: int, timeout: float = 60) -> list[dict]:
        wait_until(lambda: len(self.events) >= count, timeout, f"{count} events followed")
        return self.events

    def stop(self) -> str:
        self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=10)
        return err


def test_follow_prints_each_event_as_it_is_committed_and_only_new_ones(daemon, gsup, home, env):
    before = gsup.add("jobs:add", "1")
    gsup.wait(before)
    follower = Follower(env, gsup.cwd)
    wait_until(lambda: _followers(home) == 1, what="the follower to subscribe")
    job = gsup.add("jobs:add", "2")
    seen = follower.until(3)
    assert [(e["job"], e["after"]) for e in seen] == [(job, "queued"), (job, "running"),
                                                       (job, "done")]  # fmt: skip
    assert [tuple(e.values()) for e in seen] == journal_events(home)[3:]
    assert follower.stop() == ""


def test_a_follower_of_one_job_gets_its_events_only(daemon, gsup, home, env):
    other = gsup.add("jobs:sleep", "0.2")
    mine = gsup.add("jobs:sleep", "0.2")
    follower = Follower(env, gsup.cwd, "--job", str(mine), "--since", "0")
    gsup.wait(other, mine)
    assert [(e["job"], e["after"]) for e in follower.until(3)] == [
        (mine, "queued"), (mine, "running"), (mine, "done")]  # fmt: skip
    extra = gsup.add("jobs:add", "1")
    gsup.wait(extra)
    time.sleep(0.5)  # nothing may arrive for another job: there is no event to wait on
    assert len(follower.events) == 3
    follower.stop()


def test_a_follower_that_falls_behind_misses_and_repeats_nothing(daemon, gsup, home, env):
    """More events in one turn than the daemon sends at once: it is told it is behind,
    reads on from the journal file, and follows again."""
    follower = Follower(env, gsup.cwd, "--since", "0")
    wait_until(lambda: _followers(home) == 1, what="the follower to subscribe")
    queues = Queues(home)
    jobs = queues.add_many("jobs:add", [(n,) for n in range(3_000)])  # one request: one turn
    queues.client.wait([job.id for job in jobs])
    count = len(journal_events(home))
    assert count == 9_000
    seqs = [e["seq"] for e in follower.until(count)]
    assert seqs == [row[0] for row in journal_events(home)]  # each once, in order
    follower.stop()


def test_the_daemon_tells_a_follower_that_does_not_read_that_it_is_behind(daemon, home):
    """A raw client follows and reads nothing while 3,000 jobs are added: the daemon
    sends it `behind` (with the last event it had), not 9,000 events."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(home / "gsup.sock"))
    sock.sendall(encode({"verb": "follow", "id": 7, "since": 0}))
    Queues(home).add_many("jobs:add", [(n,) for n in range(3_000)])
    reader, replies = LineReader(), []
    while len(replies) < 2:
        replies += reader.feed(sock.recv(1 << 16))
    assert replies == [{"id": 7, "ok": True, "last": 0}, {"id": 7, "ok": True, "behind": 0}]
    sock.close()


def test_follow_requests_that_break_the_rules_get_one_line_each(daemon, gsup, home):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(home / "gsup.sock"))
    requests = [
        {"verb": "follow", "id": 1, "since": 0},
        {"verb": "follow", "id": 2, "since": 0},
        {"verb": "follow", "id": 3, "since": -1},
        {"verb": "follow", "id": 4, "since": 0, "job": 1, "task": 1},
        {"verb": "follow", "id": 5, "since": 0, "brief": True, "job": 1},
        {"verb": "follow", "id": 6, "since": 0, "brief": "yes"},
        {"verb": "follow", "id": 7, "since": 5},
    ]
    sock.sendall(b"".join(encode(request) for request in requests))
    reader, replies = LineReader(), []
    while len(replies) < len(requests):
        replies += reader.feed(sock.recv(1 << 16))
    assert [(r["id"], r.get("error", r.get("last"))) for r in replies] == [
        (1, 0),
        (2, "this connection follows the events already; open another"),
        (3, "since must be an event number from 0, not -1"),
        (4, "follow one job or one task, not both"),
        (5, "a brief follow names no job or task"),
        (6, "brief must be true or false"),
        (7, "there is no event 5 yet; the last is 0"),
    ]
    sock.close()
    job = gsup.add("jobs:add", "1")
    assert gsup.wait(job) == {job: "done"}


def _followers(home: Path) -> int:
    return Queues(home).client.request("stats")["followers"]


def test_event_numbers_are_never_given_twice_after_a_prune(daemon, gsup, home):
    job = gsup.add("jobs:add", "1")
    gsup.wait(job)
    last = journal_events(home)[-1][0]
    time.sleep(1.1)
    gsup("prune", "--older-than", "1s")
    assert journal_events(home) == []
    again = gsup.add("jobs:add", "2")
    gsup.wait(again)
    assert [row[0] for row in journal_events(home)] == [last + 1, last + 2, last + 3]
    # A reader that had the pruned events resumes where it was.
    assert [e["job"] for e in events_json(gsup, "--since", str(last))] == [again] * 3


def test_events_of_a_task_are_those_of_its_jobs(daemon, gsup, home, workdir):
    (workdir / "t.toml").write_text(
        '[task]\nname = "t"\n[[transform]]\nname = "a"\ntarget = "jobs:add"\nunits = [[1], [2]]\n'
    )
    task = gsup("task", "submit", "t.toml").stdout.strip()
    outside = gsup.add("jobs:add", "5")
    gsup("task", "wait", task)
    gsup.wait(outside)
    task_jobs = {row[0] for row in journal_rows(home, "SELECT job FROM units")}
    shown = events_json(gsup, "--task", task)
    assert {e["job"] for e in shown} == task_jobs
    assert [e["seq"] for e in shown] == [
        row[0] for row in journal_events(home) if row[1] in task_jobs
    ]


# --- why -------------------------------------------------------------------------------


def why(gsup, job: int) -> str:
    return gsup("why", str(job)).stdout.strip()


def test_why_says_a_queued_job_waits_for_a_frozen_pool(daemon, gsup):
    gsup("freeze", "--queue", "user")
    job = gsup.add("jobs:add", "1")
    assert why(gsup, job) == (
        f"Job {job} is queued in user (priority 5). Pool user is frozen: nothing starts"
        " there until `gsup unfreeze --queue user`."
    )


def test_why_names_what_fills_a_full_pool(make_daemon, gsup, workdir):
    make_daemon("--user-threads", "1")
    gate = workdir / "gate"
    busy = gsup.add("jobs:wait_for_file", str(gate))
    wait_until(lambda: gsup.running(busy), what="the first job to run")
    held = [gsup.add("jobs:add", str(n)) for n in range(17)]  # the pool holds 16 ahead
    last = gsup.add("jobs:add", "99")
    wait_until(lambda: gsup.handed_over(held[-2]), what="the pool to hold 16")
    assert why(gsup, held[0]).startswith(
        f"Job {held[0]} is queued in user (priority 5). The pool holds it ahead of a free"
        f" worker: busy with #{busy} jobs:wait_for_file("
    )
    assert why(gsup, last).endswith(
        "), and 16 held ahead of a free worker. 17 queued jobs of user come before it"
        " (priority, then age)."
    )
    assert why(gsup, busy).startswith(f"Job {busy} is running on user/Worker_0 since ")
    gate.touch()
    gsup.wait(busy, *held, last)


def test_why_says_when_a_delayed_retry_falls_due(daemon, gsup, home):
    job = gsup.add("--retries", "1", "--retry-delay", "600", "jobs:boom")
    wait_until(lambda: gsup.show(job)["attempts"] == 1 and gsup.show(job)["state"] == "queued",
               what="the first run to fail")  # fmt: skip
    (not_before,) = journal_rows(home, "SELECT not_before FROM jobs WHERE id = ?", (job,))[0]
    due = time.strftime("%H:%M:%S", time.localtime(not_before))
    said = why(gsup, job)
    assert said.startswith(
        f"Job {job} is queued in user (priority 5). It is a retry (attempt 1 of 2 ran and ended"
        f" ValueError: bad value), delayed until {due} (in "
    )
    assert said.endswith("m).")


def test_why_says_why_an_ended_job_was_not_retried(daemon, gsup):
    job = gsup.add("--retries", "1", "jobs:boom")
    assert gsup.wait(job) == {job: "failed"}
    assert why(gsup, job).endswith(
        "after 2 attempts: ValueError: bad value. It was not retried: its 1 retry is used up."
    )
    picky = gsup.add("--retries", "3", "--retry-on", "KeyError", "jobs:boom")
    assert gsup.wait(picky) == {picky: "failed"}
    assert why(gsup, picky).endswith("It was not retried: it retries only on KeyError.")


def test_why_without_a_daemon_and_for_an_unknown_job(daemon, gsup):
    job = gsup.add("jobs:add", "1")
    gsup.wait(job)
    daemon.stop()
    assert why(gsup, job).startswith(f"Job {job} ended done at ")
    result = gsup("why", "42", check=False)
    assert (result.returncode, result.stderr) == (1, "gsup: error: no job 42\n")


def test_task_why_says_a_paused_task_submits_nothing(daemon, gsup, workdir):
    (workdir / "t.toml").write_text(
        '[task]\nname = "t"\nfloat = 1\n[[transform]]\nname = "a"\ntarget = "jobs:sleep"\n'
        "units = [[0.3], [0.3], [0.3]]\n"
    )
    task = gsup("task", "submit", "t.toml").stdout.strip()
    gsup("task", "pause", task)
    lines = gsup("task", "why", task).stdout.splitlines()
    assert lines[0].startswith(f"Task {task} (t): paused; ")
    assert lines[0].endswith(f"It is paused: no unit is submitted until `gsup task resume {task}`.")
    assert lines[1].startswith("  a: running; ")
    gsup("task", "resume", task)
    gsup("task", "wait", task)
    assert gsup("task", "why", task).stdout.splitlines() == [
        f"Task {task} (t): completed, every transform ended.",
        "  a: completed; 3 done.",
    ]
    missing = gsup("task", "why", "9", check=False)
    assert (missing.returncode, missing.stderr) == (1, "gsup: error: no task 9\n")


def test_task_why_says_its_float_is_full_and_what_waits_for_inputs(daemon, gsup, workdir):
    gate = workdir / "gate"
    (workdir / "t.toml").write_text(
        '[task]\nname = "t"\nfloat = 1\n[[transform]]\nname = "a"\n'
        f'target = "jobs:wait_for_file"\nunits = [["{gate}"], ["{gate}"]]\n'
        '[[transform]]\nname = "b"\ntarget = "jobs:echo"\ninputs_from = "a"\n'
    )
    task = gsup("task", "submit", "t.toml").stdout.strip()
    lines = gsup("task", "why", task).stdout.splitlines()
    assert lines[0] == (
        f"Task {task} (t): running; 1 unit in flight, its float 1. Its float is full: a unit"
        " is submitted as one in flight ends."
    )
    assert lines[1] == "  a: running; 1 waiting, 1 submitted."
    assert lines[2] == "  b: running; no units yet."
    gate.touch()
    gsup("task", "wait", task)


# --- metrics ---------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_the_daemons_jobs_in_prometheus_format(daemon, gsup):
    jobs = [gsup.add("jobs:add", str(n)) for n in range(3)]
    failed = gsup.add("jobs:boom")
    gsup.wait(*jobs, failed)
    gsup("freeze", "--queue", "monitoring")
    gsup.add("--queue", "monitoring", "jobs:add", "1")
    found = samples(gsup("metrics").stdout)
    assert found["gsup_up", ()] == 1
    assert found["gsup_jobs_started_total", (("pool", "user"),)] == 4
    assert found["gsup_jobs_ended_total", (("outcome", "done"), ("pool", "user"))] == 3
    assert found["gsup_jobs_ended_total", (("outcome", "failed"), ("pool", "user"))] == 1
    assert found["gsup_jobs", (("pool", "monitoring"), ("state", "queued"))] == 1
    assert found["gsup_queue_depth", (("pool", "monitoring"),)] == 1
    assert found["gsup_pool_frozen", (("pool", "monitoring"),)] == 1
    assert found["gsup_attempt_duration_seconds_count", (("pool", "user"),)] == 4
    assert found["gsup_journal_commit_seconds_count", ()] > 0
    assert found["gsup_clients", ()] == 1  # the scrape's own connection


def test_metrics_say_the_daemon_is_down(home, gsup):
    found = samples(gsup("metrics").stdout)
    assert found == {("gsup_up", ()): 0}


def test_metrics_listen_serves_them_and_asks_a_token_when_one_is_set(daemon, gsup, env):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-P", "-m", "gsup", "metrics", "--listen", f"127.0.0.1:{port}"],
        env={**env, "GSUP_WEB_TOKEN": "s3cret-token-of-16"}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stderr is not None
        assert server.stderr.readline() == f"gsup: metrics on http://127.0.0.1:{port}/metrics\n"
        url = f"http://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(
            url, headers={"Authorization": "Bearer s3cret-token-of-16"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert samples(answer.read().decode())["gsup_up", ()] == 1
        with pytest.raises(urllib.error.HTTPError) as wrong:
            urllib.request.urlopen(url + "?token=not-the-token-at-all", timeout=10)
        assert wrong.value.code == 401
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(10)


def test_metrics_refuse_to_listen_beyond_loopback_without_a_token(gsup, env):
    result = gsup("metrics", "--listen", "0.0.0.0:9", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "gsup: error: listening on 0.0.0.0 reaches beyond this machine and needs a token: set"
        " [web] token in gsup.toml (or GSUP_WEB_TOKEN), at least 16 characters\n"
    )
    bad = gsup("metrics", "--listen", "nonsense", check=False)
    assert bad.stderr == "gsup: error: 'nonsense' is not HOST:PORT (such as 127.0.0.1:8765)\n"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- live views --------------------------------------------------------------------------


class Terminal:
    """A `gsup` command on a pseudo-terminal (stdout and stderr), read as it draws."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        import pty

        main, side = pty.openpty()
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "gsup", *args], env={**env, "COLUMNS": "160"},
            cwd=cwd, stdin=side, stdout=side, stderr=side, start_new_session=True,
        )  # fmt: skip
        os.close(side)
        self.main = main
        self.output = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.main, 1 << 16)
            except OSError:
                return
            if not data:
                return
            self.output += data.decode("utf-8", "replace")

    def until(self, text: str, timeout: float = 30) -> str:
        wait_until(lambda: text in self.output, timeout, f"{text!r} on the terminal")
        return self.output

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(10)


def test_queues_watch_redraws_when_a_job_starts_and_ends(daemon, gsup, env, workdir):
    screen = Terminal(env, workdir, "queues", "--watch")
    screen.until("gsup user queue: 0 pending")
    wait_until(lambda: _followers(gsup.home) == 1, what="the view to follow events")
    gate = workdir / "gate"
    job = gsup.add("jobs:wait_for_file", str(gate))
    screen.until(f"#{job} jobs:wait_for_file(")
    drawn = len(screen.output)
    gate.touch()
    gsup.wait(job)
    wait_until(lambda: "Worker_0  idle" in screen.output[drawn:], what="the job's end drawn")
    assert screen.interrupt() == 0


def test_task_show_watch_follows_a_task_to_its_end(daemon, gsup, env, workdir):
    (workdir / "t.toml").write_text(
        '[task]\nname = "t"\nfloat = 1\n[[transform]]\nname = "a"\ntarget = "jobs:sleep"\n'
        "units = [[0.2], [0.2], [0.2]]\n"
    )
    task = gsup("task", "submit", "t.toml").stdout.strip()
    screen = Terminal(env, workdir, "task", "show", task, "--watch")
    assert screen.process.wait(60) == 0  # it ends with the task
    screen.until(f"task {task} t: completed")
    assert "3/3 completed: 3 done" in screen.output


def test_wait_shows_a_progress_bar_on_a_terminal(daemon, gsup, env, workdir):
    jobs = [str(gsup.add("jobs:sleep", "0.3")) for _ in range(6)]
    screen = Terminal(env, workdir, "wait", *jobs)
    assert screen.process.wait(60) == 0
    screen.until(f"{jobs[-1]}: done")
    assert "ended" in screen.output
    assert "6/6" in screen.output
    assert "jobs/s" in screen.output


def test_task_wait_shows_a_bar_per_transform(daemon, gsup, env, workdir):
    (workdir / "t.toml").write_text(
        '[task]\nname = "t"\n[[transform]]\nname = "first"\ntarget = "jobs:add"\n'
        'units = [[1], [2]]\n[[transform]]\nname = "second"\ntarget = "jobs:add"\n'
        "units = [[3], [4], [5]]\n"
    )
    task = gsup("task", "submit", "t.toml").stdout.strip()
    screen = Terminal(env, workdir, "task", "wait", task)
    assert screen.process.wait(60) == 0
    screen.until(f"task {task} completed")
    assert "first" in screen.output and "2/2" in screen.output
    assert "second" in screen.output and "3/3" in screen.output


def test_one_user_follows_at_most_per_user_times_and_wait_still_waits(daemon, gsup, home, env):
    from gsup.supervisor.followers import PER_USER

    held = []
    for n in range(PER_USER + 1):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(home / "gsup.sock"))
        sock.sendall(encode({"verb": "follow", "id": n, "since": 0, "brief": n % 2 == 0}))
        held.append(sock)
    replies = [LineReader().feed(sock.recv(1 << 16))[0] for sock in held]
    assert [reply.get("error") for reply in replies[:-1]] == [None] * PER_USER
    assert replies[-1]["error"] == (
        f"your user follows the events {PER_USER} times already; close some"
    )
    jobs = [str(gsup.add("jobs:add", str(n))) for n in range(2)]
    screen = Terminal(env, gsup.cwd, "wait", *jobs)  # its bar cannot follow: it waits anyway
    assert screen.process.wait(60) == 0
    screen.until(f"{jobs[-1]}: done")
    for sock in held:
        sock.close()


def test_why_says_so_when_the_daemon_does_not_answer(daemon, gsup):
    gsup("freeze", "--queue", "user")
    job = gsup.add("jobs:add", "1")
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        said = why(gsup, job)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert said == (
        f"Job {job} is queued in user (priority 5). The daemon did not answer within 5s: it"
        " runs once a daemon that answers is started."
    )
