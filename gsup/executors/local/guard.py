"""The guardian of one command job: `python -I -S -c SOURCE WATCH_FD USAGE_FD PROG ARG...`.

A pool process can be SIGKILLed (with its supervisor, or when it is recycled); a
command it started would then run on unsupervised, and so would whatever the command
started. So each command runs under this small process, which
- runs the command in a process group of its own;
- kills that whole group, and what escaped it to become its child (it is a child
  subreaper), when its pool dies (end-of-file on WATCH_FD, a pipe whose
  other end only the pool holds), when it gets SIGTERM (the pool stopping the job),
  and when the command exits (what it left running in its group dies with it);
- writes what the command used to USAGE_FD ("user_s system_s peak_rss_kb", from
  wait4: the command and the descendants it reaped);
- exits as the command did (same code, or killed by the same signal).
Standard library only, and no site: it starts in about 10 ms.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys

_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Processes that leave the group (setsid, a double fork) become our children when
    their parent dies, instead of init's: `_kill_all` still finds them."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass  # not Linux: the process group alone


def _kill_all(pgid: int) -> None:
    """Kill the command's process group, then whatever escaped it and came to us.
    A dying process's children come to us only once it has died, so each kill is
    waited for before we look again. The command itself (pid `pgid`) is left for
    `_wait_and_report` to reap."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    while True:
        with contextlib.suppress(ChildProcessError):  # reaped already: nothing to wait for
            os.waitid(os.P_PID, pgid, os.WEXITED | os.WNOWAIT)
        others = [pid for pid in _children() if pid != pgid]
        if not others:
            return
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in others:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _children() -> list[int]:
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children") as file:
            return [int(pid) for pid in file.read().split()]
    except OSError:
        return []


def _run_command(argv: list[str]) -> None:
    """In the forked child: become the group leader and exec the command."""
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"gsup: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
    os._exit(127)


def _wait_and_report(child: int, usage_fd: int) -> int:
    """Reap the command; write what it used; its wait status."""
    _, status, usage = os.wait4(child, 0)
    with contextlib.suppress(OSError):
        os.write(usage_fd, f"{usage.ru_utime} {usage.ru_stime} {usage.ru_maxrss}".encode())
    return status


def main() -> None:
    watch_fd, usage_fd, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    _become_subreaper()
    child = os.fork()
    if child == 0:
        os.close(watch_fd)
        os.close(usage_fd)
        _run_command(argv)
    with contextlib.suppress(OSError):
        os.setpgid(child, child)  # on both sides: no window where a kill misses it

    def stop(signum: int, frame: object) -> None:
        _kill_all(child)
        with contextlib.suppress(ChildProcessError):
            _wait_and_report(child, usage_fd)
        os.kill(os.getpid(), signal.SIGKILL)  # report "killed", as the command was

    signal.signal(signal.SIGTERM, stop)
    pidfd = os.pidfd_open(child)
    while True:
        ready, _, _ = select.select([pidfd, watch_fd], [], [])
        if watch_fd in ready and not os.read(watch_fd, 1):  # the pool is gone
            _kill_all(child)
            os._exit(1)
        if pidfd in ready:
            break
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    status = _wait_and_report(child, usage_fd)
    _kill_all(child)  # what the command left running
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
