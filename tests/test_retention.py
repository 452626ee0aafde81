"""Results kept whole (up to max_result_mb), and retention: `gsup prune` with the
daemon up and down, keep_days' daily prune, the WAL truncated after a prune."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import journal_rows, run_daemon_expecting_exit, wait_until

from gsup.api import JobFailed, Queues

BIG = "def text(n):\n    return 'x' * (n - 2)\n"  # n bytes once JSON-encoded


@pytest.fixture
def big(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "big.py").write_text(BIG)
    monkeypatch.syspath_prepend(str(workdir))


def test_a_10_mb_result_comes_back_whole(daemon, gsup, home, big):
    queues = Queues(home)
    job = queues.add("big:text", args=(10_000_000,))
    assert job.result(120) == "x" * 9_999_998  # the daemon's reply leaves it out: the journal
    assert queues.client.get(job.id, read_first=False)["result"] == json.dumps("x" * 9_999_998)
    shown = gsup.show(job.id)
    assert json.loads(shown["result"]) == "x" * 9_999_998
    assert shown["result_size"] == 10_000_000
    assert journal_rows(home, "SELECT job, size FROM results") == [(job.id, 10_000_000)]
    # Listing does not carry it, and stays correct.
    small = gsup.add("jobs:add", "1", "2")
    gsup.wait(small)
    listed = json.loads(gsup("jobs", "--json").stdout)
    assert [(j["id"], j["state"]) for j in listed] == [(small, "done"), (job.id, "done")]
    assert "result" not in listed[0]
    assert "big:text" in gsup("jobs").stdout


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_the_daemon_does_not_keep_a_large_result_in_memory(daemon, home, big):
    queues = Queues(home)
    assert queues.add("big:text", args=(100,)).result(60)  # every path has run once
    before = _rss_kb(daemon.pid)
    assert len(queues.add("big:text", args=(40_000_000,)).result(120)) == 39_999_998
    assert _rss_kb(daemon.pid) - before < 15_000  # KiB; it held 40 MB and more meanwhile


def test_a_result_over_max_result_mb_fails_its_job(make_daemon, gsup, home, big):
    home.mkdir(parents=True, exist_ok=True)
    (home / "gsup.toml").write_text("max_result_mb = 1\n")
    make_daemon()
    queues = Queues(home)
    with pytest.raises(JobFailed) as failed:
        queues.add("big:text", args=(1_500_000,)).result(60)
    assert failed.value.job["reason"] == "result too large (1.5 MB, limit 1 MB)"
    assert queues.add("big:text", args=(1_000_000,)).result(60) == "x" * 999_998
    assert journal_rows(home, "SELECT size FROM results") == [(1_000_000,)]


def test_a_bad_max_result_mb_is_refused(env, home):
    home.mkdir(parents=True, exist_ok=True)
    (home / "gsup.toml").write_text("max_result_mb = 0\n")
    result = run_daemon_expecting_exit(env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"gsup: error: max_result_mb in {home / 'gsup.toml'} must be a number above 0, not 0"
    )


# --- prune ----------------------------------------------------------------------------------


def _age(home: Path, jobs: dict[int, float]) -> None:
    """Make jobs look `days` old (created, ended), as if they had run back then; only
    with the daemon down (the journal has one writer)."""
    with sqlite3.connect(home / "journal.sqlite") as db:
        for job, days in jobs.items():
            shift = days * 86400
            db.execute(
                "UPDATE jobs SET created = created - ?, ended = ended - ? WHERE id = ?",
                (shift, shift, job),
            )
            db.execute("UPDATE batches SET created = created - ? WHERE first = ?", (shift, job))


def _history(home: Path) -> dict[str, list[int]]:
    """Which jobs each table holds something of."""
    tables = (("jobs", "id"), ("events", "job"), ("attempts", "job"), ("results", "job"))
    return {
        table: sorted(row[0] for row in journal_rows(home, f"SELECT DISTINCT {key} FROM {table}"))
        for table, key in tables
    }


def _logs(home: Path) -> list[str]:
    """JOB.STREAM of each output file (JOB.ATTEMPT.STREAM: one job, one attempt each)."""
    names = (path.name.split(".") for path in (home / "logs").iterdir())
    return sorted(f"{parts[0]}.{parts[-1]}" for parts in names)


def _setup(make_daemon, gsup, home: Path) -> dict[str, int]:
    """Ended jobs of every kind, old and new, and old jobs that have not ended (ids in
    the order of their ages, as a real history has them)."""
    daemon = make_daemon()
    ids = {
        "old_done": gsup.add("jobs:shout", "old", "--key", "old-done"),
        "old_failed": gsup.add("jobs:boom"),
        "old_cmd": gsup.add("--cmd", "--", "sh", "-c", "echo out; echo err >&2"),
    }
    gsup.wait(*ids.values())
    gsup("freeze", "--queue", "user")
    ids["old_queued"] = gsup.add("jobs:add", "1", "--key", "old-queued")
    ids["old_cancelled"] = gsup.add("jobs:add", "2")
    gsup("cancel", str(ids["old_cancelled"]))
    ids["new_done"] = gsup.add("--queue", "monitoring", "jobs:shout", "new")
    gsup.wait(ids["new_done"])
    daemon.stop()
    old = ("old_done", "old_failed", "old_cmd", "old_queued", "old_cancelled")
    _age(home, {ids[name]: 10 for name in old})
    return ids


@pytest.mark.parametrize("daemon_up", [True, False], ids=["daemon up", "daemon down"])
def test_prune_deletes_exactly_the_old_ended_jobs(make_daemon, gsup, home, daemon_up):
    ids = _setup(make_daemon, gsup, home)
    assert set(_logs(home)) >= {f"{ids['old_done']}.out", f"{ids['old_cmd']}.err"}
    daemon = make_daemon() if daemon_up else None
    by = "by the daemon" if daemon_up else "the daemon is down"
    # --state narrows it: only the failed one goes.
    out = gsup("prune", "--older-than", "7d", "--state", "failed").stdout
    assert out == f"pruned 1 jobs and 0 log files ({by})\n"
    assert ids["old_failed"] not in _history(home)["jobs"]
    out = gsup("prune", "--older-than", "7d").stdout
    assert out == f"pruned 3 jobs and 4 log files ({by})\n"  # shout: out and err; cmd: both
    kept = sorted(ids[name] for name in ("new_done", "old_queued"))
    assert _history(home) == {
        "jobs": kept,
        "events": kept,
        "attempts": [ids["new_done"]],
        "results": [ids["new_done"]],
    }
    assert _logs(home) == [f"{ids['new_done']}.err", f"{ids['new_done']}.out"]
    # A batch key is forgotten with the last of its jobs.
    assert journal_rows(home, "SELECT key FROM batches") == [("old-queued",)]
    # Nothing more is old enough; a pruned id is never given again.
    assert gsup("prune", "--older-than", "30s").stdout.startswith("pruned 0 jobs")
    if daemon is None:
        daemon = make_daemon()
    assert gsup.add("jobs:add", "3") == max(ids.values()) + 1
    gsup("unfreeze")
    assert gsup.wait(ids["old_queued"]) == {ids["old_queued"]: "done"}
    if daemon_up:
        assert daemon.said("pruned 3 ended jobs that ended before")


def test_the_newest_ids_pruned_are_not_given_again(make_daemon, gsup, home):
    make_daemon()
    first = gsup.add("jobs:add", "1")
    gsup.wait(first)
    wait_until(lambda: gsup("prune", "--older-than", "1s").stdout.startswith("pruned 1 jobs"),
               what="the job to be older than a second")  # fmt: skip
    assert gsup.add("jobs:add", "2") == first + 1


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("7", "'7' is not a duration: a number and s, m, h or d (30s, 12h, 7d)"),
        ("7w", "'7w' is not a duration: a number and s, m, h or d (30s, 12h, 7d)"),
        ("-1d", "'-1d' is not a duration: a number and s, m, h or d (30s, 12h, 7d)"),
        ("0s", "'0s': the age must be more than 0"),
        ("99999999999999999d", "'99999999999999999d': the age must be at most 36500d"),
    ],
)
def test_a_bad_age_is_one_line_and_exit_2(gsup, value, why):
    result = gsup("prune", "--older-than", value, check=False)
    assert result.returncode == 2
    assert result.stderr == (
        f"gsup: error: Invalid value for '--older-than': {why} (see: gsup prune --help)\n"
    )


def test_only_ended_states_may_be_pruned(gsup):
    result = gsup("prune", "--older-than", "1d", "--state", "running", check=False)
    assert result.returncode == 2
    assert "only ended jobs are pruned" in result.stderr and result.stderr.count("\n") == 1


def test_keep_days_prunes_daily(make_daemon, gsup, home, env):
    ids = _setup(make_daemon, gsup, home)
    (home / "gsup.toml").write_text("keep_days = 7\n")
    env["GSUP_PRUNE_EVERY"] = "0.5"  # for tests only: the daily prune, every half second
    daemon = make_daemon()
    daemon.said("pruned 4 ended jobs that ended before")
    kept = sorted(ids[name] for name in ("new_done", "old_queued"))
    assert _history(home)["jobs"] == kept
    # The next day, the next ones: a job that has turned old since.
    gsup("unfreeze")
    gsup.wait(ids["old_queued"])
    daemon.stop()
    _age(home, {ids["old_queued"]: 8})
    daemon = make_daemon()
    daemon.said("pruned 1 ended jobs")
    assert _history(home)["jobs"] == [ids["new_done"]]
    assert journal_rows(home, "SELECT detail FROM commands WHERE verb = 'prune'")[-1] == (
        '{"keep_days": 7.0}',
    )


def test_the_wal_shrinks_after_a_prune(make_daemon, gsup, home, big):
    make_daemon()
    queues = Queues(home)
    jobs = [queues.add("big:text", args=(5_000_000,)) for _ in range(3)]
    for job in jobs:
        job.result(120)
    wal = home / "journal.sqlite-wal"
    grown = os.path.getsize(wal)
    assert grown > 5_000_000
    wait_until(lambda: time.time() - 1.1 > _ended_last(home), what="the jobs to be 1s old")
    assert gsup("prune", "--older-than", "1s").stdout.startswith("pruned 3 jobs")
    assert os.path.getsize(wal) == 0
    assert journal_rows(home, "SELECT count(*) FROM results") == [(0,)]


def _ended_last(home: Path) -> float:
    return journal_rows(home, "SELECT max(ended) FROM jobs")[0][0]


TASK = """
[task]
name = "{name}"

[[transform]]
name = "make"
cmd = ["sh", "-c", "echo x > out.txt"]
units = [[], []]
outputs = ["out.txt"]
merger = "text"
"""
TASK_TABLES = ("tasks", "transforms", "units", "merges")


@pytest.mark.parametrize("daemon_up", [True, False], ids=["daemon up", "daemon down"])
def test_prune_forgets_the_tasks_that_ended_before_the_cutoff(
    make_daemon, gsup, home, workdir, daemon_up
):
    daemon = make_daemon()
    for name in ("old", "new"):
        (workdir / f"{name}.toml").write_text(TASK.format(name=name))
        task = gsup("task", "submit", f"{name}.toml").stdout.strip()
        assert gsup("task", "wait", task).returncode == 0
    daemon.stop()
    with sqlite3.connect(home / "journal.sqlite") as db:
        db.execute("UPDATE tasks SET ended = ended - 10 * 86400 WHERE name = 'old'")
    if daemon_up:
        make_daemon()
    gsup("prune", "--older-than", "7d", "--state", "done")  # not tasks: their jobs vary
    assert journal_rows(home, "SELECT name FROM tasks ORDER BY id") == [("old",), ("new",)]
    gsup("prune", "--older-than", "7d")
    for table in TASK_TABLES[1:]:
        assert (table, journal_rows(home, f"SELECT DISTINCT task FROM {table}")) == (table, [(2,)])
    assert journal_rows(home, "SELECT id FROM tasks") == [(2,)]
