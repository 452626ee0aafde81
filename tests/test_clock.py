"""Job timeouts follow the monotonic clock, whatever the wall clock does.

The daemon runs under libfaketime with its wall clock (only) offset by what the test
writes into a file, as when an administrator or NTP steps the clock. The jobs are
commands: they get the environment of `gsup add`, so only the daemon and its pools
run under libfaketime (whose sleeps fail in Python).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Daemon, wait_until

FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")  # apt: libfaketime


@pytest.fixture
def clock_offset(home: Path) -> Path:
    offset = home.parent / "clock-offset"
    offset.write_text("+0\n")
    return offset


@pytest.fixture
def stepped_daemon(env: dict[str, str], home: Path, clock_offset: Path):
    assert FAKETIME.exists(), f"{FAKETIME} is needed (apt install libfaketime): .ci/run installs it"
    faked = dict(
        env,
        LD_PRELOAD=str(FAKETIME),
        FAKETIME_TIMESTAMP_FILE=str(clock_offset),
        FAKETIME_NO_CACHE="1",  # each read of the clock reads the file
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    daemon = Daemon(home, faked).start()
    yield daemon
    daemon.kill()


def test_a_timeout_fires_on_time_when_the_clock_steps_back(stepped_daemon, gsup, clock_offset):
    job = gsup.add("--timeout", "2", "--cmd", "--", "sleep", "30")
    wait_until(lambda: gsup.running(job), what="the job to start")
    clock_offset.write_text("-1h\n")
    assert gsup.wait(job) == {job: "timeout"}
    assert gsup.show(job)["reason"] == "timed out after 2s"


def test_a_timeout_does_not_fire_early_when_the_clock_steps_forward(
    stepped_daemon, gsup, clock_offset
):
    job = gsup.add("--timeout", "600", "--cmd", "--", "sleep", "3")
    wait_until(lambda: gsup.running(job), what="the job to start")
    clock_offset.write_text("+1h\n")
    assert gsup.wait(job) == {job: "done"}


def test_a_delayed_retry_keeps_its_delay_when_the_clock_steps_back(
    stepped_daemon, gsup, clock_offset
):
    job = gsup.add("--retries", "1", "--retry-delay", "2", "--cmd", "--", "false")
    wait_until(lambda: gsup.show(job)["attempts"] == 1, what="the first run to fail")
    clock_offset.write_text("-1h\n")
    assert gsup.wait(job) == {job: "failed"}  # retried 2 s later, not an hour and 2 s
    assert gsup.show(job)["attempts"] == 2


def test_a_delayed_retry_does_not_come_early_when_the_clock_steps_forward(
    stepped_daemon, gsup, clock_offset
):
    job = gsup.add("--retries", "1", "--retry-delay", "3", "--cmd", "--", "false")
    wait_until(lambda: gsup.show(job)["attempts"] == 1, what="the first run to fail")
    clock_offset.write_text("+1h\n")
    gsup("status")  # a turn of the daemon, in which the retry would be due by the wall clock
    shown = gsup.show(job)
    assert (shown["state"], shown["attempts"]) == ("queued", 1)
    assert stepped_daemon.said("the wall clock was stepped +36")  # +3600.0s, or near
    assert gsup.wait(job) == {job: "failed"}
    assert gsup.show(job)["attempts"] == 2
