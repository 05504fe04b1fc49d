"""What the web view shows, read from the journal in one go: plain data, no HTML (views.py renders it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fleetctl.errors import FleetError
from fleetctl.plan import Plan

if TYPE_CHECKING:
    from fleetctl.context import FleetContext


def snapshot(ctx: FleetContext) -> dict[str, Any]:
    """The census, the newest run (stage, batch, hosts, failures, ETA), freezes and the next window,
    quarantine, guards, recent runs and audit, and the notification outbox's counts."""
    from fleetctl import census, control, notify, policy, schedule

    store = ctx.store
    now = ctx.now()
    doc: dict[str, Any] = {"fleet": notify.fleet_name(ctx.config), "at": now.isoformat()}
    try:
        doc["census"] = census.census(census.hosts(ctx))
    except FleetError as exc:  # an inventory that does not load still leaves the journal to show
        doc["census"], doc["census_error"] = {}, exc.message
    doc["run"] = _run(ctx, control) if store.runs.list(limit=1) else None
    doc["freeze"] = policy.status(ctx, now).to_json()
    doc["window"] = schedule.windows_state(ctx, now).to_json()
    doc["quarantine"] = [q.to_json() for q in store.quarantine.list(ctx.component)]
    doc["guards"] = [
        {
            **g.to_json(),
            "failing": [
                h.to_json() for h in store.guards.hosts(g.run_id) if h.state in ("failing", "failed")
            ],
        }
        for g in store.guards.list(limit=3)
    ]
    doc["history"] = [r.to_json() for r in store.runs.list(limit=10)]
    doc["audit"] = [a.to_json() for a in store.audit.entries(limit=15)]
    doc["notifications"] = store.outbox.stats()
    return doc


def _run(ctx: FleetContext, control: Any) -> dict[str, Any]:
    status = control.status(ctx)
    doc: dict[str, Any] = status.to_json()
    run = status.run
    plan = Plan.from_json(run.plan) if run.plan else None
    stages = (
        [{"name": s.name, "hosts": len(s.hosts), "batches": len(s.batches)} for s in plan.stages]
        if plan
        else []
    )
    doc["stages"] = stages
    doc["stage_index"] = next((i + 1 for i, s in enumerate(stages) if s["name"] == run.stage), None)
    doc["batches"] = next((s["batches"] for s in stages if s["name"] == run.stage), None)
    doc["finished"] = status.finished
    return doc
