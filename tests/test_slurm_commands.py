"""What the Slurm executor reads from Slurm's commands, as Slurm 22.05 prints it."""

from __future__ import annotations

from gsup.executors.slurm import commands
from gsup.executors.slurm.commands import Finished, Listed


def test_squeue_lines_are_read_and_bad_ones_kept_aside():
    listed, bad = commands.parse_squeue(
        "12|PENDING|Resources\n13|RUNNING|None\n\n14_2|PENDING|JobHeldUser\nnonsense\n|RUNNING|x\n"
    )
    assert listed == {
        "12": Listed("PENDING", "Resources"),
        "13": Listed("RUNNING", "None"),
        "14_2": Listed("PENDING", "JobHeldUser"),
    }
    assert bad == ["nonsense", "|RUNNING|x"]


def test_sacct_gives_each_jobs_state_and_exit_code_or_signal():
    text = (
        "4|COMPLETED|0:0\n4.batch|COMPLETED|0:0\n6|FAILED|3:0\n7|FAILED|0:9\n"
        "8|CANCELLED by 0|0:15\n9|TIMEOUT|0:0\nbad line\n"
    )
    assert commands.parse_sacct(text) == {
        "4": Finished("COMPLETED", 0),
        "6": Finished("FAILED", 3),
        "7": Finished("FAILED", -9),
        "8": Finished("CANCELLED", -15),
        "9": Finished("TIMEOUT", 0),
    }


def test_sbatch_parsable_output_and_an_unreachable_controller():
    assert commands.parse_sbatch("123\n") == "123"
    assert commands.parse_sbatch("123;cluster\n") == "123"
    assert commands.parse_sbatch("sbatch: error: x\n") is None
    down = "sbatch: error: Batch job submission failed: Unable to contact slurm controller"
    assert commands.unreachable(down)
    assert not commands.unreachable("sbatch: error: invalid partition specified: nope")
    assert commands.one_line("a\n\n b \n") == "a; b"


def test_a_bug_in_a_callback_is_said_and_does_not_reach_the_loop(capsys):
    said = []

    class Loop:
        def say(self, message: str) -> None:
            said.append(message)

    def buggy() -> None:
        raise KeyError("unforeseen")

    commands.guarded(Loop(), buggy)  # type: ignore[arg-type]
    assert said == ["backend slurm: KeyError: 'unforeseen' (a bug: please report it)"]
    assert "Traceback" in capsys.readouterr().err
