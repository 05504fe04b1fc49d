"""The preflight (`fleetctl check`): will a rollout work now? Config and inventory, reachability through
Ansible, probes, the artifact of a version and its checksum, quarantine, journal, lock, freezes, windows.

Config and inventory errors raise as usual (exit 2); every other finding is a `Check` in the report, a
failed one naming the host or field and the fix. The checks only read, except a no-op write that proves
the journal is writable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import update

from fleetctl import artifacts, policy, windows
from fleetctl.config import Probe
from fleetctl.context import FleetContext
from fleetctl.errors import FleetError, InventoryError, UsageError
from fleetctl.health import Prober
from fleetctl.store import schema
from fleetctl.store.migrations import MIGRATIONS, current_version
from fleetctl.units import check_version

NAMED = 5  # failing hosts named one by one per check; the rest are counted
SAMPLE = 3  # hosts each probe is asked on


@dataclass(frozen=True)
class Check:
    name: str  # config, inventory, stages, journal, lock, freeze, window, quarantine, artifact, reach, probe
    ok: bool
    detail: str
    fix: str | None = None
    host: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "host": self.host, "detail": self.detail, "fix": self.fix}


@dataclass
class CheckReport:
    version: str | None
    checks: list[Check] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # every host Ansible could not reach

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, name: str, ok: bool, detail: str, fix: str | None = None, host: str | None = None) -> None:
        self.checks.append(Check(name, ok, detail, None if ok else fix, host))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "version": self.version,
            "checks": [c.to_json() for c in self.checks],
            "failed": len(self.failures),
            "unreachable": [{"host": h, "error": e} for h, e in self.unreachable.items()],
        }


def preflight(ctx: FleetContext, version: str | None = None, *, sample: int = SAMPLE) -> CheckReport:
    """Run every check. Raises ConfigError/InventoryError (and UsageError for a malformed VERSION)."""
    if version is not None:
        try:
            check_version(version)
        except ValueError as exc:
            raise UsageError(str(exc), "pass a release version such as 1.2.0") from None
    report = CheckReport(version)
    cfg, fleet = ctx.config, ctx.fleet  # raise as usual: exit 2
    report.add(
        "config", True, f"{cfg.path}: {len(cfg.rollout.stages)} stage(s), {len(cfg.health.probes)} probe(s)"
    )
    groups = {g for h in fleet.hosts.values() for g in h.groups}
    report.add(
        "inventory", True, f"{len(fleet)} host(s), {len(groups)} group(s) from {_paths(cfg.inventory)}"
    )
    _stages(ctx, report)
    if _journal(ctx, report):
        _lock(ctx, report)
        _freezes(ctx, report)
        if version:
            _quarantine(ctx, report, version)
    _windows(ctx, report)
    reachable = _reach(ctx, report)
    if version:
        _artifact(ctx, report, version, reachable)
    _probes(ctx, report, reachable, sample)
    return report


def _paths(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _named(report: CheckReport, name: str, failed: dict[str, str], fix: str, what: str, total: int) -> None:
    """One line per failing host for the first NAMED, then one line counting them all."""
    for host, error in list(failed.items())[:NAMED]:
        report.add(name, False, error, fix, host)
    more = f" ({len(failed) - NAMED} more not named)" if len(failed) > NAMED else ""
    report.add(name, False, f"{len(failed)} of {total} host(s) {what}{more}", fix)


# -- configuration -----------------------------------------------------------------------------------
def _stages(ctx: FleetContext, report: CheckReport) -> None:
    fleet, taken = ctx.fleet, set()
    for stage in ctx.config.rollout.stages:
        members = [h for h in fleet.select(stage.hosts, required=False) if h not in taken]
        taken.update(members)
        if not members:
            report.add(
                "stages",
                True,
                f"stage {stage.name} (hosts: {stage.hosts}) matches no host not taken by an earlier stage",
            )
    left = [h for h in fleet.names if h not in taken]
    if left:
        report.add(
            "stages",
            False,
            f"{len(left)} host(s) in no stage, never updated: {', '.join(left[:NAMED])}",
            "end rollout.stages in fleet.yml with a stage `hosts: all` for the rest",
        )
    else:
        report.add("stages", True, f"every host is in a stage ({len(ctx.config.rollout.stages)} stage(s))")


# -- journal, lock, freezes, windows, quarantine ------------------------------------------------------
def _journal(ctx: FleetContext, report: CheckReport) -> bool:
    try:
        store = ctx.store  # opening migrates
        with store.tx() as conn:  # a write transaction that changes nothing proves the journal writable
            version = current_version(conn)
            conn.execute(
                update(schema.meta).where(schema.meta.c.key == "schema_version").values(value=str(version))
            )
    except FleetError as exc:
        report.add("journal", False, exc.message, exc.hint or "check `state:` in fleet.yml")
        return False
    shown = store.engine.url.render_as_string(hide_password=True)
    ok = version == len(MIGRATIONS)
    report.add(
        "journal",
        ok,
        f"{shown}: writable, schema version {version}" + ("" if ok else f" of {len(MIGRATIONS)}"),
        "upgrade fleetctl or open the journal once with this version to migrate it",
    )
    return True


def _lock(ctx: FleetContext, report: CheckReport) -> None:
    locks = ctx.store.locks
    holder = locks.holder(ctx.lock_name)
    if holder is None:
        report.add("lock", True, "free")
    elif locks.is_dead(holder):
        report.add("lock", True, f"held by a dead holder ({holder.describe()}); the next run takes it over")
    else:
        report.add(
            "lock",
            False,
            f"held by {holder.describe()}: a rollout now would exit 4",
            "wait for that run (`fleetctl status`) or stop it (`fleetctl abort`)",
        )


def _freezes(ctx: FleetContext, report: CheckReport) -> None:
    st = policy.status(ctx)
    change = policy.fmt_instant(st.next_change) if st.next_change else None
    if st.frozen:
        causes = "; ".join(c.describe() for c in st.by)
        report.add(
            "freeze",
            False,
            f"frozen: {causes}" + (f"; lifts at {change}" if change else "; no end set"),
            "wait for the freeze to end, lift it (`fleetctl freeze off --reason TEXT`), or roll out with "
            "--override-freeze --reason TEXT",
        )
    else:
        report.add(
            "freeze", True, "no freeze in force" + (f"; the next begins at {change}" if change else "")
        )


def _windows(ctx: FleetContext, report: CheckReport) -> None:
    specs = ctx.config.maintenance.windows
    state = windows.maintenance_state(specs, ctx.now())
    nxt = policy.fmt_instant(state.next_open) if state.next_open else None
    if not specs:
        detail = "no maintenance windows: scheduled runs may start any time"
    elif state.open:
        detail = f"window {state.window} open; no new batch after {policy.fmt_instant(state.closes_at)}"
    else:
        detail = "no window open now (scheduled runs wait)" + (f"; the next opens at {nxt}" if nxt else "")
    report.add("window", True, detail)


def _quarantine(ctx: FleetContext, report: CheckReport, version: str) -> None:
    entry = ctx.store.quarantine.get(ctx.component, version)
    if entry is None:
        report.add("quarantine", True, f"{version} is not quarantined")
        return
    report.add(
        "quarantine",
        False,
        f"{version} is quarantined since {entry.created_at:%Y-%m-%d %H:%M}Z (run {entry.run_id}): {entry.reason}",
        f"if the fault is understood: fleetctl quarantine clear {version} --reason TEXT",
    )


# -- the nodes ---------------------------------------------------------------------------------------
def _reach(ctx: FleetContext, report: CheckReport) -> list[str]:
    """facts.yml on every host at once (rollback.forks wide); returns the hosts that answered."""
    names = ctx.fleet.names
    run = ctx.executor().run("facts.yml", names, forks=ctx.config.rollback.forks)
    bad = {h: run.results[h].error or run.results[h].status for h in names if not run.results[h].ok}
    report.unreachable = {h: e for h, e in bad.items() if run.results[h].status == "unreachable"}
    ok = [h for h in names if h not in bad]
    versions = Counter(run.results[h].version or "none" for h in ok)
    shown = ", ".join(f"{v} on {n}" for v, n in versions.most_common())
    answered = f"{len(ok)} of {len(names)} host(s) answered through Ansible" + (
        f"; running {shown}" if shown else ""
    )
    if not bad:
        report.add("reach", True, answered)
        return ok
    fix = f"check the host's address and SSH settings: ansible -i {_paths(ctx.config.inventory)} HOST -m ping"
    _named(report, "reach", bad, fix, f"did not answer through Ansible ({answered})", len(names))
    return ok


def _probes(ctx: FleetContext, report: CheckReport, reachable: list[str], sample: int) -> None:
    probes = ctx.config.health.probes
    if not probes:
        report.add(
            "probe", False, "no health probes: a bake would pass any host", "add health.probes to fleet.yml"
        )
        return
    fleet, base = ctx.fleet, ctx.prober()
    for probe in probes:
        label = f"{probe.kind} {probe.target}"
        rendered, failed = _render_all(fleet.hosts.values(), probe)
        if failed:
            _named(
                report,
                "probe",
                failed,
                "define the variable for the host in the inventory",
                f"cannot render {label}",
                len(fleet),
            )
        sample_hosts = spread([h for h in reachable if h in rendered], sample)
        if not sample_hosts:
            report.add("probe", False, f"{label}: no reachable host to ask", "make a host reachable first")
            continue
        one = Prober(fleet, [probe], base.executor, ssh_runner=base.ssh_runner)
        results = one.round(sample_hosts)
        down = {h: r.error or "failed" for h, r in results.items() if not r.ok}
        for host, error in down.items():
            report.add(
                "probe",
                False,
                error,
                "is the controller running and listening? check the probe in fleet.yml",
                host,
            )
        if not down:
            report.add(
                "probe", True, f"{label}: renders for every host; answered on {', '.join(sample_hosts)}"
            )


def spread(hosts: list[str], count: int) -> list[str]:
    """Up to `count` hosts spread over the list (first, ..., last), in list order."""
    if len(hosts) <= count:
        return hosts
    if count <= 1:
        return hosts[:count]
    return [hosts[round(i * (len(hosts) - 1) / (count - 1))] for i in range(count)]


def _render_all(hosts: Any, probe: Probe) -> tuple[set[str], dict[str, str]]:
    if probe.kind == "playbook":
        return {h.name for h in hosts}, {}
    ok, failed = set(), {}
    for host in hosts:
        try:
            host.render(probe.target)
            ok.add(host.name)
        except InventoryError as exc:
            failed[host.name] = exc.message
    return ok, failed


# -- the artifact --------------------------------------------------------------------------------------
def _artifact(ctx: FleetContext, report: CheckReport, version: str, reachable: list[str]) -> None:
    name = (reachable or ctx.fleet.names)[0]
    found = artifacts.verify(ctx, version, name)
    report.add("artifact", found.ok, found.detail, found.fix, None if found.ok else name)
