"""`python -m bench`: every figure, on this machine, in one run; one table.

`--smoke` runs tiny counts (CI) and writes no RESULTS.md unless `--out` says where.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import dask_side, gsup_side, huey_side, scale, slurm_side, web_side
from bench.figures import Samples, all_rows, notes
from bench.measure import gaps, median, percentile
from bench.plan import FULL, SMOKE, Plan
from bench.report import machine, text_table, write_results
from bench.sqlite_ceiling import commit_seconds_after, committed_tx_rate

RESULTS = Path(__file__).with_name("RESULTS.md")
TEMP_PARENT = "/tmp"  # short: a state dir's socket path must fit in ~100 bytes

_started = time.monotonic()


def log(message: str) -> None:
    """Progress on stderr, so stdout holds the table alone."""
    print(f"[{time.monotonic() - _started:6.1f}s] {message}", file=sys.stderr, flush=True)


def interleave(
    samples: Samples, reps: int, figure: str, sides: dict[str, Callable[[], Any] | None]
) -> list[tuple[str, Any]]:
    """Run each side once per repetition, in turn, so that a noisy moment of the shared
    machine falls on all of them; a side given as None (not installed) is skipped.
    Numbers are kept in `samples`; every value, by side, is returned."""
    measured = []
    for rep in range(1, reps + 1):
        for side, measure in sides.items():
            if measure is None:
                continue
            value = measure()
            measured.append((side, value))
            if isinstance(value, int | float):
                samples.add(f"{figure}.{side}", value)
                log(f"{figure} {rep}/{reps} {side}: {value:,.3f}")
    return measured


def percentiles(samples: Samples, figure: str, measured: list[tuple[str, Any]]) -> None:
    """Median and p99 of each repetition's trips, in milliseconds."""
    for side, trips in measured:
        p50, p99 = percentile(trips, 0.5) * 1e3, percentile(trips, 0.99) * 1e3
        samples.add(f"{figure}50.{side}", p50)
        samples.add(f"{figure}99.{side}", p99)
        log(f"{figure} {side}: median {p50:.3f} ms, p99 {p99:.3f} ms")


def measure_comparative(
    samples: Samples,
    plan: Plan,
    ws: gsup_side.Workspace,
    hw: huey_side.HueyWorkspace | None,
    before: gsup_side.Before | None,
) -> None:
    def sides(name: str, amount: Any, huey: Callable[..., Any] | None = None) -> dict[str, Any]:
        """The figure on gsup, on the earlier gsup if there is one, and on huey."""
        return {
            "gsup": lambda: gsup_side.FIGURES[name](ws, amount),
            "before": (lambda: before.measure(name, amount)) if before else None,
            "huey": (lambda: huey(hw, amount)) if huey and hw else None,
        }

    interleave(samples, plan.reps, "enqueue", sides("enqueue", plan.enqueue_calls,
                                                    huey_side.enqueue_rate))  # fmt: skip
    interleave(samples, plan.reps, "sqlite", {
        "ceiling": lambda: committed_tx_rate(ws.root, plan.sqlite_tx),
    })  # fmt: skip
    interleave(samples, plan.reps, "drain", sides("drain", plan.drain_jobs,
                                                  huey_side.drain_rate))  # fmt: skip
    interleave(samples, plan.reps, "drain_waits", {
        "gsup": lambda: gsup_side.drain_rate(ws, plan.drain_jobs, plan.pending_waits),
    })  # fmt: skip
    interleave(samples, plan.reps, "task", {
        "gsup": lambda: gsup_side.task_rate(ws, plan.drain_jobs, plan.task_float),
        "jobs": lambda: gsup_side.jobs_rate(ws, plan.drain_jobs),
        "frozen": lambda: gsup_side.task_rate(ws, plan.drain_jobs, plan.task_float, True),
    })  # fmt: skip
    measure_merge(samples, plan, ws)
    by_results = sides("drain_results", plan.drain_jobs, huey_side.drain_by_results_rate)
    interleave(samples, plan.reps, "drain_results", by_results)
    interleave(samples, plan.reps, "add_many", sides("add_many", plan.batch_jobs))
    interleave(samples, plan.reps, "cli_from", sides("cli_from", plan.batch_jobs))
    percentiles(samples, "lat", interleave(samples, plan.reps, "latency", sides(
        "latency", plan.latency_trips, huey_side.latencies)))  # fmt: skip
    percentiles(samples, "gap", interleave(samples, plan.reps, "gap latency", {
        **sides("gap_latency", plan.gap_trips, huey_side.gap_latencies),
        "commit": lambda: commit_seconds_after(ws.root, gaps(plan.gap_trips)),
    }))  # fmt: skip
    interleave(samples, plan.reps, "idle", sides("idle", plan.idle_seconds, huey_side.idle_cpu))
    commands = gsup_side.command_processes_vs_typer(ws, plan.process_runs)
    for name, times in commands.items():
        samples.values[f"command.{name}"] = times
    slowest = max((n for n in commands if n != "typer"), key=lambda n: median(commands[n]))
    log(f"gsup commands: slowest {slowest} {median(commands[slowest]) * 1e3:.1f} ms median,"
        f" import typer {median(commands['typer']) * 1e3:.1f}")  # fmt: skip


def measure_observability(samples: Samples, plan: Plan, ws: gsup_side.Workspace) -> None:
    """gsup web open and a scrape a second, against neither; events --follow's delay."""
    if not web_side.available():
        log("prometheus_client is not installed (pip install '.[web]'): no web figures")
        return
    interleave(samples, plan.reps, "drain_web", {
        "alone": lambda: gsup_side.drain_rate(ws, plan.drain_jobs),
        "watched": lambda: gsup_side.drain_rate(ws, plan.drain_jobs, around=web_side.web_open),
    })  # fmt: skip
    percentiles(samples, "gap_web", interleave(samples, plan.reps, "gap latency, web", {
        "alone": lambda: gsup_side.gap_latencies(ws, plan.gap_trips),
        "watched": lambda: gsup_side.gap_latencies(ws, plan.gap_trips, web_side.web_open),
    }))  # fmt: skip
    percentiles(samples, "follow", interleave(samples, plan.reps, "events --follow", {
        "gsup": lambda: web_side.follow_delays(ws, plan.gap_trips),
    }))  # fmt: skip


def measure_merge(samples: Samples, plan: Plan, ws: gsup_side.Workspace) -> None:
    merge = gsup_side.merge_figures(ws, plan.drain_jobs, plan.task_float, plan.process_runs)
    samples.values["merge.landed"] = merge.landed_ms
    samples.add("merge.after", merge.merged_after)
    samples.values["merge.show"] = merge.show
    samples.values["merge.typer"] = merge.typer
    log(f"csv task: landed noticed after {median(merge.landed_ms):.1f} ms median,"
        f" {percentile(merge.landed_ms, 0.99):.1f} ms p99; merged {merge.merged_after:.2f} s"
        " after the last unit's end")  # fmt: skip


def measure_scale(samples: Samples, plan: Plan, ws: gsup_side.Workspace) -> None:
    total = plan.scale_done + plan.scale_queued
    log(f"building a {total:,}-job journal")
    home = scale.build_journal(ws, plan.scale_done, plan.scale_queued)
    scale.check_journal(home, plan.scale_queued)
    for ready, checked in scale.ready_seconds(home, plan.scale_ready_runs):
        samples.add("ready.gsup", ready)
        samples.add("checked.gsup", checked)
        log(f"start to ready: {ready * 1e3:.0f} ms, to the journal checked {checked * 1e3:.0f} ms")
    samples.cli = scale.cli_seconds(home, plan.scale_cli_runs)
    if web_side.available():
        job = plan.scale_done  # an ended job (the clones of one ended job come first)
        samples.pages = web_side.page_seconds(home, job, plan.scale_cli_runs)
        slowest = max(samples.pages, key=lambda path: median(samples.pages[path]))
        log(f"dashboard pages: slowest {slowest} {median(samples.pages[slowest]) * 1e3:.0f} ms")
    shutil.rmtree(home, ignore_errors=True)  # a million jobs: give the disk back early
    log(f"a {plan.prune_total:,}-job journal pruned to {plan.prune_keep:,}, and a fresh one")
    samples.pruned = scale.pruned_vs_fresh(ws, plan.prune_total, plan.prune_keep,
                                           plan.scale_ready_runs, plan.scale_cli_runs)  # fmt: skip
    log(f"prune: {samples.pruned.prune_seconds:.1f} s")
    log(f"RSS run to {plan.rss_checkpoints[-1]:,} jobs")
    samples.rss = scale.rss_over_run(ws, plan.rss_checkpoints)
    for reading in samples.rss:
        kib, rate = reading.supervisor_kb, reading.rate
        log(f"RSS after {reading.processed:,} jobs: {kib:,} KiB; {rate:,.0f} jobs/s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny counts, for CI")
    parser.add_argument(
        "--before", metavar="PYTHON",
        help="also measure the gsup installed (not editable) for this interpreter: an"
        " earlier release, beside this checkout's, in the same run",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, help=f"write the Markdown results here [default: {RESULTS} for a "
        "full run, nowhere for --smoke]",
    )  # fmt: skip
    return parser.parse_args(argv)


def measure_slurm(samples: Samples, plan: Plan, root: Path) -> None:
    if not slurm_side.available():
        log("Slurm is not installed (python3 tests/slurm_cluster.py install): no slurm figures")
        return
    log(f"slurm: {plan.slurm_jobs:,} jobs through gsup and through sbatch in a loop")
    figures = samples.slurm = slurm_side.measure(root, plan.slurm_jobs, plan.slurm_followed)
    log(f"slurm: gsup {figures.gsup_seconds:.1f} s, sbatch {figures.sbatch_seconds:.1f} s")


def measure_dask(samples: Samples, plan: Plan, ws: gsup_side.Workspace) -> None:
    if not dask_side.available():
        log("distributed is not installed (pip install '.[dask]'): no dask figures")
        return
    log(f"dask: {plan.dask_calls:,} no-op calls through gsup and through client.map")
    figures = dask_side.measure(ws, plan.dask_calls, plan.reps)
    for gsup_seconds, map_seconds in zip(figures.gsup_seconds, figures.map_seconds, strict=True):
        samples.add("dask.gsup", gsup_seconds)
        samples.add("dask.map", map_seconds)
        log(f"dask: gsup {gsup_seconds:.2f} s, client.map {map_seconds:.2f} s")


def main(argv: list[str] | None = None) -> int:
    # A SIGTERM ends the run through the finally blocks that stop daemons and consumers.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # an install has .pyc files: so do we
    args = parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    has_huey = huey_side.huey_version() is not None
    if not has_huey and not plan.smoke:
        print("bench: huey is not installed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="gsb", dir=TEMP_PARENT))
    samples = Samples()
    before = gsup_side.Before(args.before, root) if args.before else None
    version = before.version() if before else None
    try:
        described = machine(root, version)
        ws = gsup_side.make_workspace(root)
        hw = huey_side.make_workspace(root) if has_huey else None
        measure_comparative(samples, plan, ws, hw, before)
        measure_observability(samples, plan, ws)
        measure_scale(samples, plan, ws)
        measure_slurm(samples, plan, root)
        measure_dask(samples, plan, ws)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = all_rows(samples, plan)
    print(text_table(rows, version))
    if not has_huey:
        print("\nhuey is not installed: its columns are n/a (pip install -e '.[bench]').")
    out = args.out or (None if plan.smoke else RESULTS)
    if out is not None:
        command = "python -m bench" + (" --smoke" if plan.smoke else "")
        command += " --before PYTHON" if args.before else ""
        write_results(out, rows, described, command, notes(plan), version)
        log(f"wrote {out}")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
