"""What seeing costs: `gsup web` open with a page's live stream and a Prometheus scrape
every second, against neither, on the drain and the gap latency; how soon `gsup events
--follow` delivers an event; the dashboard's pages on a journal of a million jobs.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench.gsup_side import WAIT_TIMEOUT, Workspace, gsup_cli, new_home, running_daemon
from bench.measure import gaps
from bench.processes import Spawned

SCRAPE_EVERY = 1.0  # seconds, as a Prometheus scrape_interval of 1s
PAGES = ("/", "/jobs", "/jobs?state=done", "/jobs?state=queued&queue=user", "/jobs/{job}",
         "/tasks", "/events", "/metrics")  # fmt: skip


def available() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def web_open(home: Path, scrape: bool = True) -> Iterator[str]:
    """`gsup web` for `home`, a page's event stream read all along (as a browser keeps
    one), and (`scrape`) /metrics fetched every second, both by a process of their own
    (as a browser and Prometheus are); yields its base URL."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    web = Spawned([*gsup_cli(), "web", "--home", str(home), "--listen", f"127.0.0.1:{port}"],
                  ready_text="gsup: dashboard on")  # fmt: skip
    with web:
        web.wait_ready()
        viewer = Spawned([sys.executable, "-c", VIEWER, base, str(scrape)], ready_text="ready")
        with viewer:
            viewer.wait_ready()
            yield base


# A browser tab on the dashboard and a Prometheus: the stream read as it comes, and
# /metrics fetched every SCRAPE_EVERY seconds.
VIEWER = f"""
import sys, threading, time, urllib.request
base, scrape = sys.argv[1], sys.argv[2] == "True"
stream = urllib.request.urlopen(base + "/stream", timeout=3600)
def scraping():
    while True:
        time.sleep({SCRAPE_EVERY})
        urllib.request.urlopen(base + "/metrics", timeout=10).read()
if scrape:
    threading.Thread(target=scraping, daemon=True).start()
print("ready", flush=True)
while stream.read1(1 << 16):
    pass
"""


# --- events --follow ------------------------------------------------------------------------


def follow_delays(ws: Workspace, trips: int) -> list[float]:
    """Seconds from each job's end event's time (taken as it is written, before its
    commit) to its arrival at a follower (gsup.events, as `gsup events --follow`
    reads it), for jobs added one at a time with gaps."""
    from gsup.errors import GsupError
    from gsup.events import events
    from gsup.journal.queries import ALL_EVENTS

    with running_daemon(new_home(ws.root)) as daemon:
        queues = daemon.queues()
        queues.add(ws.noop).result(WAIT_TIMEOUT)  # warm: the pool's first import
        delays: list[float] = []
        stream = events(daemon.home, None, ALL_EVENTS, follow=True)

        def follow() -> None:
            with contextlib.suppress(GsupError):  # the daemon stops at the end
                for batch in stream:
                    now = time.time()
                    delays.extend(now - event.at for event in batch if event.after == "done")

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(0.2)  # subscribed
        for pause in gaps(trips):
            time.sleep(pause)
            queues.add(ws.noop).result(WAIT_TIMEOUT)
        deadline = time.monotonic() + 10
        while len(delays) < trips and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(delays) < trips:
            raise RuntimeError(f"the follower got {len(delays)} of {trips} ends")
        return delays


# --- pages on a big journal -------------------------------------------------------------------


def page_seconds(home: Path, job: int, runs: int) -> dict[str, list[float]]:
    """Seconds to fetch each dashboard page whole, the daemon running, `runs` times each
    (interleaved), after one unmeasured fetch of each."""
    paths = [path.format(job=job) for path in PAGES]
    times: dict[str, list[float]] = {path: [] for path in paths}
    with running_daemon(home), web_open(home, scrape=False) as base:
        for path in paths:
            _fetch(base + path)
        for _ in range(runs):
            for path in paths:
                times[path].append(_fetch(base + path))
    return times


def _fetch(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as answer:
        answer.read()
    return time.perf_counter() - start


def pages_note(paths: Sequence[str] = PAGES) -> str:
    return ", ".join(paths)
