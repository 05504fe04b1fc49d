"""The freeze rules through the CLI's front doors: rollout refuses (exit 3, nothing changed), plan shows
the freeze, an override needs a reason and is audited."""

from __future__ import annotations

import json

from tests.conftest import Cli, Sim


def test_rollout_refused_plan_shows_it_and_override_is_audited(sim: Sim, cli: Cli) -> None:
    cli("freeze on --reason 'INC-42 controller hangs'", env=sim.env)
    refused = cli("rollout 1.1.0 -l canary --yes", env=sim.env, code=3)
    assert "INC-42 controller hangs" in refused.stderr and "Traceback" not in refused.stderr
    assert set(sim.current().values()) == {"1.0.0"}
    assert cli.json("runs --json", env=sim.env)["runs"] == []
    plan = cli.json("plan 1.1.0 -l canary --json", env=sim.env)
    assert plan["frozen_by"][0]["reason"] == "INC-42 controller hangs"
    assert "FROZEN" in cli("plan 1.1.0 -l canary", env=sim.env).stdout
    assert (
        "--override-freeze needs --reason"
        in cli("rollout 1.1.0 -l canary --yes --override-freeze", env=sim.env, code=2).stderr
    )
    done = cli.json_lines(
        "rollout 1.1.0 -l canary --yes --override-freeze --reason 'security fix' --json", env=sim.env
    )
    assert done[-1]["status"] == "succeeded" and sim.current()["node-001"] == "1.1.0"
    audit = cli.json("audit --json", env=sim.env)["audit"]
    override = next(a for a in audit if a["action"] == "freeze.override")
    assert override["reason"] == "security fix" and override["actor"] == "tester"
    cli("freeze off --reason 'understood'", env=sim.env)
    assert json.loads(cli("freeze status --json", env=sim.env).stdout)["frozen"] is False
