"""The pure parts, without a daemon: life-cycle rules, retry policy, protocol rules,
argument parsing and recovery planning. Each runs in microseconds."""

from __future__ import annotations

import pytest

from gsup import recovery
from gsup.journal.pending import Unfinished
from gsup.lifecycle import (
    MAX_RETRY_DELAY,
    Ending,
    Policy,
    Settled,
    Stop,
    TransitionError,
    check_transition,
    lost_reason,
    settle,
    should_retry,
)
from gsup.protocol import JobSpec, LineReader, ProtocolError, check_request, is_retry_cause
from gsup.states import State
from gsup.targets import TargetError, literal_text, parse_keyword, parse_target, parse_value

# --- the life-cycle --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, State.QUEUED),
        (State.QUEUED, State.RUNNING),
        (State.QUEUED, State.CANCELLED),
        (State.RUNNING, State.DONE),
        (State.RUNNING, State.QUEUED),
        (State.FAILED, State.QUEUED),
        (State.CANCELLED, State.QUEUED),
    ],
)
def test_allowed_transitions(before, after):
    check_transition(before, after)  # raises if not allowed


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, State.RUNNING),
        (State.QUEUED, State.DONE),
        (State.DONE, State.QUEUED),
        (State.FAILED, State.RUNNING),
        (State.RUNNING, State.RUNNING),
    ],
)
def test_forbidden_transitions(before, after):
    with pytest.raises(TransitionError, match=f"a job cannot go from {before} to {after}"):
        check_transition(before, after)


@pytest.mark.parametrize(
    ("ending", "stop", "cancel_unstarted", "settled"),
    [
        (Ending.DONE, None, False, Settled(State.DONE, "why")),
        (Ending.FAILED, None, False, Settled(State.FAILED, "why")),
        (Ending.LOST, None, False, Settled(State.LOST, "why")),
        (Ending.INTERRUPTED, None, False, Settled(State.QUEUED, "why", charged=False)),
        (Ending.RECALLED, None, False, Settled(None, "why", charged=False)),
        (Ending.RECALLED, Stop.CANCEL, False,
         Settled(State.CANCELLED, "cancelled before it started", charged=False)),
        (Ending.RECALLED, None, True,
         Settled(State.CANCELLED, "cancelled before it started", charged=False)),
        (Ending.STOPPED, Stop.TIMEOUT, False, Settled(State.TIMEOUT, "timed out after 1.5s; why")),
        (Ending.INTERRUPTED, Stop.TIMEOUT, False,
         Settled(State.TIMEOUT, "timed out after 1.5s; why")),
        (Ending.STOPPED, Stop.CANCEL, False, Settled(State.CANCELLED, "cancelled by request; why")),
        (Ending.DONE, Stop.CANCEL, False, Settled(State.DONE, "why")),  # it finished first
    ],
)  # fmt: skip
def test_settle_maps_an_ending_on_the_next_state(ending, stop, cancel_unstarted, settled):
    assert settle(ending, "why", stop, 1.5, cancel_unstarted) == settled


def test_a_stop_without_a_reason_adds_none():
    assert settle(Ending.STOPPED, "stopped", Stop.CANCEL, None, False).why == "cancelled by request"


# --- retries ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "policy", "causes", "retried"),
    [
        (State.FAILED, Policy(retries=1), ("ValueError",), True),
        (State.FAILED, Policy(retries=1, attempts=2), ("ValueError",), False),  # used up
        (State.FAILED, Policy(retries=0, attempts=1), ("ValueError",), False),
        (State.TIMEOUT, Policy(retries=1, attempts=1), (), True),
        (State.CANCELLED, Policy(retries=5, attempts=1), (), False),  # never by policy
        (State.DONE, Policy(retries=5, attempts=1), (), False),
        (State.FAILED, Policy(retries=1, attempts=1, retry_on=("OSError",)),
         ("FileNotFoundError", "OSError", "Exception"), True),  # a subclass
        (State.FAILED, Policy(retries=1, attempts=1, retry_on=("OSError",)),
         ("ValueError", "Exception"), False),
        (State.FAILED, Policy(retries=1, attempts=1, retry_on=("mymod.Flaky",)),
         ("Flaky", "Exception", "mymod.Flaky", "builtins.Exception"), True),  # a dotted path
        (State.TIMEOUT, Policy(retries=1, attempts=1, retry_on=("OSError",)), (), False),
        (State.TIMEOUT, Policy(retries=1, attempts=1, retry_on=("timeout",)), (), True),
        (State.FAILED, Policy(retries=1, attempts=1, retry_on=("exit",)), ("exit",), True),
        (State.LOST, Policy(lost_count=2), (), True),  # on_lost=requeue, not yet poison
        (State.LOST, Policy(lost_count=3), (), False),  # poison
        (State.LOST, Policy(on_lost="fail"), (), False),
    ],
)  # fmt: skip
def test_should_retry(state, policy, causes, retried):
    assert should_retry(state, policy, causes) is retried


def test_retry_delays_grow_by_the_backoff_and_stop_at_a_day():
    delays = [Policy(retry_delay=2, backoff=3, attempts=n).delay() for n in (1, 2, 3)]
    assert delays == [2, 6, 18]
    assert Policy(retry_delay=10, backoff=1000, attempts=50).delay() == MAX_RETRY_DELAY


def test_lost_reasons_say_poison_or_on_lost():
    assert lost_reason(Policy(lost_count=3), "pool died") == (
        "poison: in flight during 3 deaths of its pool or the daemon (pool died)"
    )
    assert lost_reason(Policy(on_lost="fail"), "pool died") == "pool died; on_lost=fail"


# --- protocol rules ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"verb": "explode"}, "unknown request 'explode'"),
        ({"verb": 3}, "unknown request 3"),
        ({"verb": "add", "jobs": []}, "add needs a non-empty list of jobs"),
        ({"verb": "get", "job": 0}, "job id must be a positive integer, not 0"),
        ({"verb": "get", "job": True}, "job id must be a positive integer, not True"),
        ({"verb": "wait", "jobs": []}, "wait needs a non-empty list of job ids"),
        ({"verb": "freeze", "frozen": "yes"}, "frozen must be true or false"),
        (
            {"verb": "purge", "pool": "batch"},
            "unknown queue 'batch'; choose from user, monitoring, process",
        ),
        ({"verb": "stop", "now": 1}, "now must be true or false"),
    ],
)
def test_requests_are_checked(message, error):
    with pytest.raises(ProtocolError) as raised:
        check_request(message)
    assert str(raised.value) == error


CALL = {"kind": "call", "target": "m:f", "arguments": "((), {})"}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"priority": 10}, "priority must be 0-9, not 10"),
        ({"timeout": float("inf")}, "timeout must be a positive number of seconds up to"),
        ({"timeout": 0}, "timeout must be a positive number of seconds up to"),
        ({"retries": -1}, "retries must be 0 to 1,000,000, not -1"),
        ({"backoff": 0.5}, "backoff must be 1 to 1000"),
        ({"retry_on": ["Flaky"]}, "retry_on: each must be a built-in exception name"),
        ({"on_lost": "maybe"}, "on_lost must be one of requeue, fail"),
        ({"colour": "red"}, "unknown job fields: colour"),
        ({"target": ""}, "a call job needs a target"),
    ],
)
def test_job_fields_are_checked(fields, error):
    with pytest.raises(ProtocolError) as raised:
        JobSpec.from_wire({**CALL, **fields})
    assert str(raised.value).startswith(error)


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("OSError", True),
        ("KeyboardInterrupt", True),
        ("timeout", True),
        ("exit", True),
        ("mymod.Flaky", True),
        ("pkg.sub.Error", True),
        ("Flaky", False),  # not a built-in: give its dotted path
        ("len", False),  # a built-in, not an exception
        ("my mod.X", False),
        ("mod..X", False),
    ],
)
def test_what_retry_on_may_name(name, allowed):
    assert is_retry_cause(name) is allowed


def test_a_line_over_the_limit_is_refused_and_dropped():
    reader = LineReader(limit=10)
    with pytest.raises(ProtocolError, match="message larger than 10 bytes"):
        reader.feed(b"x" * 11)
    assert reader.feed(b'{"a": 1}\n') == [{"a": 1}]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"not json\n", "message is not JSON"),
        (b"[1, 2]\n", "message must be a JSON object"),
        (b"[" * 100_000 + b"\n", "message is nested too deeply"),
    ],
)
def test_lines_that_are_no_message(line, error):
    with pytest.raises(ProtocolError, match=error):
        LineReader(limit=1 << 20).feed(line)


# --- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("123", 123),
        ("0", 0),
        ("007", "007"),  # no literal: a string
        ("-5", -5),
        ("1.5", 1.5),
        ("[1, 2]", [1, 2]),
        ("{'a': 1}", {"a": 1}),
        ("hello", "hello"),
        ("None", None),
        ("True", True),
        ("not a literal(", "not a literal("),
    ],
)
def test_arguments_are_literals_else_strings(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_str_keeps_every_argument_a_string():
    assert parse_value("123", as_string=True) == "123"
    assert parse_keyword("n=5") == ("n", 5)
    assert parse_keyword("n=5", as_string=True) == ("n", "5")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("no_colon", "target 'no_colon' must look like pkg.module:function"),
        ("mod:", "target 'mod:' must look like pkg.module:function"),
        ("1mod:f", "target '1mod:f': '1mod' is not a Python name"),
        ("mod:f-g", "target 'mod:f-g': 'f-g' is not a Python name"),
    ],
)
def test_bad_targets(text, error):
    with pytest.raises(TargetError) as raised:
        parse_target(text)
    assert str(raised.value) == error


def test_targets_split_into_module_and_attribute():
    assert parse_target("pkg.mod:Class.method") == ("pkg.mod", "Class.method")


def test_literal_text_is_kept_only_when_it_reads_back_equal():
    assert literal_text((1, "a"), {"k": [2.5]}) == "((1, 'a'), {'k': [2.5]})"
    assert literal_text((object(),), {}) is None
    assert literal_text((float("nan"),), {}) is None  # nan != nan


# --- recovery planning -------------------------------------------------------------------


def _left(job: int, policy: Policy, attempt: int | None = 7) -> Unfinished:
    return Unfinished(job, "user", 5, None, policy, attempt, "user", "local", "Worker_0", 1.0)


class _Executor:
    def __init__(self, follows: bool) -> None:
        self.follows = follows

    def reattach(self, unfinished: Unfinished) -> bool:
        return self.follows


def test_recovery_plans_each_unfinished_job(monkeypatch):
    running = [
        _left(1, Policy()),  # requeued: lost with the daemon, not its fault
        _left(2, Policy(on_lost="fail")),  # must not run twice: ends lost
        _left(3, Policy(lost_count=3)),  # poison
    ]
    handed = [_left(4, Policy(), attempt=9), _left(5, Policy(on_lost="fail"), attempt=10)]
    monkeypatch.setattr(recovery, "unfinished", lambda conn: (5, running, handed))
    report = recovery.plan(None, {"user": _Executor(follows=False)})
    assert [(d.job.job, d.action, d.handed) for d in report.decisions] == [
        (4, recovery.REQUEUE, True),  # it may have started
        (5, recovery.STAYS_QUEUED, False),  # it cannot have: its start is journaled first
        (1, recovery.REQUEUE, False),
        (2, recovery.ENDS_LOST, False),
        (3, recovery.ENDS_LOST, False),
    ]
    assert report.summary() == (
        "recovery: 5 queued kept, 2 running requeued (4, 1), 2 running ended lost (2, 3),"
        " 1 queued handed over, not started (5)"
    )


def test_recovery_reattaches_what_its_executor_still_runs(monkeypatch):
    monkeypatch.setattr(recovery, "unfinished", lambda conn: (0, [_left(1, Policy())], []))
    report = recovery.plan(None, {"user": _Executor(follows=True)})
    assert [(d.job.job, d.action, d.why) for d in report.decisions] == [
        (1, recovery.REATTACHED, "on Worker_0")
    ]
