"""Change freezes: manual (scoped, expiring) and windowed, refusing rollouts, pausing them mid-run,
never stopping a rollback. Runs are real ansible-runner runs against a simulated fleet."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from fleetctl import control, policy
from fleetctl import rollback as rollbacks
from fleetctl import rollout as rollouts
from fleetctl.cli.errors import report
from fleetctl.cli.run_cmds import exit_code
from fleetctl.context import FleetContext
from fleetctl.errors import ExitCode, FrozenError, UsageError
from tests.conftest import TWO_BATCHES, Clock


def context(sim, clock=None, operator: str | None = None) -> FleetContext:
    kw = {"clock": clock} if clock else {}
    return FleetContext(config_path=sim.config, env=sim.env, operator=operator, **kw)


def at_version(sim, version: str) -> set[str]:
    return {h for h, v in sim.current().items() if v == version}


def freeze_after_first_result(ctx: FleetContext, other: FleetContext, reason: str):
    """An event sink that turns a freeze on (as another operator) once the first host has been updated."""
    _ = other.fleet  # load the inventory before the run, not inside ansible-runner's callback

    def sink(event) -> None:
        if event.kind == "host.result" and not other.store.freezes.active(other.now()):
            policy.freeze_on(other, reason)

    return sink


# -- manual freezes through the CLI ------------------------------------------------------------------
def test_freeze_on_status_list_off_and_audit(make_sim, cli):
    sim = make_sim(nodes=3)
    cli("freeze on --reason 'INC-7: IPC backlog' --for 2h -l ring1", env=sim.env)
    status = cli.json("freeze status --json", env=sim.env)
    assert status["frozen"] is True
    [by] = status["by"]
    assert by["kind"] == "manual" and by["name"] == "manual #1" and by["reason"] == "INC-7: IPC backlog"
    assert by["scope"] == "ring1" and by["until"] == status["next_change"]
    text = cli("freeze status", env=sim.env).stdout
    assert "frozen by manual #1 on ring1 until" in text and "INC-7: IPC backlog" in text
    [row] = cli.json("freeze list --json", env=sim.env)["freezes"]
    assert row["state"] == "active" and row["by"] == "tester" and row["until"]

    cli("freeze off --reason understood", env=sim.env)
    not_frozen = {"fleet": sim.dir.name, "frozen": False, "by": [], "next_change": None}
    assert cli.json("freeze status --json", env=sim.env) == not_frozen
    [row] = cli.json("freeze list --json", env=sim.env)["freezes"]
    assert row["state"] == "lifted" and row["lifted_by"] == "tester" and row["lift_reason"] == "understood"
    entries = cli.json("audit --json", env=sim.env)["audit"]
    assert [(e["action"], e["actor"], e["reason"]) for e in entries] == [
        ("freeze.off", "tester", "understood"),
        ("freeze.on", "tester", "INC-7: IPC backlog"),
    ]
    assert len(cli.json("audit --json --last 1", env=sim.env)["audit"]) == 1
    assert "freeze.on" in cli("audit", env=sim.env).stdout


def test_manual_freeze_with_until_expires_by_itself(make_sim, cli):
    sim = make_sim(nodes=3)
    clock = Clock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    ctx = context(sim, clock)
    freeze = policy.freeze_on(ctx, "change review", until="2026-06-01T13:00:00Z")
    assert freeze.until == datetime(2026, 6, 1, 13, 0, tzinfo=UTC)
    assert policy.status(ctx).frozen
    assert policy.status(ctx).next_change == freeze.until
    clock.advance(minutes=59)
    assert policy.status(ctx).frozen
    clock.advance(minutes=1)
    assert policy.status(ctx).to_json() == {
        "fleet": sim.dir.name,
        "frozen": False,
        "by": [],
        "next_change": None,
    }
    assert [e.state for e in policy.entries(ctx)] == ["expired"]
    policy.refuse_if_frozen(ctx, rollouts.make_plan(ctx, "1.1.0"), {})  # no longer refused

    # The same through the CLI on the real clock: --for 1h, then ask about an instant after it.
    cli("freeze on --reason 'wait for vendor' --for 1h", env=sim.env)
    later = (datetime.now(UTC) + timedelta(hours=1, minutes=1)).isoformat()
    assert cli.json(["freeze", "status", "--at", later, "--json"], env=sim.env)["frozen"] is False
    assert cli.json("freeze status --json", env=sim.env)["frozen"] is True


@pytest.mark.parametrize(
    "args, flag",
    [
        (["freeze", "on", "--reason", "  "], "--reason"),
        (["freeze", "on"], "--reason"),
        (["freeze", "on", "--reason", "x", "--until", "2020-01-01T00:00:00Z"], "--until"),
        (["freeze", "on", "--reason", "x", "--until", "tomorrow"], "--until"),
        (["freeze", "on", "--reason", "x", "--until", "2099-01-01T00:00:00"], "--until"),
        (["freeze", "on", "--reason", "x", "--until", "2099-01-01T00:00Z", "--for", "2h"], "--until"),
        (["freeze", "on", "--reason", "x", "--for", "-5m"], "--for"),
        (["freeze", "on", "--reason", "x", "--for", "soon"], "--for"),
        (["freeze", "on", "--reason", "x", "--for", "0s"], "--for"),
        (["freeze", "on", "--reason", "x", "-l", "nosuchgroup"], "-l"),
        (["freeze", "status", "--at", "noon"], "--at"),
        (["audit", "--last", "0"], "--last"),
    ],
)
def test_bad_freeze_input_exits_2_naming_the_flag_and_writes_nothing(make_sim, cli, args, flag):
    sim = make_sim(nodes=3)
    result = cli(args, env=sim.env, code=2)
    assert flag in result.stderr
    assert sum(line.startswith(("fleetctl: error", "Error")) for line in result.stderr.splitlines()) <= 1
    assert cli.json("freeze list --json", env=sim.env) == {"freezes": []}
    assert cli.json("audit --json", env=sim.env) == {"audit": []}


# -- freeze windows ---------------------------------------------------------------------------------
FREEZE_WINDOWS = {
    "windows": [
        {
            "name": "year-end",
            "start": "2026-12-20 00:00",
            "end": "2027-01-04 00:00",
            "timezone": "Europe/London",
        },
        {"name": "business-hours", "cron": "0 8 * * 1-5", "duration": "10h", "timezone": "Europe/London"},
    ]
}


@pytest.mark.parametrize(
    "at, frozen_by, next_change",
    [
        # Friday before the spring change, 07:30 GMT: business hours start at 08:00 GMT.
        ("2026-03-27T07:30:00Z", [], "2026-03-27T08:00:00+00:00"),
        # Monday after it, 08:30 BST: open since 08:00 BST (07:00Z), until 18:00 BST (17:00Z).
        (
            "2026-03-30T07:30:00Z",
            [("business-hours", "2026-03-30T17:00:00+00:00")],
            "2026-03-30T17:00:00+00:00",
        ),
        # Sunday: no business hours; Monday opens at 08:00 BST.
        ("2026-03-29T12:00:00Z", [], "2026-03-30T07:00:00+00:00"),
        # Christmas Eve, a Thursday: both; frozen without a break until year-end ends on 4 Jan 00:00 GMT.
        (
            "2026-12-24T12:00:00Z",
            [("year-end", "2027-01-04T00:00:00+00:00"), ("business-hours", "2026-12-24T18:00:00+00:00")],
            "2027-01-04T00:00:00+00:00",
        ),
    ],
)
def test_freeze_windows_at_fixed_instants(make_sim, cli, at, frozen_by, next_change):
    sim = make_sim(nodes=3)
    sim.write_config(freeze=FREEZE_WINDOWS)
    doc = cli.json(["freeze", "status", "--at", at, "--json"], env=sim.env)
    assert doc["frozen"] is bool(frozen_by)
    assert [(b["name"], b["until"]) for b in doc["by"]] == frozen_by
    assert all(b["kind"] == "window" for b in doc["by"])
    assert doc["next_change"] == next_change


# -- refusing a rollout -------------------------------------------------------------------------------
def test_scoped_freeze_and_override(make_sim):
    sim = make_sim(nodes=4)
    ctx = context(sim)
    policy.freeze_on(ctx, "ring2 under investigation", scope="ring2")
    policy.refuse_if_frozen(ctx, rollouts.make_plan(ctx, "1.1.0", limit="canary"), {})  # not covered
    with pytest.raises(FrozenError) as exc:
        policy.refuse_if_frozen(ctx, rollouts.make_plan(ctx, "1.1.0"), {})
    assert "manual #1 on ring2" in exc.value.message and "ring2 under investigation" in exc.value.message
    assert report(exc.value) == ExitCode.BLOCKED
    plan = rollouts.make_plan(ctx, "1.1.0")
    with pytest.raises(UsageError, match="--reason"):
        policy.refuse_if_frozen(ctx, plan, {"override_freeze": True})
    policy.refuse_if_frozen(ctx, plan, {"override_freeze": True, "override_reason": "security fix"})
    override = ctx.store.audit.entries()[0]
    assert (override.action, override.subject, override.reason, override.actor) == (
        "freeze.override",
        "1.1.0",
        "security fix",
        "tester",
    )
    assert override.details["freezes"][0]["name"] == "manual #1"


@pytest.mark.parametrize("kind", ["manual", "window"])
def test_rollout_refused_with_exit_3_changes_nothing(make_sim, kind):
    sim = make_sim(nodes=3)
    if kind == "window":
        sim.write_config(freeze={"windows": [{"name": "always", "cron": "0 0 * * *", "duration": "24h"}]})
    ctx = context(sim)
    if kind == "manual":
        policy.freeze_on(ctx, "INC-9: controller hangs")
    plan = rollouts.make_plan(ctx, "1.1.0")
    with pytest.raises(FrozenError) as exc:
        rollouts.start(ctx, plan, checks=[policy.refuse_if_frozen])
    assert report(exc.value) == 3
    assert ("INC-9: controller hangs" if kind == "manual" else "window always") in exc.value.message
    assert set(sim.current().values()) == {"1.0.0"}
    assert ctx.store.runs.list() == []
    assert ctx.store.locks.holder(ctx.lock_name) is None


# -- a freeze that begins during a run -----------------------------------------------------------------
def test_freeze_mid_run_pauses_at_batch_boundary_and_resume_after_it_finishes(make_sim):
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    ctx, other = context(sim), context(sim, operator="oncall")
    ctx.events = freeze_after_first_result(ctx, other, "INC-42: IPC backlog")
    run = rollouts.start(
        ctx,
        rollouts.make_plan(ctx, "1.1.0"),
        checks=[policy.refuse_if_frozen],
        checkpoints=[policy.freeze_checkpoint(ctx)],
    )
    assert run is not None
    assert (run.status, run.status_reason) == ("paused", "frozen: manual #1: INC-42: IPC backlog")
    assert exit_code(run) == ExitCode.BLOCKED
    assert at_version(sim, "1.1.0") == {"node-001"}
    assert {h.host: h.state for h in ctx.store.runs.hosts(run.id)} == {
        "node-001": "done",
        "node-002": "pending",
        "node-003": "pending",
    }

    ctx.events = lambda _e: None
    again = control.resume(ctx, run.id, checkpoints=[policy.freeze_checkpoint(ctx)])
    assert (again.status, again.status_reason) == ("paused", "frozen: manual #1: INC-42: IPC backlog")
    assert at_version(sim, "1.1.0") == {"node-001"}

    [lifted] = policy.freeze_off(other, "understood: unrelated")
    assert lifted.reason == "INC-42: IPC backlog"
    done = control.resume(ctx, run.id, checkpoints=[policy.freeze_checkpoint(ctx)])
    assert done.status == "succeeded"
    assert set(sim.current().values()) == {"1.1.0"}
    assert [e.action for e in ctx.store.audit.entries()] == ["freeze.off", "freeze.on"]


def test_rollback_runs_during_a_freeze_and_is_audited(make_sim):
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    ctx, other = context(sim), context(sim, operator="oncall")
    ctx.events = freeze_after_first_result(ctx, other, "INC-43: rollback everything")
    run = rollouts.start(ctx, rollouts.make_plan(ctx, "1.1.0"), checkpoints=[policy.freeze_checkpoint(ctx)])
    assert run is not None and run.status == "paused"
    assert at_version(sim, "1.1.0") == {"node-001"}

    ctx.events = lambda _e: None
    assert not any(e.action == "rollback.during_freeze" for e in ctx.store.audit.entries())
    back = rollbacks.start(ctx, rollbacks.prepare(ctx, run.id), reason="revert the canary")
    assert back is not None and back.status == "succeeded"
    assert ctx.store.runs.hosts(back.id)[0].state == "rolled_back"
    assert set(sim.current().values()) == {"1.0.0"}
    assert policy.status(ctx).frozen  # the freeze is still on; the rollback ran anyway
    entry = next(e for e in ctx.store.audit.entries() if e.action == "rollback.during_freeze")  # fleetctl's
    assert (entry.subject, entry.reason, entry.actor) == (back.id, "revert the canary", "tester")
    assert json.dumps(entry.details)  # JSON-ready: the freezes in force are recorded
    assert entry.details["freezes"][0]["reason"] == "INC-43: rollback everything"
    assert policy.audit_if_frozen(other, "rollback", "x", "y", hosts=[]) == []
