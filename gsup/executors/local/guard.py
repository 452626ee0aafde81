"""The guardian of one command job:
`python -I -S -c SOURCE WATCH_FD USAGE_FD MAX_LOG RESERVE PROG ARG...`.

A pool process can be SIGKILLed (with its supervisor, or when it is recycled); a
command it started would then run on unsupervised, and so would whatever the command
started. So each command runs under this small process, which
- runs the command in a process group of its own;
- kills that whole group, and what escaped it to become its child (it is a child
  subreaper), when its pool dies (end-of-file on WATCH_FD, a pipe whose
  other end only the pool holds), when it gets SIGTERM (the pool stopping the job),
  and when the command exits (what it left running in its group dies with it);
- copies the command's stdout and stderr into its own (the job's log files), each
  at most MAX_LOG bytes, and nothing while the disk has less than RESERVE bytes free
  (the journal's room): a `LogBudget`, which the pool's callables use too;
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
CHECK_EVERY = 1 << 20  # bytes written between two reads of the disk's free space
DRAIN_WAIT = 1.0  # seconds to wait for the last output once every writer is dead


class LogBudget:
    """What one of a job's log files may still take: `limit` bytes in all, and nothing
    once the disk under it has less than `reserve` bytes free. Beyond, output is
    dropped, after one line that says why."""

    def __init__(self, limit: int, reserve: int) -> None:
        self.limit, self.left, self.reserve = limit, limit, reserve
        self.unchecked = CHECK_EVERY  # the first write reads the disk's free space
        self.cut: str | None = None  # why output is dropped, once it is
        self.told = False

    def allow(self, size: int, fd: int) -> int:
        """How many of `size` more bytes may be written to `fd`; when fewer than all,
        write `dropped_line()` after them."""
        if self.cut is not None:
            return 0
        self.unchecked += size
        if self.unchecked >= CHECK_EVERY:
            self.unchecked = 0
            stats = os.fstatvfs(fd)
            free = stats.f_bavail * stats.f_frsize
            if free - size < self.reserve:
                self.cut = (
                    f"the disk is nearly full ({free / 1e6:.1f} MB free;"
                    f" {self.reserve / 1e6:g} MB are kept for the journal)"
                )
                return 0
        if size <= self.left:
            self.left -= size
            return size
        allowed, self.left = self.left, 0
        self.cut = f"this log reached max_log_mb ({self.limit / 1e6:g} MB)"
        return allowed

    def dropped_line(self) -> bytes:
        """The line that says output was cut, and why: once, after the cut."""
        if self.cut is None or self.told:
            return b""
        self.told = True
        return f"\n[gsup: the rest of this output is dropped: {self.cut}]\n".encode()


class LogCopy:
    """Copies a pipe the command writes to into a log file (this process's fd 1 or 2)."""

    def __init__(self, pipe: int, log: int, budget: LogBudget) -> None:
        self.pipe, self.log, self.budget = pipe, log, budget

    def copy(self) -> bool:
        """Copy what the pipe holds now; False at its end."""
        try:
            data = os.read(self.pipe, 1 << 16)
        except BlockingIOError:
            return True
        if not data:
            return False
        kept = self.budget.allow(len(data), self.log)
        with contextlib.suppress(OSError):  # a log that cannot be written loses output only
            os.write(self.log, data[:kept] + self.budget.dropped_line())
        return True


def _drain(copies: list[LogCopy]) -> None:
    """Copy the last output, once every writer is dead (or after DRAIN_WAIT)."""
    open_pipes = {copy.pipe: copy for copy in copies}
    while open_pipes:
        ready, _, _ = select.select(list(open_pipes), [], [], DRAIN_WAIT)
        if not ready:
            return  # a writer outside our reach: what it writes is not ours to wait for
        for pipe in ready:
            if not open_pipes[pipe].copy():
                del open_pipes[pipe]


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


def _run_command(argv: list[str], stdout: int, stderr: int) -> None:
    """In the forked child: become the group leader and exec the command."""
    os.setpgid(0, 0)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
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
    watch_fd, usage_fd, max_log, reserve = (int(arg) for arg in sys.argv[1:5])
    argv = sys.argv[5:]
    _become_subreaper()
    pipes = [os.pipe() for _ in (1, 2)]  # the command's stdout and stderr
    child = os.fork()
    if child == 0:
        os.close(watch_fd)
        os.close(usage_fd)
        _run_command(argv, pipes[0][1], pipes[1][1])
    with contextlib.suppress(OSError):
        os.setpgid(child, child)  # on both sides: no window where a kill misses it
    copies = []
    for log, (read_end, write_end) in zip((1, 2), pipes, strict=True):
        os.close(write_end)
        os.set_blocking(read_end, False)
        copies.append(LogCopy(read_end, log, LogBudget(max_log, reserve)))

    def stop(signum: int, frame: object) -> None:
        _kill_all(child)
        _drain(copies)
        with contextlib.suppress(ChildProcessError):
            _wait_and_report(child, usage_fd)
        os.kill(os.getpid(), signal.SIGKILL)  # report "killed", as the command was

    signal.signal(signal.SIGTERM, stop)
    pidfd = os.pidfd_open(child)
    reading = {copy.pipe: copy for copy in copies}
    while True:
        ready, _, _ = select.select([pidfd, watch_fd, *reading], [], [])
        if watch_fd in ready and not os.read(watch_fd, 1):  # the pool is gone
            _kill_all(child)
            os._exit(1)
        for pipe in set(ready) & set(reading):
            if not reading[pipe].copy():
                del reading[pipe]  # closed by the command: its end may still come
        if pidfd in ready:
            break
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    status = _wait_and_report(child, usage_fd)
    _kill_all(child)  # what the command left running
    _drain(list(reading.values()))
    if os.WIFSIGNALED(status):
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
