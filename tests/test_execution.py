"""Issue 14, execution spread: `execution: {shards: N}` runs each batch as N parallel ansible-runner jobs
(round-robin slices) whose results reach the journal through the one on_result; a cancel stops them all.
Real ansible-runner on the simulated fleet (and on localhost for the cancel)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fleetctl.config import load_config
from fleetctl.errors import ConfigError
from fleetctl.execution import ShardedExecutor, slices
from fleetctl.executor import ExecutorSettings, HostResult
from fleetctl.orphans import MARKER, AnsibleGroup
from fleetctl.sim.sshd import ssh_bin, sshd_bin
from fleetctl.sim.sshhosts import SshHosts, create_ssh_hosts
from tests.conftest import Cli, Sim, closed_port, host_states, need, run_status, wait_for


def test_slices_are_round_robin() -> None:
    assert slices(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert slices(["a", "b"], 4) == [["a"], ["b"]]
    assert slices(["a", "a", "b"], 1) == [["a", "b"]]


def test_shards_must_be_a_positive_count(tmp_path: Path) -> None:
    (tmp_path / "inv.yml").write_text("all:\n  hosts:\n    h1:\n")
    cfg = tmp_path / "fleet.yml"
    cfg.write_text(yaml.safe_dump({"inventory": "inv.yml", "execution": {"shards": 0}}))
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert "shards" in info.value.message and "\n" not in info.value.message
    cfg.write_text(yaml.safe_dump({"inventory": "inv.yml", "execution": {"shards": 3}}))
    assert load_config(cfg).execution.shards == 3


def jobs(sim: Sim) -> list[str]:
    """The idents of the ansible-runner jobs that ran (their artifact directories)."""
    artifacts = sim.config.parent / ".fleetctl" / "runner" / "artifacts"
    return sorted(p.name for p in artifacts.iterdir())


def test_sharded_rollout_and_rollback_reach_every_node(make_sim: object, cli: Cli) -> None:
    one_batch = [{"name": "all", "hosts": "all", "batch": "100%", "bake": "0s"}]
    sim: Sim = make_sim(nodes=5, stages=one_batch, max_unavailable="100%")  # type: ignore[operator]
    sim.write_config(execution={"shards": 2})
    cli("rollout 1.1.0 --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}  # on disk, on every node
    assert set(host_states(run_status(sim)).values()) == {"done"}  # every slice's results journaled
    updates = [j for j in jobs(sim) if "-u" in j]
    assert len(updates) == 2 and updates[0].endswith("-s1") and updates[1].endswith("-s2"), jobs(sim)
    cli("rollback --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.0.0"}
    assert [j for j in jobs(sim) if "-rb" in j and j.endswith(("-s1", "-s2"))], jobs(sim)


SLEEP = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.command: sleep 60
"""


class Journal:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.cleared: list[str] = []
        self.lock = threading.Lock()

    def add(self, group: AnsibleGroup) -> None:
        with self.lock:
            self.added.append(group.marker)

    def update(self, group: AnsibleGroup) -> None:
        pass

    def clear(self, group: AnsibleGroup) -> None:
        with self.lock:
            self.cleared.append(group.marker)


def processes_with(markers: list[str]) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if any(f"{MARKER}={m}".encode() in env for m in markers):
            found.append(int(pid))
    return found


def test_cancel_stops_every_slice(tmp_path: Path) -> None:
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "sleep.yml").write_text(SLEEP)
    inv = tmp_path / "inv.yml"
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inv.write_text(yaml.safe_dump({"all": {"hosts": {f"h{i}": local for i in range(4)}}}))
    executor = ShardedExecutor(
        ExecutorSettings(inventory=[inv], playbooks=tmp_path / "pb", work_dir=tmp_path / "w"), 2
    )
    journal = Journal()
    executor.track(journal, "run-1")
    cancel = threading.Event()
    seen: list[tuple[str, str]] = []

    def on_result(r: HostResult) -> None:
        seen.append((r.host, threading.current_thread().name))

    timer = threading.Timer(3.0, cancel.set)  # mid-task: every host is in its 60 s sleep
    timer.start()
    try:
        run = executor.run(
            "sleep.yml", [f"h{i}" for i in range(4)], forks=4, cancel=cancel, on_result=on_result
        )
    finally:
        timer.cancel()
    assert run.cancelled
    assert {h: r.status for h, r in run.results.items()} == {f"h{i}": "cancelled" for i in range(4)}
    assert len(journal.added) == 2 and sorted(journal.added) == sorted(
        journal.cleared
    )  # two jobs, both ended
    assert processes_with(journal.added) == []  # no Ansible process of either slice is left
    assert {t for _, t in seen} == {threading.current_thread().name}  # results on the caller's thread


# -- execution nodes: real sshd hosts in network namespaces running `ansible-runner worker` ---------------
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def exec_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    need(sshd_bin() is not None and ssh_bin() is not None, "execution nodes need OpenSSH (sshd and ssh)")
    hosts = create_ssh_hosts(tmp_path_factory.mktemp("exec"), ["exec1", "exec2"])
    try:
        yield hosts
    finally:
        hosts.close()


def node_doc(hosts: SshHosts, name: str, runner: Path = VENV_BIN / "ansible-runner") -> dict[str, object]:
    h = hosts.host(name)
    return {
        "host": h.address,
        "port": h.port,
        "user": hosts.user,
        "key": str(hosts.client_key),
        "known_hosts": str(hosts.known_hosts),
        "ansible_runner": str(runner),
        "python": sys.executable,
    }


def accepted(hosts: SshHosts, name: str) -> int:
    """SSH sessions the node's sshd accepted (its log)."""
    log = hosts.workdir / name / "sshd.log"
    return log.read_text(errors="replace").count("Accepted publickey") if log.exists() else 0


class Relay:
    """TCP relays on a root-namespace address the execution nodes reach (their gateway), one port per
    simulated controller (which listens on a loopback address no namespace can reach)."""

    def __init__(self, address: str) -> None:
        self.address, self.servers = address, []  # type: ignore[var-annotated]

    def add(self, target: tuple[str, int]) -> int:
        server = socket.create_server((self.address, 0))
        self.servers.append(server)
        threading.Thread(target=self._accept, args=(server, target), daemon=True).start()
        return int(server.getsockname()[1])

    def _accept(self, server: socket.socket, target: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                threading.Thread(target=self._pipe_both, args=(client, target), daemon=True).start()

    @staticmethod
    def _pipe_both(client: socket.socket, target: tuple[str, int]) -> None:
        with contextlib.suppress(OSError), client, socket.create_connection(target, timeout=10) as upstream:
            upstream.settimeout(None)

            def pipe(a: socket.socket, b: socket.socket) -> None:
                with contextlib.suppress(OSError):
                    while data := a.recv(65536):
                        b.sendall(data)
                with contextlib.suppress(OSError):
                    b.shutdown(socket.SHUT_WR)

            t = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
            t.start()
            pipe(client, upstream)
            t.join(timeout=30)

    def close(self) -> None:
        for s in self.servers:
            s.close()


def test_rollout_and_rollback_through_two_execution_nodes(
    make_sim: object, cli: Cli, exec_hosts: SshHosts
) -> None:
    one_batch = [{"name": "all", "hosts": "all", "batch": "100%", "bake": "0s"}]
    sim: Sim = make_sim(nodes=4, stages=one_batch, max_unavailable="100%")  # type: ignore[operator]
    relay = Relay(exec_hosts.host("exec1").gateway if exec_hosts.mode == "netns" else "127.0.0.1")
    for node in sim.info.nodes:  # the workers check each controller's version through the relay
        sim.host_vars(node.name, ansible_host=relay.address, hc_port=relay.add((node.address, sim.info.port)))
    sim.write_config(execution={"nodes": [node_doc(exec_hosts, "exec1"), node_doc(exec_hosts, "exec2")]})
    before = {n: accepted(exec_hosts, n) for n in ("exec1", "exec2")}
    cli("rollout 1.1.0 --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}  # on disk, on every simulated node
    assert set(host_states(run_status(sim)).values()) == {"done"}  # the workers' events reached the journal
    assert all(accepted(exec_hosts, n) > before[n] for n in before)  # both nodes ran a worker
    updates = [j for j in jobs(sim) if "-u" in j]
    assert len(updates) == 2, jobs(sim)  # one job per node, its events stored like a local job's
    events = sim.config.parent / ".fleetctl" / "runner" / "artifacts" / updates[0] / "job_events"
    assert list(events.glob("*.json"))
    cli("rollback --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.0.0"}
    relay.close()


def local_inventory(tmp_path: Path, n: int) -> Path:
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {f"h{i}": local for i in range(n)}}}))
    return inv


def node_executor(tmp_path: Path, hosts: SshHosts, docs: list[dict[str, object]]) -> ShardedExecutor:
    from fleetctl.config import ExecutionNode
    from fleetctl.execution.nodes import NodeTarget

    (tmp_path / "pb").mkdir(exist_ok=True)
    (tmp_path / "pb" / "sleep.yml").write_text(SLEEP)
    (tmp_path / "pb" / "ping.yml").write_text(SLEEP.replace("ansible.builtin.command: sleep 60", "ping:"))
    targets = [
        NodeTarget(ExecutionNode.model_validate(d), Path(str(d["key"])), Path(str(d["known_hosts"])))
        for d in docs
    ]
    settings = ExecutorSettings(
        inventory=[local_inventory(tmp_path, 4)], playbooks=tmp_path / "pb", work_dir=tmp_path / "w"
    )
    return ShardedExecutor(settings, 1, targets)


def test_each_node_acts_on_its_slice_only(tmp_path: Path, exec_hosts: SshHosts) -> None:
    """The whole inventory (no index): the worker still runs on its own slice, each host once."""
    out = tmp_path / "ran"
    executor = node_executor(
        tmp_path, exec_hosts, [node_doc(exec_hosts, "exec1"), node_doc(exec_hosts, "exec2")]
    )
    task = f"ansible.builtin.shell: echo {{{{ inventory_hostname }}}} >> {out}"
    (tmp_path / "pb" / "record.yml").write_text(SLEEP.replace("ansible.builtin.command: sleep 60", task))
    run = executor.run("record.yml", [f"h{i}" for i in range(4)], forks=1)
    assert {r.status for r in run.results.values()} == {"ok"}
    assert sorted(out.read_text().split()) == ["h0", "h1", "h2", "h3"]


def test_an_unreachable_node_fails_its_hosts_as_unreachable(tmp_path: Path, exec_hosts: SshHosts) -> None:
    dead = dict(node_doc(exec_hosts, "exec2"), port=closed_port(), host="127.0.0.1")
    executor = node_executor(tmp_path, exec_hosts, [node_doc(exec_hosts, "exec1"), dead])
    run = executor.run("ping.yml", [f"h{i}" for i in range(4)])
    statuses = {h: r.status for h, r in run.results.items()}
    assert statuses == {"h0": "ok", "h1": "unreachable", "h2": "ok", "h3": "unreachable"}
    assert "unreachable" in (run.results["h1"].error or "")


def test_a_node_lost_mid_batch_fails_its_hosts_and_never_hangs(tmp_path: Path, exec_hosts: SshHosts) -> None:
    if exec_hosts.mode != "netns":
        pytest.skip(f"cutting a link needs network namespaces: {exec_hosts.fallback_reason}")
    executor = node_executor(tmp_path, exec_hosts, [node_doc(exec_hosts, "exec2")])
    cut = threading.Timer(6.0, exec_hosts.cut_link, args=("exec2",))  # mid-task: the 60 s sleeps run
    cut.start()
    cancel = threading.Event()
    net = threading.Timer(45.0, cancel.set)  # a hang detector only: keepalives end it within seconds
    net.start()
    try:
        run = executor.run("sleep.yml", ["h0", "h1"], forks=2, cancel=cancel)
    finally:
        cut.cancel()
        net.cancel()
        exec_hosts.restore_link("exec2")
    assert not cancel.is_set(), "the run waited for a dead node"
    assert {h: r.status for h, r in run.results.items()} == {"h0": "unreachable", "h1": "unreachable"}
    assert "lost" in (run.results["h0"].error or "")


def test_cancel_kills_the_remote_workers(tmp_path: Path, exec_hosts: SshHosts) -> None:
    executor = node_executor(
        tmp_path, exec_hosts, [node_doc(exec_hosts, "exec1"), node_doc(exec_hosts, "exec2")]
    )
    journal = Journal()
    executor.track(journal)
    cancel = threading.Event()
    timer = threading.Timer(8.0, cancel.set)
    timer.start()
    try:
        run = executor.run("sleep.yml", [f"h{i}" for i in range(4)], forks=4, cancel=cancel)
    finally:
        timer.cancel()
    assert run.cancelled
    assert {r.status for r in run.results.values()} == {"cancelled"}
    assert wait_for(lambda: processes_with(journal.added) == [], timeout=15, what="remote workers to die")


def test_a_node_with_other_versions_is_refused_before_the_batch(tmp_path: Path, exec_hosts: SshHosts) -> None:
    from fleetctl.execution.nodes import ExecutionNodeRefused

    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "ansible-runner").write_text("#!/bin/sh\necho '{runner_version: 1.0.0, errors: []}'\n")
    (fake / "ansible-playbook").write_text("#!/bin/sh\necho 'ansible-playbook [core 2.0.0]'\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    executor = node_executor(tmp_path, exec_hosts, [node_doc(exec_hosts, "exec1", fake / "ansible-runner")])
    with pytest.raises(ExecutionNodeRefused) as info:
        executor.run("ping.yml", ["h0", "h1"])
    assert "1.0.0" in info.value.message and "2.0.0" in info.value.message
    assert not (tmp_path / "w" / "artifacts").exists()  # nothing ran


# -- mitogen: opt-in, refused unless the (mitogen, ansible-core) pair is known to work -----------------
def test_mitogen_pairs_fleetctl_has_not_seen_work_are_refused() -> None:
    from fleetctl.execution import mitogen

    mitogen.check("0.3.54", "2.19.14")  # the pair this fleetctl is tested with
    for version, core, words in [
        (None, "2.19.14", ["not installed", "fleetctl[fast]"]),
        ("0.3.40", "2.19.14", ["0.3.40", "2.19.14"]),
        ("0.3.54", "2.20.0", ["0.3.54", "2.20.0"]),
    ]:
        with pytest.raises(ConfigError) as info:
            mitogen.check(version, core)
        assert all(w in info.value.message + info.value.hint for w in words), info.value.message
        assert info.value.exit_code == 2 and "\n" not in info.value.message


def test_an_unsupported_mitogen_refuses_the_rollout_before_anything_runs(
    make_sim: object, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetctl.execution import mitogen

    sim: Sim = make_sim(nodes=3)  # type: ignore[operator]
    sim.write_config(execution={"strategy": "mitogen"})
    monkeypatch.setattr(mitogen, "installed", lambda: ("0.3.54", "2.99.0"))
    result = cli("rollout 1.1.0 --yes", env=sim.env, code=2)
    assert "execution.strategy" in result.stderr and "2.99.0" in result.stderr
    assert set(sim.current().values()) == {"1.0.0"}  # nothing ran


def test_rollout_with_mitogen(make_sim: object, cli: Cli) -> None:
    from fleetctl.execution import mitogen

    version, core = mitogen.installed()
    need(version is not None, "the mitogen test needs pip install 'fleetctl[fast]'")
    mitogen.check(version, core)
    sim: Sim = make_sim(nodes=3)  # type: ignore[operator]
    sim.write_config(execution={"strategy": "mitogen"})
    cli("rollout 1.1.0 --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}
    command = [j for j in jobs(sim) if "-u" in j]
    env = json.loads(
        (sim.config.parent / ".fleetctl" / "runner" / "artifacts" / command[0] / "command").read_text()
    )
    assert env["env"]["ANSIBLE_STRATEGY"] == "mitogen_linear"
