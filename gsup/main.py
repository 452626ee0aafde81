"""The `gsup` command: `gsup add` goes to its light parser, every other command to typer."""

import sys


def main() -> None:
    if sys.argv[1:2] == ["add"]:
        from gsup.add_command import main as add_main

        sys.exit(add_main(sys.argv[2:]))
    from gsup.cli import main as cli_main

    cli_main()
