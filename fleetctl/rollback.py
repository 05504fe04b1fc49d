"""The one-command rollback: pick what to revert, preempt a rollout in flight, run a revert plan wide.

- no arguments: the newest rollout that changed hosts; each host it changed goes back to its own
  from-version (re-running after it finished changes nothing);
- a run id: that run;
- `to=VERSION`: every selected host not at VERSION goes to VERSION, whatever put it there. The nodes are
  asked first (facts.yml) unless refresh=False, because drift outside fleetctl is invisible to the ledger.

Rollback is allowed during freezes (and audited), skips hosts already at their target, uses the
`rollback:` forks and batch, has no bakes, and checks health once at the end.

A rollback only goes back. It never installs a quarantined version (QuarantinedError), and each host's
move is `back` only when the journal shows the host ran the target before and the target is older than
what it runs (PEP 440 order; versions that do not parse are not known to be older). Any other move is
`forward`, a rollout in disguise: refused (FrozenError under a freeze, else UsageError) unless
allow_forward with a reason, which is audited as `rollback.forward`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from packaging.version import InvalidVersion, Version

from fleetctl import census
from fleetctl.context import FleetContext
from fleetctl.engine import Engine, open_run
from fleetctl.errors import FrozenError, LockedError, QuarantinedError, UsageError
from fleetctl.plan import Plan, revert_plan
from fleetctl.rollout import refuse_quarantined, valid_version
from fleetctl.store.runs import RunRecord
from fleetctl.units import is_plain_version

TOUCHED = ("updating", "verifying", "done", "failed", "rolling_back", "rolled_back")
PREEMPT_WAIT = 120.0
BACK, FORWARD = "back", "forward"
EVIDENCE_RUNS = 500  # how many recent runs' host records count as proof of what a host ran


@dataclass(frozen=True)
class Move:
    """One host's step in a rollback, `back` or `forward` (with why it is not back)."""

    host: str
    from_version: str | None
    to_version: str
    direction: str | None  # back | forward (None: a run journaled before directions were recorded)
    why: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "from": self.from_version,
            "to": self.to_version,
            "direction": self.direction,
            "why": self.why,
        }


@dataclass
class Rollback:
    plan: Plan
    reverts: str | None  # the run being reverted, if any
    unknown: list[str]  # hosts changed by that run whose from-version nobody knows
    hosts: list[Move] = field(default_factory=list)  # one per host the plan moves
    allow_forward: bool = False
    reason: str | None = None

    @property
    def moves(self) -> dict[tuple[str | None, str, str | None], int]:
        """(from, to, direction) -> number of hosts, for the preview."""
        return dict(Counter((m.from_version, m.to_version, m.direction) for m in self.hosts))

    @property
    def forward(self) -> list[Move]:
        return [m for m in self.hosts if m.direction != BACK]


def known_older(a: str, b: str) -> bool:
    """True only when both parse as versions (PEP 440) and `a` comes before `b`."""
    try:
        return Version(a) < Version(b)
    except InvalidVersion:
        return False


def ran_before(ctx: FleetContext, hosts: Iterable[str]) -> dict[str, set[str]]:
    """Per host, every version the journal says it ran: both ends of each ledger change, and the
    from-version a run recorded when it touched the host (what the node reported it ran)."""
    seen: dict[str, set[str]] = {h: set() for h in hosts}
    if not seen:
        return seen
    for change in ctx.store.ledger.history(ctx.component):
        if change.host in seen:
            seen[change.host].update(v for v in (change.from_version, change.to_version) if v)
    for run in ctx.store.runs.list(limit=EVIDENCE_RUNS):
        if run.component != ctx.component:
            continue
        for h in ctx.store.runs.hosts(run.id):
            if h.host in seen and h.from_version and h.state in TOUCHED:
                seen[h.host].add(h.from_version)
    return seen


def classify(host: str, current: str | None, target: str, ran: Collection[str]) -> Move:
    """`back` when the host ran `target` before and `target` is known to be older than `current`."""
    if target not in ran:
        return Move(host, current, target, FORWARD, f"it never ran {target}")
    if current is None:
        return Move(host, current, target, FORWARD, "what it runs is unknown")
    if not known_older(target, current):
        return Move(host, current, target, FORWARD, f"{target} is not older than {current}")
    return Move(host, current, target, BACK)


def moves_of(run: RunRecord) -> list[Move]:
    """A rollback run's moves, with the directions decided when it started."""
    plan = Plan.from_json(run.plan or {})
    moves = run.options.get("moves") or {}
    return [
        Move(h, plan.from_versions.get(h), t, moves.get(h, {}).get("direction"), moves.get(h, {}).get("why"))
        for h, t in plan.targets.items()
    ]


def refuse_quarantined_targets(ctx: FleetContext, versions: Iterable[str | None]) -> None:
    """A rollback never installs a quarantined version, not even with allow_forward."""
    for version in sorted({v for v in versions if v}):
        try:
            refuse_quarantined(ctx, version)
        except QuarantinedError as exc:
            raise QuarantinedError(
                f"rollback refused: {exc.message}",
                "a rollback never installs a quarantined version (not even with --allow-forward); "
                f"choose another version, or clear it first: fleetctl quarantine clear {version} --reason TEXT",
            ) from None


def guard(ctx: FleetContext, rb: Rollback) -> None:
    """Refuse a quarantined target, and a forward move unless the rollback allows it."""
    from fleetctl.policy import covering

    refuse_quarantined_targets(ctx, (m.to_version for m in rb.hosts))
    forward = rb.forward
    if not forward or rb.allow_forward:
        return
    first = forward[0]
    what = (
        f"rollback refused: {len(forward)} host(s) would go forward, e.g. {first.host} "
        f"{first.from_version or 'unknown'} -> {first.to_version} ({first.why})"
    )
    hint = (
        "roll back to a version these hosts ran before and older than what they run (see `fleetctl "
        "history`), narrow it with -l, or pass --allow-forward --reason TEXT (audited)"
    )
    causes = covering(ctx, [m.host for m in forward])
    if causes:
        raise FrozenError(f"{what}: a rollout in disguise, and frozen by {causes[0].describe()}", hint)
    raise UsageError(f"{what}: that is a rollout, not a rollback", hint)


def _newest_or_unfinished(ctx: FleetContext) -> RunRecord:
    """The rollout to revert. When none changed a host yet but one was left unfinished (killed before
    its first host changed), that one: nothing to restore, but it must not be resumed afterwards."""
    try:
        return newest_changing_rollout(ctx)
    except UsageError:
        from fleetctl.control import resumable

        for run in ctx.store.runs.list(
            limit=50, kind="rollout", statuses=("paused", "interrupted", "running")
        ):
            if resumable(ctx, run):
                return run
        raise


def newest_changing_rollout(ctx: FleetContext) -> RunRecord:
    """The rollout that changed a host last (not the one started last: an older run resumed later
    changed hosts after a newer one)."""
    best: tuple[datetime, RunRecord] | None = None
    for run in ctx.store.runs.list(limit=200, kind="rollout"):
        times = [h.updated_at or run.created_at for h in ctx.store.runs.hosts(run.id) if h.state in TOUCHED]
        if times and (best is None or max(times) > best[0]):
            best = (max(times), run)
    if best is None:
        raise UsageError("no rollout in the journal changed any host", "name a run, or use --to VERSION")
    return best[1]


def to_retry(ctx: FleetContext) -> RunRecord | None:
    """The newest rollback with failed hosts (what `rollback --retry-failed` retries), if any."""
    runs = ctx.store.runs.list(limit=50, kind="rollback")
    return next((r for r in runs if any(h.state == "failed" for h in ctx.store.runs.hosts(r.id))), None)


def prepare(
    ctx: FleetContext,
    run_ref: str | None = None,
    *,
    to: str | None = None,
    limit: str | None = None,
    refresh: bool = True,
    forks: int | None = None,
    allow_forward: bool = False,
    reason: str | None = None,
) -> Rollback:
    """What the rollback will do (touches no node, except asking versions for --to). Refuses what a
    rollback must not do (see `guard`)."""
    if to is not None and run_ref is not None:
        raise UsageError("give either a RUN or --to VERSION, not both", "see `fleetctl rollback --help`")
    if allow_forward and not (reason or "").strip():
        raise UsageError("--allow-forward needs --reason TEXT", "say why hosts may go forward (audited)")
    Engine.settle_dead_runs(ctx)  # a dead fleetctl's Ansible ended, its hosts in flight asked (issue 9)
    selected = set(ctx.fleet.select(limit)) if limit else None
    reverts: str | None = None
    unknown: list[str] = []
    if to is not None:
        valid_version(to)
        refuse_quarantined_targets(ctx, [to])  # before asking any node
        hosts = ctx.fleet.select(limit)
        if refresh:
            # Hosts the ledger says are at VERSION would be skipped on its word alone, and a host it
            # knows nothing about cannot be told back from forward: ask them.
            ledger_says = ctx.store.ledger.versions(ctx.component)
            suspects = [h for h in hosts if ledger_says.get(h) in (to, None)]
            if suspects:
                census.refresh(ctx, hosts=suspects)
        targets = dict.fromkeys(hosts, to)
    else:
        from fleetctl.control import find_run

        run = find_run(ctx, run_ref) if run_ref else _newest_or_unfinished(ctx)
        if run.kind != "rollout":
            raise UsageError(
                f"run {run.id} is a {run.kind}; only a rollout can be reverted",
                "use --to VERSION to restore a known-good version",
            )
        reverts = run.id
        changed = [h for h in ctx.store.runs.hosts(run.id) if h.state in TOUCHED]
        targets = {h.host: h.from_version for h in changed if h.from_version and h.host in ctx.fleet.hosts}
        unknown = sorted(h.host for h in changed if not is_plain_version(h.from_version))
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
    ran = ran_before(ctx, plan.hosts)
    moves = [classify(h, plan.from_versions.get(h), plan.targets[h], ran[h]) for h in plan.hosts]
    rb = Rollback(plan, reverts, unknown, moves, allow_forward, (reason or "").strip() or None)
    guard(ctx, rb)
    return rb


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
    on_open: Callable[[RunRecord], None] | None = None,
) -> RunRecord | None:
    """Preempt, lock, (re)compute the plan under the lock, and run it. None: nothing to do.
    `on_open` is called with the journaled run before any host is touched (e.g. to link it to a guard)."""
    from fleetctl.policy import audit_if_frozen, covering

    store = ctx.store
    token = take_lock(ctx)
    try:
        rb = rollback() if callable(rollback) else rollback
        plan = rb.plan
        if not plan.hosts:  # nothing to restore; a rollout left unfinished must still not go on
            supersede_rollouts(ctx, "(nothing to restore)")
            return None
        guard(ctx, rb)  # again under the lock: a quarantine or a freeze may have begun since the preview
        options = {
            "forks": plan.forks,
            "moves": {m.host: {"direction": m.direction, "why": m.why} for m in rb.hosts},
        }
        run = open_run(ctx, plan, token, reason=reason, options=options, reverts=rb.reverts)
        if on_open:
            on_open(run)
        if rb.forward:
            forward = [m.host for m in rb.forward]
            store.audit.record(
                "rollback.forward",
                run.id,
                reason or rb.reason,
                ctx.who,
                {
                    "hosts": [m.to_json() for m in rb.forward],
                    "freezes": [c.to_json() for c in covering(ctx, forward)],
                },
            )
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


def supersede_rollouts(ctx: FleetContext, rollback_id: str) -> list[str]:
    """A rollout left paused or interrupted must not be resumed after a rollback: it ends `aborted`.
    Returns the ids of the runs it ended."""
    from fleetctl.control import resumable

    ended = []
    for run in ctx.store.runs.list(limit=50, kind="rollout", statuses=("paused", "interrupted", "running")):
        if resumable(ctx, run):
            ctx.store.runs.update(
                run.id, status="aborted", status_reason=f"superseded by rollback {rollback_id}"
            )
            ctx.store.audit.record("run.superseded", run.id, f"rollback {rollback_id}", ctx.who)
            ended.append(run.id)
    return ended


def nothing_to_restore(ctx: FleetContext) -> list[str]:
    """The rollback found nothing to restore. A rollout left unfinished (killed or paused before it
    changed a host) still ends, under the lock, so that no later `resume` pushes what the operator
    stopped. Returns the ids of the runs it ended."""
    from fleetctl.control import resumable

    statuses = ("paused", "interrupted", "running")
    if not any(resumable(ctx, r) for r in ctx.store.runs.list(limit=50, kind="rollout", statuses=statuses)):
        return []
    token = take_lock(ctx)
    try:
        return supersede_rollouts(ctx, "(nothing to restore)")
    finally:
        ctx.store.locks.release(ctx.lock_name, token)


def retry_failed(ctx: FleetContext, engine_ready: Callable[[Engine], None] | None = None) -> RunRecord:
    """Run the newest rollback again for just its failed hosts."""
    run = to_retry(ctx)
    if run is None:
        raise UsageError("no rollback has failed hosts", "see `fleetctl runs`")
    targets = Plan.from_json(run.plan or {}).targets
    refuse_quarantined_targets(
        ctx, (targets.get(h.host) for h in ctx.store.runs.hosts(run.id) if h.state == "failed")
    )
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
