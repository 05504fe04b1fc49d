"""Issue 3: staged rollouts on the simulated fleet with real probes: stages, the hang caught at the canary,
a canary that hangs later, quarantine, pause/resume/abort, kill -9 then resume, the fleet lock."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Cli, Sim, fleetctl_proc, host_states, run_status, wait_for


def test_healthy_version_goes_through_every_stage(sim: Sim, cli: Cli) -> None:
    lines = cli.json_lines("rollout 1.1.0 --yes --json", env=sim.env)
    summary = lines[-1]
    assert summary["status"] == "succeeded" and sorted(summary["succeeded"]) == sim.nodes
    assert set(sim.current().values()) == {"1.1.0"}
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["kind"] == "rollout" and doc["run"]["status"] == "succeeded"
    assert doc["run"]["counts"] == {"done": 6}
    # stages ran in order: the canary's result came first, ring1's second
    order = [line["host"] for line in lines[:-1]]
    assert order[0] == "node-001" and order[1] == "node-002"
    assert all(h["probe_ms"] is not None for h in doc["hosts"])


def test_plan_json_is_deterministic_and_refuses_when_stale(sim: Sim, cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "plan.json"
    first = cli.json(f"plan 1.1.0 -o {out} --json", env=sim.env)
    assert first == cli.json("plan 1.1.0 --json", env=sim.env)
    assert [s["name"] for s in first["stages"]] == ["canary", "ring1", "rest"]
    assert sorted(h for s in first["stages"] for b in s["batches"] for h in b) == sim.nodes
    assert {"version", "fingerprint", "stages", "skipped"} <= set(first)
    sim.set_current("node-004", "1.2.0")
    cli("versions --refresh", env=sim.env)
    result = cli(f"rollout --plan {out} --yes", env=sim.env, code=2)
    assert "stale plan" in result.stderr
    assert sim.current()["node-001"] == "1.0.0"


def test_hang_is_caught_at_the_canary_rolled_back_and_quarantined(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(
        hang_after=3.0,
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "8s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": "50%", "bake": "1s"},
        ],
    )
    result = cli("rollout 2.0.0 --yes --json", env=sim.env, code=1)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "rolled_back" and "stage canary" in summary["reason"]
    assert set(sim.current().values()) == {"1.0.0"}
    assert "2.0.0" in sim.releases("node-001")  # the canary got it (and went back) ...
    assert all("2.0.0" not in sim.releases(n) for n in sim.nodes[1:])  # ... no other node ever did
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["stage"] == "canary"
    assert host_states(doc)["node-001"] == "rolled_back"
    assert "no answer" in next(h["error"] for h in doc["hosts"] if h["host"] == "node-001")
    assert [q["version"] for q in cli.json("quarantine list --json", env=sim.env)["quarantine"]] == ["2.0.0"]
    again = cli("rollout 2.0.0 --yes", env=sim.env, code=3)
    assert "quarantined" in again.stderr
    cli("quarantine clear 2.0.0 --reason 'fixed upstream'", env=sim.env)
    assert cli.json("quarantine list --json", env=sim.env)["quarantine"] == []


def test_canary_that_hangs_during_ring1_bake_stops_the_run(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        hang_after=8.0,
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "1s", "max_failures": 0},
            {"name": "ring1", "hosts": "ring1", "batch": "100%", "bake": "20s"},
            {"name": "rest", "hosts": "all", "batch": "100%", "bake": "1s"},
        ],
    )
    result = cli("rollout 2.0.0 --yes --json", env=sim.env, code=1)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "rolled_back"
    assert summary["reason"].startswith("stage canary:"), summary  # the canary's own budget tripped ...
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["stage"] == "ring1"  # ... while the run was in ring1
    errors = {h["host"]: h["error"] or "" for h in doc["hosts"]}
    assert errors["node-001"].startswith("health gate:"), errors  # failed by a bake's probes ...
    assert "2.0.0" in sim.releases("node-002")  # ... after ring1's batch: so during ring1's bake
    assert not errors["node-002"].startswith("health gate"), errors  # and the canary, not ring1, failed it
    assert set(sim.current().values()) == {"1.0.0"}
    rest = [n for n in sim.nodes if n not in ("node-001", "node-002")]
    assert all("2.0.0" not in sim.releases(n) for n in rest)


def test_on_failure_halt_leaves_hosts_for_a_human(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        hang_after=2.0,
        on_failure="halt",
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "6s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": "100%", "bake": "1s"},
        ],
    )
    cli("rollout 2.0.0 --yes", env=sim.env, code=1)
    assert cli.json("status --json", env=sim.env)["run"]["status"] == "halted"
    assert sim.current()["node-001"] == "2.0.0"
    assert cli.json("quarantine list --json", env=sim.env)["quarantine"] == []


def test_pause_then_resume(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "3s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
        ]
    )
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="canary bake")
    cli("pause", env=sim.env)  # during the canary's bake: it pauses before the next batch
    assert proc.wait(timeout=120) == 5, proc.stderr.read() if proc.stderr else ""  # stopped, not finished
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["status"] == "paused" and doc["run"]["reason"] == "paused by request"
    assert sim.current()["node-001"] == "1.1.0" and sim.current()["node-006"] == "1.0.0"
    cli("resume --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}
    assert cli.json("status --json", env=sim.env)["run"]["status"] == "succeeded"


def test_abort_cancels_and_applies_on_failure(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "60s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
        ]
    )
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="canary bake")
    cli("abort", env=sim.env)
    assert proc.wait(timeout=60) == 1  # a hang guard: the bake alone is 60 s
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["status"] == "aborted" and doc["run"]["stage"] == "canary"
    assert all("1.1.0" not in sim.releases(n) for n in sim.nodes[1:]), "the abort let a later batch run"
    assert set(sim.current().values()) == {"1.0.0"}  # on_failure: rollback reverted the canary
    assert cli.json("quarantine list --json", env=sim.env)["quarantine"] == []  # an abort is no verdict


def test_kill_9_then_resume_updates_every_host_once(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "0s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": 2, "bake": "0s"},
        ],
        max_unavailable=None,
    )
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)

    def mid_rest_batch() -> bool:
        states = host_states(run_status(sim))
        return states.get("node-001") == "done" and "updating" in states.values()

    wait_for(mid_rest_batch, what="a rest batch in flight")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["status"] == "interrupted"  # running, but its holder is dead
    cli("resume --yes", env=sim.env)  # at once: the dead process's Ansible is ended first
    from fleetctl.sim.fleet import server_status

    assert set(sim.current().values()) == {"1.1.0"}
    # Ansible's own per-host changes (the node's restart count), not the ledger that skips repeats;
    # a node killed between its switch and its restart may show 0, the disk check covers it
    restarted = {n: s["restarts"] for n, s in server_status(sim.dir).items()}
    assert all(n <= 1 for n in restarted.values()), f"a host was updated twice: {restarted}"
    versions = {h["host"]: h["version"] for h in cli.json("versions --json", env=sim.env)["hosts"]}
    assert versions == sim.current()
    changes = cli.json("history --json", env=sim.env)["changes"]
    to_new = [c["host"] for c in changes if c["to"] == "1.1.0"]
    assert sorted(to_new) == sim.nodes, "every host changed to 1.1.0 exactly once"
    assert cli.json("status --json", env=sim.env)["run"]["status"] == "succeeded"


def test_second_rollout_exits_4_naming_the_holder(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        stages=[{"name": "canary", "hosts": "canary", "batch": 1, "bake": "30s", "max_failures": 0}]
    )
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="first run to bake")
    before = {n: (sim.current()[n], sim.releases(n)) for n in sim.nodes}
    result = cli("rollout 1.2.0 -l canary --yes", env=sim.env, code=4)
    assert "another run holds the fleet lock" in result.stderr
    assert f"pid {proc.pid}" in result.stderr and "by tester" in result.stderr
    # refused: nothing on disk changed, and no run for 1.2.0 was journaled
    assert {n: (sim.current()[n], sim.releases(n)) for n in sim.nodes} == before
    assert [r["target"] for r in cli.json("runs --json", env=sim.env)["runs"]] == ["1.1.0"]
    proc.send_signal(signal.SIGTERM)  # SIGTERM is an interrupt: the run stops cleanly, resumable
    assert proc.wait(timeout=60) == 130
    assert cli.json("status --json", env=sim.env)["run"]["status"] == "interrupted"


@pytest.mark.parametrize("status", ["succeeded"])
def test_status_watch_follows_a_run_to_its_end(make_sim: Callable[..., Sim], cli: Cli, status: str) -> None:
    sim = make_sim(
        stages=[{"name": "canary", "hosts": "canary", "batch": 1, "bake": "2s", "max_failures": 0}]
    )
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: run_status(sim), what="run to exist")
    lines = cli.json_lines("status --watch --json", env=sim.env)
    assert proc.wait(timeout=60) == 0
    assert lines[-1]["run"]["status"] == status
    assert len(lines) >= 2  # it showed progress, not only the end


def test_playbook_probe_gates_through_ansible(make_sim: Callable[..., Sim], cli: Cli) -> None:
    """The `playbook` probe kind runs health.yml through ansible-runner: it passes a healthy build and
    fails the hanging one."""
    sim = make_sim(
        hang_after=1.0,
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "4s", "max_failures": 0},
        ],
    )
    sim.write_config(
        health={
            "interval": "1s",
            "failures_to_fail": 2,
            "probes": [{"playbook": "health.yml", "timeout": "2s"}],
        }
    )
    assert cli.json_lines("rollout 1.1.0 --yes --json", env=sim.env)[-1]["status"] == "succeeded"
    result = cli("rollout 2.0.0 --yes --json", env=sim.env, code=1)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "rolled_back"
    doc = cli.json("status --json", env=sim.env)
    assert "playbook probe" in (doc["hosts"][0]["error"] or "")
    assert sim.current()["node-001"] == "1.1.0"


def test_a_nonzero_run_budget_tolerates_a_failure_and_halts_at_the_next(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    """README: a budget of N failed hosts halts at failure N+1 (here 1: the second failed host halts)."""
    sim = make_sim(
        nodes=5,
        on_failure="halt",
        max_failures=1,
        max_unavailable=None,
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "0s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": 1, "bake": "0s", "max_failures": 10},
        ],
    )
    for node in sim.nodes[1:]:  # every host after the canary fails its update task
        sim.host_vars(node, hc_artifact_checksum="sha256:" + "0" * 64)
    result = cli("rollout 1.1.0 --yes --json", env=sim.env, code=1)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "halted" and summary["reason"].startswith("run: 2 failed host(s), budget 1")
    doc = cli.json("status --json", env=sim.env)
    failed = sorted(h["host"] for h in doc["hosts"] if h["state"] == "failed")
    assert len(failed) == 2 and all("checksum" in (h["error"] or "") for h in doc["failed"])
    assert sim.current()["node-001"] == "1.1.0"  # on_failure: halt leaves the canary for a human
    untouched = [n for n in sim.nodes[1:] if n not in failed]
    assert len(untouched) == 2 and all("1.1.0" not in sim.releases(n) for n in untouched)


def test_ctrl_c_exits_130_and_resume_finishes_the_run(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        nodes=3,
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "10s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
        ],
    )
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="canary bake")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, proc.stderr.read() if proc.stderr else ""
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["status"] == "interrupted"
    assert sim.current() == {"node-001": "1.1.0", "node-002": "1.0.0", "node-003": "1.0.0"}
    cli("resume --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}
    assert cli.json("status --json", env=sim.env)["run"]["status"] == "succeeded"
