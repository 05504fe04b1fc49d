"""A webhook receiver for trying notifications out (`fleetctl notify receive`, the demo): a stdlib HTTP
server that checks each body's HMAC-SHA256 signature (when given the secret) and hands the event on.

Not a production endpoint: it is what a chat bridge or a pager gateway would do, in thirty lines, so a
setup can be checked end to end on one machine.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleetctl.notify_send import SIGNATURE_HEADER, signature

MAX_BODY = 1 << 20

OnEvent = Callable[[dict[str, Any]], None]


class Receiver(ThreadingHTTPServer):
    daemon_threads = False  # server_close() waits until every answer is sent: no event half-received

    def __init__(self, address: tuple[str, int], secret: bytes | None, on_event: OnEvent) -> None:
        super().__init__(address, _Handler)
        self.secret = secret
        self.on_event = on_event
        self.lock = threading.Lock()  # one event handed on at a time

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]!s}:{self.server_address[1]}/hook"


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def log_message(self, *args: Any) -> None:
        return None

    def _answer(self, status: int, text: str = "") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self._answer(413, "too large\n")
        body = self.rfile.read(length)
        if self.server.secret is not None:
            given = self.headers.get(SIGNATURE_HEADER, "")
            if not hmac.compare_digest(given.encode(), signature(self.server.secret, body).encode()):
                return self._answer(401, "bad signature\n")
        try:
            event = json.loads(body)
        except ValueError:
            return self._answer(400, "not JSON\n")
        if not isinstance(event, dict):
            return self._answer(400, "not a JSON object\n")
        with self.server.lock:
            self.server.on_event(event)
        self._answer(204)


def listen(host: str, port: int, secret: bytes | None, on_event: OnEvent) -> Receiver:
    """A receiver bound to host:port (0: any free port); call serve_forever."""
    return Receiver((host, port), secret, on_event)


def line(event: dict[str, Any]) -> str:
    """One printable line for a person: event, run, status, reason, failed hosts."""
    parts = [str(event.get("event")), f"fleet={event.get('fleet')}"]
    for key in ("run", "version", "status", "reason"):
        if event.get(key):
            parts.append(f"{key}={event[key]}")
    for host in (event.get("failed") or [])[:5]:
        if isinstance(host, dict):
            parts.append(f"failed={host.get('host')}: {host.get('error')}")
    text = " ".join(parts)
    return "".join(c if c.isprintable() else " " for c in text)
