"""The local executor's own corner cases, driven in-process."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from gsup.config import Paths
from gsup.executors.local.executor import QUICK_DEATH, LocalPool, backoff
from gsup.settings import PoolSettings
from gsup.supervisor.loop import Loop


def test_a_pool_that_cannot_be_started_is_tried_again_later(tmp_path: Path, monkeypatch, capsys):
    def out_of_descriptors() -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socketpair", out_of_descriptors)
    loop = Loop()
    pool = LocalPool(PoolSettings("user"), Paths(tmp_path), stop_grace=1.0)
    pool.start(loop, reports=None)  # type: ignore[arg-type]
    assert pool.capacity() == 0 and not pool.alive
    deadline = loop.timers.next_deadline()
    assert deadline is not None and deadline - loop.now() <= QUICK_DEATH
    said = "pool user cannot start: fork failed: Too many open files; its jobs stay queued"
    assert said in capsys.readouterr().out
    assert pool.trouble == "cannot start: fork failed: Too many open files"


def test_restarts_after_deaths_at_start_double_up_to_a_minute():
    assert [backoff(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(100_000) == 60  # a pool that has died at start all week
