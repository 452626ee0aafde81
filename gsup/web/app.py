"""`gsup web`: a read-only dashboard, as a WSGI application.

A process of its own (the daemon keeps working if it dies): it reads the journal
read-only, asks the daemon what only it knows (`ping`, `stats`) through the CLI's
socket, and follows its events for the pages' live updates (stream.py). Routes:

  /                  the daemon, the pools' workers, throughput, latest events
  /jobs              jobs, newest first (?state= &queue= &limit=)
  /jobs/ID           a job: fields, attempts, events, its output (followed while it runs)
  /jobs/ID/log/out   a job's output from ?from=BYTE (the page's script follows it)
  /tasks, /tasks/ID  tasks; a task's transforms: progress, units over time, merged output
  /events            the live event stream
  /stream            server-sent events (the pages' script; Last-Event-ID resumes)
  /metrics           Prometheus metrics (gsup/metrics.py)
  /static/...        the stylesheet and the script

A page asked with ?fragment=1 is its `main` alone: the script swaps it in on events.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from gsup.client import Client
from gsup.config import Paths, resolve_home
from gsup.errors import GsupError
from gsup.journal import queries
from gsup.web import pages
from gsup.web.stream import Broadcaster

Response = tuple[str, list[tuple[str, str]], Iterable[bytes]]
HTML = "text/html; charset=utf-8"
STATIC = {"style.css": "text/css; charset=utf-8", "live.js": "text/javascript; charset=utf-8"}
NAV = (("/", "Overview"), ("/jobs", "Jobs"), ("/tasks", "Tasks"), ("/events", "Events"),
       ("/metrics", "Metrics"))  # fmt: skip


class Dashboard:
    def __init__(self, home: str | Path | None) -> None:
        self.home = home
        self.paths = Paths(resolve_home(home))
        self.events = Broadcaster(home)
        self.routes: list[tuple[re.Pattern[str], Callable[..., Response]]] = [
            (re.compile(r"/"), self.overview),
            (re.compile(r"/jobs"), self.jobs),
            (re.compile(r"/jobs/(\d{1,18})"), self.job),
            (re.compile(r"/jobs/(\d{1,18})/log/(out|err)"), self.log),
            (re.compile(r"/tasks"), self.tasks),
            (re.compile(r"/tasks/(\d{1,18})"), self.task),
            (re.compile(r"/events"), self.event_page),
            (re.compile(r"/stream"), self.stream),
            (re.compile(r"/metrics"), self.metrics),
            (re.compile(r"/static/([a-z.]+)"), self.static),
        ]
        self._registry: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:  # fmt: skip
        status, headers, body = self.respond(environ)
        start_response(status, headers)
        if environ.get("REQUEST_METHOD") == "HEAD":
            getattr(body, "close", lambda: None)()  # a stream not started is never followed
            return []
        return body

    def respond(self, environ: dict[str, Any]) -> Response:
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "the dashboard is read-only")
        path = environ.get("PATH_INFO") or "/"
        params = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        for pattern, handler in self.routes:
            found = pattern.fullmatch(path)
            if found:
                try:
                    return handler(environ, params, *found.groups())
                except pages.NotFound as exc:
                    return self.page(HTTPStatus.NOT_FOUND, "Not found", f"<p>{pages.e(exc)}</p>",
                                     params)  # fmt: skip
                except (GsupError, sqlite3.Error) as exc:
                    body = f'<p class="trouble">{pages.e(exc)}</p>'
                    return self.page(HTTPStatus.SERVICE_UNAVAILABLE, "Unavailable", body, params)
        return self.page(HTTPStatus.NOT_FOUND, "Not found",
                         f"<p>There is no page {pages.e(path)}.</p>", params)  # fmt: skip

    # --- pages -----------------------------------------------------------------------------

    def page(self, status: HTTPStatus, title: str, main: str, params: dict[str, str],
             live: str = "all") -> Response:  # fmt: skip
        """The layout around `main`, or `main` alone for the script (?fragment=1).
        `live`: which events make the script fetch it again (all, job:ID, none)."""
        if params.get("fragment"):
            return _ok(main.encode(), HTML, status)
        nav = "".join(f'<a href="{href}">{name}</a>' for href, name in NAV)
        document = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>gsup: {pages.e(title)}</title>"
            '<link rel=stylesheet href="/static/style.css"><link rel=icon href="data:,"></head>'
            f"<body><header><b>gsup</b> <span class=home>{pages.e(self.paths.home)}</span>"
            f"<nav>{nav}</nav></header>"
            f'<main id=main data-live="{pages.e(live)}">{main}</main>'
            '<script src="/static/live.js"></script></body></html>'
        )
        return _ok(document.encode(), HTML, status)

    def overview(self, environ: dict[str, Any], params: dict[str, str]) -> Response:
        with queries.read_journal(self.home) as conn:
            main = pages.overview(conn, self._ping())
        return self.page(HTTPStatus.OK, "overview", main, params)

    def jobs(self, environ: dict[str, Any], params: dict[str, str]) -> Response:
        with queries.read_journal(self.home) as conn:
            main = pages.jobs_page(conn, params)
        return self.page(HTTPStatus.OK, "jobs", main, params)

    def job(self, environ: dict[str, Any], params: dict[str, str], job: str) -> Response:
        number = int(job)
        with queries.read_journal(self.home) as conn:
            logs = {stream: self._tail(conn, number, stream) for stream in ("out", "err")}
            main = pages.job_page(conn, number, logs)
        return self.page(HTTPStatus.OK, f"job {number}", main, params, f"job:{number}")

    def log(self, environ: dict[str, Any], params: dict[str, str], job: str,
            stream: str) -> Response:  # fmt: skip
        """A job's output from byte ?from= (at most 1 MiB); the new offset in a header."""
        number = int(job)
        offset = _number(params.get("from")) or 0
        with queries.read_journal(self.home) as conn:
            path = self._log_path(conn, number, stream)
        data = _read_from(path, offset, 1 << 20)
        return ("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                           ("X-Next-Offset", str(offset + len(data)))], [data])  # fmt: skip

    def _log_path(self, conn: sqlite3.Connection, job: int, stream: str) -> Path | None:
        try:
            attempt = queries.chosen_attempt(conn, job, None)
        except GsupError as exc:
            raise pages.NotFound(str(exc)) from None
        return self.paths.printed(job, stream, attempt)

    def _tail(self, conn: sqlite3.Connection, job: int, stream: str) -> tuple[str, int]:
        """The end of a job's output, and the offset after it."""
        path = self._log_path(conn, job, stream)
        try:
            size = path.stat().st_size if path else 0
        except OSError:
            size = 0
        start = max(0, size - pages.LOG_TAIL)
        data = _read_from(path, start, pages.LOG_TAIL)
        return data.decode("utf-8", "replace"), start + len(data)

    def tasks(self, environ: dict[str, Any], params: dict[str, str]) -> Response:
        with queries.read_journal(self.home) as conn:
            main = pages.tasks_page(conn)
        return self.page(HTTPStatus.OK, "tasks", main, params)

    def task(self, environ: dict[str, Any], params: dict[str, str], task: str) -> Response:
        with queries.read_journal(self.home) as conn:
            main = pages.task_page(conn, int(task), time.time())
        return self.page(HTTPStatus.OK, f"task {task}", main, params)

    def event_page(self, environ: dict[str, Any], params: dict[str, str]) -> Response:
        with queries.read_journal(self.home) as conn:
            main = pages.events_page(conn)
        return self.page(HTTPStatus.OK, "events", main, params, "none")

    # --- streams, metrics, files ----------------------------------------------------------

    def stream(self, environ: dict[str, Any], params: dict[str, str]) -> Response:
        since = _number(environ.get("HTTP_LAST_EVENT_ID") or params.get("since"))
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        return "200 OK", headers, self.events.listen(since)

    def metrics(self, environ: dict[str, Any], params: dict[str, str]) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from gsup.metrics import registry

        if self._registry is None:
            self._registry = registry(self.home)
        return _ok(generate_latest(self._registry), CONTENT_TYPE_LATEST)

    def static(self, environ: dict[str, Any], params: dict[str, str], name: str) -> Response:
        if name not in STATIC:
            raise pages.NotFound(f"no file {name}")
        data = resources.files("gsup.web").joinpath("static", name).read_bytes()
        return _ok(data, STATIC[name])

    def _ping(self) -> dict[str, Any] | None:
        try:
            with Client(self.home) as client:
                return client.request("ping", timeout=5)
        except GsupError:
            return None


def _number(text: str | None) -> int | None:
    """A whole number a request gives (an offset, an event's), if it is one."""
    if text and text.isascii() and text.isdigit() and len(text) < 19:
        return int(text)
    return None


# Pages load nothing but their own files, and run no script but live.js.
POLICY = "default-src 'self'; img-src 'self' data:; style-src 'self'; object-src 'none'"


def _ok(data: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> Response:
    headers = [("Content-Type", content_type), ("Content-Length", str(len(data))),
               ("Cache-Control", "no-store"), ("Content-Security-Policy", POLICY)]  # fmt: skip
    return f"{status.value} {status.phrase}", headers, [data]


def _text(status: HTTPStatus, text: str) -> Response:
    return _ok(f"{status.value} {status.phrase}: {text}\n".encode(), "text/plain; charset=utf-8",
               status)  # fmt: skip


def _read_from(path: Path | None, offset: int, most: int) -> bytes:
    if path is None:
        return b""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read(most)
    except OSError:
        return b""
