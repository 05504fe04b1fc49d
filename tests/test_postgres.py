"""The integration paths that write the journal, run on SQLite and on a real PostgreSQL server (the
journal at FLEETCTL_DB; `eval "$(.ci/postgres.sh)"` gives the server): rollout, a failed canary rolled
back and quarantined, a rollback, freezes, the queue and the audit log. The truth is read from disk.
(Lock, kill -9 and resume across machines: tests/test_lease.py.)"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

from sqlalchemy import create_engine, func, select, text

from fleetctl.store import db_admin
from fleetctl.store.migrations import MIGRATIONS
from tests.conftest import FLEETCTL, Cli, Sim

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


# -- fleetctl db: status, upgrade, copy ------------------------------------------------------------------


def test_a_shared_journal_is_migrated_only_by_db_upgrade(
    make_sim: Callable[..., Sim], cli: Cli, pg_url: str
) -> None:
    sim = make_sim(nodes=3)
    env = on(sim, pg_url)
    refused = cli("status --json", env=env, code=2)
    assert "fleetctl db upgrade" in refused.stderr and "\n" not in refused.stderr.split("hint:")[0].strip()
    before = cli.json("db status --json", env=env)
    assert before["schema_version"] == 0 and before["migrates_on_open"] is False
    assert [p["version"] for p in before["pending"]] == list(range(1, len(MIGRATIONS) + 1))
    assert cli.json("db upgrade --json", env=env) == {
        "from": 0,
        "to": len(MIGRATIONS),
        "applied": len(MIGRATIONS),
    }
    assert cli.json("db upgrade --json", env=env)["applied"] == 0
    assert cli.json("db status --json", env=env)["pending"] == []
    cli("rollout 1.1.0 --yes", env=env)
    # a newer fleetctl migrated it: this one refuses it, naming both versions
    engine = create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value='99' WHERE key='schema_version'"))
    engine.dispose()
    err = cli("status", env=env, code=2).stderr
    assert "schema version 99, newer than this fleetctl knows" in err and "upgrade fleetctl" in err
    assert cli("db upgrade", env=env, code=2)


def test_two_controllers_upgrading_at_once_migrate_once(pg_url: str) -> None:
    procs = [
        subprocess.Popen(
            [*FLEETCTL, "--db", pg_url, "db", "upgrade", "--json"],
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        for _ in range(4)
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o["applied"] for o in outs) == [0, 0, 0, len(MIGRATIONS)], outs
    assert db_admin.status(pg_url).version == len(MIGRATIONS)


def test_sqlite_journal_copied_to_postgresql(make_sim: Callable[..., Sim], cli: Cli, pg_url: str) -> None:
    sim = make_sim(nodes=3)
    cli("rollout 1.1.0 --yes", env=sim.env)  # the embedded journal beside fleet.yml
    cli("freeze on --reason 'INC-3 moving the journal'", env=sim.env)
    cli("schedule add 1.2.0", env=sim.env)
    sqlite_url = f"sqlite:///{sim.dir / 'fleetctl.db'}"
    reads = (
        "versions --json",
        "history --json",
        "runs --json",
        "freeze status --json",
        "audit --json",
        "schedule list --json",
    )
    expected = {r: cli.json(r, env=sim.env) for r in reads}
    copied = cli.json(f"db copy --to {pg_url} --json", env=sim.env)
    source = {t.name: n for t, n in _counts(sqlite_url).items()}
    assert copied["tables"] == source and source["run_hosts"] == 3 and source["history"] >= 3
    env = on(sim, pg_url)
    assert {r: cli.json(r, env=env) for r in reads} == expected
    cli("freeze off --reason 'moved'", env=env)  # new rows get fresh ids (sequences moved past the copy)
    cli("rollout 1.2.0 --yes", env=env)
    assert set(sim.current().values()) == {"1.2.0"}
    again = cli(f"db copy --to {pg_url}", env=sim.env, code=2)
    assert "is not empty" in again.stderr


def _counts(url: str) -> dict:
    engine = create_engine(url)
    with engine.connect() as conn:
        counts = {
            t: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in db_admin.live_tables()
        }
    engine.dispose()
    return counts
