"""Notifications: who hears what. `notify:` in fleet.yml lists targets (a JSON webhook, or any Apprise URL
with the `notify` extra), each with the events it wants.

Events are written to the journal's outbox (fleetctl.store.outbox) in the transaction of the change they
report; fleetctl.notify_send delivers them later, off the engine's path. This module holds the target
settings, the public event names, and the hook that records the few engine events that have no journal
status change of their own (a halted rollout's rollback starting, a host failing under guard).
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from fleetctl.units import parse_duration

if TYPE_CHECKING:
    from fleetctl.config import FleetConfig
    from fleetctl.context import FleetContext
    from fleetctl.events import Event
    from fleetctl.store import Store

log = logging.getLogger("fleetctl.notify")

# The public events, in the order a bad night produces them. README: Notifications documents each.
EVENTS = (
    "run.started",
    "run.paused",
    "run.resumed",
    "run.halted",
    "rollback.started",
    "rollback.finished",
    "run.rolled_back",
    "run.succeeded",
    "run.aborted",
    "run.failed",
    "run.interrupted",
    "quarantine.added",
    "quarantine.cleared",
    "freeze.on",
    "freeze.off",
    "freeze.override",
    "guard.host_failed",
    "guard.tripped",
    "lock.taken_over",
    "notify.test",
)

# Engine events recorded through FleetContext.emit (everything else comes from the journal's own writes).
FROM_EMIT = {"rollback.started", "guard.host_failed"}

Seconds = Annotated[float, BeforeValidator(parse_duration)]


class NotifyTarget(BaseModel):
    """One place to tell: exactly one of `webhook` (http/https URL) or `apprise` (an Apprise URL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None  # default: webhook-1, apprise-2, ... (its place in the list)
    webhook: str | None = None
    apprise: str | None = None
    events: list[str] = ["*"]  # glob patterns over EVENTS, e.g. ["run.*", "guard.tripped"]
    secret_file: Path | None = None  # webhook: HMAC-SHA256 key, from a file (relative to fleet.yml) ...
    secret_env: str | None = None  # ... or from an environment variable
    timeout: Seconds = 5.0  # one attempt

    @model_validator(mode="after")
    def _check(self) -> NotifyTarget:
        if bool(self.webhook) == bool(self.apprise):
            raise ValueError("a target needs exactly one of webhook: URL or apprise: URL")
        if self.webhook:
            parts = urlsplit(self.webhook)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("webhook: must be an http:// or https:// URL with a host")
        if (self.secret_file or self.secret_env) and not self.webhook:
            raise ValueError("secret_file/secret_env sign webhook bodies; Apprise URLs carry their own keys")
        if self.secret_file and self.secret_env:
            raise ValueError("give one of secret_file or secret_env")
        if not self.events:
            raise ValueError("events: an empty list sends nothing; remove the target or list events")
        for pattern in self.events:
            if not any(fnmatch.fnmatchcase(e, pattern) for e in EVENTS):
                raise ValueError(f"events: {pattern!r} matches no event (known: {', '.join(EVENTS)})")
        if self.timeout <= 0:
            raise ValueError("timeout must be a positive duration, e.g. 5s")
        return self

    @property
    def kind(self) -> str:
        return "webhook" if self.webhook else "apprise"

    def shown(self) -> str:
        """The target for people: never a URL's credentials, path tokens or query."""
        if self.webhook:
            parts = urlsplit(self.webhook)
            port = f":{parts.port}" if parts.port else ""
            return f"webhook {parts.scheme}://{parts.hostname}{port}/…"
        scheme = str(self.apprise).split("://", 1)[0] if "://" in str(self.apprise) else "?"
        return f"apprise {scheme}://…"


def _unique_names(targets: list[NotifyTarget]) -> list[NotifyTarget]:
    names = [name for name, _t in named(targets)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"target names must be unique: {', '.join(dupes)} (set name: on each)")
    return targets


NotifyTargets = Annotated[list[NotifyTarget], AfterValidator(_unique_names)]


def named(targets: list[NotifyTarget]) -> list[tuple[str, NotifyTarget]]:
    """(name, target): a target's `name:` or its kind and place in the list (webhook-1, apprise-2)."""
    return [(t.name or f"{t.kind}-{i}", t) for i, t in enumerate(targets, start=1)]


def fleet_name(cfg: FleetConfig) -> str:
    """`name:` in fleet.yml, else the name of fleet.yml's directory."""
    return cfg.name or cfg.base_dir.name or "fleet"


def configure_store(store: Store, cfg: FleetConfig) -> None:
    """Give the journal's outbox the targets to fan events out to (called when the store opens)."""
    from fleetctl.store.outbox import Route

    store.outbox.configure([Route(name, tuple(t.events)) for name, t in named(cfg.notify)], fleet_name(cfg))


def record(ctx: FleetContext, event: Event) -> None:
    """FleetContext.emit's hook: the engine events in FROM_EMIT go to the outbox (once per key)."""
    if event.kind not in FROM_EMIT or not event.run_id or "store" not in ctx.__dict__:
        return
    store = ctx.store
    if not store.outbox.routes:
        return
    d = event.data
    if event.kind == "guard.host_failed":
        extra: dict[str, Any] = {
            "host": d.get("host"),
            "error": d.get("error"),
            "streak": d.get("streak"),
            "failed": [{"host": d.get("host"), "error": d.get("error")}],
            "see": f"fleetctl guard status {event.run_id}",
        }
        key = f"guard.host_failed:{event.run_id}:{d.get('host')}"
    else:
        extra = {"hosts": d.get("hosts"), "reason": d.get("reason")}
        key = f"rollback.started:{event.run_id}"
    try:
        store.outbox.run_event(key, event.kind, event.run_id, extra)
    except Exception as exc:  # noqa: BLE001 - a notification never stops a run
        log.warning("fleetctl: could not queue %s: %s: %s", event.kind, type(exc).__name__, exc)


def secret(ctx: FleetContext, target: NotifyTarget) -> bytes | None:
    """The webhook's HMAC key, or None when the target signs nothing. Raises OSError/KeyError with a
    message naming the setting when it is configured but missing."""
    if target.secret_env:
        value = ctx.env.get(target.secret_env)
        if not value:
            raise KeyError(f"secret_env: ${target.secret_env} is not set")
        return value.encode()
    if target.secret_file:
        path = target.secret_file
        if not path.is_absolute():
            path = ctx.config.base_dir / path
        data = Path(os.path.expanduser(str(path))).read_bytes().strip()
        if not data:
            raise KeyError(f"secret_file: {path} is empty")
        return data
    return None


def summary(payload: dict[str, Any]) -> tuple[str, str]:
    """(title, body) in words, for chat and e-mail targets."""
    event = str(payload.get("event"))
    what = payload.get("version") or payload.get("scope") or payload.get("subject") or ""
    title = f"[{payload.get('fleet')}] {event}" + (f" {what}" if what else "")
    if payload.get("run"):
        title += f" (run {payload['run']})"
    lines = []
    if payload.get("reason"):
        lines.append(f"reason: {payload['reason']}")
    if payload.get("pause"):
        lines.append(f"paused: {payload['pause']}")
    if payload.get("counts"):
        lines.append("hosts: " + ", ".join(f"{k} {v}" for k, v in sorted(payload["counts"].items())))
    for host in payload.get("failed") or []:
        lines.append(f"failed: {host.get('host')}: {host.get('error')}")
    if payload.get("operator"):
        lines.append(f"by: {payload['operator']}")
    if payload.get("see"):
        lines.append(f"see: {payload['see']}")
    return title, "\n".join(lines) or title
