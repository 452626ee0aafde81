"""The SQLite ceiling: how many single-row transactions per second this disk commits
with the journal's own settings (WAL, synchronous=FULL), and how long one commit
takes after the latency figure's gaps. Each `queues.add` waits for at least one such
commit, and each add -> result trip for two: no figure of gsup can pass these."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _journal_like(root: Path) -> Iterator[sqlite3.Connection]:
    """A fresh file under `root` (the disk the state dirs are on), set as the journal is."""
    folder = Path(tempfile.mkdtemp(prefix="s", dir=root))
    conn = sqlite3.connect(folder / "ceiling.sqlite", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, at REAL, body TEXT)")
        yield conn
    finally:
        conn.close()


def _commit_one(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")  # as the daemon's turns begin
    conn.execute("INSERT INTO rows (at, body) VALUES (?, ?)", (time.time(), "noop"))
    conn.execute("COMMIT")


def committed_tx_rate(root: Path, transactions: int) -> float:
    """Committed BEGIN/INSERT/COMMIT transactions per second, back to back."""
    with _journal_like(root) as conn:
        start = time.perf_counter()
        for _ in range(transactions):
            _commit_one(conn)
        return transactions / (time.perf_counter() - start)


def commit_seconds_after(root: Path, gaps: Sequence[float]) -> list[float]:
    """Seconds each commit takes when it comes after a gap of idleness (`gaps`)."""
    with _journal_like(root) as conn:
        seconds = []
        for gap in gaps:
            time.sleep(gap)
            start = time.perf_counter()
            _commit_one(conn)
            seconds.append(time.perf_counter() - start)
        return seconds
