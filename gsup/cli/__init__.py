"""The `gsup` command: one typer app (app.py); each command is defined once, in
commands/NAME.py. A command line that names a command imports that module only (typer
then builds and parses one command); anything else (`--help`, completion) loads them all."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from gsup.cli import adapt
from gsup.cli.app import UsageError, app, keep_only
from gsup.errors import GsupError


def _version(shown: bool) -> None:
    if shown:
        from gsup import __version__

        print(f"gsup {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """A job supervisor: bounded worker pools, a SQLite journal that never forgets a job.

    Shell completion: gsup --install-completion (bash, zsh, fish, PowerShell).
    """


def load_commands(words: list[str]) -> None:
    """Register the command `words` name, or every command."""
    from gsup.cli import commands

    name = words[0] if words else ""
    if name == "--version":
        return  # the app's own option: no command needed
    if name.isidentifier() and (Path(commands.__path__[0]) / f"{name}.py").is_file():
        importlib.import_module(f"gsup.cli.commands.{name}")
        if len(words) > 1:
            keep_only(name, words[1])
        return
    import pkgutil  # for --help and completion only

    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"gsup.cli.commands.{module.name}")


def main() -> None:
    from typer.exceptions import TyperException

    adapt.install()
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    load_commands(sys.argv[1:])
    try:
        code = app(prog_name="gsup", standalone_mode=False)
    except TyperException as exc:  # a usage error: one line, not a usage block
        _usage_error(exc.format_message() + _hint())
    except UsageError as exc:  # gsup's own: its message says the way out
        _usage_error(f"{exc}{_see()}")
    except (typer.Abort, EOFError):
        sys.exit(1)
    except GsupError as exc:
        print(f"gsup: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        os._exit(1)  # `gsup jobs | head`: the reader went away
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(line: str) -> NoReturn:
    print(f"gsup: error: {line}", file=sys.stderr)
    sys.exit(2)


def _hint() -> str:
    """The usual way out of the usual mistakes of the parser, else where to read on."""
    words = sys.argv[1:]
    if words[:1] == ["add"] and "--" not in words:
        if "--cmd" in words:
            return " (a command's own options go after --: gsup add --cmd -- PROG -x)"
        if any(word[:1] == "-" and word[1:2].isdigit() for word in words):
            return " (a negative number goes after --: gsup add mymod:f -- -5)"
    return _see()


def _see() -> str:
    """` (see: gsup COMMAND... --help)` for the command, or subcommand, the line names."""
    command, path = typer.main.get_command(app), []
    for word in sys.argv[1:]:
        found = getattr(command, "commands", {}).get(word)
        if found is None:
            break
        command, path = found, [*path, word]
    return f" (see: {' '.join(['gsup', *path, '--help'])})"
