"""Delivering the outbox: a JSON webhook (stdlib, HMAC-SHA256 over the exact body) or an Apprise URL.

Nothing here runs on the engine's path. The CLI starts a `Courier` thread for the length of a command
and gives it a short budget at the end; `fleetctl notify flush` and every later command retry what is
left. Each attempt has a timeout; a failed one is recorded (attempts, last error) and retried with
exponential backoff until MAX_ATTEMPTS, then the row is marked failed (`notify flush` tries it again).
A row is claimed with a conditional UPDATE before it is sent, so two processes never both send it.
What a receiver answers is untrusted: only a short, printable excerpt is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetctl import __version__, notify
from fleetctl.notify import NotifyTarget

if TYPE_CHECKING:
    from fleetctl.context import FleetContext
    from fleetctl.store.outbox import OutboxRow

log = logging.getLogger("fleetctl.notify")

MAX_ATTEMPTS = 12
BACKOFF_FIRST = 10.0  # seconds before the 2nd attempt; doubles each time
BACKOFF_CAP = 3600.0
END_OF_COMMAND_BUDGET = 5.0  # what a command's exit may spend on deliveries still in flight
SIGNATURE_HEADER = "X-Fleetctl-Signature"


class DeliveryError(Exception):
    """One attempt failed; the message is short, printable and holds no URL."""


def backoff(failures: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** max(0, failures - 1))


def _excerpt(data: bytes | str, limit: int = 120) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text[:limit] + ("…" if len(text) > limit else "")


def signature(key: bytes, body: bytes) -> str:
    """The header value a receiver recomputes: `sha256=` + hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer, not an invitation to send the event elsewhere


_OPENER = urllib.request.build_opener(_NoRedirect)


def send_webhook(url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(4096)
    except urllib.error.HTTPError as exc:
        detail = _excerpt(exc.read(512)) if exc.fp else ""
        raise DeliveryError(f"HTTP {exc.code}" + (f": {detail}" if detail else "")) from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"cannot reach the receiver: {_excerpt(str(exc.reason))}") from None
    except TimeoutError:
        raise DeliveryError(f"no answer within {timeout:g}s") from None
    except OSError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {_excerpt(str(exc))}") from None


def send_apprise(url: str, payload: dict[str, Any]) -> None:
    try:
        import apprise  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise DeliveryError("Apprise is not installed: pip install 'fleetctl[notify]'") from None
    box = apprise.Apprise()
    if not box.add(url):
        raise DeliveryError("Apprise does not accept this URL (see its documentation for the scheme)")
    title, body = notify.summary(payload)
    if not box.notify(title=title, body=body):
        raise DeliveryError("Apprise could not deliver (its service refused or did not answer)")


def send(ctx: FleetContext, target: NotifyTarget, payload: dict[str, Any], timeout: float) -> None:
    """One attempt at delivering `payload` to `target`; DeliveryError says why it failed."""
    if target.apprise:
        return send_apprise(target.apprise, payload)
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"fleetctl/{__version__}",
        "X-Fleetctl-Event": str(payload.get("event")),
        "X-Fleetctl-Delivery": str(payload.get("id")),
    }
    try:
        key = notify.secret(ctx, target)
    except (OSError, KeyError) as exc:
        raise DeliveryError(f"cannot sign: {exc.args[-1] if exc.args else exc}") from None
    if key is not None:
        headers[SIGNATURE_HEADER] = signature(key, body)
    send_webhook(str(target.webhook), body, headers, timeout)


@dataclass
class FlushReport:
    delivered: int = 0
    failed: int = 0
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (target, event, error)

    def to_json(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "errors": [{"target": t, "event": e, "error": m} for t, e, m in self.errors],
        }


def deliver_due(
    ctx: FleetContext, budget: float, stop: threading.Event | None = None, skip: set[str] | None = None
) -> FlushReport:
    """Send every due outbox row within `budget` seconds, except to the targets in `skip`. A target
    that fails is skipped for the rest of this pass (its other rows wait for their next attempt)."""
    report = FlushReport()
    targets = dict(notify.named(ctx.config.notify))
    if not targets:
        return report
    outbox = ctx.store.outbox
    deadline = time.monotonic() + budget
    broken: set[str] = set(skip or ())
    while time.monotonic() < deadline and not (stop and stop.is_set()):
        rows = [r for r in outbox.due(ctx.now(), sorted(set(targets) - broken)) if r.target not in broken]
        if not rows:
            break
        for row in rows:
            left = deadline - time.monotonic()
            if left <= 0 or row.target in broken:
                continue
            target = targets[row.target]
            if not outbox.claim(row, ctx.now(), hold=target.timeout + 60):
                continue
            if _attempt(ctx, target, row, min(target.timeout, max(left, 0.5)), report):
                continue
            broken.add(row.target)
    return report


def _attempt(
    ctx: FleetContext, target: NotifyTarget, row: OutboxRow, timeout: float, report: FlushReport
) -> bool:
    outbox = ctx.store.outbox
    try:
        send(ctx, target, row.payload, timeout)
    except DeliveryError as exc:
        failures = row.failures + 1
        retry = backoff(failures) if row.attempts + 1 < MAX_ATTEMPTS else None
        outbox.failed(row.id, str(exc), retry)
        report.failed += 1
        report.errors.append((row.target, row.event, str(exc)))
        return False
    except Exception as exc:  # noqa: BLE001 - e.g. a plugin's own bug inside Apprise
        error = f"{type(exc).__name__}: {_excerpt(str(exc))}"
        outbox.failed(row.id, error, backoff(row.failures + 1))
        report.failed += 1
        report.errors.append((row.target, row.event, error))
        return False
    outbox.delivered(row.id)
    report.delivered += 1
    return True


def flush(ctx: FleetContext, budget: float = 60.0) -> FlushReport:
    """`fleetctl notify flush`: every undelivered row is due now (backoff or not), then deliver."""
    ctx.store.outbox.retry_now()
    return deliver_due(ctx, budget)


def test_targets(ctx: FleetContext, name: str | None = None) -> list[tuple[str, str | None]]:
    """Send a `notify.test` event straight to one target (or all); [(name, error or None)]. Nothing is
    queued: a test that fails is reported, not retried."""
    from fleetctl.errors import UsageError

    targets = notify.named(ctx.config.notify)
    if name is not None:
        targets = [(n, t) for n, t in targets if n == name]
    if not targets:
        known = ", ".join(n for n, _t in notify.named(ctx.config.notify)) or "none in fleet.yml"
        raise UsageError(f"no notification target {name or ''}".strip(), f"targets: {known}; see `notify:`")
    now = ctx.now()
    out: list[tuple[str, str | None]] = []
    for tname, target in targets:
        payload = {
            "event": "notify.test",
            "id": f"notify.test:{tname}:{now.isoformat()}",
            "fleet": notify.fleet_name(ctx.config),
            "run": None,
            "reason": "a test event from `fleetctl notify test`",
            "operator": ctx.who,
            "time": now.isoformat(),
            "see": "fleetctl notify list",
        }
        try:
            send(ctx, target, payload, target.timeout)
            out.append((tname, None))
        except DeliveryError as exc:
            out.append((tname, str(exc)))
    return out


class Courier:
    """A daemon thread that delivers the outbox (and rewrites the metrics textfile) while a command
    runs. It starts doing anything only once the command opened the journal. A target that fails rests
    for BACKOFF_FIRST s in this process (its events wait in the outbox). `close` waits for an attempt
    in flight (so a slow but live receiver is not sent the event twice), then gives the last events a
    short pass; never longer than its budget."""

    def __init__(self, ctx: FleetContext, on_tick: Any = None, interval: float = 1.0) -> None:
        self.ctx = ctx
        self.on_tick = on_tick  # e.g. write the metrics textfile; called after each pass
        self.interval = interval
        self._stop = threading.Event()
        self._cancelled = False
        self._resting: dict[str, float] = {}  # target -> monotonic time: failed here, left to later
        self._thread = threading.Thread(target=self._loop, name="fleetctl-notify", daemon=True)

    def start(self) -> Courier:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop without a last pass (a read-only command such as `serve`)."""
        self._cancelled = True
        self._stop.set()

    def close(self, budget: float = END_OF_COMMAND_BUDGET) -> None:
        self._stop.set()
        deadline = time.monotonic() + budget
        if self._thread.is_alive():
            self._thread.join(budget)
        if not self._cancelled and self._store_open():  # what the run's last steps queued
            self._pass(budget=max(0.5, deadline - time.monotonic()), final=True)

    def _store_open(self) -> bool:
        return "store" in self.ctx.__dict__

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._store_open():
                changed = self.ctx.store.outbox.changed
                changed.clear()
                self._pass(budget=30.0)
                changed.wait(self.interval)
            else:
                self._stop.wait(0.2)

    def _pass(self, budget: float, final: bool = False) -> None:
        try:
            if self.ctx.config.notify:
                now = time.monotonic()
                skip = {t for t, until in self._resting.items() if until > now}
                report = deliver_due(self.ctx, budget, None if final else self._stop, skip)
                for target, _event, _error in report.errors:  # a dead target costs a command one attempt
                    self._resting[target] = time.monotonic() + BACKOFF_FIRST
            if self.on_tick:
                self.on_tick(self.ctx, final)
        except Exception as exc:  # noqa: BLE001 - delivery must never end the command
            log.warning("fleetctl: notifications: %s: %s", type(exc).__name__, exc)
