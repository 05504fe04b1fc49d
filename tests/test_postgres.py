"""The integration paths that write the journal, run on SQLite and on a real PostgreSQL server (the
journal at FLEETCTL_DB; `eval "$(.ci/postgres.sh)"` gives the server): rollout, a failed canary rolled
back and quarantined, a rollback, freezes, the queue and the audit log. The truth is read from disk.
(Lock, kill -9 and resume across machines: tests/test_lease.py.)"""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Cli, Sim

CANARY_THEN_REST = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "4s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
]


def on(sim: Sim, url: str) -> dict[str, str]:
    return {**sim.env, "FLEETCTL_DB": url}


def test_rollout_failed_canary_rollback_quarantine_freeze_audit(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    sim = make_sim(nodes=3, hang_after=1.0, stages=CANARY_THEN_REST)
    env = on(sim, journal_url)
    cli("versions --refresh", env=env)
    cli("rollout 1.1.0 --yes", env=env)
    assert set(sim.current().values()) == {"1.1.0"}

    # 2.0.0 hangs a second after it starts: the canary's bake catches it, it is rolled back, quarantined
    cli("rollout 2.0.0 --yes", env=env, code=1)
    assert set(sim.current().values()) == {"1.1.0"}
    [entry] = cli.json("quarantine list --json", env=env)["quarantine"]
    assert entry["version"] == "2.0.0" and entry["run"]
    assert "quarantined" in cli("rollout 2.0.0 --yes", env=env, code=3).stderr

    # freezes: a rollout is refused (exit 3) while a rollback goes on (audited)
    cli("freeze on --reason 'INC-11 investigating'", env=env)
    assert "INC-11" in cli("rollout 1.2.0 -l canary --yes", env=env, code=3).stderr
    cli("rollback --to 1.0.0 --reason 'back to known good' --yes", env=env)
    assert set(sim.current().values()) == {"1.0.0"}
    cli("freeze off --reason 'understood'", env=env)

    runs = cli.json("runs --json", env=env)["runs"]
    assert [(r["kind"], r["target"], r["status"]) for r in runs] == [
        ("rollback", "1.0.0", "succeeded"),
        ("rollout", "2.0.0", "rolled_back"),
        ("rollout", "1.1.0", "succeeded"),
    ]
    versions = {h["host"]: h["version"] for h in cli.json("versions --json", env=env)["hosts"]}
    assert versions == sim.current()
    changes = cli.json("history --json", env=env)["changes"]
    canary = [(c["from"], c["to"]) for c in reversed(changes) if c["host"] == "node-001"]
    assert canary == [
        (None, "1.0.0"),
        ("1.0.0", "1.1.0"),
        ("1.1.0", "2.0.0"),
        ("2.0.0", "1.1.0"),
        ("1.1.0", "1.0.0"),
    ]
    actions = [a["action"] for a in cli.json("audit --json", env=env)["audit"]]
    for action in ("quarantine.add", "freeze.on", "freeze.off"):
        assert action in actions, actions


def test_queue_and_tick_on_the_shared_journal(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    from tests.test_lease import open_window

    sim = make_sim(nodes=3)
    sim.write_config(maintenance=open_window())
    env = on(sim, journal_url)
    cli("schedule add 1.1.0", env=env)
    [item] = cli.json("schedule list --json", env=env)["queue"]
    assert (item["version"], item["status"]) == ("1.1.0", "queued")
    assert cli("tick", env=env).stdout.splitlines()[-1].startswith("started run ")
    assert set(sim.current().values()) == {"1.1.0"}
    assert cli.json("schedule list --json", env=env) == {"queue": []}
    assert cli("tick", env=env).stdout == "nothing to do: queue empty\n"
