"""Issue 9, the executor's part: what it hands to Ansible cannot be templated, what a node reports is
checked before it goes anywhere (finding 1), and a fleet.yml in a directory with a space works
(finding 8). Real ansible-runner runs, on the simulated fleet or on localhost."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fleetctl.executor import Executor, ExecutorSettings
from fleetctl.sim import fleet as simfleet
from tests.conftest import Cli, Sim, fast_policy

ECHO = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.fail:
        msg: "probe=[{{ probe }}] nested=[{{ nested.a }}] target=[{{ fleetctl_targets[inventory_hostname] }}]"
"""


def test_extra_vars_arrive_literally_never_rendered(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "echo.yml").write_text(ECHO)
    inv = tmp_path / "inv.yml"
    inv.write_text(
        f"all:\n  hosts:\n    h1: {{ansible_connection: local, ansible_python_interpreter: '{sys.executable}'}}\n"
    )
    executor = Executor(ExecutorSettings(inventory=[inv], playbooks=tmp_path / "pb", work_dir=tmp_path / "w"))
    evil = f"{{{{ lookup('pipe', 'touch {marker}') }}}}"
    run = executor.run(
        "echo.yml",
        ["h1"],
        extravars={"probe": "{{ 7*7 }}", "nested": {"a": evil}, "fleetctl_targets": {"h1": "{{ 6*6 }}"}},
    )
    assert (
        run.results["h1"].error
        == f"ansible.builtin.fail: probe=[{{{{ 7*7 }}}}] nested=[{evil}] target=[{{{{ 6*6 }}}}]"
    )
    assert not marker.exists()


@pytest.fixture
def spaced_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    d = tmp_path_factory.mktemp("fleet dir") / "my fleet"
    sim = Sim(simfleet.create(d, 3, 20))
    try:
        sim.write_config(
            rollout=fast_policy(max_unavailable=None),
            health={"probes": [{"http": "http://{{ ansible_host }}:{{ hc_port }}/health", "timeout": "1s"}]},
        )
        yield sim
    finally:
        simfleet.stop(d)


def test_a_whole_rollout_from_a_directory_with_a_space(spaced_sim: Sim, cli: Cli) -> None:
    assert " " in str(spaced_sim.config)
    cli("rollout 1.1.0 --yes", env=spaced_sim.env)
    assert set(spaced_sim.current().values()) == {"1.1.0"}
    cli("rollback --yes", env=spaced_sim.env)
    assert set(spaced_sim.current().values()) == {"1.0.0"}


def plant(sim: Sim, node: str, name: str) -> None:
    """Point a node's `current` at a release dir with a hostile name (a copy of 1.0.0)."""
    root = sim.dir / "nodes" / node
    shutil.copytree(root / "releases" / "1.0.0", root / "releases" / name)
    (root / ".evil").symlink_to(Path("releases") / name)
    (root / ".evil").rename(root / "current")


def test_a_node_reporting_a_template_fails_and_nothing_is_rendered(
    make_sim: Callable[..., Sim], cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim(nodes=3, stages=[{"name": "all", "hosts": "all", "batch": "100%", "bake": "0s"}])
    sim.write_config(health={"probes": []})
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # kept in Ansible's environment: where `cd` goes
    evil = "{{ lookup('pipe','cd $TMPDIR;touch pwned-by-node') }}"
    plant(sim, "node-002", evil)
    marker = tmp_path / "pwned-by-node"

    refreshed = cli.json("versions --refresh --json", env=sim.env, code=None)
    assert "node-002" in str(refreshed)
    result = cli("rollout 1.1.0 --yes --json", env=sim.env, code=1)
    doc = cli.json("status --json", env=sim.env)
    failed = {f["host"]: f["error"] for f in doc["failed"]}
    assert "node reports an invalid version" in failed.get("node-002", ""), (doc, result.stdout)
    cli("rollback --yes", env=sim.env, code=None)
    assert not marker.exists(), "a node's answer was rendered as a template on the controller"
    assert not list(Path(sim.dir).rglob("pwned-by-node"))
