"""Starting a rollout: validate, refuse what must be refused (quarantine, freeze), plan, lock, execute."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fleetctl.artifacts import Found
from fleetctl.context import FleetContext
from fleetctl.engine import Checkpoint, Engine, open_run
from fleetctl.errors import QuarantinedError, UsageError
from fleetctl.plan import Plan, check_fresh, rollout_plan
from fleetctl.store.runs import RunRecord
from fleetctl.units import check_version

# Extra refusals/checkpoints (freezes, windows) plug in here; see fleetctl.policy.
StartCheck = Callable[[FleetContext, Plan, dict], None]


def valid_version(version: str) -> str:
    try:
        return check_version(version)
    except ValueError as exc:
        raise UsageError(str(exc), "pass a release version such as 1.2.0") from None


def make_plan(ctx: FleetContext, version: str, limit: str | None = None) -> Plan:
    """The plan for `version`, from the current inventory, policy and ledger. Touches no node."""
    valid_version(version)
    # No journal yet: nothing recorded, and a plan (or a refused rollout) must not create one.
    versions = ctx.store.ledger.versions(ctx.component) if ctx.journal_exists() else {}
    return rollout_plan(
        ctx.fleet, ctx.config.rollout, versions, version, component=ctx.component, limit=limit
    )


def load_plan_file(path: Path) -> Plan:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(
            f"cannot read plan {path}: {exc.strerror}", "check the path given to --plan"
        ) from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"plan {path} is not JSON: {exc.msg} at line {exc.lineno}",
            "write one with `fleetctl plan VERSION -o plan.json`",
        ) from None
    if not isinstance(doc, dict):
        raise UsageError(
            f"plan {path} is not a fleetctl plan", "write one with `fleetctl plan VERSION -o plan.json`"
        )
    return Plan.from_json(doc)


def prepare(
    ctx: FleetContext, version: str | None, *, limit: str | None = None, plan_file: Path | None = None
) -> Plan:
    """The plan a rollout will run: from --plan (refused when stale) or made now."""
    if plan_file is not None:
        saved = load_plan_file(plan_file)
        if saved.kind != "rollout" or not saved.version:
            raise UsageError(f"{plan_file} is not a rollout plan", "use a plan written by `fleetctl plan`")
        if version and version != saved.version:
            raise UsageError(
                f"the plan is for {saved.version}, not {version}", "drop VERSION or make a new plan"
            )
        check_fresh(saved, make_plan(ctx, saved.version, saved.limit))
        require_published(ctx, saved)
        return saved
    if not version:
        raise UsageError("rollout needs a VERSION or --plan FILE", "e.g. `fleetctl rollout 1.2.0`")
    plan = make_plan(ctx, version, limit)
    require_published(ctx, plan)
    return plan


def published(ctx: FleetContext, plan: Plan) -> Found | None:
    """Is the artifact of the plan's version in the artifact store, with a known checksum, as the plan's
    first host would fetch it? (Install method archive; a package manager is not asked.) None: no host."""
    from fleetctl import artifacts

    if not plan.version or not plan.hosts:
        return None
    return artifacts.verify(ctx, plan.version, plan.hosts[0])


def require_published(ctx: FleetContext, plan: Plan) -> None:
    """Before anything runs: refuse a version that is not in the artifact store (exit 2). A typo'd
    version is refused here, so it never reaches a node and is never quarantined."""
    found = published(ctx, plan)
    if found is not None and not found.ok:
        raise UsageError(
            f"no such version in the artifact store (or its checksum is unknown): {found.detail}",
            found.fix or "check the version (`fleetctl check VERSION` says more)",
        )


def refuse_quarantined(ctx: FleetContext, version: str) -> None:
    entry = ctx.store.quarantine.get(ctx.component, version)
    if entry:
        raise QuarantinedError(
            f"version {version} is quarantined since {entry.created_at:%Y-%m-%d %H:%M}Z (run {entry.run_id}): "
            f"{entry.reason}",
            f"if the fault is understood: fleetctl quarantine clear {version} --reason TEXT",
        )


def start(
    ctx: FleetContext,
    plan: Plan,
    *,
    reason: str | None = None,
    options: dict | None = None,
    checks: list[StartCheck] | None = None,
    checkpoints: list[Checkpoint] | None = None,
    engine_ready: Callable[[Engine], None] | None = None,
) -> RunRecord | None:
    """Refuse or start the run for `plan` and execute it to its end. None: nothing to do.

    `checks` refuse before anything happens; `checkpoints` may pause before each batch. Both default to
    the freeze rules (fleetctl.policy)."""
    from fleetctl import policy

    options = dict(options or {})
    assert plan.version
    refuse_quarantined(ctx, plan.version)
    # Freezes are honoured unless a caller passes its own lists (tick does, with more checks).
    checks = [policy.refuse_if_frozen] if checks is None else checks
    checkpoints = [policy.freeze_checkpoint(ctx)] if checkpoints is None else checkpoints
    for check in checks:
        check(ctx, plan, options)
    if not plan.hosts:
        return None
    store = ctx.store
    token, _dead = store.locks.acquire(ctx.lock_name, run_id=None, owner=ctx.who)
    try:
        run = open_run(ctx, plan, token, reason=reason, options=options)
        engine = Engine(ctx, checkpoints)
        if engine_ready:
            engine_ready(engine)
        return engine.execute(run.id, token)
    finally:
        store.locks.release(ctx.lock_name, token)
