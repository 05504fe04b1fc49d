"""Which public event a journal change is, and what its payload says (used by store/outbox.py inside
the transaction of the change: reads only, through the caller's connection)."""

from __future__ import annotations

import builtins
from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from fleetctl.store import schema

if TYPE_CHECKING:
    from sqlalchemy import Connection

FAILED_HOSTS_SHOWN = 20
# A run's status change -> the public event (kind rollout; a rollback run's start and end are rollback.*).
ONCE = {"succeeded", "halted", "rolled_back", "aborted", "failed"}
PAUSE_KINDS = (("frozen", "frozen"), ("window", "window closed"), ("operator stage", "operator stage"))
AUDIT_EVENTS = {
    "freeze.on": "freeze.on",
    "freeze.off": "freeze.off",
    "freeze.override": "freeze.override",
    "quarantine.add": "quarantine.added",
    "quarantine.clear": "quarantine.cleared",
    "lock.takeover": "lock.taken_over",
    "guard.trip": "guard.tripped",
}
SEE_AUDIT = {
    "freeze": "fleetctl freeze list",
    "quarantine": "fleetctl quarantine list",
    "lock": "fleetctl audit",
    "guard": "fleetctl guard status",
}


def audit_event(
    action: str, subject: str | None, reason: str | None, actor: str | None, details: dict[str, Any] | None
) -> tuple[str, str | None, dict[str, Any]]:
    """(event, run id, payload) for an audit entry whose action is in AUDIT_EVENTS."""
    event = AUDIT_EVENTS[action]
    details = dict(details or {})
    run_id = details.get("run") if isinstance(details.get("run"), str) else None
    payload: dict[str, Any] = {"reason": reason, "operator": actor, "subject": subject, "details": details}
    if event.startswith("quarantine."):
        payload["version"] = subject
    elif event.startswith("freeze."):
        payload["scope"] = subject if event != "freeze.override" else None
    elif event in ("lock.taken_over", "guard.tripped"):
        run_id = subject
    if event == "guard.tripped":
        hosts = [h for h in details.get("hosts") or [] if isinstance(h, dict)]
        payload["version"] = details.get("version")
        payload["failed"] = [{"host": h.get("host"), "error": h.get("error")} for h in hosts][
            :FAILED_HOSTS_SHOWN
        ]
        payload["failed_total"] = len(hosts)
    payload["see"] = SEE_AUDIT.get(event.split(".")[0], "fleetctl audit")
    return event, run_id, payload


def pause_kind(reason: str | None) -> str:
    text = (reason or "").lower()
    for prefix, kind in PAUSE_KINDS:
        if text.startswith(prefix):
            return kind
    return "operator request" if "request" in text else "other"


def run_events(
    conn: Connection, old: dict[str, Any], values: dict[str, Any], now: datetime
) -> builtins.list[tuple[str, str, dict[str, Any]]]:
    """(key, event, payload) for the change of run `old` to `values` (usually none or one)."""
    run_id, kind = old["id"], old["kind"]
    before, after = old["status"], values["status"]
    reason = values.get("status_reason", old.get("status_reason"))
    stamp = now.isoformat()
    out: builtins.list[tuple[str, bool]] = []  # (event, may happen more than once in a run)
    if after == "running":
        if before == "running":  # the first status write of a run (its engine starting)
            out.append(("rollback.started" if kind == "rollback" else "run.started", False))
        else:
            out.append(("run.resumed", True))
    elif after in ("paused", "interrupted") and after != before:
        out.append((f"run.{after}", True))
    elif after in ONCE and after != before:
        out.append(("rollback.finished" if kind == "rollback" else f"run.{after}", False))
    if (
        kind == "rollout"
        and before in ("halted", "aborted")
        and after in ("rolled_back", "failed", "aborted")
    ):
        if after != "aborted" or any(s == "rolled_back" for s, _h, _e in _states(conn, run_id)):
            out.append(("rollback.finished", False))
    if not out:
        return []
    base = run_payload(conn, old, values, now)
    result = []
    for event, repeats in out:
        key = f"{event}:{run_id}:{stamp}" if repeats else f"{event}:{run_id}"
        payload = dict(base)
        if event == "run.paused":
            payload["pause"] = pause_kind(reason)
        result.append((key, event, payload))
    return result


def run_payload(
    conn: Connection, old: dict[str, Any], values: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """What every run event says: the run, its hosts per state, the failed ones with their errors."""
    run_id = old["id"]
    states = _states(conn, run_id)
    failed = [{"host": h, "state": s, "error": e} for s, h, e in states if e and s != "pending"]
    payload = {
        "kind": old["kind"],
        "version": old.get("target"),
        "status": values.get("status", old["status"]),
        "reason": values.get("status_reason", old.get("status_reason")),
        "counts": dict(Counter(s for s, _h, _e in states)),
        "failed": failed[:FAILED_HOSTS_SHOWN],
        "failed_total": len(failed),
        "operator": old.get("operator"),
        "stage": values.get("stage", old.get("stage")),
        "batch": values.get("batch", old.get("batch")),
        "time": now.isoformat(),
        "see": f"fleetctl status {run_id}",
    }
    if old.get("reverts"):
        payload["reverts"] = old["reverts"]
    return payload


def _states(conn: Connection, run_id: str) -> builtins.list[tuple[str, str, str | None]]:
    t = schema.run_hosts
    q = select(t.c.state, t.c.host, t.c.error).where(t.c.run_id == run_id).order_by(t.c.seq)
    return [(r[0], r[1], r[2]) for r in conn.execute(q)]
