"""A job runs what `python -c "from mod import attr"` would import in the folder, and with
the PYTHONPATH, of its `gsup add`, as the files are when it starts; nothing one
folder brings is seen by another folder's jobs."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from conftest import Cli

import gsup as gsup_package


def _folder(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    for file, text in files.items():
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_text(textwrap.dedent(text))
    return folder


def _run(gsup: Cli, folder: Path, *args: str) -> tuple[int, str]:
    """Add a job from `folder`, wait for it: its id and end state."""
    gsup.cwd = folder
    job = gsup.add(*args)
    return job, gsup.wait(job)[job]


def _result(gsup: Cli, job: int) -> object:
    return json.loads(gsup.show(job)["result"])


def test_two_folders_with_the_same_module_each_run_their_own(daemon, gsup, workdir):
    a = _folder(workdir.parent, "a", {"mymod.py": "def f():\n    return 'a'\n"})
    b = _folder(workdir.parent, "b", {"mymod.py": "def f():\n    return 'b'\n"})
    (b / "only_b.py").write_text("VALUE = 'b'\n")
    (a / "uses_only_b.py").write_text("def f():\n    import only_b\n    return only_b.VALUE\n")
    ran = [_run(gsup, folder, "mymod:f") for folder in (a, b, b, a)]
    assert [_result(gsup, job) for job, _ in ran] == ["a", "b", "b", "a"]
    _, state = _run(gsup, b, "mymod:missing")  # b's mymod imported, then a failure
    assert state == "failed"
    after, state = _run(gsup, a, "mymod:f")
    assert (state, _result(gsup, after)) == ("done", "a")
    leaked, state = _run(gsup, a, "uses_only_b:f")
    assert state == "failed"
    assert gsup.show(leaked)["error"] == "ModuleNotFoundError: No module named 'only_b'"


def test_a_folder_module_that_shadows_one_the_pool_imported_is_not_used_and_said(
    daemon, gsup, workdir
):
    uses_json = "import json\ndef f():\n    return json.dumps([1])\n"
    shadowing = _folder(
        workdir.parent,
        "shadowing",
        {"json.py": "def dumps(value):\n    return 'fake'\n", "usejson.py": uses_json},
    )
    other = _folder(workdir.parent, "other", {"usejson.py": uses_json})
    own, _ = _run(gsup, shadowing, "usejson:f")
    neighbour, _ = _run(gsup, other, "usejson:f")
    assert (_result(gsup, own), _result(gsup, neighbour)) == ("[1]", "[1]")
    warning = f"gsup: warning: {shadowing}/json.py is not used: the pool had already imported"
    assert warning in gsup("logs", str(own)).stderr
    assert gsup("logs", str(neighbour)).stderr == ""


def test_an_edited_helper_of_a_package_is_run_as_it_is_on_disk(daemon, gsup, workdir):
    folder = _folder(
        workdir.parent,
        "project",
        {
            "pkg/__init__.py": "",
            "pkg/helper.py": "VALUE = 1\n",
            "pkg/main.py": "from pkg import helper\ndef f():\n    return helper.VALUE\n",
        },
    )
    first, _ = _run(gsup, folder, "pkg.main:f")
    helper = folder / "pkg" / "helper.py"
    before = helper.stat().st_mtime_ns
    helper.write_text("VALUE = 2\n")  # same size: only the mtime tells
    os.utime(helper, ns=(before + 5 * 10**9, before + 5 * 10**9))
    second, state = _run(gsup, folder, "pkg.main:f")
    assert (_result(gsup, first), state, _result(gsup, second)) == (1, "done", 2)
    assert [a["outcome"] for a in gsup.show(second)["attempts_list"]] == ["done"]


def test_check_agrees_with_the_run(daemon, gsup, workdir):
    here = _folder(workdir.parent, "here", {"only_here.py": "def f():\n    return 1\n"})
    elsewhere = _folder(workdir.parent, "elsewhere", {"placeholder.txt": ""})
    # pytest is installed, and no pool has imported it: the folder's file is used.
    installed = _folder(
        workdir.parent,
        "installed",
        {"pytest.py": "def f():\n    return 'folder'\n", "json.py": "def mine():\n    return 1\n"},
    )
    gsup.cwd = here
    assert gsup("add", "--check", "only_here:f").stdout == "ok: only_here:f()\n"
    assert _result(gsup, _run(gsup, here, "only_here:f")[0]) == 1
    gsup.cwd = elsewhere
    refused = gsup("add", "--check", "only_here:f", check=False)
    assert "cannot import module 'only_here'" in refused.stderr
    job, state = _run(gsup, elsewhere, "only_here:f")
    assert state == "failed" and "cannot import module 'only_here'" in gsup.show(job)["error"]
    gsup.cwd = installed
    assert gsup("add", "--check", "pytest:f").stdout == "ok: pytest:f()\n"
    assert _result(gsup, _run(gsup, installed, "pytest:f")[0]) == "folder"
    gsup.cwd = installed
    refused = gsup("add", "--check", "json:mine", check=False)
    assert f"gsup: warning: {installed}/json.py is not used" in refused.stderr
    assert "'json' has no attribute 'mine'" in refused.stderr
    job, state = _run(gsup, installed, "json:mine")
    assert state == "failed" and "'json' has no attribute 'mine'" in gsup.show(job)["error"]


def test_what_the_target_module_prints_while_imported_is_in_the_job_log(daemon, gsup, workdir):
    (workdir / "loud.py").write_text(
        "print('importing loud')\ndef f():\n    print('running')\n    return 1\n"
    )
    job, state = _run(gsup, workdir, "loud:f")
    assert state == "done"
    assert gsup("logs", str(job)).stdout == "importing loud\nrunning\n"


RECORDER = """
import os, time

def run(log, label, total):
    _write(log, f"start {label}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until another job runs beside it (or none can)
        lines = open(log).read().split("\\n")
        starts = sum(line.startswith("start") for line in lines)
        running = starts - sum(line.startswith("end") for line in lines)
        if running >= 2 or starts == total:
            break
        time.sleep(0.005)
    _write(log, f"end {label}")
    return label

def _write(log, line):
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)
"""


def test_jobs_of_many_folders_share_the_threads_and_each_runs_once(make_daemon, gsup, workdir):
    make_daemon("--user-threads", "2")
    folders = [_folder(workdir.parent, f"f{i}", {"recorder.py": RECORDER}) for i in range(3)]
    log = workdir / "runs.log"
    gsup("freeze")
    jobs = []
    for n in range(9):
        gsup.cwd = folders[n % 3]
        jobs.append(gsup.add("recorder:run", str(log), f"job{n}", "9"))
    gsup("unfreeze")
    assert set(gsup.wait(*jobs).values()) == {"done"}
    lines = log.read_text().splitlines()
    assert sorted(lines) == sorted(
        [f"start job{n}" for n in range(9)] + [f"end job{n}" for n in range(9)]
    )
    running = most = 0
    for line in lines:
        running += 1 if line.startswith("start") else -1
        most = max(most, running)
    assert most == 2
    assert all(gsup.show(job)["attempts"] == 1 for job in jobs)


def test_a_module_imported_as_the_job_ran_then_edited_is_read_anew(daemon, gsup, workdir):
    """The edit comes right after the end is seen: it must count as a change."""
    folder = _folder(workdir.parent, "lazy", {
        "pkg/__init__.py": "",
        "pkg/sub.py": "V = 11\n",
        "pkg/top.py": "def f():\n    from pkg import sub\n    return sub.V\n",
    })  # fmt: skip
    seen = []
    for value in (11, 12, 13):
        (folder / "pkg" / "sub.py").write_text(f"V = {value}\n")
        job, state = _run(gsup, folder, "pkg.top:f")
        seen.append((state, _result(gsup, job)))
    assert seen == [("done", 11), ("done", 12), ("done", 13)]


def test_a_gsup_checkout_beside_the_code_is_not_warned_about(daemon, gsup, workdir):
    """Jobs get the daemon's gsup: a folder holding a gsup package (gsup's own
    development) changes nothing, and costs no warning in every job's log."""
    folder = _folder(workdir.parent, "dev", {
        "gsup/__init__.py": "raise ImportError('not this one')\n",
        "usesgsup.py": "import gsup\ndef f():\n    return gsup.__version__\n",
    })  # fmt: skip
    job, state = _run(gsup, folder, "usesgsup:f")
    assert (state, _result(gsup, job)) == ("done", gsup_package.__version__)
    assert gsup("logs", str(job)).stderr == ""


def test_only_a_folder_file_named_as_an_installed_module_makes_the_check_import_a_pools_modules(
    tmp_path,
):
    from gsup.imports import may_shadow_installed

    folder = _folder(
        tmp_path, "project", {"mymod.py": "", "__pycache__/mymod.pyc": "", "x.txt": ""}
    )
    assert not may_shadow_installed([str(folder)])  # the check skips the daemon's imports
    for folder_name, file in (
        ("stdlib", "json.py"),
        ("builtin", "sys.py"),
        ("site", "peewee/a.py"),
    ):
        named = _folder(tmp_path, folder_name, {file: "", "mymod.py": ""})
        assert may_shadow_installed([str(named)]), file
