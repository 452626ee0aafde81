"""A job's output: seen while it runs, followed to its end, kept per attempt."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import wait_until

TALKER = """
import os, sys, time

def talk(folder):
    print("first line")                      # no flush: the pool writes line by line
    print("to stderr", file=sys.stderr)
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.01)
    print("last line")
    return "said"

def flaky(folder, command=False):
    marker = os.path.join(folder, "tried")
    first = not os.path.exists(marker)
    open(marker, "a").close()
    print("run", "one" if first else "two")
    if first:
        raise OSError("first run fails")
    return "ok"
"""


def test_prints_reach_the_log_while_the_job_runs(daemon, gsup, workdir):
    (workdir / "talker.py").write_text(TALKER)
    job = gsup.add("talker:talk", str(workdir))
    wait_until(lambda: gsup("logs", str(job)).stdout == "first line\n", what="the first line")
    assert gsup("logs", str(job)).stderr == "to stderr\n"
    assert gsup.show(job)["state"] == "running"
    (workdir / "go").touch()
    assert gsup.wait(job) == {job: "done"}
    assert gsup("logs", str(job)).stdout == "first line\nlast line\n"


def test_logs_follow_a_running_job_to_its_end(daemon, gsup, workdir):
    (workdir / "talker.py").write_text(TALKER)
    job = gsup.add("talker:talk", str(workdir))
    follower = subprocess.Popen(
        [sys.executable, "-P", "-m", "gsup", "logs", "-f", str(job)],
        env=gsup.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    assert follower.stdout.readline() == "first line\n"  # while the job still runs
    assert follower.poll() is None
    (workdir / "go").touch()
    out, err = follower.communicate(timeout=60)
    assert (follower.returncode, out, err) == (0, "last line\n", "to stderr\n")
    assert gsup.show(job)["state"] == "done"


def test_each_attempt_keeps_its_own_output(daemon, gsup, workdir):
    (workdir / "talker.py").write_text(TALKER)
    job = gsup.add("talker:flaky", str(workdir), "--retries", "1")
    assert gsup.wait(job) == {job: "done"}
    assert gsup("logs", str(job), "--attempt", "1").stdout == "run one\n"
    assert gsup("logs", str(job), "--attempt", "2").stdout == "run two\n"
    assert gsup("logs", str(job)).stdout == "run two\n"  # the last attempt by default
    missing = gsup("logs", str(job), "--attempt", "3", check=False)
    assert (missing.returncode, missing.stderr) == (
        1,
        f"gsup: error: job {job} has 2 attempts, not 3\n",
    )


def test_a_commands_attempts_keep_their_own_output(daemon, gsup, workdir):
    script = "test -e tried && echo second || { touch tried; echo first; exit 1; }"
    job = gsup.add("--retries", "1", "--cmd", "--", "sh", "-c", script)
    assert gsup.wait(job) == {job: "done"}
    assert gsup("logs", str(job), "-a", "1").stdout == "first\n"
    assert gsup("logs", str(job)).stdout == "second\n"
    follow_ended = gsup("logs", "-f", str(job))
    assert follow_ended.stdout == "second\n"


def test_a_job_may_write_bytes_to_its_stdout(daemon, gsup, workdir):
    (workdir / "binary.py").write_text(
        "import sys\ndef f():\n    print('text first')\n"
        "    sys.stdout.buffer.write(b'\\xff\\x00bytes\\n')\n"
    )
    job = gsup.add("binary:f")
    assert gsup.wait(job) == {job: "done"}
    logged = subprocess.run(
        [sys.executable, "-P", "-m", "gsup", "logs", str(job)], env=gsup.env, capture_output=True
    )
    assert logged.stdout == b"text first\n\xff\x00bytes\n"


LOUD = """
def shout(megabytes):
    line = "x" * 99
    for _ in range(megabytes * 10_000):
        print(line)
"""
CUT_LINE = "\n[gsup: the rest of this output is dropped: this log reached max_log_mb (1 MB)]\n"


def test_a_jobs_log_is_cut_at_max_log_mb_saying_so(make_daemon, env, gsup, home, workdir):
    (workdir / "loud.py").write_text(LOUD)
    env["GSUP_MAX_LOG_MB"] = "1"
    make_daemon()
    call = gsup.add("loud:shout", "3")
    command = gsup.add("--cmd", "--", "sh", "-c", "yes 0123456789 | head -c 3000000")
    assert gsup.wait(call, command) == {call: "done", command: "done"}
    for job in (call, command):
        (attempt,) = gsup.show(job)["attempts_list"]
        text = (home / "logs" / f"{job}.{attempt['id']}.out").read_text()
        assert len(text) == 1_000_000 + len(CUT_LINE)
        assert text.endswith(CUT_LINE)


def _unreadable_even_for_root() -> str:
    """A file no one may read, root included (a write-only sysctl: root's permission
    over it is its mode's owner bits, not CAP_DAC_OVERRIDE)."""
    path = "/proc/sys/vm/drop_caches"
    try:
        open(path, "rb").close()
    except PermissionError:
        return path
    pytest.skip(f"{path} is readable here: no file to stand for an unreadable log")


def test_logs_of_an_unreadable_log_file_say_so_in_one_line(daemon, gsup, home):
    job = gsup.add("--cmd", "--", "echo", "hi")
    assert gsup.wait(job) == {job: "done"}
    (log,) = (home / "logs").glob(f"{job}.*.out")
    log.unlink()
    log.symlink_to(_unreadable_even_for_root())
    for follow in ([], ["-f"]):
        result = gsup("logs", *follow, str(job), check=False)
        assert (result.returncode, result.stdout, result.stderr) == (
            1,
            "",
            f"gsup: error: cannot read {log}: Permission denied\n",
        )


def test_logs_and_recover_of_a_home_whose_name_is_too_long_say_so_in_one_line(gsup, home):
    home = home.parent / ("x" * 256)  # a file name has 255 bytes at most
    journal = f"gsup: error: cannot read the journal {home}/journal.sqlite: File name too long\n"
    config = f"gsup: error: cannot read {home}/gsup.toml: File name too long\n"
    for command, error in ((["logs", "1"], journal), (["recover", "--dry-run"], config)):
        result = gsup(*command, "--home", str(home), check=False)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", error)
