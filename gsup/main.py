"""The `gsup` command: the commands on hot paths go to their light argparse parsers
(fast_cli.py), every other command to the typer app (cli.py)."""

import sys


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command in ("add", "jobs", "queues"):
        from gsup.fast_cli import run

        sys.exit(run(command, sys.argv[2:]))
    from gsup.cli import main as cli_main

    cli_main()
