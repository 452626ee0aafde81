"""Hostile clients and jobs: huge or odd texts and numbers never break a reply, the
journal, the daemon or the terminal."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from conftest import journal_rows

from gsup import BadOptions, JobFailed, Queues


def _strict_json(line: bytes) -> dict[str, Any]:
    """A reply as JSON allows it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in a reply")

    return json.loads(line, parse_constant=refuse)


def _exchange(home, *requests: bytes) -> list[dict[str, Any]]:
    """Send requests on one connection, one at a time; each reply, strictly parsed."""
    replies = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(home / "gsup.sock"))
        stream = sock.makefile("rb")
        for request in requests:
            sock.sendall(request + b"\n")
            replies.append(_strict_json(stream.readline()))
    return replies


# --- finding 24: non-finite numbers ----------------------------------------------------


@pytest.mark.parametrize("bad_id", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1.5"])
def test_a_request_id_that_is_not_an_integer_is_refused_and_the_connection_goes_on(daemon, bad_id):
    refused, answered = _exchange(
        daemon.home, b'{"verb": "ping", "id": ' + bad_id + b"}", b'{"verb": "ping", "id": 7}'
    )
    assert refused == {
        "id": None,
        "ok": False,
        "error": "a request id must be an integer of 64 bits",
    }
    assert (answered["id"], answered["ok"]) == (7, True)


CMD = b'{"kind": "cmd", "argv": ["true"], '


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b'{"verb": "add", "id": 1, "jobs": [' + CMD + b'"timeout": NaN}]}', "timeout must be"),
        (b'{"verb": "add", "id": 1, "jobs": [' + CMD + b'"priority": NaN}]}', "priority must"),
        (b'{"verb": "add", "id": 1, "jobs": [' + CMD + b'"backoff": Infinity}]}', "backoff must"),
        (
            b'{"verb": "add", "id": 1, "defaults": {"retry_delay": -Infinity}, "jobs": [{"kind":'
            b' "cmd", "argv": ["true"]}]}',
            "retry_delay must be",
        ),
        (b'{"verb": "cancel", "id": 1, "job": NaN}', "job id must be a positive integer"),
        (b'{"verb": "wait", "id": 1, "jobs": [1, Infinity]}', "job id must be a positive integer"),
        (b'{"verb": "prune", "id": 1, "older_than": NaN}', "older_than must be"),
    ],
)
def test_a_non_finite_number_in_any_field_is_refused(daemon, gsup, request_line, error):
    refused, answered = _exchange(daemon.home, request_line, b'{"verb": "ping", "id": 2}')
    assert (refused["id"], refused["ok"]) == (1, False)
    assert refused["error"].startswith(error)
    assert (answered["id"], answered["ok"]) == (2, True)
    assert gsup("jobs", "--json").stdout.strip() == "[]"


CALL = b'{"target": "os:getpid", "arguments": "((), {})", '


@pytest.mark.parametrize(
    ("field", "error"),
    [
        (b'"path": ["x\\u0000"]', "path must be a list of UTF-8 strings without NUL"),
        (b'"path": ["\\ud800"]', "path must be a list of UTF-8 strings without NUL"),
        (b'"cwd": "/tmp\\u0000"', "cwd must be a UTF-8 string without NUL"),
    ],
    ids=["NUL", "lone surrogate", "cwd"],
)
def test_a_path_the_system_cannot_take_is_refused_before_any_pool_sees_it(daemon, gsup, field,
                                                                          error):  # fmt: skip
    request = b'{"verb": "add", "id": 1, "jobs": [' + CALL + field + b"}]}"
    (refused,) = _exchange(daemon.home, request)
    assert (refused["ok"], refused["error"]) == (False, error)
    assert gsup.run("--cmd", "--", "true") == "done"
    assert "died" not in daemon.output  # no pool died on it


# --- finding 23: numbers beyond what the daemon and the client can use ---------------


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b'{"verb": "prune", "id": 1, "older_than": 1e308}', "older_than must be a positive"),
        (
            b'{"verb": "wait", "id": 1, "jobs": [' + b"1," * 100_000 + b"1]}",
            "at most 100000 jobs per request",
        ),
        (b'{"verb": "add", "id": 1, "jobs": [' + CMD + b'"retries": 1180591620717411303424}]}',
         "retries must be 0 to 1,000,000"),
        (b'{"verb": "get", "id": 1, "job": 1180591620717411303424}', "job id must be"),
    ],
    ids=["older_than", "wait", "retries", "job id"],
)  # fmt: skip
def test_a_number_beyond_its_bounds_is_refused_and_the_daemon_lives(daemon, gsup, request_line,
                                                                    error):  # fmt: skip
    refused, answered = _exchange(daemon.home, request_line, b'{"verb": "ping", "id": 2}')
    assert (refused["id"], refused["ok"]) == (1, False)
    assert refused["error"].startswith(error)
    assert (answered["id"], answered["ok"]) == (2, True)
    assert gsup.run("--cmd", "--", "true") == "done"


def test_huge_numbers_given_to_the_api_are_one_line_errors_or_waits_without_end(daemon, home):
    queues = Queues(home)
    with pytest.raises(BadOptions) as refused:
        queues.add("os:getpid", retries=2**70)
    assert str(refused.value) == f"retries must be 0 to 1,000,000, not {2**70}"
    job = queues.add("os:getpid", args=())
    assert isinstance(job.result(timeout=1e308), int)
    assert job.wait(timeout=2**1100) == "done"


def test_huge_numbers_on_the_command_line_are_one_line_errors_or_waits_without_end(daemon, gsup):
    listed = gsup("jobs", "--limit", "99999999999999999999", check=False)
    assert (listed.returncode, listed.stdout) == (2, "")
    assert listed.stderr == (
        "gsup: error: Invalid value for '--limit' / '-n': 99999999999999999999 is above 1e+09"
        " (see: gsup jobs --help)\n"
    )
    job = gsup.add("--cmd", "--", "true")
    assert gsup("wait", str(job), "--timeout", "1e308").stdout == f"{job}: done\n"
    stopped = gsup("stop", "--timeout", "1e308")
    assert stopped.stdout.splitlines()[-1] == "stopped"
    assert daemon.process.wait(30) == 0


# --- finding 22: job texts on a terminal ---------------------------------------------

HOSTILE = "oops [/bold] \x1b[2J\x1b]0;title\x07 \u202egnp.exe \x9b1m"
SHOWN = "oops [/bold] \\x1b[2J\\x1b]0;title\\x07 \\u202egnp.exe \\x9b1m"


def test_job_texts_are_printed_as_text_with_control_characters_visible(daemon, gsup, workdir):
    (workdir / "hostile.py").write_text(f"def fail():\n    raise ValueError({HOSTILE!r})\n")
    failed = gsup.add("--name", HOSTILE, "hostile:fail")
    assert gsup.wait(failed) == {failed: "failed"}
    gsup("freeze")
    queued = gsup.add("--cmd", "--", "echo", HOSTILE)

    listed = gsup("jobs").stdout.splitlines()
    assert f" echo '{SHOWN}' " in listed[1]
    assert listed[2].endswith(f"ValueError: {SHOWN}")
    shown = gsup("show", str(failed)).stdout.splitlines()
    assert f"name      {SHOWN}" in shown
    assert f"error     ValueError: {SHOWN}" in shown
    assert shown[-1] == f"ValueError: {SHOWN}"  # the traceback's last line
    assert f"  #{queued} [p5] echo '{SHOWN}'" in gsup("queues").stdout.splitlines()
    for command in (["jobs"], ["show", str(failed)], ["show", str(queued)], ["queues"]):
        assert "\x1b" not in gsup(*command).stdout  # piped: not even colours

    assert gsup.show(failed)["error"] == f"ValueError: {HOSTILE}"  # --json stays exact
    assert gsup.show(failed)["name"] == HOSTILE
    assert json.loads(gsup("jobs", "--json").stdout)[0]["display"] == f"echo '{HOSTILE}'"


# --- finding 20: huge error texts ------------------------------------------------------

MAX_ERROR_STORED = 16 * 1024  # characters, with the note that says what was cut
MAX_TRACEBACK_STORED = 64 * 1024


def _add_raw(home, job: dict[str, Any]) -> int:
    (reply,) = _exchange(home, json.dumps({"verb": "add", "id": 1, "jobs": [job]}).encode())
    assert reply["ok"], reply["error"][:200]
    return reply["ids"][0]


def _stored_text_lengths(home, job: int) -> list[int]:
    """The longest reason, error, traceback and event text the journal holds of `job`."""
    return journal_rows(
        home,
        "SELECT max(length(reason)), max(length(error)), max(length(traceback)),"
        " (SELECT max(length(why)) FROM events WHERE job = jobs.id),"
        " (SELECT max(length(reason)) FROM attempts WHERE job = jobs.id) FROM jobs WHERE id = ?",
        (job,),
    )[0]


def test_huge_error_texts_are_stored_cut_and_raise_job_failed(daemon, home, workdir):
    (workdir / "loud.py").write_text("def fail(n):\n    raise ValueError('x' * n)\n")
    call = {"cwd": str(workdir), "path": [str(workdir)]}
    huge_message = _add_raw(
        home, {**call, "target": "loud:fail", "arguments": "((20_000_000,), {})"}
    )
    huge_target = _add_raw(
        home, {**call, "target": "x" * 7_000_000 + ":f", "arguments": "((), {})"}
    )
    huge_program = _add_raw(home, {"kind": "cmd", "argv": ["y" * 7_000_000], "cwd": "/"})
    queues = Queues(home)
    for job, start in [
        (huge_message, f"job {huge_message} ended failed: ValueError: xxx"),
        (huge_target, f"job {huge_target} ended failed: TargetError: cannot import module 'xxx"),
        (huge_program, f"job {huge_program} ended failed: command not found: yyy"),
    ]:
        with pytest.raises(JobFailed) as failed:
            queues.job(job).result(timeout=60)
        message = str(failed.value)
        assert message.startswith(start)
        assert message.endswith(" characters cut]")  # a cut says so
        reason, error, traceback, why, attempt_reason = _stored_text_lengths(home, job)
        assert max(reason, error, why, attempt_reason) <= MAX_ERROR_STORED
        assert (traceback or 0) <= MAX_TRACEBACK_STORED


# --- finding 21: replies within a message ----------------------------------------------


def test_a_result_that_doubles_when_escaped_comes_back_whole(daemon, home, workdir, monkeypatch):
    (workdir / "escapes.py").write_text(
        "class Raw:\n    def __repr__(self):\n        return '\\x01' * 999_000\n\n"
        "def backslashes(n):\n    return '\\\\' * n\n\ndef raw():\n    return Raw()\n"
    )
    monkeypatch.syspath_prepend(str(workdir))
    queues = Queues(home)
    assert queues.add("escapes:backslashes", args=(2_000_000,)).result(60) == "\\" * 2_000_000
    assert queues.add("escapes:backslashes", args=(400_000,)).result(60) == "\\" * 400_000
    assert queues.add("escapes:raw").result(60) == "\x01" * 999_000  # 6 MB as JSON


def test_a_refusal_quotes_a_huge_value_short(daemon):
    huge = json.dumps("\\" * 3_000_000).encode()
    refusals = _exchange(
        daemon.home,
        b'{"verb": "cancel", "id": 1, "job": ' + huge + b"}",
        b'{"verb": ' + huge + b', "id": 2}',
        b'{"verb": "add", "id": 3, "jobs": [' + CMD + b'"pool": ' + huge + b"}]}",
    )
    quoted = "'" + "\\" * 27 + "..." + "\\" * 28 + "'"  # 60 characters of its repr
    assert [reply["error"] for reply in refusals] == [
        f"job id must be a positive integer, not {quoted}",
        f"unknown request {quoted}",
        f"unknown queue {quoted}; choose from user, monitoring, process, slurm, dask",
    ]


def test_a_name_longer_than_a_reply_should_carry_is_refused(daemon, home):
    with pytest.raises(BadOptions) as refused:
        Queues(home).add("os:getpid", name="\\" * 1_001)
    assert str(refused.value) == "name must be a string of at most 1,000 characters"
