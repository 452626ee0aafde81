"""A full disk: new jobs are refused with a clear error, the daemon stays up, and no
accepted job is lost or damaged. The state dir is a small tmpfs of its own."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import threading
from dataclasses import replace

import pytest
from conftest import Daemon, wait_until

from gsup.client import Client, GsupError
from gsup.config import POOL_NAMES
from gsup.specs import call_spec, command_spec

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="mounting a tmpfs needs root")

SIZE_MB = 16


@pytest.fixture
def small_home(home):
    mount = home.parent / "small"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(mount)], check=True
    )
    yield mount / "state"
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _start_daemon(home, env: dict[str, str], min_free_mb: int) -> Daemon:
    """A daemon on the small tmpfs, keeping `min_free_mb` for the jobs it has."""
    home.mkdir()
    (home / "gsup.toml").write_text(f"min_free_mb = {min_free_mb}\n")
    env["GSUP_HOME"] = str(home)
    return Daemon(home, env).start()


def _fill_with_jobs(client: Client, workdir) -> tuple[list[int], str]:
    """Add jobs with big arguments until the daemon refuses; the ids and the refusal."""
    ballast = "x" * 20_000
    accepted: list[int] = []
    while True:
        specs = [
            call_spec("jobs:add", (1,), {"y": 0, "ballast": ballast}, path=[str(workdir)])
            for _ in range(20)
        ]
        try:
            accepted += client.add(specs)
        except GsupError as exc:
            return accepted, str(exc)


def _fill_disk(filler) -> None:
    with open(filler, "wb") as f:  # take every free byte
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError:
            pass


def test_a_full_disk_refuses_new_jobs_and_keeps_the_accepted_ones(small_home, env, workdir):
    (workdir / "jobs.py").write_text("def add(x, y=0, ballast=''):\n    return x + y\n")
    daemon = _start_daemon(small_home, env, min_free_mb=6)
    try:
        with Client(small_home) as client:
            client.freeze(None)
            accepted, refusal = _fill_with_jobs(client, workdir)
            assert "is nearly full" in refusal and "kept for the jobs already accepted" in refusal
            assert len(accepted) > 100
            assert client.ping()["pid"] == daemon.pid  # still up
            client.freeze(None, False)
            states = client.wait(accepted, timeout=120)
        assert set(states.values()) == {"done"}
    finally:
        daemon.stop(signal.SIGTERM)
    with sqlite3.connect(small_home / "journal.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone() == (
            len(accepted),
        )


def test_a_turn_that_cannot_be_written_waits_for_room_then_goes_on(small_home, env, workdir):
    daemon = _start_daemon(small_home, env, min_free_mb=0)
    filler = small_home.parent / "filler"
    try:
        with Client(small_home) as client:
            client.freeze(None)
            job = client.add([call_spec("jobs:add", (2,), path=[str(workdir)])])[0]
            _fill_disk(filler)
            replies: list = []
            unfreeze = threading.Thread(target=lambda: replies.append(client.freeze(None, False)))
            unfreeze.start()
            wait_until(lambda: "cannot write the journal" in daemon.output, what="the stall")
            assert replies == []  # not acknowledged while it is not on disk
            with Client(small_home) as other, pytest.raises(GsupError) as refused:
                job3 = call_spec("jobs:add", (3,), path=[str(workdir)]).to_wire()
                other.request("add", timeout=10, jobs=[job3])  # answered at once
            assert str(refused.value).startswith("the daemon cannot write its journal (")
            filler.unlink()
            unfreeze.join(30)
            assert replies == [dict.fromkeys(POOL_NAMES, False)]
            wait_until(lambda: "the journal is writable again" in daemon.output, what="the line")
            assert client.wait([job], timeout=60) == {job: "done"}
    finally:
        daemon.stop(signal.SIGTERM)
    with sqlite3.connect(small_home / "journal.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_request_that_would_use_up_the_reserve_is_refused_whole(small_home, env, workdir):
    daemon = _start_daemon(small_home, env, min_free_mb=6)
    try:
        with Client(small_home) as client:
            specs = [
                call_spec("jobs:add", (1,), {"ballast": "x" * 1000}, path=[str(workdir)])
                for _ in range(5_000)
            ]
            with pytest.raises(GsupError, match="is nearly full"):
                client.add(specs)
            assert client.add(specs[:10])  # a small one still fits
    finally:
        daemon.stop(signal.SIGTERM)
    with sqlite3.connect(small_home / "journal.sqlite") as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (10,)


def test_commands_environments_count_whole_against_the_reserve(small_home, env):
    daemon = _start_daemon(small_home, env, min_free_mb=6)
    try:
        with Client(small_home) as client:
            big = {f"VARIABLE_{i}": "v" * 1_000 for i in range(150)}  # 150 KB each
            specs = [replace(command_spec(["true"]), env=big) for _ in range(50)]
            with pytest.raises(GsupError, match="is nearly full"):
                client.add(specs)
            assert client.ping()["pid"] == daemon.pid
    finally:
        daemon.stop(signal.SIGTERM)
    with sqlite3.connect(small_home / "journal.sqlite") as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_job_output_stops_at_the_reserve_and_the_daemon_answers(small_home, env, workdir):
    (workdir / "loud.py").write_text(
        "def shout():\n    for _ in range(400_000):\n        print('x' * 99)\n"
    )  # 40 MB, on a 16 MB disk
    daemon = _start_daemon(small_home, env, min_free_mb=6)
    try:
        with Client(small_home) as client:
            call = client.add([call_spec("loud:shout", (), path=[str(workdir)])])[0]
            command = client.add([command_spec(["sh", "-c", "yes | head -c 40000000"])])[0]
            assert client.wait([call, command], timeout=120) == {call: "done", command: "done"}
            stats = os.statvfs(small_home)
            assert stats.f_bavail * stats.f_frsize > 4_000_000  # the journal's room is kept
            assert client.ping()["pid"] == daemon.pid
            with pytest.raises(GsupError, match="is nearly full"):  # an answer, at once
                client.add([call_spec("jobs:add", (1,), path=[str(workdir)])])
    finally:
        daemon.stop(signal.SIGTERM)
    for job in (call, command):
        (log,) = (small_home / "logs").glob(f"{job}.*.out")
        said = log.read_text().rsplit("\n", 2)[-2]
        assert said.startswith("[gsup: the rest of this output is dropped: the disk is nearly full")
