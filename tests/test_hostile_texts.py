"""Hostile clients and jobs: huge or odd texts and numbers never break a reply, the
journal, the daemon or the terminal."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest


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
