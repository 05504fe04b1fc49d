"""Run control from any terminal: list runs, status from the journal, pause, resume, abort."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleetctl.context import FleetContext
from fleetctl.engine import Checkpoint, Engine
from fleetctl.errors import LockedError, UsageError
from fleetctl.plan import Plan
from fleetctl.store.controls import QuarantineEntry
from fleetctl.store.runs import ACTIVE, RunHost, RunRecord

RESUMABLE = ("paused", "interrupted", "running", "halted", "aborted")


ENDED = ("done", "failed", "rolled_back", "skipped")


def remaining_seconds(plan: Plan, hosts: list[RunHost], elapsed: float) -> float:
    """The one ETA model: the plan's estimate (Plan.batch_seconds) of the batches not yet finished,
    scaled by the pace so far (time taken over the estimate of the batches finished). Before any batch
    finished: the plan's estimate less the time spent, as `plan` showed it."""
    states = {h.host: h.state for h in hosts}
    done = left = 0.0
    for stage in plan.stages:
        for batch in stage.batches:
            seconds = plan.batch_seconds(stage, batch)
            if all(states.get(h) in ENDED for h in batch):
                done += seconds
            else:
                left += seconds
    if done <= 0:
        return max(0.0, left - elapsed)
    pace = min(4.0, max(0.25, elapsed / done))
    return left * pace


def failed_hosts(hosts: list[RunHost]) -> list[dict[str, Any]]:
    """Every host that failed in a run, with its error: those still failed and those a rollback later
    brought back (state rolled_back, their error kept)."""
    return [
        {"host": h.host, "error": h.error, "state": h.state}
        for h in hosts
        if h.state == "failed" or (h.state == "rolled_back" and h.error)
    ]


def quarantined_by(ctx: FleetContext, run: RunRecord) -> QuarantineEntry | None:
    """The quarantine entry this run made (its version, while not cleared), if any."""
    if run.kind != "rollout" or not run.target:
        return None
    entry = ctx.store.quarantine.get(run.component, run.target)
    return entry if entry and entry.run_id == run.id else None


@dataclass
class RunStatus:
    run: RunRecord
    hosts: list[RunHost]
    holder_alive: bool
    now: datetime
    quarantined: QuarantineEntry | None = None
    guard: dict[str, Any] | None = None  # the run's guard after it succeeded (fleetctl.guard.GuardStatus)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in self.hosts:
            out[h.state] = out.get(h.state, 0) + 1
        return out

    @property
    def finished(self) -> int:
        return sum(1 for h in self.hosts if h.state in ("done", "failed", "rolled_back", "skipped"))

    def eta_seconds(self) -> float | None:
        """Remaining time of a running run: see `remaining_seconds` (None when it is not running)."""
        if not self.hosts or self.run.status not in ("running",) or not self.run.plan:
            return None
        started = self.run.started_at or self.run.created_at
        return remaining_seconds(
            Plan.from_json(self.run.plan), self.hosts, (self.now - started).total_seconds()
        )

    def to_json(self) -> dict[str, Any]:
        run = self.run.to_json()
        status = run["status"]
        if status == "running" and not self.holder_alive:
            status = "interrupted"
        eta = self.eta_seconds() if status == "running" else None  # an interrupted run has no ETA
        run.update(status=status, counts=self.counts, total=len(self.hosts), eta_seconds=eta)
        return {
            "run": run,
            "failed": failed_hosts(self.hosts),
            "quarantined": self.quarantined.to_json() if self.quarantined else None,
            "guard": self.guard,
            "hosts": [h.to_json() for h in self.hosts],
        }


def find_run(ctx: FleetContext, ref: str | None, statuses: tuple[str, ...] | None = None) -> RunRecord:
    store = ctx.store
    if ref:
        run = store.runs.find(ref)
        if run is None:
            raise UsageError(f"no run {ref!r} in the journal", "list runs with `fleetctl runs`")
        return run
    runs = store.runs.list(limit=1, statuses=statuses)
    if not runs:
        what = "run" if statuses is None else f"run in state {'/'.join(statuses)}"
        raise UsageError(f"no {what} in the journal", "list runs with `fleetctl runs`")
    return runs[0]


def holder_alive(ctx: FleetContext, run: RunRecord) -> bool:
    lock = ctx.store.locks.holder(ctx.lock_name)
    return bool(lock and lock.run_id == run.id and not ctx.store.locks.is_dead(lock))


def resumable(ctx: FleetContext, run: RunRecord) -> bool:
    """Paused or interrupted; running with a dead holder (kill -9); or halted/aborted mid-rollback."""
    if run.status in ("paused", "interrupted"):
        return True
    if run.status == "running":
        return not holder_alive(ctx, run)
    if run.status in ("halted", "aborted"):
        return any(h.state == "rolling_back" for h in ctx.store.runs.hosts(run.id)) and not holder_alive(
            ctx, run
        )
    return False


def status(ctx: FleetContext, ref: str | None = None) -> RunStatus:
    run = find_run(ctx, ref)
    hosts = ctx.store.runs.hosts(run.id)
    guarded = ctx.store.guards.get(run.id)
    guard_doc = None
    if guarded is not None:
        from fleetctl.guard import GuardStatus

        doc = GuardStatus(guarded, ctx.store.guards.hosts(run.id)).to_json()
        guard_doc = {**doc["guard"], "guarded": doc["guarded"], "failing": doc["failing"]}
    return RunStatus(run, hosts, holder_alive(ctx, run), ctx.now(), quarantined_by(ctx, run), guard_doc)


def pause(ctx: FleetContext, ref: str | None = None) -> RunRecord:
    run = find_run(ctx, ref, statuses=("running",))
    if run.status != "running":
        raise UsageError(
            f"run {run.id} is {run.status}; only a running run can be paused", "see `fleetctl runs`"
        )
    ctx.store.runs.request(run.id, "pause")
    ctx.store.audit.record("run.pause", run.id, None, ctx.who)
    return run


def abort(ctx: FleetContext, ref: str | None = None, wait: float = 0.0) -> RunRecord:
    """Abort a run. A live run cancels its batch in flight and applies on_failure itself; a run with no
    live process (paused, interrupted) has on_failure applied here."""
    run = find_run(ctx, ref, statuses=ACTIVE)
    if run.status not in ACTIVE + ("halted",):
        raise UsageError(f"run {run.id} already ended ({run.status})", "see `fleetctl runs`")
    ctx.store.audit.record("run.abort", run.id, None, ctx.who)
    if holder_alive(ctx, run):
        ctx.store.runs.request(run.id, "abort")
        return run
    token, _ = ctx.store.locks.acquire(ctx.lock_name, run_id=run.id, owner=ctx.who)
    try:
        engine = Engine(ctx)
        plan = Plan.from_json(run.plan or {})
        ctx.store.runs.update(run.id, status="aborted", status_reason=f"aborted by {ctx.who}")
        if plan.kind == "rollout" and plan.on_failure == "rollback":
            executor = ctx.executor().track(ctx.store.locks.groups, run.id)
            engine.revert(run, plan, f"aborted by {ctx.who}", executor, aborted=True)
        return ctx.store.runs.get(run.id) or run
    finally:
        ctx.store.locks.release(ctx.lock_name, token)


def to_resume(ctx: FleetContext, ref: str | None = None) -> RunRecord:
    """The run `resume` would continue: `ref`, or the newest paused or interrupted one."""
    holder = ctx.store.locks.holder(ctx.lock_name)
    if holder and not ctx.store.locks.is_dead(holder):  # a live holder (another machine: a live lease)
        raise LockedError(
            f"another run holds the fleet lock: {holder.describe()}",
            "wait for it, watch it with `fleetctl status`, or stop it with `fleetctl abort`",
        )
    if ref:
        run = find_run(ctx, ref)
    else:
        candidates = unfinished(ctx)
        if not candidates:
            raise UsageError("no paused or interrupted run to resume", "list runs with `fleetctl runs`")
        run = candidates[0]
    if not resumable(ctx, run):
        raise UsageError(f"run {run.id} is {run.status}; it cannot be resumed", "see `fleetctl runs`")
    return run


def unfinished(ctx: FleetContext) -> list[RunRecord]:
    """Runs that stopped before their end and can be resumed (paused, interrupted, a dead holder's)."""
    return [r for r in ctx.store.runs.list(limit=20, statuses=RESUMABLE) if resumable(ctx, r)]


def where(run: RunRecord) -> str:
    """Where a run stopped, in words: `stopped at stage rest batch 2 (paused: paused by request)`."""
    at = f"stage {run.stage} batch {run.batch}" if run.stage else "its start"
    why = f" ({run.status}: {run.status_reason})" if run.status_reason else f" ({run.status})"
    return f"stopped at {at}{why}"


def resume(
    ctx: FleetContext,
    ref: str | None = None,
    *,
    checkpoints: list[Checkpoint] | None = None,
    engine_ready: Callable[[Engine], None] | None = None,
) -> RunRecord:
    """Continue a paused or interrupted run (default: the newest one)."""
    run = to_resume(ctx, ref)
    token, dead = ctx.store.locks.acquire(ctx.lock_name, run_id=run.id, owner=ctx.who)
    try:
        if dead:
            ctx.store.audit.record("lock.takeover", run.id, "holder is dead", ctx.who, dead.to_json())
        ctx.store.runs.update(run.id, control=None)
        ctx.emit(
            "run.started",
            run.id,
            kind=run.kind,
            version=run.target,
            resumed=True,
            hosts=len(ctx.store.runs.hosts(run.id)),
        )
        if checkpoints is None:  # an operator's resume honours freezes, not windows or operator stages
            from fleetctl import policy

            checkpoints = [policy.freeze_checkpoint(ctx)]
        engine = Engine(ctx, checkpoints)
        if engine_ready:
            engine_ready(engine)
        return engine.execute(run.id, token)
    finally:
        ctx.store.locks.release(ctx.lock_name, token)
