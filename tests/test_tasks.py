"""Tasks end to end, against a real daemon: units run as jobs within the float, failed
units are resubmitted by their retries, chained transforms get units as upstream units
finish, every task reaches an end state, and a SIGKILL of the daemon loses no unit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import journal_rows, wait_until

from gsup.client import Client
from gsup.errors import GsupError

TASK_JOBS = textwrap.dedent(
    """
    import json
    from gsup import current

    def gen(n):
        run = current()
        if n % 50 == 7:
            raise ValueError(f"unit {n} always fails")
        marker = run.outdir.parent / f"{n}.failed-once"
        if n % 10 == 3 and not marker.exists():
            marker.write_text("once")
            (run.outdir / "out.csv").write_text("partial")  # moved aside, never taken
            raise RuntimeError(f"unit {n} fails once")
        (run.outdir / "out.csv").write_text(f"n,square\\n{n},{n * n}\\n")

    def fit():
        run = current()
        rows = [line for p in run.inputs for line in p.read_text().splitlines()[1:]]
        total = sum(int(row.split(",")[1]) for row in rows)
        (run.outdir / "fit.json").write_text(json.dumps({"unit": run.unit, "sum": total}))

    def nothing():
        pass
    """
)

SWEEP = """
[task]
name = "sweep"
float = 8

[[transform]]
name = "gen"
target = "taskjobs:gen"
units = {units}
outputs = ["out.csv"]
retries = 1
merger = {{kind = "csv", ignore_failed = true}}

[[transform]]
name = "fit"
target = "taskjobs:fit"
inputs_from = "gen"
outputs = ["fit.json"]
merger = "jsonl"
"""
UNITS = 200
ALWAYS_FAIL = [n for n in range(UNITS) if n % 50 == 7]  # 7, 57, 107, 157
FAIL_ONCE = [n for n in range(UNITS) if n % 10 == 3 and n % 50 != 7]


@pytest.fixture
def task_dir(workdir: Path) -> Path:
    (workdir / "taskjobs.py").write_text(TASK_JOBS)
    return workdir


def _submit(gsup, task_dir: Path, text: str) -> int:
    (task_dir / "sweep.toml").write_text(text)
    return int(gsup("task", "submit", "sweep.toml").stdout)


def _shown(gsup, task: int) -> dict:
    return json.loads(gsup("task", "show", str(task), "--json").stdout)


def _check_sweep(gsup, home: Path, task: int) -> None:
    """The end of the sweep: exactly the units that always fail have failed."""
    result = gsup("task", "wait", str(task), check=False, timeout=300)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (
        1, f"task {task} completed_with_failures")  # fmt: skip
    shown = _shown(gsup, task)
    done = UNITS - len(ALWAYS_FAIL)
    assert [(t["name"], t["state"], t["units"]) for t in shown["transforms"]] == [
        ("gen", "completed_with_failures",
         {"waiting": 0, "submitted": 0, "done": done, "failed": 4, "skipped": 0}),
        ("fit", "completed", {"waiting": 0, "submitted": 0, "done": done, "failed": 0,
                              "skipped": 0}),
    ]  # fmt: skip
    failed = journal_rows(home, "SELECT u.idx, u.reason FROM units u JOIN transforms t"
                                " ON t.id = u.transform WHERE t.name = 'gen' AND u.state = 'failed'"
                                " ORDER BY u.idx")  # fmt: skip
    assert [idx for idx, _ in failed] == ALWAYS_FAIL
    assert failed[0][1].startswith("job ") and "ValueError: unit 7 always fails" in failed[0][1]
    # Each fit unit summed the one row of the gen unit it came from, never a partial file.
    sums = sorted(
        json.loads((home / "tasks" / str(task) / "fit" / str(idx) / "fit.json").read_text())["sum"]
        for (idx,) in journal_rows(home, "SELECT idx FROM units u JOIN transforms t"
                                         " ON t.id = u.transform WHERE t.name = 'fit'")
    )  # fmt: skip
    assert sums == sorted(n * n for n in range(UNITS) if n not in ALWAYS_FAIL)
    _check_merged(home, task, shown)


def _check_merged(home: Path, task: int, shown: dict) -> None:
    """Each merged file holds every done unit's output exactly once, and nothing else."""
    done = [n for n in range(UNITS) if n not in ALWAYS_FAIL]
    header, *rows = (home / "tasks" / str(task) / "gen" / "merged.csv").read_text().splitlines()
    assert (header, sorted(rows)) == ("n,square", sorted(f"{n},{n * n}" for n in done))
    lines = (home / "tasks" / str(task) / "fit" / "merged.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert sorted(r["sum"] for r in records) == sorted(n * n for n in done)
    assert len({r["unit"] for r in records}) == len(done)
    assert [(t["merge"]["state"], t["merge"]["merged"]) for t in shown["transforms"]] == [
        ("done", len(done)), ("done", len(done))]  # fmt: skip


def test_a_two_stage_sweep_runs_to_its_end(daemon, gsup, home, task_dir):
    task = _submit(gsup, task_dir, SWEEP.format(units=[[n] for n in range(UNITS)]))
    _check_sweep(gsup, home, task)
    runs = dict(journal_rows(home, "SELECT name, attempts FROM jobs WHERE name LIKE 'sweep/gen/%'"))
    assert {n: runs[f"sweep/gen/{n}"] for n in range(UNITS) if runs[f"sweep/gen/{n}"] != 1} == {
        n: 2 for n in sorted(ALWAYS_FAIL + FAIL_ONCE)
    }
    # A retried unit's partial output went aside with its failed attempt.
    assert (home / "tasks" / str(task) / "gen" / "3.failed-1" / "out.csv").read_text() == "partial"


def test_a_sweep_survives_a_sigkill_of_the_daemon(make_daemon, gsup, home, task_dir):
    daemon = make_daemon()
    task = _submit(gsup, task_dir, SWEEP.format(units=[[n] for n in range(UNITS)]))
    wait_until(lambda: _shown(gsup, task)["transforms"][1]["units"]["done"] >= 40,
               what="40 units of fit to be done")  # fmt: skip
    daemon.kill()
    make_daemon()
    _check_sweep(gsup, home, task)


def test_float_bounds_the_units_in_flight(daemon, gsup, home, task_dir):
    gsup("freeze")
    text = SWEEP.format(units=[[n] for n in range(30)]).replace("float = 8", "float = 3")
    task = _submit(gsup, task_dir, text)
    wait_until(lambda: _shown(gsup, task)["transforms"][0]["units"]["submitted"] == 3)
    assert journal_rows(home, "SELECT count(*) FROM jobs") == [(3,)]
    gsup("unfreeze")
    assert gsup("task", "wait", str(task), check=False).returncode == 1


def test_task_wait_is_answered_by_the_daemon_as_the_task_ends(daemon, gsup, home, task_dir):
    gsup("freeze")
    task = _submit(gsup, task_dir, SWEEP.format(units=[[1]]))
    result = gsup("task", "wait", str(task), "--timeout", "0.5", check=False)
    assert (result.returncode, result.stderr) == (
        1, f"gsup: error: task {task} is still running after 0.5s\n")  # fmt: skip
    with Client(home) as client:
        pending = client.send("task_wait", task=task)
        with pytest.raises(GsupError) as unknown:
            client.request("task_wait", task=task + 1)
        assert str(unknown.value) == f"no task {task + 1}"
        gsup("unfreeze")
        assert pending.reply(60)["state"] == "completed"
        assert client.request("task_wait", task=task)["state"] == "completed"  # at once


def test_a_task_wait_pending_at_a_stop_hears_that_the_daemon_stopped(daemon, gsup, task_dir):
    gsup("freeze")
    task = _submit(gsup, task_dir, SWEEP.format(units=[[1]]))
    with Client(daemon.home) as client:
        pending = client.send("task_wait", task=task)
        client.request("ping")  # the wait has been taken
        daemon.stop()
        with pytest.raises(GsupError) as stopped:
            pending.reply(10)
    assert str(stopped.value) == "daemon stopped"


def test_pause_resume_and_retry_failed(daemon, gsup, home, task_dir):
    text = SWEEP.format(units=[[7], [8]])
    task = _submit(gsup, task_dir, text)
    assert gsup("task", "wait", str(task), check=False).stdout.splitlines()[-1] == (
        f"task {task} completed_with_failures"
    )
    assert gsup("task", "pause", str(task), check=False).stderr == (
        f"gsup: error: task {task} has ended (completed_with_failures)\n"
    )
    [(job,)] = journal_rows(home, "SELECT job FROM units WHERE state = 'failed'")
    assert gsup("retry", str(job), check=False).stderr == (
        f"gsup: error: job {job} ran unit gen/0 of a task: run it again with"
        f" `gsup task reset {task} gen/0`\n"
    )
    (task_dir / "taskjobs.py").write_text(TASK_JOBS.replace("n % 50 == 7", "n < 0"))
    assert gsup("task", "retry-failed", str(task)).stdout == (
        f"1 failed or skipped units of task {task} to run again\n"
    )
    assert gsup("task", "wait", str(task)).stdout.splitlines()[-1] == f"task {task} completed"
    assert _shown(gsup, task)["transforms"][1]["units"]["done"] == 2


def test_a_unit_without_its_declared_output_fails(daemon, gsup, task_dir):
    text = SWEEP.format(units=[[1]]).replace(
        'target = "taskjobs:gen"', 'target = "taskjobs:nothing"'
    )
    text = text.replace("units = [[1]]", "units = [[]]")
    task = _submit(gsup, task_dir, text)
    assert gsup("task", "wait", str(task), check=False).stdout.splitlines()[-1] == (
        f"task {task} failed (gen: all 1 units failed)"
    )
    gen, fit = _shown(gsup, task)["transforms"]
    assert (gen["state"], gen["units"]["failed"]) == ("failed", 1)
    assert gen["failures"] == [{"unit": 0, "reason": "missing output out.csv"}]
    assert (fit["state"], fit["reason"]) == ("failed", "no units: gen had none done")


def test_a_command_unit_runs_in_its_output_folder(daemon, gsup, home, task_dir):
    text = """
[task]
name = "cmds"

[[transform]]
name = "make"
cmd = ["sh", "-c", "echo $1 > out.txt; echo $GSUP_UNIT >> out.txt", "sh"]
units = [["a"], ["b"]]
outputs = ["out.txt"]

[[transform]]
name = "all"
cmd = ["sh", "-c", "echo $GSUP_INPUTS | tr : '\\\\n' | xargs cat > all.txt"]
inputs_from = {transform = "make", mode = "all"}
outputs = ["all.txt"]
"""
    task = _submit(gsup, task_dir, text)
    assert gsup("task", "wait", str(task)).stdout.splitlines()[-1] == f"task {task} completed"
    merged = (home / "tasks" / str(task) / "all" / "0" / "all.txt").read_text()
    assert merged == "a\ncmds/make/0\nb\ncmds/make/1\n"


def test_a_local_stage_chains_into_a_process_stage(daemon, gsup, home, task_dir):
    units = [1, 2, 4]
    text = SWEEP.format(units=[[n] for n in units])
    task = _submit(gsup, task_dir, text.replace('merger = "jsonl"', 'backend = "process"'))
    assert gsup("task", "wait", str(task)).stdout.splitlines()[-1] == f"task {task} completed"
    pools = journal_rows(home, "SELECT DISTINCT substr(name, 7, 3), pool FROM jobs"
                               " WHERE name GLOB 'sweep/*/[0-9]*' ORDER BY 1")  # fmt: skip
    assert pools == [("fit", "process"), ("gen", "user")]
    fits = [home / "tasks" / str(task) / "fit" / str(idx) / "fit.json" for idx in range(3)]
    assert sorted(json.loads(fit.read_text())["sum"] for fit in fits) == [n * n for n in units]


def test_a_bad_task_file_is_refused_with_its_line(daemon, gsup, task_dir):
    (task_dir / "bad.toml").write_text('[task]\nname = "x"\nflaot = 3\n')
    result = gsup("task", "submit", "bad.toml", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", "gsup: error: bad.toml, line 3: unknown key 'flaot' in [task]\n")  # fmt: skip


def test_a_task_built_in_python(daemon, env, task_dir):
    script = textwrap.dedent(
        """
        from gsup import GsupError, Task, Transform, tasks
        import taskjobs
        gen = Transform("gen", target=taskjobs.gen, units=[[1], [2]], outputs=["out.csv"])
        handle = tasks.submit(Task("py", [gen], float=2))
        print(handle.id, handle.wait(60), [(t.name, t.counts["done"]) for t in handle.progress()])
        try:
            tasks.submit(Task("bad", [Transform("gen", target=lambda: 0, units=[[]])]))
        except GsupError as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=task_dir,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (result.returncode, result.stderr) == (0, "")
    first, second = result.stdout.splitlines()
    assert first == "1 completed [('gen', 2)]"
    assert second == (
        "transform 'gen': <lambda> cannot be imported by name (a lambda, a closure or a"
        " function of __main__); a task's units run later: give a module's function"
    )


def test_tasks_at_a_prompt_is_the_table_of_gsup_task_list(daemon, gsup, env, task_dir):
    first = _submit(gsup, task_dir, SWEEP.format(units=[[1]]))
    assert gsup("task", "wait", str(first)).returncode == 0
    gsup("freeze")
    _submit(gsup, task_dir, SWEEP.format(units=[[2]]))
    shown = subprocess.run([sys.executable, "-c", "from gsup import tasks; print(repr(tasks))"],
                           env=env, cwd=task_dir, capture_output=True, text=True,
                           timeout=60)  # fmt: skip
    listed = gsup("task", "list").stdout
    assert (shown.returncode, shown.stdout) == (0, listed + "\n")
    assert [line.split()[:3] for line in listed.splitlines()[1:]] == [
        [str(first + 1), "sweep", "running"], [str(first), "sweep", "completed"]]  # fmt: skip


MERGE_JOBS = textwrap.dedent(
    """
    from pathlib import Path
    from gsup import current

    def make(n):
        if n == "x":
            raise ValueError("no unit x")
        # Unit n > 0 waits for the test to let it end (a file "go-n" beside this one).
        while n and not Path(__file__).with_name(f"go-{n}").exists():
            pass
        (current().outdir / "out.csv").write_text(f"n\\n{n}\\n")

    def concat(files, out):
        raise ValueError("no merge today")
    """
)

MERGED = """
[task]
name = "m"

[[transform]]
name = "make"
target = "mergejobs:make"
units = {units}
outputs = ["out.csv"]
merger = {merger}
"""


def _merge_task(gsup, task_dir: Path, units: list[int], merger: str) -> int:
    (task_dir / "mergejobs.py").write_text(MERGE_JOBS)
    return _submit(gsup, task_dir, MERGED.format(units=[[n] for n in units], merger=merger))


def _merges(home: Path) -> list[tuple]:
    return journal_rows(home, "SELECT full, state, units FROM merges ORDER BY id")


def test_a_merged_file_changed_by_hand_is_written_anew(daemon, gsup, home, task_dir):
    task = _merge_task(gsup, task_dir, [0, 1], '"csv"')
    merged = home / "tasks" / str(task) / "make" / "merged.csv"
    wait_until(lambda: _merges(home) == [(1, "done", 1)], what="unit 0 to be merged")
    with merged.open("a") as file:
        file.write("a line of someone else's\n")
    (task_dir / "go-1").touch()
    assert gsup("task", "wait", str(task)).stdout.splitlines()[-1] == f"task {task} completed"
    # The append found the file changed and wrote nothing; the next merge wrote it anew.
    assert _merges(home) == [(1, "done", 1), (0, "stale", 1), (1, "done", 2)]
    assert merged.read_text() == "n\n0\n1\n"


def test_show_names_the_merged_file_and_its_units(daemon, gsup, home, task_dir):
    task = _merge_task(gsup, task_dir, [0], '"csv"')
    assert gsup("task", "wait", str(task)).returncode == 0
    merged = home / "tasks" / str(task) / "make" / "merged.csv"
    assert gsup("task", "show", str(task)).stdout.splitlines()[-1] == (
        f"  make merged: {merged} (1 unit)")  # fmt: skip


def test_a_reset_unit_is_merged_once(daemon, gsup, home, task_dir):
    (task_dir / "go-1").touch()
    task = _merge_task(gsup, task_dir, [0, 1], '"csv"')
    assert gsup("task", "wait", str(task)).returncode == 0
    merged = home / "tasks" / str(task) / "make" / "merged.csv"
    assert sorted(merged.read_text().splitlines()) == ["0", "1", "n"]
    gsup("task", "reset", str(task), "make/1")
    assert gsup("task", "wait", str(task)).returncode == 0
    assert merged.read_text() == "n\n0\n1\n"  # 0 as it was merged, then 1 again, anew


def test_a_merger_that_raises_fails_the_merge_and_retry_merge_runs_it_again(
    daemon, gsup, home, task_dir
):
    task = _merge_task(gsup, task_dir, [0], '"mergejobs:concat"')
    result = gsup("task", "wait", str(task), check=False)
    assert (result.returncode, result.stdout.splitlines()[-1]) == (
        1, f"task {task} completed_with_failures (make: merge failed: job 2 failed:"
        " MergeError: merger mergejobs:concat raised ValueError: no merge"
        " today)")  # fmt: skip
    shown = _shown(gsup, task)["transforms"][0]
    assert (shown["units"]["done"], shown["merge"]["state"]) == (1, "failed")
    assert "ValueError: no merge today" in gsup("show", "2").stdout  # its traceback
    assert gsup("retry", "2", check=False).stderr == (
        f"gsup: error: job 2 is a merge of task {task}: `gsup task retry-merge {task}` runs it\n"
    )
    (task_dir / "mergejobs.py").write_text(MERGE_JOBS.replace(
        'raise ValueError("no merge today")', "Path(out).write_text(Path(files[0]).read_text())"
    ))  # fmt: skip
    assert gsup("task", "retry-merge", str(task)).stdout == (
        f"1 merges of task {task} to run again, anew\n"
    )
    assert gsup("task", "wait", str(task)).stdout.splitlines()[-1] == f"task {task} completed"
    assert (home / "tasks" / str(task) / "make" / "merged").read_text() == "n\n0\n"


def test_an_output_gone_before_its_merge_is_reported(daemon, gsup, home, task_dir):
    gsup("freeze", "--queue", "monitoring")
    task = _merge_task(gsup, task_dir, [0], '"csv"')
    wait_until(lambda: _merges(home) == [(1, "running", 1)], what="the merge to be queued")
    (home / "tasks" / str(task) / "make" / "0" / "out.csv").unlink()
    gsup("unfreeze")
    assert gsup("task", "wait", str(task), check=False).stdout.splitlines()[-1] == (
        f"task {task} completed_with_failures (make: merge failed: job 2 failed:"
        " MergeError: unit 0: its output out.csv disappeared before it"
        " was merged)"
    )


def test_without_ignore_failed_a_merge_lacking_units_is_kept_as_partial(
    daemon, gsup, home, task_dir
):
    (task_dir / "go-1").touch()
    (task_dir / "mergejobs.py").write_text(MERGE_JOBS)
    text = MERGED.format(units=[[0], ["x"]], merger='"csv"')
    task = _submit(gsup, task_dir, text)
    result = gsup("task", "wait", str(task), check=False)
    assert result.stdout.splitlines()[-1] == (
        f"task {task} completed_with_failures (make: 1 units failed: what the others made is"
        " in merged.csv.partial (ignore_failed = true merges without them))"
    )
    folder = home / "tasks" / str(task) / "make"
    assert not (folder / "merged.csv").exists()
    assert (folder / "merged.csv.partial").read_text() == "n\n0\n"
    shown = _shown(gsup, task)["transforms"][0]
    assert (shown["reason"], shown["merge"]["file"]) == (
        "1 units failed: what the others made is in merged.csv.partial"
        " (ignore_failed = true merges without them)",
        f"{folder}/merged.csv.partial",
    )
    (task_dir / "mergejobs.py").write_text(MERGE_JOBS.replace('n == "x"', "False"))
    (task_dir / "go-x").touch()
    gsup("task", "retry-failed", str(task))
    assert gsup("task", "wait", str(task)).returncode == 0
    assert (folder / "merged.csv").read_text() == "n\n0\nx\n"
    assert not (folder / "merged.csv.partial").exists()  # it holds every unit again


def test_a_custom_merger_that_cannot_be_imported_is_refused_at_submit(daemon, gsup, task_dir):
    (task_dir / "mergejobs.py").write_text(MERGE_JOBS)
    (task_dir / "sweep.toml").write_text(MERGED.format(units=[[0]], merger='"mergejobs:nothere"'))
    result = gsup("task", "submit", "sweep.toml", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", (
        "gsup: error: sweep.toml, line 10: transform 'make': mergejobs:nothere: 'mergejobs'"
        " has no attribute 'nothere'\n"))  # fmt: skip


LANDING = """
[task]
name = "land"

[[transform]]
name = "write"
cmd = ["sh", "-c", "{script}", "{go}"]
units = [[]]
outputs = ["out.txt"]
"""
WAIT_FOR_GO = "while [ ! -e $0 ]; do sleep 0.01; done"  # $0: the file `go`


def _landing_task(gsup, task_dir: Path, script: str) -> tuple[int, Path]:
    """A one-unit task whose command runs `script` (it waits for the file `go` with
    WAIT_FOR_GO) and declares out.txt; its id, and `go`."""
    go = task_dir / "go"
    return _submit(gsup, task_dir, LANDING.format(script=script, go=go)), go


def test_an_output_is_noticed_as_it_lands_before_its_job_ends(daemon, gsup, home, task_dir):
    task, go = _landing_task(gsup, task_dir, f"echo x > out.txt; {WAIT_FOR_GO}")
    landed = "SELECT state, landed IS NOT NULL FROM units"
    wait_until(lambda: journal_rows(home, landed) == [("submitted", 1)],
               what="out.txt to be seen landing while its unit runs")  # fmt: skip
    go.touch()
    assert gsup("task", "wait", str(task)).returncode == 0


def _watchers(daemon) -> list[int]:
    children = Path(f"/proc/{daemon.pid}/task/{daemon.pid}/children").read_text().split()
    return [int(pid) for pid in children
            if Path(f"/proc/{pid}/comm").read_text().strip() == "gsup-watcher"]  # fmt: skip


def _inotify_watches(pid: int) -> int:
    fdinfo = Path(f"/proc/{pid}/fdinfo").iterdir()
    return sum(path.read_text().count("inotify wd:") for path in fdinfo)


def test_a_watcher_that_dies_is_started_again_and_told_its_folders(daemon, gsup, home, task_dir):
    assert _watchers(daemon) == []  # none until a task has outputs to watch
    task, go = _landing_task(gsup, task_dir, f"{WAIT_FOR_GO}; echo x > out.txt")
    wait_until(lambda: journal_rows(home, "SELECT state FROM units") == [("submitted",)])
    (first,) = _watchers(daemon)
    os.kill(first, signal.SIGKILL)
    assert daemon.said("the outputs' watcher died; it starts again in 1s")
    wait_until(lambda: len(_watchers(daemon)) == 1 and _watchers(daemon) != [first]
               and _inotify_watches(_watchers(daemon)[0]) == 2,
               what="a new watcher, watching the transform's folder and its unit's")  # fmt: skip
    go.touch()  # what lands while no watcher runs is not told
    assert gsup("task", "wait", str(task)).returncode == 0
    # Told even if after the unit's end, and its task's (its job ends as it writes).
    wait_until(lambda: journal_rows(home, "SELECT landed IS NOT NULL FROM units") == [(1,)],
               what="the landing to be noted")  # fmt: skip


@pytest.mark.parametrize("restart", [False, True], ids=["running", "restarted"])
def test_a_unit_reset_while_a_merge_waits_is_merged_once(
    make_daemon, gsup, home, task_dir, restart
):
    daemon = make_daemon()
    task = _merge_task(gsup, task_dir, [0, 1], '"csv"')
    wait_until(lambda: _merges(home) == [(1, "done", 1)], what="unit 0 to be merged")
    gsup("freeze", "--queue", "monitoring")
    (task_dir / "go-1").touch()
    wait_until(lambda: _merges(home)[1:] == [(0, "running", 1)], what="unit 1's merge to wait")
    gsup("task", "reset", str(task), "make/0")
    wait_until(lambda: journal_rows(home, "SELECT state FROM units WHERE idx = 0") == [("done",)],
               what="unit 0 to run again")  # fmt: skip
    if restart:
        daemon.kill()  # the reset is in the journal: the next start knows the file is stale
        make_daemon()
    gsup("unfreeze")
    assert gsup("task", "wait", str(task)).returncode == 0
    merged = home / "tasks" / str(task) / "make" / "merged.csv"
    assert merged.read_text() == "n\n1\n0\n"  # unit 1 as merged, then 0 again, written anew


RERUN_JOBS = textwrap.dedent(
    """
    from pathlib import Path
    from gsup import current

    BROKEN = {broken!r}

    def gen(n):
        if n in BROKEN:
            raise ValueError(f"unit {{n}} is broken")
        (current().outdir / "out.csv").write_text(f"n\\n{{n}}\\n")

    def count():
        run = current()
        rows = sorted(p.read_text().splitlines()[1] for p in run.inputs)
        (run.outdir / "fit.json").write_text('{{"rows": "' + " ".join(rows) + '"}}\\n')
    """
)

RERUN = """
[task]
name = "rerun"

[[transform]]
name = "gen"
target = "rerunjobs:gen"
units = {units}
outputs = ["out.csv"]
abort_after = {abort_after}
merger = {{kind = "csv", ignore_failed = true}}

[[transform]]
name = "fit"
target = "rerunjobs:count"
inputs_from = {inputs_from}
outputs = ["fit.json"]
merger = "jsonl"
"""


def _rerun_task(gsup, task_dir: Path, broken: list, units: list, inputs_from: str,
                abort_after: int = 100) -> int:  # fmt: skip
    (task_dir / "rerunjobs.py").write_text(RERUN_JOBS.format(broken=broken))
    text = RERUN.format(units=[[n] for n in units], inputs_from=inputs_from,
                        abort_after=abort_after)  # fmt: skip
    return _submit(gsup, task_dir, text)


def _fixed(task_dir: Path) -> None:
    (task_dir / "rerunjobs.py").write_text(RERUN_JOBS.format(broken=[]))


def _fit_rows(home: Path, task: int) -> list[str]:
    text = (home / "tasks" / str(task) / "fit" / "merged.jsonl").read_text()
    return sorted(json.loads(line)["rows"] for line in text.splitlines())


def test_a_reset_unit_runs_the_units_it_fed_again_in_place(daemon, gsup, home, task_dir):
    task = _rerun_task(gsup, task_dir, [], [0, 1, 2], '"gen"')
    assert gsup("task", "wait", str(task)).returncode == 0
    gsup("task", "reset", str(task), "gen/1")
    assert gsup("task", "wait", str(task)).returncode == 0
    assert [t["units"]["done"] for t in _shown(gsup, task)["transforms"]] == [3, 3]
    assert _fit_rows(home, task) == ["0", "1", "2"]  # fit of gen/1 once, and anew
    assert (home / "tasks" / str(task) / "gen" / "1.reset-1" / "out.csv").exists()


def test_retry_failed_runs_a_unit_fed_by_all_again_over_every_input(daemon, gsup, home, task_dir):
    task = _rerun_task(gsup, task_dir, [1], [0, 1, 2], '{transform = "gen", mode = "all"}')
    assert gsup("task", "wait", str(task), check=False).returncode == 1
    assert _fit_rows(home, task) == ["0 2"]
    _fixed(task_dir)
    gsup("task", "retry-failed", str(task))
    assert gsup("task", "wait", str(task)).returncode == 0
    assert _fit_rows(home, task) == ["0 1 2"]


def test_retry_failed_runs_the_units_an_abort_skipped(daemon, gsup, home, task_dir):
    gsup("freeze", "--queue", "user")
    task = _rerun_task(gsup, task_dir, [0], list(range(30)), '"gen"', abort_after=1)
    gsup("unfreeze")  # float 10: 0 fails while 20 wait, and those are skipped
    result = gsup("task", "wait", str(task), check=False)
    assert result.stdout.splitlines()[-1] == (
        f"task {task} failed (gen: over abort_after (1 units failed))"
    )
    assert _shown(gsup, task)["transforms"][0]["units"]["skipped"] == 20
    _fixed(task_dir)
    assert gsup("task", "retry-failed", str(task)).stdout == (
        f"21 failed or skipped units of task {task} to run again\n"
    )
    assert gsup("task", "wait", str(task)).returncode == 0
    assert [t["units"]["done"] for t in _shown(gsup, task)["transforms"]] == [30, 30]


def test_an_output_that_is_no_regular_file_fails_its_unit(daemon, gsup, home, task_dir):
    text = """
[task]
name = "odd"

[[transform]]
name = "make"
cmd = ["sh", "-c", "case $0 in 0) mkfifo out.csv;; 1) mkdir out.csv;; 2) ln -s /etc/passwd out.csv;; *) printf 'n\\\\n3\\\\n' > out.csv;; esac"]
units = [["0"], ["1"], ["2"], ["3"]]
outputs = ["out.csv"]
merger = {kind = "csv", ignore_failed = true}
"""  # noqa: E501
    task = _submit(gsup, task_dir, text)
    assert gsup("task", "wait", str(task), check=False).returncode == 1
    shown = _shown(gsup, task)["transforms"][0]
    assert shown["failures"] == [
        {"unit": n, "reason": "output out.csv is not a regular file"} for n in (0, 1, 2)
    ]
    assert (home / "tasks" / str(task) / "make" / "merged.csv").read_text() == "n\n3\n"


def test_a_merge_that_ends_lost_at_a_start_fails_and_retry_merge_runs_it(
    make_daemon, gsup, home, task_dir
):
    (task_dir / "mergejobs.py").write_text(MERGE_JOBS.replace(
        'raise ValueError("no merge today")',
        "while not Path(__file__).with_name('go-merge').exists(): pass\n"
        "    Path(out).write_text('merged')",
    ))  # fmt: skip
    daemon = make_daemon()
    task = _submit(gsup, task_dir, MERGED.format(units=[[0]], merger='"mergejobs:concat"'))
    for _ in range(3):  # three deaths of the daemon while the merge runs: it is poison
        wait_until(lambda: journal_rows(home, "SELECT state FROM jobs WHERE id = 2")
                   == [("running",)], what="the merge to run")  # fmt: skip
        daemon.kill()
        daemon = make_daemon()
    result = gsup("task", "wait", str(task), check=False)
    assert result.stdout.splitlines()[-1].startswith(
        f"task {task} completed_with_failures (make: merge failed: job 2 lost: poison:"
    )
    (task_dir / "go-merge").touch()
    gsup("task", "retry-merge", str(task))
    assert gsup("task", "wait", str(task)).returncode == 0
    assert (home / "tasks" / str(task) / "make" / "merged").read_text() == "merged"


def test_a_task_id_that_is_none_is_a_usage_error(gsup):
    result = gsup("task", "show", "abc", check=False)
    assert (result.returncode, result.stderr) == (
        2, "gsup: error: 'abc' is not a task id (ids are whole numbers from 1)"
        " (see: gsup task show --help)\n")  # fmt: skip


def test_a_task_id_is_never_given_again_after_a_prune(daemon, gsup, home, task_dir):
    """A task's id names its output folders: a new task given a pruned one's id would
    find its outputs there."""
    (task_dir / "t.toml").write_text(
        '[task]\nname = "t"\n[[transform]]\nname = "a"\ntarget = "jobs:add"\nunits = [[1]]\n'
    )
    first = int(gsup("task", "submit", "t.toml").stdout)
    gsup("task", "wait", str(first))
    time.sleep(1.1)  # older than the prune's age below
    gsup("prune", "--older-than", "1s")
    assert journal_rows(home, "SELECT id FROM tasks") == []
    assert int(gsup("task", "submit", "t.toml").stdout) == first + 1
