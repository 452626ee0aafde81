"""HTTP serving for `gsup web` and `gsup metrics --listen`: a threaded WSGI server
(prometheus_client's, on the standard library's wsgiref), behind a token check.

On the loopback interface a token is optional; beyond it, one is required (set in
gsup.toml's [web] section). Once set, every request needs it: as a bearer token
(Prometheus' `authorization`), or `?token=` once in a browser, which then keeps it in
a cookie. Without one, only requests naming this machine (Host: localhost,
127.0.0.1, ::1) are answered: a web page elsewhere cannot read it through a name
of its own that resolves here (DNS rebinding).

A connection gets a thread while it lasts, at most MAX_CONNECTIONS at once, and
READ_TIMEOUT seconds for each read or write: a client that stops reading or
writing lets its thread go.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, parse_qsl, quote, urlencode
from wsgiref.simple_server import WSGIRequestHandler, make_server

from gsup.errors import GsupError

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
COOKIE = "gsup_token"
MAX_CONNECTIONS = 200
READ_TIMEOUT = 30.0
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def parse_listen(text: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT; GsupError (one line) if it is not one."""
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GsupError(f"{text!r} is not HOST:PORT (such as 127.0.0.1:8765)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this machine's loopback."""
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as exc:
        raise GsupError(f"cannot listen on {host!r}: {exc}") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_exposure(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise GsupError(
            f"listening on {host} reaches beyond this machine and needs a token: set"
            " [web] token in gsup.toml (or GSUP_WEB_TOKEN), at least 16 characters"
        )


def guarded(app: WsgiApp, token: str | None) -> WsgiApp:
    """`app` behind the token (if there is one): a request without it gets 401."""
    if token is None:
        return app
    expected = token.encode()

    def check(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given, from_query = _given_token(environ)
        if given is None or not hmac.compare_digest(given.encode(), expected):
            headers = [("Content-Type", "text/plain; charset=utf-8"),
                       ("WWW-Authenticate", 'Bearer realm="gsup"')]  # fmt: skip
            start_response("401 Unauthorized", headers)
            return [b"401 Unauthorized: this gsup needs its token (see [web] token)\n"]
        if not from_query:
            return app(environ, start_response)
        # Once in a browser: keep it in a cookie, and take it out of the address shown.
        query = [(k, v) for k, v in parse_qsl(environ.get("QUERY_STRING", "")) if k != "token"]
        path = "/" + (environ.get("PATH_INFO") or "").lstrip("/")  # never //elsewhere
        where = quote(path) + (f"?{urlencode(query)}" if query else "")
        start_response("303 See Other", [
            ("Location", where), ("Content-Type", "text/plain; charset=utf-8"),
            ("Set-Cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"),
        ])  # fmt: skip
        return [b"303 See Other\n"]

    return check


def _given_token(environ: dict[str, Any]) -> tuple[str | None, bool]:
    """The token a request carries, and whether it came in the query."""
    scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer":
        return given.strip(), False
    query = parse_qs(environ.get("QUERY_STRING", "")).get("token")
    if query:
        return query[0], True
    cookie = SimpleCookie()
    try:
        cookie.load(environ.get("HTTP_COOKIE", ""))
    except Exception:  # a malformed cookie header: no token
        return None, False
    found = cookie.get(COOKIE)
    return (found.value if found else None), False


def loopback_only(app: WsgiApp) -> WsgiApp:
    """`app` for requests that name this machine (see the module's doc)."""

    def check(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "")
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0]
        if (name or host).lower() not in LOOPBACK_NAMES:
            start_response("421 Misdirected Request", [("Content-Type", "text/plain")])
            return [b"421: this gsup answers only as localhost (or set a [web] token)\n"]
        return app(environ, start_response)

    return check


def hardened(app: WsgiApp) -> WsgiApp:
    """`app`, its answers never sniffed as another type by a browser."""

    def headers(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, sent: list[tuple[str, str]], *rest: Any) -> Any:
            return start_response(status, [*sent, ("X-Content-Type-Options", "nosniff")], *rest)

        return app(environ, start)

    return headers


class QuietHandler(WSGIRequestHandler):
    """No line per request on stderr (a scrape a second would flood it); a read or
    a write waits READ_TIMEOUT seconds at most."""

    timeout = READ_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(app: WsgiApp, listen: str, token: str | None, what: str, path: str = "/") -> None:
    """Serve `app` on `listen` (HOST:PORT) until interrupted; `path`: what to say to open."""
    try:
        from prometheus_client.exposition import ThreadingWSGIServer
    except ImportError:
        raise GsupError(f"gsup {what} needs the web extra: pip install 'gsup[web]'") from None

    host, port = parse_listen(listen)
    check_exposure(host, token)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingWSGIServer):
        address_family = family
        request_queue_size = 128
        slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

        def process_request(self, request: Any, client_address: Any) -> None:
            if not self.slots.acquire(blocking=False):
                self.shutdown_request(request)  # too many at once: this one is closed
                return
            super().process_request(request, client_address)

        def process_request_thread(self, request: Any, client_address: Any) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.slots.release()

    served = guarded(app, token) if token is not None else loopback_only(app)
    try:
        server = make_server(host, port, hardened(served), Server, QuietHandler)
    except OSError as exc:
        raise GsupError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    shown = f"[{host}]" if ":" in host else host
    print(f"gsup: {what} on http://{shown}:{server.server_port}{path}", file=sys.stderr,
          flush=True)  # fmt: skip
    with server:
        server.serve_forever()
