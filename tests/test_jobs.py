"""Adding and running jobs through the real CLI against a real daemon."""

from __future__ import annotations

import json

from conftest import journal_rows


def test_add_runs_the_callable_and_stores_its_result(daemon, gsup):
    job = gsup.add("jobs:add", "123")
    assert gsup.wait(job) == {job: "done"}
    shown = gsup.show(job)
    assert shown["state"] == "done"
    assert json.loads(shown["result"]) == 123
    assert shown["result_type"] == "json"
    (attempt,) = shown["attempts_list"]
    assert attempt["executor"] == "user" and attempt["external_id"].startswith("Worker_")
    assert attempt["dispatched"] <= attempt["started"] <= attempt["ended"]
    assert (attempt["outcome"], attempt["charged"]) == ("done", 1)
    assert attempt["cpu_seconds"] >= 0 and attempt["exit_status"] is None
    assert [(e["before"], e["after"]) for e in shown["events"]] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "done"),
    ]


def test_arguments_are_literals_else_strings(daemon, gsup):
    job = gsup.add("jobs:types", "123", "[1,2]", "hello", "1.5", "None", "(1,)", "{'a': 1}")
    gsup.wait(job)
    assert json.loads(gsup.show(job)["result"]) == [
        "int",
        "list",
        "str",
        "float",
        "NoneType",
        "tuple",
        "dict",
    ]
    forced = gsup.add("jobs:types", "123", "[1]", "--str")
    gsup.wait(forced)
    assert json.loads(gsup.show(forced)["result"]) == ["str", "str"]


def test_keyword_arguments(daemon, gsup):
    job = gsup.add("jobs:echo", "1", "--kw", "name=[1, 2]", "--kw", "other=text")
    gsup.wait(job)
    assert json.loads(gsup.show(job)["result"]) == [[1], {"name": [1, 2], "other": "text"}]


def test_dotted_attribute_target(daemon, gsup, workdir):
    (workdir / "pkgmod.py").write_text(
        "class Tools:\n    @staticmethod\n    def twice(x):\n        return 2 * x\n"
    )
    job = gsup.add("pkgmod:Tools.twice", "21")
    gsup.wait(job)
    assert json.loads(gsup.show(job)["result"]) == 42


def test_result_that_is_not_json_is_stored_as_repr(daemon, gsup):
    job = gsup.add("jobs:unjsonable")
    gsup.wait(job)
    shown = gsup.show(job)
    assert (shown["result"], shown["result_type"]) == ("{1, 2}", "repr")


def test_none_is_no_result_and_a_retry_clears_the_last_runs(daemon, gsup, home, workdir):
    (workdir / "quiet.py").write_text("def nothing():\n    pass\n")
    job = gsup.add("jobs:echo")  # returns ((), {}): a result
    nothing = gsup.add("quiet:nothing")
    assert gsup.wait(job, nothing) == {job: "done", nothing: "done"}
    shown = gsup.show(nothing)
    assert (shown["result"], shown["result_type"]) == (None, None)
    assert journal_rows(home, "SELECT job FROM results ORDER BY job") == [(job,)]
    failed = gsup.add("--cmd", "--", "sh", "-c", "echo out; exit 3")
    assert gsup.wait(failed) == {failed: "failed"}
    assert json.loads(gsup.show(failed)["result"])["exit_code"] == 3
    gsup("freeze", "--queue", "user")
    gsup("retry", str(failed))
    shown = gsup.show(failed)
    assert (shown["state"], shown["result"], shown["result_type"]) == ("queued", None, None)
    assert journal_rows(home, "SELECT count(*) FROM results WHERE job = ?", (failed,)) == [(0,)]


def test_exception_is_stored_with_traceback(daemon, gsup):
    job = gsup.add("jobs:boom")
    assert gsup.wait(job) == {job: "failed"}
    shown = gsup.show(job)
    assert shown["error"] == "ValueError: bad value"
    assert 'raise ValueError("bad value")' in shown["traceback"]
    assert shown["reason"] == "ValueError: bad value"
    human = gsup("show", str(job)).stdout
    assert "ValueError: bad value" in human and "Traceback" in human


def test_command_job_stores_exit_code_stdout_and_stderr(daemon, gsup, workdir):
    job = gsup.add("--cmd", "--", "sh", "-c", "pwd; echo oops >&2; exit 3")
    assert gsup.wait(job) == {job: "failed"}
    shown = gsup.show(job)
    result = json.loads(shown["result"])
    assert result == {"exit_code": 3, "stdout": f"{workdir}\n", "stderr": "oops\n"}
    assert shown["reason"] == "exit code 3"
    ok = gsup.add("--cmd", "--", "true")
    assert gsup.wait(ok) == {ok: "done"}


def test_command_not_found_fails_the_job(daemon, gsup):
    job = gsup.add("--cmd", "--", "no-such-program-here")
    assert gsup.wait(job) == {job: "failed"}
    assert "no-such-program-here" in gsup.show(job)["error"]


def test_output_is_captured_per_job_while_threads_share_a_process(daemon, gsup):
    jobs = [gsup.add("jobs:shout", f"job{i}") for i in range(4)]
    assert set(gsup.wait(*jobs).values()) == {"done"}
    for i, job in enumerate(jobs):
        result = gsup("logs", str(job))
        lines = result.stdout.splitlines()
        assert lines == [f"job{i} {n}" for n in range(200)]
        assert result.stderr == f"job{i} to stderr\n"


def test_jobs_lists_newest_first_with_filters(daemon, gsup):
    done = gsup.add("jobs:add", "1")
    failed = gsup.add("jobs:boom")
    gsup.wait(done, failed)
    listed = json.loads(gsup("jobs", "--json").stdout)
    assert [j["id"] for j in listed] == [failed, done]
    only_failed = json.loads(gsup("jobs", "--json", "--state", "failed").stdout)
    assert [j["id"] for j in only_failed] == [failed]
    assert len(json.loads(gsup("jobs", "--json", "--limit", "1").stdout)) == 1
    assert json.loads(gsup("jobs", "--json", "--queue", "monitoring").stdout) == []
    assert "jobs:boom()" in gsup("jobs").stdout


def test_monitoring_queue_runs_jobs_too(daemon, gsup):
    job = gsup.add("jobs:add", "2", "--queue", "monitoring")
    gsup.wait(job)
    assert gsup.show(job)["pool"] == "monitoring"


def test_retries_run_a_failing_job_again(daemon, gsup):
    job = gsup.add("jobs:boom", "--retries", "2")
    assert gsup.wait(job) == {job: "failed"}
    shown = gsup.show(job)
    assert shown["attempts"] == 3
    assert [e["after"] for e in shown["events"]].count("running") == 3


def test_a_failure_that_would_recur_is_retried_only_if_asked(daemon, gsup):
    missing = gsup.add("jobs:no_such_function", "--retries", "2")
    assert gsup.wait(missing) == {missing: "failed"}
    assert gsup.show(missing)["attempts"] == 1  # an import that failed fails again
    asked = gsup.add("jobs:no_such_function", "--retries", "2",
                     "--retry-on", "gsup.targets.TargetError")  # fmt: skip
    assert gsup.wait(asked) == {asked: "failed"}
    assert gsup.show(asked)["attempts"] == 3


def test_retry_by_hand(daemon, gsup, workdir):
    job = gsup.add("jobs:record", str(workdir / "side"), "x")
    gsup.wait(job)
    assert "only an ended job that did not succeed" in gsup("retry", str(job), check=False).stderr
    failed = gsup.add("jobs:boom")
    gsup.wait(failed)
    assert gsup("retry", str(failed)).stdout.strip() == f"{failed}: queued"
    assert gsup.wait(failed) == {failed: "failed"}
    assert gsup.show(failed)["attempts"] == 2


def test_every_command_is_journaled(daemon, gsup):
    job = gsup.add("jobs:add", "1")
    gsup.wait(job)
    gsup("freeze")
    gsup("unfreeze")
    verbs = [row[0] for row in journal_rows(daemon.home, "SELECT verb FROM commands ORDER BY seq")]
    assert verbs == ["add", "freeze", "unfreeze"]


def test_wait_exits_non_zero_unless_all_are_done(daemon, gsup):
    good = gsup.add("jobs:add", "1")
    bad = gsup.add("jobs:boom")
    result = gsup("wait", str(good), str(bad), check=False)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{good}: done", f"{bad}: failed"]


def test_retries_wait_with_backoff(daemon, gsup):
    job = gsup.add("jobs:boom", "--retries", "2", "--retry-delay", "0.2", "--backoff", "3")
    assert gsup.wait(job) == {job: "failed"}
    events = gsup.show(job)["events"]
    dispatched = [e["at"] for e in events if e["after"] == "running"]
    assert len(dispatched) == 3
    assert dispatched[1] - dispatched[0] >= 0.2  # 0.2 s, then 0.6 s
    assert dispatched[2] - dispatched[1] >= 0.6
    assert [e["why"] for e in events if e["before"] == "failed"] == [
        "retry after failed in 0.2s",
        "retry after failed in 0.6s",
    ]


def test_retry_on_names_the_exceptions_worth_a_retry(daemon, gsup, workdir):
    (workdir / "flaky.py").write_text(
        "def oserror():\n    raise FileNotFoundError('gone')\n"
        "def valueerror():\n    raise ValueError('bad')\n"
    )
    retried = gsup.add("flaky:oserror", "--retries", "1", "--retry-on", "OSError")
    not_retried = gsup.add("flaky:valueerror", "--retries", "1", "--retry-on", "OSError")
    command = gsup.add("--retries", "1", "--retry-on", "exit", "--cmd", "--", "false")
    timed_out = gsup.add(
        "jobs:sleep", "30", "--timeout", "0.3", "--retries", "1", "--retry-on", "timeout"
    )
    gsup.wait(retried, not_retried, command, timed_out)
    assert gsup.show(retried)["attempts"] == 2  # FileNotFoundError is an OSError
    assert gsup.show(not_retried)["attempts"] == 1
    assert gsup.show(command)["attempts"] == 2
    assert gsup.show(timed_out)["attempts"] == 2


def test_a_module_is_imported_from_the_folder_of_each_add_and_anew_when_edited(
    daemon, gsup, workdir
):
    other = workdir.parent / "other"
    other.mkdir()
    (workdir / "where.py").write_text("def who():\n    return 'work'\n")
    (other / "where.py").write_text("def who():\n    return 'other folder'\n")
    first = gsup.add("where:who")
    gsup.wait(first)
    gsup.cwd = other
    second = gsup.add("where:who")
    gsup.wait(second)
    (other / "where.py").write_text("def who():\n    return 'other folder, edited'\n")
    third = gsup.add("where:who")
    gsup.wait(third)
    results = [json.loads(gsup.show(job)["result"]) for job in (first, second, third)]
    assert results == ["work", "other folder", "other folder, edited"]


def test_a_job_imports_its_own_siblings(daemon, gsup, workdir):
    (workdir / "helper.py").write_text("VALUE = 41\n")
    (workdir / "main_job.py").write_text(
        "def run():\n    import helper\n    return helper.VALUE + 1\n"
    )
    job = gsup.add("main_job:run")
    assert gsup.wait(job) == {job: "done"}
    assert json.loads(gsup.show(job)["result"]) == 42


def test_a_job_that_replaces_sys_stdout_does_not_hide_later_output(daemon, gsup, workdir):
    (workdir / "rude.py").write_text(
        "import os, sys\ndef run():\n    sys.stdout = open(os.devnull, 'w')\n"
    )
    gsup.wait(gsup.add("rude:run"))
    job = gsup.add("jobs:shout", "after", "--kw", "n=3")
    gsup.wait(job)
    assert gsup("logs", str(job)).stdout == "after 0\nafter 1\nafter 2\n"


def test_add_from_a_file_adds_one_job_per_line(daemon, gsup, workdir):
    (workdir / "list.txt").write_text(
        "# one job a line\njobs:add 1 --\n\njobs:echo 'two words' \"[1, 2]\"\njobs:add 3\n"
    )
    ids = [
        int(line) for line in gsup("add", "--from", "list.txt", "--priority", "3").stdout.split()
    ]
    assert len(ids) == 3
    assert set(gsup.wait(*ids).values()) == {"failed", "done"}  # "add 1 --" is one too many
    assert json.loads(gsup.show(ids[1])["result"]) == [["two words", [1, 2]], {}]
    assert gsup.show(ids[2])["priority"] == 3
    from_stdin = gsup("add", "--from", "-", "--cmd", input="echo hi\ntrue\n").stdout.split()
    assert set(gsup.wait(*map(int, from_stdin)).values()) == {"done"}
    assert "give a TARGET, or --from FILE" in gsup("add", check=False).stderr
    assert "holds no job" in gsup("add", "--from", "-", input="# nothing\n", check=False).stderr


def test_show_lists_each_attempt_with_what_it_used(daemon, gsup):
    job = gsup.add("--retries", "1", "--cmd", "--", "sh", "-c", "echo try; exit 3")
    assert gsup.wait(job) == {job: "failed"}
    attempts = gsup.show(job)["attempts_list"]
    assert [(a["outcome"], a["exit_status"], a["charged"]) for a in attempts] == [
        ("failed", 3, 1),
        ("failed", 3, 1),
    ]
    assert all(a["cpu_seconds"] >= 0 and a["peak_rss_kb"] > 0 for a in attempts)
    table = gsup("show", str(job)).stdout
    assert "attempts" in table and table.count("exit code 3") >= 3  # reason, and each attempt
