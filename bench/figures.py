"""From measured samples to the table's rows, each with its target from the issue."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.gsup_side import COMMANDS
from bench.measure import median, percentile
from bench.plan import GAP_SECONDS, HUEY_FAST_POLLING, WORKERS, Plan
from bench.report import Row
from bench.scale import CliTimes, PrunedVsFresh, RssReading
from bench.slurm_side import SlurmFigures
from gsup.settings import default_queue_size

MS = 1000.0
MIB = 1024.0  # VmRSS is in KiB


@dataclass
class Samples:
    """Every measured value, by figure and side (e.g. "drain.huey"): one per repetition."""

    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    cli: CliTimes | None = None
    rss: list[RssReading] = field(default_factory=list)
    pruned: PrunedVsFresh | None = None
    slurm: SlurmFigures | None = None
    pages: dict[str, list[float]] = field(default_factory=dict)  # dashboard page, seconds

    def add(self, key: str, value: float) -> None:
        self.values[key].append(value)

    def median(self, key: str) -> float | None:
        found = self.values.get(key)
        return median(found) if found else None


def _number(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, peer: float | None) -> float | None:
    if value is None or peer is None or peer == 0:
        return None
    return value / peer


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def _row(
    figure: str,
    gsup: float | None,
    peer: float | None,
    digits: int,
    target: str = "-",
    ok: Callable[[float, float | None], bool | None] | None = None,
    peer_text: str | None = None,
    before: float | None = None,
) -> Row:
    """A row; `ok(gsup, ratio)` judges the target, `peer_text` replaces the peer's number,
    `before` is the same figure on the earlier release."""
    ratio = _ratio(gsup, peer)
    met = "-"
    if ok is not None:
        met = _met(None if gsup is None else ok(gsup, ratio))
    return Row(
        figure=figure,
        gsup=_number(gsup, digits),
        before="-" if before is None else _number(before, digits),
        peer=peer_text if peer_text is not None else _number(peer, digits),
        ratio="n/a" if ratio is None else f"{ratio:.2f}x",
        target=target,
        met=met,
    )


def _at_least(times: float) -> Callable[[float, float | None], bool | None]:
    def ok(_: float, ratio: float | None) -> bool | None:
        return None if ratio is None else ratio >= times  # None: no peer to compare

    return ok


def _at_most_ratio(limit: float) -> Callable[[float, float | None], bool | None]:
    def ok(_: float, ratio: float | None) -> bool | None:
        return None if ratio is None else ratio <= limit

    return ok


def _at_most_value(limit: float) -> Callable[[float, float | None], bool | None]:
    return lambda value, _: value <= limit


def _at_least_value(limit: float) -> Callable[[float, float | None], bool | None]:
    return lambda value, _: value >= limit


# --- the rows ---------------------------------------------------------------------------


def comparative_rows(s: Samples, plan: Plan) -> list[Row]:
    n, gap = plan.drain_jobs, f"{GAP_SECONDS[0] * 1e3:.0f}-{GAP_SECONDS[1] * 1e3:.0f} ms apart"

    def m(key: str) -> float | None:
        return s.median(key)

    return [
        _row(f"drain {n:,} jobs, one wait (jobs/s) vs huey", m("drain.gsup"), m("drain.huey"),
             0, ">= 3x huey", _at_least(3), before=m("drain.before")),
        _row(f"drain {n:,} jobs, {plan.pending_waits:,} other waits pending (jobs/s) vs none",
             m("drain_waits.gsup"), m("drain.gsup"), 0, ">= 0.8x", _at_least(0.8)),
        _row(f"task of {n:,} no-op units, float {plan.task_float}, submit to end (units/s) vs"
             f" {n:,} plain jobs, add to end", m("task.gsup"), m("task.jobs"), 0, ">= 0.67x",
             _at_least(1 / 1.5)),
        _row("  the task from its frozen pool's unfreeze (units/s) vs drain", m("task.frozen"),
             m("drain.gsup"), 0),
        _row(f"task of {n:,} CSV units, float {plan.task_float}: an output's close to the"
             " daemon noticing it, median (ms)", m("merge.landed"), None, 1, "<= 100 ms",
             _at_most_value(100)),
        _row("  the same, p99 (ms)", _p99(s, "merge.landed"), None, 1),
        _row("  its merged file whole after its last unit's end (ms)", _ms(m("merge.after")),
             None, 0, "<= 1 s", _at_most_value(1000)),
        _row('  gsup task show process on it (ms) vs python -c "import typer"',
             _ms(m("merge.show")), _ms(m("merge.typer")), 1, "<= 1.3x", _at_most_ratio(1.3)),
        _row(f"drain {n:,} jobs, result() of each in turn (jobs/s) vs huey",
             m("drain_results.gsup"), m("drain_results.huey"), 0, ">= 3x huey", _at_least(3),
             before=m("drain_results.before")),
        _row("enqueue: single queues.add (calls/s) vs huey", m("enqueue.gsup"),
             m("enqueue.huey"), 0, ">= 2x huey", _at_least(2), before=m("enqueue.before")),
        _row("single queues.add vs SQLite ceiling (/s)", m("enqueue.gsup"),
             m("sqlite.ceiling"), 0),
        _row(f"batch: queues.add_many {plan.batch_jobs:,} (jobs/s)", m("add_many.gsup"),
             50_000, 0, ">= 50,000", _at_least_value(50_000), before=m("add_many.before")),
        _row(f"batch: gsup add --from, {plan.batch_jobs:,} lines (jobs/s)",
             m("cli_from.gsup"), 50_000, 0, ">= 50,000", _at_least_value(50_000),
             before=m("cli_from.before")),
        _row("latency add -> result, back to back: median (ms) vs huey", m("lat50.gsup"),
             m("lat50.huey"), 2, "<= 0.5 ms", _at_most_value(0.5), before=m("lat50.before")),
        _row("latency add -> result, back to back: p99 (ms) vs huey", m("lat99.gsup"),
             m("lat99.huey"), 2, "<= 5 ms", _at_most_value(5.0), before=m("lat99.before")),
        _row(f"latency add -> result, {gap}: median (ms) vs huey", m("gap50.gsup"),
             m("gap50.huey"), 2, "<= 1 ms", _at_most_value(1.0), before=m("gap50.before")),
        _row(f"latency add -> result, {gap}: p99 (ms) vs huey", m("gap99.gsup"),
             m("gap99.huey"), 2, "<= 3 ms", _at_most_value(3.0), before=m("gap99.before")),
        _row(f"  one SQLite commit (WAL, FULL), {gap}: median (ms)", m("gap50.commit"),
             None, 2, peer_text="-"),
        _row(f"idle CPU over {plan.idle_seconds:g} s (% of a core) vs huey", m("idle.gsup"),
             m("idle.huey"), 2, "<= 0.5%", _at_most_value(0.5), before=m("idle.before")),
        *(
            _row(f'gsup {name} process (ms) vs python -c "import typer"',
                 _ms(m(f"command.{name}")), _ms(m("command.typer")), 1, "<= 1.3x",
                 _at_most_ratio(1.3))
            for name in COMMANDS
        ),
    ]  # fmt: skip


def _p99(s: Samples, key: str) -> float | None:
    found = s.values.get(key)
    return percentile(found, 0.99) if found else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * MS


def scale_rows(s: Samples, plan: Plan) -> list[Row]:
    size = f"{plan.scale_done + plan.scale_queued:,}-job journal"
    rows = [
        _row(f"daemon start to ready, {size} (ms)", _ms(s.median("ready.gsup")), 1000, 0,
             "<= 1 s", _at_most_value(1000)),
        _row(f"  start to the journal checked (jobs dispatched from then on), {size} (ms)",
             _ms(s.median("checked.gsup")), None, 0),
    ]  # fmt: skip
    if s.cli is not None:
        floor = median(s.cli.floor) * MS
        for name, times in (("gsup jobs --limit 50", s.cli.jobs), ("gsup queues", s.cli.queues)):
            whole = median(times) * MS
            rows += [
                _row(f'{name}, {size} (ms) vs "import typer"', whole, floor, 0),
                _row(f"  {name}: beyond process start (ms)", whole - floor, 100, 0,
                     "<= 100 ms", _at_most_value(100)),
            ]  # fmt: skip
    rows += page_rows(s, plan)
    rows += _pruned_rows(s.pruned, plan)
    rows += _rss_rows(s.rss)
    return rows


def _pruned_rows(pruned: PrunedVsFresh | None, plan: Plan) -> list[Row]:
    if pruned is None:
        return []
    size = f"{plan.prune_total:,} jobs pruned to {plan.prune_keep:,}"
    return [
        _row(f"gsup prune --older-than 7d, daemon down, {size} (s)", pruned.prune_seconds,
             None, 1, peer_text="-"),
        _row(f"start to ready, {size} (ms) vs a fresh {plan.prune_keep:,}",
             _ms(median(pruned.ready[0])), _ms(median(pruned.ready[1])), 0, "<= 1.2x",
             _at_most_ratio(1.2)),
        _row(f"gsup jobs --limit 50, {size} (ms) vs a fresh {plan.prune_keep:,}",
             _ms(median(pruned.jobs[0])), _ms(median(pruned.jobs[1])), 0, "<= 1.2x",
             _at_most_ratio(1.2)),
    ]  # fmt: skip


def _rss_rows(readings: list[RssReading]) -> list[Row]:
    if len(readings) < 2:
        return []
    first, last = readings[0], readings[-1]
    return [
        _row(f"daemon RSS after {first.processed:,} jobs (MiB)", first.supervisor_kb / MIB,
             None, 1, peer_text="-"),
        _row(f"daemon RSS after {last.processed:,} jobs (MiB) vs after {first.processed:,}",
             last.supervisor_kb / MIB, first.supervisor_kb / MIB, 1, "<= 1.10x",
             _at_most_ratio(1.10)),
        _row(f"daemon + pools RSS after {last.processed:,} (MiB) vs after {first.processed:,}",
             last.tree_kb / MIB, first.tree_kb / MIB, 1),
        _row(f"add_many + run, {last.processed:,} jobs (jobs/s)", last.rate, None, 0,
             peer_text="-"),
    ]  # fmt: skip


def all_rows(s: Samples, plan: Plan) -> list[Row]:
    return (
        comparative_rows(s, plan) + web_rows(s, plan) + scale_rows(s, plan) + slurm_rows(s, plan)
        + dask_rows(s, plan)
    )  # fmt: skip


def web_rows(s: Samples, plan: Plan) -> list[Row]:
    n, m = plan.drain_jobs, s.median
    watched = "gsup web open, a scrape a second"
    return [
        _row(f"drain {n:,} jobs, {watched} (jobs/s) vs neither", m("drain_web.watched"),
             m("drain_web.alone"), 0, ">= 0.95x", _at_least(0.95)),
        _row(f"latency add -> result, jobs apart, {watched}: median (ms) vs neither",
             m("gap_web50.watched"), m("gap_web50.alone"), 2, "<= 1.05x", _at_most_ratio(1.05)),
        _row("gsup events --follow: a job's end, its time to the follower, median (ms)",
             m("follow50.gsup"), None, 2, "<= 5 ms", _at_most_value(5.0)),
        _row("  the same, p99 (ms)", m("follow99.gsup"), None, 2),
    ]  # fmt: skip


def page_rows(s: Samples, plan: Plan) -> list[Row]:
    size = f"{plan.scale_done + plan.scale_queued:,}-job journal"
    return [
        _row(f"gsup web {path}, {size}, whole page (ms)", median(times) * MS, None, 1,
             "< 200 ms", _at_most_value(200))
        for path, times in s.pages.items()
    ]  # fmt: skip


def slurm_rows(s: Samples, plan: Plan) -> list[Row]:
    f = s.slurm
    return [
        _row(f"slurm: {plan.slurm_jobs:,} true jobs through gsup, add to end (s) vs sbatch"
             " --wrap in a loop, squeue every 2 s", f and f.gsup_seconds,
             f and f.sbatch_seconds, 1, "<= 1.2x", _at_most_ratio(1.2)),
        _row("  squeue calls per poll interval (2 s) meanwhile: one a poll, and one as"
             " outcomes land", f and f.squeue_per_poll, 1, 2),
        _row(f"slurm: squeue calls per poll interval, {plan.slurm_followed:,} jobs followed",
             f and f.followed_per_poll, 1, 2, "<= 1.2x", _at_most_ratio(1.2)),
    ]  # fmt: skip


def dask_rows(s: Samples, plan: Plan) -> list[Row]:
    return [
        _row(f"dask: {plan.dask_calls:,} no-op calls through gsup, add to end (s) vs"
             " client.map and gather", s.median("dask.gsup"), s.median("dask.map"), 2,
             "<= 2x", _at_most_ratio(2.0)),
    ]  # fmt: skip


def notes(plan: Plan) -> list[str]:
    """How each figure was measured, for RESULTS.md."""
    polling = " ".join(HUEY_FAST_POLLING)
    low, high = (f"{g * 1e3:.0f}" for g in GAP_SECONDS)
    return [
        f"Each figure is the median of {plan.reps} repetitions, interleaved (gsup, the "
        "earlier gsup, huey, gsup, ...); process times are medians of "
        f"{plan.process_runs} interleaved runs; the big journal's CLI times of "
        f"{plan.scale_cli_runs}, start-to-ready of {plan.scale_ready_runs}; the RSS run is "
        "one run.",
        "gsup: a fresh state dir per repetition with no settings file: the defaults "
        f"({WORKERS} threads per pool, {default_queue_size(WORKERS)} jobs handed ahead of "
        "them); the journal at WAL, "
        "its turns synced before any reply. The job is `noop:noop` (`def noop(): return "
        "None`; gsup stores no result for None), added by reference from a module on "
        "sys.path.",
        "The earlier gsup (the column headed with its version) is installed, not editable, "
        "in another environment (`git worktree add /tmp/old TAG && python -m venv /tmp/v "
        "&& /tmp/v/bin/pip install /tmp/old`); `--before /tmp/v/bin/python` runs the same "
        "figure functions (bench/gsup_side.py) in that interpreter, interleaved with the "
        "others, also at its own defaults.",
        "huey: `SqliteHuey(fsync=True, store_none=True)` (WAL, synchronous=FULL; None "
        f"results stored, so they can be waited for); consumer `-w {WORKERS} -k thread -q "
        f"{polling}` (its fastest polling: an idle worker looks every 1 ms).",
        f"drain: {plan.drain_jobs:,} jobs queued with the user pool frozen; clock from "
        "`queues.unfreeze()` to the reply of one `wait` on all of them (the second row: "
        f"while another client has {plan.pending_waits:,} `wait` requests pending, each on a "
        "job held in the frozen monitoring pool), or, on the third, "
        "until `result()` of every handle has returned, read one after another. huey has "
        "no freeze: the same number of messages, made by huey's serializer, are inserted in "
        "one transaction while its consumer runs; clock from that commit until its result "
        "store holds them all (counted every 5 ms), or until each result has been read with "
        "a blocking get, one after another.",
        f"task: a task of {plan.drain_jobs:,} no-op units (one transform), float "
        f"{plan.task_float}; clock from its submit request (its units journaled, then run) "
        "until the daemon answers the task's `wait`; plain jobs: as many no-op jobs, clock "
        "from their `add_many` until the daemon answers one `wait` on them all. From "
        "unfreeze: the task submitted with the user pool frozen, clock from "
        "`queues.unfreeze()`, as the drain's.",
        f"csv task: {plan.drain_jobs:,} units (float {plan.task_float}) each writing a "
        "one-row out.csv with the time just before its close; the csv merger. Noticed: the "
        "journal's `units.landed` (the supervisor's wall time when the watcher's report "
        "reached it) minus that time; whole: the last merge's end minus the last unit "
        "job's end, both journaled wall times.",
        f"enqueue: {plan.enqueue_calls:,} sequential `queues.add(noop)` with the user pool "
        "frozen (adding only), against huey's `noop()` with no consumer running. The SQLite "
        f"ceiling is {plan.sqlite_tx:,} BEGIN IMMEDIATE/INSERT/COMMIT transactions on a "
        "fresh file with WAL and synchronous=FULL on the same disk.",
        f"batch: one `queues.add_many(noop, [()] * {plan.batch_jobs:,})` call, and one whole "
        f"`gsup add --from FILE` process on a file of {plan.batch_jobs:,} `noop:noop` lines "
        "(process start included), user pool frozen.",
        f"latency: {plan.latency_trips:,} sequential `queues.add(noop).result()` on an idle "
        f"daemon, back to back; then {plan.gap_trips:,} more, each {low}-{high} ms after the "
        "last one returned (the same seeded pauses on every side), so that every process "
        "sleeps in between. huey: `noop()` then `result.get(blocking=True, backoff=1, "
        "max_delay=0.001)` (huey's blocking get polls the result store, here every 1 ms). "
        "Median and p99 (nearest rank) per repetition, then the median of those. The "
        "commit row times one BEGIN IMMEDIATE/INSERT/COMMIT on a fresh WAL, "
        "synchronous=FULL file after the same pauses: an add -> result trip waits for "
        "two of them.",
        f"idle CPU: utime+stime from /proc of the process and its children (gsup's pool "
        f"processes) over {plan.idle_seconds:g} s, after one job and 1 s of quiet; huey's "
        "consumer at its fastest polling. Resolution: one clock tick (10 ms) per window.",
        "gsup commands: wall time of each whole `gsup ...` process (the installed console "
        "script), run from the folder of noop.py with the daemon up and job 1 done, in turn "
        'with `python -c "import typer"`; medians. Bytecode caches are written on a first, '
        "unmeasured run, as an install writes them.",
        f"scale: a real daemon writes one ended and one queued template job; their rows, "
        f"attempts and events are cloned to {plan.scale_done:,} ended and "
        f"{plan.scale_queued:,} queued jobs (user pool frozen), then the WAL is "
        "checkpointed. Start to ready: spawn of `gsup daemon` to its `gsup: ready:` line "
        "(it answers clients); to the journal checked: to its `the journal passed its check` "
        "line (SQLite's quick_check, in a child process; jobs are held back until then). "
        'CLI times with the daemon running; "beyond process start" subtracts the '
        "`import typer` process time.",
        f"pruned: a journal built as above with {plan.prune_total:,} jobs (a tenth of "
        f"{plan.prune_keep:,} queued), all but the newest {plan.prune_keep:,} made "
        "30 days old, then `gsup prune --older-than 7d` with the daemon down; its "
        f"start to ready and `gsup jobs --limit 50` against a journal built with "
        f"{plan.prune_keep:,} jobs alike.",
        f"RSS: VmRSS of the supervisor process (and, on another row, plus its pool "
        f"processes) after {plan.rss_checkpoints[0]:,} and {plan.rss_checkpoints[1]:,} "
        "no-op jobs have run, added with add_many 10,000 at a time, the next batch added "
        "while the last one runs.",
        WEB_NOTE.format(jobs=plan.drain_jobs, trips=plan.gap_trips),
        SLURM_NOTE.format(jobs=plan.slurm_jobs, followed=plan.slurm_followed),
        DASK_NOTE.format(calls=plan.dask_calls),
    ]


WEB_NOTE = (
    "web: `gsup web` (at its defaults) with one page's event stream (/stream) read all "
    "along, as an open browser tab keeps it, and /metrics fetched every second (a "
    "Prometheus scrape_interval of 1s); against the same figure with neither, alternating. "
    "The drain as above ({jobs:,} jobs); the latency of {trips:,} jobs 20-50 ms apart. "
    "events --follow: {trips:,} jobs added one at a time 20-50 ms apart, a follower "
    "(gsup.events, as `gsup events --follow` reads) in the bench process; from each job's "
    "end event's time (taken as it is written, before the turn's commit and sync) to its "
    "arrival. Pages: each fetched whole over HTTP (urllib, a new connection each) with "
    "the daemon running, on the big journal below, medians of as many runs as the CLI's."
)

SLURM_NOTE = (
    "slurm: a private single-node Slurm started for the run (tests/slurm_cluster.py, 32 "
    "CPUs declared), once. gsup: `gsup add --backend slurm --cmd --from` {jobs:,} lines of "
    "`true` (the daemon at its defaults: poll 2 s), clock until `gsup wait` on them all "
    "returns; plain Slurm: `sbatch --wrap true` {jobs:,} times in a shell loop, then "
    "`squeue --me` every 2 s until it lists none. squeue calls are counted by a wrapper "
    "on the daemon's PATH; the last row over 10 s while gsup follows {followed:,} "
    "`sleep 120` jobs (32 run, the rest pend), cancelled after."
)

DASK_NOTE = (
    "dask: one LocalCluster at Dask's defaults (a worker process per core, no dashboard) "
    "for the run. Plain Dask: `client.map(noop, range({calls:,}))` then `client.gather`; "
    'gsup: `queues.add_many(noop, range({calls:,}), backend="dask")` to the answer of '
    "one wait on them all, the daemon at its defaults (a fresh one each time); the two "
    "alternate."
)
