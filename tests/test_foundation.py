"""Issue 2: rollout on the simulated fleet, ledger and history, observed drift, bad input, cancel, wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from fleetctl.context import FleetContext
from tests.conftest import Cli, Sim

REPO = Path(__file__).resolve().parent.parent


def test_canary_rollout_changes_exactly_the_canary(sim: Sim, cli: Cli) -> None:
    lines = cli.json_lines("rollout 1.1.0 -l canary --yes --json", env=sim.env)
    *hosts, summary = lines
    assert [h["host"] for h in hosts] == ["node-001"]
    assert hosts[0]["status"] == "ok" and hosts[0]["version"] == "1.1.0"
    assert summary["kind"] == "rollout" and summary["status"] == "succeeded"
    assert summary["succeeded"] == ["node-001"] and summary["failed"] == []

    on_disk = sim.current()
    assert on_disk.pop("node-001") == "1.1.0"
    assert set(on_disk.values()) == {"1.0.0"}, on_disk
    assert all(sim.releases(n) == {"1.0.0"} for n in sim.nodes[1:])

    versions = cli.json("versions --json", env=sim.env)
    row = next(h for h in versions["hosts"] if h["host"] == "node-001")
    assert row["version"] == "1.1.0" and row["source"] == "fleetctl"
    history = cli.json("history node-001 --json", env=sim.env)["changes"]
    assert history[0]["to"] == "1.1.0" and history[0]["run"] == summary["run"]
    assert history[0]["operator"] == "tester" and history[0]["source"] == "fleetctl"


def test_hand_changed_symlink_is_recorded_as_observed(sim: Sim, cli: Cli) -> None:
    cli("versions --refresh --json", env=sim.env)
    sim.set_current("node-003", "1.2.0")
    doc = cli.json("versions --refresh --json", env=sim.env)
    row = next(h for h in doc["hosts"] if h["host"] == "node-003")
    assert (row["version"], row["source"]) == ("1.2.0", "observed")
    assert doc["counts"] == {"1.0.0": 5, "1.2.0": 1}
    change = cli.json("history node-003 --json", env=sim.env)["changes"][0]
    assert (change["from"], change["to"], change["source"], change["run"]) == (
        "1.0.0",
        "1.2.0",
        "observed",
        None,
    )


def test_update_is_idempotent(sim: Sim) -> None:
    ctx = FleetContext(config_path=sim.config)
    executor = ctx.executor()
    first = executor.run("update.yml", ["node-002"], extravars={"hc_version": "1.2.0"})
    second = executor.run("update.yml", ["node-002"], extravars={"hc_version": "1.2.0"})
    assert first.results["node-002"].changed and first.results["node-002"].version == "1.2.0"
    assert second.results["node-002"].ok and not second.results["node-002"].changed
    assert sim.current()["node-002"] == "1.2.0"


def test_hosts_and_versions_json_shapes(sim: Sim, cli: Cli) -> None:
    hosts = cli.json("hosts -l 'ring1:&zone_b' --json", env=sim.env)["hosts"]
    assert [h["host"] for h in hosts] == ["node-002"]
    assert set(hosts[0]) >= {"host", "groups", "zone", "version", "changed_at"}
    doc = cli.json("versions -l canary --json", env=sim.env)
    assert doc == {
        "hosts": [{"host": "node-001", "version": None, "source": None, "at": None, "changed_at": None}],
        "counts": {"unknown": 1},
    }


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ("rollout '1.0;rm -rf /' -l canary --yes", "not a plain version"),
        ("rollout ../../etc -l canary --yes", "not a plain version"),
        ("rollout 1.1.0 -l 'nosuchhost' --yes", "matches no host"),
        ("rollout 1.1.0 -l canary", "without confirmation"),
        ("plan 'bad version'", "not a plain version"),
        ("history nosuchhost", "not in the inventory"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(sim: Sim, cli: Cli, args: str, needle: str) -> None:
    result = cli(args, env=sim.env, code=2)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert set(sim.current().values()) == {"1.0.0"}
    db = sim.dir / "fleetctl.db"
    if db.exists():
        assert cli.json("runs --json", env=sim.env)["runs"] == []


@pytest.mark.parametrize(
    ("setup", "needle"),
    [
        ("missing", "no fleet configuration"),
        ("bad_yaml", "not valid YAML"),
        ("bad_field", "rollout.forks"),
        ("bad_inventory", "cannot load inventory"),
        ("missing_inventory", "does not exist"),
        ("bad_db", "cannot open state database"),
    ],
)
def test_bad_config_exits_2(sim: Sim, cli: Cli, tmp_path: Path, setup: str, needle: str) -> None:
    env = dict(sim.env)
    if setup == "missing":
        env["FLEETCTL_CONFIG"] = str(tmp_path / "nope.yml")
    elif setup == "bad_yaml":
        sim.config.write_text("inventory: [unclosed\n")
    elif setup == "bad_field":
        sim.write_config(rollout={"forks": "many"})
    elif setup == "bad_inventory":
        (sim.dir / "inventory.yml").write_text("all:\n  hosts: [oops\n")
    elif setup == "missing_inventory":
        sim.write_config(inventory="gone.yml")
    elif setup == "bad_db":
        env["FLEETCTL_DB"] = f"sqlite:///{tmp_path}/no/such/dir/x.db"
    result = cli("rollout 1.1.0 -l canary --yes", env=env, code=2)
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert set(sim.current().values()) == {"1.0.0"}


def test_cancel_stops_ansible_promptly_without_orphans(sim: Sim) -> None:
    """A controller that never answers keeps the activate task waiting; a cancel ends the run at once."""
    ctx = FleetContext(config_path=sim.config)
    executor = ctx.executor()
    cancel = threading.Event()
    timer = threading.Timer(2.0, cancel.set)
    timer.start()
    run = executor.run(
        "update.yml",
        ["node-001", "node-002"],
        cancel=cancel,
        ident="cancel-test",
        extravars={
            "hc_version": "1.1.0",
            "hc_version_url": "http://127.0.0.1:9/never",
            "hc_wait_timeout": 120,
        },
    )
    assert run.cancelled and {r.status for r in run.results.values()} == {"cancelled"}
    # the activate task's 120 s wait was cut short, not waited out (it would end "did not answer")
    assert not any("did not answer" in (r.error or "") for r in run.results.values())
    time.sleep(0.5)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, "cancel-test")]
    assert leftovers == [], "ansible processes survived the cancel"


def _cmdline_has(proc: Path, needle: str) -> bool:
    try:
        return needle in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_artifacts_do_not_grow_without_bound(sim: Sim) -> None:
    ctx = FleetContext(config_path=sim.config)
    executor = ctx.executor()
    executor.settings.__dict__["keep_artifacts"] = 2  # frozen dataclass: a test-only override
    for _ in range(4):
        executor.run("facts.yml", ["node-001"])
    assert len(list((ctx.state_dir / "runner" / "artifacts").iterdir())) <= 2


def test_wheel_ships_the_playbooks_and_they_work(sim: Sim, tmp_path: Path) -> None:
    """A non-editable install gets working playbooks: build the wheel, install it to a target dir and
    run a rollout with that copy, from outside the source tree."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(wheels.glob("fleetctl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for f in (
        "update.yml",
        "rollback.yml",
        "facts.yml",
        "health.yml",
        "roles/host_controller/library/hc_release.py",
        "roles/host_controller/tasks/activate.yml",
    ):
        assert f"fleetctl/playbooks/{f}" in names
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, **sim.env, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import fleetctl.resources as r; print(r.playbooks_dir())"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(site / "fleetctl" / "playbooks")
    out = subprocess.run(
        [sys.executable, "-m", "fleetctl", "rollout", "1.2.0", "-l", "canary", "--yes", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["status"] == "succeeded"
    assert sim.current()["node-001"] == "1.2.0"
