"""The scheduling, driven by hand: the job book with a fake executor, a journal in a
temp dir and clocks of the test's own. No process starts; each test takes milliseconds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gsup.executors.fake import FakeExecutor
from gsup.journal import queries
from gsup.journal.migrations import open_journal
from gsup.journal.writer import Writer
from gsup.lifecycle import Ending, StateChange, Stop
from gsup.specs import call_spec
from gsup.states import State
from gsup.supervisor.jobs import JobBook
from gsup.supervisor.loop import Timers


class Clocks:
    """A monotonic clock for the timers and a wall clock for the journal, moved by hand."""

    def __init__(self) -> None:
        self.monotonic = 100.0
        self.wall = 1_800_000_000.0
        self.timers = Timers(clock=lambda: self.monotonic)

    def now(self) -> float:
        return self.monotonic

    def call_at(self, when: float, callback: Any) -> Any:
        return self.timers.call_at(when, callback)

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.wall += seconds
        self.timers.fire_due()


class Bench:
    """A book, its fake executor and journal; `answers` collects replies to waiters."""

    def __init__(self, path: Path, slots: int = 2, shared_fate: bool = False) -> None:
        conn, _ = open_journal(path / "journal.sqlite")
        self.journal = Writer(conn, path / "journal.sqlite-wal")
        self.fake = FakeExecutor("user", slots=slots, shared_fate=shared_fate)
        self.clocks = Clocks()
        self.answers: list[dict[str, Any]] = []
        self.answered: list[tuple[Any, Any]] = []  # (connection, request id) of each answer
        self.book = JobBook(
            self.journal,
            [self.fake],
            self.clocks,
            self._answer,
            wall=lambda: self.clocks.wall,
        )
        self.journal.register_pool("user", 1, slots)
        self.fake.start(None, self.book)

    def _answer(self, conn: Any, request_id: Any, reply: dict[str, Any]) -> None:
        self.answers.append(reply)
        self.answered.append((conn, request_id))

    def add(self, *arguments: Any, **options: Any) -> int:
        options.setdefault("pool", "user")  # as the daemon's add fills it in
        spec = call_spec("jobs:add", arguments or (1,), path=["/nowhere"], **options)
        (job,) = self.journal.insert_jobs([spec], self.clocks.wall)
        self.book.added([spec])
        return job

    def turn(self) -> None:
        """What the loop does after its reports: dispatch, then commit."""
        self.book.dispatch()
        self.journal.commit()

    def row(self, job: int) -> dict[str, Any]:
        found = queries.job_row(self.journal.reader, job)
        assert found is not None
        return found

    def attempts(self, job: int) -> list[dict[str, Any]]:
        details = queries.job_details(self.journal.reader, job)
        assert details is not None
        return details["attempts_list"]


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)


def test_jobs_are_handed_over_by_priority_then_fifo_and_stay_queued_until_started(bench):
    jobs = [bench.add(priority=p) for p in (9, 0, 5, 0)]
    bench.turn()
    assert bench.fake.submitted == [jobs[1], jobs[3]]  # two slots: the two of priority 0
    assert [bench.row(job)["state"] for job in jobs] == ["queued"] * 4
    assert [a["started"] for a in bench.attempts(jobs[1])] == [None]  # handed over, written
    bench.fake.begin(jobs[1])
    assert bench.row(jobs[1])["state"] == "running"
    bench.fake.finish(jobs[1], result="2", result_type="json")
    bench.turn()
    assert bench.fake.submitted == [jobs[1], jobs[3], jobs[2]]
    assert bench.row(jobs[1])["state"] == "done"


def test_a_better_job_takes_the_place_of_a_held_one(bench):
    first, second = bench.add(priority=5), bench.add(priority=5)
    bench.turn()
    bench.fake.begin(first)
    urgent = bench.add(priority=0)
    bench.turn()
    assert bench.fake.submitted[-1] == urgent and bench.fake.recalled == [second]
    bench.fake.deliver()  # the executor gives `second` back
    assert bench.row(second)["state"] == "queued" and bench.attempts(second) == []
    assert bench.fake.next_up() == urgent
    bench.fake.finish(first)
    bench.turn()
    assert bench.fake.submitted[-1] == second  # back in once there is room


def test_a_job_given_back_keeps_its_place_among_its_equals(tmp_path):
    bench = Bench(tmp_path, slots=4)
    a, b, c, d, e, f = (bench.add() for _ in range(6))
    bench.turn()
    bench.fake.begin(a)
    bench.fake.begin(b)
    urgent = bench.add(priority=0)
    bench.turn()
    assert bench.fake.recalled == [d]
    bench.fake.finish(a)
    bench.fake.finish(b)
    bench.turn()
    assert bench.fake.submitted[-1] == e  # `d` is still on its way back
    bench.fake.deliver()
    bench.fake.begin(c)
    bench.fake.finish(c)
    bench.turn()
    assert bench.fake.submitted == [a, b, c, d, urgent, e, d, f]  # `d` before `f`


def test_a_timeout_stops_the_attempt_and_ends_the_job(bench):
    job = bench.add(timeout=5)
    bench.turn()
    bench.fake.begin(job)
    bench.clocks.advance(4.9)
    assert bench.fake.stopped == []
    bench.clocks.advance(0.2)
    assert bench.fake.stopped == [job]
    bench.fake.finish(job, Ending.STOPPED, "stopped")
    assert (bench.row(job)["state"], bench.row(job)["reason"]) == ("timeout", "timed out after 5s")


def test_a_delayed_retry_waits_for_its_time(bench):
    job = bench.add(retries=1, retry_delay=30)
    bench.turn()
    bench.fake.begin(job)
    bench.fake.finish(job, Ending.FAILED, "ValueError: no", error="ValueError: no")
    bench.turn()
    assert bench.row(job)["state"] == "queued" and bench.fake.submitted == [job]
    bench.clocks.advance(29)
    bench.turn()
    assert bench.fake.submitted == [job]
    bench.clocks.advance(1.5)
    bench.turn()
    assert bench.fake.submitted == [job, job]
    assert [a["outcome"] for a in bench.attempts(job)] == ["failed", None]


def test_a_job_lost_with_a_shared_process_then_runs_alone(tmp_path):
    bench = Bench(tmp_path, slots=3, shared_fate=True)
    suspect, neighbour, other = bench.add(), bench.add(), bench.add()
    bench.turn()
    for job in (suspect, neighbour, other):
        bench.fake.begin(job)
    bench.fake.finish(suspect, Ending.LOST, "pool died (killed by SIGKILL)")
    bench.fake.finish(neighbour, Ending.LOST, "pool died (killed by SIGKILL)")
    bench.turn()
    assert bench.row(suspect)["lost_count"] == 1 and bench.row(suspect)["state"] == "queued"
    assert bench.fake.submitted == [suspect, neighbour, other]  # waits: `other` still runs
    bench.fake.finish(other)
    bench.turn()
    assert bench.fake.submitted[3:] == [suspect]  # alone
    bench.fake.begin(suspect)
    bench.fake.finish(suspect)
    bench.turn()
    assert bench.fake.submitted[4:] == [neighbour]


def test_poison_after_three_deaths(bench):
    job = bench.add()
    for _ in range(3):
        bench.turn()
        bench.fake.begin(job)
        bench.fake.finish(job, Ending.LOST, "pool died (killed by SIGKILL)")
    row = bench.row(job)
    assert row["state"] == "lost"
    poison = "poison: in flight during 3 deaths of its pool or the daemon"
    assert row["reason"] == f"{poison} (pool died (killed by SIGKILL))"


def test_a_job_that_must_not_run_twice_runs_only_once_its_start_is_journaled(bench):
    job = bench.add(on_lost="fail")
    bench.turn()
    bench.fake.begin(job)
    assert bench.fake.held[job].confirmed  # confirmed after the start was written
    assert bench.row(job)["state"] == "running"
    bench.fake.finish(job, Ending.INTERRUPTED, "its pool was recycled")
    assert (bench.row(job)["state"], bench.row(job)["reason"]) == (
        "lost",
        "its pool was recycled; on_lost=fail",
    )


def test_every_state_change_reaches_the_subscribers(bench):
    changes: list[StateChange] = []
    bench.book.subscribe(changes.append)
    job = bench.add(retries=1)
    bench.turn()
    bench.fake.begin(job)
    bench.fake.finish(job, Ending.FAILED, "ValueError: no")
    assert [(c.job, c.pool, c.before, c.after) for c in changes] == [
        (job, "user", State.QUEUED, State.RUNNING),
        (job, "user", State.RUNNING, State.FAILED),
        (job, "user", State.FAILED, State.QUEUED),
    ]


def test_an_end_that_cannot_be_journaled_leaves_the_job_lost_not_running(bench, monkeypatch):
    job = bench.add()
    bench.book.wait("conn", 7, {job})
    bench.turn()
    bench.fake.begin(job)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bench.journal, "close_attempt", broken)
    bench.fake.finish(job)
    row = bench.row(job)
    assert row["state"] == "lost"
    assert row["reason"] == "gsup could not record its end (RuntimeError: disk on fire)"
    assert bench.answers == [{"ok": True, "states": {job: "lost"}}]


def test_what_an_executor_reports_is_stored_whatever_its_types(bench):
    job = bench.add()
    bench.turn()
    bench.fake.begin(job)
    bench.fake.finish(job, Ending.FAILED, "bad \udcff text", error={1, 2}, traceback=2**70,
                      usage={"exit_status": 3, "cpu_seconds": float("nan")})  # fmt: skip
    bench.journal.commit()
    row = bench.row(job)
    assert (row["state"], row["reason"], row["error"]) == ("failed", "bad ? text", "{1, 2}")
    assert row["traceback"] == str(2**70)
    (attempt,) = bench.attempts(job)
    assert (attempt["exit_status"], attempt["cpu_seconds"]) == (3, None)


def test_halting_requeues_what_ran_and_takes_back_what_did_not(bench):
    running, held = bench.add(), bench.add()
    bench.turn()
    bench.fake.begin(running)
    bench.book.halt("daemon stopped before it ended")
    assert (bench.row(running)["state"], bench.row(running)["attempts"]) == ("queued", 0)
    assert bench.row(held)["state"] == "queued" and bench.attempts(held) == []
    (attempt,) = bench.attempts(running)
    assert (attempt["outcome"], attempt["charged"]) == ("queued", 0)


def test_cancelling_a_held_job_ends_it_when_the_executor_gives_it_back(bench):
    job = bench.add()
    bench.turn()
    flight = bench.book.flight(job, "user")
    assert flight is not None
    bench.book.stop_flight(flight, Stop.CANCEL)
    assert bench.row(job)["state"] == "queued"
    bench.fake.deliver()
    assert (bench.row(job)["state"], bench.row(job)["reason"]) == (
        "cancelled",
        "cancelled before it started",
    )


def test_a_held_job_on_its_way_back_does_not_hide_the_rest_of_the_queue(tmp_path):
    bench = Bench(tmp_path, slots=3)
    a, b, c, d = (bench.add() for _ in range(4))
    bench.turn()
    bench.fake.begin(a)
    flight = bench.book.flight(c, "user")
    assert flight is not None
    bench.book.stop_flight(flight, Stop.CANCEL)  # `c` is cancelled; its executor has it still
    bench.fake.finish(a)
    bench.turn()
    bench.fake.deliver()
    bench.turn()
    assert bench.row(c)["state"] == "cancelled" and bench.fake.submitted == [a, b, c, d]


def test_a_delayed_retry_that_falls_due_comes_before_the_held_jobs(tmp_path):
    bench = Bench(tmp_path, slots=3)
    urgent = bench.add(priority=0, retries=1, retry_delay=10)
    bench.turn()
    bench.fake.begin(urgent)
    bench.fake.finish(urgent, Ending.FAILED, "boom")
    for _ in range(10):
        bench.add(priority=5)
    bench.turn()
    bench.clocks.advance(11)
    bench.turn()
    bench.fake.finish(bench.fake.begin())  # room for one
    bench.turn()
    assert bench.fake.submitted.count(urgent) == 2


def test_a_timeout_is_for_its_own_attempt_only(tmp_path):
    bench = Bench(tmp_path, slots=2)
    job = bench.add(timeout=10, retries=2)
    bench.turn()
    bench.fake.finish(job, Ending.FAILED, "could not be started")  # no start reported
    bench.turn()
    bench.clocks.advance(5)
    bench.fake.begin(job)  # the retry
    bench.clocks.advance(5.5)
    assert bench.fake.stopped == []
    bench.clocks.advance(5)
    assert bench.fake.stopped == [job]


def test_each_delayed_retry_is_looked_at_when_it_falls_due(tmp_path):
    bench = Bench(tmp_path, slots=3)
    soon = bench.add(priority=0, retries=1, retry_delay=10)
    later = bench.add(priority=0, retries=1, retry_delay=20)
    bench.turn()
    for job in (soon, later):
        bench.fake.begin(job)
        bench.fake.finish(job, Ending.FAILED, "boom")
    for _ in range(10):
        bench.add(priority=5)
    bench.turn()
    for seconds in (11, 10):
        bench.clocks.advance(seconds)
        bench.turn()
        bench.fake.finish(bench.fake.begin())
        bench.turn()
    assert bench.fake.submitted.count(soon) == bench.fake.submitted.count(later) == 2


def test_timers_fire_in_order_and_cancelled_ones_do_not_pile_up():
    now = [0.0]
    timers = Timers(clock=lambda: now[0])
    fired: list[int] = []
    kept = [timers.call_at(float(i), lambda i=i: fired.append(i)) for i in range(0, 300, 3)]
    for i in range(1000):  # a timeout per job, each cancelled when its job ends
        timers.call_at(1e6 + i, lambda: fired.append(-1)).cancel()
    assert len(timers) < 300
    kept[1].cancel()
    now[0] = 10.0
    timers.fire_due()
    assert fired == [0, 6, 9]


def test_a_turn_that_sqlite_gave_up_inside_a_request_is_written_again(bench):
    """On a full disk SQLite may roll back the whole transaction inside a request: the
    request is refused, and the turn's earlier writes are written again at once."""
    first = bench.add()  # a write of the turn before the request
    with pytest.raises(sqlite3.OperationalError), bench.journal.savepoint():
        bench.journal.set_frozen("user", True)
        bench.journal.conn.execute("ROLLBACK")  # what SQLite does itself
        raise sqlite3.OperationalError("database or disk is full")
    assert bench.journal.failure is None and bench.row(first)["state"] == "queued"
    second = bench.add()
    bench.journal.commit()
    assert bench.row(second)["state"] == "queued"
    assert not queries.pool_frozen(bench.journal.reader, "user")  # the request left nothing


def test_a_failed_request_alone_in_its_turn_does_not_wedge_the_journal(bench):
    bench.journal.commit()
    with pytest.raises(sqlite3.OperationalError), bench.journal.savepoint():
        bench.journal.set_frozen("user", True)
        bench.journal.conn.execute("ROLLBACK")
        raise sqlite3.OperationalError("database or disk is full")
    job = bench.add()
    bench.journal.commit()
    assert bench.journal.failure is None and bench.row(job)["state"] == "queued"


def test_waiters_hear_of_their_own_jobs_once_all_have_ended(bench):
    a, b, c = bench.add(), bench.add(), bench.add()
    bench.book.wait("one", 1, {a, b})
    bench.book.wait("two", 2, {b})
    bench.book.wait("two", 3, {a, c})
    bench.book.wait("gone", 4, {b})
    bench.book.forget("gone")
    bench.turn()
    for job in (b, a):
        bench.fake.begin(job)
        bench.fake.finish(job)
    assert bench.answered == [("two", 2), ("one", 1)]
    assert bench.answers == [
        {"ok": True, "states": {b: "done"}},
        {"ok": True, "states": {a: "done", b: "done"}},
    ]
    bench.book.halt("stopping")  # c never ended: its waiter hears that the daemon stopped
    assert bench.answered[2:] == [("two", 3)]
    assert bench.answers[2:] == [{"ok": False, "error": "daemon stopped"}]
    assert len(bench.book.waiters) == 0
