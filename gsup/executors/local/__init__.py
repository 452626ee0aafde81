"""The local executor: pool processes on this machine.

- executor.py  the supervisor's side: the contract, the process, recycling, restarts
- pool.py      the pool process: worker threads and a bounded priority queue
- runner.py    running one job in a pool thread: a callable, or a command
- guard.py     the guardian process of one command job
- output.py    each job's stdout and stderr, in a process whose threads share them
- channel.py   the frames between the two sides
"""
