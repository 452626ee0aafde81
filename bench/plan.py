"""How much of each figure a run measures: the full run, and the smoke run CI uses."""

from __future__ import annotations

from dataclasses import dataclass

# The user pool of every gsup daemon the bench starts: 4 threads (the drain
# setting, and huey's `-w 4`), and 64 jobs handed to the pool ahead of a free thread
# so that a thread that finishes finds its next job without a supervisor round trip.
USER_THREADS = 4
USER_QUEUE_SIZE = 64
GSUP_TOML = f"[pools.user]\nthreads = {USER_THREADS}\nqueue_size = {USER_QUEUE_SIZE}\n"

# huey's consumer at its fastest polling: an idle worker looks at the queue every
# millisecond (-d is the first delay, -m the longest, -b 1 keeps it from growing).
# A smaller delay would make the workers spin; 0 is a busy loop.
HUEY_POLL = 0.001
HUEY_FAST_POLLING = ("-d", str(HUEY_POLL), "-m", str(HUEY_POLL), "-b", "1")


@dataclass(frozen=True)
class Plan:
    smoke: bool
    reps: int  # interleaved repetitions of each figure: gsup, huey, gsup, huey, ...
    drain_jobs: int
    enqueue_calls: int
    batch_jobs: int
    latency_trips: int
    idle_seconds: float
    process_runs: int  # runs of `gsup add`, and of `python -c "import typer"`
    sqlite_tx: int
    scale_done: int  # jobs of the big journal that have ended...
    scale_queued: int  # ...and that wait in the frozen user pool
    scale_ready_runs: int
    scale_cli_runs: int
    rss_checkpoints: tuple[int, int]  # processed jobs at which the daemon's RSS is read


FULL = Plan(
    smoke=False,
    reps=3,
    drain_jobs=20_000,
    enqueue_calls=2_000,
    batch_jobs=100_000,
    latency_trips=1_000,
    idle_seconds=10.0,
    process_runs=15,
    sqlite_tx=3_000,
    scale_done=900_000,
    scale_queued=100_000,
    scale_ready_runs=5,
    scale_cli_runs=9,
    rss_checkpoints=(100_000, 1_000_000),
)

SMOKE = Plan(
    smoke=True,
    reps=2,
    drain_jobs=500,
    enqueue_calls=100,
    batch_jobs=2_000,
    latency_trips=50,
    idle_seconds=0.5,
    process_runs=3,
    sqlite_tx=200,
    scale_done=9_000,
    scale_queued=1_000,
    scale_ready_runs=2,
    scale_cli_runs=2,
    rss_checkpoints=(2_000, 20_000),
)
