"""gsup's benchmark: `python -m bench` (full run) or `python -m bench --smoke` (CI).

Every figure is measured on this machine in one run, against huey where the issue
names a peer, and printed as one table (written with the machine's description to
bench/RESULTS.md by a full run).
"""
