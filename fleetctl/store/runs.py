"""Runs and their per-host states: written before and after every step, read by `status` elsewhere."""

from __future__ import annotations

import builtins
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, select

from fleetctl.store import schema

if TYPE_CHECKING:
    from fleetctl.store import Store

ACTIVE = ("planned", "running", "paused", "interrupted")
FINISHED = ("succeeded", "failed", "halted", "rolled_back", "aborted")


@dataclass
class RunRecord:
    id: str
    kind: str
    target: str | None
    component: str
    fingerprint: str | None
    status: str
    status_reason: str | None
    operator: str | None
    reason: str | None
    plan: dict[str, Any] | None
    options: dict[str, Any]
    reverts: str | None
    stage: str | None
    batch: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    control: str | None
    fleet: str = ""  # fleet.yml `name:` of the fleet it ran on

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fleet": self.fleet,
            "kind": self.kind,
            "version": self.target,
            "target": self.target,  # deprecated alias of version (docs/json.md)
            "status": self.status,
            "reason": self.status_reason,
            "operator": self.operator,
            "stage": self.stage,
            "batch": self.batch,
            "reverts": self.reverts,
            "fingerprint": self.fingerprint,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
        }


@dataclass
class RunHost:
    run_id: str
    host: str
    seq: int
    stage: str | None
    batch: int | None
    state: str
    from_version: str | None
    to_version: str | None
    error: str | None = None
    probe_ms: float | None = None
    probe_max_ms: float | None = None
    updated_at: datetime | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "stage": self.stage,
            "batch": self.batch,
            "state": self.state,
            "from": self.from_version,
            "to": self.to_version,
            "error": self.error,
            "probe_ms": self.probe_ms,
            "probe_max_ms": self.probe_max_ms,
            "updated_at": _iso(self.updated_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class Runs:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _mine(self) -> Select[Any]:
        """This fleet's runs (a run's hosts follow it: run_hosts is reached through a run id only)."""
        return select(schema.runs).where(schema.runs.c.fleet == self.store.fleet)

    def create(
        self,
        *,
        kind: str,
        component: str,
        target: str | None,
        operator: str | None,
        reason: str | None,
        plan: dict[str, Any] | None,
        fingerprint: str | None,
        options: dict[str, Any],
        hosts: Iterable[tuple[str, str | None, int | None, str | None, str | None]],
        reverts: str | None = None,
        status: str = "running",
    ) -> RunRecord:
        """Create a run and its hosts (host, stage, batch, from, to) in one transaction."""
        now = self.store.now()
        run_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
        with self.store.tx() as conn:
            self.store.locks.check(conn)  # a holder that lost the fleet lock writes nothing
            conn.execute(
                schema.runs.insert().values(
                    id=run_id,
                    fleet=self.store.fleet,
                    kind=kind,
                    component=component,
                    target=target,
                    operator=operator,
                    reason=reason,
                    plan=plan,
                    fingerprint=fingerprint,
                    options=options,
                    reverts=reverts,
                    status=status,
                    created_at=now,
                    started_at=now,
                )
            )
            rows = [
                dict(
                    run_id=run_id,
                    host=h,
                    seq=i,
                    stage=s,
                    batch=b,
                    state="pending",
                    from_version=f,
                    to_version=t,
                    updated_at=now,
                )
                for i, (h, s, b, f, t) in enumerate(hosts)
            ]
            if rows:
                conn.execute(schema.run_hosts.insert(), rows)
        run = self.get(run_id)
        assert run is not None
        return run

    def get(self, run_id: str) -> RunRecord | None:
        with self.store.read() as conn:
            row = conn.execute(self._mine().where(schema.runs.c.id == run_id)).mappings().first()
        return _record(row) if row else None

    def find(self, ref: str) -> RunRecord | None:
        """A run by id or unique id prefix."""
        exact = self.get(ref)
        if exact:
            return exact
        t = schema.runs
        with self.store.read() as conn:
            rows = (
                conn.execute(self._mine().where(t.c.id.startswith(ref, autoescape=True)).limit(2))
                .mappings()
                .all()
            )
        return _record(rows[0]) if len(rows) == 1 else None

    def list(
        self, limit: int = 20, kind: str | None = None, statuses: Iterable[str] | None = None
    ) -> builtins.list[RunRecord]:
        t = schema.runs
        q = self._mine().order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
        if kind:
            q = q.where(t.c.kind == kind)
        if statuses is not None:
            q = q.where(t.c.status.in_(list(statuses)))
        with self.store.read() as conn:
            return [_record(r) for r in conn.execute(q).mappings()]

    def update(self, run_id: str, **values: Any) -> None:
        if values.get("status") in FINISHED and "finished_at" not in values:
            values["finished_at"] = self.store.now()
        with self.store.tx() as conn:
            self.store.locks.check(conn)
            self.store.outbox.on_run(conn, run_id, values)  # a status change is a notification
            conn.execute(schema.runs.update().where(schema.runs.c.id == run_id).values(**values))

    def request(self, run_id: str, control: str | None) -> None:
        """Ask the process running `run_id` to pause or abort at its next check."""
        self.update(run_id, control=control)

    def hosts(self, run_id: str) -> builtins.list[RunHost]:
        t = schema.run_hosts
        with self.store.read() as conn:
            rows = conn.execute(select(t).where(t.c.run_id == run_id).order_by(t.c.seq)).mappings().all()
        return [RunHost(**{k: r[k] for k in RunHost.__dataclass_fields__}) for r in rows]

    def set_hosts(self, run_id: str, hosts: Iterable[str], state: str, **values: Any) -> None:
        hosts = list(hosts)
        if not hosts:
            return
        t = schema.run_hosts
        with self.store.tx() as conn:
            self.store.locks.check(conn)
            conn.execute(
                t.update()
                .where(t.c.run_id == run_id, t.c.host.in_(hosts))
                .values(state=state, updated_at=self.store.now(), **values)
            )

    def set_host(self, run_id: str, host: str, **values: Any) -> None:
        t = schema.run_hosts
        with self.store.tx() as conn:
            self.store.locks.check(conn)
            conn.execute(
                t.update()
                .where(t.c.run_id == run_id, t.c.host == host)
                .values(updated_at=self.store.now(), **values)
            )

    def counts(self, run_id: str) -> dict[str, int]:
        return dict(Counter(h.state for h in self.hosts(run_id)))


def _record(row: Any) -> RunRecord:
    return RunRecord(
        **{k: row[k] for k in RunRecord.__dataclass_fields__ if k != "options"}, options=row["options"] or {}
    )
