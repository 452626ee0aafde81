"""The Python API against a real daemon: `from gsup import queues; queues.add(f, args=(123,))`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import wait_until

from gsup import BadOptions, GsupError, JobFailed, Queues, WaitTimeout


def double(x):
    return 2 * x


def talk(label):
    print(label, "to stdout")
    print(label, "to stderr", file=sys.stderr)


def wait_for_file(path, timeout=60):
    import os
    import time

    end = time.time() + timeout
    while not os.path.exists(path) and time.time() < end:
        time.sleep(0.01)
    return os.path.exists(path)


def _run_python(script: str, env: dict, cwd) -> subprocess.CompletedProcess[str]:
    """A separate Python process using the API, as a user's script would."""
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def queues(daemon, home) -> Queues:
    return Queues(home)


def test_an_importable_function_travels_by_reference(queues):
    job = queues.add(double, args=(21,))
    assert job.result(timeout=30) == 42
    assert job.state == "done"


def test_lambdas_and_closures_travel_by_value(queues):
    offset = 100

    def closure(x):
        return x + offset

    assert queues.add(lambda x, y: x * y, args=(6,), kwargs={"y": 7}).result(30) == 42
    assert queues.add(closure, args=(1,)).result(30) == 101


def test_arguments_that_are_not_literals_travel_by_value(queues):
    class Point:
        def __init__(self, x):
            self.x = x

    assert queues.add(lambda p: p.x, args=(Point(5),)).result(30) == 5


def test_a_failure_raises_with_the_reason(queues):
    def fails():
        raise RuntimeError("nope")

    job = queues.add(fails)
    with pytest.raises(JobFailed, match="RuntimeError: nope"):
        job.result(30)
    assert job.state == "failed"


def test_result_and_wait_time_out_with_a_gsup_error(queues):
    import time

    job = queues.add(time.sleep, args=(30,))
    with pytest.raises(WaitTimeout, match=rf"^job {job.id} has not ended within 0\.2s$"):
        job.result(timeout=0.2)
    with pytest.raises(TimeoutError):  # WaitTimeout is one too
        job.wait(timeout=0.2)
    # The waits left it alone: it runs (under load its pool may start it only now).
    wait_until(lambda: job.state == "running", what="the job to run")


def test_a_handle_cancels_waits_and_reads_its_logs(queues, workdir):
    job = queues.add(talk, args=("hi",))
    assert job.wait(30) == "done"
    assert job.logs() == "hi to stdout\nhi to stderr\n"
    assert job.logs(attempt=1) == job.logs()
    with pytest.raises(GsupError, match=rf"^job {job.id} has 1 attempts, not 2$"):
        job.logs(attempt=2)
    stuck = queues.add(wait_for_file, args=(str(workdir / "never"),))
    wait_until(lambda: stuck.state == "running", what="the job to start")
    assert stuck.cancel() == "running"  # being stopped
    assert stuck.wait(30) == "cancelled"


def surrogates():
    return "\udcff bad \ud800"


def test_a_result_with_lone_surrogates_comes_back_exactly(queues):
    assert queues.add(surrogates).result(30) == "\udcff bad \ud800"


def test_cancel_a_queued_job(queues):
    queues.freeze()
    job = queues.add(double, args=(1,))
    assert job.cancel() == "cancelled"
    assert job.wait(30) == "cancelled"
    with pytest.raises(GsupError, match="cancelled"):
        job.cancel()  # it has ended: "job N has already ended (cancelled)"


def test_queues_job_finds_an_existing_job(queues, gsup):
    added = gsup.add("jobs:add", "20", "--kw", "y=1")
    handle = queues.job(added)
    assert (handle.id, handle.result(30), repr(handle)) == (added, 21, f"<gsup job {added}>")
    with pytest.raises(GsupError, match=r"^no job 999999$"):
        queues.job(999999)


def test_every_error_of_the_api_is_a_gsup_error(queues, home):
    import gsup

    with pytest.raises(gsup.TargetError, match=r"must look like pkg\.module:function"):
        queues.add("no_colon")
    with pytest.raises(gsup.BadOptions, match="unknown job options: colour"):
        queues.add_many(double, [1], colour="red")
    with pytest.raises(gsup.TargetError, match="cannot send the call by value"):
        queues.add(lambda items: None, args=((i for i in range(3)),))
    with pytest.raises(gsup.DaemonNotRunning, match="no gsup daemon is running for"):
        Queues(home.parent / "elsewhere").add(double, args=(1,))
    with pytest.raises(gsup.TargetError, match="42 is neither callable nor"):
        queues.add(42)
    with pytest.raises(gsup.BadOptions, match="arguments must be an iterable, not 5"):
        queues.add_many(double, 5)
    with pytest.raises(gsup.GsupError, match="is not a job id"):
        queues.job(10**30)
    with pytest.raises(gsup.BadOptions, match="timeout must be None or a number"):
        queues.job(queues.add(double, args=(1,)).id).wait(timeout=float("nan"))
    errors = (gsup.TargetError, gsup.BadOptions, gsup.DaemonNotRunning, gsup.WaitTimeout,
              gsup.JobFailed, gsup.TaskError)  # fmt: skip
    assert all(issubclass(error, gsup.GsupError) for error in errors)


def test_add_refuses_an_unknown_option_as_add_many_does(queues, gsup):
    with pytest.raises(BadOptions, match=r"^unknown job options: colour, size$"):
        queues.add(double, args=(1,), colour="red", size=2)
    with pytest.raises(BadOptions, match=r"^unknown job options: colour, size$"):
        queues.add_many(double, [1], colour="red", size=2)
    assert json.loads(gsup("jobs", "--json").stdout) == []


def test_add_passes_every_job_option(queues, gsup):
    options = dict(priority=1, timeout=9, queue="monitoring", name="n", retries=2,
                   retry_delay=0.5, backoff=3, retry_on=["OSError"], on_lost="fail")  # fmt: skip
    job = queues.add(double, args=(1,), **options)
    assert job.result(30) == 2
    shown = json.loads(gsup("show", str(job.id), "--json").stdout)
    fields = ("priority", "timeout", "pool", "name", "retries", "retry_delay", "backoff",
              "retry_on", "on_lost")  # fmt: skip
    assert [shown[field] for field in fields] == [
        1, 9.0, "monitoring", "n", 2, 0.5, 3.0, '["OSError"]', "fail"
    ]  # fmt: skip


def test_the_job_options_are_the_cli_s_and_job_spec_fields():
    """One list of option names (api.JobOptions): `gsup add` has the same, and each is a
    field of a job."""
    import inspect

    from gsup.api import JOB_OPTIONS, _job_options
    from gsup.cli.commands.add import add
    from gsup.protocol import JobSpec

    cli_only = {"target", "args", "kw", "as_str", "cmd", "check", "from_file", "key", "home"}
    assert set(inspect.signature(add).parameters) - cli_only == JOB_OPTIONS
    assert set(_job_options(dict.fromkeys(JOB_OPTIONS))) <= set(JobSpec.__dataclass_fields__)


def test_task_error_is_exported_and_loaded_on_first_use(env, workdir):
    import gsup
    from gsup.tasks.spec import TaskError

    assert gsup.TaskError is TaskError and "TaskError" in gsup.__all__
    script = textwrap.dedent(
        """
        import sys, gsup
        print(sorted(name for name in sys.modules if name.startswith("gsup.")))
        from gsup import TaskError
        print(TaskError.__module__)
        """
    )
    assert _run_python(script, env, workdir).stdout == "[]\ngsup.tasks.spec\n"


def test_the_repr_of_a_handle_never_raises(make_daemon, home):
    home.mkdir(parents=True, exist_ok=True)
    (home / "gsup.toml").write_text("min_free_mb = 1e12\n")  # every add is refused
    make_daemon()
    job = Queues(home).add(double, args=(1,))
    repr(job)  # whether or not the refusal has come yet: no wait, no exception
    with pytest.raises(GsupError, match="is nearly full"):
        print(job.id)
    assert repr(job).startswith(f"<gsup job refused: the disk of {home} is nearly full (")


def test_priority_timeout_and_queue_are_passed(queues, gsup):
    import time

    job = queues.add(time.sleep, args=(30,), timeout=0.3, priority=2, queue="monitoring")
    with pytest.raises(JobFailed, match="timeout"):
        job.result(30)
    shown = json.loads(gsup("show", str(job.id), "--json").stdout)
    assert (shown["pool"], shown["priority"], shown["timeout"]) == ("monitoring", 2, 0.3)


def test_freeze_and_unfreeze(queues):
    queues.freeze()
    job = queues.add(double, args=(1,))
    assert job.state == "queued"
    queues.unfreeze()
    assert job.result(30) == 2


def test_bad_input_raises_at_once(queues):
    with pytest.raises(GsupError, match="unknown queue 'nope'"):
        queues.add(double, args=(1,), queue="nope")
    with pytest.raises(GsupError, match="priority must be 0-9"):
        queues.add(double, args=(1,), priority=11)


def test_queues_prints_the_same_table_as_the_cli(daemon, env, workdir):
    script = textwrap.dedent(
        """
        from gsup import queues
        queues.freeze("user")
        queues.add("jobs:add", args=(1,)).id  # journaled: the table reads the journal
        print(repr(queues))
        """
    )
    out = _run_python(script, env, workdir).stdout
    assert "gsup user threads (frozen)" in out
    assert "Worker_4" in out and "Command" in out and "Timeout" in out
    assert "gsup user queue: 1 pending" in out and "jobs:add(1)" in out


def test_ipython_pretty_printing_uses_the_table(queues):
    class Printer:
        text_seen = ""

        def text(self, value):
            self.text_seen += value

    printer = Printer()
    queues._repr_pretty_(printer, cycle=False)
    assert "gsup user threads" in printer.text_seen


def test_waiting_in_one_thread_does_not_hold_up_another(queues, workdir):
    import threading

    flag = workdir / "go"
    waiting = queues.add(wait_for_file, args=(str(flag),))
    results = []
    waiter = threading.Thread(target=lambda: results.append(waiting.result(60)))
    waiter.start()
    assert queues.add(double, args=(4,)).result(30) == 8  # while the other thread waits
    assert results == []
    flag.touch()
    waiter.join(60)
    assert results == [True]


def test_add_many_adds_one_job_per_item(queues):
    jobs = queues.add_many(double, [1, 2, (3,)], priority=2)
    assert [job.result(30) for job in jobs] == [2, 4, 6]
    with pytest.raises(TypeError, match="unknown job options: colour"):
        queues.add_many(double, [1], colour="red")


def test_a_keyed_batch_sent_again_adds_only_the_parts_not_added(daemon, queues):
    from conftest import journal_rows

    queues.freeze()
    cut = queues.add_many(double, range(10_000), key="sweep-1")  # what a cut batch had sent
    again = queues.add_many(double, range(25_000), key="sweep-1")  # three parts: 10k, 10k, 5k
    assert [job.id for job in again[:10_000]] == [job.id for job in cut]
    assert [job.id for job in again] == list(range(1, 25_001))
    assert journal_rows(daemon.home, "SELECT count(*) FROM jobs") == [(25_000,)]
    twice = queues.add_many(double, range(25_000), key="sweep-1")
    assert [job.id for job in twice] == list(range(1, 25_001))
    with pytest.raises(GsupError) as refused:
        queues.add_many(double, range(1, 10_001), key="sweep-1")  # other arguments
    assert str(refused.value) == (
        "the batch key sweep-1 was given to other jobs before; give these a new key"
    )
    assert journal_rows(daemon.home, "SELECT count(*) FROM jobs") == [(25_000,)]
    with pytest.raises(TypeError, match="a batch key is 1 to 100 letters"):
        queues.add_many(double, [1], key="a b")


def test_a_forked_child_uses_a_connection_of_its_own(queues):
    import os

    first = queues.add(double, args=(1,))  # its reply not read yet
    child = os.fork()
    if child == 0:
        ok = queues.add(double, args=(5,)).result(30) == 10
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert first.result(30) == 2


def test_replies_already_received_survive_a_lost_connection(daemon, queues):
    import signal

    from conftest import journal_rows, wait_until

    added = queues.add(double, args=(3,))  # its reply is not read here
    wait_until(lambda: journal_rows(daemon.home, "SELECT count(*) FROM jobs") == [(1,)])
    assert daemon.stop(signal.SIGTERM) == 0
    with pytest.raises(GsupError):
        assert queues.add(double, args=(4,)).id
    assert added.id == 1  # journaled, and known as such


def test_a_refused_add_that_nobody_read_is_reported_at_exit(daemon, env, workdir, home):
    script = (
        "from gsup import queues\n"
        "queues.add('jobs:add', args=(1,), queue='user')\n"  # accepted: nothing to say
        "queues.client.send('add', jobs=[{'kind': 'call'}])\n"  # refused: no target
    )
    result = _run_python(script, env, workdir)
    assert result.returncode == 0
    assert result.stderr.strip() == "gsup: 1 request(s) not done: a call job needs a target"


def test_big_results_and_errors_come_back_whole_or_clearly_cut(queues, workdir, monkeypatch):
    (workdir / "big.py").write_text(
        "def text(n, c='é'):\n    return c * n\n\ndef fail(n):\n    raise ValueError('é' * n)\n"
    )
    monkeypatch.syspath_prepend(str(workdir))
    assert queues.add("big:text", args=(700_000,)).result(60) == "é" * 700_000
    assert queues.add("big:text", args=(700_000, "😀")).result(60) == "😀" * 700_000
    big = queues.add("big:text", args=(3_000_000,)).result(60)  # 6 MB: kept whole
    assert big == "é" * 3_000_000
    with pytest.raises(JobFailed) as failed:
        queues.add("big:fail", args=(1_000_000,)).result(60)
    assert 16_000 < len(str(failed.value)) < 17_000
    assert "characters cut]" in str(failed.value)  # a cut says so
