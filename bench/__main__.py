"""`python -m bench`: every figure, on this machine, in one run; one table.

`--smoke` runs tiny counts (CI) and writes no RESULTS.md unless `--out` says where.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import gsup_side, huey_side, scale
from bench.figures import Samples, all_rows, notes
from bench.measure import percentile
from bench.plan import FULL, SMOKE, Plan
from bench.report import machine, text_table, write_results
from bench.sqlite_ceiling import committed_tx_rate

RESULTS = Path(__file__).with_name("RESULTS.md")
TEMP_PARENT = "/tmp"  # short: a state dir's socket path must fit in ~100 bytes

_started = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, so stdout holds the table alone."""
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


def interleave(
    samples: Samples, reps: int, figure: str, sides: dict[str, Callable[[], Any] | None]
) -> None:
    """Run each side once per repetition, in turn, so that a noisy moment of the shared
    machine falls on both sides; a side given as None (huey not installed) is skipped."""
    for rep in range(1, reps + 1):
        for side, measure in sides.items():
            if measure is None:
                continue
            value = measure()
            samples.add(f"{figure}.{side}", value)
            log(f"{figure} {rep}/{reps} {side}: {value:,.3f}")


def latency_percentiles(trips: list[float]) -> tuple[float, float]:
    return percentile(trips, 0.5), percentile(trips, 0.99)


def measure_latency(
    samples: Samples, plan: Plan, ws: gsup_side.Workspace, hw: huey_side.HueyWorkspace | None
) -> None:
    sides: dict[str, Callable[[], list[float]] | None] = {
        "gsup": lambda: gsup_side.latencies(ws, plan.latency_trips),
        "huey": (lambda: huey_side.latencies(hw, plan.latency_trips)) if hw else None,
    }
    for rep in range(1, plan.reps + 1):
        for side, measure in sides.items():
            if measure is None:
                continue
            p50, p99 = latency_percentiles(measure())
            samples.add(f"lat50.{side}", p50)
            samples.add(f"lat99.{side}", p99)
            log(f"latency {rep}/{plan.reps} {side}: median {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f}")


def measure_comparative(
    samples: Samples, plan: Plan, ws: gsup_side.Workspace, hw: huey_side.HueyWorkspace | None
) -> None:
    huey = hw is not None

    def peer(figure: Callable[..., Any], *args: Any) -> Callable[[], Any] | None:
        return (lambda: figure(hw, *args)) if huey else None

    interleave(samples, plan.reps, "enqueue", {
        "gsup": lambda: gsup_side.enqueue_rate(ws, plan.enqueue_calls),
        "huey": peer(huey_side.enqueue_rate, plan.enqueue_calls),
    })  # fmt: skip
    interleave(samples, plan.reps, "sqlite", {
        "ceiling": lambda: committed_tx_rate(ws.root, plan.sqlite_tx),
    })  # fmt: skip
    interleave(samples, plan.reps, "drain", {
        "gsup": lambda: gsup_side.drain_rate(ws, plan.drain_jobs),
        "huey": peer(huey_side.drain_rate, plan.drain_jobs),
    })  # fmt: skip
    interleave(samples, plan.reps, "add_many", {
        "gsup": lambda: gsup_side.add_many_rate(ws, plan.batch_jobs),
    })  # fmt: skip
    interleave(samples, plan.reps, "cli_from", {
        "gsup": lambda: gsup_side.cli_from_rate(ws, plan.batch_jobs),
    })  # fmt: skip
    measure_latency(samples, plan, ws, hw)
    interleave(samples, plan.reps, "idle", {
        "gsup": lambda: gsup_side.idle_cpu(ws, plan.idle_seconds),
        "huey": peer(huey_side.idle_cpu, plan.idle_seconds),
    })  # fmt: skip
    adds, floors = gsup_side.add_process_vs_typer(ws, plan.process_runs)
    samples.values["add.gsup"], samples.values["add.typer"] = adds, floors
    log(f"gsup add process: {min(adds) * 1e3:.1f} ms best, import typer {min(floors) * 1e3:.1f}")


def measure_scale(samples: Samples, plan: Plan, ws: gsup_side.Workspace) -> None:
    total = plan.scale_done + plan.scale_queued
    log(f"building a {total:,}-job journal")
    home = scale.build_journal(ws, plan.scale_done, plan.scale_queued)
    scale.check_journal(home, plan.scale_queued)
    for seconds in scale.ready_seconds(home, plan.scale_ready_runs):
        samples.add("ready.gsup", seconds)
        log(f"start to ready: {seconds * 1e3:.0f} ms")
    samples.cli = scale.cli_seconds(home, plan.scale_cli_runs)
    shutil.rmtree(home, ignore_errors=True)  # a million jobs: give the disk back early
    log(f"RSS run to {plan.rss_checkpoints[-1]:,} jobs")
    samples.rss = scale.rss_over_run(ws, plan.rss_checkpoints)
    for reading in samples.rss:
        kib, rate = reading.supervisor_kb, reading.rate
        log(f"RSS after {reading.processed:,} jobs: {kib:,} KiB; {rate:,.0f} jobs/s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny counts, for CI")
    parser.add_argument(
        "--out", type=Path, help=f"write the Markdown results here [default: {RESULTS} for a "
        "full run, nowhere for --smoke]",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # A SIGTERM ends the run through the finally blocks that stop daemons and consumers.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    args = parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    has_huey = huey_side.huey_version() is not None
    if not has_huey and not plan.smoke:
        print("bench: huey is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="gsb", dir=TEMP_PARENT))
    samples = Samples()
    try:
        described = machine(root)
        ws = gsup_side.make_workspace(root)
        hw = huey_side.make_workspace(root) if has_huey else None
        measure_comparative(samples, plan, ws, hw)
        measure_scale(samples, plan, ws)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = all_rows(samples, plan)
    print(text_table(rows))
    if not has_huey:
        print("\nhuey is not installed: its columns are n/a (pip install -e '.[bench]').")
    out = args.out or (None if plan.smoke else RESULTS)
    if out is not None:
        command = "python -m bench" + (" --smoke" if plan.smoke else "")
        write_results(out, rows, described, command, notes(plan))
        log(f"wrote {out}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
