"""Executors: what runs attempts for the supervisor, behind one contract (base.py).

- local/  the pools: a process of N worker threads each, forked once (the default)
- fake.py an executor driven by hand, for tests of the scheduling
"""
