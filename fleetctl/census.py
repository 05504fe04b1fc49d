"""Which host runs what: the ledger joined with the inventory, a refresh that asks the nodes, history."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from fleetctl.context import FleetContext
from fleetctl.store.ledger import Change, LedgerEntry
from fleetctl.units import BadNodeVersion, node_version_or_none


@dataclass
class HostRow:
    host: str
    groups: tuple[str, ...]
    zone: str | None
    entry: LedgerEntry | None

    def to_json(self) -> dict[str, Any]:
        e = self.entry
        return {
            "host": self.host,
            "groups": list(self.groups),
            "zone": self.zone,
            "version": e.version if e else None,
            "source": e.source if e else None,
            "at": e.changed_at.isoformat() if e and e.changed_at else None,
            "changed_at": e.changed_at.isoformat() if e and e.changed_at else None,  # deprecated alias of at
            "run": e.run_id if e else None,
            "operator": e.operator if e else None,
            "invalid": e.invalid if e else None,  # a recorded version that was not plain (escaped)
        }


@dataclass
class RefreshReport:
    changes: list[Change]
    unreachable: dict[str, str]


def hosts(ctx: FleetContext, pattern: str | None = None) -> list[HostRow]:
    names = ctx.fleet.select(pattern)
    entries = ctx.store.ledger.entries(ctx.component, names)
    return [HostRow(n, ctx.fleet[n].groups, _zone(ctx, n), entries.get(n)) for n in names]


def census(rows: list[HostRow]) -> dict[str, int]:
    counts = Counter((r.entry.version if r.entry and r.entry.version else "unknown") for r in rows)
    return dict(sorted(counts.items()))


def refresh(
    ctx: FleetContext,
    pattern: str | None = None,
    forks: int | None = None,
    hosts: list[str] | None = None,
    via: str = "ansible",
) -> RefreshReport:
    """Ask the nodes what they run (facts.yml through Ansible, or `via="ssh"`: fleetctl's own paramiko
    client reads `current` directly) and record it. A version fleetctl did not put there is recorded
    with source `observed`. A node that answers with something that is not a plain version is recorded
    at an unknown version and listed in `unreachable` with the (escaped) answer."""
    names = hosts if hosts is not None else ctx.fleet.select(pattern)
    ctx.emit("refresh.started", None, hosts=len(names), via=via)
    reports: dict[str, str | None] = {}
    unreachable: dict[str, str] = {}
    if via == "ssh":
        from fleetctl.ssh import SshClient, read_versions, version_of

        for h, r in read_versions(SshClient(ctx.config.ssh), ctx.fleet, names).items():
            if not r.ok:
                unreachable[h] = r.error or "failed"
                continue
            try:
                reports[h] = version_of(r)
            except BadNodeVersion as exc:
                reports[h], unreachable[h] = None, str(exc)
    else:
        run = ctx.executor().run("facts.yml", names, forks=forks or ctx.config.rollback.forks, ident="facts")
        for h, res in run.results.items():
            if not res.ok:
                unreachable[h] = res.error or res.status
                continue
            try:
                reports[h] = node_version_or_none(res.version)
            except BadNodeVersion as exc:
                reports[h], unreachable[h] = None, str(exc)
    changes = ctx.store.ledger.record(
        ctx.component, reports, source="observed", run_id=None, operator=ctx.who
    )
    return RefreshReport(changes, unreachable)


def history(ctx: FleetContext, host: str | None = None, limit: int = 200) -> list[Change]:
    if host and host not in ctx.fleet.hosts:
        from fleetctl.errors import InventoryError

        raise InventoryError(f"host {host!r} is not in the inventory", "list hosts with `fleetctl hosts`")
    return ctx.store.ledger.history(ctx.component, host, limit)


def _zone(ctx: FleetContext, host: str) -> str | None:
    key = ctx.config.rollout.spread_by or "zone"
    value = ctx.fleet[host].var(key)
    return None if value is None else str(value)
