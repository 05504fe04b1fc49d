"""Issue 9 finding 1: what a node reports is untrusted text. A node whose `current` points at a release
dir named with a Jinja expression must not get that expression evaluated on the controller, through a
refresh, the ledger, a rollout (hc_previous) or a rollback; the host is shown unknown/failed with the
escaped text, and nothing crashes."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from fleetctl.context import FleetContext
from fleetctl.store import schema
from tests.conftest import Cli, Sim

# Evaluated, the first half creates the file named by $FLEETCTL_PWNED and the second prints 1337.
EVIL = "{{ lookup('pipe', 'touch $FLEETCTL_PWNED') }}{{ 7 * 191 }}"
NODE = "node-002"


def _plant(sim: Sim, node: str, name: str = EVIL) -> None:
    """Point the node's `current` at a copy of its release under an evil name, as a hostile or broken
    node could."""
    root = sim.dir / "nodes" / node
    shutil.copytree(root / "releases" / "1.0.0", root / "releases" / name, symlinks=True)
    tmp = root / ".current-evil"
    os.symlink(os.path.join("releases", name), tmp)
    os.replace(tmp, root / "current")


def _env(sim: Sim, tmp_path: Path) -> tuple[dict[str, str], Path]:
    marker = tmp_path / "PWNED"
    os.environ["FLEETCTL_PWNED"] = str(marker)  # Ansible inherits it, whatever fleetctl passes on
    return {**sim.env, "FLEETCTL_PWNED": str(marker)}, marker


def _nothing_evaluated(sim: Sim, marker: Path, *texts: str) -> None:
    assert not marker.exists(), "a node's text was evaluated as a template on the controller"
    for node in sim.nodes:
        assert "1337" not in sim.releases(node)
    for text in texts:
        assert "1337" not in text


def test_refresh_records_a_templated_version_as_unknown(
    make_sim: Callable[..., Sim], cli: Cli, tmp_path: Path
) -> None:
    sim = make_sim(nodes=3)
    env, marker = _env(sim, tmp_path)
    _plant(sim, NODE)
    result = cli("versions --refresh --json", env=env, code=1)  # a host could not be read: exit 1
    doc = json.loads(result.stdout)
    versions = {h["host"]: h["version"] for h in doc["hosts"]}
    assert versions == {"node-001": "1.0.0", NODE: None, "node-003": "1.0.0"}
    [bad] = doc["unreachable"]
    assert bad["host"] == NODE
    assert "not a plain version" in bad["error"] or "invalid version" in bad["error"]
    assert repr(EVIL)[:40] in bad["error"]  # shown escaped
    assert doc["counts"] == {"1.0.0": 2, "unknown": 1}
    history = cli("history --json", env=env)  # never crashes, never shows the text as a version
    _nothing_evaluated(sim, marker, result.stdout, history.stdout)
    assert EVIL not in history.stdout


def test_a_bad_ledger_row_reads_as_unknown_everywhere(
    make_sim: Callable[..., Sim], cli: Cli, tmp_path: Path
) -> None:
    """A row an older fleetctl wrote (or a hand edit): `versions`, `hosts`, `history` and a plan show the
    host as unknown; the text reaches no playbook."""
    sim = make_sim(nodes=3)
    env, marker = _env(sim, tmp_path)
    cli("versions --refresh --json", env=env)
    store = FleetContext(config_path=sim.config, env=env).store
    with store.tx() as conn:
        conn.execute(schema.ledger.update().where(schema.ledger.c.host == NODE).values(version=EVIL))
        conn.execute(schema.history.update().where(schema.history.c.host == NODE).values(to_version=EVIL))
    store.close()
    doc = cli.json("versions --json", env=env)
    assert {h["host"]: h["version"] for h in doc["hosts"]}[NODE] is None
    hosts = cli.json("hosts --json", env=env)
    row = next(h for h in hosts["hosts"] if h["host"] == NODE)
    assert row["version"] is None and row["invalid"] == repr(EVIL)
    changes = cli.json("history --json", env=env)["changes"]
    assert all(c["to"] != EVIL for c in changes)
    plan = cli.json("plan 1.0.0 --json", env=env)
    assert list(plan["targets"]) == [NODE]  # unknown: it is asked to run 1.0.0, nothing else
    _nothing_evaluated(sim, marker, json.dumps(plan))


def test_a_rollout_reading_a_templated_previous_version_renders_nothing(
    make_sim: Callable[..., Sim], cli: Cli, tmp_path: Path
) -> None:
    """The update reads hc_previous (the evil name) from the node: that host fails with the escaped
    text, the run's own rollback never hands the text to rollback.yml, and nothing is evaluated."""
    sim = make_sim(nodes=3)
    env, marker = _env(sim, tmp_path)
    _plant(sim, NODE)
    lines = cli.json_lines("rollout 1.1.0 --yes --json", env=env, code=None)
    summary = lines[-1]
    failed = {f["host"]: f["error"] for f in summary["failed"]}
    assert "version" in failed[NODE]  # failed, with the text shown escaped
    assert sim.current()[NODE] in ("1.1.0", EVIL)  # updated, or left: never a rendered name
    back = cli("rollback --yes --json", env=env, code=None)
    assert sim.current()[NODE] in ("1.1.0", EVIL)
    _nothing_evaluated(sim, marker, json.dumps(lines), back.stdout)


def test_rollback_refuses_a_recorded_from_version_that_is_not_plain(
    make_sim: Callable[..., Sim], cli: Cli, tmp_path: Path
) -> None:
    """A journal written by an older fleetctl holds a node's evil from-version: `rollback` brings the
    other hosts back and leaves that one, naming why; the text never reaches rollback.yml."""
    sim = make_sim(nodes=3)
    env, marker = _env(sim, tmp_path)
    summary = cli.json_lines("rollout 1.1.0 --yes --json", env=env)[-1]
    assert summary["status"] == "succeeded" and set(sim.current().values()) == {"1.1.0"}
    store = FleetContext(config_path=sim.config, env=env).store
    with store.tx() as conn:
        t = schema.run_hosts
        conn.execute(t.update().where(t.c.host == NODE).values(from_version=EVIL))
    store.close()
    back = cli("rollback --yes --json", env=env, code=None)
    current = sim.current()
    assert current.pop(NODE) == "1.1.0"  # not revertible: left alone
    assert set(current.values()) == {"1.0.0"}
    ctx = FleetContext(config_path=sim.config, env=env)
    [rollback] = ctx.store.runs.list(kind="rollback")
    assert rollback.plan is not None
    why = {s["host"]: s["reason"] for s in rollback.plan["skipped"]}
    assert why[NODE].startswith("not revertible: the version to go back to, ")
    assert "is not a plain version" in why[NODE]
    _nothing_evaluated(sim, marker, back.stdout)


def test_an_edited_and_resealed_plan_file_is_refused_and_changes_nothing(
    make_sim: Callable[..., Sim], cli: Cli, tmp_path: Path
) -> None:
    """A plan file is an artifact anyone can edit and re-fingerprint: `rollout --plan` rebuilds the plan
    and runs only an equal one (exit 2 otherwise, naming what differs; no node, no journal touched)."""
    import hashlib

    sim = make_sim(nodes=3)
    path = tmp_path / "plan.json"
    cli(f"plan 1.1.0 -o {path}", env=sim.env)
    doc = json.loads(path.read_text())
    doc["stages"][0]["bake"] = 0.0  # no bake for the canary
    core = {k: v for k, v in doc.items() if k not in ("fingerprint", "estimate", "estimate_seconds")}
    doc["fingerprint"] = hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]
    path.write_text(json.dumps(doc))
    refused = cli(f"rollout --plan {path} --yes", env=sim.env, code=2)
    assert "bake is 0.0 in the plan, 1.0 now" in refused.stderr
    assert set(sim.current().values()) == {"1.0.0"}
    assert cli.json("runs --json", env=sim.env)["runs"] == []


def test_aborting_a_paused_run_leaves_a_host_whose_from_version_is_not_plain(
    make_sim: Callable[..., Sim], cli: Cli, tmp_path: Path
) -> None:
    """The engine's own revert (here: `abort` of a paused rollout) fails that host with the reason and
    brings the others back; the text never reaches rollback.yml."""
    sim = make_sim(nodes=3)
    env, marker = _env(sim, tmp_path)
    summary = cli.json_lines("rollout 1.1.0 --yes --json", env=env)[-1]
    store = FleetContext(config_path=sim.config, env=env).store
    store.runs.update(summary["run"], status="paused", status_reason="paused by test", finished_at=None)
    with store.tx() as conn:
        t = schema.run_hosts
        conn.execute(t.update().where(t.c.host == NODE).values(from_version=EVIL))
    cli(f"abort {summary['run']}", env=env, code=None)
    current = sim.current()
    assert current.pop(NODE) == "1.1.0" and set(current.values()) == {"1.0.0"}
    hosts = {h.host: h for h in store.runs.hosts(summary["run"])}
    assert hosts[NODE].state == "failed"
    assert (hosts[NODE].error or "").startswith("not rolled back: its from-version ")
    assert "is not a plain version" in (hosts[NODE].error or "")
    run = store.runs.get(summary["run"])
    assert run is not None and run.status == "failed" and NODE in (run.status_reason or "")
    store.close()
    _nothing_evaluated(sim, marker)
