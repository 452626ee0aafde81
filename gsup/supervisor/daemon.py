"""The supervisor: one single-threaded loop that owns the journal and the executors.

Each turn of the loop reads like a checklist:
  1. wait on the socket, the clients, the executors and the signal pipe (no polling);
  2. handle what arrived: requests, executors' reports, signals;
  3. fire timers: job timeouts, stops that did not land, the shutdown deadline;
  4. dispatch queued jobs to executors with room;
  5. commit everything the turn wrote in one transaction (group commit);
  6. only then act on it: jobs go to executors, and while they start, the turn is
     synced to the disk; then replies, and the turn's events, go to clients (see
     journal/writer.py and followers.py).
It never imports user code; it starts its executors before it could have any thread.
The parts: loop.py (waiting), connections.py (clients), handlers.py (one per verb),
jobs.py (dispatch, endings, waiters), lifetime.py (the state dir, the socket),
checkup.py (the journal's check at start).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gsup import recovery
from gsup.access import Access
from gsup.config import DASK, DEFAULT_POOL, POOL_NAMES, SLURM
from gsup.executors.base import Executor
from gsup.executors.dask.executor import DaskPool
from gsup.executors.local.executor import LocalPool
from gsup.executors.slurm.executor import SlurmExecutor
from gsup.journal.health import TRUNCATED, damage_line, make_journal, truncated
from gsup.journal.migrations import JournalError, open_journal
from gsup.journal.queries import is_damage
from gsup.journal.writer import JournalStalled, JournalSyncFailed, Writer
from gsup.settings import ConfigError, Settings
from gsup.supervisor import lifetime
from gsup.supervisor.checkup import JournalCheck
from gsup.supervisor.connections import Connection, Connections
from gsup.supervisor.followers import Followers
from gsup.supervisor.handlers import Handlers
from gsup.supervisor.jobs import JobBook
from gsup.supervisor.lifetime import DaemonError
from gsup.supervisor.loop import Loop, report_bug, say
from gsup.supervisor.pruning import Pruner
from gsup.supervisor.stats import Stats
from gsup.systemd import Notifier
from gsup.tasks.engine import TaskEngine
from gsup.tasks.landing import Landings
from gsup.text import count, stopping_line

STALL_RETRY = 1.0  # seconds between attempts to write a turn that failed to commit
CLOCK_STEP = 1.0  # seconds the wall clock must jump, against the monotonic, to be a step
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Said, never fatal: a closed terminal (SIGHUP), a stray kill, Ctrl-\ (SIGQUIT).
STATE_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGQUIT)


def make_executors(settings: Settings) -> dict[str, Executor]:
    """One local pool per configured pool (the local and process backends), and the
    Slurm and Dask backends' executors."""
    executors: dict[str, Executor] = {
        pool.name: LocalPool(pool, settings.paths, settings.stop_grace) for pool in settings.pools
    }
    executors[SLURM] = SlurmExecutor(SLURM, settings.slurm, settings.paths)
    limits = settings.pool(DEFAULT_POOL)  # of results and logs: the same for every pool
    dask = replace(limits, name=DASK, threads=settings.dask.slots, queue_size=settings.dask.slots)
    executors[DASK] = DaskPool(settings.dask, dask, settings.paths, settings.stop_grace)
    return executors


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.access = Access.for_group(settings.group)
        self.loop = Loop()
        self.executors = make_executors(settings)
        self.systemd = Notifier()
        self.done = False
        self.dispatching = False  # until the journal's check at start has passed
        self.wall_offset = time.time() - self.loop.now()  # see _follow_wall_clock
        self.exit_code = 0
        self.started = self.loop.now()

    # --- start and stop -------------------------------------------------------------

    def run(self) -> int:
        lifetime.prepare_home(self.paths, self.access)
        self.lock = lifetime.take_lock(self.paths)  # held while this descriptor is open
        # One that comes while it starts is taken in the first turn.
        self.loop.catch_signals(STOP_SIGNALS + STATE_SIGNALS)
        self._open()
        self.connections.listen(lifetime.listen(self.paths, self.access))
        for executor in self.executors.values():
            executor.start(self.loop, self.book)
        self.checkup.start()  # jobs are held back until it has passed
        sizes = ", ".join(f"{p.name} {p.threads} threads" for p in self.settings.pools)
        say(f"ready: home {self.paths.home}, pools {sizes}, pid {os.getpid()}")
        self.systemd.ready(f"ready: pools {sizes}")
        self._watchdog()
        self.pruner.start_daily()
        try:
            while not self.done:
                self._turn()
        except BaseException as exc:
            if isinstance(exc, sqlite3.DatabaseError) and is_damage(exc):
                self._stop_damaged([str(exc)])  # a damaged page, found as it was read
            else:  # a bug: end like a crash, but leave no pool behind
                self._halt("the daemon crashed")
                self.exit_code = 1
                report_bug()
                say("crashed; the next start recovers from the journal")
        self.checkup.close()
        self._close()
        say("stopped")
        return self.exit_code

    def _open(self) -> None:
        """The journal (upgraded if it is older), the parts, and recovery's decisions."""
        journal = self.paths.journal
        if truncated(journal):  # not a new journal: one that lost all it held
            raise DaemonError(damage_line(journal, [TRUNCATED]))
        try:
            make_journal(journal)  # none yet: a first start
        except (OSError, sqlite3.Error) as exc:
            raise DaemonError(f"cannot make the journal {journal}: {exc}") from None
        try:
            conn, upgraded = open_journal(self.paths.journal)
        except JournalError as exc:
            raise DaemonError(str(exc)) from None
        if upgraded:
            say(upgraded)
        lifetime.protect_journal(self.paths, self.access)
        self.checkup = JournalCheck(self.paths.journal, self.loop, self._journal_checked,
                                    self._stop_damaged)  # fmt: skip
        try:
            self._recover(conn)
        except (sqlite3.Error, JournalStalled, JournalSyncFailed) as exc:
            if is_damage(exc):
                raise DaemonError(damage_line(self.paths.journal, [str(exc)])) from None
            raise DaemonError(f"cannot use the journal {self.paths.journal}: {exc}") from None

    def _journal_checked(self) -> None:
        """The check at start passed: jobs may go to their executors from now on."""
        self.dispatching = True
        self.loop.call_at(self.loop.now(), lambda: None)  # a turn dispatches now

    def _stop_damaged(self, findings: list[str]) -> None:
        """The journal is damaged: stop at once, as nothing more can be trusted to it."""
        say(f"stopping: {damage_line(self.paths.journal, findings)}")
        self._halt("the daemon stopped: its journal is damaged")
        self.done, self.exit_code = True, 1

    def _halt(self, why: str) -> None:
        """End every executor's jobs at once (their end is the next start's to record)."""
        for executor in self.executors.values():
            executor.halt(why)

    def _recover(self, conn: sqlite3.Connection) -> None:
        self.journal = Writer(conn, self.paths.journal_files[1])
        self.connections = Connections(
            self.loop, self.access, self.settings.max_message, self._request, self._dropped
        )
        self.book = JobBook(self.journal, self.executors.values(), self.loop,
                            self.connections.reply)  # fmt: skip
        self.stats = Stats(self.journal.reader)  # before recovery's changes, which it counts
        self.book.subscribe(self.stats.changed)
        self.book.added_hooks.append(self.stats.added)
        self.pruner = Pruner(self.settings, self.journal, self.loop, self.connections.reply)
        self.followers = Followers(self.journal, self.connections.reply, self.loop)
        self.landings = Landings(self.loop, self._landed)
        slurm = self.executors[SLURM]
        assert isinstance(slurm, SlurmExecutor)
        slurm.watch_with(self.landings)
        self.engine = TaskEngine(self.journal, self.book, self.paths.tasks, self.landings,
                                 self.settings.default_pool)  # fmt: skip
        self.handlers = Handlers(self.settings, self.journal, self.book, self.connections.reply,
                                 self.pruner, self._stop_asked, self.engine,
                                 self.followers, self._stats)  # fmt: skip
        report = recovery.plan(self.journal.reader, self.executors)
        recovery.apply(self.book, report)
        self.engine.load()
        for pool in self.settings.pools:
            frozen = self.journal.register_pool(pool.name, pool.threads, pool.queue_size)
            self.book.lanes[pool.name].frozen = frozen
        try:
            self.journal.commit()
        except JournalStalled as exc:
            if "readonly" in str(exc):  # no wait mends it: the file's mode or the mount
                raise DaemonError(f"cannot write the journal {self.paths.journal}: {exc}") from None
            if not self._wait_for_journal(exc, self.journal.retry):
                raise DaemonError("stopped before the journal could be written") from None
        self.journal.sync()
        for line in report.lines():
            say(line)

    def _request(self, conn: Connection, message: dict[str, Any]) -> None:
        """Handle a request; if the turn's transaction cannot be opened for it (another
        process holds the journal's write lock), wait until it can, then handle it."""
        while not self.done:
            try:
                self.handlers.request(conn, message)
                return
            except JournalStalled as exc:
                if not self._stall(exc, self.journal.take_lock):
                    return

    def _stats(self) -> dict[str, Any]:
        """The `stats` reply: counters kept in memory (see supervisor/stats.py)."""
        return self.stats.reply(self.book, self.engine, len(self.connections.open),
                                len(self.followers))  # fmt: skip

    def _dropped(self, conn: Connection) -> None:
        self.book.forget(conn)
        self.followers.forget(conn)

    def _begin_stop(self, now: bool = False) -> None:
        """First signal: take no new work, give running jobs the grace period (none:
        `now`, said so; the caller ends it). A second signal ends it at once."""
        if self.book.stopping:
            self._finish_stop()
            return
        running = self.book.in_flight()
        say(stopping_line(running, 0 if now else self.settings.grace))
        self.systemd.stopping(f"stopping: {count(running, 'job')} in flight")
        self.book.begin_stop()
        self.pruner.stop()
        self.loop.call_at(self.loop.now() + self.settings.grace, self._finish_stop)

    def _stop_asked(self, now: bool) -> None:
        """`gsup stop`: as SIGTERM (`now`: as a second one)."""
        if not self.book.stopping:
            self._begin_stop(now)
        if now:  # after this turn's requests, as the grace period's end would
            self.loop.call_at(self.loop.now(), self._finish_stop)

    def _finish_stop(self) -> None:
        """The grace period is over, or nothing runs any more: requeue what still runs."""
        if self.done:
            return
        self.book.halt("daemon stopped before it ended")
        self._settle_turn()
        self.done = True

    def _landed(self, events: list[tuple[str, str, Any]]) -> None:
        """What the watcher told: tasks' outputs, and Slurm calls' outcomes."""
        self.engine.landed(events)
        slurm = self.executors[SLURM]
        assert isinstance(slurm, SlurmExecutor)
        slurm.landed(events)

    def _close(self) -> None:
        self.landings.close()
        for executor in self.executors.values():
            executor.close()
        self.connections.close()
        lifetime.remove_socket(self.paths)
        self.journal.close()

    # --- the loop ---------------------------------------------------------------------

    def _turn(self) -> None:
        self.loop.wait()
        self._take_signals()
        self._follow_wall_clock()
        self.loop.fire_timers()
        if self.book.stopping and not self.done and not self.book.in_flight():
            self._finish_stop()
        if self.done:
            return
        self.engine.settle()
        if self.dispatching:
            self.book.dispatch()
        self._settle_turn()

    def _follow_wall_clock(self) -> None:
        """Notice a step of the wall clock (an administrator, NTP): the monotonic clock
        times everything, but the journal's delayed retries are wall times."""
        offset = time.time() - self.loop.now()
        step, self.wall_offset = offset - self.wall_offset, offset
        if abs(step) >= CLOCK_STEP:
            say(f"the wall clock was stepped {step:+.1f}s; delayed retries keep their delays")
            self.book.wall_clock_stepped(step)

    def _take_signals(self) -> None:
        """A stop signal stops the daemon (the first, gracefully); the others say its
        state. SIGHUP reloads nothing: the settings are read at start only."""
        signals = self.loop.take_signals()
        for number in dict.fromkeys(n for n in signals if n not in STOP_SIGNALS):
            name = signal.Signals(number).name
            if number == signal.SIGHUP:
                name += " ignored (settings are read at start only)"
            say(f"{name}: {self._state_line()}")
        if any(number in STOP_SIGNALS for number in signals):
            self._begin_stop()

    def _state_line(self) -> str:
        """One line of what the daemon holds, for the operator."""
        pools = ", ".join(
            f"{name} {self.settings.pool(name).threads} threads"
            f" ({sum(f.started for f in lane.flights.values())} running,"
            f" {sum(not f.started for f in lane.flights.values())} handed over"
            f"{', frozen' if lane.frozen else ''})"
            for name, lane in self.book.lanes.items()
            if name in POOL_NAMES
        )
        for backend in (SLURM, DASK):
            pools += f"; {backend} {len(self.book.lanes[backend].flights)} jobs"
        state = "stopping" if self.book.stopping else "running"
        if self.journal.failure is not None:
            state += f", journal not writable ({self.journal.failure})"
        uptime = self.loop.now() - self.started
        return f"{state}, pid {os.getpid()}, up {uptime:.0f}s; pools {pools}"

    def _settle_turn(self) -> None:
        """Commit the turn, hand over its jobs, sync it, then answer (see the checklist)."""
        writes, began = self.journal.turn_writes, time.perf_counter()
        if not self._commit():
            return
        for executor in self.executors.values():
            executor.flush(durable=False)
        if not self._sync():
            return
        if writes:
            self.stats.turn(writes, time.perf_counter() - began)
        self.pruner.after_sync()  # a prune's reply says the WAL has been truncated
        self.connections.flush()
        for executor in self.executors.values():
            executor.flush(durable=True)
        if self.followers.push():  # after the replies, which wait on nothing else
            self.connections.flush()

    def _watchdog(self) -> None:
        """systemd's watchdog, pinged from the loop: a hung loop stops the pings."""
        interval = self.systemd.watchdog_interval
        if interval is not None:
            self.systemd.watchdog()
            self.loop.call_at(self.loop.now() + interval, self._watchdog)

    def _commit(self) -> bool:
        """Commit the turn; if the journal cannot be written, act on none of it
        (no reply, no hand-over) until it has been: see `_stall`."""
        try:
            self.journal.commit()
        except JournalStalled as exc:
            self._stall(exc, self.journal.retry)
        return not self.done

    def _sync(self) -> bool:
        """Sync the turn; if that fails, stop: the disk may hold less than was written,
        and only a start, which recovers from what it holds, can tell."""
        try:
            self.journal.sync()
        except JournalSyncFailed as exc:
            say(f"{exc}; stopping: the next start recovers from what the disk holds")
            self._halt("the daemon stopped: its journal could not be synced")
            self.done, self.exit_code = True, 1
        return not self.done

    def _stall(self, exc: JournalStalled, retry: Callable[[], None]) -> bool:
        """Wait until `retry` writes the journal, doing nothing else meanwhile; whether
        it did. A stop signal ends the daemon: what the turn decided was never acted
        on, and the journal's last committed state is what the next start recovers."""
        if self._wait_for_journal(exc, retry):
            self.book.look_again()  # the stalled turn's reads missed its own writes
            self.loop.call_at(self.loop.now(), lambda: None)  # and a turn dispatches now
            return True
        say("stopping with the journal not writable; the last turn is dropped")
        self._halt("the daemon stopped with the journal not writable")
        self.done, self.exit_code = True, 1
        return False

    def _wait_for_journal(self, exc: JournalStalled, retry: Callable[[], None]) -> bool:
        """Call `retry` every second until it no longer raises JournalStalled (a full
        disk, another process holding the write lock); False if a stop signal came."""
        say(f"cannot write the journal ({exc}); retrying every {STALL_RETRY:g}s")
        self.stats.stalls += 1
        self.systemd.status(f"stalled: cannot write the journal ({exc})")
        self.connections.refusing = (
            f"the daemon cannot write its journal ({exc}); nothing is accepted until it"
            " can: try again later"
        )
        try:
            while not self.loop.sleep_unless_signalled(
                STALL_RETRY, STOP_SIGNALS, self.connections.watched
            ):
                if self.systemd.watchdog_interval is not None:
                    self.systemd.watchdog()
                try:
                    retry()
                except JournalStalled:
                    continue
                say("the journal is writable again")
                self.systemd.status("running")
                return True
            return False
        finally:
            self.connections.refusing = None


def serve(settings: Settings) -> int:
    try:
        return Supervisor(settings).run()
    except (DaemonError, ConfigError) as exc:
        print(f"gsup: error: {exc}", file=sys.stderr)
        return 1
