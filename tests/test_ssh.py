"""Issue 6 end to end: staged rollouts and rollbacks over real sshd hosts in network namespaces, through
Ansible's `ssh` and `paramiko` connections; host keys checked; a cut link counted as unreachable;
fleetctl's own paramiko path (`versions --refresh --via ssh`, ssh probes).

The mode that ran (netns, or the loopback fallback and why) is printed; nothing is skipped silently."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetctl.config import Probe, SshConfig
from fleetctl.health import Prober
from fleetctl.inventory import Fleet, load_inventory
from fleetctl.sim import fleet as simfleet
from fleetctl.ssh import SshClient, probe_runner, read_versions, version_of
from fleetctl.units import BadNodeVersion
from tests.conftest import Cli, Sim, fast_policy, need

NEEDS_OPENSSH = "the SSH tests need OpenSSH (sshd and ssh): apt-get install openssh-server openssh-client"


def need_openssh() -> None:
    """Skip with the reason when OpenSSH is missing; under CI (CI set) fail instead: CI runs them all."""
    from fleetctl.sim.sshd import ssh_bin, sshd_bin

    need(sshd_bin() is not None and ssh_bin() is not None, NEEDS_OPENSSH)


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
    need_openssh()
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
    if ssh_sim.info.ssh_mode != "netns":  # skipped locally with the reason; a failure under CI
        need(
            False,
            f"links can only be cut in netns mode; this machine fell back: {ssh_sim.info.fallback_reason}",
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


# --- fleetctl's own client against one real sshd (no fleet): deadlines, output cap, targets, probes ----


@pytest.fixture(scope="module")
def sshd_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real sshd on loopback; these tests only run commands on it (nothing is changed)."""
    from fleetctl.sim.sshhosts import create_ssh_hosts

    need_openssh()
    hs = create_ssh_hosts(tmp_path_factory.mktemp("sshd"), ["solo"], netns=False)
    try:
        yield hs
    finally:
        hs.close()


def _client(hs: Any, command_timeout: float = 30.0) -> SshClient:
    cfg = SshConfig(
        known_hosts=hs.known_hosts,
        user=hs.user,
        key=hs.client_key,
        connect_timeout=5.0,
        command_timeout=command_timeout,
    )
    return SshClient(cfg)


def _fleet(tmp_path: Path, hs: Any, **vars: Any) -> Fleet:
    h = hs.hosts[0]
    inv = tmp_path / "inventory.yml"
    host = {"ansible_host": h.address, "ansible_port": h.port, **vars}
    inv.write_text(json.dumps({"all": {"vars": {"sshd_addr": h.address}, "hosts": {"solo": host}}}))
    return load_inventory([inv])


def _bounded(call: Callable[[], Any], limit: float = 120.0) -> Any:
    """Run `call` in a thread: a hang fails the test instead of freezing the suite (not a speed check)."""
    box: list[Any] = []
    worker = threading.Thread(target=lambda: box.append(call()), daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), "the command was not ended by its deadline"
    return box[0]


def test_a_command_that_trickles_output_fails_at_its_total_deadline(sshd_host: Any, tmp_path: Path) -> None:
    """Each read gets output within 0.5s, so a per-read timeout never fires: the total deadline must."""
    client = _client(sshd_host, command_timeout=3.0)
    target = client.targets(_fleet(tmp_path, sshd_host), ["solo"])[0]
    result = _bounded(lambda: client.run(target, "while true; do echo x; sleep 0.5; done"))
    assert not result.ok and result.exit_status is None
    assert "timed out after 3s" in (result.error or "") and "did not finish" in (result.error or "")
    assert not result.unreachable  # it connected; the command is what hung


def test_a_command_that_floods_output_fails_as_too_large(sshd_host: Any, tmp_path: Path) -> None:
    client = _client(sshd_host)
    target = client.targets(_fleet(tmp_path, sshd_host), ["solo"])[0]
    result = _bounded(lambda: client.run(target, "yes | head -c 1000000"))
    assert not result.ok and "output too large" in (result.error or "")
    small = client.run(target, "printf 'a%.0s' $(seq 1000); echo err >&2")
    assert small.ok and small.stdout == "a" * 1000 and small.stderr == "err\n"


def test_templated_ansible_host_and_port_are_rendered_per_host(sshd_host: Any, tmp_path: Path) -> None:
    h = sshd_host.hosts[0]
    fleet = _fleet(
        tmp_path,
        sshd_host,
        ansible_host="{{ sshd_addr }}",
        ansible_port="{{ base_port | int + 1 }}",
        base_port=h.port - 1,
    )
    client = _client(sshd_host)
    [target] = client.targets(fleet, ["solo"])
    assert (target.address, target.port, target.error) == (h.address, h.port, None)
    result = client.run(target, "echo hello")
    assert result.ok and result.stdout == "hello\n"


@pytest.mark.parametrize(
    "vars, text",
    [
        ({"ansible_port": "{{ nowhere }}"}, "ansible_port"),
        ({"ansible_port": "ssh"}, "not a port number"),
        ({"ansible_port": 70000}, "not a port number"),
    ],
)
def test_a_target_the_inventory_cannot_place_fails_that_host_only(
    sshd_host: Any, tmp_path: Path, vars: dict[str, Any], text: str
) -> None:
    client = _client(sshd_host)
    [target] = client.targets(_fleet(tmp_path, sshd_host, **vars), ["solo"])
    result = client.run(target, "true")
    assert not result.ok and text in (result.error or "") and "solo" in (result.error or "")


def test_versions_via_ssh_refuse_a_release_named_with_a_template(sshd_host: Any, tmp_path: Path) -> None:
    """`current` pointing at a release dir named with Jinja is untrusted text: refused, never returned."""
    root = tmp_path / "hc"
    evil = root / "releases" / "{{ lookup('pipe', 'id') }}"
    evil.mkdir(parents=True)
    (root / "current").symlink_to(evil)
    client = _client(sshd_host)
    fleet = _fleet(tmp_path, sshd_host, hc_root=str(root))
    [result] = read_versions(client, fleet, ["solo"]).values()
    assert result.ok  # the node answered...
    with pytest.raises(BadNodeVersion, match="not a plain version"):
        version_of(result)  # ...with something that is not a version
    (root / "current").unlink()
    (root / "current").symlink_to(root / "releases" / "1.2.0")
    [good] = read_versions(client, fleet, ["solo"]).values()
    assert version_of(good) == "1.2.0"


def test_a_failing_ssh_probe_fails_the_host(sshd_host: Any, tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, sshd_host, hc_root=str(tmp_path / "absent"))
    runner = probe_runner(_client(sshd_host), fleet)
    failing = Probe(ssh="test -L {{ hc_root }}/current", timeout=10)
    [result] = Prober(fleet, [failing], ssh_runner=runner).round(["solo"]).values()
    assert not result.ok and result.error == "ssh `test -L {{ hc_root }}/current`: exit 1: "
    hanging = Probe(ssh="while true; do echo x; sleep 0.5; done", timeout=2)
    [hung] = _bounded(lambda: Prober(fleet, [hanging], ssh_runner=runner).round(["solo"])).values()
    assert not hung.ok and "timed out after 2s" in (hung.error or "")
    passing = Probe(ssh="test -d {{ hc_root | dirname }}", timeout=10)
    [ok] = Prober(fleet, [passing], ssh_runner=runner).round(["solo"]).values()
    assert ok.ok, ok.error
