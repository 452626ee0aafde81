"""The SQLite ceiling: how many single-row transactions per second this disk commits
with the journal's own settings (WAL, synchronous=FULL). Each `queues.add` is at
least one such commit, so no single-call add rate can pass it."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path


def committed_tx_rate(root: Path, transactions: int) -> float:
    """Committed BEGIN/INSERT/COMMIT transactions per second, in a fresh file under
    `root` (the disk the state dirs are on)."""
    folder = Path(tempfile.mkdtemp(prefix="s", dir=root))
    conn = sqlite3.connect(folder / "ceiling.sqlite", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, at REAL, body TEXT)")
        start = time.perf_counter()
        for _ in range(transactions):
            conn.execute("BEGIN IMMEDIATE")  # as the daemon's turns begin
            conn.execute("INSERT INTO rows (at, body) VALUES (?, ?)", (time.time(), "noop"))
            conn.execute("COMMIT")
        return transactions / (time.perf_counter() - start)
    finally:
        conn.close()
