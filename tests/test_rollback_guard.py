"""Issue 9: `rollback --to` is not an unguarded deploy. A rollback never installs a quarantined version;
a move to a version a host never ran, or to a newer one, is a rollout in disguise: refused (exit 3 under a
freeze, 2 otherwise, nothing changed) unless --allow-forward --reason, which is audited. Real runs on a
small simulated fleet; the ground truth is each node's `current` on disk."""

from __future__ import annotations

import io
from collections.abc import Callable

from fleetctl import rollback as rollbacks
from fleetctl.cli.output import CliState, console
from fleetctl.cli.rollback import show
from fleetctl.context import FleetContext
from tests.conftest import Cli, Sim

ONE_WIDE_STAGE = [{"name": "all", "hosts": "all", "batch": "100%", "bake": "0s"}]


def run_ids(cli: Cli, sim: Sim) -> list[str]:
    return [r["id"] for r in cli.json("runs --json", env=sim.env)["runs"]]


def test_a_rollback_never_installs_a_quarantined_version(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(
        nodes=3,
        hang_after=2.0,
        stages=[
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "6s", "max_failures": 0},
            {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
        ],
    )
    cli("rollout 2.0.0 --yes", env=sim.env, code=1)  # the canary hangs in its bake: rolled back, quarantined
    assert set(sim.current().values()) == {"1.0.0"}
    assert [q["version"] for q in cli.json("quarantine list --json", env=sim.env)["quarantine"]] == ["2.0.0"]
    before = run_ids(cli, sim)
    for extra in ("", " --allow-forward --reason 'we know what we do'"):
        refused = cli(f"rollback --to 2.0.0 -l canary --yes{extra}", env=sim.env, code=3)
        assert "rollback refused: version 2.0.0 is quarantined" in refused.stderr
        assert "fleetctl quarantine clear 2.0.0" in refused.stderr and "Traceback" not in refused.stderr
    assert set(sim.current().values()) == {"1.0.0"}
    assert run_ids(cli, sim) == before


def test_forward_moves_are_refused_unless_allowed_with_a_reason(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=4, stages=ONE_WIDE_STAGE, max_unavailable=None)
    cli("rollout 1.2.0 -l canary --yes", env=sim.env)
    cli("rollout 1.1.0 -l all:!canary --yes", env=sim.env)
    start = {"node-001": "1.2.0", "node-002": "1.1.0", "node-003": "1.1.0", "node-004": "1.1.0"}
    assert sim.current() == start
    before = run_ids(cli, sim)

    older = cli("rollback --to 1.1.0 --yes", env=sim.env, code=2)  # older, but node-001 never ran it
    assert "1 host(s) would go forward, e.g. node-001 1.2.0 -> 1.1.0 (it never ran 1.1.0)" in older.stderr
    newer = cli("rollback --to 1.2.0 --yes --json", env=sim.env, code=2)
    assert "3 host(s) would go forward, e.g. node-002 1.1.0 -> 1.2.0" in newer.stderr
    assert newer.stdout == ""
    no_reason = cli("rollback --to 1.2.0 --allow-forward --yes", env=sim.env, code=2)
    assert "--allow-forward needs --reason" in no_reason.stderr
    assert sim.current() == start and run_ids(cli, sim) == before  # nothing changed

    ctx = FleetContext(config_path=sim.config, operator="tester", env=sim.env)
    preview = rollbacks.prepare(ctx, to="1.2.0", allow_forward=True, reason="hotfix")
    out = io.StringIO()
    show(CliState(ctx, out=console(file=out, width=200)), preview)
    assert "3 host(s)  1.1.0 -> 1.2.0  forward" in out.getvalue()
    assert "FORWARD node-002: it never ran 1.2.0" in out.getvalue()

    args = ["rollback", "--to", "1.2.0", "-l", "node-002", "--allow-forward", "--reason", "hotfix INC-7"]
    summary = cli.json_lines([*args, "--yes", "--json"], env=sim.env)[-1]
    assert summary["status"] == "succeeded"
    assert summary["moves"] == [
        {
            "host": "node-002",
            "from": "1.1.0",
            "to": "1.2.0",
            "direction": "forward",
            "why": "it never ran 1.2.0",
        }
    ]
    assert sim.current() == {**start, "node-002": "1.2.0"}
    audit = cli.json("audit --json", env=sim.env)["audit"]
    entry = next(a for a in audit if a["action"] == "rollback.forward")
    assert (entry["subject"], entry["reason"], entry["actor"]) == (summary["run"], "hotfix INC-7", "tester")
    assert [h["host"] for h in entry["details"]["hosts"]] == ["node-002"]

    back = cli.json_lines("rollback --to 1.0.0 --yes --json", env=sim.env)[-1]  # every host ran 1.0.0
    assert back["status"] == "succeeded"
    assert {m["direction"] for m in back["moves"]} == {"back"} and len(back["moves"]) == 4
    assert set(sim.current().values()) == {"1.0.0"}


def test_a_forward_rollback_during_a_freeze_is_refused_with_exit_3(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=3, stages=ONE_WIDE_STAGE, max_unavailable=None)
    cli("rollout 1.1.0 --yes", env=sim.env)
    cli("freeze on --reason 'INC-9: hands off'", env=sim.env)
    before = run_ids(cli, sim)
    refused = cli("rollback --to 1.2.0 --yes", env=sim.env, code=3)
    assert "would go forward" in refused.stderr and "frozen by manual #1" in refused.stderr
    assert "INC-9: hands off" in refused.stderr
    cli("rollout 1.2.0 --yes", env=sim.env, code=3)  # the same move as a rollout: refused the same way
    assert set(sim.current().values()) == {"1.1.0"} and run_ids(cli, sim) == before

    args = ["rollback", "--to", "1.2.0", "-l", "canary", "--allow-forward", "--reason", "security fix"]
    summary = cli.json_lines([*args, "--yes", "--json"], env=sim.env)[-1]
    assert summary["status"] == "succeeded" and sim.current()["node-001"] == "1.2.0"
    audit = cli.json("audit --json", env=sim.env)["audit"]
    forward = next(a for a in audit if a["action"] == "rollback.forward")
    assert forward["subject"] == summary["run"] and forward["reason"] == "security fix"
    assert forward["details"]["freezes"][0]["reason"] == "INC-9: hands off"
    assert any(a["action"] == "rollback.during_freeze" and a["subject"] == summary["run"] for a in audit)
