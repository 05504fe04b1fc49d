"""Guards in the journal: after a successful rollout, the hosts it updated stay under probes for a while.

`guards` holds one row per guarded run (its settings, status, rounds, trip); `guard_hosts` one row per
guarded host (its failing streak, first and last failure, last error, or the run that moved it since).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Float, Integer, String, Table, Text, select

from fleetctl.store import schema
from fleetctl.store.schema import UTCDateTime

if TYPE_CHECKING:
    from fleetctl.store import Store

ACTIVE = "active"
ENDED = ("tripped", "rolled_back", "alerted", "expired", "stopped", "released")

guards = Table(
    "guards",
    schema.metadata,
    Column("run_id", String(64), primary_key=True),
    Column("component", String(64), nullable=False),
    Column("version", String(128), nullable=False),
    # active tripped rolled_back alerted expired stopped released
    Column("status", String(16), nullable=False, index=True),
    Column("on_trip", String(16), nullable=False),  # rollback | alert
    Column("interval", Float, nullable=False),
    Column("failures_to_fail", Integer, nullable=False),
    Column("max_failures", Integer, nullable=False),  # resolved against the guarded hosts
    Column("started_at", UTCDateTime, nullable=False),
    Column("until", UTCDateTime, nullable=False),
    Column("rounds", Integer, nullable=False, default=0),
    Column("last_round_at", UTCDateTime),
    Column("ended_at", UTCDateTime),
    Column("end_reason", Text),
    Column("ended_by", String(128)),
    Column("rollback_run_id", String(64)),  # the rollback a trip started
)

guard_hosts = Table(
    "guard_hosts",
    schema.metadata,
    Column("run_id", String(64), primary_key=True),
    Column("host", String(255), primary_key=True),
    Column("state", String(16), nullable=False),  # ok failing failed released
    Column("streak", Integer, nullable=False, default=0),  # consecutive failed rounds
    Column("first_failure_at", UTCDateTime),
    Column("last_failure_at", UTCDateTime),
    Column("last_error", Text),
    Column("released_by", String(64)),  # the run that moved the host since
)

TABLES = [guards, guard_hosts]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True)
class GuardHost:
    run_id: str
    host: str
    state: str
    streak: int
    first_failure_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None
    released_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "state": self.state,
            "streak": self.streak,
            "first_failure_at": _iso(self.first_failure_at),
            "last_failure_at": _iso(self.last_failure_at),
            "error": self.last_error,
            "released_by": self.released_by,
        }


@dataclass(frozen=True)
class Guard:
    run_id: str
    component: str
    version: str
    status: str
    on_trip: str
    interval: float
    failures_to_fail: int
    max_failures: int
    started_at: datetime
    until: datetime
    rounds: int
    last_round_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    ended_by: str | None
    rollback_run_id: str | None

    def due(self, now: datetime) -> bool:
        """A round is due: never probed yet, or the interval has passed since the last one."""
        if self.status != ACTIVE:
            return False
        return self.last_round_at is None or now - self.last_round_at >= timedelta(seconds=self.interval)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "component": self.component,
            "version": self.version,
            "status": self.status,
            "on_trip": self.on_trip,
            "interval": self.interval,
            "failures_to_fail": self.failures_to_fail,
            "max_failures": self.max_failures,
            "started_at": _iso(self.started_at),
            "until": _iso(self.until),
            "rounds": self.rounds,
            "last_round_at": _iso(self.last_round_at),
            "ended_at": _iso(self.ended_at),
            "end_reason": self.end_reason,
            "ended_by": self.ended_by,
            "rollback_run": self.rollback_run_id,
        }


class Guards:
    def __init__(self, store: Store) -> None:
        self.store = store

    def begin(
        self,
        run_id: str,
        *,
        component: str,
        version: str,
        hosts: builtins.list[str],
        duration: float,
        interval: float,
        failures_to_fail: int,
        max_failures: int,
        on_trip: str,
    ) -> None:
        """Put the hosts a rollout updated under guard (idempotent: a resumed run does not restart it)."""
        now = self.store.now()
        with self.store.tx() as conn:
            if conn.execute(select(guards.c.run_id).where(guards.c.run_id == run_id)).first():
                return
            conn.execute(
                guards.insert().values(
                    run_id=run_id,
                    component=component,
                    version=version,
                    status=ACTIVE,
                    on_trip=on_trip,
                    interval=interval,
                    failures_to_fail=failures_to_fail,
                    max_failures=max_failures,
                    started_at=now,
                    until=now + timedelta(seconds=duration),
                    rounds=0,
                )
            )
            if hosts:
                conn.execute(
                    guard_hosts.insert(),
                    [{"run_id": run_id, "host": h, "state": "ok", "streak": 0} for h in hosts],
                )

    def get(self, run_id: str) -> Guard | None:
        with self.store.read() as conn:
            row = conn.execute(select(guards).where(guards.c.run_id == run_id)).mappings().first()
        return Guard(**row) if row else None

    def list(self, *, statuses: tuple[str, ...] | None = None, limit: int = 50) -> builtins.list[Guard]:
        q = select(guards)
        if statuses:
            q = q.where(guards.c.status.in_(statuses))
        with self.store.read() as conn:
            rows = conn.execute(q.order_by(guards.c.started_at.desc()).limit(limit)).mappings()
            return [Guard(**r) for r in rows]

    def hosts(self, run_id: str) -> builtins.list[GuardHost]:
        with self.store.read() as conn:
            rows = conn.execute(
                select(guard_hosts).where(guard_hosts.c.run_id == run_id).order_by(guard_hosts.c.host)
            ).mappings()
            return [GuardHost(**r) for r in rows]

    def claim_round(self, guard: Guard) -> bool:
        """Take the due round of `guard` (tick and `guard watch` may both be running): False when another
        process took it first or the guard ended meanwhile."""
        last = guards.c.last_round_at
        with self.store.tx() as conn:
            return bool(
                conn.execute(
                    guards.update()
                    .where(
                        guards.c.run_id == guard.run_id,
                        guards.c.status == ACTIVE,
                        last.is_(None) if guard.last_round_at is None else last == guard.last_round_at,
                    )
                    .values(last_round_at=self.store.now())
                ).rowcount
            )

    def record_round(self, run_id: str, updates: dict[str, dict[str, Any]]) -> None:
        """One round's outcome: per host the new state/streak/failure fields, and the round counter.
        A host released meanwhile (a newer run moved it) or a guard that ended keeps what it has."""
        with self.store.tx() as conn:
            if not conn.execute(
                select(guards.c.run_id).where(guards.c.run_id == run_id, guards.c.status == ACTIVE)
            ).first():
                return
            for host, values in updates.items():
                conn.execute(
                    guard_hosts.update()
                    .where(
                        guard_hosts.c.run_id == run_id,
                        guard_hosts.c.host == host,
                        guard_hosts.c.state != "released",
                    )
                    .values(**values)
                )
            conn.execute(guards.update().where(guards.c.run_id == run_id).values(rounds=guards.c.rounds + 1))

    def end(
        self,
        run_id: str,
        status: str,
        *,
        reason: str | None,
        by: str | None,
        only_from: str = ACTIVE,
        audit: tuple[str, dict[str, Any]] | None = None,
    ) -> bool:
        """Move an active guard to `status`. False when another process already did (a trip is claimed
        exactly once). `audit` = (action, details) is written in the same transaction."""
        with self.store.tx() as conn:
            done = conn.execute(
                guards.update()
                .where(guards.c.run_id == run_id, guards.c.status == only_from)
                .values(status=status, ended_at=self.store.now(), end_reason=reason, ended_by=by)
            ).rowcount
            if done and audit:
                self.store.audit.write(conn, audit[0], run_id, reason, by, audit[1])
        return bool(done)

    def settle(self, run_id: str, status: str) -> None:
        """The trip's action is done: `rolled_back` (its rollback ended, or had nothing to do) or
        `alerted` (the fleet is frozen)."""
        with self.store.tx() as conn:
            conn.execute(
                guards.update()
                .where(guards.c.run_id == run_id, guards.c.status == "tripped")
                .values(status=status)
            )

    def set_rollback(self, run_id: str, rollback_run_id: str) -> None:
        with self.store.tx() as conn:
            conn.execute(
                guards.update().where(guards.c.run_id == run_id).values(rollback_run_id=rollback_run_id)
            )

    def release(self, hosts: builtins.list[str], by_run: str) -> builtins.list[str]:
        """A newer run moves these hosts: they leave every active guard. A guard left with no host ends
        `released`. Returns the guarded runs that lost hosts."""
        if not hosts:
            return []
        wanted = set(hosts)
        touched: builtins.list[str] = []
        with self.store.tx() as conn:
            active = [
                r[0]
                for r in conn.execute(
                    select(guards.c.run_id).where(guards.c.status == ACTIVE, guards.c.run_id != by_run)
                )
            ]
            for run_id in active:
                rows = conn.execute(
                    select(guard_hosts.c.host, guard_hosts.c.state).where(guard_hosts.c.run_id == run_id)
                ).all()
                moved = [h for h, state in rows if h in wanted and state != "released"]
                if not moved:
                    continue
                touched.append(run_id)
                conn.execute(
                    guard_hosts.update()
                    .where(guard_hosts.c.run_id == run_id, guard_hosts.c.host.in_(moved))
                    .values(state="released", released_by=by_run)
                )
                if all(state == "released" or h in wanted for h, state in rows):
                    conn.execute(
                        guards.update()
                        .where(guards.c.run_id == run_id)
                        .values(
                            status="released",
                            ended_at=self.store.now(),
                            end_reason=f"every guarded host moved by run {by_run}",
                        )
                    )
        return touched
