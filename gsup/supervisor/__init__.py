"""The supervisor (`gsup daemon`): one loop, the journal's only writer (see daemon.py)."""
