"""Change freezes: manual ones (store, scoped by an Ansible host pattern) and freeze windows (fleet.yml).

A freeze refuses new rollouts that would touch a host it covers, pauses a running rollout at its next
batch boundary (`frozen: <name>: <reason>`), and never stops a rollback: a rollback that runs during a
freeze is only recorded in the audit log. `--override-freeze --reason` lets a rollout through, audited.
Freeze windows cover every host; a manual freeze covers the hosts its scope pattern matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fleetctl import windows
from fleetctl.context import FleetContext
from fleetctl.engine import Checkpoint
from fleetctl.errors import FrozenError, InventoryError, UsageError
from fleetctl.plan import Plan, StagePlan
from fleetctl.store.controls import ALL_FLEETS, Freeze
from fleetctl.store.runs import RunRecord
from fleetctl.units import parse_duration

_MAX_CHANGES = 200  # how many window/expiry changes `next_change` looks through for a flip


def fmt_instant(at: datetime | None) -> str:
    """An instant for one-line messages: 2026-03-29T01:30:00Z."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at else "-"


@dataclass(frozen=True)
class FreezeCause:
    """One freeze in force: a manual freeze (`name` is `manual #ID`) or a freeze window (its name)."""

    kind: str  # manual | window
    name: str
    reason: str
    until: datetime | None
    scope: str = "all"
    all_fleets: bool = False  # a manual freeze set with --all-fleets: every fleet in the journal

    def describe(self) -> str:
        """`manual #3 on ring1 until ...: reason` or `window year-end until ...`."""
        until = f" until {fmt_instant(self.until)}" if self.until else ""
        if self.kind == "window":
            return f"window {self.name}{until}"
        scope = "" if self.scope == "all" else f" on {self.scope}"
        fleets = " (all fleets)" if self.all_fleets else ""
        return f"{self.name}{fleets}{scope}{until}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "reason": self.reason,
            "until": self.until.isoformat() if self.until else None,
            "scope": self.scope,
            "all_fleets": self.all_fleets,
        }


@dataclass(frozen=True)
class FreezeStatus:
    """The freezes in force at `at`; `next_change` is the next instant `frozen` flips (None: never)."""

    at: datetime
    by: list[FreezeCause]
    next_change: datetime | None
    fleet: str = ""  # the fleet it is the status of (fleet.yml `name:`)

    @property
    def frozen(self) -> bool:
        return bool(self.by)

    def to_json(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "frozen": self.frozen,
            "by": [c.to_json() for c in self.by],
            "next_change": self.next_change.isoformat() if self.next_change else None,
        }


@dataclass(frozen=True)
class FreezeEntry:
    """A manual freeze as `freeze list` shows it, with its state at the time of asking."""

    freeze: Freeze
    state: str  # active | expired | lifted

    def to_json(self) -> dict[str, Any]:
        return {**self.freeze.to_json(), "state": self.state}


# -- what is in force ---------------------------------------------------------------------------------
def _manual(freeze: Freeze) -> FreezeCause:
    return FreezeCause(
        "manual",
        f"manual #{freeze.id}",
        freeze.reason,
        freeze.until,
        freeze.scope,
        freeze.fleet == ALL_FLEETS,
    )


def _causes(ctx: FleetContext, at: datetime) -> list[FreezeCause]:
    out = [_manual(f) for f in ctx.store.freezes.active(at)]
    for occ in windows.active(ctx.config.freeze.windows, at):
        out.append(FreezeCause("window", occ.name, "freeze window in fleet.yml", occ.end))
    return out


def _covers(ctx: FleetContext, cause: FreezeCause, hosts: Sequence[str]) -> bool:
    if not hosts:
        return False
    if cause.scope in ("all", "*"):
        return True
    try:
        selected = set(ctx.fleet.select(cause.scope, required=False))
    except InventoryError:
        return True  # a scope the inventory no longer understands: fail safe, it covers everything
    return any(h in selected for h in hosts)


def covering(ctx: FleetContext, hosts: Sequence[str], at: datetime | None = None) -> list[FreezeCause]:
    """The freezes in force at `at` (default now) that cover at least one of `hosts`."""
    return [c for c in _causes(ctx, at or ctx.now()) if _covers(ctx, c, hosts)]


def _frozen_at(ctx: FleetContext, at: datetime) -> bool:
    return bool(ctx.store.freezes.active(at)) or bool(windows.active(ctx.config.freeze.windows, at))


def status(ctx: FleetContext, at: datetime | None = None) -> FreezeStatus:
    """Fleet-wide freeze status at `at` (default now): every freeze in force, whatever its scope."""
    at = at or ctx.now()
    by = _causes(ctx, at)
    frozen = bool(by)
    specs = ctx.config.freeze.windows
    untils = [f.until for f in ctx.store.freezes.active(at) if f.until]
    t, flip = at, None
    for _ in range(_MAX_CHANGES):
        candidates = [u for u in untils if u > t]
        window_change = windows.next_change(specs, t)
        if window_change:
            candidates.append(window_change)
        if not candidates:
            break
        t = min(candidates)
        if _frozen_at(ctx, t) != frozen:
            flip = t
            break
    return FreezeStatus(at, by, flip, ctx.store.fleet)


def entries(ctx: FleetContext, limit: int = 100) -> list[FreezeEntry]:
    """Manual freezes, newest first, each with its state now."""
    now = ctx.now()
    out = []
    for f in ctx.store.freezes.all(limit):
        state = "lifted" if f.lifted_at else "active" if f.active_at(now) else "expired"
        out.append(FreezeEntry(f, state))
    return out


# -- toggles ------------------------------------------------------------------------------------------
def _until(ctx: FleetContext, until: datetime | str | None, for_: float | str | None) -> datetime | None:
    now = ctx.now()
    if until is not None and for_ is not None:
        raise UsageError("give --until or --for, not both", "e.g. --for 2h or --until 2026-12-01T09:00:00Z")
    if isinstance(until, str):
        try:
            until = windows.parse_instant(until)
        except ValueError as exc:
            raise UsageError(f"--until: {exc}", "e.g. --until 2026-12-01T09:00:00Z") from None
    if until is not None:
        if until.tzinfo is None:
            raise UsageError("--until needs a UTC offset", "e.g. --until 2026-12-01T09:00:00Z")
        if until <= now:
            raise UsageError(
                f"--until {fmt_instant(until)} is not in the future (now {fmt_instant(now)})",
                "give a later time, or --for DURATION",
            )
        return until.astimezone(UTC)
    if for_ is None:
        return None
    try:
        seconds = parse_duration(for_)
    except ValueError as exc:
        raise UsageError(f"--for: {exc}", "e.g. --for 2h or --for 1d") from None
    if seconds <= 0:
        raise UsageError("--for must be longer than zero", "e.g. --for 2h")
    return now + timedelta(seconds=seconds)


def freeze_on(
    ctx: FleetContext,
    reason: str,
    until: datetime | str | None = None,
    for_: float | str | None = None,
    scope: str = "all",
    all_fleets: bool = False,
) -> Freeze:
    """Start a manual freeze on the hosts matching `scope` (an Ansible pattern), or on every fleet in the
    journal (all_fleets: scope must be all, a pattern means nothing in another inventory). Audited."""
    if not reason or not reason.strip():
        raise UsageError("--reason must not be empty", "say why, e.g. --reason 'INC-123: IPC backlog'")
    end = _until(ctx, until, for_)
    scope = (scope or "all").strip()
    if all_fleets and scope != "all":
        raise UsageError(
            f"--all-fleets with -l {scope}: a host pattern means nothing in the other fleets' inventories",
            "drop -l to freeze every fleet, or drop --all-fleets to freeze these hosts of this fleet",
        )
    try:
        ctx.fleet.select(scope, required=True)
    except InventoryError as exc:
        raise UsageError(f"-l {scope}: {exc.message}", exc.hint) from None
    return ctx.store.freezes.add(
        scope=scope, reason=reason.strip(), by=ctx.who, until=end, all_fleets=all_fleets
    )


def freeze_off(
    ctx: FleetContext, reason: str | None = None, scope: str | None = None, all_fleets: bool = False
) -> list[Freeze]:
    """Lift every manual freeze of this fleet in force (or those of one scope; all_fleets: those set with
    --all-fleets instead). Audited as freeze.off. Freeze windows from fleet.yml end by themselves."""
    reason = (reason or "").strip() or None
    return ctx.store.freezes.lift(by=ctx.who, reason=reason, scope=scope, all_fleets=all_fleets)


# -- enforcement --------------------------------------------------------------------------------------
def _names(causes: Sequence[FreezeCause]) -> str:
    return ", ".join(c.name for c in causes)


def refuse_if_frozen(ctx: FleetContext, plan: Plan, options: dict) -> None:
    """StartCheck: refuse a rollout when a freeze covers any host it would touch.

    With options["override_freeze"] the rollout goes ahead and a `freeze.override` audit entry records
    options["override_reason"] (required). Rollback plans are never refused.
    """
    if plan.kind != "rollout":
        return
    causes = covering(ctx, plan.hosts)
    if not causes:
        return
    if options.get("override_freeze"):
        reason = str(options.get("override_reason") or "").strip()
        if not reason:
            raise UsageError("--override-freeze needs --reason TEXT", "say why the freeze may be overridden")
        ctx.store.audit.record(
            "freeze.override",
            plan.version,
            reason,
            ctx.who,
            {"freezes": [c.to_json() for c in causes], "hosts": len(plan.hosts)},
        )
        return
    first = causes[0]
    more = f" (and {len(causes) - 1} more: {_names(causes[1:])})" if len(causes) > 1 else ""
    raise FrozenError(
        f"rollout of {plan.version} refused: frozen by {first.describe()}{more}",
        "wait for the freeze to end, lift a manual one with `fleetctl freeze off --reason TEXT`, "
        "or pass --override-freeze --reason TEXT (audited)",
    )


def freeze_checkpoint(ctx: FleetContext) -> Checkpoint:
    """Checkpoint: pause a rollout before a batch that a freeze covers: `frozen: <name>: <reason>`.

    A run started with options["override_freeze"] goes on; each freeze it overrides this way is
    audited once per process as `freeze.override`.
    """
    overridden: set[tuple[str, str]] = set()

    def check(run: RunRecord, stage: StagePlan, batch_index: int) -> str | None:
        if run.kind != "rollout":
            return None
        causes = covering(ctx, stage.batches[batch_index])
        if not causes:
            return None
        if run.options.get("override_freeze"):
            fresh = [c for c in causes if (run.id, c.name) not in overridden]
            if fresh:
                overridden.update((run.id, c.name) for c in fresh)
                ctx.store.audit.record(
                    "freeze.override",
                    run.id,
                    str(run.options.get("override_reason") or run.reason or ""),
                    ctx.who,
                    {"freezes": [c.to_json() for c in fresh], "stage": stage.name, "batch": batch_index + 1},
                )
            return None
        return f"frozen: {causes[0].name}: {causes[0].reason}"

    return check


def audit_if_frozen(
    ctx: FleetContext,
    action: str,
    subject: str | None,
    reason: str | None,
    hosts: Sequence[str] | None = None,
) -> list[FreezeCause]:
    """Record `action` (e.g. `rollback`) in the audit log when it runs during a freeze (covering any of
    `hosts`, or any freeze at all without hosts). Never refuses. Returns the freezes in force."""
    causes = _causes(ctx, ctx.now()) if hosts is None else covering(ctx, hosts)
    if causes:
        ctx.store.audit.record(
            f"{action}.during_freeze", subject, reason, ctx.who, {"freezes": [c.to_json() for c in causes]}
        )
    return causes


def runs_it_pauses(ctx: FleetContext) -> list[RunRecord]:
    """Rollouts running now whose remaining hosts a freeze covers: they pause before their next batch."""
    from fleetctl.control import holder_alive

    out = []
    for run in ctx.store.runs.list(limit=20, statuses=("running",)):
        pending = [h.host for h in ctx.store.runs.hosts(run.id) if h.state == "pending"]
        if run.kind == "rollout" and holder_alive(ctx, run) and pending and covering(ctx, pending):
            if not run.options.get("override_freeze"):
                out.append(run)
    return out


def runs_waiting(ctx: FleetContext) -> list[RunRecord]:
    """Rollouts a freeze paused (`frozen: ...`) that wait for `fleetctl resume`."""
    paused = ctx.store.runs.list(limit=20, statuses=("paused",))
    return [r for r in paused if (r.status_reason or "").startswith("frozen")]
