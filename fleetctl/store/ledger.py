"""The version ledger (which host runs what, since when, changed by whom) and its history.

Versions in here came from nodes, so they are checked both ways: a version that is not plain is never
written (the host is recorded at an unknown version) and a row that holds one anyway (an older fleetctl,
a hand edit) reads as unknown, with the escaped text in `invalid`, so it never reaches a playbook."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from fleetctl.store import schema
from fleetctl.units import BadNodeVersion, node_version, shown

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
    invalid: str | None = None  # the recorded version was not plain: shown escaped; version is None

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "version": self.version,
            "source": self.source,
            "at": self.changed_at.isoformat() if self.changed_at else None,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,  # deprecated alias of at
            "run": self.run_id,
            "operator": self.operator,
            "invalid": self.invalid,
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
    invalid: str | None = None  # a recorded version was not plain: shown escaped; it reads as None

    def to_json(self) -> dict:
        return {
            "host": self.host,
            "from": self.from_version,
            "to": self.to_version,
            "run": self.run_id,
            "operator": self.operator,
            "at": self.at.isoformat(),
            "source": self.source,
            "invalid": self.invalid,
        }


def checked(raw: object) -> tuple[str | None, str | None]:
    """(version, None) for a plain version or nothing; (None, escaped text) for anything else."""
    if raw is None:
        return None, None
    try:
        return node_version(raw), None
    except BadNodeVersion:
        return None, shown(raw)


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    def entries(self, component: str, hosts: Iterable[str] | None = None) -> dict[str, LedgerEntry]:
        t = schema.ledger
        q = select(t).where(t.c.fleet == self.store.fleet, t.c.component == component)
        with self.store.read() as conn:
            rows = conn.execute(q).mappings().all()
        wanted = None if hosts is None else set(hosts)
        out = {}
        for r in rows:
            if wanted is not None and r["host"] not in wanted:
                continue
            version, invalid = checked(r["version"])
            previous, _ = checked(r["previous_version"])
            out[r["host"]] = LedgerEntry(
                r["host"],
                version,
                previous,
                r["changed_at"],
                r["run_id"],
                r["operator"],
                r["source"],
                invalid,
            )
        return out

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
        """Record what hosts report they run. Only real changes make history; returns them.

        A report that is not a plain version is recorded as unknown (None): callers check first and fail
        the host with the reason; this is the last line of defence."""
        at = at or self.store.now()
        reports = {host: checked(v)[0] for host, v in reports.items()}
        t, h = schema.ledger, schema.history
        changes: list[Change] = []
        fleet = self.store.fleet
        with self.store.tx() as conn:
            self.store.locks.check(conn)  # a holder that lost the fleet lock records nothing
            if conn.dialect.name == "postgresql":  # writers queue, as BEGIN IMMEDIATE makes them on SQLite:
                conn.exec_driver_sql("LOCK TABLE ledger IN SHARE ROW EXCLUSIVE MODE")  # read-then-write
            known = {
                r.host: r.version
                for r in conn.execute(
                    select(t.c.host, t.c.version).where(
                        t.c.fleet == fleet, t.c.component == component, t.c.host.in_(list(reports))
                    )
                )
            }
            for host, version in reports.items():
                if host in known and known[host] == version:
                    continue
                if host not in known and version is None:  # a new host that reports nothing: no change
                    conn.execute(
                        t.insert().values(
                            fleet=fleet,
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
                before = checked(known.get(host))[0]
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
                        t.update()
                        .where(t.c.fleet == fleet, t.c.host == host, t.c.component == component)
                        .values(**values)
                    )
                else:
                    conn.execute(t.insert().values(fleet=fleet, host=host, component=component, **values))
                conn.execute(
                    h.insert().values(
                        fleet=fleet,
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
        q = (
            select(h)
            .where(h.c.fleet == self.store.fleet, h.c.component == component)
            .order_by(h.c.at.desc(), h.c.id.desc())
        )
        if host:
            q = q.where(h.c.host == host)
        if limit:
            q = q.limit(limit)
        with self.store.read() as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            before, bad_before = checked(r["from_version"])
            after, bad_after = checked(r["to_version"])
            invalid = " -> ".join(x for x in (bad_before, bad_after) if x) or None
            out.append(
                Change(r["host"], before, after, r["run_id"], r["operator"], r["at"], r["source"], invalid)
            )
        return out
