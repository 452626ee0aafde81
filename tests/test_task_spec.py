"""Task descriptions (gsup/tasks/spec.py): task files and Python-built tasks, their
checks as one line naming the file's line, units, and the journal's JSON."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from gsup.config import DEFAULT_PRIORITY
from gsup.tasks.spec import (
    InputsFrom,
    Merger,
    Task,
    TaskError,
    Transform,
    Unit,
    check,
    check_targets,
    expand_units,
    load_task,
    task_from_json,
    task_to_json,
)

TASK_FILES = Path(__file__).parent / "task_files"
TYPES = "str, int, finite float, bool, lists and tables"


def double(x):
    """A target given by reference (this module can be imported by name)."""
    return 2 * x


@pytest.fixture
def write_task(tmp_path, monkeypatch):
    """Write sweep.toml in a fresh folder and work there: errors name `sweep.toml`."""
    monkeypatch.chdir(tmp_path)

    def write(text: str) -> str:
        (tmp_path / "sweep.toml").write_text(textwrap.dedent(text))
        return "sweep.toml"

    return write


def load_error(path: str) -> str:
    with pytest.raises(TaskError) as caught:
        load_task(path)
    return str(caught.value)


# --- the example -------------------------------------------------------------------

EXAMPLE = Task(
    name="sweep",
    transforms=[
        Transform(
            name="gen",
            target="mymod:generate",
            units=[[1], [2], [3]],
            outputs=("*.csv",),
            retries=2,
            merger=Merger("csv", ignore_failed=False, overwrite=False),
        ),
        Transform(
            name="fit",
            target="mymod:fit",
            inputs_from=InputsFrom("gen", mode="each", include=(), exclude=()),
            outputs=("fit.json",),
            merger=Merger("jsonl"),
        ),
    ],
    float=8,
    base=str(TASK_FILES),
)


def test_the_example_loads_into_the_expected_dataclasses():
    task = load_task(TASK_FILES / "sweep.toml")
    assert task == EXAMPLE  # every field; a dataclass equals only one of its own class
    gen, fit = task.transforms
    assert (task.name, task.float, task.base) == ("sweep", 8, str(TASK_FILES))
    assert (gen.target, gen.units, gen.outputs, gen.retries) == (
        "mymod:generate", [[1], [2], [3]], ("*.csv",), 2
    )  # fmt: skip
    assert (gen.queue, gen.backend, gen.priority, gen.timeout) == (
        None,
        None,
        DEFAULT_PRIORITY,
        None,
    )
    assert fit.inputs_from == InputsFrom(transform="gen", mode="each", include=(), exclude=())
    assert (fit.merger, gen.merger) == (Merger("jsonl"), Merger("csv", False, False))


def test_the_python_api_gives_the_same_task_as_the_file(monkeypatch):
    monkeypatch.chdir(TASK_FILES)  # a Python-built task's folder is the cwd
    task = Task(
        "sweep",
        [
            Transform(
                "gen",
                target="mymod:generate",
                units=[1, 2, 3],
                outputs=["*.csv"],
                retries=2,
                merger="csv",
            ),
            Transform(
                "fit", target="mymod:fit", inputs_from="gen", outputs=["fit.json"], merger="jsonl"
            ),
        ],
        float=8,
    )
    check(task)
    assert task == load_task("sweep.toml") == EXAMPLE


def test_the_tables_of_inputs_from_and_merger_load_into_their_dataclasses(write_task):
    path = write_task(
        """\
        [task]
        name = "sweep"

        [[transform]]
        name = "gen"
        cmd = ["bash", "-c", "echo $0 > out.csv"]
        params = {n = [1, 2]}
        merger = {kind = "csv", ignore_failed = true, overwrite = true}

        [[transform]]
        name = "fit"
        target = "mymod:fit"
        inputs_from = {transform = "gen", mode = "all", include = "*.csv", exclude = ["x*", "y*"]}
        retry_on = ["OSError", "timeout"]
        retry_recurring = true
        abort_after = "5%"
        queue = "monitoring"
        priority = 0
        timeout = 90.5
        """
    )
    gen, fit = load_task(path).transforms
    assert gen.cmd == ("bash", "-c", "echo $0 > out.csv")
    assert gen.params == {"n": [1, 2]}
    assert gen.merger == Merger("csv", ignore_failed=True, overwrite=True)
    assert fit.inputs_from == InputsFrom("gen", "all", ("*.csv",), ("x*", "y*"))
    assert (fit.retry_on, fit.retry_recurring, fit.abort_after) == (
        ("OSError", "timeout"),
        True,
        "5%",
    )
    assert (fit.queue, fit.priority, fit.timeout) == ("monitoring", 0, 90.5)


# --- each bad input, one line naming its line ------------------------------------------


def test_an_unknown_key_of_the_task(write_task):
    path = write_task(
        """\
        [task]
        name = "sweep"
        flaot = 8

        [[transform]]
        name = "gen"
        target = "mymod:generate"
        units = [1, 2]
        """
    )
    assert load_error(path) == "sweep.toml, line 3: unknown key 'flaot' in [task]"


def test_inputs_from_an_unknown_transform(write_task):
    path = write_task(
        """\
        [task]
        name = "sweep"

        [[transform]]
        name = "gen"
        target = "mymod:generate"
        units = [1, 2]

        [[transform]]
        name = "fit"
        target = "mymod:fit"
        inputs_from = "gne"
        """
    )
    assert load_error(path) == (
        "sweep.toml, line 12: transform 'fit': inputs_from names 'gne',"
        " which is not a transform of this task"
    )


def test_a_cycle_of_three(write_task):
    path = write_task(
        """\
        [task]
        name = "sweep"

        [[transform]]
        name = "a"
        cmd = ["true"]
        inputs_from = "c"

        [[transform]]
        name = "b"
        cmd = ["true"]
        inputs_from = "a"

        [[transform]]
        name = "c"
        cmd = ["true"]
        inputs_from = {transform = "b", mode = "all"}
        """
    )
    assert (
        load_error(path) == "sweep.toml, line 7: transforms 'a' -> 'b' -> 'c' -> 'a' form a cycle"
    )


def test_target_and_cmd_together(write_task):
    path = write_task(
        """\
        [task]
        name = "sweep"

        [[transform]]
        name = "gen"
        target = "mymod:generate"
        cmd = ["bash", "-c", "true"]
        units = [1, 2]
        """
    )
    assert load_error(path) == "sweep.toml, line 7: transform 'gen': give target or cmd, not both"


def test_a_toml_syntax_error_names_its_line_without_tomllib_position(write_task):
    path = write_task(
        """\
        [task]
        name = "sweep"
        float = 8 8
        """
    )
    assert load_error(path) == (
        "sweep.toml, line 3: Expected newline or end of document after a statement"
    )
    write_task('[task]\nname = "sweep"\nfloat = [1,\n2,\n')  # "at end of document"
    assert load_error(path) == "sweep.toml, line 4: Invalid value"


def test_a_file_that_cannot_be_read(write_task):
    assert load_error("nothere.toml") == "cannot read nothere.toml: No such file or directory"
    Path("latin1.toml").write_bytes(b'[task]\nname = "caf\xe9"\n')
    assert load_error("latin1.toml") == "latin1.toml is not UTF-8 text: invalid continuation byte"


# Each case: a task file with one problem, on the line marked `# <-`; and its message.
HEAD = '[task]\nname = "sweep"\n\n[[transform]]\nname = "gen"\n'
BAD_FILES = [
    (
        HEAD + 'target = "mymod:generate"\nunits = []  # <-\n',
        "transform 'gen': units is an empty list: the transform has no units",
    ),
    (
        HEAD + 'target = "mymod:generate"\nfiles = "data/*.txt"  # <-\nfiles_per_unit = 5\n',
        "transform 'gen': files 'data/*.txt' matches no file in {folder}",
    ),
    (
        HEAD + 'target = "mymod:generate"\nparams = {n = [1, 2], seed = []}  # <-\n',
        "transform 'gen': params: seed is an empty list: the transform has no units",
    ),
    (
        HEAD + 'target = "mymod:generate"\nunits = [1]\noutptus = ["x"]  # <-\n',
        "transform 'gen': unknown key 'outptus'",
    ),
    (
        '[task]\nname = "sweep"\n[[transforms]]  # <-\nname = "gen"\n',
        "unknown key 'transforms' (a task file holds [task] and [[transform]] tables)",
    ),
    ('[[transform]]  # <-\nname = "gen"\n', "no [task] table"),
    (
        'float = 3  # <-\n[task]\nname = "sweep"\n',
        "unknown key 'float' (a task file holds [task] and [[transform]] tables)",
    ),
    ('[task]  # <-\nname = "sweep"\n', "the task needs at least one transform"),
    ("[task]  # <-\nfloat = 3\n", "[task] needs a name"),
    (
        '[task]\nname = "my sweep"  # <-\n',
        "task name must be 1 to 100 letters, digits and . _ - (not only dots), not 'my sweep'",
    ),
    (
        '[task]\nname = "sweep"\nfloat = 0  # <-\n',
        "float must be a whole number from 1 (units in flight), not 0",
    ),
    (
        HEAD + 'target = "mymod:generate"\nunits = [1]\n[[transform]]\nname = "gen"  # <-\n'
        'cmd = ["true"]\nunits = [1]\n',
        "two transforms are named 'gen' (each names a folder)",
    ),
    (
        '[task]\nname = "sweep"\n[[transform]]  # <-\ntarget = "m:f"\n',
        "transform #1 needs a name",
    ),
    (
        '[task]\nname = "sweep"\n[[transform]]\nname = ".."  # <-\ncmd = ["true"]\n',
        "transform #1: name must be 1 to 100 letters, digits and . _ - (not only dots), not '..'",
    ),
    (
        '[task]\nname = "sweep"\n[[transform]]  # <-\nname = "gen"\nunits = [1]\n',
        "transform 'gen': give target or cmd",
    ),
    (
        HEAD + 'target = "mymod.generate"  # <-\nunits = [1]\n',
        "transform 'gen': target 'mymod.generate' must look like pkg.module:function",
    ),
    (
        HEAD + "cmd = []  # <-\nunits = [1]\n",
        "transform 'gen': cmd must be a non-empty list of strings, not ()",
    ),
    (
        HEAD.replace("]]", "]]  # <-") + 'cmd = ["true"]\n',
        "transform 'gen': give its units: units, params, files or inputs_from",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nparams = {n = [1]}  # <-\n',
        "transform 'gen': give one source of units, not both units and params",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nfiles_per_unit = 2  # <-\n',
        "transform 'gen': files_per_unit is given without files",
    ),
    *(
        (
            HEAD + f'cmd = ["true"]\nunits = [1]\noutputs = ["{glob}"]  # <-\n',
            f"transform 'gen': outputs: '{glob}' is not a glob relative to a unit's folder"
            " (no /, . or .. parts)",
        )
        for glob in ("out/../../x", ".", "./", "/etc/*", "a//b", "")
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nretries = -1  # <-\n',
        "transform 'gen': retries must be 0 to 1,000,000, not -1",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nretry_on = ["Oops"]  # <-\n',
        "transform 'gen': retry_on: each must be a built-in exception name (ValueError), the"
        " dotted path of one (mymod.MyError), 'timeout' or 'exit'; not 'Oops'",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nabort_after = "0%"  # <-\n',
        "transform 'gen': abort_after must be a count from 1 or a percentage such as '5%'"
        " (over 0, up to 100), not '0%'",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nqueue = "gpu"  # <-\n',
        "transform 'gen': unknown queue 'gpu'; choose from user, monitoring",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nbackend = "cloud"  # <-\n',
        "transform 'gen': unknown backend 'cloud'; choose from local, process, slurm, dask",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nsbatch = ["--partition=x"]  # <-\n',
        "transform 'gen': sbatch options go with backend = \"slurm\"",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nbackend = "slurm"\nsbatch = ["--output=x"]  # <-\n',
        "transform 'gen': sbatch: '--output=x' is no option gsup passes on (--name=value)",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nbackend = "process"\nqueue = "user"  # <-\n',
        "transform 'gen': queue user is a pool of the local backend, not of process",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\npriority = 10  # <-\n',
        "transform 'gen': priority must be 0-9, not 10",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\ntimeout = 0  # <-\n',
        "transform 'gen': timeout must be a positive number of seconds up to 3.1536e+07, not 0",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\nmerger = "zip"  # <-\n',
        "transform 'gen': merger must be text, csv, jsonl, tar or a custom merger's"
        " 'pkg.module:function', not 'zip'",
    ),
    (
        # A key of an inline table: the line of the key that holds the table.
        HEAD + 'cmd = ["true"]\nunits = [1]\nmerger = {kind = "csv", ignore = true}  # <-\n',
        "transform 'gen': merger: unknown key 'ignore'",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\n[transform.merger]  # <-\noverwrite = true\n',
        "transform 'gen': merger needs a kind",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [1]\n[[transform]]\nname = "fit"\ncmd = ["true"]\n'
        'inputs_from = {transform = "gen", mode = "any"}  # <-\n',
        "transform 'fit': inputs_from: mode must be each or all, not 'any'",
    ),
    (
        HEAD + 'cmd = ["true"]\nunits = [[1, 2024-01-31]]  # <-\n',
        f"transform 'gen': units: cannot journal datetime.date(2024, 1, 31) (a date):"
        f" arguments are {TYPES}",
    ),
    (
        # Lines inside arrays and strings that look like headers are no headers.
        HEAD + 'cmd = ["bash", "-c", """\n[[transform]]\n"""]\nunits = [\n  [1],\n  [2]\n]\n'
        "[[transform]]\nname = \"fit\"\ncmd = ['''\n[task]''']\nunits = [1]\nretries = -2  # <-\n",
        "transform 'fit': retries must be 0 to 1,000,000, not -2",
    ),
    (
        'task.name = "sweep"\ntask.float = -1  # <-\n',
        "float must be a whole number from 1 (units in flight), not -1",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_each_bad_task_file_gives_its_one_line(write_task, tmp_path, text, message):
    line = next(n for n, words in enumerate(text.splitlines(), 1) if "# <-" in words)
    expected = f"sweep.toml, line {line}: {message.format(folder=tmp_path)}"
    assert load_error(write_task(text)) == expected


def test_a_python_built_task_gets_the_same_messages_without_a_file_and_line(tmp_path):
    def error(*transforms: Transform) -> str:
        with pytest.raises(TaskError) as caught:
            check(Task("sweep", list(transforms), base=tmp_path))
        return str(caught.value)

    gen = Transform("gen", target="mymod:generate", units=[1])
    assert error(gen, Transform("fit", target="mymod:fit", inputs_from="gne")) == (
        "transform 'fit': inputs_from names 'gne', which is not a transform of this task"
    )
    a = Transform("a", cmd=["true"], inputs_from="b")
    assert error(a, Transform("b", cmd=["true"], inputs_from=InputsFrom("a"))) == (
        "transforms 'a' -> 'b' -> 'a' form a cycle"
    )
    assert error(Transform("gen", target="m:f", cmd=["true"], units=[1])) == (
        "transform 'gen': give target or cmd, not both"
    )
    assert error(Transform("gen", target="m:f", units=[[(1, 2)]])) == (
        f"transform 'gen': units: cannot journal (1, 2) (a tuple): arguments are {TYPES}"
    )
    assert error(Transform("gen", target="m:f", params={"x": [float("nan")]})) == (
        f"transform 'gen': params: cannot journal nan (a float): arguments are {TYPES}"
    )
    assert error(Transform("gen", target="m:f", files="*.txt")) == (
        f"transform 'gen': files '*.txt' matches no file in {tmp_path}"
    )
    assert error() == "the task needs at least one transform"


# --- units ----------------------------------------------------------------------


def test_params_expand_to_their_product_in_key_order(tmp_path):
    gen = Transform("gen", target="m:f", params={"n": [1, 2], "seed": [7, 8, 9]})
    task = Task("sweep", [gen], base=tmp_path)
    check(task)
    units = expand_units(task, gen)
    assert [unit.kwargs for unit in units] == [
        {"n": 1, "seed": 7},
        {"n": 1, "seed": 8},
        {"n": 1, "seed": 9},
        {"n": 2, "seed": 7},
        {"n": 2, "seed": 8},
        {"n": 2, "seed": 9},
    ]
    assert [list(unit.kwargs) for unit in units] == [["n", "seed"]] * 6
    assert [(unit.index, unit.args, unit.inputs) for unit in units] == [
        (i, (), ()) for i in range(6)
    ]


def test_units_are_argument_lists_and_a_scalar_is_one_argument(tmp_path):
    gen = Transform("gen", cmd=["echo"], units=[[1, "a"], 2, [[3, 4]], [{"k": "v"}]])
    task = Task("sweep", [gen], base=tmp_path)
    check(task)
    assert expand_units(task, gen) == [
        Unit(0, (1, "a"), {}, ()),
        Unit(1, (2,), {}, ()),
        Unit(2, ([3, 4],), {}, ()),
        Unit(3, ({"k": "v"},), {}, ()),
    ]


def test_files_are_sorted_and_grouped_files_per_unit(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    for name in ("e.txt", "a.txt", "c.txt", "b.txt", "d.txt", "skip.csv", "sub/f.txt"):
        (data / name).write_text(name)
    (data / "folder.txt").mkdir()  # a folder is no input
    gen = Transform("gen", target="m:f", files="data/*.txt", files_per_unit=2)
    task = Task("sweep", [gen], base=tmp_path)
    check(task)
    paths = [str(data / f"{letter}.txt") for letter in "abcde"]
    assert expand_units(task, gen) == [
        Unit(0, (), {}, (paths[0], paths[1])),
        Unit(1, (), {}, (paths[2], paths[3])),
        Unit(2, (), {}, (paths[4],)),
    ]


def test_files_globs_are_relative_to_the_task_file_folder(write_task, tmp_path, monkeypatch):
    (tmp_path / "in.txt").write_text("x")
    path = write_task(
        '[task]\nname = "sweep"\n[[transform]]\nname = "gen"\ncmd = ["cat"]\nfiles = "*.txt"\n'
    )
    task = load_task(tmp_path / path)
    monkeypatch.chdir("/")
    assert expand_units(task, task.transforms[0]) == [Unit(0, (), {}, (str(tmp_path / "in.txt"),))]


def test_an_inputs_from_transform_gets_its_units_from_the_engine():
    task = load_task(TASK_FILES / "sweep.toml")
    assert expand_units(task, task.transforms[1]) == []


# --- the journal's JSON ------------------------------------------------------------------


def test_the_json_round_trip_is_exact(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    task = Task(
        "campaign-1.2",
        [
            Transform(
                "gen",
                cmd=("bash", "-c", "echo $0"),
                units=[[1, 2.5, "é", True, [1, [2]]], [{"deep": {"list": [1.0, -3]}}]],
                retries=3,
                abort_after=2,
                timeout=30,
            ),
            Transform(
                "sweep",
                target=double,
                params={"x": [1, 2], "label": ["a", "b"]},
                retry_on=["OSError", "mymod.MyError", "timeout"],
                retry_recurring=True,
                queue="monitoring",
                priority=0,
            ),
            Transform(
                "read",
                target="mymod:read",
                files="*.txt",
                files_per_unit=3,
                outputs=["*.json", "logs/*"],
                abort_after="12.5%",
            ),
            Transform(
                "fit",
                target="mymod:fit",
                inputs_from=InputsFrom("gen", mode="all", include=["*.csv"], exclude="bad*"),
                merger=Merger("mymod:merge", ignore_failed=True, overwrite=True),
            ),
        ],
        float=3,
        base=tmp_path,
    )
    check(task)
    text = task_to_json(task)
    again = task_from_json(text)
    assert again == task
    assert task_to_json(again) == text
    assert again.transforms[3].inputs_from == InputsFrom("gen", "all", ("*.csv",), ("bad*",))
    assert again.base == str(tmp_path)


def test_the_json_round_trip_of_a_loaded_file_is_exact():
    task = load_task(TASK_FILES / "sweep.toml")
    assert task_from_json(task_to_json(task)) == task == EXAMPLE


def test_json_refuses_what_it_would_not_give_back_equal(tmp_path):
    task = Task("sweep", [Transform("gen", target="m:f", units=[[{1: "int key"}]])], base=tmp_path)
    with pytest.raises(TaskError) as caught:
        task_to_json(task)
    assert str(caught.value) == (
        f"transform 'gen': units: cannot journal {{1: 'int key'}} (a dict): arguments are {TYPES}"
    )
    good = task_to_json(Task("sweep", [Transform("x", cmd=["true"], units=[1])], base="/"))
    for text, why in [
        (good.replace('"cmd"', '"colour"'), "a transform has no field 'colour'"),
        (good.replace('"float"', '"flaot"'), "a task has no field 'flaot'"),
        (good.replace('"name": "x", ', ""), "a transform needs the field 'name'"),
        ("[]", "a task must be an object"),
        ("{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ]:
        with pytest.raises(TaskError) as caught:
            task_from_json(text)
        assert str(caught.value) == f"not the JSON of a task: {why}"


# --- targets ---------------------------------------------------------------------


MYMOD = """\
def generate(x):
    return x

def fit():
    return 1
"""


def test_check_targets_imports_each_target_in_a_child(write_task, tmp_path):
    (tmp_path / "mymod.py").write_text(MYMOD)
    path = write_task(
        """\
        [task]
        name = "sweep"

        [[transform]]
        name = "gen"
        target = "mymod:generate"
        units = [[1], [2]]

        [[transform]]
        name = "fit"
        target = "mymod:fit"
        inputs_from = "gen"

        [[transform]]
        name = "count"
        cmd = ["wc", "-l"]
        units = [["a.txt"]]
        """
    )
    assert check_targets(load_task(path)) is None


@pytest.mark.parametrize(
    ("target", "units", "problem"),
    [
        ("mymod:nothere", "[1]", "mymod:nothere: 'mymod' has no attribute 'nothere'"),
        ("nomod:generate", "[1]", "cannot import module 'nomod': No module named 'nomod'"),
        (
            "mymod:generate",
            "[[1, 2]]",
            "mymod:generate(x) does not accept these arguments: too many positional arguments",
        ),
    ],
)
def test_check_targets_gives_the_childs_reason_on_the_target_line(
    write_task, tmp_path, target, units, problem
):
    (tmp_path / "mymod.py").write_text(MYMOD)
    path = write_task(
        f'[task]\nname = "sweep"\n\n[[transform]]\nname = "gen"\ntarget = "{target}"\n'
        f"units = {units}\n"
    )
    task = load_task(path)
    with pytest.raises(TaskError) as caught:
        check_targets(task)
    assert str(caught.value) == f"sweep.toml, line 6: transform 'gen': {problem}"


def test_check_targets_finds_a_commands_program(tmp_path):
    gen = Transform("gen", cmd=["no-such-program-of-gsup", "x"], units=[1])
    with pytest.raises(TaskError) as caught:
        check_targets(Task("sweep", [gen], base=tmp_path))
    assert str(caught.value) == "transform 'gen': command not found: no-such-program-of-gsup"
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(tmp_path / "run.sh", 0o755)
    check_targets(Task("sweep", [Transform("gen", cmd=["./run.sh"], units=[1])], base=tmp_path))


def test_check_targets_hands_on_the_childs_warnings(tmp_path):
    (tmp_path / "mymod.py").write_text(MYMOD)
    (tmp_path / "json.py").write_text("x = 1\n")  # a module every pool has imported already
    warnings: list[str] = []
    task = Task("sweep", [Transform("gen", target="mymod:generate", units=[1])], base=tmp_path)
    check_targets(task, warn=warnings.append)
    assert warnings == [
        f"gsup: warning: {tmp_path}/json.py is not used: the pool had already imported the"
        f" module json ({json.__file__})"
    ]


def test_a_function_given_by_reference_is_converted():
    transform = Transform("gen", target=double, units=[1])
    assert transform.target == f"{__name__}:double"
    assert transform == Transform("gen", target=f"{__name__}:double", units=[1])


def test_a_lambda_is_refused():
    with pytest.raises(TaskError) as caught:
        Transform("gen", target=lambda x: x, units=[1])
    assert str(caught.value) == (
        "transform 'gen': test_a_lambda_is_refused.<locals>.<lambda> cannot be imported by name"
        " (a lambda, a closure or a function of __main__); a task's units run later: give a"
        " module's function"
    )
