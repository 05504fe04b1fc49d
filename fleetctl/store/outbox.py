"""The notification outbox: one row per (event, target), written in the same transaction as the state
change it reports, delivered later by fleetctl.notify_send outside the engine's critical path.

Journal changes become public events here: a run's status change (`Runs.update` calls `on_run`), an
audit entry (`Audit.write` calls `on_audit`: freezes, quarantine, overrides, lock takeovers, guard trips)
and a few engine events with no status change of their own (`run_event`, from fleetctl.notify.record). A row's `key`
names the event once: a resumed run that reports the same change again inserts nothing (one delivery
per event and target). A sender claims a row with a conditional UPDATE before sending it.
"""

from __future__ import annotations

import builtins
import fnmatch
import logging
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Column, Integer, String, Table, Text, UniqueConstraint, and_, func, or_, select

from fleetctl.store import schema
from fleetctl.store.outbox_events import AUDIT_EVENTS, audit_event, run_events, run_payload
from fleetctl.store.schema import UTCDateTime

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from fleetctl.store import Store

log = logging.getLogger("fleetctl.notify")

PENDING, SENDING, DELIVERED, GAVE_UP = "pending", "sending", "delivered", "failed"

outbox = Table(
    "outbox",
    schema.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False),  # the event, once: e.g. run.halted:<run>
    Column("target", String(128), nullable=False),  # the target's name in fleet.yml
    Column("event", String(64), nullable=False, index=True),
    Column("run_id", String(64)),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False, index=True),  # pending sending delivered failed
    Column("created_at", UTCDateTime, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("claimed_until", UTCDateTime),  # a sender owns a `sending` row until then
    Column("attempts", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("last_attempt_at", UTCDateTime),
    Column("last_error", Text),
    Column("delivered_at", UTCDateTime),
    UniqueConstraint("key", "target", name="outbox_key_target"),
)

TABLES = [outbox]


@dataclass(frozen=True)
class Route:
    """A configured target as the outbox sees it: its name and the event patterns it wants."""

    name: str
    events: tuple[str, ...] = ("*",)

    def wants(self, event: str) -> bool:
        return any(fnmatch.fnmatchcase(event, p) for p in self.events)


@dataclass
class OutboxRow:
    id: int
    key: str
    target: str
    event: str
    run_id: str | None
    payload: dict[str, Any]
    status: str
    created_at: datetime
    next_attempt_at: datetime
    claimed_until: datetime | None
    attempts: int
    failures: int
    last_attempt_at: datetime | None
    last_error: str | None
    delivered_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        iso = _iso
        return {
            "id": self.id,
            "event": self.event,
            "target": self.target,
            "run": self.run_id,
            "status": self.status,
            "attempts": self.attempts,
            "failures": self.failures,
            "created_at": iso(self.created_at),
            "next_attempt_at": iso(self.next_attempt_at) if self.status == PENDING else None,
            "last_attempt_at": iso(self.last_attempt_at),
            "last_error": self.last_error,
            "delivered_at": iso(self.delivered_at),
            "key": self.key,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass
class Outbox:
    store: Store
    routes: list[Route] = field(default_factory=list)
    fleet: str = "fleet"
    changed: threading.Event = field(default_factory=threading.Event)  # wakes an in-process sender

    def configure(self, routes: list[Route], fleet: str) -> None:
        self.routes, self.fleet = list(routes), fleet

    # -- writing (inside the caller's transaction) ----------------------------------------------------
    def add(self, conn: Connection, key: str, event: str, run_id: str | None, payload: dict[str, Any]) -> int:
        """Queue `event` for every target that wants it, once per key. Returns the rows written. Runs in
        a savepoint: a failure here is logged and never undoes the state change it reports."""
        self.changed.set()
        routes = [r for r in self.routes if r.wants(event)]
        if not routes:
            return 0
        now = self.store.now()
        body = {"event": event, "id": key, "fleet": self.fleet, "run": run_id, **payload}
        body.setdefault("time", now.isoformat())
        written = 0
        try:
            with conn.begin_nested():
                for route in routes:
                    row = dict(
                        key=key[:200],
                        target=route.name,
                        event=event,
                        run_id=run_id,
                        payload=body,
                        status=PENDING,
                        created_at=now,
                        next_attempt_at=now,
                        attempts=0,
                        failures=0,
                    )
                    written += _insert_once(conn, row)
        except Exception as exc:  # noqa: BLE001 - a notification must never cost the state change
            log.warning("fleetctl: could not queue notification %s: %s: %s", event, type(exc).__name__, exc)
        return written

    def on_run(self, conn: Connection, run_id: str, values: dict[str, Any]) -> None:
        """Called by Runs.update before it writes `values`: a status change becomes an event."""
        if "status" not in values:
            return
        self.changed.set()
        if not self.routes:
            return
        try:
            old = conn.execute(select(schema.runs).where(schema.runs.c.id == run_id)).mappings().first()
            if old is None:
                return
            for key, event, payload in run_events(conn, dict(old), values, self.store.now()):
                self.add(conn, key, event, run_id, payload)
        except Exception as exc:  # noqa: BLE001 - as in add()
            log.warning("fleetctl: could not queue run notification: %s: %s", type(exc).__name__, exc)

    def on_audit(
        self,
        conn: Connection,
        action: str,
        subject: str | None,
        reason: str | None,
        actor: str | None,
        details: dict[str, Any] | None,
    ) -> None:
        """Called by Audit.write: freezes, quarantine, overrides, lock takeovers and guard trips."""
        self.changed.set()
        if not self.routes or action not in AUDIT_EVENTS:
            return
        try:
            event, run_id, payload = audit_event(action, subject, reason, actor, details)
        except Exception as exc:  # noqa: BLE001 - as in add()
            log.warning("fleetctl: could not queue %s: %s: %s", action, type(exc).__name__, exc)
            return
        key = f"{event}:{subject}:{self.store.now().isoformat()}:{secrets.token_hex(3)}"
        self.add(conn, key, event, run_id, payload)

    def run_event(self, key: str, event: str, run_id: str, extra: dict[str, Any]) -> None:
        """An engine event about run `run_id` with no status change of its own, in its own transaction."""
        if not self.routes:
            return
        with self.store.tx() as conn:
            old = conn.execute(select(schema.runs).where(schema.runs.c.id == run_id)).mappings().first()
            if old is not None:
                payload = run_payload(conn, dict(old), {}, self.store.now())
                self.add(
                    conn, key, event, run_id, {**payload, **{k: v for k, v in extra.items() if v is not None}}
                )

    # -- delivery --------------------------------------------------------------------------------------
    def due(self, now: datetime, targets: builtins.list[str], limit: int = 50) -> builtins.list[OutboxRow]:
        """Rows a sender may try now: pending and due, or `sending` with an expired claim (a crash)."""
        t = outbox
        q = (
            select(t)
            .where(
                t.c.target.in_(targets),
                or_(
                    and_(t.c.status == PENDING, t.c.next_attempt_at <= now),
                    and_(t.c.status == SENDING, t.c.claimed_until < now),
                ),
            )
            .order_by(t.c.id)
            .limit(limit)
        )
        with self.store.read() as conn:
            return [OutboxRow(**r) for r in conn.execute(q).mappings()]

    def claim(self, row: OutboxRow, now: datetime, hold: float) -> bool:
        """Take `row` for one attempt; False when another sender took it first (or it was delivered)."""
        t = outbox
        with self.store.tx() as conn:
            result = conn.execute(
                t.update()
                .where(
                    t.c.id == row.id,
                    or_(
                        and_(t.c.status == PENDING, t.c.next_attempt_at <= now),
                        and_(t.c.status == SENDING, t.c.claimed_until < now),
                    ),
                )
                .values(
                    status=SENDING,
                    claimed_until=now + timedelta(seconds=hold),
                    attempts=t.c.attempts + 1,
                    last_attempt_at=now,
                )
            )
        return result.rowcount == 1

    def delivered(self, row_id: int) -> None:
        now = self.store.now()
        with self.store.tx() as conn:
            conn.execute(
                outbox.update()
                .where(outbox.c.id == row_id)
                .values(status=DELIVERED, delivered_at=now, claimed_until=None, last_error=None)
            )

    def failed(self, row_id: int, error: str, retry_in: float | None) -> None:
        """Record a failed attempt: retry after `retry_in` seconds, or give up (None)."""
        now = self.store.now()
        t = outbox
        values: dict[str, Any] = {
            "failures": t.c.failures + 1,
            "last_error": error[:500],
            "claimed_until": None,
            "status": GAVE_UP if retry_in is None else PENDING,
        }
        if retry_in is not None:
            values["next_attempt_at"] = now + timedelta(seconds=retry_in)
        with self.store.tx() as conn:
            conn.execute(t.update().where(t.c.id == row_id).values(**values))

    def retry_now(self) -> int:
        """Make every undelivered row due now (`notify flush --now`); gave-up rows get a fresh start."""
        t = outbox
        with self.store.tx() as conn:
            return conn.execute(
                t.update()
                .where(t.c.status.in_([PENDING, GAVE_UP]))
                .values(status=PENDING, next_attempt_at=self.store.now())
            ).rowcount

    # -- reading ---------------------------------------------------------------------------------------
    def list(self, limit: int = 50, status: str | None = None) -> builtins.list[OutboxRow]:
        t = outbox
        q = select(t).order_by(t.c.id.desc()).limit(limit)
        if status:
            q = q.where(t.c.status == status)
        with self.store.read() as conn:
            return [OutboxRow(**r) for r in conn.execute(q).mappings()]

    def stats(self) -> dict[str, int]:
        """Rows per status, and `failed_attempts`: every failed attempt ever recorded."""
        t = outbox
        with self.store.read() as conn:
            rows = conn.execute(select(t.c.status, func.count(), func.sum(t.c.failures)).group_by(t.c.status))
            out: dict[str, int] = {PENDING: 0, SENDING: 0, DELIVERED: 0, GAVE_UP: 0, "failed_attempts": 0}
            for status, count, failures in rows:
                out[status] = int(count)
                out["failed_attempts"] += int(failures or 0)
        return out


def _insert_once(conn: Connection, row: dict[str, Any]) -> int:
    """INSERT unless (key, target) is there already, without failing the transaction on a race."""
    name = conn.dialect.name
    if name in ("sqlite", "postgresql"):
        if name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        stmt = insert(outbox).values(**row).on_conflict_do_nothing(index_elements=["key", "target"])
        return int(conn.execute(stmt).rowcount or 0)
    t = outbox
    if conn.execute(select(t.c.id).where(t.c.key == row["key"], t.c.target == row["target"])).first():
        return 0
    conn.execute(t.insert().values(**row))
    return 1
