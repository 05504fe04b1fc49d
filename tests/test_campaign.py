"""The CI-sized slice of the fault campaign (benchmarks/campaign.py): three kill -9 trials (a rollout
resumed, a rollback resumed, a rollout followed at once by an emergency rollback), the fleet lock raced by
three rollouts while readers poll the journal, and two node faults. Each trial runs real fleetctl
processes on its own simulated fleet and must leave every counter at zero."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_campaign() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleetctl_campaign", ROOT / "benchmarks" / "campaign.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


campaign = load_campaign()


def assert_clean(tally: object) -> None:
    zeros = tally.zeros()  # type: ignore[attr-defined]
    assert not any(zeros.values()), f"{zeros}\n" + "\n".join(tally.notes)  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [4, 5, 3], ids=["rollout", "rollback", "rollout+rollback"])
def test_kill_9_at_a_random_moment_then_recover(seed: int) -> None:
    tally = campaign.kill_trial(seed, 4)
    assert tally.trials == 1 and tally.resumes == 1 and tally.hosts_checked == 4
    assert_clean(tally)


def test_three_rollouts_at_once_one_runs_readers_never_see_a_locked_database() -> None:
    assert_clean(campaign.concurrency_trial(4, "lock"))


@pytest.mark.parametrize("fault", ["update-fails", "garbage"])
def test_node_fault_is_named_and_survived(fault: str) -> None:
    tally = campaign.fault_trial(fault, 3, 1)
    assert tally.hosts_checked == 3
    assert_clean(tally)


def test_the_campaign_counts_what_it_sees() -> None:
    """The checks can fail: a ledger that disagrees with the disk and a host activated twice are counted."""
    tally = campaign.Tally()
    fleet = campaign.Fleet(3, tally)
    try:
        assert fleet.run("rollout", "1.1.0", "--yes").code == 0
        fleet.mark()
        fleet.run("rollout", "1.2.0", "--yes", "-l", "node-001")
        from fleetctl.sim import fleet as simfleet

        simfleet.restart_node(fleet.dir, "node-001")  # a needless second activation, node side
        campaign.check_fleet(fleet, dict.fromkeys(fleet.nodes, "1.1.0"), "probe", set())
    finally:
        fleet.close()
    assert tally.mismatches == 1 and "node-001 runs 1.2.0" in tally.notes[0]
    assert tally.duplicates == 1 and "activated 1.2.0 twice" in tally.notes[1]
