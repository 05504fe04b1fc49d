"""Scheduled rollouts waiting for a maintenance window (`fleetctl schedule`, run by `fleetctl tick`)."""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from fleetctl.store import schema

if TYPE_CHECKING:
    from fleetctl.store import Store


@dataclass(frozen=True)
class QueueItem:
    id: int
    component: str
    version: str
    pattern: str | None
    not_before: datetime | None
    created_by: str | None
    created_at: datetime
    status: str
    run_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "pattern": self.pattern,
            "not_before": self.not_before.isoformat() if self.not_before else None,
            "operator": self.created_by,
            "by": self.created_by,  # deprecated alias of operator (docs/json.md)
            "at": self.created_at.isoformat(),
            "status": self.status,
            "run": self.run_id,
        }


class Queue:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(
        self,
        component: str,
        version: str,
        *,
        pattern: str | None,
        not_before: datetime | None,
        by: str | None,
    ) -> QueueItem:
        with self.store.tx() as conn:
            qid: int = conn.execute(
                schema.queue.insert().values(
                    fleet=self.store.fleet,
                    component=component,
                    version=version,
                    pattern=pattern,
                    not_before=not_before,
                    created_by=by,
                    created_at=self.store.now(),
                    status="queued",
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            self.store.audit.write(conn, "schedule.add", version, None, by, {"id": qid, "pattern": pattern})
        item = self.get(qid)
        assert item is not None
        return item

    def get(self, qid: int) -> QueueItem | None:
        with self.store.read() as conn:
            t = schema.queue
            row = (
                conn.execute(select(t).where(t.c.id == qid, t.c.fleet == self.store.fleet)).mappings().first()
            )
        return _item(row) if row else None

    def list(
        self, component: str, statuses: tuple[str, ...] = ("queued", "started")
    ) -> builtins.list[QueueItem]:
        t = schema.queue
        q = select(t).where(
            t.c.fleet == self.store.fleet, t.c.component == component, t.c.status.in_(statuses)
        )
        with self.store.read() as conn:
            return [_item(r) for r in conn.execute(q.order_by(t.c.id)).mappings()]

    def set(self, qid: int, **values: Any) -> None:
        with self.store.tx() as conn:
            self.store.locks.check(conn)  # a tick that lost the fleet lock does not move the queue
            t = schema.queue
            conn.execute(t.update().where(t.c.id == qid, t.c.fleet == self.store.fleet).values(**values))


def _item(row: Any) -> QueueItem:
    return QueueItem(**{k: row[k] for k in QueueItem.__dataclass_fields__})
