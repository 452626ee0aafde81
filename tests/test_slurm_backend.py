"""The slurm backend against a real single-node Slurm (tests/slurm_cluster.py): each
attempt is a batch job; its end, exit code and result come back; a cancel or timeout
scancels it; the daemon's death does not end it, and the next start follows it again
without submitting it twice; one squeue serves every job followed."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import CHAIN_JOBS, Cli, chain_task, journal_rows, wait_until

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm_env(env: dict[str, str], slurm) -> dict[str, str]:
    """The daemon and the CLI reach the test cluster (its slurm.conf), with a Slurm
    poll of half a second to keep the tests short."""
    env.update(slurm.env)
    return env


@pytest.fixture
def fast_poll(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "gsup.toml").write_text("[backends.slurm]\npoll = 0.5\n")


def _slurm_id(gsup: Cli, job: int) -> str:
    (attempt, *_) = gsup.show(job)["attempts_list"]
    return attempt["external_id"]


def _sacct(slurm, slurm_id: str) -> str:
    fields = "--format=JobID,State,ExitCode"
    found = slurm.run("sacct", "-c", "--parsable2", "--noheader", fields, "-j", slurm_id)
    return found.stdout.strip()


def test_a_call_runs_as_a_batch_job_and_its_result_comes_back(
    slurm_env, fast_poll, make_daemon, gsup, slurm
):
    make_daemon()
    job = gsup.add("--backend", "slurm", "jobs:shout", "hello", "2")
    assert gsup.wait(job) == {job: "done"}
    shown = gsup.show(job)
    assert (shown["pool"], json.loads(shown["result"])) == ("slurm", "hello")
    (attempt,) = shown["attempts_list"]
    assert (attempt["backend"], attempt["exit_status"]) == ("slurm", 0)
    assert _sacct(slurm, attempt["external_id"]) == f"{attempt['external_id']}|COMPLETED|0:0"
    logs = gsup("logs", str(job))
    assert (logs.stdout, logs.stderr) == ("hello 0\nhello 1\n", "hello to stderr\n")


def test_a_failing_call_keeps_its_traceback_and_a_command_its_exit_code(
    slurm_env, fast_poll, make_daemon, gsup
):
    make_daemon()
    call = gsup.add("-b", "slurm", "jobs:boom")
    command = gsup.add("-b", "slurm", "--cmd", "--", "sh", "-c", "echo out; exit 3")
    assert gsup.wait(call, command) == {call: "failed", command: "failed"}
    failed = gsup.show(call)
    assert failed["error"] == "ValueError: bad value" and "raise ValueError" in failed["traceback"]
    exited = gsup.show(command)
    assert exited["error"] == "Slurm: FAILED, exit code 3"
    assert json.loads(exited["result"])["stdout"] == "out\n"
    assert exited["attempts_list"][0]["exit_status"] == 3


@pytest.mark.parametrize("how", ["cancel", "timeout"])
def test_a_cancel_or_a_timeout_scancels_the_batch_job(
    slurm_env, fast_poll, make_daemon, gsup, slurm, how
):
    make_daemon()
    options = ["--timeout", "3"] if how == "timeout" else []
    job = gsup.add("-b", "slurm", *options, "--cmd", "--", "sleep", "300")
    slurm_id = wait_until(lambda: gsup.running(job) and _slurm_id(gsup, job))
    wait_until(lambda: "RUNNING" in _squeue_state(slurm, slurm_id))
    wait_until(lambda: _reason(gsup, job) == "Slurm: RUNNING", what="Slurm's state, shown")
    if how == "cancel":
        gsup("cancel", str(job))
    assert gsup.wait(job) == {job: "cancelled" if how == "cancel" else "timeout"}
    assert _sacct(slurm, slurm_id).split("|")[1] == "CANCELLED"


def test_a_pending_job_is_running_for_gsup_with_slurms_reason_shown(
    slurm_env, fast_poll, make_daemon, gsup
):
    make_daemon()
    job = gsup.add("-b", "slurm", "--sbatch-opt=--begin=now+1hour", "jobs:add", "1")
    wait_until(lambda: _reason(gsup, job) == "Slurm: PENDING (BeginTime)")
    assert gsup.show(job)["state"] == "running"
    assert "Slurm: PENDING (BeginTime)" in gsup("show", str(job)).stdout
    slurm_id = _slurm_id(gsup, job)
    assert gsup("queues").stdout.endswith(
        f"\ngsup slurm: 1 in Slurm, 0 queued\n  #{job} Slurm {slurm_id} PENDING (BeginTime):"
        " jobs:add(1)\n"
    )
    said = gsup("why", str(job)).stdout
    assert said.startswith(f"Job {job} is running on slurm/{slurm_id} since ")
    assert said.endswith(", attempt 1 of 1. Slurm: PENDING (BeginTime).\n")
    gsup("cancel", str(job))
    assert gsup.wait(job) == {job: "cancelled"}


def _reason(gsup: Cli, job: int) -> str | None:
    attempts = gsup.show(job)["attempts_list"]
    return attempts[-1]["reason"] if attempts else None


def test_an_sbatch_error_fails_the_job_with_slurms_message(slurm_env, fast_poll, make_daemon, gsup):
    daemon = make_daemon()
    job = gsup.add("-b", "slurm", "--sbatch-opt=--partition=nope", "jobs:add", "1")
    assert gsup.wait(job) == {job: "failed"}
    assert gsup.show(job)["error"] == (
        "sbatch failed: sbatch: error: invalid partition specified: nope; sbatch: error:"
        " Batch job submission failed: Invalid partition name specified"
    )
    assert gsup.run("-b", "slurm", "jobs:add", "1") == "done"  # the daemon is fine
    assert daemon.process.poll() is None


def test_sbatch_options_gsup_sets_itself_are_refused(slurm_env, make_daemon, gsup):
    make_daemon()
    for option in ("--output=/tmp/x", "-o/tmp/x", "partition=x", "--arr=1-3", "--outp=/tmp/x"):
        refused = gsup("add", "-b", "slurm", f"--sbatch-opt={option}", "jobs:add", check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith("gsup: error: sbatch options must look like --name=value")
    local = gsup("add", "--sbatch-opt=--partition=x", "jobs:add", check=False)
    assert (local.returncode, local.stderr.splitlines()[0]) == (
        2,
        "gsup: error: --sbatch-opt goes with --backend slurm (see: gsup add --help)",
    )
    assert journal_rows(gsup.home, "SELECT count(*) FROM jobs") == [(0,)]


@pytest.mark.parametrize("how", ["sigkill", "stop"])
def test_a_batch_job_outlives_the_daemon_and_is_followed_again(
    slurm_env, fast_poll, make_daemon, gsup, slurm, workdir, home, how
):
    daemon = make_daemon()
    flag = workdir / "go"
    job = gsup.add("-b", "slurm", "jobs:wait_for_file", str(flag))
    slurm_id = wait_until(lambda: gsup.running(job) and _slurm_id(gsup, job))
    wait_until(lambda: _squeue_state(slurm, slurm_id) == "RUNNING", what="Slurm to run it")
    if how == "sigkill":
        daemon.kill()
    else:
        started = time.monotonic()
        gsup("stop")
        assert time.monotonic() - started < 10  # a batch job is not waited for (grace: 10 s)
    assert _squeue_state(slurm, slurm_id) == "RUNNING"  # it goes on without the daemon
    restarted = make_daemon()
    restarted.said(f"1 still running, followed again ({job})")
    flag.touch()
    assert gsup.wait(job) == {job: "done"}
    (attempt,) = gsup.show(job)["attempts_list"]  # one attempt: it was not submitted again
    assert attempt["external_id"] == slurm_id
    listed = slurm.run("squeue", "-h", "-t", "all", "-o", "%i|%o").stdout.splitlines()
    ours = [line.split("|")[0] for line in listed if line.split("|")[1].startswith(str(home))]
    assert ours == [slurm_id]


def test_one_squeue_follows_every_job(slurm_env, fast_poll, make_daemon, gsup, workdir, home):
    calls = _shim(workdir, slurm_env, "squeue")
    make_daemon()
    flag = workdir / "go"
    jobs = [gsup.add("-b", "slurm", "jobs:wait_for_file", str(flag)) for _ in range(20)]
    wait_until(lambda: all(gsup.running(job) for job in jobs), timeout=60)
    before = _lines(calls)
    time.sleep(3)  # six polls of 0.5 s, while 20 jobs are followed
    polls = _lines(calls) - before
    assert 3 <= polls <= 8  # one per poll, not one per job (20 x 6 = 120)
    flag.touch()
    assert gsup.wait(*jobs) == dict.fromkeys(jobs, "done")


def test_without_slurms_tools_a_slurm_job_is_refused_in_one_line(make_daemon, gsup, env, workdir):
    empty = workdir.parent / "empty"
    empty.mkdir()
    env["PATH"] = str(empty)  # the daemon and the CLI run as sys.executable -m gsup
    daemon = make_daemon()
    refused = gsup("add", "-b", "slurm", "jobs:add", "1", check=False)
    assert refused.returncode == 1
    assert refused.stderr == (
        "gsup: error: the slurm backend cannot run jobs: sbatch, squeue, sacct, scancel,"
        " scontrol not found on the daemon's PATH\n"
    )
    assert "\nslurm: 0 jobs (at most 10000); sbatch, squeue" in gsup("status").stdout
    assert gsup.run("jobs:add", "1") == "done"
    assert daemon.process.poll() is None
    daemon.stop(signal.SIGTERM)


def _squeue_state(slurm, slurm_id: str) -> str:
    return slurm.run("squeue", "-h", "-o", "%T", "-j", slurm_id, check=False).stdout.strip()


def _which(program: str) -> str | None:
    import shutil

    return shutil.which(program)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_local_stage_chains_into_a_slurm_stage(
    slurm_env, fast_poll, make_daemon, gsup, home, slurm
):
    make_daemon()
    (gsup.cwd / "chainjobs.py").write_text(CHAIN_JOBS)
    (gsup.cwd / "chain.toml").write_text(chain_task("slurm", 'sbatch = ["--comment=gsup-chain"]'))
    task = int(gsup("task", "submit", "chain.toml").stdout)
    waited = gsup("task", "wait", str(task), timeout=120)
    assert waited.stdout.splitlines()[-1] == f"task {task} completed"
    pools = journal_rows(home, "SELECT DISTINCT substr(name, 7, 3), pool FROM jobs"
                               " WHERE name GLOB 'chain/*/[0-9]*' ORDER BY 1")  # fmt: skip
    assert pools == [("gen", "user"), ("squ", "slurm")]
    merged = home / "tasks" / str(task) / "square" / "merged.txt"
    assert sorted(merged.read_text().split()) == ["1", "4", "9"]
    listed = slurm.run("squeue", "-h", "-t", "all", "-o", "%k|%o").stdout.splitlines()
    comments = [line.split("|")[0] for line in listed if line.split("|")[1].startswith(str(home))]
    assert comments == ["gsup-chain"] * 3  # the transform's sbatch options


def test_a_calls_end_is_seen_as_its_outcome_lands_not_at_the_next_poll(
    slurm_env, make_daemon, gsup, home
):
    home.mkdir(parents=True, exist_ok=True)
    (home / "gsup.toml").write_text("[backends.slurm]\npoll = 30\n")  # no poll meanwhile
    make_daemon()
    gsup.run("-b", "slurm", "jobs:add", "1")  # the first one watches the Slurm folder
    started = time.monotonic()
    job = gsup.add("-b", "slurm", "jobs:add", "2")
    assert gsup.wait(job) == {job: "done"}
    assert time.monotonic() - started < 20  # not the 30 s poll
    assert json.loads(gsup.show(job)["result"]) == 2
    assert not list((home / "slurm").iterdir())  # its script and call files are gone


def test_a_job_that_must_not_run_twice_is_held_in_slurm_until_its_start_is_journaled(
    slurm_env, fast_poll, make_daemon, gsup, slurm, workdir
):
    calls = _shim(workdir, slurm_env, "sbatch")
    make_daemon()
    once = gsup.add("-b", "slurm", "--on-lost", "fail", "jobs:add", "3")
    again = gsup.add("-b", "slurm", "jobs:add", "4")
    assert gsup.wait(once, again) == {once: "done", again: "done"}
    slurm_id = _slurm_id(gsup, once)
    assert _sacct(slurm, slurm_id) == f"{slurm_id}|COMPLETED|0:0"  # released, then ran
    named = (re.search(r"--job-name=gsup-\w+-(\d+)-\d+ ", line) for line in
             calls.read_text().splitlines())  # fmt: skip
    held = {int(m.group(1)): "--hold" in m.string for m in named if m}
    assert held == {once: True, again: False}


def _shim(workdir: Path, env: dict[str, str], program: str) -> Path:
    """`program` on the daemon's PATH, writing its arguments to the returned file."""
    shims = workdir.parent / "shims"
    shims.mkdir(exist_ok=True)
    calls = workdir.parent / f"{program}.calls"
    real = _which(program)
    (shims / program).write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {real} "$@"\n')
    (shims / program).chmod(0o755)
    env["PATH"] = f"{shims}:{env['PATH']}"
    return calls


def test_a_job_waits_while_slurm_cannot_be_reached_and_goes_once_it_can(
    env, slurm, fast_poll, make_daemon, gsup
):
    env.pop("SLURM_CONF", None)  # sbatch finds no configuration: no controller
    daemon = make_daemon()
    job = gsup.add("-b", "slurm", "jobs:add", "5")
    wait_until(lambda: "Could not establish a configuration source" in gsup("status").stdout)
    assert gsup.show(job)["state"] == "queued"
    daemon.stop(signal.SIGTERM)
    env.update(slurm.env)
    make_daemon()
    assert gsup.wait(job) == {job: "done"}
    assert json.loads(gsup.show(job)["result"]) == 5


def test_a_job_script_that_cannot_be_written_fails_its_job_in_one_line(
    slurm_env, fast_poll, make_daemon, gsup, home
):
    daemon = make_daemon()
    (home / "slurm").write_text("a file where the folder goes")
    job = gsup.add("-b", "slurm", "jobs:add", "1")
    assert gsup.wait(job) == {job: "failed"}
    assert gsup.show(job)["error"] == (f"cannot write its job script in {home}/slurm: File exists")
    (home / "slurm").unlink()
    assert gsup.run("-b", "slurm", "jobs:add", "1") == "done"
    assert daemon.process.poll() is None


def test_sbatch_variables_of_the_adding_shell_do_not_reach_sbatch(
    slurm_env, fast_poll, make_daemon, gsup, workdir
):
    make_daemon()
    slurm_env["SBATCH_ARRAY_INX"] = "1-4"  # the shell of `gsup add`, not the daemon's
    runs = workdir / "runs"
    job = gsup.add("-b", "slurm", "--cmd", "--", "sh", "-c", f"echo ran >> {runs}")
    assert gsup.wait(job) == {job: "done"}
    assert runs.read_text() == "ran\n"


def test_where_slurm_keeps_no_accounting_a_job_ends_by_its_own_word(
    slurm_env, fast_poll, make_daemon, gsup, workdir
):
    shims = workdir.parent / "shims"
    shims.mkdir()
    (shims / "sacct").write_text(
        "#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n"
    )
    (shims / "sacct").chmod(0o755)
    slurm_env["PATH"] = f"{shims}:{slurm_env['PATH']}"
    make_daemon()
    command = gsup.add("-b", "slurm", "--cmd", "--", "sh", "-c", "exit 3")
    call = gsup.add("-b", "slurm", "jobs:add", "6")
    assert gsup.wait(command, call) == {command: "failed", call: "done"}
    assert gsup.show(command)["error"] == "Slurm: FAILED, exit code 3"
    assert json.loads(gsup.show(call)["result"]) == 6


def test_a_slurm_job_of_this_state_dir_that_no_attempt_follows_is_cancelled_at_start(
    slurm_env, fast_poll, make_daemon, gsup, home, slurm
):
    import hashlib

    tag = hashlib.sha1(str(home).encode()).hexdigest()[:6]
    orphan = slurm.run("sbatch", "--parsable", f"--job-name=gsup-{tag}-99-99",
                       "--output=/dev/null", "--wrap", "sleep 300").stdout.strip()  # fmt: skip
    other = slurm.run("sbatch", "--parsable", "--job-name=gsup-other-99-99",
                      "--output=/dev/null", "--wrap", "sleep 300").stdout.strip()  # fmt: skip
    for started in (orphan, other):
        wait_until(lambda job=started: _squeue_state(slurm, job) == "RUNNING")
    daemon = make_daemon()
    daemon.said("backend slurm: cancelling 1 Slurm jobs no attempt follows")
    wait_until(lambda: _sacct(slurm, orphan) == f"{orphan}|CANCELLED|0:0")
    assert _squeue_state(slurm, other) == "RUNNING"  # not this state dir's
    assert _sacct(slurm, other) == ""
    slurm.run("scancel", other)


def test_a_release_that_fails_is_tried_again(slurm_env, fast_poll, make_daemon, gsup, workdir):
    shims = workdir.parent / "shims"
    shims.mkdir()
    once = workdir.parent / "failed-once"
    real = _which("scontrol")
    (shims / "scontrol").write_text(
        f"#!/bin/sh\nif [ ! -e {once} ]; then touch {once}; "
        "echo 'Unable to contact slurm controller' >&2; exit 1; fi\n"
        f'exec {real} "$@"\n'
    )
    (shims / "scontrol").chmod(0o755)
    slurm_env["PATH"] = f"{shims}:{slurm_env['PATH']}"
    make_daemon()
    job = gsup.add("-b", "slurm", "--on-lost", "fail", "jobs:add", "7")
    assert gsup.wait(job) == {job: "done"}
    assert once.exists()


def test_a_task_for_a_backend_that_cannot_run_is_refused(make_daemon, gsup, env, workdir):
    empty = workdir.parent / "empty"
    empty.mkdir()
    env["PATH"] = str(empty)
    make_daemon()
    (workdir / "t.toml").write_text(
        '[task]\nname = "t"\n[[transform]]\nname = "a"\nbackend = "slurm"\n'
        'target = "jobs:add"\nunits = [[1]]\n'
    )
    refused = gsup("task", "submit", "t.toml", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        "gsup: error: transform 'a': the slurm backend cannot run jobs: sbatch, squeue"
    )
