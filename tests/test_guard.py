"""Issue 11: the guard after a rollout. A build that passes every bake and starts to block later (the
simulated "morning load") is caught by `tick`'s guard rounds and rolled back by itself; below the budget a
failing host is recorded, not rolled back; `guard stop`, a freeze during the guard, `on_trip: alert`, a new
rollout releasing the hosts, and a kill -9 during the guard's own rollback. Real simulated fleets, real
ansible-runner runs, the nodes' `current` links read from disk."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from fleetctl.sim import artifacts
from fleetctl.sim import fleet as simfleet
from tests.conftest import TWO_BATCHES, Cli, Sim, fleetctl_proc

GUARD = {"duration": "1h", "interval": "1s", "failures_to_fail": 2, "max_failures": 0}


def guarded_sim(make_sim: Callable[..., Sim], nodes: int = 4, **guard: object) -> Sim:
    """A sim whose faulty 2.0.0 passes the bakes (it blocks only under load) and a fast guard."""
    sim = make_sim(nodes=nodes, hang_after=3600, stages=TWO_BATCHES)
    sim.write_config(guard={**GUARD, **guard})
    return sim


def tick(cli: Cli, sim: Sim, code: int = 0) -> dict:
    return cli.json_lines("tick --json", env=sim.env, code=code)[-1]


def next_round(cli: Cli, sim: Sim, code: int = 0) -> dict:
    """Wait one guard interval, then tick."""
    time.sleep(1.05)
    return tick(cli, sim, code)


def break_node(sim: Sim, node: str) -> None:
    """This node's controller blocks from now on (a release that hangs at once), outside fleetctl."""
    root = sim.dir / "nodes" / node
    artifacts.write_release(root, "9.9.9", hang_after=0)
    artifacts.switch_release(root, "9.9.9")
    simfleet.restart_node(sim.dir, node)


def test_a_build_failing_after_its_last_bake_is_rolled_back_by_the_guard(make_sim, cli: Cli) -> None:
    sim = guarded_sim(make_sim)
    summary = cli.json_lines("rollout 2.0.0 --yes --json", env=sim.env)[-1]
    assert summary["status"] == "succeeded"
    assert set(sim.current().values()) == {"2.0.0"}
    status = cli.json("guard status --json", env=sim.env)
    assert status["guard"]["status"] == "active" and status["guarded"] == 4

    first = tick(cli, sim)["guards"]
    assert [(g["probed"], g["failed"], g["tripped"]) for g in first] == [(4, [], False)]

    cli(f"sim load --dir {sim.dir}")  # the morning's load arrives: 2.0.0 starts to block
    one = next_round(cli, sim)["guards"][0]
    assert len(one["failing"]) == 4 and one["failed"] == [] and not one["tripped"]
    assert set(sim.current().values()) == {"2.0.0"}  # one failed round is not yet a failed host

    two = next_round(cli, sim, code=1)["guards"][0]
    assert two["tripped"] and two["action"] == "rollback" and two["rollback_run"]
    assert set(sim.current().values()) == {"1.0.0"}  # the ground truth: every node is back

    status = cli.json(f"guard status {summary['run']} --json", env=sim.env)
    assert status["guard"]["status"] == "rolled_back"
    assert status["guard"]["rollback_run"] == two["rollback_run"]
    assert "failed after rollout" in status["guard"]["end_reason"]
    assert {h["host"] for h in status["failing"]} == set(sim.nodes)
    assert all("no answer within" in h["error"] and h["first_failure_at"] for h in status["failing"])
    quarantined = cli.json("quarantine list --json", env=sim.env)
    entry = next(q for q in quarantined["quarantine"] if q["version"] == "2.0.0")
    assert entry["run"] == summary["run"] and "guard" in entry["reason"]
    audit = cli.json("audit --json", env=sim.env)["audit"]
    trip = next(a for a in audit if a["action"] == "guard.trip")
    assert {h["host"] for h in trip["details"]["hosts"]} == set(sim.nodes)
    assert trip["details"]["first_failure_at"] and trip["details"]["last_failure_at"]
    rollback = cli.json(f"status {two['rollback_run']} --json", env=sim.env)["run"]
    assert rollback["kind"] == "rollback" and rollback["status"] == "succeeded"
    assert next_round(cli, sim)["guards"] == []  # tripped: no more rounds


def test_below_budget_a_failing_host_is_recorded_not_rolled_back(make_sim, cli: Cli) -> None:
    sim = guarded_sim(make_sim, max_failures=1)
    cli("rollout 1.1.0 --yes", env=sim.env)
    sick = sim.nodes[-1]
    break_node(sim, sick)
    tick(cli, sim)
    out = next_round(cli, sim)["guards"][0]
    assert [f["host"] for f in out["failed"]] == [sick] and not out["tripped"]
    status = cli.json("guard status --json", env=sim.env)
    assert status["guard"]["status"] == "active"
    assert [(h["host"], h["state"]) for h in status["failing"]] == [(sick, "failed")]
    assert "no answer within" in status["failing"][0]["error"]
    text = cli("guard status", env=sim.env).stdout
    assert sick in text and "failed" in text
    run = cli.json("status --json", env=sim.env)  # the run's own status shows it too
    assert [h["host"] for h in run["guard"]["failing"]] == [sick]
    assert f"! {sick} failed under guard" in cli("status", env=sim.env).stdout
    assert {v for h, v in sim.current().items() if h != sick} == {"1.1.0"}  # nothing was rolled back
    assert cli.json("quarantine list --json", env=sim.env)["quarantine"] == []


def test_guard_stop_ends_the_rounds_and_is_audited(make_sim, cli: Cli) -> None:
    sim = guarded_sim(make_sim)
    run = cli.json_lines("rollout 2.0.0 --yes --json", env=sim.env)[-1]["run"]
    cli("guard stop", env=sim.env, code=2)  # a reason is required
    cli("guard stop --reason 'verified by hand'", env=sim.env)
    assert cli.json("guard status --json", env=sim.env)["guard"]["status"] == "stopped"
    cli(f"sim load --dir {sim.dir}")
    assert tick(cli, sim)["guards"] == [] and next_round(cli, sim)["guards"] == []
    assert set(sim.current().values()) == {"2.0.0"}
    stop = next(a for a in cli.json("audit --json", env=sim.env)["audit"] if a["action"] == "guard.stop")
    assert stop["subject"] == run and stop["reason"] == "verified by hand"
    listed = cli.json("guard list --json", env=sim.env)["guards"]
    assert [(g["run"], g["status"]) for g in listed] == [(run, "stopped")]


def test_a_freeze_does_not_stop_the_guard_or_its_rollback(make_sim, cli: Cli) -> None:
    sim = guarded_sim(make_sim)
    cli("rollout 2.0.0 --yes", env=sim.env)
    cli("freeze on --reason 'INC-1: investigating'", env=sim.env)
    cli(f"sim load --dir {sim.dir}")
    tick(cli, sim)
    out = next_round(cli, sim, code=1)["guards"][0]
    assert out["tripped"] and out["rollback_run"]
    assert set(sim.current().values()) == {"1.0.0"}
    actions = [a["action"] for a in cli.json("audit --json", env=sim.env)["audit"]]
    assert "rollback.during_freeze" in actions and "guard.trip" in actions


def test_on_trip_alert_freezes_the_fleet_instead(make_sim, cli: Cli) -> None:
    sim = guarded_sim(make_sim, on_trip="alert")
    cli("rollout 2.0.0 --yes", env=sim.env)
    cli(f"sim load --dir {sim.dir}")
    tick(cli, sim)
    out = next_round(cli, sim, code=1)["guards"][0]
    assert out["tripped"] and out["action"] == "alert" and out["rollback_run"] is None
    assert set(sim.current().values()) == {"2.0.0"}  # left for a human
    freeze = cli.json("freeze status --json", env=sim.env)
    assert freeze["frozen"] and "guard tripped" in freeze["by"][0]["reason"]
    cli("rollout 1.1.0 --yes", env=sim.env, code=3)  # the freeze holds
    assert cli.json("guard status --json", env=sim.env)["guard"]["status"] == "alerted"
    next_round(cli, sim)  # the trip's action is not repeated: still one freeze
    assert len(cli.json("freeze status --json", env=sim.env)["by"]) == 1


def test_a_new_rollout_releases_the_hosts_it_moves(make_sim, cli: Cli) -> None:
    sim = guarded_sim(make_sim)
    first = cli.json_lines("rollout 1.1.0 --yes --json", env=sim.env)[-1]["run"]
    second = cli.json_lines("rollout 1.2.0 --yes --json", env=sim.env)[-1]["run"]
    old = cli.json(f"guard status {first} --json", env=sim.env)
    assert old["guard"]["status"] == "released" and old["guarded"] == 0
    assert {h["released_by"] for h in old["hosts"]} == {second}
    assert cli.json("guard status --json", env=sim.env)["guard"]["run"] == second


def test_kill_9_during_the_guards_rollback_then_tick_finishes_it(make_sim, cli: Cli) -> None:
    sim = guarded_sim(make_sim, nodes=5)
    sim.write_config(rollback={"forks": 1, "batch": 1})  # a slow rollback: one host a batch
    cli("rollout 2.0.0 --yes", env=sim.env)
    cli(f"sim load --dir {sim.dir}")
    tick(cli, sim)
    time.sleep(1.05)
    proc = fleetctl_proc(["tick"], sim.env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rolled = sum(1 for v in sim.current().values() if v == "1.0.0")
        if rolled >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert set(sim.current().values()) != {"1.0.0"}, "the rollback finished before the kill"

    out = tick(cli, sim)  # the next tick carries the guard's rollback on
    assert out["guards"] == []
    assert set(sim.current().values()) == {"1.0.0"}
    guard = cli.json("guard status --json", env=sim.env)["guard"]
    rollback = cli.json(f"status {guard['rollback_run']} --json", env=sim.env)["run"]
    assert rollback["status"] == "succeeded"
    assert guard["status"] == "rolled_back"


def test_the_guard_undoes_a_downgrade_too(make_sim, cli: Cli) -> None:
    """Undoing a downgrade moves hosts to a newer version they ran before: a return, not a rollout in
    disguise, so the guard's rollback is not refused as a forward move."""
    sim = guarded_sim(make_sim, nodes=3)
    for node in sim.nodes:
        sim.set_current(node, "1.2.0")
    cli("versions --refresh", env=sim.env)
    cli("rollout 1.1.0 --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}
    break_node(sim, sim.nodes[0])
    tick(cli, sim)
    out = next_round(cli, sim, code=1)["guards"][0]
    assert out["tripped"] and out["rollback_run"] and out["error"] is None
    assert set(sim.current().values()) == {"1.2.0"}
    assert cli.json("guard status --json", env=sim.env)["guard"]["status"] == "rolled_back"


def test_a_guard_lost_to_a_crash_is_adopted_and_a_round_is_claimed_once(make_sim, cli: Cli) -> None:
    """kill -9 between a rollout's success and its guard's row: the next tick guards it all the same.
    Two processes due for the same round: only one takes it."""
    from fleetctl.context import FleetContext
    from fleetctl.store.guards import guard_hosts, guards

    sim = guarded_sim(make_sim, nodes=3)
    run = cli.json_lines("rollout 1.1.0 --yes --json", env=sim.env)[-1]["run"]
    ctx = FleetContext(config_path=sim.config, env=sim.env)
    with ctx.store.tx() as conn:  # as if the process died right after writing `succeeded`
        conn.execute(guard_hosts.delete())
        conn.execute(guards.delete())
    assert tick(cli, sim)["guards"] == []  # adopted (its first round is due at the next tick)
    adopted = cli.json("guard status --json", env=sim.env)
    assert adopted["guard"]["run"] == run and adopted["guarded"] == 3
    g = ctx.store.guards.get(run)
    assert g is not None and ctx.store.guards.claim_round(g)
    assert not ctx.store.guards.claim_round(g)  # the same round, a second time: refused
