"""Task files and their checks, without a daemon: what loads, and the one line each
mistake gets (naming the file's line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gsup.tasks.spec import (
    InputsFrom,
    Merger,
    Task,
    TaskError,
    Transform,
    Unit,
    check,
    expand_units,
    load_task,
    task_from_json,
    task_to_json,
)

EXAMPLE = """\
[task]
name = "sweep"
float = 8

[[transform]]
name = "gen"
target = "mymod:generate"
units = [[1], [2], 3]
outputs = ["*.csv"]
retries = 2
merger = "csv"

[[transform]]
name = "fit"
target = "mymod:fit"
inputs_from = {transform = "gen", mode = "all", include = "*.csv"}
outputs = ["fit.json"]
merger = {kind = "jsonl", overwrite = true}
abort_after = "5%"
"""


def _load(tmp_path: Path, text: str) -> Task:
    (tmp_path / "sweep.toml").write_text(text)
    return load_task(tmp_path / "sweep.toml")


def _refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(TaskError) as refused:
        _load(tmp_path, text)
    return str(refused.value)


def test_the_example_loads(tmp_path):
    task = _load(tmp_path, EXAMPLE)
    gen, fit = task.transforms
    assert (task.name, task.float, task.base) == ("sweep", 8, tmp_path)
    assert (gen.target, gen.units, gen.outputs, gen.retries, gen.merger) == (
        "mymod:generate", [[1], [2], 3], ("*.csv",), 2, Merger("csv"))  # fmt: skip
    assert fit.inputs_from == InputsFrom("gen", "all", ("*.csv",), ())
    assert (fit.merger, fit.abort_after) == (Merger("jsonl", overwrite=True), "5%")
    assert expand_units(task, gen) == [Unit(0, (1,)), Unit(1, (2,)), Unit(2, (3,))]
    assert expand_units(task, fit) == []  # made by the engine as gen's units finish


def test_a_task_goes_through_the_journal_unchanged(tmp_path):
    task = _load(tmp_path, EXAMPLE)
    assert task_from_json(task_to_json(task)) == task


@pytest.mark.parametrize(
    ("change", "line", "why"),
    [
        (("float = 8", "flaot = 8"), 3, "unknown key 'flaot' in [task]"),
        (("retries = 2", "retrys = 2"), 10, "unknown key 'retrys' in transform 'gen'"),
        (
            ('inputs_from = {transform = "gen"', 'inputs_from = {transform = "gne"'),
            16,
            "transform 'fit': inputs_from names 'gne', which is not a transform of this task",
        ),
        (
            ('target = "mymod:generate"', 'target = "mymod:generate"\ncmd = ["true"]'),
            7,
            "transform 'gen': give target or cmd, not both",
        ),
        (
            ('target = "mymod:fit"', 'target = "mymod"'),
            15,
            "transform 'fit': target 'mymod' must look like pkg.module:function",
        ),
        (("retries = 2", "retries = -1"), 10, "transform 'gen': retries must be 0 to 1,000,000"),
        (
            ('abort_after = "5%"', 'abort_after = "5"'),
            19,
            "transform 'fit': abort_after is a count from 1 or a share such as \"5%\"",
        ),
        (("float = 8", "float = 0"), 3, "float must be a whole number from 1, not 0"),
        (
            ('merger = "csv"', 'merger = "xml"'),
            11,
            "transform 'gen': merger is one of text, csv, jsonl, tar or pkg.mod:func, not 'xml'",
        ),
        (("units = [[1], [2], 3]", "units = []"), 8, "transform 'gen' has no units"),
    ],
)
def test_each_mistake_gets_one_line_naming_its_line(tmp_path, change, line, why):
    assert _refusal(tmp_path, EXAMPLE.replace(*change)) == f"sweep.toml, line {line}: {why}"


def test_a_toml_syntax_error_names_its_line(tmp_path):
    assert _refusal(tmp_path, EXAMPLE.replace("float = 8", "float = ")) == (
        "sweep.toml, line 3: Invalid value"
    )


def test_a_cycle_is_refused(tmp_path):
    text = """\
[task]
name = "loop"
[[transform]]
name = "a"
target = "m:f"
inputs_from = "c"
[[transform]]
name = "b"
target = "m:f"
inputs_from = "a"
[[transform]]
name = "c"
target = "m:f"
inputs_from = "b"
"""
    assert _refusal(tmp_path, text) == (
        "sweep.toml, line 6: transforms 'a' -> 'c' -> 'b' -> 'a' form a cycle"
    )


def test_params_are_a_product_in_key_order(tmp_path):
    task = Task("p", [Transform("t", target="m:f", params={"n": [1, 2], "seed": [7, 8]})])
    check(task)
    assert [u.kwargs for u in expand_units(task, task.transforms[0])] == [
        {"n": 1, "seed": 7}, {"n": 1, "seed": 8}, {"n": 2, "seed": 7}, {"n": 2, "seed": 8},
    ]  # fmt: skip


def test_files_are_grouped_in_name_order(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("c.txt", "a.txt", "b.txt", "skip.csv"):
        (data / name).write_text(name)
    task = Task("f", [Transform("t", target="m:f", files="data/*.txt", files_per_unit=2)],
                base=tmp_path)  # fmt: skip
    check(task)
    assert [u.inputs for u in expand_units(task, task.transforms[0])] == [
        (str(data / "a.txt"), str(data / "b.txt")), (str(data / "c.txt"),),
    ]  # fmt: skip


def test_a_python_task_gets_the_same_lines_without_a_place():
    task = Task("x", [Transform("t", target="m:f", units=[[object()]])])
    with pytest.raises(TaskError) as refused:
        check(task)
    assert str(refused.value).startswith("transform 't': units: <object object at ")
