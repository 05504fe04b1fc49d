"""The guard: a rollout is not over when its last bake ends.

A build can pass every bake and start to fail hours later, under the morning's load (the incident this
project was born from). After a successful rollout, the hosts it updated stay under the fleet's health
probes for `guard.duration`: `fleetctl tick` (or `fleetctl guard watch`) runs one probe round per
`guard.interval`. A host failing `failures_to_fail` consecutive rounds has failed; more failed hosts than
`max_failures` trip the guard. `on_trip: rollback` quarantines the version with the evidence and rolls the
run back fleet-wide through the one-command rollback (preempting whatever runs, allowed during freezes);
`on_trip: alert` freezes the fleet instead. A guard goes active -> tripped -> rolled_back (the trip's
rollback ended) or alerted (the fleet frozen), or ends expired, stopped (by hand) or released (a newer
run moved every host). A round is claimed in the journal first, so `tick` and `guard watch` never run
the same round twice. Every step is journaled and audited, and is an event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from fleetctl.context import FleetContext
from fleetctl.errors import FleetError, LockedError, UsageError
from fleetctl.store.guards import ACTIVE, Guard, GuardHost
from fleetctl.store.runs import FINISHED, RunRecord

if TYPE_CHECKING:
    from fleetctl.engine import Engine

WATCH_MIN_SLEEP = 0.5
WATCH_MAX_SLEEP = 60.0


@dataclass
class RoundOutcome:
    """One guard round: what was probed, who is failing, and whether it tripped."""

    guard: Guard
    probed: int = 0
    failing: dict[str, str] = field(default_factory=dict)  # host -> error, in a failing streak
    failed: dict[str, str] = field(default_factory=dict)  # host -> error, past failures_to_fail
    tripped: bool = False
    action: str | None = None  # rollback | alert, when tripped
    rollback_run: str | None = None
    error: str | None = None  # the trip's rollback could not run (it is retried by the next tick)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.guard.run_id,
            "version": self.guard.version,
            "probed": self.probed,
            "failing": [{"host": h, "error": e} for h, e in sorted(self.failing.items())],
            "failed": [{"host": h, "error": e} for h, e in sorted(self.failed.items())],
            "tripped": self.tripped,
            "action": self.action,
            "rollback_run": self.rollback_run,
            "error": self.error,
        }


@dataclass
class GuardStatus:
    guard: Guard
    hosts: list[GuardHost]

    def to_json(self) -> dict[str, Any]:
        guarded = [h for h in self.hosts if h.state != "released"]
        return {
            "guard": self.guard.to_json(),
            "guarded": len(guarded),
            "failing": [h.to_json() for h in guarded if h.state in ("failing", "failed")],
            "hosts": [h.to_json() for h in self.hosts],
        }


# -- starting and ending --------------------------------------------------------------------------------
def begin(ctx: FleetContext, run: RunRecord, hosts: list[str]) -> Guard | None:
    """Put the hosts a successful rollout updated under guard (no-op without a `guard:` section)."""
    cfg = ctx.config.guard
    if cfg is None or not hosts or run.target is None:
        return None
    ctx.store.guards.begin(
        run.id,
        component=run.component,
        version=run.target,
        hosts=hosts,
        duration=cfg.duration,
        interval=cfg.interval,
        failures_to_fail=cfg.failures_to_fail,
        max_failures=cfg.max_failures.of(len(hosts)),
        on_trip=cfg.on_trip,
    )
    guard = ctx.store.guards.get(run.id)
    if guard is not None:
        ctx.emit("guard.started", run.id, version=guard.version, hosts=len(hosts), until=guard.until)
    return guard


def find(ctx: FleetContext, ref: str | None = None, *, active_only: bool = False) -> Guard:
    """A guard by (a prefix of) its run id; default the newest active one, else the newest."""
    guards = ctx.store.guards.list(limit=200)
    if ref:
        match = [g for g in guards if g.run_id == ref] or [g for g in guards if g.run_id.startswith(ref)]
        if len(match) != 1:
            what = "no guard" if not match else "more than one guard"
            raise UsageError(f"{what} for run {ref!r}", "list guards with `fleetctl guard list`")
        return match[0]
    active = [g for g in guards if g.status == ACTIVE]
    if active:
        return active[0]
    if guards and not active_only:
        return guards[0]
    raise UsageError(
        "no active guard" if active_only else "no guard in the journal",
        "a guard starts after a successful rollout when fleet.yml has a `guard:` section",
    )


def status(ctx: FleetContext, ref: str | None = None) -> GuardStatus:
    guard = find(ctx, ref)
    return GuardStatus(guard, ctx.store.guards.hosts(guard.run_id))


def stop(ctx: FleetContext, ref: str | None, reason: str) -> Guard:
    """End a guard by hand (audited). Its hosts are no longer probed."""
    if not reason or not reason.strip():
        raise UsageError("--reason is required to stop a guard", 'e.g. --reason "verified by hand"')
    guard = find(ctx, ref, active_only=True)
    if guard.status != ACTIVE:
        raise UsageError(f"the guard of run {guard.run_id} already ended ({guard.status})", None)
    ctx.store.guards.end(
        guard.run_id, "stopped", reason=reason, by=ctx.who, audit=("guard.stop", {"version": guard.version})
    )
    ctx.emit("guard.stopped", guard.run_id, version=guard.version, reason=reason, by=ctx.who)
    return ctx.store.guards.get(guard.run_id) or guard


# -- rounds --------------------------------------------------------------------------------------------
def run_due(ctx: FleetContext, engine_ready: Callable[[Engine], None] | None = None) -> list[RoundOutcome]:
    """What `tick` runs every time: expire finished guards, run every due round, and carry on a trip's
    rollback that a crash or a busy lock interrupted."""
    now = ctx.now()
    outcomes: list[RoundOutcome] = []
    for guard in ctx.store.guards.list(statuses=(ACTIVE,)):
        if now >= guard.until:
            if ctx.store.guards.end(
                guard.run_id,
                "expired",
                reason="guard period over",
                by=None,
                audit=("guard.expired", {"version": guard.version, "rounds": guard.rounds}),
            ):
                ctx.emit("guard.expired", guard.run_id, version=guard.version, rounds=guard.rounds)
            continue
        if guard.due(now) and ctx.store.guards.claim_round(guard):
            outcomes.append(round_once(ctx, guard, engine_ready))
    for guard in ctx.store.guards.list(statuses=("tripped",), limit=20):
        if not any(o.guard.run_id == guard.run_id for o in outcomes):
            _act(ctx, guard, engine_ready)  # a crash or a busy lock left the trip's action undone
    _adopt(ctx, now)
    return outcomes


def _adopt(ctx: FleetContext, now: datetime) -> None:
    """A rollout that succeeded but whose guard was never written (a crash right after its end) is
    guarded now, if it is the newest run and its guard period is not over."""
    cfg = ctx.config.guard
    newest = ctx.store.runs.list(limit=1)
    if cfg is None or not newest:
        return
    run = newest[0]
    ended = run.finished_at or run.created_at
    if (
        run.kind == "rollout"
        and run.status == "succeeded"
        and (now - ended).total_seconds() < cfg.duration
        and ctx.store.guards.get(run.id) is None
    ):
        begin(ctx, run, [h.host for h in ctx.store.runs.hosts(run.id) if h.state == "done"])


def round_once(
    ctx: FleetContext, guard: Guard, engine_ready: Callable[[Engine], None] | None = None
) -> RoundOutcome:
    """Probe the guarded hosts once; record streaks; trip when the failed hosts exceed the budget."""
    outcome = RoundOutcome(guard)
    hosts = {h.host: h for h in ctx.store.guards.hosts(guard.run_id) if h.state != "released"}
    names = [h for h in hosts if h in ctx.fleet.hosts]
    if not names:
        return outcome
    results = ctx.prober().round(names)
    now = ctx.now()
    updates: dict[str, dict[str, Any]] = {}
    for name in names:
        before, res = hosts[name], results[name]
        if res.ok:
            if before.state != "ok" or before.streak:
                updates[name] = {"state": "ok", "streak": 0}
            continue
        streak = before.streak + 1
        error = (res.error or "probe failed")[:500]
        state = "failed" if streak >= guard.failures_to_fail else "failing"
        updates[name] = {
            "state": state,
            "streak": streak,
            "last_error": error,
            "last_failure_at": now,
            "first_failure_at": before.first_failure_at or now,
        }
        outcome.failing[name] = error
        if state == "failed":
            outcome.failed[name] = error
            if before.state != "failed":
                ctx.emit("guard.host_failed", guard.run_id, host=name, error=error, streak=streak)
        else:
            ctx.emit("guard.host_failing", guard.run_id, host=name, error=error, streak=streak)
    ctx.store.guards.record_round(guard.run_id, updates)
    outcome.probed = len(names)
    ctx.emit(
        "guard.round",
        guard.run_id,
        probed=len(names),
        failing=len(outcome.failing),
        failed=len(outcome.failed),
        budget=guard.max_failures,
    )
    if len(outcome.failed) > guard.max_failures:
        _trip(ctx, guard, outcome, engine_ready)
    return outcome


# -- tripping ------------------------------------------------------------------------------------------
def _evidence(ctx: FleetContext, guard: Guard) -> dict[str, Any]:
    failed = [h for h in ctx.store.guards.hosts(guard.run_id) if h.state == "failed"]
    firsts = [h.first_failure_at for h in failed if h.first_failure_at]
    lasts = [h.last_failure_at for h in failed if h.last_failure_at]
    return {
        "version": guard.version,
        "budget": guard.max_failures,
        "hosts": [h.to_json() for h in failed],
        "first_failure_at": min(firsts).isoformat() if firsts else None,
        "last_failure_at": max(lasts).isoformat() if lasts else None,
    }


def _trip(
    ctx: FleetContext, guard: Guard, outcome: RoundOutcome, engine_ready: Callable[[Engine], None] | None
) -> None:
    evidence = _evidence(ctx, guard)
    first = next(iter(sorted(outcome.failed.items())))
    reason = (
        f"guard: {len(outcome.failed)} host(s) failed after rollout {guard.run_id} "
        f"(budget {guard.max_failures}), e.g. {first[0]}: {first[1]}"
    )[:500]
    if not ctx.store.guards.end(
        guard.run_id, "tripped", reason=reason, by=ctx.who, audit=("guard.trip", evidence)
    ):
        return  # another process tripped it first
    guard = ctx.store.guards.get(guard.run_id) or guard
    outcome.tripped, outcome.action = True, guard.on_trip
    ctx.emit(
        "guard.tripped",
        guard.run_id,
        version=guard.version,
        action=guard.on_trip,
        reason=reason,
        failed=[{"host": h, "error": e} for h, e in sorted(outcome.failed.items())][:20],
        first_failure_at=evidence["first_failure_at"],
    )
    _act(ctx, guard, engine_ready, outcome)


def _act(
    ctx: FleetContext,
    guard: Guard,
    engine_ready: Callable[[Engine], None] | None,
    outcome: RoundOutcome | None = None,
) -> None:
    """What a trip does; every step may be repeated, so a crash between them is mended by the next tick:
    `alert` freezes the fleet (once); `rollback` quarantines the version (once) and rolls the run back."""
    reason = guard.end_reason or f"guard tripped on run {guard.run_id}"
    if guard.on_trip == "alert":
        marker = f"guard tripped on run {guard.run_id}"
        if not any(f.reason.startswith(marker) for f in ctx.store.freezes.active(ctx.now())):
            ctx.store.freezes.add(scope="all", reason=f"{marker}: {reason}"[:500], by=ctx.who, until=None)
            ctx.emit(
                "message", guard.run_id, text="the fleet is frozen until `fleetctl freeze off --reason ...`"
            )
        ctx.store.guards.settle(guard.run_id, "alerted")
        return
    ctx.store.quarantine.add(guard.component, guard.version, reason=reason, run_id=guard.run_id, by=ctx.who)
    _finish_trip(ctx, guard, engine_ready, outcome)


def _finish_trip(
    ctx: FleetContext,
    guard: Guard,
    engine_ready: Callable[[Engine], None] | None,
    outcome: RoundOutcome | None = None,
) -> None:
    """Roll the guarded run back (or resume that rollback after a crash). A busy lock is retried later."""
    from fleetctl import control
    from fleetctl import rollback as rollbacks

    try:
        if guard.rollback_run_id:
            run = ctx.store.runs.get(guard.rollback_run_id)
            if run is not None and control.resumable(ctx, run):
                run = control.resume(ctx, run.id, checkpoints=[], engine_ready=engine_ready)
                if outcome:
                    outcome.rollback_run = run.id
            if run is None or run.status in FINISHED:
                ctx.store.guards.settle(guard.run_id, "rolled_back")
            return
        guarded = [h.host for h in ctx.store.guards.hosts(guard.run_id) if h.state != "released"]
        run = rollbacks.start(
            ctx,
            _only(ctx, guard.run_id, guarded),
            reason=f"guard tripped on run {guard.run_id}",
            engine_ready=engine_ready,
            on_open=lambda opened: ctx.store.guards.set_rollback(guard.run_id, opened.id),
        )
        if outcome:
            outcome.rollback_run = run.id if run else None
        if run is None or run.status in FINISHED:  # else interrupted: the next tick resumes it
            ctx.store.guards.settle(guard.run_id, "rolled_back")
    except (LockedError, FleetError) as exc:
        if outcome:
            outcome.error = exc.message
        ctx.emit("message", guard.run_id, text=f"guard rollback not started yet: {exc.message}")


def _only(ctx: FleetContext, run_id: str, hosts: list[str]) -> Callable[[], Any]:
    """The revert plan of `run_id`, limited to the hosts still under its guard."""
    from fleetctl import rollback as rollbacks

    every = {h.host for h in ctx.store.runs.hosts(run_id)}
    limit = None if every <= set(hosts) else ",".join(sorted(hosts))
    # Each host goes back to the version it ran before this run, which may be newer (the run was a
    # downgrade): that is a return, not a rollout in disguise, so forward moves are allowed (audited).
    reason = f"guard tripped on run {run_id}: back to each host's version before it"
    return lambda: rollbacks.prepare(ctx, run_id, limit=limit, allow_forward=True, reason=reason)


# -- the service loop ----------------------------------------------------------------------------------
def watch(
    ctx: FleetContext,
    stop_event: threading.Event,
    on_round: Callable[[RoundOutcome], None] | None = None,
    engine_ready: Callable[[Engine], None] | None = None,
) -> None:
    """`fleetctl guard watch`: run due rounds until `stop_event` is set, sleeping until the next is due."""
    while not stop_event.is_set():
        for outcome in run_due(ctx, engine_ready):
            if on_round:
                on_round(outcome)
        stop_event.wait(_next_due_in(ctx, ctx.now()))


def _next_due_in(ctx: FleetContext, now: datetime) -> float:
    waits = [WATCH_MAX_SLEEP]
    for guard in ctx.store.guards.list(statuses=(ACTIVE,)):
        last = guard.last_round_at or now
        waits.append(guard.interval - (now - last).total_seconds())
        waits.append((guard.until - now).total_seconds())
    return max(WATCH_MIN_SLEEP, min(waits))
