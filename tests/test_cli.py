"""The one CLI: every command's help, version, status, stop, and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import wait_until

import gsup
from gsup.cli import commands
from gsup.executors.slurm.commands import TOOLS as SLURM_TOOLS

COMMANDS = sorted(
    path.stem for path in Path(commands.__path__[0]).glob("*.py") if path.stem != "__init__"
)


def test_every_command_is_listed_in_the_top_help(gsup):
    listed = re.findall(r"^  (\w+) ", gsup("--help").stdout.split("Commands:")[1], re.M)
    assert sorted(listed) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_help_without_python_types(gsup, command, flag):
    text = gsup(command, flag).stdout
    assert text.startswith(f"Usage: gsup {command} ")
    assert not re.search(r"<(str|int|float|list|path)|list\[|\{\w+\}|range>", text), text


@pytest.mark.parametrize("command", COMMANDS)
def test_no_command_imports_pydantic(gsup, command):
    """Typer's own coercion would import pydantic (~80 ms): gsup/cli/adapt.py avoids it."""
    args = {  # each converts a value, and ends at once (no daemon runs)
        "add": ["jobs:add", "1", "--priority", "3"],
        "daemon": ["--user-threads", "0"],
        "jobs": ["--limit", "3"],
        "stop": ["--timeout", "1"],
        "wait": ["1", "--timeout", "1"],
        "web": ["--listen", "not-an-address"],
        **{command: ["1"] for command in ("show", "logs", "cancel", "retry")},
    }
    result = subprocess.run(
        [sys.executable, "-P", "-X", "importtime", "-m", "gsup", command, *args.get(command, [])],
        env=gsup.env,
        cwd=gsup.cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "typer" in imported  # the check can see what was imported
    assert "pydantic" not in imported
    assert "rich" not in imported


def test_version(gsup):
    assert gsup("--version").stdout == f"gsup {gsup_version()}\n"


def gsup_version() -> str:
    return gsup.__version__


NOT_AN_ID = "is not a job id (ids are whole numbers from 1)"


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (["show", "abc"], 2, f"'abc' {NOT_AN_ID} (see: gsup show --help)"),
        (["cancel", "1", "x2"], 2, f"'x2' {NOT_AN_ID} (see: gsup cancel --help)"),
        (["logs", "0"], 2, f"'0' {NOT_AN_ID} (see: gsup logs --help)"),
        (["show", "12"], 1, "no job 12"),
        (["logs", "12"], 1, "no job 12"),
        (
            ["jobs", "--limit", "many"], 2,
            "Invalid value for '--limit' / '-n': 'many' is not a whole"
            " number (see: gsup jobs --help)",
        ),
        (
            ["jobs", "--state", "finished"], 2,
            "Invalid value for '--state' / '-s': 'finished' is not one of queued, running,"
            " done, failed, timeout, cancelled, lost (see: gsup jobs --help)",
        ),
        (
            ["add", "jobs:add", "--priority", "10"], 2,
            "Invalid value for '--priority' / '-p': 10 is above 9 (see: gsup add --help)",
        ),
        (["show", "1", "--bogus"], 2, "No such option: --bogus (see: gsup show --help)"),
        (["frobnicate"], 2, "No such command 'frobnicate'. (see: gsup --help)"),
        (
            ["add", "jobs:add", "-5"], 2,
            "No such option: -5 (a negative number goes after --: gsup add mymod:f -- -5)",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_naming_it(daemon, gsup, args, code, error):
    result = gsup(*args, check=False)
    assert (result.returncode, result.stderr, result.stdout) == (
        code,
        f"gsup: error: {error}\n",
        "",
    )


ADD_USAGE = " (see: gsup add --help)"
CALL_ONLY = "--kw and --str are for a call's arguments; a command takes words"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "give a TARGET, or --from FILE with one job per line"),
        (["--cmd"], "give the command: gsup add --cmd -- PROG ARG..., or --from FILE"),
        (
            ["jobs:add", "--from", "jobs.txt"],
            "give a TARGET or --from FILE, not both ('jobs:add' and --from)",
        ),
        (
            ["jobs:add", "1", "--cmd"],
            "--cmd goes before the command: gsup add --cmd -- jobs:add ...",
        ),
        (["--cmd", "--kw", "x=1", "--", "echo"], CALL_ONLY),
        (["--cmd", "--str", "--", "echo"], CALL_ONLY),
        (
            ["jobs:add", "--retry-on", "Flaky"],
            "--retry-on Flaky: give a built-in exception name (ValueError), the dotted path"
            " of one (mymod.MyError), 'timeout' or 'exit'",
        ),
        (
            ["jobs:add", "1", "--key", "a/b"],
            "--key: a batch key is 1 to 100 letters, digits and . _ : -, not 'a/b'",
        ),
        (["jobs:add", "--kw", "novalue"], "keyword argument 'novalue' must look like name=value"),
        (["jobs:add", "--kw", "y=1", "--kw", "y=2"], "--kw y is given twice"),
        (["no_colon"], "target 'no_colon' must look like pkg.module:function"),
        (["jobs:1x"], "target 'jobs:1x': '1x' is not a Python name"),
    ],
)
def test_every_usage_error_of_add_exits_2_with_one_line(gsup, args, error):
    """No daemon runs: each is refused before anything is sent."""
    result = gsup("add", *args, check=False)
    assert (result.returncode, result.stderr, result.stdout) == (
        2,
        f"gsup: error: {error}{ADD_USAGE}\n",
        "",
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["show"], "Missing argument 'ID'. (see: gsup show --help)"),
        (["logs"], "Missing argument 'ID'. (see: gsup logs --help)"),
        (["cancel"], "Missing argument 'ID'. (see: gsup cancel --help)"),
        (["retry"], "Missing argument 'ID'. (see: gsup retry --help)"),
        (["wait"], "Missing argument 'ID'. (see: gsup wait --help)"),
        (["prune"], "Missing option '--older-than'. (see: gsup prune --help)"),
        (["service"], "Missing command. (see: gsup service --help)"),
        (["journal"], "Missing command. (see: gsup journal --help)"),
        (["task", "submit"], "Missing argument 'FILE'. (see: gsup task submit --help)"),
        (
            ["service", "install", "--bogus"],
            "No such option: --bogus (Possible options: --user) (see: gsup service install --help)",
        ),
    ],
)
def test_a_missing_argument_anywhere_exits_2_pointing_at_its_help(gsup, args, error):
    result = gsup(*args, check=False)
    assert (result.returncode, result.stderr, result.stdout) == (2, f"gsup: error: {error}\n", "")


def test_retry_on_help_says_what_is_retried_by_default(gsup):
    from gsup.lifecycle import RECURRING

    help_text = " ".join(gsup("add", "--help").stdout.split())  # as one line, unwrapped
    assert (
        "repeatable [default: any failure or timeout but a target that cannot be loaded, which"
        f" would fail again: name {RECURRING} to retry that too]" in help_text
    )


def test_the_top_help_says_how_to_install_completion(gsup):
    assert "Shell completion: gsup --install-completion (bash, zsh, fish, PowerShell)." in (
        gsup("--help").stdout
    )


def test_retry_on_a_dotted_path_is_checked_and_honoured(daemon, gsup, workdir):
    (workdir / "flaky.py").write_text(
        "class Flaky(Exception):\n    pass\n\n"
        "def once(path):\n"
        "    import os\n"
        "    if not os.path.exists(path):\n"
        "        open(path, 'w').close()\n"
        "        raise Flaky('first time')\n"
        "    return 'second time'\n"
    )
    marker = str(workdir / "tried")
    ok = gsup("add", "--check", "flaky:once", marker, "--retry-on", "flaky.Flaky")
    assert ok.stdout.startswith("ok: ")
    bad = gsup("add", "--check", "flaky:once", marker, "--retry-on", "flaky.Nope", check=False)
    assert bad.returncode == 1
    assert bad.stderr.startswith("gsup: error: --retry-on flaky.Nope: cannot import it")
    job = gsup.add("flaky:once", marker, "--retries", "1", "--retry-on", "flaky.Flaky")
    assert gsup.wait(job) == {job: "done"}
    assert gsup.show(job)["attempts"] == 2


def _slurm_missing() -> str:
    """What status says of Slurm's tools: the test runs with or without Slurm."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    return f"; {', '.join(missing)} not found on the daemon's PATH" if missing else ""


def _dask_unusable() -> str:
    """What status says of the dask backend, which has no address here."""
    if importlib.util.find_spec("distributed") is None:
        return "the distributed package is not installed: pip install 'gsup[dask]'"
    return "no scheduler address: set [backends.dask] address in gsup.toml (or GSUP_DASK_ADDRESS)"


def test_status_tells_whether_the_daemon_is_up(make_daemon, gsup, home):
    down = gsup("status", check=False)
    assert down.returncode == 1
    assert down.stderr.startswith(f"gsup: error: no gsup daemon is running for {home}")
    daemon = make_daemon()
    job = gsup.add("jobs:add", "1")
    assert gsup.wait(job) == {job: "done"}
    up = gsup("status").stdout.splitlines()
    assert up[0].startswith(f"gsup {gsup_version()}: running, pid {daemon.pid}, up ")
    assert up[1:] == [
        f"home:  {home}",
        "pools: user 5 threads (0 in flight), monitoring 5 threads (0 in flight),"
        f" process {os.cpu_count()} threads (0 in flight)",
        "slurm: 0 jobs (at most 10000)" + _slurm_missing(),
        "dask:  0 jobs (at most 10000); " + _dask_unusable(),
        "jobs:  1 done",
    ]
    info = json.loads(gsup("status", "--json").stdout)
    assert (info["running"], info["pid"], info["jobs"]) == (True, daemon.pid, {"done": 1})


def test_stop_waits_for_a_graceful_stop(make_daemon, gsup, workdir):
    daemon = make_daemon("--grace", "30")
    job = gsup.add("jobs:wait_for_file", str(workdir / "go"))
    wait_until(lambda: gsup.running(job), what="the job to start")
    stopping = subprocess.Popen(
        [sys.executable, "-P", "-m", "gsup", "stop"],
        env=gsup.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert daemon.said("stopping: 1 job in flight gets 30s")
    (workdir / "go").touch()  # the job ends within the grace period
    output, _ = stopping.communicate(timeout=60)
    assert stopping.returncode == 0
    assert output == "stopping: 1 job in flight gets 30s\nstopped\n"
    assert daemon.process.wait(30) == 0
    assert gsup.show(job)["state"] == "done"


def test_stop_now_requeues_what_runs(make_daemon, gsup, workdir):
    daemon = make_daemon("--grace", "300")
    job = gsup.add("jobs:sleep", "300")
    wait_until(lambda: gsup.running(job), what="the job to start")
    assert gsup("stop", "--now").stdout == "stopped\n"  # no grace period to say
    assert daemon.process.wait(30) == 0
    assert "gsup: stopping: 1 job in flight gets 0s\n" in daemon.output  # not the 300 s
    assert gsup.show(job)["state"] == "queued"


def test_shell_completion_completes_commands_and_choices(gsup):
    def complete(line: str) -> list[str]:
        words = line.split(" ")
        env = dict(gsup.env, _GSUP_COMPLETE="complete_bash", COMP_WORDS=line,
                   COMP_CWORD=str(len(words) - 1))  # fmt: skip
        done = subprocess.run([sys.executable, "-P", "-m", "gsup"], env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("gsup st") == ["status", "stop"]
    assert complete("gsup jobs --state f") == ["failed"]
    assert complete("gsup add --queue m") == ["monitoring"]


def test_cancel_goes_on_past_a_job_it_cannot_cancel(daemon, gsup):
    gsup("freeze")
    job = gsup.add("jobs:add", "1")
    result = gsup("cancel", "99998", str(job), check=False)
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        f"{job}: cancelled\n",
        "gsup: error: no job 99998\n",
    )


def _answer_one_add_then_vanish(listener: socket.socket, requests: int) -> None:
    """A daemon that reads `requests` add requests, confirms the first, and dies."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as lines:
        first = json.loads(lines.readline())
        for _ in range(requests - 1):
            lines.readline()
        ids = list(range(1, len(first["jobs"]) + 1))
        conn.sendall(json.dumps({"id": first["id"], "ok": True, "ids": ids}).encode() + b"\n")


def test_a_batch_cut_short_says_which_jobs_were_added(gsup, home, workdir):
    home.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(home / "gsup.sock"))
    listener.listen()
    daemon = threading.Thread(target=_answer_one_add_then_vanish, args=(listener, 3))
    daemon.start()
    lines = "jobs:add 1\n" * 25_000  # in three requests: 10,000, 10,000 and 5,000 jobs
    (workdir / "lines").write_text(lines)
    result = gsup("add", "--from", "lines", check=False)
    daemon.join(10)
    listener.close()
    assert result.returncode == 1
    assert result.stdout.split() == [str(job) for job in range(1, 10_001)]
    key = re.fullmatch(
        r"gsup: error: the daemon closed the connection; 10,000 of 25,000 jobs were added,"
        r" 15,000 may have been \(no answer came\); run it again with --key ([0-9a-f]{16}) to"
        r" add the rest, never twice\n",
        result.stderr,
    )
    assert key is not None, result.stderr


def test_a_batch_added_again_with_its_key_adds_nothing_twice(daemon, gsup, workdir):
    gsup("freeze")
    (workdir / "lines").write_text("jobs:add 1\n" * 15_000)  # two requests
    first = gsup("add", "--from", "lines", "--key", "nightly.1").stdout.split()
    assert gsup("add", "--from", "lines", "--key", "nightly.1").stdout.split() == first
    assert first == [str(job) for job in range(1, 15_001)]
    (workdir / "lines").write_text("jobs:add 2\n" * 15_000)
    refused = gsup("add", "--from", "lines", "--key", "nightly.1", check=False)
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        1,
        "",
        "gsup: error: the batch key nightly.1 was given to other jobs before; give these a new"
        " key\n",
    )


def _answer_one_add_then_stall(listener: socket.socket, answered: threading.Event,
                               done: threading.Event) -> None:  # fmt: skip
    """A daemon that reads one add request, confirms it, then reads nothing more."""
    conn, _ = listener.accept()
    with conn, conn.makefile("rb") as lines:
        first = json.loads(lines.readline())
        ids = list(range(1, len(first["jobs"]) + 1))
        conn.sendall(json.dumps({"id": first["id"], "ok": True, "ids": ids}).encode() + b"\n")
        answered.set()
        done.wait(60)


def test_ctrl_c_during_a_batch_says_which_jobs_were_added_and_the_key(gsup, home, workdir):
    home.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(home / "gsup.sock"))
    listener.listen()
    answered, done = threading.Event(), threading.Event()
    daemon = threading.Thread(target=_answer_one_add_then_stall, args=(listener, answered, done))
    daemon.start()
    # Requests of megabytes (no two lines alike): the second cannot fit in the socket's
    # buffers, so the client is still sending it when Ctrl-C comes.
    (workdir / "lines").write_text("".join(f"jobs:add {n}{'x' * 1000}\n" for n in range(20_000)))
    client = subprocess.Popen(
        [sys.executable, "-P", "-m", "gsup", "add", "--from", "lines"], env=gsup.env,
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert answered.wait(60)
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=60)
    done.set()
    daemon.join(10)
    listener.close()
    added = [str(job) for job in range(1, 5_001)]  # the first request (10 MB of jobs: halved)
    assert (client.returncode, out.split()) == (1, added)
    key = re.fullmatch(
        rf"gsup: error: interrupted; {len(added):,} of 20,000 jobs were added; run it again"
        r" with --key ([0-9a-f]{16}) to add the rest, never twice\n",
        err,
    )
    assert key is not None, err


def test_a_group_builds_the_subcommand_named_and_helps_with_all(gsup):
    listed = gsup("task", "--help").stdout
    assert all(f"  {name} " in listed for name in (
        "submit", "list", "show", "wait", "pause", "resume", "retry-failed", "retry-merge",
        "reset"))  # fmt: skip
    result = gsup("task", "nosuch", check=False)
    assert (result.returncode, result.stderr) == (
        2, "gsup: error: No such command 'nosuch'. (see: gsup task --help)\n")  # fmt: skip
    assert gsup("task", "show", "--help").stdout.startswith("Usage: gsup task show [OPTIONS] ID")
