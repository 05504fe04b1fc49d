"""Issue 6 end to end: staged rollouts and rollbacks over real sshd hosts in network namespaces, through
Ansible's `ssh` and `paramiko` connections; host keys checked; a cut link counted as unreachable;
fleetctl's own paramiko path (`versions --refresh --via ssh`, ssh probes).

The mode that ran (netns, or the loopback fallback and why) is printed; nothing is skipped silently."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from fleetctl.sim import fleet as simfleet
from tests.conftest import Cli, Sim, fast_policy

pytestmark = pytest.mark.ssh

HEALTH = {
    "interval": "1s",
    "failures_to_fail": 2,
    "probes": [{"http": "http://{{ ansible_host }}:{{ hc_port }}/health", "timeout": "2s"}],
}


def say(request: pytest.FixtureRequest, text: str) -> None:
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[ssh] {text}", flush=True)
    request.node.user_properties.append(("ssh", text))


@pytest.fixture
def ssh_sim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    d = tmp_path_factory.mktemp("ssh") / "sim"
    info = simfleet.create(d, 4, 20.0, ssh=True)
    try:
        say(
            request,
            f"mode={info.ssh_mode}"
            + (f" (fallback: {info.fallback_reason})" if info.fallback_reason else ""),
        )
        sim = Sim(info)
        sim.write_config(rollout=fast_policy(), health=HEALTH)
        yield sim
    finally:
        simfleet.stop(d)


@pytest.mark.parametrize("connection", ["ssh", "paramiko"])
def test_staged_rollout_and_rollback_over_a_real_connection(ssh_sim: Sim, cli: Cli, connection: str) -> None:
    simfleet.set_connection(ssh_sim.dir, connection)
    logins_before = _logins(ssh_sim)
    summary = cli.json_lines("rollout 1.1.0 --yes --json", env=ssh_sim.env)[-1]
    assert summary["status"] == "succeeded", summary
    assert set(ssh_sim.current().values()) == {"1.1.0"}
    assert _logins(ssh_sim) > logins_before  # it really went through sshd
    doc = cli.json("versions --refresh --json", env=ssh_sim.env)
    assert doc["counts"] == {"1.1.0": 4}
    back = cli.json_lines("rollback --yes --json", env=ssh_sim.env)[-1]
    assert back["status"] == "succeeded" and sorted(back["succeeded"]) == ssh_sim.nodes
    assert set(ssh_sim.current().values()) == {"1.0.0"}


def test_fleetctl_own_ssh_reads_versions(ssh_sim: Sim, cli: Cli) -> None:
    ssh_sim.set_current("node-003", "1.2.0")
    doc = cli.json("versions --refresh --via ssh --json", env=ssh_sim.env)
    assert {h["host"]: h["version"] for h in doc["hosts"]} == ssh_sim.current()
    assert next(h for h in doc["hosts"] if h["host"] == "node-003")["source"] == "observed"


def test_changed_host_key_is_refused_before_anything_runs(ssh_sim: Sim, cli: Cli) -> None:
    hosts = simfleet.ssh_hosts(ssh_sim.dir)
    assert hosts is not None
    hosts.rotate_host_key("node-002")
    new_fp = hosts.host("node-002").host_key_fingerprint
    # fleetctl's own client names the host and the fingerprint, and exits 1 (a host could not be read)
    result = cli("versions --refresh --via ssh --json", env=ssh_sim.env, code=1)
    refused = {u["host"]: u["error"] for u in json.loads(result.stdout)["unreachable"]}
    assert list(refused) == ["node-002"]
    assert "CHANGED" in refused["node-002"] and new_fp in refused["node-002"]
    # Ansible (ssh connection) refuses it too: the host fails, its node is untouched
    for connection in ("ssh", "paramiko"):
        simfleet.set_connection(ssh_sim.dir, connection)
        lines = cli.json_lines("rollout 1.2.0 -l node-002 --yes --json", env=ssh_sim.env, code=1)
        host = next(line for line in lines if line.get("host") == "node-002")
        assert host["status"] in ("unreachable", "failed")
        assert ssh_sim.current()["node-002"] == "1.0.0" and "1.2.0" not in ssh_sim.releases("node-002")
        cli("quarantine clear 1.2.0 --reason 'host key test'", env=ssh_sim.env, code=None)


def test_a_cut_link_is_unreachable_within_the_timeout_and_the_budget_decides(ssh_sim: Sim, cli: Cli) -> None:
    hosts = simfleet.ssh_hosts(ssh_sim.dir)
    assert hosts is not None
    if ssh_sim.info.ssh_mode != "netns":
        pytest.fail(
            f"links can only be cut in netns mode; this machine fell back: {ssh_sim.info.fallback_reason}"
        )
    ssh_sim.write_config(
        rollout=fast_policy(
            max_failures=1,
            on_failure="halt",
            stages=[{"name": "all", "hosts": "all", "batch": "100%", "bake": "0s"}],
        )
    )
    hosts.cut_link("node-004")
    try:
        started = time.monotonic()
        lines = cli.json_lines("rollout 1.1.0 --yes --json", env=ssh_sim.env)  # 1 failure <= budget 1: exit 0
        elapsed = time.monotonic() - started
    finally:
        hosts.restore_link("node-004")
    cut = next(line for line in lines if line.get("host") == "node-004")
    assert cut["status"] == "unreachable", cut
    assert elapsed < 90, "a cut link hung the run"  # connect timeout is seconds, not minutes
    summary = lines[-1]
    assert summary["status"] == "succeeded" and [f["host"] for f in summary["failed"]] == ["node-004"]
    current = ssh_sim.current()
    assert current.pop("node-004") == "1.0.0" and set(current.values()) == {"1.1.0"}


def test_ssh_probe_through_fleetctls_client(ssh_sim: Sim, cli: Cli) -> None:
    ssh_sim.write_config(
        rollout=fast_policy(stages=[{"name": "canary", "hosts": "canary", "batch": 1, "bake": "2s"}]),
        health={
            "interval": "1s",
            "failures_to_fail": 2,
            "probes": [{"ssh": "test -L {{ hc_root }}/current", "timeout": "5s"}],
        },
    )
    summary = cli.json_lines("rollout 1.1.0 --yes --json", env=ssh_sim.env)[-1]
    assert summary["status"] == "succeeded"
    status = cli.json("status --json", env=ssh_sim.env)
    assert status["hosts"][0]["probe_ms"] is not None  # the ssh probe ran and was timed


def _logins(sim: Sim) -> int:
    return sum(p.read_text().count("Accepted publickey") for p in (sim.dir / "ssh").rglob("sshd.log"))
