"""Clocks, statistics and /proc readings shared by both sides of the bench.

CPU time and memory come from /proc directly, so the bench needs no psutil.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.plan import GAP_SECONDS, GAP_SEED

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: the smallest value with `fraction` of them at or below."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def gaps(trips: int) -> list[float]:
    """The latency figure's pauses between trips: the same ones on every side."""
    rng = random.Random(GAP_SEED)
    return [rng.uniform(*GAP_SECONDS) for _ in range(trips)]


def run_seconds(argv: Sequence[str], cwd: Path | None = None) -> float:
    """Wall time of one whole process, from spawn to exit; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run(
        list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed


# --- /proc --------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name, which may hold spaces and parentheses;
    field n of proc(5) is item n - 3."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """`pid` and every live process below it (a daemon's pool processes)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue  # it exited while we looked
            parents.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_kb(pid: int) -> int:
    """Resident memory of one process (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def idle_cpu_percent(pid: int, seconds: float) -> float:
    """CPU used by `pid` and its descendants over `seconds`, as % of one core.

    The kernel counts in clock ticks (10 ms at 100 Hz), so a 10 s window resolves 0.1%.
    """
    pids = descendants(pid)
    before, start = cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu_seconds(pids) - before, time.monotonic() - start
    return 100.0 * used / elapsed
