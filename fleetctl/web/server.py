"""`fleetctl serve`: a read-only HTTP view of the journal (stdlib http.server, one thread per client).

GET only. The page is rendered on the server; /events streams its sections as server-sent events when
they change (polling /api/sections where EventSource is missing). Bound to a loopback address it
answers only requests addressed to localhost (no DNS rebinding); bound anywhere else it needs a token,
checked on every request in constant time: `Authorization: Bearer TOKEN`, or `?token=TOKEN` once,
which sets an HttpOnly cookie and redirects to the same page without the token in its address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from fleetctl.errors import FleetError, UsageError
from fleetctl.web import assets, state, views

if TYPE_CHECKING:
    from fleetctl.context import FleetContext

log = logging.getLogger("fleetctl.web")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
COOKIE = "fleetctl_view"
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
MIN_TOKEN = 16


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT` or `:PORT` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--bind {text!r} is not HOST:PORT", "e.g. --bind 127.0.0.1:8080")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(host: str, token: str | None) -> str | None:
    """The token to require, or None on loopback without one. Elsewhere a token is mandatory."""
    if token is not None:
        token = token.strip()
        if len(token) < MIN_TOKEN:
            raise UsageError(
                f"the serve token is too short ({len(token)} characters, at least {MIN_TOKEN})",
                "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))' > token",
            )
        return token
    if not is_loopback(host):
        raise UsageError(
            f"binding to {host} (not loopback) needs a token",
            "pass --token-file PATH or set FLEETCTL_SERVE_TOKEN; or bind to 127.0.0.1",
        )
    return None


class ViewServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], ctx: FleetContext, token: str | None, interval: float
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.ctx = ctx
        self.token = token
        self.cookie = hashlib.sha256(f"fleetctl-view:{token}".encode()).hexdigest() if token else None
        self.interval = interval
        self.local_only = is_loopback(address[0]) and token is None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def snapshot(self) -> dict[str, Any]:
        """One journal read per interval, shared by every client."""
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < self.interval / 2:
                return self._cached[1]
            doc = state.snapshot(self.ctx)
            self._cached = (time.monotonic(), doc)
            return doc

    def shutdown(self) -> None:
        self.stopping.set()
        super().shutdown()


class Handler(BaseHTTPRequestHandler):
    server: ViewServer
    server_version = "fleetctl"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("%s %s", self.address_string(), format % args)

    # -- only GET and HEAD ----------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._route(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._route(head=True)

    def _refuse(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"read-only: GET and HEAD only\n",
            "text/plain",
            {"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def _route(self, head: bool) -> None:
        url = urlsplit(self.path)
        if not self._allowed(url.query):
            return
        routes: dict[str, Callable[[], tuple[bytes, str]]] = {
            "/": lambda: (views.page(self.server.snapshot()).encode(), "text/html; charset=utf-8"),
            "/static/app.js": lambda: (assets.APP_JS.encode(), "text/javascript; charset=utf-8"),
            "/static/style.css": lambda: (assets.STYLE_CSS.encode(), "text/css; charset=utf-8"),
            "/api/state": lambda: (
                json.dumps(self.server.snapshot(), default=str).encode(),
                "application/json",
            ),
            "/api/sections": lambda: (self._sections_json().encode(), "application/json"),
        }
        if url.path == "/events" and not head:
            return self._events()
        if url.path not in routes:
            return self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        try:
            body, ctype = routes[url.path]()
        except FleetError as exc:
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, f"{exc.message}\n".encode(), "text/plain")
        self._send(HTTPStatus.OK, b"" if head else body, ctype, length=len(body))

    def _sections_json(self) -> str:
        return json.dumps({"sections": views.sections(self.server.snapshot())})

    # -- who may look ----------------------------------------------------------------------------------
    def _allowed(self, query: str) -> bool:
        srv = self.server
        if srv.local_only:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
            if host not in LOCAL_NAMES:
                self._send(
                    HTTPStatus.FORBIDDEN, b"this view answers requests for localhost only\n", "text/plain"
                )
                return False
            return True
        if srv.token is None:
            return True
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(
            given[7:].strip().encode(), srv.token.encode()
        ):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(self.headers.get("Cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
            cookie = SimpleCookie()
        if (
            COOKIE in cookie
            and srv.cookie
            and hmac.compare_digest(cookie[COOKIE].value.encode(), srv.cookie.encode())
        ):
            return True
        token = (parse_qs(query).get("token") or [""])[0]
        if token and hmac.compare_digest(token.encode(), srv.token.encode()):
            path = urlsplit(self.path).path or "/"
            self._send(
                HTTPStatus.SEE_OTHER,
                b"",
                "text/plain",
                {"Location": path, "Set-Cookie": f"{COOKIE}={srv.cookie}; HttpOnly; SameSite=Strict; Path=/"},
            )
            return False
        self._send(HTTPStatus.UNAUTHORIZED, b"a token is needed: open /?token=TOKEN once\n", "text/plain")
        return False

    # -- answers ---------------------------------------------------------------------------------------
    def _headers(self, ctype: str) -> None:
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        ctype: str,
        extra: dict[str, str] | None = None,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self._headers(ctype)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _events(self) -> None:
        """Server-sent events: the sections whenever they change, a comment every 15 s otherwise."""
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self._headers("text/event-stream")
        self.end_headers()
        last, beat = "", time.monotonic()
        try:
            while not self.server.stopping.is_set():
                try:
                    data = self._sections_json()
                except FleetError as exc:  # a busy or unreachable journal: say so, try again
                    data = json.dumps({"error": exc.message})
                if data != last:
                    self.wfile.write(f"event: sections\ndata: {data}\n\n".encode())
                    self.wfile.flush()
                    last, beat = data, time.monotonic()
                elif time.monotonic() - beat > 15:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    beat = time.monotonic()
                self.server.stopping.wait(self.server.interval)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return


def make_server(
    ctx: FleetContext, host: str, port: int, token: str | None, interval: float = 1.0
) -> ViewServer:
    """A ready-to-serve view (call serve_forever); raises UsageError for a bad bind or a missing token."""
    token = check_token(host, token)
    try:
        return ViewServer((host, port), ctx, token, interval)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", "choose another --bind"
        ) from None
