"""Manual freezes, quarantined versions and the audit log."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from fleetctl.store import schema

if TYPE_CHECKING:
    from fleetctl.store import Store


ALL_FLEETS = "*"  # the fleet of a freeze that covers every fleet in the journal (freeze on --all-fleets)


def _entry(row: Any) -> QuarantineEntry:
    return QuarantineEntry(**{k: row[k] for k in QuarantineEntry.__dataclass_fields__})


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True)
class Freeze:
    id: int
    scope: str
    reason: str
    created_by: str | None
    created_at: datetime
    until: datetime | None
    lifted_at: datetime | None
    lifted_by: str | None
    lift_reason: str | None
    fleet: str = ""  # the fleet it covers, or ALL_FLEETS

    def active_at(self, at: datetime) -> bool:
        return self.created_at <= at and self.lifted_at is None and (self.until is None or at < self.until)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "scope": self.scope,
            "reason": self.reason,
            "operator": self.created_by,
            "by": self.created_by,  # deprecated alias of operator (docs/json.md)
            "at": _iso(self.created_at),
            "until": _iso(self.until),
            "lifted_at": _iso(self.lifted_at),
            "lifted_by": self.lifted_by,
            "lift_reason": self.lift_reason,
            "fleet": self.fleet,
            "all_fleets": self.fleet == ALL_FLEETS,
        }


class Freezes:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _mine(self) -> Any:
        """This fleet's freezes and those covering every fleet."""
        return schema.freezes.c.fleet.in_([self.store.fleet, ALL_FLEETS])

    def add(
        self, *, scope: str, reason: str, by: str | None, until: datetime | None, all_fleets: bool = False
    ) -> Freeze:
        """A manual freeze of this fleet, or (all_fleets) of every fleet in the journal."""
        now = self.store.now()
        fleet = ALL_FLEETS if all_fleets else self.store.fleet
        with self.store.tx() as conn:
            fid: int = conn.execute(
                schema.freezes.insert().values(
                    fleet=fleet, scope=scope, reason=reason, created_by=by, created_at=now, until=until
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            details: dict[str, Any] = {"until": _iso(until), "id": fid}
            if all_fleets:
                details["all_fleets"] = True
            self.store.audit.write(conn, "freeze.on", scope, reason, by, details)
        return next(f for f in self.all() if f.id == fid)

    def lift(
        self, *, by: str | None, reason: str | None, scope: str | None = None, all_fleets: bool = False
    ) -> builtins.list[Freeze]:
        """Lift this fleet's active manual freezes (or those of one scope; all_fleets: those covering
        every fleet instead). Returns what was lifted."""
        now = self.store.now()
        fleet = ALL_FLEETS if all_fleets else self.store.fleet
        lifted = [f for f in self.active(now) if f.fleet == fleet and (scope is None or f.scope == scope)]
        t = schema.freezes
        with self.store.tx() as conn:
            for f in lifted:
                conn.execute(
                    t.update().where(t.c.id == f.id).values(lifted_at=now, lifted_by=by, lift_reason=reason)
                )
                self.store.audit.write(
                    conn, "freeze.off", f.scope, reason, by, {"id": f.id, "frozen_for": f.reason}
                )
        return lifted

    def all(self, limit: int = 100) -> builtins.list[Freeze]:
        t = schema.freezes
        with self.store.read() as conn:
            rows = conn.execute(
                select(t).where(self._mine()).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
            ).mappings()
            return [Freeze(**r) for r in rows]

    def active(self, at: datetime) -> builtins.list[Freeze]:
        t = schema.freezes
        q = select(t).where(
            self._mine(),
            t.c.lifted_at.is_(None),
            t.c.created_at <= at,
            or_(t.c.until.is_(None), t.c.until > at),
        )
        with self.store.read() as conn:
            return [Freeze(**r) for r in conn.execute(q.order_by(t.c.id)).mappings()]


@dataclass(frozen=True)
class QuarantineEntry:
    id: int
    component: str
    version: str
    reason: str
    run_id: str | None
    created_by: str | None
    created_at: datetime
    cleared_at: datetime | None
    cleared_by: str | None
    clear_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "reason": self.reason,
            "run": self.run_id,
            "operator": self.created_by,
            "by": self.created_by,  # deprecated alias of operator (docs/json.md)
            "at": _iso(self.created_at),
            "cleared_at": _iso(self.cleared_at),
            "cleared_by": self.cleared_by,
            "clear_reason": self.clear_reason,
        }


class Quarantine:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, component: str, version: str, *, reason: str, run_id: str | None, by: str | None) -> None:
        if self.get(component, version):
            return
        with self.store.tx() as conn:
            conn.execute(
                schema.quarantine.insert().values(
                    fleet=self.store.fleet,
                    component=component,
                    version=version,
                    reason=reason,
                    run_id=run_id,
                    created_by=by,
                    created_at=self.store.now(),
                )
            )
            self.store.audit.write(conn, "quarantine.add", version, reason, by, {"run": run_id})

    def get(self, component: str, version: str) -> QuarantineEntry | None:
        t = schema.quarantine
        q = select(t).where(
            t.c.fleet == self.store.fleet,
            t.c.component == component,
            t.c.version == version,
            t.c.cleared_at.is_(None),
        )
        with self.store.read() as conn:
            row = conn.execute(q).mappings().first()
        return _entry(row) if row else None

    def list(self, component: str, include_cleared: bool = False) -> builtins.list[QuarantineEntry]:
        t = schema.quarantine
        q = select(t).where(t.c.fleet == self.store.fleet, t.c.component == component)
        q = q.order_by(t.c.created_at.desc())
        if not include_cleared:
            q = q.where(t.c.cleared_at.is_(None))
        with self.store.read() as conn:
            return [_entry(r) for r in conn.execute(q).mappings()]

    def clear(self, component: str, version: str, *, reason: str, by: str | None) -> QuarantineEntry | None:
        entry = self.get(component, version)
        if entry is None:
            return None
        t = schema.quarantine
        with self.store.tx() as conn:
            conn.execute(
                t.update()
                .where(t.c.id == entry.id)
                .values(cleared_at=self.store.now(), cleared_by=by, clear_reason=reason)
            )
            self.store.audit.write(conn, "quarantine.clear", version, reason, by, {"run": entry.run_id})
        return entry


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str | None
    action: str
    subject: str | None
    reason: str | None
    details: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "operator": self.actor,
            "actor": self.actor,  # deprecated alias of operator (docs/json.md)
            "action": self.action,
            "subject": self.subject,
            "reason": self.reason,
            "details": self.details or {},
        }


class Audit:
    def __init__(self, store: Store) -> None:
        self.store = store

    def write(
        self,
        conn: Any,
        action: str,
        subject: str | None,
        reason: str | None,
        actor: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append inside the caller's transaction, so the audit entry and the change land together."""
        conn.execute(
            schema.audit.insert().values(
                fleet=self.store.fleet,
                at=self.store.now(),
                actor=actor,
                action=action,
                subject=subject,
                reason=reason,
                details=details or {},
            )
        )
        self.store.outbox.on_audit(conn, action, subject, reason, actor, details)

    def record(
        self,
        action: str,
        subject: str | None,
        reason: str | None,
        actor: str | None,
        details: dict[str, Any] | None = None,
    ) -> None:
        with self.store.tx() as conn:
            self.write(conn, action, subject, reason, actor, details)

    def entries(self, limit: int = 100) -> builtins.list[AuditEntry]:
        t = schema.audit
        with self.store.read() as conn:
            q = select(t).where(t.c.fleet == self.store.fleet).order_by(t.c.at.desc(), t.c.id.desc())
            rows = conn.execute(q.limit(limit)).mappings()
            return [AuditEntry(**{k: r[k] for k in AuditEntry.__dataclass_fields__}) for r in rows]
