"""The simulated fleet over real SSH (`fleetctl sim up --ssh`): controllers inside the hosts' network
namespaces, Ansible over `ssh` and `paramiko` with host keys checked, and nothing left behind.

The SSH mode that ran (netns, or the loopback fallback and why) is printed to the terminal and recorded in
every test's user_properties (junit xml); nothing is skipped silently.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from fleetctl.context import FleetContext
from fleetctl.errors import SimError
from fleetctl.executor import Execution
from fleetctl.sim import artifacts, fleet, registry
from fleetctl.sim.sshd import ssh_bin, sshd_bin
from tests.conftest import fallback, need, say

pytestmark = pytest.mark.ssh

NODES = 3


@pytest.fixture(scope="module")
def ssh_sim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> fleet.SimInfo:
    """A 3-node ssh sim made by `fleetctl sim up --ssh` in a subprocess that has exited: the SSH hosts
    must outlive it."""
    need(sshd_bin() is not None and ssh_bin() is not None, "the SSH tests need OpenSSH (sshd and ssh)")
    d = tmp_path_factory.mktemp("simssh") / "sim"
    started = time.monotonic()
    cp = subprocess.run(
        [sys.executable, "-m", "fleetctl", "sim", "up", "--ssh", "-n", str(NODES), "--dir", str(d), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    request.addfinalizer(lambda: fleet.stop(d))
    assert cp.returncode == 0, cp.stderr
    took = time.monotonic() - started
    out = json.loads(cp.stdout)
    info = fleet.load(d)
    assert out["ssh_mode"] == info.ssh_mode and out["connection"] == "ssh"
    if info.ssh_mode == "netns":
        say(
            request,
            tag="sim --ssh",
            text=f"ssh_mode=netns: {NODES} nodes in network namespaces, `sim up --ssh` took {took:.2f}s",
        )
    else:
        say(
            request,
            tag="sim --ssh",
            text=f"ssh_mode={info.ssh_mode} (FALLBACK, no namespaces): {info.fallback_reason}",
        )
        fallback(f"ssh sim without network namespaces: {info.fallback_reason}")
    return info


@pytest.fixture(autouse=True)
def _record_mode(request: pytest.FixtureRequest, ssh_sim: fleet.SimInfo) -> None:
    request.node.user_properties.append(("ssh_mode", ssh_sim.ssh_mode))
    if ssh_sim.fallback_reason:
        request.node.user_properties.append(("ssh_fallback_reason", ssh_sim.fallback_reason))
        print(f"ssh_mode={ssh_sim.ssh_mode}: {ssh_sim.fallback_reason}")


def _run(info: fleet.SimInfo, playbook: str, hosts: list[str], **extravars: str) -> Execution:
    return FleetContext(config_path=info.config).executor().run(playbook, hosts, extravars=extravars)


def _logins(info: fleet.SimInfo) -> dict[str, int]:
    """Successful SSH logins per node so far, from its sshd log."""
    return {
        n.name: (info.ssh_dir / n.name / "sshd.log").read_text().count("Accepted publickey")
        for n in info.nodes
    }


def _get(address: str, port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://{address}:{port}{path}", timeout=3) as resp:
        return str(resp.read().decode())


def test_nodes_are_ssh_hosts_with_controllers_in_their_namespaces(ssh_sim: fleet.SimInfo) -> None:
    hosts = fleet.ssh_hosts(ssh_sim.dir)
    assert hosts is not None and hosts.detached and hosts.mode == ssh_sim.ssh_mode
    meta = json.loads((ssh_sim.dir / "sim.json").read_text())
    assert meta["ssh_mode"] == ssh_sim.ssh_mode and "fallback_reason" in meta
    for node in ssh_sim.nodes:
        h = hosts.host(node.name)
        assert node.address == h.address and node.netns == h.namespace
        assert _get(node.address, ssh_sim.port, "/health") == "ok"
        assert _get(node.address, ssh_sim.port, "/version") == "1.0.0"
    assert all(s.healthy for s in fleet.status(ssh_sim.dir))
    if ssh_sim.ssh_mode == "netns":
        assert ssh_sim.port == fleet.SSH_PORT
        for node in ssh_sim.nodes:
            assert node.address.startswith(("198.18.", "198.19.")) and node.netns
            # the controller's socket lives in the node's namespace, next to its sshd
            listening = subprocess.run(
                ["ip", "netns", "exec", node.netns, "ss", "-ltnH"], capture_output=True, text=True
            ).stdout
            assert f"{node.address}:{ssh_sim.port} " in listening and f"{node.address}:22 " in listening
    else:
        assert ssh_sim.fallback_reason and all(n.netns is None for n in ssh_sim.nodes)


def test_inventory_and_config_reach_nodes_over_ssh(ssh_sim: fleet.SimInfo) -> None:
    inv = yaml.safe_load(ssh_sim.inventory.read_text())["all"]
    assert "ansible_connection" not in inv["vars"]
    for node in ssh_sim.nodes:
        hv = inv["hosts"][node.name]
        assert hv["ansible_connection"] == "ssh" and hv["ansible_host"] == node.address
        assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]
        assert f"UserKnownHostsFile={ssh_sim.ssh_dir / 'known_hosts'}" in hv["ansible_ssh_common_args"]
        assert Path(hv["ansible_python_interpreter"]).is_file()
    cfg = FleetContext(config_path=ssh_sim.config).config
    assert cfg.env["HOME"] == str(ssh_sim.ssh_dir / "home")
    assert Path(cfg.env["ANSIBLE_SSH_CONTROL_PATH_DIR"]).is_dir()
    assert cfg.ssh.known_hosts == ssh_sim.ssh_dir / "known_hosts" and cfg.ssh.user
    assert cfg.ssh.connect_timeout == 5 and cfg.ssh.command_timeout == 10


@pytest.mark.parametrize("connection", ["ssh", "paramiko"])
def test_facts_over_each_connection(ssh_sim: fleet.SimInfo, connection: str) -> None:
    info = fleet.set_connection(ssh_sim.dir, connection)
    try:
        before = _logins(info)
        started = time.monotonic()
        res = _run(info, "facts.yml", [n.name for n in info.nodes])
        print(f"facts.yml over {connection}: {time.monotonic() - started:.2f}s")
        assert res.status == "successful", res.results
        assert {h: (r.status, r.version) for h, r in res.results.items()} == {
            n.name: ("ok", "1.0.0") for n in info.nodes
        }
        after = _logins(info)
        if connection == "paramiko":  # no connection reuse across runs: every node logged in again
            assert all(after[n] > before[n] for n in after), (before, after)
        else:  # a new ControlPersist master, or the one from an earlier run in this module
            assert all(after[n] >= 2 for n in after), after  # 1 is the readiness check
    finally:
        fleet.set_connection(ssh_sim.dir, "ssh")


def test_update_over_ssh_flips_current_on_disk(ssh_sim: fleet.SimInfo) -> None:
    node = ssh_sim.nodes[1]
    res = _run(ssh_sim, "update.yml", [node.name], hc_version="1.1.0")
    assert res.status == "successful", res.results
    r = res.results[node.name]
    assert (r.status, r.version, r.previous) == ("ok", "1.1.0", "1.0.0")
    assert os.readlink(node.root / "current") == "releases/1.1.0"
    assert _get(node.address, ssh_sim.port, "/version") == "1.1.0"
    others = [n for n in ssh_sim.nodes if n is not node]
    assert [artifacts.current_version(n.root) for n in others] == ["1.0.0"] * len(others)


def test_cut_link_through_the_sim_handle(ssh_sim: fleet.SimInfo) -> None:
    hosts = fleet.ssh_hosts(ssh_sim.dir)
    assert hosts is not None
    node = ssh_sim.nodes[0]
    if ssh_sim.ssh_mode != "netns":
        with pytest.raises(SimError, match="loopback"):
            hosts.cut_link(node.name)
        return
    hosts.cut_link(node.name)
    try:
        healthy = {s.name: s.healthy for s in fleet.status(ssh_sim.dir)}
        assert healthy == {n.name: n is not node for n in ssh_sim.nodes}
    finally:
        hosts.restore_link(node.name)
    assert all(s.healthy for s in fleet.status(ssh_sim.dir))


@pytest.mark.parametrize("connection", ["ssh", "paramiko"])
def test_changed_or_unknown_host_key_is_refused_at_once(
    ssh_sim: fleet.SimInfo, connection: str, tmp_path: Path
) -> None:
    """A rotated host key and a host missing from known_hosts make the node unreachable within seconds,
    over both connections: never a prompt (Ansible's paramiko connection prompts on an unknown host unless
    ANSIBLE_USE_PERSISTENT_CONNECTIONS is set, and under ansible-runner that prompt hangs for ever)."""
    hosts = fleet.ssh_hosts(ssh_sim.dir)
    assert hosts is not None
    changed, unknown, fine = (n.name for n in ssh_sim.nodes)
    info = fleet.set_connection(ssh_sim.dir, connection)
    hosts.rotate_host_key(changed)
    for kh in (hosts.known_hosts, hosts.home / ".ssh" / "known_hosts"):
        lines = kh.read_text().splitlines(keepends=True)
        kh.write_text(
            "".join(ln for ln in lines if not ln.startswith(hosts.host(unknown).known_hosts_name + " "))
        )
    try:
        ex = FleetContext(config_path=info.config).executor()
        # a hang fails the test, not the suite; a fresh ControlPersist dir: a master from an earlier run
        # would be reused without looking at known_hosts again
        env = {**ex.settings.envvars, "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp")}
        ex.settings = dataclasses.replace(ex.settings, timeout=60, envvars=env)
        res = ex.run("facts.yml", [changed, unknown, fine])  # the executor's 60 s timeout guards a hang
        print(connection, {h: (r.status, r.error) for h, r in res.results.items()})
        assert res.results[fine].status == "ok"
        assert res.results[changed].status == "unreachable"
        assert res.results[unknown].status == "unreachable"
        if connection == "paramiko":
            assert "mismatch" in (res.results[changed].error or "")
            assert "authenticity" in (res.results[unknown].error or "")
        else:
            assert "IDENTIFICATION HAS CHANGED" in (res.results[changed].error or "")
    finally:
        hosts.trust_host_key(changed)  # known_hosts again holds every host's current key
        fleet.set_connection(ssh_sim.dir, "ssh")
    res = _run(ssh_sim, "facts.yml", [changed, unknown])
    assert {r.status for r in res.results.values()} == {"ok"}, res.results


def test_stop_leaves_nothing_behind_and_up_starts_it_again(tmp_path: Path) -> None:
    """A sim of its own: stopping the module's shared one would break every test that runs after."""
    ssh_sim = fleet.create(tmp_path / "sim", 3, ssh=True)
    try:
        _stop_then_start_again(ssh_sim)
    finally:
        fleet.stop(ssh_sim.dir)


def _stop_then_start_again(ssh_sim: fleet.SimInfo) -> None:
    hosts = fleet.ssh_hosts(ssh_sim.dir)
    assert hosts is not None
    # a host key rotated through a handle from this process: its new sshd must go too
    old_pid = hosts.hosts[2].sshd_pid
    hosts.rotate_host_key(hosts.hosts[2])
    assert hosts.hosts[2].sshd_pid != old_pid and not _alive(old_pid)
    refused = subprocess.run(
        hosts.ssh_argv(hosts.hosts[2], "true"), capture_output=True, text=True, timeout=15
    )
    assert refused.returncode != 0 and "Host key verification failed" in refused.stderr
    _stop_and_check(ssh_sim.dir)

    # a stopped ssh sim starts again as an ssh sim, with new hosts; nodes keep their versions
    versions = {n.name: artifacts.current_version(n.root) for n in ssh_sim.nodes}
    again = fleet.create(ssh_sim.dir)
    try:
        assert again.ssh_mode == ssh_sim.ssh_mode and again.connection == "ssh"
        assert all(s.healthy for s in fleet.status(again.dir))
        assert {s.name: s.version for s in fleet.status(again.dir)} == versions
        res = _run(again, "facts.yml", [again.nodes[0].name])
        assert res.results[again.nodes[0].name].status == "ok", res.results
    finally:
        _stop_and_check(again.dir)


def _stop_and_check(d: Path) -> None:
    """fleet.stop(d) leaves no server, sshd, namespace, veth or registry record of the sim behind."""
    hosts = fleet.ssh_hosts(d)
    assert hosts is not None
    server_pid = fleet.is_running(d)
    assert server_pid
    sshd_pids = [h.sshd_pid for h in hosts.hosts]
    assert all(_alive(p) for p in sshd_pids)
    namespaces = [h.namespace for h in hosts.hosts if h.namespace]
    veths = [h.veth_host for h in hosts.hosts if h.veth_host]

    started = time.monotonic()
    assert fleet.stop(d) == server_pid
    print(f"fleet.stop: {time.monotonic() - started:.2f}s")

    assert not _alive(server_pid) and fleet.is_running(d) is None
    for pid in sshd_pids:
        assert not _alive(pid), f"sshd {pid} survived fleet.stop"
    assert not _pids_with(str(d / "ssh"), "sshd"), "an sshd of the sim survived"
    assert not _pids_with(str(d), "fleetctl.sim.server"), "the sim server survived"
    assert fleet.ssh_hosts(d) is None
    assert not (registry.registry_dir() / f"{hosts.run_id}.json").exists()
    if namespaces:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert not [ns for ns in namespaces if ns in listed]
        assert not [v for v in veths if v in links]
    assert fleet.stop(d) is None  # idempotent


def test_loopback_fallback_still_works(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The fallback (forced here) runs sshd and the controllers on loopback addresses and says why."""
    info = fleet.create(tmp_path / "lo", 1, ssh=True, netns=False)
    try:
        request.node.user_properties.append(("ssh_forced_mode", info.ssh_mode))
        assert info.ssh_mode == "loopback" and "netns=False" in (info.fallback_reason or "")
        assert info.nodes[0].address.startswith("127.78.") and info.nodes[0].netns is None
        assert json.loads((info.dir / "sim.json").read_text())["fallback_reason"] == info.fallback_reason
        res = _run(info, "facts.yml", [info.nodes[0].name])
        assert (res.results[info.nodes[0].name].status, res.results[info.nodes[0].name].version) == (
            "ok",
            "1.0.0",
        )
        assert _logins(info)[info.nodes[0].name] >= 2
    finally:
        fleet.stop(info.dir)
    assert fleet.ssh_hosts(info.dir) is None


def test_server_names_a_missing_namespace(tmp_path: Path) -> None:
    info = fleet.create(tmp_path / "s", 1)
    fleet.stop(info.dir)
    meta = json.loads((info.dir / "sim.json").read_text())
    meta["nodes"][0]["netns"] = "fc-no-such-namespace"
    (info.dir / "sim.json").write_text(json.dumps(meta))
    with pytest.raises(SimError, match="fc-no-such-namespace"):
        fleet.create(info.dir)
    assert fleet.is_running(info.dir) is None


def test_bad_ssh_arguments(tmp_path: Path) -> None:
    with pytest.raises(SimError, match="at most"):
        fleet.create(tmp_path / "big", fleet.MAX_SSH_NODES + 1, ssh=True)
    with pytest.raises(SimError, match="connection"):
        fleet.create(tmp_path / "conn", 1, ssh=True, connection="telnet")
    assert not (tmp_path / "big").exists() and not (tmp_path / "conn").exists()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _pids_with(text: str, program: str) -> list[int]:
    """Live `program` processes whose command line mentions `text` (sshd -f <dir>/<node>/sshd_config)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and program in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found
