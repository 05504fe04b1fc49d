"""The one-command rollback: pick what to revert, preempt a rollout in flight, run a revert plan wide.

- no arguments: the newest rollout that changed hosts; each host it changed goes back to its own
  from-version (re-running after it finished changes nothing);
- a run id: that run;
- `to=VERSION`: every selected host not at VERSION goes to VERSION, whatever put it there. The nodes are
  asked first (facts.yml) unless refresh=False, because drift outside fleetctl is invisible to the ledger.

Rollback is allowed during freezes (and audited), skips hosts already at their target, uses the
`rollback:` forks and batch, has no bakes, and checks health once at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from fleetctl import census
from fleetctl.context import FleetContext
from fleetctl.engine import Engine, open_run
from fleetctl.errors import LockedError, UsageError
from fleetctl.plan import Plan, revert_plan
from fleetctl.rollout import valid_version
from fleetctl.store.runs import RunRecord

TOUCHED = ("updating", "verifying", "done", "failed", "rolling_back", "rolled_back")
PREEMPT_WAIT = 120.0


@dataclass
class Rollback:
    plan: Plan
    reverts: str | None  # the run being reverted, if any
    unknown: list[str]  # hosts changed by that run whose from-version nobody knows

    @property
    def moves(self) -> dict[tuple[str | None, str], int]:
        """(from, to) -> number of hosts, for the preview."""
        return dict(Counter((self.plan.from_versions.get(h), t) for h, t in self.plan.targets.items()))


def newest_changing_rollout(ctx: FleetContext) -> RunRecord:
    for run in ctx.store.runs.list(limit=200, kind="rollout"):
        if any(h.state in TOUCHED for h in ctx.store.runs.hosts(run.id)):
            return run
    raise UsageError("no rollout in the journal changed any host", "name a run, or use --to VERSION")


def prepare(
    ctx: FleetContext,
    run_ref: str | None = None,
    *,
    to: str | None = None,
    limit: str | None = None,
    refresh: bool = True,
    forks: int | None = None,
) -> Rollback:
    """What the rollback will do (touches no node, except asking versions for --to)."""
    if to is not None and run_ref is not None:
        raise UsageError("give either a RUN or --to VERSION, not both", "see `fleetctl rollback --help`")
    selected = set(ctx.fleet.select(limit)) if limit else None
    reverts: str | None = None
    unknown: list[str] = []
    if to is not None:
        valid_version(to)
        hosts = ctx.fleet.select(limit)
        if refresh:
            # Hosts the ledger says are at VERSION would be skipped on its word alone: ask them.
            ledger_says = ctx.store.ledger.versions(ctx.component)
            suspects = [h for h in hosts if ledger_says.get(h) == to]
            if suspects:
                census.refresh(ctx, hosts=suspects)
        targets = dict.fromkeys(hosts, to)
    else:
        from fleetctl.control import find_run

        run = find_run(ctx, run_ref) if run_ref else newest_changing_rollout(ctx)
        if run.kind != "rollout":
            raise UsageError(
                f"run {run.id} is a {run.kind}; only a rollout can be reverted",
                "use --to VERSION to restore a known-good version",
            )
        reverts = run.id
        changed = [h for h in ctx.store.runs.hosts(run.id) if h.state in TOUCHED]
        targets = {h.host: h.from_version for h in changed if h.from_version and h.host in ctx.fleet.hosts}
        unknown = sorted(h.host for h in changed if not h.from_version)
    if selected is not None:
        targets = {h: v for h, v in targets.items() if h in selected}
    versions = ctx.store.ledger.versions(ctx.component)
    plan = revert_plan(
        ctx.fleet,
        ctx.config.rollback,
        versions,
        targets,
        component=ctx.component,
        version=to,
        limit=limit,
        forks=forks,
    )
    return Rollback(plan, reverts, unknown)


def take_lock(ctx: FleetContext, wait: float = PREEMPT_WAIT) -> str:
    """The fleet lock, preempting a rollout in flight: it cancels its batch and stops without applying
    on_failure (this rollback does the reverting). Another rollback is not preempted."""
    store = ctx.store
    try:
        return store.locks.acquire(ctx.lock_name, run_id=None, owner=ctx.who)[0]
    except LockedError:
        holder = store.locks.holder(ctx.lock_name)
        run = store.runs.get(holder.run_id) if holder and holder.run_id else None
        if run is None or run.kind != "rollout":
            raise
    store.runs.request(run.id, "preempt")
    store.audit.record(
        "rollback.preempt",
        run.id,
        "a rollback preempts the rollout in flight",
        ctx.who,
        holder.to_json() if holder else None,
    )
    ctx.emit("message", run.id, text=f"preempting rollout {run.id}: cancelling its batch")
    deadline = time.monotonic() + wait
    while True:
        try:
            return store.locks.acquire(ctx.lock_name, run_id=None, owner=ctx.who)[0]
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def start(
    ctx: FleetContext,
    rollback: Rollback | Callable[[], Rollback],
    *,
    reason: str | None = None,
    engine_ready: Callable[[Engine], None] | None = None,
) -> RunRecord | None:
    """Preempt, lock, (re)compute the plan under the lock, and run it. None: nothing to do."""
    from fleetctl.policy import audit_if_frozen

    store = ctx.store
    token = take_lock(ctx)
    try:
        rb = rollback() if callable(rollback) else rollback
        plan = rb.plan
        if not plan.hosts:
            return None
        run = open_run(ctx, plan, token, reason=reason, options={"forks": plan.forks}, reverts=rb.reverts)
        supersede_rollouts(ctx, run.id)
        store.audit.record(
            "rollback.start",
            run.id,
            reason,
            ctx.who,
            {"reverts": rb.reverts, "to": plan.version, "hosts": len(plan.hosts)},
        )
        audit_if_frozen(ctx, "rollback", run.id, reason, hosts=plan.hosts)
        engine = Engine(ctx)
        if engine_ready:
            engine_ready(engine)
        return engine.execute(run.id, token)
    finally:
        store.locks.release(ctx.lock_name, token)


def supersede_rollouts(ctx: FleetContext, rollback_id: str) -> None:
    """A rollout left paused or interrupted must not be resumed after a rollback: it ends `aborted`."""
    from fleetctl.control import resumable

    for run in ctx.store.runs.list(limit=50, kind="rollout", statuses=("paused", "interrupted", "running")):
        if resumable(ctx, run):
            ctx.store.runs.update(
                run.id, status="aborted", status_reason=f"superseded by rollback {rollback_id}"
            )
            ctx.store.audit.record("run.superseded", run.id, f"rollback {rollback_id}", ctx.who)


def retry_failed(ctx: FleetContext, engine_ready: Callable[[Engine], None] | None = None) -> RunRecord:
    """Run the newest rollback again for just its failed hosts."""
    runs = ctx.store.runs.list(limit=50, kind="rollback")
    run = next((r for r in runs if any(h.state == "failed" for h in ctx.store.runs.hosts(r.id))), None)
    if run is None:
        raise UsageError("no rollback has failed hosts", "see `fleetctl runs`")
    token = take_lock(ctx)
    try:
        failed = [h.host for h in ctx.store.runs.hosts(run.id) if h.state == "failed"]
        ctx.store.runs.set_hosts(run.id, failed, "pending", error=None)
        ctx.store.runs.update(run.id, status="running", status_reason=None, finished_at=None)
        ctx.store.audit.record("rollback.retry", run.id, None, ctx.who, {"hosts": failed})
        ctx.emit("run.started", run.id, kind="rollback", version=run.target, hosts=len(failed), resumed=True)
        engine = Engine(ctx)
        if engine_ready:
            engine_ready(engine)
        return engine.execute(run.id, token)
    finally:
        ctx.store.locks.release(ctx.lock_name, token)
