"""Issue 14, execution spread: `execution: {shards: N}` runs each batch as N parallel ansible-runner jobs
(round-robin slices) whose results reach the journal through the one on_result; a cancel stops them all.
Real ansible-runner on the simulated fleet (and on localhost for the cancel)."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
import yaml

from fleetctl.config import load_config
from fleetctl.errors import ConfigError
from fleetctl.execution import ShardedExecutor, slices
from fleetctl.executor import ExecutorSettings, HostResult
from fleetctl.orphans import MARKER, AnsibleGroup
from tests.conftest import Cli, Sim, host_states, run_status


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
