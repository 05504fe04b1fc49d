"""Issue 5: the one-command rollback on the simulated fleet: restore, --to after drift, -l, preempting a
rollout, kill -9 then resume, idempotence, retry of failed hosts; each host back to its own from-version,
a freeze recorded by fleetctl itself, and the final health check failing a host."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable

from fleetctl.sim import server as simserver
from tests.conftest import Cli, Sim, fleetctl_proc
from tests.health_stub import HealthStub
from tests.test_staged import host_states, run_status, wait_for

ONE_WIDE_STAGE = [{"name": "all", "hosts": "all", "batch": "100%", "bake": "0s"}]


def test_rollback_restores_30_nodes_after_a_careless_push(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(nodes=30, stages=ONE_WIDE_STAGE, max_unavailable=None)
    sim.write_config(health={"probes": []})
    cli("rollout 2.0.0 --yes", env=sim.env)
    assert set(sim.current().values()) == {"2.0.0"}

    lines = cli.json_lines("rollback --yes --json", env=sim.env)
    *hosts, summary = lines
    assert len(hosts) == 30 and {h["status"] for h in hosts} == {"ok"}
    assert summary["kind"] == "rollback" and summary["status"] == "succeeded"
    assert sorted(summary["succeeded"]) == sim.nodes and summary["failed"] == []
    assert set(sim.current().values()) == {"1.0.0"}  # the ground truth on disk
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["kind"] == "rollback" and doc["run"]["status"] == "succeeded"

    history_before = len(cli.json("history --json", env=sim.env)["changes"])
    again = cli.json_lines("rollback --yes --json", env=sim.env)
    assert again == [
        {
            "run": None,
            "kind": "rollback",
            "status": "noop",
            "version": None,
            "succeeded": [],
            "failed": [],
            "rolled_back": [],
            "quarantined": None,
            "reason": None,
            "moves": [],
            "superseded": [],
        }
    ]
    assert len(cli.json("history --json", env=sim.env)["changes"]) == history_before
    assert set(sim.current().values()) == {"1.0.0"}


def test_rollback_to_a_version_after_drift(sim: Sim, cli: Cli) -> None:
    cli("versions --refresh", env=sim.env)  # the ledger now says 1.0.0 everywhere
    sim.set_current("node-002", "1.2.0")  # changed by hand, outside fleetctl
    sim.set_current("node-005", "1.1.0")
    lines = cli.json_lines("rollback --to 1.0.0 --yes --json", env=sim.env)
    assert sorted(h["host"] for h in lines[:-1]) == ["node-002", "node-005"]
    assert lines[-1]["status"] == "succeeded"
    assert set(sim.current().values()) == {"1.0.0"}
    drift = [c for c in cli.json("history --json", env=sim.env)["changes"] if c["source"] == "observed"]
    assert {(c["host"], c["to"]) for c in drift} >= {("node-002", "1.2.0"), ("node-005", "1.1.0")}


def test_limit_restricts_the_rollback(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(stages=ONE_WIDE_STAGE, max_unavailable=None)
    cli("rollout 1.1.0 --yes", env=sim.env)
    lines = cli.json_lines("rollback -l zone_a --yes --json", env=sim.env)
    assert sorted(h["host"] for h in lines[:-1]) == ["node-001", "node-004"]
    current = sim.current()
    assert {current["node-001"], current["node-004"]} == {"1.0.0"}
    assert {v for h, v in current.items() if h not in ("node-001", "node-004")} == {"1.1.0"}


def test_rollback_preempts_a_rollout_in_flight(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "60s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
        ]
    )
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="canary bake")
    rollout_id = run_status(sim)["run"]["id"]
    started = time.monotonic()
    lines = cli.json_lines("rollback --yes --json", env=sim.env)
    assert time.monotonic() - started < 45, "the rollback waited for the rollout's bake"
    assert proc.wait(timeout=30) == 1
    assert lines[-1]["status"] == "succeeded" and [h["host"] for h in lines[:-1]] == ["node-001"]
    runs = {r["id"]: r for r in cli.json("runs --json", env=sim.env)["runs"]}
    assert runs[rollout_id]["status"] == "aborted" and "preempted" in runs[rollout_id]["reason"]
    assert set(sim.current().values()) == {"1.0.0"}
    actions = [a["action"] for a in cli.json("audit --json", env=sim.env)["audit"]]
    assert "rollback.preempt" in actions


def test_kill_9_during_a_rollback_then_resume(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(nodes=8, stages=ONE_WIDE_STAGE, max_unavailable=None)
    sim.write_config(rollback={"forks": 2, "batch": 2})
    cli("rollout 1.1.0 --yes", env=sim.env)
    proc = fleetctl_proc(["rollback", "--yes"], sim.env)

    def mid_rollback() -> bool:
        doc = run_status(sim) or {}
        states = host_states(doc)
        return (
            doc.get("run", {}).get("kind") == "rollback"
            and "rolled_back" in states.values()
            and ("pending" in states.values())
        )

    wait_for(mid_rollback, what="a rollback half done")
    before = restarts(sim)  # each node restarted once by the rollout
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert cli.json("status --json", env=sim.env)["run"]["status"] == "interrupted"
    cli("resume --yes", env=sim.env)  # at once: the dead process's Ansible is ended first
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["kind"] == "rollback" and doc["run"]["status"] == "succeeded"
    assert set(sim.current().values()) == {"1.0.0"}
    # Ansible's own per-host changes: the rollout's restart and at most one by the rollback
    after = restarts(sim)
    assert all(after[n] - before.get(n, 0) <= 1 and after[n] <= 2 for n in after), (before, after)
    versions = {h["host"]: h["version"] for h in cli.json("versions --json", env=sim.env)["hosts"]}
    assert versions == sim.current()


def restarts(sim: Sim) -> dict[str, int]:
    """How often each node's controller was restarted, as the simulated fleet's server counts it."""
    reply = json.loads(simserver.send_command(sim.dir / "sim.sock", "status"))
    return {n["name"]: n["restarts"] for n in reply["nodes"]}


def test_retry_failed_retries_only_the_failed_hosts(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(nodes=4, stages=ONE_WIDE_STAGE, max_unavailable=None)
    cli("rollout 1.1.0 --yes", env=sim.env)
    # node-003 lost its 1.0.0 release and the store its artifact: only node-003's rollback fails
    shutil.rmtree(sim.dir / "nodes" / "node-003" / "releases" / "1.0.0")
    artifact = sim.dir / "artifacts" / "host-controller-1.0.0.tar.gz"
    hidden = artifact.with_suffix(".hidden")
    shutil.move(artifact, hidden)
    result = cli("rollback --yes --json", env=sim.env, code=1)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "failed" and [f["host"] for f in summary["failed"]] == ["node-003"]
    assert sim.current() == {
        "node-001": "1.0.0",
        "node-002": "1.0.0",
        "node-003": "1.1.0",
        "node-004": "1.0.0",
    }
    before = restarts(sim)

    shutil.move(hidden, artifact)
    lines = cli.json_lines("rollback --retry-failed --yes --json", env=sim.env)
    assert [h["host"] for h in lines[:-1]] == ["node-003"]  # Ansible ran on the failed host alone
    assert lines[-1]["run"] == summary["run"] and lines[-1]["status"] == "succeeded"
    assert sorted(lines[-1]["succeeded"]) == sim.nodes and lines[-1]["failed"] == []
    assert set(sim.current().values()) == {"1.0.0"}
    after = restarts(sim)
    assert after["node-003"] == before["node-003"] + 1
    assert {h: n for h, n in after.items() if h != "node-003"} == {
        h: n for h, n in before.items() if h != "node-003"
    }


def test_each_host_goes_back_to_its_own_from_version(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(nodes=4, stages=ONE_WIDE_STAGE, max_unavailable=None)
    cli("rollout 1.1.0 -l node-002 --yes", env=sim.env)
    cli("rollout 1.2.0 --yes", env=sim.env)  # from 1.0.0 on three hosts, from 1.1.0 on node-002
    assert set(sim.current().values()) == {"1.2.0"}
    summary = cli.json_lines("rollback --yes --json", env=sim.env)[-1]
    assert summary["status"] == "succeeded"
    assert sim.current() == {
        "node-001": "1.0.0",
        "node-002": "1.1.0",
        "node-003": "1.0.0",
        "node-004": "1.0.0",
    }
    moves = {m["host"]: (m["from"], m["to"], m["direction"]) for m in summary["moves"]}
    assert moves == {
        "node-001": ("1.2.0", "1.0.0", "back"),
        "node-002": ("1.2.0", "1.1.0", "back"),
        "node-003": ("1.2.0", "1.0.0", "back"),
        "node-004": ("1.2.0", "1.0.0", "back"),
    }


def test_a_rollback_during_a_freeze_runs_and_fleetctl_audits_it(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=3, stages=ONE_WIDE_STAGE, max_unavailable=None)
    cli("rollout 1.1.0 --yes", env=sim.env)
    cli("freeze on --reason 'INC-43: rollback everything'", env=sim.env)
    assert [a["action"] for a in cli.json("audit --json", env=sim.env)["audit"]] == ["freeze.on"]
    summary = cli.json_lines("rollback --yes --reason 'revert 1.1.0' --json", env=sim.env)[-1]
    assert summary["status"] == "succeeded" and set(sim.current().values()) == {"1.0.0"}
    assert cli.json("freeze status --json", env=sim.env)["frozen"] is True  # it ran anyway
    audit = cli.json("audit --json", env=sim.env)["audit"]
    entry = next(a for a in audit if a["action"] == "rollback.during_freeze")
    assert (entry["subject"], entry["reason"], entry["actor"]) == (summary["run"], "revert 1.1.0", "tester")
    assert entry["details"]["freezes"][0]["reason"] == "INC-43: rollback everything"


def test_the_final_health_check_failing_a_host(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(nodes=3, stages=ONE_WIDE_STAGE, max_unavailable=None)
    cli("rollout 1.1.0 --yes", env=sim.env)
    # node-002's health endpoint fails once it runs 1.0.0 again (its controller still answers /version)
    stub = HealthStub(sim, "node-002", "1.0.0", b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    try:
        result = cli("rollback --yes --json", env=sim.env, code=1)
        text = cli("status", env=sim.env).stdout
    finally:
        stub.close()
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "failed"
    [failed] = summary["failed"]
    assert failed["host"] == "node-002" and failed["error"].startswith("health after rollback:")
    assert "500" in failed["error"]
    assert sorted(summary["succeeded"]) == ["node-001", "node-003"]
    assert set(sim.current().values()) == {"1.0.0"}  # rolled back on disk; its health is what failed
    assert "--retry-failed" in (summary["reason"] or "")
    assert "node-002: health after rollback:" in text


def test_a_rollback_supersedes_a_paused_rollout(make_sim: Callable[..., Sim], cli: Cli) -> None:
    """After a rollback, the rollout it reverted cannot be resumed by accident."""
    sim = make_sim(
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "3s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
        ]
    )
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="canary bake")
    cli("pause", env=sim.env)
    assert proc.wait(timeout=60) == 5  # stopped, not finished
    rollout_id = cli.json("status --json", env=sim.env)["run"]["id"]
    cli("rollback --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.0.0"}
    runs = {r["id"]: r for r in cli.json("runs --json", env=sim.env)["runs"]}
    assert runs[rollout_id]["status"] == "aborted" and "superseded by rollback" in runs[rollout_id]["reason"]
    assert "no paused or interrupted run" in cli("resume --yes", env=sim.env, code=2).stderr


def test_rollback_with_nothing_to_restore_still_ends_an_unfinished_rollout(sim: Sim, cli: Cli) -> None:
    """A rollout stopped before any host changed (killed early, or paused before its first batch) is not
    left resumable by an emergency `rollback`: a later `resume` must not push what the operator stopped."""
    from fleetctl import rollout as rollouts
    from fleetctl.context import FleetContext

    ctx = FleetContext(config_path=sim.config, env=sim.env)
    plan = rollouts.make_plan(ctx, "1.1.0")
    run = rollouts.start(ctx, plan, checks=[], checkpoints=[lambda *_: "stopped by the test"])
    assert run is not None and run.status == "paused"

    cli("rollback --yes", env=sim.env)  # nothing to restore: exit 0
    assert cli.json(f"status {run.id} --json", env=sim.env)["run"]["status"] == "aborted"
    cli("resume --yes", env=sim.env, code=2)  # nothing left to resume
    assert set(sim.current().values()) == {"1.0.0"}
