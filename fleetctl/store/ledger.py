"""The version ledger (which host runs what, since when, changed by whom) and its history."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from fleetctl.store import schema

if TYPE_CHECKING:
    from fleetctl.store import Store


@dataclass(frozen=True)
class LedgerEntry:
    host: str
    version: str | None
    previous_version: str | None
    changed_at: datetime | None
    run_id: str | None
    operator: str | None
    source: str

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "version": self.version,
            "source": self.source,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
            "run": self.run_id,
            "operator": self.operator,
        }


@dataclass(frozen=True)
class Change:
    host: str
    from_version: str | None
    to_version: str | None
    run_id: str | None
    operator: str | None
    at: datetime
    source: str

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "from": self.from_version,
            "to": self.to_version,
            "run": self.run_id,
            "operator": self.operator,
            "at": self.at.isoformat(),
            "source": self.source,
        }


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    def entries(self, component: str, hosts: Iterable[str] | None = None) -> dict[str, LedgerEntry]:
        t = schema.ledger
        q = select(t).where(t.c.component == component)
        with self.store.read() as conn:
            rows = conn.execute(q).mappings().all()
        wanted = None if hosts is None else set(hosts)
        return {
            r["host"]: LedgerEntry(
                r["host"],
                r["version"],
                r["previous_version"],
                r["changed_at"],
                r["run_id"],
                r["operator"],
                r["source"],
            )
            for r in rows
            if wanted is None or r["host"] in wanted
        }

    def versions(self, component: str) -> dict[str, str | None]:
        return {h: e.version for h, e in self.entries(component).items()}

    def record(
        self,
        component: str,
        reports: dict[str, str | None],
        *,
        source: str,
        run_id: str | None,
        operator: str | None,
        at: datetime | None = None,
    ) -> list[Change]:
        """Record what hosts report they run. Only real changes make history; returns them."""
        at = at or self.store.now()
        t, h = schema.ledger, schema.history
        changes: list[Change] = []
        with self.store.tx() as conn:
            known = {
                r.host: r.version
                for r in conn.execute(
                    select(t.c.host, t.c.version).where(
                        t.c.component == component, t.c.host.in_(list(reports))
                    )
                )
            }
            for host, version in reports.items():
                if host in known and known[host] == version:
                    continue
                if host not in known and version is None:  # a new host that reports nothing: no change
                    conn.execute(
                        t.insert().values(
                            host=host,
                            component=component,
                            version=None,
                            previous_version=None,
                            changed_at=at,
                            run_id=run_id,
                            operator=operator,
                            source=source,
                        )
                    )
                    continue
                before = known.get(host)
                values = dict(
                    version=version,
                    previous_version=before,
                    changed_at=at,
                    run_id=run_id,
                    operator=operator,
                    source=source,
                )
                if host in known:
                    conn.execute(
                        t.update().where(t.c.host == host, t.c.component == component).values(**values)
                    )
                else:
                    conn.execute(t.insert().values(host=host, component=component, **values))
                conn.execute(
                    h.insert().values(
                        host=host,
                        component=component,
                        from_version=before,
                        to_version=version,
                        run_id=run_id,
                        operator=operator,
                        source=source,
                        at=at,
                    )
                )
                changes.append(Change(host, before, version, run_id, operator, at, source))
        return changes

    def history(self, component: str, host: str | None = None, limit: int | None = None) -> list[Change]:
        h = schema.history
        q = select(h).where(h.c.component == component).order_by(h.c.at.desc(), h.c.id.desc())
        if host:
            q = q.where(h.c.host == host)
        if limit:
            q = q.limit(limit)
        with self.store.read() as conn:
            return [
                Change(
                    r["host"],
                    r["from_version"],
                    r["to_version"],
                    r["run_id"],
                    r["operator"],
                    r["at"],
                    r["source"],
                )
                for r in conn.execute(q).mappings()
            ]
