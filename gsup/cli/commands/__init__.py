"""One module per command, named as the command: `gsup NAME` imports only commands/NAME.py."""
