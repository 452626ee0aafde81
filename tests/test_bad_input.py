"""Bad input gets one clear line and a non-zero exit, or a failed job; never a crash."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import journal_rows, run_daemon_expecting_exit, wait_until


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("nosuchmodule:f", "cannot import module 'nosuchmodule'"),
        ("jobs:missing", "'jobs' has no attribute 'missing'"),
        ("jobs:not_callable", "jobs:not_callable is not callable (it is a int)"),
        ("broken:f", "importing 'broken' raised ZeroDivisionError"),
    ],
)
def test_a_target_that_cannot_be_used_fails_the_job(daemon, gsup, workdir, target, reason):
    (workdir / "broken.py").write_text("1 / 0\n")
    job = gsup.add(target)
    assert gsup.wait(job) == {job: "failed"}
    assert reason in gsup.show(job)["reason"]
    assert gsup.run("jobs:add", "1") == "done"  # the pool still works


def test_wrong_arguments_fail_the_job(daemon, gsup):
    job = gsup.add("jobs:add", "1", "2", "3")
    assert gsup.wait(job) == {job: "failed"}
    assert gsup.show(job)["error"].startswith("TypeError: add() takes")


def test_a_job_that_calls_sys_exit_only_fails(daemon, gsup, workdir):
    (workdir / "quits.py").write_text("import sys\ndef f():\n    sys.exit(4)\n")
    job = gsup.add("quits:f")
    assert gsup.wait(job) == {job: "failed"}
    assert gsup.show(job)["error"] == "SystemExit: 4"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["add", "no_colon"], 2, "target 'no_colon' must look like pkg.module:function"),
        (["add", "jobs:1x"], 2, "'1x' is not a Python name"),
        (["add", "jobs:add", "--kw", "novalue"], 2, "must look like name=value"),
        (["add", "jobs:add", "--priority", "10"], 2, "10 is above 9"),
        (["add", "jobs:add", "--queue", "other"], 2, "'other' is not one of user, monitoring"),
        (["add", "jobs:add", "--on-lost", "maybe"], 2, "'maybe' is not one of requeue, fail"),
        (["show", "999"], 1, "no job 999"),
        (["cancel", "999"], 1, "no job 999"),
        (["retry", "999"], 1, "no job 999"),
        (["wait", "999"], 1, "no job 999"),
        (["jobs", "--state", "weird"], 2, "'weird' is not one of queued, running, done"),
    ],
)
def test_cli_errors_are_one_line_and_exit_non_zero(daemon, gsup, args, code, message):
    result = gsup(*args, check=False)
    assert result.returncode == code
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert json.loads(gsup("jobs", "--json").stdout) == []


def test_check_binds_without_adding(daemon, gsup):
    ok = gsup("add", "--check", "jobs:add", "1", "--kw", "y=2")
    assert ok.stdout.strip() == "ok: jobs:add(1, y=2)"
    for args, message in [
        (["nosuch:f"], "cannot import module 'nosuch'"),
        (["jobs:missing"], "has no attribute 'missing'"),
        (["jobs:add", "1", "2", "3"], "does not accept these arguments: too many positional"),
        (["jobs:add"], "missing a required argument: 'x'"),
    ]:
        result = gsup("add", "--check", *args, check=False)
        assert result.returncode == 1, result
        assert message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert gsup("add", "--check", "--cmd", "--", "no-such-program", check=False).returncode == 1
    assert json.loads(gsup("jobs", "--json").stdout) == []


def test_add_without_a_daemon_says_how_to_start_one(gsup, home):
    result = gsup("add", "jobs:add", "1", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (  # GSUP_HOME is set, so a plain `gsup daemon` will do
        f"gsup: error: no gsup daemon is running for {home} (start one with: gsup daemon)"
    )
    without_env = gsup("add", "--home", str(home.parent / "other"), "jobs:add", check=False)
    assert without_env.stderr.strip().endswith(f"gsup daemon --home {home.parent / 'other'})")


def _raw_exchange(home, payload: bytes) -> list[dict]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(home / "gsup.sock"))
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except BrokenPipeError:
            pass  # refused half-way: the reply is already there to read
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"this is not json\n", "message is not JSON"),
        (b"[1, 2]\n", "message must be a JSON object"),
        (b'{"verb": "explode", "id": 1}\n', "unknown request 'explode'"),
        (b'{"verb": "add", "id": 1, "jobs": []}\n', "add needs a non-empty list of jobs"),
        (
            b'{"verb": "add", "id": 1, "jobs": [{"kind": "call", "target": "m:f", "priority": 12,'
            b' "arguments": "((), {})"}]}\n',
            "priority must be 0-9",
        ),
        (b'{"verb": "add", "id": 1, "jobs": [{"bogus": 1}]}\n', "unknown job fields: bogus"),
        (b'{"verb": "cancel", "id": 1, "job": "x"}\n', "job id must be a positive integer"),
        (b'{"verb": "freeze", "id": 1, "pool": "user", "frozen": "yes"}\n', "frozen must be"),
        (b'{"verb": {}, "id": 1}\n', "unknown request {}"),
        (b'{"verb": "cancel", "id": 1, "job": 99999999999999999999}\n', "job id must be"),
        (
            b'{"verb": "add", "id": 1, "jobs": [{"kind": "cmd", "argv": ["true"],'
            b' "timeout": 1e309}]}\n',
            "timeout must be a positive number",
        ),
        (
            b'{"verb": "add", "id": 1, "jobs": [{"kind": "cmd", "argv": ["true"],'
            b' "retries": 100000000000000000000000}]}\n',
            "retries must be 0 to 1,000,000",
        ),
        (
            b'{"verb": "add", "id": 1, "jobs": [{"kind": "cmd", "argv": ["true"],'
            b' "timeout": 1' + b"0" * 400 + b"}]}\n",
            "timeout must be a positive number",
        ),
    ],
)
def test_malformed_requests_get_an_error_reply(daemon, gsup, payload, error):
    replies = _raw_exchange(daemon.home, payload)
    assert replies[0]["ok"] is False
    assert error in replies[0]["error"]
    assert gsup("jobs", "--json").stdout.strip() == "[]"
    assert gsup.run("jobs:add", "1") == "done"  # still serving


def test_a_deeply_nested_message_is_refused(daemon, gsup):
    nested = b'{"verb": "ping", "id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    (reply,) = _raw_exchange(daemon.home, nested)
    assert reply == {"id": None, "ok": False, "error": "message is nested too deeply"}
    assert gsup.run("jobs:add", "1") == "done"


def test_an_oversized_message_is_refused_and_the_daemon_stays_up(daemon, gsup):
    replies = _raw_exchange(daemon.home, b"x" * (9 * 1024 * 1024))
    assert replies == [{"id": None, "ok": False, "error": "message larger than 8388608 bytes"}]
    assert gsup.run("jobs:add", "1") == "done"
    assert journal_rows(daemon.home, "SELECT count(*) FROM commands") == [(1,)]


def _add_raw(home, job: dict) -> int:
    payload = json.dumps({"verb": "add", "id": 1, "jobs": [job]}).encode() + b"\n"
    (reply,) = _raw_exchange(home, payload)
    assert reply["ok"], reply
    return reply["ids"][0]


def test_jobs_the_daemon_cannot_judge_fail_alone_and_the_pool_lives_on(daemon, gsup, workdir):
    (workdir / "odd.py").write_text(
        "class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\n"
        "def raise_odd():\n    raise Odd()\n"
    )
    call = {"kind": "call", "target": "jobs:add", "cwd": str(workdir), "path": [str(workdir)]}
    bad = [
        _add_raw(daemon.home, {**call, "arguments": "garbage("}),
        _add_raw(daemon.home, {**call, "arguments": "1"}),
        _add_raw(daemon.home, {"kind": "cmd", "argv": ["true"], "env": {"A=B": "1"}}),
        gsup.add("odd:raise_odd"),
    ]
    assert set(gsup.wait(*bad).values()) == {"failed"}
    assert "not a literal (args, kwargs) pair" in gsup.show(bad[0])["reason"]
    assert gsup.show(bad[3])["error"] == "Odd: <its str() raised>"
    # A word no program can be given is refused when it is added (see test_hostile_texts).
    nul = json.dumps({"verb": "add", "id": 1, "jobs": [
        {"kind": "cmd", "argv": ["echo", "a\u0000b"], "cwd": "/"}]}).encode() + b"\n"  # fmt: skip
    (refused,) = _raw_exchange(daemon.home, nul)
    assert refused["error"] == "argv must be a list of UTF-8 strings without NUL"
    # All five worker threads still work: five jobs that need each other to finish.
    flag = workdir / "go"
    together = [gsup.add("jobs:wait_for_file", str(flag)) for _ in range(5)]
    flag.touch()
    assert set(gsup.wait(*together).values()) == {"done"}


def test_long_timeouts_and_delays_are_fine_and_impossible_ones_refused(daemon, gsup):
    long = gsup.add(
        "--timeout",
        "3000000",
        "--retries",
        "1",
        "--retry-delay",
        "3000000",
        "--backoff",
        "1000",
        "--cmd",
        "--",
        "false",
    )
    assert gsup.run("jobs:add", "1") == "done"  # the daemon's timers cope
    retry = wait_until(lambda: (shown := gsup.show(long))["attempts"] == 1 and shown["not_before"])
    assert gsup.show(long)["state"] == "queued"  # its retry is due in a day, the longest
    assert 86_000 < retry - time.time() <= 86_400
    for flag in (["--timeout", "inf"], ["--timeout", "1e300"], ["--retry-delay", "nan"]):
        result = gsup("add", *flag, "jobs:add", "1", check=False)
        assert result.returncode != 0 and result.stderr.startswith("gsup: error:")


def test_a_shared_folder_is_not_taken_as_a_state_dir(env, home):
    home.mkdir(mode=0o777)
    home.chmod(0o1777)
    result = run_daemon_expecting_exit(env)
    assert result.returncode == 1
    assert "is not private" in result.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o1777  # left as it was


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("pools = 5\n", "[pools] in {file} must be a table"),
        ("grace = 'soon'\n", "grace in {file} must be a number from 0, not 'soon'"),
        (
            "[pools.user]\nthreads = 0\n",
            "pools.user.threads in {file} must be a whole number from 1",
        ),
        ("[pools.user]\nthreads = 2.5\n", "pools.user.threads in {file} must be a whole number"),
        ("max_result_mb = true\n", "max_result_mb in {file} must be a number above 0, not True"),
        ("not toml at all", "cannot read {file}"),
        ("graec = 3\n", "unknown setting graec in {file}; known: backend, backends, grace, group,"),
        ("[pools.user]\nthread = 3\n", "unknown setting pools.user.thread in {file}"),
        ("[pools.batch]\nthreads = 3\n", "unknown setting pools.batch in {file}"),
    ],
)
def test_a_bad_config_is_one_clear_line(env, home, toml, message):
    home.mkdir(mode=0o700)
    (home / "gsup.toml").write_text(toml)
    result = run_daemon_expecting_exit(env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message.format(file=home / "gsup.toml") in lines[0]


def test_a_config_that_is_not_utf8_is_one_clear_line(env, home):
    home.mkdir(mode=0o700)
    (home / "gsup.toml").write_bytes(b"grace = '\xff'\n")
    result = run_daemon_expecting_exit(env)
    assert (result.returncode, result.stderr) == (
        1,
        f"gsup: error: cannot read {home}/gsup.toml: not UTF-8 text (invalid start byte)\n",
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GSUP_USER_THREADS", "many", "GSUP_USER_THREADS must be a whole number, not 'many'"),
        (
            "GSUP_MONITORING_THREADS",
            "0",
            "GSUP_MONITORING_THREADS must be a whole number from 1 to 1,024, not '0'",
        ),
        ("GSUP_GRACE", "-1", "GSUP_GRACE must be a number from 0, not '-1'"),
        (
            "GSUP_USER_THREADS",
            "100000",
            "GSUP_USER_THREADS must be a whole number from 1 to 1,024, not '100000'",
        ),
        ("GSUP_KEEP_DAYS", "-1", "GSUP_KEEP_DAYS must be a number above 0, not '-1'"),
        ("GSUP_MAX_RESULT_MB", "0", "GSUP_MAX_RESULT_MB must be a number above 0, not '0'"),
    ],
)
def test_a_bad_environment_value_names_its_variable(env, variable, value, message):
    env[variable] = value
    result = run_daemon_expecting_exit(env)
    assert result.returncode == 1
    assert result.stderr.strip() == f"gsup: error: {message}"


def test_absurd_ids_and_a_zero_wait_are_clear(daemon, gsup):
    for args in (["show", "99999999999999999999"], ["logs", "99999999999999999999"]):
        result = gsup(*args, check=False)
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    job = gsup.add("jobs:sleep", "30")
    result = gsup("wait", str(job), "--timeout", "0", check=False)
    assert result.stderr.strip() == "gsup: error: timed out after 0s"


def test_a_low_open_files_limit_turns_new_clients_away(env, gsup, home):
    daemon = subprocess.Popen(  # a hard limit of 64 open files
        ["prlimit", "--nofile=64:64", sys.executable, "-P", "-m", "gsup", "daemon"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(daemon.stdout), daemon=True).start()
    try:
        wait_until(lambda: any("gsup: ready:" in line for line in lines), what="ready")
        held = []
        for _ in range(100):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(home / "gsup.sock"))
            held.append(sock)
        wait_until(lambda: any("refusing new clients: too many" in line for line in lines))
        for sock in held:
            sock.close()
        assert gsup.run("jobs:add", "1") == "done"  # it takes connections again
        assert daemon.poll() is None
    finally:
        daemon.kill()
        daemon.wait(30)


def test_a_command_word_that_is_not_utf8_is_refused(daemon, gsup):
    result = gsup("add", "--cmd", "--", "echo", os.fsdecode(b"\xff"), check=False)
    assert (result.returncode, result.stderr) == (
        1,
        "gsup: error: a command's words must be UTF-8 text; '\\udcff' is not\n",
    )


def test_probed_inputs_get_one_line_not_a_traceback(daemon, gsup, env, workdir):
    huge = gsup("add", "jobs:add", "9" * 5000, check=False)
    assert (huge.returncode, huge.stderr) == (
        1, "gsup: error: 99999999999999999999... is a number of 5,000 digits\n")  # fmt: skip
    nobody = gsup("jobs", "--home", "~nosuchuser/x", check=False)
    assert (nobody.returncode, nobody.stderr) == (
        1, "gsup: error: cannot find the home folder of ~nosuchuser\n")  # fmt: skip
    odd = Path(os.fsdecode(bytes(workdir) + b"/dir\xff"))
    odd.mkdir()
    refused = subprocess.run(
        [sys.executable, "-P", "-m", "gsup", "add", "--cmd", "--", "pwd"], env=env, cwd=odd,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (refused.returncode, refused.stderr) == (
        1, f"gsup: error: this folder's name is not UTF-8 ({str(odd)!r}); run from another\n",
    )  # fmt: skip
    assert gsup("jobs", "--json").stdout.strip() == "[]"
