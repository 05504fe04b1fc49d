"""Plans built from a real inventory: stages, batches, zone spreading, skips, budgets, fingerprints,
saved-plan freshness, revert plans, and `spread()` checked as properties over many label mixes."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetctl.config import RollbackPolicy, RolloutPolicy
from fleetctl.errors import ExitCode, InventoryError, StalePlanError, UsageError
from fleetctl.inventory import Fleet, load_inventory
from fleetctl.plan import Plan, check_fresh, describe, revert_plan, rollout_plan, spread

HC = "host-controller"
V = "1.1.0"

# 12 hosts over zones a/b/c; h01 is the canary and also in ring1 (first matching stage wins).
ZONES = {
    "h01": "a",
    "h02": "a",
    "h03": "b",
    "h04": "c",
    "h05": "a",
    "h06": "b",
    "h07": "c",
    "h08": "a",
    "h09": "b",
    "h10": "c",
    "h11": "a",
    "h12": "b",
}
GROUPS = {
    "canary": ["h01"],
    "ring1": ["h01", "h02", "h03", "h04", "h05"],
    "ring2": ["h06", "h07", "h08", "h09", "h10", "h11", "h12"],
    "drain": ["h12"],
}


def inventory_doc(zones: dict[str, str] = ZONES, groups: dict[str, list[str]] = GROUPS) -> dict[str, Any]:
    children: dict[str, Any] = {g: {"hosts": dict.fromkeys(hs)} for g, hs in groups.items()}
    for z in sorted(set(zones.values())):
        children[f"zone_{z}"] = {"hosts": {h: None for h, hz in zones.items() if hz == z}}
    hosts = {h: {"ansible_host": f"10.0.0.{i}", "zone": z} for i, (h, z) in enumerate(zones.items(), 1)}
    return {"all": {"hosts": hosts, "children": children}}


def make_fleet(path: Path, doc: dict[str, Any] | None = None) -> Fleet:
    path.write_text(yaml.safe_dump(doc or inventory_doc(), sort_keys=False))
    return load_inventory([path])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return make_fleet(tmp_path_factory.mktemp("plan") / "inventory.yml")


@pytest.fixture(scope="module")
def fleet10(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    zones = {f"n{i:02d}": "abc"[i % 3] for i in range(1, 11)}
    path = tmp_path_factory.mktemp("plan10") / "inventory.yml"
    return make_fleet(path, inventory_doc(zones, {"web": list(zones)}))


def policy(stages: list[dict] | None = None, **kw: Any) -> RolloutPolicy:
    return RolloutPolicy(
        stages=stages
        or [
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "5m", "max_failures": 0},
            {"name": "ring1", "hosts": "ring1", "batch": "50%", "bake": "2m"},
            {"name": "rest", "hosts": "all", "batch": "25%", "max_failures": "10%"},
        ],
        **kw,
    )


def plan_for(fleet: Fleet, pol: RolloutPolicy | None = None, versions=None, version=V, limit=None) -> Plan:
    return rollout_plan(fleet, pol or policy(), versions or {}, version, component=HC, limit=limit)


def skipped(plan: Plan) -> dict[str, str]:
    return {s["host"]: s["reason"] for s in plan.skipped}


def assert_partition(plan: Plan, fleet: Fleet) -> None:
    planned = plan.hosts
    assert len(planned) == len(set(planned)), "a host is planned twice"
    assert not set(planned) & set(skipped(plan)), "a host is both planned and skipped"
    assert set(planned) | set(skipped(plan)) == set(fleet.names)
    assert len(plan.skipped) == len(skipped(plan))
    assert set(plan.targets) == set(planned)
    assert all(b for s in plan.stages for b in s.batches), "an empty batch"


# --- batches ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch, sizes",
    [
        (1, [1] * 10),
        (3, [3, 3, 3, 1]),
        (4, [4, 4, 2]),
        (10, [10]),
        (25, [10]),
        ("25%", [2] * 5),  # 2.5 rounds down
        ("30%", [3, 3, 3, 1]),
        ("33%", [3, 3, 3, 1]),
        ("50%", [5, 5]),
        ("99%", [9, 1]),
        ("100%", [10]),
        ("5%", [1] * 10),  # 0.5 rounds down to 0: at least one host a batch
        ("0%", [1] * 10),
        (0, [1] * 10),
    ],
)
def test_batch_sizes(fleet10: Fleet, batch: int | str, sizes: list[int]) -> None:
    plan = plan_for(fleet10, policy([{"name": "all", "hosts": "all", "batch": batch}]))
    (stage,) = plan.stages
    assert [len(b) for b in stage.batches] == sizes
    assert stage.hosts == fleet10.names  # no spreading: inventory order
    assert_partition(plan, fleet10)


@pytest.mark.parametrize(
    "stages",
    [
        None,
        [{"name": "all", "hosts": "all"}],
        [
            {"name": "z", "hosts": "zone_c", "batch": 1},
            {"name": "r2", "hosts": "ring2"},
            {"name": "rest", "hosts": "*"},
        ],
        [{"name": "a", "hosts": "ring1:&zone_a"}, {"name": "b", "hosts": "ring1,ring2", "batch": "10%"}],
        [{"name": "d", "hosts": "!drain", "batch": 2}, {"name": "all", "hosts": "all", "batch": 5}],
        [{"name": "web", "hosts": "h0*", "batch": 3}, {"name": "rest", "hosts": "h1*"}],
    ],
)
@pytest.mark.parametrize("spread_by", [None, "zone"])
def test_every_host_exactly_once(fleet: Fleet, stages: list[dict] | None, spread_by: str | None) -> None:
    pol = policy(stages, spread_by=spread_by, max_unavailable=1 if spread_by else None)
    plan = plan_for(fleet, pol, versions={"h04": V})
    assert_partition(plan, fleet)
    assert skipped(plan)["h04"] == f"already at {V}"


def test_first_matching_stage_wins(fleet: Fleet) -> None:
    plan = plan_for(fleet)
    assert [s.name for s in plan.stages] == ["canary", "ring1", "rest"]
    assert plan.stages[0].hosts == ["h01"]
    assert sorted(plan.stages[1].hosts) == ["h02", "h03", "h04", "h05"]  # h01 already taken by canary
    assert sorted(plan.stages[2].hosts) == ["h06", "h07", "h08", "h09", "h10", "h11", "h12"]
    for host in fleet.names:
        first = next(s.name for s in policy().stages if host in fleet.select(s.hosts, required=False))
        assert plan.stage_of(host).name == first
    assert plan.stages[1].pattern == "ring1"
    assert (plan.stages[0].bake, plan.stages[1].bake, plan.stages[2].bake) == (300.0, 120.0, 0.0)


def test_stage_matching_nothing_is_dropped_and_unstaged_hosts_are_skipped(fleet: Fleet) -> None:
    pol = policy([{"name": "ghost", "hosts": "no_such_group"}, {"name": "r1", "hosts": "ring1"}])
    plan = plan_for(fleet, pol)
    assert [s.name for s in plan.stages] == ["r1"]
    sk = skipped(plan)
    assert set(sk) == set(GROUPS["ring2"])
    assert set(sk.values()) == {"in no stage of the policy"}
    assert_partition(plan, fleet)


def test_hosts_already_at_version_are_skipped(fleet: Fleet) -> None:
    versions = {h: "1.0.0" for h in fleet.names} | {"h01": V, "h03": V, "h09": V, "h02": None}
    plan = plan_for(fleet, versions=versions)
    sk = skipped(plan)
    assert sk == {"h01": f"already at {V}", "h03": f"already at {V}", "h09": f"already at {V}"}
    assert [s.name for s in plan.stages] == ["ring1", "rest"]  # the canary has nothing to do
    assert plan.targets == {h: V for h in fleet.names if h not in sk}
    assert plan.from_versions["h02"] is None
    assert plan.from_versions["h04"] == "1.0.0"
    assert set(plan.from_versions) == set(plan.targets)


def test_everything_already_there(fleet: Fleet) -> None:
    plan = plan_for(fleet, versions=dict.fromkeys(fleet.names, V))
    assert plan.stages == [] and plan.hosts == [] and plan.targets == {}
    assert len(plan.skipped) == len(fleet)
    assert plan.max_failures == 0


@pytest.mark.parametrize(
    "limit, planned",
    [
        ("ring1", {"h01", "h02", "h03", "h04", "h05"}),
        ("zone_a", {"h01", "h02", "h05", "h08", "h11"}),
        ("ring2:&zone_b", {"h06", "h09", "h12"}),
        ("all:!drain", set(ZONES) - {"h12"}),
        ("h03,h10", {"h03", "h10"}),
    ],
)
def test_limit(fleet: Fleet, limit: str, planned: set[str]) -> None:
    plan = plan_for(fleet, limit=limit)
    assert set(plan.hosts) == planned
    sk = skipped(plan)
    assert set(sk) == set(fleet.names) - planned
    assert set(sk.values()) <= {"outside -l"}
    assert plan.limit == limit
    assert_partition(plan, fleet)


def test_limit_and_already_there(fleet: Fleet) -> None:
    plan = plan_for(fleet, versions={"h02": V, "h07": V}, limit="ring1")
    sk = skipped(plan)
    assert sk["h02"] == f"already at {V}"
    assert sk["h07"] == "outside -l"


def test_limit_matching_nothing(fleet: Fleet) -> None:
    with pytest.raises(InventoryError) as info:
        plan_for(fleet, limit="nothing_here")
    assert info.value.exit_code == 2


# --- spreading over zones --------------------------------------------------------------------------------


@pytest.mark.parametrize("max_unavailable", [1, 2, 3, "1", "25%", "34%", "50%", "100%"])
@pytest.mark.parametrize("batch", [1, 2, 3, 4, "50%", "100%"])
def test_max_unavailable_per_zone(fleet: Fleet, max_unavailable: int | str, batch: int | str) -> None:
    stages = [
        {"name": "canary", "hosts": "canary", "batch": batch},
        {"name": "ring1", "hosts": "ring1", "batch": batch},
        {"name": "rest", "hosts": "all", "batch": batch},
    ]
    pol = policy(stages, spread_by="zone", max_unavailable=max_unavailable)
    plan = plan_for(fleet, pol)
    assert_partition(plan, fleet)
    for stage, spec in zip(plan.stages, pol.stages, strict=True):
        per_zone = Counter(ZONES[h] for h in stage.hosts)
        size = spec.batch.of(len(stage.hosts), minimum=1)
        for b in stage.batches:
            assert len(b) <= size
            for zone, n in Counter(ZONES[h] for h in b).items():
                cap = pol.max_unavailable.of(per_zone[zone], minimum=1)
                assert n <= cap, (stage.name, b, zone, cap)


def test_spread_interleaves_zones(fleet: Fleet) -> None:
    pol = policy([{"name": "all", "hosts": "all", "batch": 3}], spread_by="zone", max_unavailable=1)
    plan = plan_for(fleet, pol)
    batches = plan.stages[0].batches
    # every batch of three holds one host from each zone while all three zones have hosts left
    assert [sorted(ZONES[h] for h in b) for b in batches[:3]] == [["a", "b", "c"]] * 3
    assert all(len(set(ZONES[h] for h in b)) == len(b) for b in batches)


def test_spread_by_missing_var_groups_hosts_together(fleet: Fleet) -> None:
    pol = policy([{"name": "all", "hosts": "all", "batch": 4}], spread_by="rack", max_unavailable=2)
    plan = plan_for(fleet, pol)
    assert [len(b) for b in plan.stages[0].batches] == [2] * 6  # one label "", at most 2 at a time
    assert_partition(plan, fleet)


# --- budgets ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage_budget, run_budget, expected_stage, expected_run",
    [
        ("10%", "10%", 0, 1),  # rest has 7 hosts: 0.7 -> 0; the run has 12: 1.2 -> 1
        ("50%", "25%", 3, 3),
        ("100%", "100%", 7, 12),
        (2, 5, 2, 5),
        (0, 0, 0, 0),
        (None, 0, None, 0),
    ],
)
def test_budgets(fleet: Fleet, stage_budget, run_budget, expected_stage, expected_run) -> None:
    rest: dict[str, Any] = {"name": "rest", "hosts": "all"}
    if stage_budget is not None:
        rest["max_failures"] = stage_budget
    pol = policy([{"name": "ring1", "hosts": "ring1", "max_failures": "40%"}, rest], max_failures=run_budget)
    plan = plan_for(fleet, pol)
    assert plan.stages[0].max_failures == 2  # 40% of 5
    assert plan.stages[1].max_failures == expected_stage
    assert plan.max_failures == expected_run


def test_budgets_count_only_hosts_to_update(fleet: Fleet) -> None:
    pol = policy([{"name": "all", "hosts": "all", "max_failures": "50%"}], max_failures="50%")
    plan = plan_for(fleet, pol, versions={h: V for h in ["h01", "h02", "h03", "h04"]})
    assert plan.stages[0].max_failures == 4  # 50% of the 8 left
    assert plan.max_failures == 4


def test_policy_settings_carried(fleet: Fleet) -> None:
    plan = plan_for(fleet, policy(forks=7, on_failure="halt"))
    assert (plan.kind, plan.component, plan.version, plan.forks, plan.on_failure) == (
        "rollout",
        HC,
        V,
        7,
        "halt",
    )
    assert plan.estimate_seconds() > 0
    assert describe(plan.stages[0]) == "canary: 1 hosts in 1 batch(es), bake 5m, max 0 failures"
    assert describe(plan.stages[1]).endswith("run budget only")


# --- determinism and fingerprints ------------------------------------------------------------------------


def test_same_inputs_same_plan(fleet: Fleet, tmp_path: Path) -> None:
    pol = policy(spread_by="zone", max_unavailable="50%")
    versions = {"h01": "1.0.0", "h05": V}
    a = plan_for(fleet, pol, versions)
    b = plan_for(
        make_fleet(tmp_path / "again.yml"), policy(spread_by="zone", max_unavailable="50%"), dict(versions)
    )
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 16
    assert json.dumps(a.to_json(), sort_keys=True) == json.dumps(b.to_json(), sort_keys=True)


@pytest.mark.parametrize(
    "change",
    [
        {"version": "1.2.0"},
        {"limit": "ring1"},
        {"versions": {"h01": V}},
        {"versions": {"h01": "0.9.0"}},
        {"pol": policy(forks=3)},
        {"pol": policy(spread_by="zone", max_unavailable=1)},
    ],
)
def test_different_inputs_different_fingerprint(fleet: Fleet, change: dict) -> None:
    base = plan_for(fleet)
    assert plan_for(fleet, **change).fingerprint != base.fingerprint


def test_json_round_trip(fleet: Fleet) -> None:
    plan = plan_for(
        fleet,
        policy(spread_by="zone", max_unavailable=1),
        versions={"h02": V, "h03": "1.0.0"},
        limit="all:!drain",
    )
    doc = json.loads(json.dumps(plan.to_json()))
    assert doc["fingerprint"] == plan.fingerprint
    assert doc["estimate"] and doc["estimate_seconds"] > 0
    again = Plan.from_json(doc)
    assert again == plan
    assert again.fingerprint == plan.fingerprint
    assert again.to_json() == plan.to_json()


def _move_host(doc: dict) -> None:
    doc["stages"][0]["batches"][0].append("h12")


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(version="9.9.9"),
        lambda d: d["targets"].update(h02="6.6.6"),
        lambda d: d["stages"][1]["batches"].reverse(),
        _move_host,
        lambda d: d["stages"].pop(0),
        lambda d: d.update(max_failures=100),
        lambda d: d["stages"][0].update(bake=0.0),
        lambda d: d.update(on_failure="halt"),
        lambda d: d["skipped"].clear(),
        lambda d: d.update(fingerprint="0" * 16),
    ],
)
def test_edited_plan_is_refused(fleet: Fleet, edit) -> None:
    doc = json.loads(json.dumps(plan_for(fleet, versions={"h07": V}).to_json()))
    edit(doc)
    with pytest.raises(StalePlanError) as info:
        Plan.from_json(doc)
    assert info.value.exit_code == ExitCode.USAGE == 2
    assert "edited" in info.value.message


@pytest.mark.parametrize(
    "doc",
    [{}, {"stages": []}, [], {"stages": [{"name": "x"}], "kind": "rollout"}, {"stages": "nope"}],
)
def test_not_a_plan(doc: Any) -> None:
    with pytest.raises(UsageError) as info:
        Plan.from_json(doc)
    assert not isinstance(info.value, StalePlanError)
    assert "not a fleetctl plan" in info.value.message


# --- check_fresh -----------------------------------------------------------------------------------------


def test_fresh_plan_passes(fleet: Fleet, tmp_path: Path) -> None:
    versions = {"h01": "1.0.0", "h02": "1.0.0"}
    saved = Plan.from_json(json.loads(json.dumps(plan_for(fleet, versions=versions).to_json())))
    check_fresh(saved, plan_for(make_fleet(tmp_path / "same.yml"), versions=dict(versions)))


def _stale(saved: Plan, current: Plan, text: str) -> None:
    with pytest.raises(StalePlanError) as info:
        check_fresh(saved, current)
    assert info.value.exit_code == 2
    assert text in info.value.message


@pytest.mark.parametrize(
    "mutate",
    [
        lambda doc: doc["all"]["hosts"]["h03"].update(ansible_host="10.9.9.9"),
        lambda doc: doc["all"]["children"]["ring1"]["hosts"].pop("h05"),
        lambda doc: doc["all"]["hosts"].update(h13={"zone": "a"}),
        lambda doc: doc["all"]["hosts"].pop("h12"),
    ],
)
def test_stale_when_inventory_changed(fleet: Fleet, tmp_path: Path, mutate) -> None:
    saved = plan_for(fleet)
    doc = inventory_doc()
    mutate(doc)
    for group in doc["all"]["children"].values():  # keep the inventory valid after a removal
        group["hosts"] = {h: None for h in group["hosts"] if h in doc["all"]["hosts"]}
    _stale(saved, plan_for(make_fleet(tmp_path / "changed.yml", doc)), "inventory changed")


@pytest.mark.parametrize(
    "pol",
    [
        policy(forks=3),
        policy(on_failure="halt"),
        policy(max_failures=1),
        policy([{"name": "all", "hosts": "all"}]),
    ],
)
def test_stale_when_policy_changed(fleet: Fleet, pol: RolloutPolicy) -> None:
    _stale(plan_for(fleet), plan_for(fleet, pol), "policy")


@pytest.mark.parametrize("now", ["1.0.5", V, None])
def test_stale_when_a_planned_host_moved(fleet: Fleet, now: str | None) -> None:
    before = {h: "1.0.0" for h in fleet.names}
    saved = plan_for(fleet, versions=before)
    _stale(saved, plan_for(fleet, versions=before | {"h06": now}), "changed version")


def test_not_stale_when_an_unplanned_host_moved(fleet: Fleet) -> None:
    before = {h: "1.0.0" for h in fleet.names} | {"h06": V}  # h06 skipped: already there
    saved = plan_for(fleet, versions=before, limit="ring1")
    check_fresh(saved, plan_for(fleet, versions=before | {"h07": "0.1"}, limit="ring1"))


def test_stale_when_a_skipped_host_left_the_version(fleet: Fleet) -> None:
    """h06 was skipped as already at the version; it has been rolled back since. Running the saved plan would
    leave it behind while the run reports success: the saved plan no longer matches the fleet."""
    before = {h: "1.0.0" for h in fleet.names} | {"h06": V}
    saved = plan_for(fleet, versions=before)
    assert "h06" not in saved.targets
    current = plan_for(fleet, versions=before | {"h06": "1.0.0"})
    assert "h06" in current.targets
    _stale(saved, current, "stale plan")


def resealed(doc: dict[str, Any]) -> dict[str, Any]:
    """What anyone can do to a plan file: edit it and recompute its fingerprint (sha256 of the content)."""
    import hashlib

    core = {k: v for k, v in doc.items() if k not in ("fingerprint", "estimate", "estimate_seconds")}
    doc["fingerprint"] = hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]
    return doc


def _split_batch(doc: dict) -> None:
    batches = doc["stages"][1]["batches"]
    batches[:] = [[h] for b in batches for h in b]  # ring1 one host at a time instead of 50%


@pytest.mark.parametrize(
    "edit, text",
    [
        (lambda d: d["stages"][0].update(bake=0.0), "stage 'canary': bake is 0.0 in the plan, 300.0 now"),
        (lambda d: d["stages"][2].update(bake=1.0), "stage 'rest': bake is 1.0 in the plan, 0.0 now"),
        (_split_batch, "stage 'ring1': 4 batch(es) in the plan, 2 now; batch 1 differs"),
        (lambda d: d["stages"][1]["batches"].reverse(), "stage 'ring1': 2 batch(es) in the plan, 2 now"),
        (lambda d: d.update(max_failures=100), "max_failures is 100 in the plan"),
        (lambda d: d["stages"][0].update(max_failures=5), "stage 'canary': max_failures is 5 in the plan"),
        (lambda d: d.update(on_failure="halt"), "on_failure is 'halt' in the plan, 'rollback' now"),
        (lambda d: d.update(forks=500), "forks is 500 in the plan"),
        (lambda d: d["stages"][0].update(unattended=False), "unattended is False in the plan, True now"),
        (lambda d: d["skipped"].clear(), "skipped is [] in the plan"),
        (lambda d: d.update(tasks_per_host=0), "tasks_per_host is 0 in the plan, 2 now"),
        (lambda d: d["stages"][0].update(name="pilot"), "stages are ['pilot', 'ring1', 'rest'] in the plan"),
    ],
)
def test_an_edited_and_resealed_plan_file_is_refused(fleet: Fleet, edit, text: str) -> None:
    """The fingerprint is no seal: the saved plan must equal the plan made now, field by field."""
    versions = {"h12": V}
    doc = json.loads(json.dumps(plan_for(fleet, versions=versions).to_json()))
    edit(doc)
    saved = Plan.from_json(resealed(doc))  # the fingerprint matches the edited content
    with pytest.raises(StalePlanError) as info:
        check_fresh(saved, plan_for(fleet, versions=dict(versions)))
    assert info.value.exit_code == 2
    assert info.value.message.startswith("the plan is not the one fleetctl makes now: ")
    assert text in info.value.message, info.value.message
    assert "\n" not in info.value.message


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.update(version="{{ lookup('pipe', 'id') }}"), "version"),
        (lambda d: d["targets"].update(h01="../../etc"), "targets['h01']"),
        (lambda d: d["from_versions"].update(h01="{{ 7 * 7 }}"), "from_versions['h01']"),
        (lambda d: d["targets"].update(h01=7), "targets['h01']"),
    ],
)
def test_a_plan_with_a_version_that_is_not_plain_is_refused(fleet: Fleet, edit, field: str) -> None:
    """Plan files and the plan in the journal are read back with every version checked: they go into
    extra vars, where Ansible would render a template."""
    doc = json.loads(json.dumps(plan_for(fleet).to_json()))
    edit(doc)
    with pytest.raises(UsageError) as info:
        Plan.from_json(resealed(doc))
    assert not isinstance(info.value, StalePlanError)
    assert info.value.message.startswith(f"not a fleetctl plan: {field} ")
    assert "is not a plain version" in info.value.message


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(kind="deploy"),
        lambda d: d.update(forks="many"),
        lambda d: d["stages"][0].update(batches=[[]]),
        lambda d: d["stages"][0].update(batches="h01"),
        lambda d: d["stages"][0].update(bake="5m"),
        lambda d: d["stages"][0]["batches"][0].append("h02"),  # planned twice
        lambda d: d["targets"].pop("h01"),
        lambda d: d.update(skipped=[{"host": ["x"]}]),
    ],
)
def test_a_malformed_plan_is_a_usage_error(fleet: Fleet, edit) -> None:
    doc = json.loads(json.dumps(plan_for(fleet).to_json()))
    edit(doc)
    with pytest.raises(UsageError) as info:
        Plan.from_json(resealed(doc))
    assert not isinstance(info.value, StalePlanError)
    assert info.value.message.startswith("not a fleetctl plan: ")


# --- revert plans ----------------------------------------------------------------------------------------


def test_revert_plan_refuses_a_target_that_is_not_plain(fleet: Fleet) -> None:
    """A from-version a node reported (hc_previous) could be a template: that host is not revertible,
    with a reason, and its text never becomes a target (extra vars)."""
    evil = "{{ lookup('pipe', 'id') }}"
    targets = {"h01": evil, "h02": "1.0.0", "h03": "x/../../y"}
    versions = {"h01": V, "h02": V, "h03": V, "h04": evil}
    plan = revert_plan(fleet, RollbackPolicy(), versions, targets | {"h04": "1.0.0"}, component=HC)
    assert plan.targets == {"h02": "1.0.0", "h04": "1.0.0"}
    assert plan.from_versions == {"h02": V, "h04": None}  # a bad recorded version reads as unknown
    reasons = skipped(plan)
    assert set(reasons) == {"h01", "h03"}
    assert reasons["h01"].startswith("not revertible: the version to go back to, ")
    assert repr(evil) in reasons["h01"] and "is not a plain version" in reasons["h01"]
    assert evil not in json.dumps({"targets": plan.targets, "from": plan.from_versions})


@pytest.mark.parametrize(
    "batch, sizes",
    [("100%", [9]), ("50%", [4, 4, 1]), (2, [2, 2, 2, 2, 1]), (1, [1] * 9), ("5%", [1] * 9), (20, [9])],
)
def test_revert_plan(fleet: Fleet, batch: int | str, sizes: list[int]) -> None:
    targets = {h: "1.0.0" for h in reversed(fleet.names)}  # order of the mapping must not matter
    versions = {h: V for h in fleet.names} | {"h02": "1.0.0", "h07": "1.0.0", "h11": "1.0.0"}
    plan = revert_plan(fleet, RollbackPolicy(batch=batch, forks=40), versions, targets, component=HC)
    assert plan.kind == "rollback" and plan.on_failure == "halt" and plan.forks == 40
    assert [len(b) for b in plan.stages[0].batches] == sizes
    assert plan.hosts == [h for h in fleet.names if h not in ("h02", "h07", "h11")]  # inventory order
    assert skipped(plan) == {h: "already at 1.0.0" for h in ("h02", "h07", "h11")}
    assert plan.targets == {h: "1.0.0" for h in plan.hosts}
    assert plan.from_versions == {h: V for h in plan.hosts}
    assert plan.stages[0].bake == 0.0
    assert plan.max_failures == 9
    assert plan.tasks_per_host == 1
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_revert_plan_per_host_targets_and_overrides(fleet: Fleet) -> None:
    targets = {"h01": "1.0.0", "h02": "0.9.0", "h03": "1.0.0"}
    versions = {"h01": V, "h02": V, "h03": "1.0.0"}
    plan = revert_plan(
        fleet, RollbackPolicy(), versions, targets, component=HC, version="1.0.0", limit="ring1", forks=3
    )
    assert plan.targets == {"h01": "1.0.0", "h02": "0.9.0"}
    assert (plan.forks, plan.version, plan.limit, plan.stages[0].pattern) == (3, "1.0.0", "ring1", "ring1")
    assert skipped(plan) == {"h03": "already at 1.0.0"}


def test_revert_plan_nothing_to_do(fleet: Fleet) -> None:
    targets = {"h01": "1.0.0", "h02": "1.0.0"}
    plan = revert_plan(fleet, RollbackPolicy(), {"h01": "1.0.0", "h02": "1.0.0"}, targets, component=HC)
    assert plan.stages == [] and plan.hosts == [] and plan.max_failures == 0
    assert len(plan.skipped) == 2


def test_revert_plan_is_deterministic(fleet: Fleet) -> None:
    targets = {h: "1.0.0" for h in fleet.names}
    a = revert_plan(fleet, RollbackPolicy(batch="25%"), {}, targets, component=HC)
    b = revert_plan(
        fleet, RollbackPolicy(batch="25%"), {}, dict(reversed(list(targets.items()))), component=HC
    )
    assert a.stages == b.stages
    assert (
        a.fingerprint
        == revert_plan(fleet, RollbackPolicy(batch="25%"), {}, targets, component=HC).fingerprint
    )


# --- spread() as properties ------------------------------------------------------------------------------


def check_spread(hosts: list[str], size: int, labels: dict[str, str], cap: dict[str, int]) -> list[list[str]]:
    batches = spread(hosts, size, labels, cap)
    flat = [h for b in batches for h in b]
    assert sorted(flat) == sorted(hosts), "every host exactly once"
    assert all(0 < len(b) <= size for b in batches), "batches are non-empty and at most `size`"
    for b in batches:
        assert all(n <= cap[lab] for lab, n in Counter(labels[h] for h in b).items()), "a label over its cap"
    for lab in set(labels.values()):
        mine = [h for h in hosts if labels[h] == lab]
        assert [h for h in flat if labels[h] == lab] == mine, "inventory order kept within a label"
    # batches are as full as the caps allow: a short batch leaves no label that could still have given a host
    seen: set[str] = set()
    for b in batches:
        seen.update(b)
        if len(b) < size:
            taken = Counter(labels[h] for h in b)
            for lab in set(labels.values()):
                left = any(labels[h] == lab and h not in seen for h in hosts)
                assert not left or taken[lab] >= cap[lab], (b, lab)
    return batches


@pytest.mark.parametrize("seed", range(40))
def test_spread_properties_random(seed: int) -> None:
    rnd = random.Random(seed)
    n = rnd.randint(1, 40)
    hosts = [f"h{i:03d}" for i in range(n)]
    alphabet = rnd.choice(["a", "ab", "abc", "abcde", "abcdefghij"])
    weights = [rnd.random() + 0.05 for _ in alphabet]
    labels = {h: rnd.choices(alphabet, weights)[0] for h in hosts}
    cap = {lab: rnd.randint(1, 5) for lab in alphabet}
    size = rnd.randint(1, 12)
    check_spread(hosts, size, labels, cap)


@pytest.mark.parametrize(
    "mix, size, cap, expected",
    [
        ({"a": 4}, 2, {"a": 1}, [1, 1, 1, 1]),  # one label, cap 1: one at a time
        ({"a": 4}, 10, {"a": 4}, [4]),
        ({"a": 3, "b": 3, "c": 3}, 3, {"a": 1, "b": 1, "c": 1}, [3, 3, 3]),
        ({"a": 6, "b": 1}, 4, {"a": 2, "b": 1}, [3, 2, 2]),
        ({"a": 1, "b": 1, "c": 1}, 1, {"a": 1, "b": 1, "c": 1}, [1, 1, 1]),
        ({"": 5}, 2, {"": 5}, [2, 2, 1]),
    ],
)
def test_spread_examples(mix: dict[str, int], size: int, cap: dict[str, int], expected: list[int]) -> None:
    hosts, labels = [], {}
    for lab, n in mix.items():
        for i in range(n):
            hosts.append(f"{lab or 'x'}{i}")
            labels[f"{lab or 'x'}{i}"] = lab
    assert [len(b) for b in check_spread(hosts, size, labels, cap)] == expected


def _labelled(mix: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    hosts = [f"{lab}{i}" for lab, n in mix.items() for i in range(1, n + 1)]
    return hosts, {h: h[0] for h in hosts}


@pytest.mark.parametrize(
    "mix, size, cap, batches",
    [
        ({"a": 2, "b": 2, "c": 2}, 2, 1, 3),
        ({"a": 3, "b": 3, "c": 3}, 2, 1, 5),
        ({"a": 2, "b": 2, "c": 2, "d": 2}, 3, 1, 3),
    ],
)
def test_spread_uses_the_fewest_batches_the_caps_allow(
    mix: dict[str, int], size: int, cap: int, batches: int
) -> None:
    """Labels take turns across batches too: serving 'a' first in every batch leaves 'c' for extra batches
    (and extra bakes) at the end, e.g. a2 b2 c2 at 2 a batch, 1 a zone: [a1 b1] [a2 b2] [c1] [c2]."""
    hosts, labels = _labelled(mix)
    got = check_spread(hosts, size, labels, dict.fromkeys(mix, cap))
    assert len(got) == batches, got


def test_spread_one_host_batches_take_turns() -> None:
    """ "Labels take turns (sorted) ... so zones interleave": with one host a batch, zones alternate."""
    hosts, labels = _labelled({"a": 2, "b": 2, "c": 2})
    got = spread(hosts, 1, labels, {"a": 1, "b": 1, "c": 1})
    assert [b[0] for b in got] == ["a1", "b1", "c1", "a2", "b2", "c2"]


def test_spread_empty() -> None:
    assert spread([], 3, {}, {}) == []
