"""Clients that do not read, send lines that never end, or hold connections: the
daemon's memory and descriptors stay bounded, and other clients are served."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
from pathlib import Path

import pytest
from conftest import wait_until

from gsup.client import Client
from gsup.config import POOL_NAMES
from gsup.errors import GsupError
from gsup.supervisor import connections

BIG_RESULT = 900_000  # characters: just under the size a reply carries inline
MB = 1 << 20


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def _connect(home: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)  # a hung daemon fails the test rather than hanging it
    sock.connect(str(home / "gsup.sock"))
    return sock


def _request(sock: socket.socket, verb: str, **fields: object) -> dict:
    """One request and its reply, on a raw connection."""
    with contextlib.suppress(BrokenPipeError):  # refused on arrival: the reply is there
        sock.sendall(json.dumps({"verb": verb, "id": 1, **fields}).encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return json.loads(data)


def _big_result_job(gsup, workdir: Path) -> int:
    (workdir / "big.py").write_text("def text(n):\n    return 'x' * n\n")
    job = gsup.add("big:text", str(BIG_RESULT))
    assert gsup.wait(job) == {job: "done"}
    return job


def _get_requests(job: int, count: int) -> bytes:
    return b"".join(
        json.dumps({"verb": "get", "id": i, "job": job}).encode() + b"\n" for i in range(count)
    )


def _read_to_end(sock: socket.socket) -> int:
    """Bytes the daemon sent before it closed the connection."""
    total = 0
    try:
        while chunk := sock.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


def test_a_client_that_does_not_read_is_dropped_past_its_backlog(daemon, gsup, home, workdir):
    job = _big_result_job(gsup, workdir)
    asked = connections.MAX_CLIENT_BACKLOG // BIG_RESULT * 3  # three times what it may hold
    greedy = _connect(home)
    greedy.sendall(_get_requests(job, asked))
    assert daemon.said("did not read its replies")
    with _connect(home) as other:  # others are answered meanwhile
        assert len(_request(other, "get", job=job)["job"]["result"]) == BIG_RESULT + 2
    received = _read_to_end(greedy)  # the connection ends, short of all it asked for
    assert received < connections.MAX_CLIENT_BACKLOG + 2 * BIG_RESULT + MB
    assert daemon.process.poll() is None


def test_many_clients_that_do_not_read_cannot_exhaust_memory(daemon, gsup, home, workdir):
    job = _big_result_job(gsup, workdir)
    clients, each = 100, 10  # 900 MB of replies asked for, none read
    gib = 1 << 30
    resource.prlimit(daemon.pid, resource.RLIMIT_AS, (gib, gib))
    baseline = _status_kb(daemon.pid, "VmRSS")
    greedy = [_connect(home) for _ in range(clients)]
    for sock in greedy:
        sock.sendall(_get_requests(job, each))
    kept = connections.MAX_TOTAL_BACKLOG // (each * BIG_RESULT) + 1
    wait_until(
        lambda: daemon.output.count("did not read its replies") >= clients - kept,
        what="the daemon to drop the clients over its total backlog",
    )
    with _connect(home) as other:
        assert len(_request(other, "get", job=job)["job"]["result"]) == BIG_RESULT + 2
    grown_mb = (_status_kb(daemon.pid, "VmHWM") - baseline) / 1024
    assert grown_mb < clients * each * BIG_RESULT / MB / 3, f"grew {grown_mb:.0f} MB"
    assert daemon.process.poll() is None
    for sock in greedy:
        sock.close()


def test_unfinished_lines_are_bounded_over_all_clients(daemon, home):
    clients, each = 40, 8 * MB - 1  # 320 MB of lines that never end, each within a message
    baseline = _status_kb(daemon.pid, "VmRSS")
    partial = []
    for _ in range(clients):
        sock = _connect(home)
        with contextlib.suppress(BrokenPipeError):  # refused on the way: it reads the reply
            sock.sendall(b'{"verb": "ping", "pad": "' + b"x" * (each - 25))
        partial.append(sock)
    with _connect(home) as other:
        assert _request(other, "ping")["ok"]
    grown_mb = (_status_kb(daemon.pid, "VmHWM") - baseline) / 1024
    assert grown_mb < clients * each / MB / 2, f"grew {grown_mb:.0f} MB"
    refused = 0
    for sock in partial:
        sock.settimeout(0)
        with contextlib.suppress(BlockingIOError, ConnectionResetError):
            refused += b"unfinished" in sock.recv(1 << 16)
        sock.close()
    assert refused >= clients - connections.MAX_TOTAL_INPUT // each
    assert daemon.process.poll() is None


def test_a_line_that_stalls_is_refused(daemon, home):
    with _connect(home) as stalled:
        stalled.sendall(b'{"verb": "ping", "id": 1')
        reply = json.loads(stalled.recv(1 << 16))
    assert reply == {
        "id": None,
        "ok": False,
        "error": f"message unfinished: nothing more came for {connections.INPUT_STALL:g}s",
    }


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return {int(child) for child in children.read().split()}


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_clients_cannot_take_the_descriptors_a_pool_restart_needs(daemon, gsup, home):
    pools = wait_until(
        lambda: len(_children(daemon.pid)) == len(POOL_NAMES) and _children(daemon.pid)
    )
    limit = _open_fds(daemon.pid) + 100
    resource.prlimit(daemon.pid, resource.RLIMIT_NOFILE, (limit, limit))
    idle, refusal = [], None
    while refusal is None and len(idle) < limit:
        sock = _connect(home)
        reply = _request(sock, "ping")
        if reply["ok"]:
            idle.append(sock)
        else:
            refusal = reply["error"]
            sock.close()
    assert refusal == f"too many clients: {len(idle)} connected, limit {len(idle)}"
    result = gsup("add", "jobs:add", "1", check=False)
    assert (result.returncode, result.stderr) == (
        1,
        f"gsup: error: {refusal}\n",
    )

    with Client(home) as late:  # turned away before it sent anything
        select.select([late._connect()], [], [], 30)
        with pytest.raises(GsupError, match=f"^{refusal}$"):
            late.ping()

    victim = min(pools)
    os.kill(victim, 9)
    wait_until(lambda: len(_children(daemon.pid) - pools) == 1, what="the pool's restart")
    assert "cannot start pool" not in daemon.output
    # Room for the CLI's connections and the new pool process (four descriptors)
    # that the job's import context takes, which lowers the limit by as many.
    fds, leaving = _open_fds(daemon.pid), 8
    for sock in idle[:leaving]:
        sock.close()
    wait_until(lambda: _open_fds(daemon.pid) == fds - leaving, what="the daemon to close them")
    assert gsup.run("jobs:add", "1") == "done"
    assert daemon.process.poll() is None
    for sock in idle[leaving:]:
        sock.close()
