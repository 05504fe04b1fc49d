"""Issue 10: `fleetctl check [VERSION]`, the preflight, against real simulated fleets: every check passes
on a healthy fleet; stopped controllers, unreachable nodes, a missing or quarantined version, a bad
checksum, a freeze and a held lock each fail with exit 1, naming the host or field and the fix."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleetctl.context import FleetContext
from fleetctl.sim import fleet as simfleet
from tests.conftest import Cli, Sim

NODES = 3


def checks(doc: dict, name: str) -> list[dict]:
    return [c for c in doc["checks"] if c["name"] == name]


def failed(doc: dict) -> list[dict]:
    return [c for c in doc["checks"] if not c["ok"]]


def test_all_checks_pass_on_a_healthy_fleet(make_sim, cli: Cli) -> None:
    sim: Sim = make_sim(nodes=NODES)
    doc = cli.json("check 1.2.0 --json", env=sim.env)
    assert doc["ok"] is True and doc["failed"] == 0 and doc["version"] == "1.2.0"
    assert not failed(doc), failed(doc)
    names = {c["name"] for c in doc["checks"]}
    assert names == {
        "config", "inventory", "stages", "journal", "lock", "freeze", "window",
        "quarantine", "reach", "artifact", "probe",
    }  # fmt: skip
    for c in doc["checks"]:
        assert set(c) == {"name", "ok", "host", "detail", "fix"} and c["fix"] is None
    assert f"{NODES} of {NODES} host(s) answered" in checks(doc, "reach")[0]["detail"]
    assert "1.0.0 on 3" in checks(doc, "reach")[0]["detail"]
    artifact = checks(doc, "artifact")[0]["detail"]
    assert "host-controller-1.2.0.tar.gz" in artifact and "SHA256SUMS" in artifact
    assert "answered on node-001, node-002, node-003" in checks(doc, "probe")[0]["detail"]
    assert checks(doc, "lock")[0]["detail"] == "free"
    assert doc["unreachable"] == []
    text = cli("check", env=sim.env).stdout  # without VERSION: no artifact or quarantine check
    assert "artifact" not in text and "quarantine" not in text
    assert all(line.startswith("ok   ") for line in text.splitlines()), text


def test_stopped_controllers_and_an_unreachable_node_are_reported(make_sim, cli: Cli) -> None:
    sim: Sim = make_sim(nodes=NODES)
    inv = yaml.safe_load(sim.info.inventory.read_text())
    # node-003 now needs SSH to a port where nothing listens: Ansible cannot reach it.
    inv["all"]["hosts"]["node-003"].update(ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=1)
    sim.info.inventory.write_text(yaml.safe_dump(inv))
    simfleet.stop(sim.dir)  # every controller stops answering
    doc = cli.json("check --json", env=sim.env, code=1)
    assert doc["ok"] is False
    assert [u["host"] for u in doc["unreachable"]] == ["node-003"]
    reach = [c for c in checks(doc, "reach") if not c["ok"]]
    assert reach[0]["host"] == "node-003" and "ansible" in reach[0]["fix"]
    assert reach[-1]["detail"].startswith("1 of 3 host(s) did not answer")
    assert "2 of 3 host(s) answered" in reach[-1]["detail"]
    assert all(not c["ok"] for c in checks(doc, "reach"))
    probes = [c for c in checks(doc, "probe") if not c["ok"]]
    assert {c["host"] for c in probes} == {"node-001", "node-002"}  # asked on the reachable ones
    assert all("connection refused" in c["detail"] and c["fix"] for c in probes)
    text = cli("check", env=sim.env, code=1)
    fails = [line for line in text.stdout.splitlines() if line.startswith("FAIL")]
    assert any("node-003:" in line and "fix:" in line for line in fails)
    assert any("node-001:" in line and "connection refused" in line for line in fails)
    assert "check(s) failed" in text.stderr


def test_a_missing_version_and_a_bad_checksum_fail(make_sim, cli: Cli) -> None:
    sim: Sim = make_sim(nodes=NODES)
    doc = cli.json("check 9.9.9 --json", env=sim.env, code=1)
    [art] = checks(doc, "artifact")
    assert (
        not art["ok"] and "host-controller-9.9.9.tar.gz" in art["detail"] and "no such file" in art["detail"]
    )
    assert "9.9.9 is published" in art["fix"]
    assert [c["name"] for c in failed(doc)] == ["artifact"]
    sums = sim.dir / "artifacts" / "SHA256SUMS"
    sums.write_text(sums.read_text().replace(sums.read_text()[:64], "0" * 64, 1))  # 1.0.0's line
    doc = cli.json("check 1.0.0 --json", env=sim.env, code=1)
    [art] = checks(doc, "artifact")
    assert "says sha256:" + "0" * 64 in art["detail"] and "republish" in art["fix"]
    sums.write_text("")
    doc = cli.json("check 1.1.0 --json", env=sim.env, code=1)
    [art] = checks(doc, "artifact")
    assert "no checksum" in art["detail"] and "SHA256SUMS" in art["fix"]


def test_quarantine_freeze_and_lock_fail_and_name_the_fix(make_sim, cli: Cli) -> None:
    sim: Sim = make_sim(nodes=NODES)
    ctx = FleetContext(config_path=sim.config, operator="alice")
    ctx.store.quarantine.add(ctx.component, "2.0.0", reason="hangs after start", run_id="r1", by="alice")
    cli("freeze on --reason 'INC-1: IPC backlog' --for 2h", env=sim.env)
    ctx.store.locks.acquire(ctx.lock_name, run_id="r9", owner="bob")  # this live process holds it
    r = cli("check 2.0.0", env=sim.env, code=1)
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("FAIL")}
    assert set(lines) == {"quarantine", "freeze", "lock"}
    assert "quarantined" in lines["quarantine"] and "fleetctl quarantine clear 2.0.0" in lines["quarantine"]
    assert "INC-1: IPC backlog" in lines["freeze"] and "freeze off" in lines["freeze"]
    assert "lifts at" in lines["freeze"]
    assert "by bob" in lines["lock"] and "run r9" in lines["lock"]


def test_bad_usage_is_exit_2(make_sim, cli: Cli, tmp_path: Path) -> None:
    r = cli(["check", "../1.2.0"], env={"FLEETCTL_CONFIG": str(tmp_path / "none.yml")}, code=2)
    assert "not a plain version" in r.stderr
    r = cli("check", env={"FLEETCTL_CONFIG": str(tmp_path / "none.yml")}, code=2)
    assert "no fleet configuration" in r.stderr


def test_text_output_escapes_control_characters() -> None:
    from fleetctl.cli.setup_cmds import _plain

    assert _plain("node-1: \x1b[31mred\x1b[0m\nnext") == "node-1: \\x1b[31mred\\x1b[0m\\nnext"
