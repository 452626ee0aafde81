"""How much of each figure a run measures: the full run, and the smoke run CI uses."""

from __future__ import annotations

from dataclasses import dataclass

# Every gsup daemon the bench starts runs at its defaults (no gsup.toml): the figures
# are the ones users get. huey's consumer gets as many worker threads as gsup's user
# pool has by default.
WORKERS = 5

# huey's consumer at its fastest polling: an idle worker looks at the queue every
# millisecond (-d is the first delay, -m the longest, -b 1 keeps it from growing).
# A smaller delay would make the workers spin; 0 is a busy loop.
HUEY_POLL = 0.001
HUEY_FAST_POLLING = ("-d", str(HUEY_POLL), "-m", str(HUEY_POLL), "-b", "1")

# The latency with gaps: each job is added 20-50 ms after the last one ended, so that
# every process sleeps in between, as on a real idle daemon. Seeded: both sides see
# the same gaps.
GAP_SECONDS = (0.020, 0.050)
GAP_SEED = 20261128


@dataclass(frozen=True)
class Plan:
    smoke: bool
    reps: int  # interleaved repetitions of each figure: gsup, gsup before, huey, ...
    drain_jobs: int
    pending_waits: int  # other clients' waits, pending during a drain (its second figure)
    task_float: int  # a task of drain_jobs no-op units runs this many at once
    enqueue_calls: int
    batch_jobs: int
    latency_trips: int  # back to back
    gap_trips: int  # with gaps
    idle_seconds: float
    process_runs: int  # runs of each gsup command, and of `python -c "import typer"`
    sqlite_tx: int
    scale_done: int  # jobs of the big journal that have ended...
    scale_queued: int  # ...and that wait in the frozen user pool
    scale_ready_runs: int
    scale_cli_runs: int
    rss_checkpoints: tuple[int, int]  # processed jobs at which the daemon's RSS is read
    prune_total: int  # jobs a journal has run before it is pruned...
    prune_keep: int  # ...to this many, compared with a fresh journal of as many
    slurm_jobs: int  # `true` jobs through gsup's slurm backend, against sbatch in a loop
    slurm_followed: int  # Slurm jobs gsup follows at once while its squeue calls are counted
    dask_calls: int  # no-op calls through gsup's dask backend, against client.map


FULL = Plan(
    smoke=False,
    reps=3,
    drain_jobs=10_000,
    pending_waits=40_000,
    task_float=100,
    enqueue_calls=2_000,
    batch_jobs=100_000,
    latency_trips=1_000,
    gap_trips=300,
    idle_seconds=10.0,
    process_runs=15,
    sqlite_tx=3_000,
    scale_done=900_000,
    scale_queued=100_000,
    scale_ready_runs=5,
    scale_cli_runs=9,
    rss_checkpoints=(100_000, 1_000_000),
    prune_total=1_000_000,
    prune_keep=10_000,
    slurm_jobs=1_000,
    slurm_followed=2_000,
    dask_calls=10_000,
)

SMOKE = Plan(
    smoke=True,
    reps=2,
    drain_jobs=500,
    pending_waits=500,
    task_float=100,
    enqueue_calls=100,
    batch_jobs=2_000,
    latency_trips=50,
    gap_trips=10,
    idle_seconds=0.5,
    process_runs=3,
    sqlite_tx=200,
    scale_done=9_000,
    scale_queued=1_000,
    scale_ready_runs=2,
    scale_cli_runs=2,
    rss_checkpoints=(2_000, 20_000),
    prune_total=20_000,
    prune_keep=2_000,
    slurm_jobs=20,
    slurm_followed=40,
    dask_calls=200,
)
