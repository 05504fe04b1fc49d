"""Issue 10: `fleetctl init` writes a commented fleet.yml for an inventory (stages from ring groups, else a
canary and percentage waves) that loads as config and plans; it never overwrites."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleetctl.config import load_config
from fleetctl.scaffold import PROBE_URL
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "inventory"


def flat_inventory(path: Path, count: int) -> Path:
    """A sim-like inventory without canary or ring groups: hosts with zones and zone groups only."""
    names = [f"node-{i:03d}" for i in range(1, count + 1)]
    zones = {n: "abc"[i % 3] for i, n in enumerate(names)}
    doc = {
        "all": {
            "vars": {"ansible_connection": "local", "hc_port": 8500},
            "hosts": {n: {"ansible_host": f"127.0.0.{i + 1}", "zone": zones[n]} for i, n in enumerate(names)},
            "children": {
                f"zone_{z}": {"hosts": {n: None for n in names if zones[n] == z}}
                for z in sorted(set(zones.values()))
            },
        }
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def plan_of(cli: Cli, config: Path) -> dict:
    return cli.json(["-c", str(config), "plan", "1.2.0", "--json"])


def test_init_on_the_example_inventory_derives_ring_stages_and_plans(tmp_path: Path, cli: Cli) -> None:
    out = cli.json(["init", "--inventory", str(EXAMPLE), "--dir", str(tmp_path), "--json"])
    config = tmp_path / "fleet.yml"
    assert out["path"] == str(config)
    assert [(s["name"], s["hosts"], s["count"]) for s in out["stages"]] == [
        ("canary", "canary", 1),
        ("ring1", "ring1", 2),
        ("ring2", "ring2", 3),
        ("rest", "all", 6),
    ]
    cfg = load_config(config)
    assert cfg.inventory == [EXAMPLE]
    assert [s.name for s in cfg.rollout.stages] == ["canary", "ring1", "ring2", "rest"]
    assert cfg.rollout.spread_by == "zone"
    assert [p.http for p in cfg.health.probes] == [PROBE_URL]
    assert cfg.state_url().endswith(str(tmp_path / "fleetctl.db"))
    text = config.read_text()
    assert text.count("\n#") > 10, "fleet.yml is commented"
    plan = plan_of(cli, config)
    assert [s["name"] for s in plan["stages"]] == ["canary", "ring1", "ring2", "rest"]
    assert plan["stages"][0]["batches"] == [["hc-a01.example.net"]]
    assert sorted(plan["targets"]) == sorted(h for s in plan["stages"] for b in s["batches"] for h in b)
    assert len(plan["targets"]) == 12 and not plan["skipped"]


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (6, [["node-001"], ["node-002"], ["node-003", "node-004"], ["node-005", "node-006"]]),
        (20, [["node-001"], ["node-002", "node-003"], [f"node-{i:03d}" for i in range(4, 12)], None]),
        (2, [["node-001"], ["node-002"]]),
    ],
)
def test_init_without_rings_makes_a_canary_and_percentage_waves(
    tmp_path: Path, cli: Cli, count: int, expected: list
) -> None:
    inv = flat_inventory(tmp_path / "hosts.yml", count)
    out = cli.json(["init", "-i", str(inv), "--dir", str(tmp_path), "--json"])
    names = [s["name"] for s in out["stages"]]
    assert names[0] == "canary" and names[-1] == "rest"
    assert [st.name for st in load_config(tmp_path / "fleet.yml").rollout.stages] == names
    plan = plan_of(cli, tmp_path / "fleet.yml")
    stage_hosts = [s["batches"] and [h for b in s["batches"] for h in b] for s in plan["stages"]]
    for got, want in zip(stage_hosts, expected, strict=True):
        if want is not None:
            assert sorted(got) == want  # zones interleave within a stage
    assert sum(map(len, stage_hosts)) == count and not plan["skipped"]
    assert plan["stages"][0]["batches"] == [["node-001"]]


def test_the_inventory_path_is_relative_to_fleet_yml_when_close(tmp_path: Path, cli: Cli) -> None:
    inv = flat_inventory(tmp_path / "hosts.yml", 3)
    cli(["init", "-i", str(inv), "--dir", str(tmp_path / "deploy")])
    assert yaml.safe_load((tmp_path / "deploy" / "fleet.yml").read_text())["inventory"] == "../hosts.yml"
    cli(["init", "-i", str(inv), "--dir", str(tmp_path)])
    assert yaml.safe_load((tmp_path / "fleet.yml").read_text())["inventory"] == "hosts.yml"
    far = tmp_path / "a" / "b" / "c"
    cli(["init", "-i", str(inv), "--dir", str(far)])
    assert yaml.safe_load((far / "fleet.yml").read_text())["inventory"] == str(inv)
    assert load_config(far / "fleet.yml").inventory == [inv]


def test_init_refuses_to_overwrite(tmp_path: Path, cli: Cli) -> None:
    inv = flat_inventory(tmp_path / "hosts.yml", 3)
    (tmp_path / "fleet.yml").write_text("# mine\n")
    r = cli(["init", "-i", str(inv), "--dir", str(tmp_path)], code=2)
    assert "already exists" in r.stderr and "fleet.yml" in r.stderr
    assert r.stderr.count("error:") == 1
    assert (tmp_path / "fleet.yml").read_text() == "# mine\n"


def test_init_with_a_missing_inventory_writes_nothing(tmp_path: Path, cli: Cli) -> None:
    r = cli(["init", "-i", str(tmp_path / "nope.yml"), "--dir", str(tmp_path / "new")], code=2)
    assert "does not exist" in r.stderr
    assert not (tmp_path / "new").exists()


def test_init_text_output_names_the_path_and_stages(tmp_path: Path, cli: Cli) -> None:
    out = cli(["init", "-i", str(EXAMPLE), "--dir", str(tmp_path)]).stdout
    assert f"wrote {tmp_path / 'fleet.yml'}" in out
    assert "stage canary: hosts canary (1 now)" in out and "stage rest: hosts all (6 now)" in out


def test_the_commented_windows_are_valid_config_when_uncommented(tmp_path: Path, cli: Cli) -> None:
    inv = flat_inventory(tmp_path / "hosts.yml", 3)
    cli(["init", "-i", str(inv), "--dir", str(tmp_path)])
    config = tmp_path / "fleet.yml"
    head, _, examples = config.read_text().partition("# Change freezes and maintenance windows")
    config.write_text(head + "\n".join(line.removeprefix("# ") for line in examples.splitlines()[1:]) + "\n")
    cfg = load_config(config)
    assert [w.name for w in cfg.freeze.windows] == ["year-end"]
    assert [w.name for w in cfg.maintenance.windows] == ["nightly"]
