"""Issue 10, deliverable 7: what an operator met on a shift. A version that is not in the artifact store
is refused before anything runs (exit 2) and never quarantined; the cause of a failure is in every
summary and in the quarantine entry; unfinished runs have their own exit codes (5 stopped, 3 frozen,
0 for `n` at the prompt with "nothing done", 130 for Ctrl-C at the prompt)."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetctl import control
from fleetctl import rollout as rollouts
from fleetctl.context import FleetContext
from fleetctl.store.runs import RunHost
from tests.conftest import FLEETCTL, TWO_BATCHES, Cli, Sim, fleetctl_proc, host_states, run_status, wait_for
from tests.health_stub import HealthStub

BAKED = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "10s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
]


def test_a_version_not_in_the_artifact_store_is_refused_before_anything_runs(sim: Sim, cli: Cli) -> None:
    before = sim.current()
    for typo in ("9.9.9", "1.2"):
        result = cli(["rollout", typo, "--yes"], env=sim.env, code=2)
        assert "no such version in the artifact store" in result.stderr, result.stderr
    assert "no such version in the artifact store" in cli("schedule add 9.9.9", env=sim.env, code=2).stderr
    assert "NOT IN THE ARTIFACT STORE" in cli("plan 9.9.9", env=sim.env).stdout  # plan notes it
    assert cli.json("plan 9.9.9 --json", env=sim.env)["artifact"]["ok"] is False
    assert cli.json("plan 1.1.0 --json", env=sim.env)["artifact"]["ok"] is True
    assert cli.json("runs --json", env=sim.env)["runs"] == []
    assert cli.json("quarantine list --json", env=sim.env)["quarantine"] == []
    assert cli.json("schedule list --json", env=sim.env)["queue"] == []
    assert sim.current() == before


def test_a_version_that_never_ran_on_a_node_is_not_quarantined(make_sim: Callable[..., Sim]) -> None:
    """The engine's halt path: the canary fails its download (a bad checksum), the run halts and is
    reverted, and nothing is quarantined: no node ever ran the version."""
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    ctx = FleetContext(config_path=sim.config)
    plan = rollouts.make_plan(ctx, "1.1.0")  # made while the artifact is good; then the canary breaks
    sim.host_vars("node-001", hc_artifact_checksum="sha256:" + "0" * 64)
    run = rollouts.start(FleetContext(config_path=sim.config), plan)
    assert run is not None and run.status in ("rolled_back", "halted", "failed"), run
    ctx = FleetContext(config_path=sim.config)
    assert ctx.store.quarantine.list(ctx.component) == []
    assert set(sim.current().values()) == {"1.0.0"}


def test_every_summary_names_the_failed_host_and_what_was_quarantined(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    stub = HealthStub(sim, "node-001", "1.1.0", b"HTTP/1.1 500 broken\r\nConnection: close\r\n\r\n")
    try:
        result = cli("rollout 1.1.0 --yes --json", env=sim.env, code=1)
    finally:
        stub.close()
    doc = json.loads(result.stdout.splitlines()[-1])
    assert doc["status"] == "rolled_back"
    [failed] = doc["failed"]
    assert failed["host"] == "node-001" and failed["state"] == "rolled_back"
    assert "health gate" in failed["error"] and "500" in failed["error"]
    quarantined = doc["quarantined"]
    assert quarantined["version"] == "1.1.0"
    assert "node-001 failed its health gate" in quarantined["reason"] and "500" in quarantined["reason"]

    status = cli.json("status --json", env=sim.env)
    assert [f["host"] for f in status["failed"]] == ["node-001"]
    assert status["quarantined"]["version"] == "1.1.0"
    text = cli("status", env=sim.env).stdout
    assert "✗ node-001: health gate" in text and "version 1.1.0 quarantined" in text
    [entry] = cli.json("quarantine list --json", env=sim.env)["quarantine"]
    assert "node-001 failed its health gate" in entry["reason"]


def test_a_run_paused_by_the_operator_exits_5_and_says_how_to_go_on(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=3, stages=BAKED)
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="canary bake")
    cli("pause", env=sim.env)
    assert proc.wait(timeout=120) == 5
    err = proc.stderr.read() if proc.stderr else ""
    assert "paused by request" in err and "continue with `fleetctl resume" in err, err
    assert cli.json("status --json", env=sim.env)["run"]["status"] == "paused"


def test_a_run_paused_by_a_freeze_exits_3_and_names_the_freeze(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=3, stages=BAKED)
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="canary bake")
    said = cli(["freeze", "on", "--reason", "incident 42"], env=sim.env).stderr
    assert "will pause before its next batch" in said, said
    assert proc.wait(timeout=120) == 3
    err = proc.stderr.read() if proc.stderr else ""
    assert "incident 42" in err and "freeze off --reason" in err, err
    again = cli("resume --yes", env=sim.env, code=3).stderr  # pauses again, with the same advice
    assert "incident 42" in again and "freeze off --reason" in again, again
    lifted = cli(["freeze", "off", "--reason", "incident over"], env=sim.env).stderr
    assert "paused by a freeze is waiting" in lifted and "fleetctl resume" in lifted, lifted


def prompt_in_a_terminal(args: list[str], env: dict[str, str], answer: str | None) -> tuple[int, str]:
    """Run fleetctl on a pseudo-terminal; at its question answer `answer`, or press Ctrl-C (SIGINT)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        FLEETCTL + args,
        env={**os.environ, **env, "TERM": "dumb", "COLUMNS": "200"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while b"[y/N]" not in seen and time.monotonic() < deadline:
        seen += os.read(master, 65536)
    if answer is None:
        proc.send_signal(signal.SIGINT)
    else:
        os.write(master, answer.encode() + b"\n")
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        seen += data
    os.close(master)
    return proc.wait(timeout=60), seen.decode("utf-8", "replace")


def test_no_at_the_prompt_exits_0_with_nothing_done_and_ctrl_c_exits_130(sim: Sim, cli: Cli) -> None:
    code, out = prompt_in_a_terminal(["rollout", "1.1.0"], sim.env, "n")
    assert code == 0 and "nothing done" in out, out
    code, out = prompt_in_a_terminal(["rollout", "1.1.0"], sim.env, None)
    assert code == 130 and "interrupted" in out, out
    assert cli.json("runs --json", env=sim.env)["runs"] == []
    assert set(sim.current().values()) == {"1.0.0"}


def test_retry_failed_with_nothing_to_retry_exits_0_saying_so(sim: Sim, cli: Cli) -> None:
    assert "nothing to do: no rollback has failed hosts" in cli("rollback --retry-failed", env=sim.env).stderr
    assert cli.json("rollback --retry-failed --json", env=sim.env)["status"] == "noop"


def test_stderr_off_a_terminal_never_wraps(sim: Sim, cli: Cli, tmp_path: Path) -> None:
    """A long path in a suggested command stays on one line when stderr is not a terminal."""
    out = tmp_path / ("a-plan-file-with-a-rather-long-name-" * 3 + ".json")
    err = cli(["plan", "1.1.0", "-o", str(out)], env=sim.env).stderr
    assert f"`fleetctl rollout --plan {out}`" in err.splitlines()[-1], err


def left_interrupted(sim: Sim, version: str = "1.1.0", status: str = "interrupted") -> str:
    """A rollout journaled as a crash leaves it: interrupted in stage rest, batch 1 (no node touched)."""
    ctx = FleetContext(config_path=sim.config)
    plan = rollouts.make_plan(ctx, version)
    hosts = [
        (h, s.name, i + 1, plan.from_versions.get(h), plan.targets[h])
        for s in plan.stages
        for i, b in enumerate(s.batches)
        for h in b
    ]
    run = ctx.store.runs.create(
        kind="rollout",
        component=plan.component,
        target=version,
        operator="tester",
        reason=None,
        plan=plan.to_json(),
        fingerprint=plan.fingerprint,
        options={},
        hosts=hosts,
    )
    why = "interrupted by the operator" if status == "interrupted" else None
    ctx.store.runs.update(run.id, status=status, status_reason=why, stage="rest", batch=1)
    return run.id


def test_a_new_rollout_beside_an_interrupted_run_names_it_and_the_resume_prompt_says_where(
    sim: Sim, cli: Cli
) -> None:
    run_id = left_interrupted(sim)
    err = cli("rollout 1.2.0", env=sim.env, code=2).stderr  # no terminal to ask on, no --yes: refused
    assert f"run {run_id} (rollout 1.1.0) is unfinished, stopped at stage rest batch 1" in err, err
    assert f"`fleetctl resume {run_id}`" in err
    code, out = prompt_in_a_terminal(["resume"], sim.env, "n")
    assert code == 0 and "nothing done" in out, out
    assert f"Resume run {run_id} (rollout 1.1.0), stopped at stage rest batch 1 (interrupted" in out, out
    assert set(sim.current().values()) == {"1.0.0"}


def test_quarantined_versions_are_noted_by_plan_and_refused_by_schedule_add(sim: Sim, cli: Cli) -> None:
    ctx = FleetContext(config_path=sim.config)
    ctx.store.quarantine.add(
        ctx.component, "1.2.0", reason="node-001 failed its health gate", run_id=None, by="t"
    )
    text = cli("plan 1.2.0", env=sim.env).stdout
    assert "QUARANTINED: 1.2.0" in text and "node-001 failed its health gate" in text
    assert cli.json("plan 1.2.0 --json", env=sim.env)["quarantined"]["version"] == "1.2.0"
    assert "quarantined" in cli("schedule add 1.2.0", env=sim.env, code=3).stderr
    cli("versions --refresh", env=sim.env)  # the ledger learns that every node runs 1.0.0
    assert "already runs 1.0.0" in cli("schedule add 1.0.0", env=sim.env, code=2).stderr
    assert cli.json("schedule list --json", env=sim.env)["queue"] == []


def test_tick_skips_a_blocked_queue_item_marking_why_and_goes_on(sim: Sim, cli: Cli) -> None:
    from tests.test_schedule import open_now

    sim.write_config(maintenance=open_now())
    cli("schedule add 1.1.0", env=sim.env)
    cli("schedule add 1.2.0 -l canary", env=sim.env)
    ctx = FleetContext(config_path=sim.config)
    ctx.store.quarantine.add(ctx.component, "1.1.0", reason="found bad after queueing", run_id=None, by="t")
    result = cli("tick", env=sim.env)  # before: exit 3 on item 1 at every tick, item 2 never ran
    assert "queue item 1 (1.1.0) skipped:" in result.stderr, result.stderr
    assert result.stdout.splitlines()[-1].startswith("started run "), result.stdout
    assert sim.current()["node-001"] == "1.2.0"
    items = {i["id"]: i["status"] for i in cli.json("schedule list --json", env=sim.env)["queue"]}
    assert items[1] == "blocked"
    [blocked] = [
        e for e in cli.json("audit --json", env=sim.env)["audit"] if e["action"] == "schedule.blocked"
    ]
    assert blocked["subject"] == "1.1.0" and "quarantined" in blocked["reason"]


def test_one_eta_model_for_plan_bar_and_status_and_none_once_interrupted(sim: Sim, cli: Cli) -> None:
    ctx = FleetContext(config_path=sim.config)
    plan = rollouts.make_plan(ctx, "1.1.0")
    hosts = [
        RunHost("r", h, i, s.name, 1, "pending", "1.0.0", "1.1.0")
        for i, (s, h) in enumerate((s, h) for s in plan.stages for h in s.hosts)
    ]
    assert control.remaining_seconds(plan, hosts, 0.0) == plan.estimate_seconds()  # what `plan` says
    first = plan.stages[0]
    done = [RunHost(**{**vars(h), "state": "done"}) if h.host in first.batches[0] else h for h in hosts]
    taken = plan.batch_seconds(first, first.batches[0])
    left = plan.estimate_seconds() - taken
    assert control.remaining_seconds(plan, done, taken) == left  # on pace: the plan's estimate of the rest
    assert control.remaining_seconds(plan, done, 2 * taken) == 2 * left  # twice as slow: twice as long
    assert control.remaining_seconds(plan, [RunHost(**{**vars(h), "state": "done"}) for h in hosts], 9.0) == 0

    left_interrupted(sim, status="running")  # a run whose process died: running in the journal, no holder
    doc = cli.json("status --json", env=sim.env)["run"]
    assert doc["status"] == "interrupted" and doc["eta_seconds"] is None
    assert "eta" not in cli("status", env=sim.env).stdout


ALIASES = {"by": "operator", "actor": "operator", "target": "version", "changed_at": "at"}  # docs/json.md


def objects(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict):
        return [doc] + [o for v in doc.values() for o in objects(v)]
    if isinstance(doc, list):
        return [o for v in doc for o in objects(v)]
    return []


def test_json_names_one_per_concept_across_commands(sim: Sim, cli: Cli) -> None:
    """operator for who, host for a host, at for when, version for a version (docs/json.md); an old name
    is only ever a deprecated alias beside the canonical one, with the same value."""
    cli(["freeze", "on", "--reason", "INC-1", "-l", "ring1"], env=sim.env)
    cli(["freeze", "off", "--reason", "over"], env=sim.env)
    cli("schedule add 1.2.0 --not-before 2099-01-01T00:00:00Z", env=sim.env)
    cli("rollout 1.1.0 -l canary --yes", env=sim.env)
    ctx = FleetContext(config_path=sim.config)
    ctx.store.quarantine.add(ctx.component, "2.0.0", reason="hangs", run_id=None, by="tester")
    seen: set[str] = set()
    for args in (
        "runs",
        "status",
        "quarantine list",
        "schedule list",
        "audit",
        "freeze list",
        "versions",
        "history",
    ):
        for obj in objects(cli.json(f"{args} --json", env=sim.env)):
            seen.update(obj)
            for old, new in ALIASES.items():
                if old in obj and not (old == "target" and "kind" not in obj):  # a run's target
                    assert new in obj and obj[new] == obj[old], f"{args}: {old} without {new}: {obj}"
    assert {"operator", "host", "at", "version"} <= seen


def test_plain_rollback_reverts_the_rollout_that_changed_hosts_last(sim: Sim) -> None:
    """An older rollout resumed after a newer one started changes hosts later: it is the one to revert."""
    from fleetctl import rollback as rollbacks

    older = left_interrupted(sim, "1.1.0")
    newer = left_interrupted(sim, "1.2.0")
    ctx = FleetContext(config_path=sim.config)
    ctx.store.runs.set_host(newer, "node-003", state="done", from_version="1.0.0")
    time.sleep(0.01)  # the journal's clock moves on: the older run's change comes after
    ctx.store.runs.set_host(older, "node-001", state="done", from_version="1.0.0")
    assert ctx.store.runs.list(limit=1)[0].id == newer  # started last
    assert rollbacks.newest_changing_rollout(ctx).id == older  # changed a host last


def test_status_watch_goes_on_through_a_pause_until_the_run_ends(sim: Sim) -> None:
    run_id = left_interrupted(sim, status="paused")
    proc = fleetctl_proc(["status", "--watch", run_id], sim.env)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "paused" in first, first
    ctx = FleetContext(config_path=sim.config)
    ctx.store.runs.update(run_id, status="succeeded", status_reason=None)  # resumed elsewhere, finished
    out, _err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert f"run {run_id}" in out and "succeeded" in out, out  # it watched on past the pause
