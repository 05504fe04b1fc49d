"""Several fleets in one journal (issue 12, item 5), on SQLite and on a real PostgreSQL server: two
simulated fleets with their own fleet.yml `name:` share one database (FLEETCTL_DB). Their nodes have the
same names (node-001...), so a shared ledger row or lock would show. The truth is read from disk."""

from __future__ import annotations

import signal
from collections.abc import Callable

import yaml
from sqlalchemy import inspect, text

from fleetctl.store import Store, make_engine
from tests.conftest import Cli, Sim, fleetctl_proc, wait_for

LONG_CANARY = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "600s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
]


def named(make_sim: Callable[..., Sim], name: str, **policy: object) -> Sim:
    sim = make_sim(nodes=3, **policy)
    sim.write_config(name=name)
    return sim


def on(sim: Sim, url: str) -> dict[str, str]:
    return {**sim.env, "FLEETCTL_DB": url}


def versions(cli: Cli, env: dict[str, str]) -> dict[str, str | None]:
    return {h["host"]: h["version"] for h in cli.json("versions --json", env=env)["hosts"]}


def test_two_fleets_keep_their_own_lock_ledger_and_runs_and_an_all_fleets_freeze_stops_both(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    eu = named(make_sim, "prod-eu", stages=LONG_CANARY)
    us = named(make_sim, "prod-us")
    a, b = on(eu, journal_url), on(us, journal_url)
    assert sorted(eu.nodes) == sorted(us.nodes)  # the same host names in both fleets
    cli("versions --refresh", env=a)
    cli("versions --refresh", env=b)

    # prod-eu's rollout holds its lock (its canary bakes for minutes) while prod-us rolls out in full
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], a)
    try:
        store = Store.open(journal_url)
        try:
            held = wait_for(lambda: store.locks.holder("fleet:prod-eu:host-controller"), what="eu's lock")
            assert held is not None and held.token
            cli("rollout 1.2.0 --yes", env=b)  # not exit 4: the other fleet's lock is not this one's
            assert proc.poll() is None and store.locks.holder("fleet:prod-eu:host-controller")
            assert store.locks.holder("fleet:prod-us:host-controller") is None  # released when done
        finally:
            store.close()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert set(us.current().values()) == {"1.2.0"}
    assert set(eu.current().values()) <= {"1.0.0", "1.1.0"} and eu.current()["node-002"] == "1.0.0"

    # separate ledgers: each fleet's versions are its own nodes' (the same host names, other versions)
    cli("versions --refresh", env=a)
    assert versions(cli, a) == eu.current()
    assert versions(cli, b) == us.current()
    eu_runs, us_runs = cli.json("runs --json", env=a), cli.json("runs --json", env=b)
    assert eu_runs["fleet"] == "prod-eu" and [r["target"] for r in eu_runs["runs"]] == ["1.1.0"]
    assert us_runs["fleet"] == "prod-us" and [r["target"] for r in us_runs["runs"]] == ["1.2.0"]
    assert {r["fleet"] for r in us_runs["runs"]} == {"prod-us"}
    assert "fleet prod-us" in cli("runs", env=b).stderr

    # a freeze of one fleet leaves the other alone; one on every fleet stops both
    cli("freeze on --reason 'eu only'", env=a)
    assert cli.json("freeze status --json", env=b)["frozen"] is False
    cli("freeze off --reason done", env=a)
    cli("freeze on --all-fleets --reason 'INC-7: stop all host-controller changes'", env=a)
    refused = cli("rollout 1.1.0 --yes", env=b, code=3)
    assert "INC-7" in refused.stderr and "all fleets" in refused.stderr
    status = cli.json("freeze status --json", env=b)
    assert status["fleet"] == "prod-us" and status["frozen"] and status["by"][0]["all_fleets"]
    assert "INC-7" in cli("rollout 1.2.0 --yes", env=a, code=3).stderr
    assert set(us.current().values()) == {"1.2.0"}
    cli("freeze off --reason 'not mine to lift'", env=b)  # its own freezes only: still frozen
    assert cli.json("freeze status --json", env=b)["frozen"] is True
    cli("freeze off --all-fleets --reason 'understood'", env=b)
    assert cli.json("freeze status --json", env=a)["frozen"] is False
    actions = [e["action"] for e in cli.json("audit --json", env=b)["audit"]]
    assert actions.count("freeze.on") == 0 and "freeze.off" in actions  # eu's freeze.on is eu's audit


def test_a_shared_database_needs_a_name(make_sim: Callable[..., Sim], cli: Cli, journal_url: str) -> None:
    sim = make_sim(nodes=3)
    doc = yaml.safe_load(sim.config.read_text())
    doc.pop("name", None)
    sim.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = on(sim, journal_url)
    if journal_url.startswith("sqlite"):  # embedded: the name of fleet.yml's directory
        assert cli.json("runs --json", env=env)["fleet"] == sim.config.parent.name
        return
    refused = cli("runs", env=env, code=2)
    assert "name:" in refused.stderr and "fleet.yml" in refused.stderr


def _as_version_5(path: str) -> None:
    """Turn a journal into what fleetctl wrote before migration 6: no fleet columns, the ledger keyed by
    (host, component), schema version 5."""
    engine = make_engine(f"sqlite:///{path}")
    cols = "host, component, version, previous_version, changed_at, run_id, operator, source"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE ledger_v5 (host VARCHAR(255) NOT NULL, component VARCHAR(64) NOT NULL, "
            "version VARCHAR(128), previous_version VARCHAR(128), changed_at DATETIME, run_id VARCHAR(64), "
            "operator VARCHAR(128), source VARCHAR(16) NOT NULL, PRIMARY KEY (host, component))"
        )
        conn.exec_driver_sql(f"INSERT INTO ledger_v5 ({cols}) SELECT {cols} FROM ledger")
        conn.exec_driver_sql("DROP TABLE ledger")
        conn.exec_driver_sql("ALTER TABLE ledger_v5 RENAME TO ledger")
        for table in ("history", "runs", "freezes", "quarantine", "queue", "audit"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN fleet")
        conn.exec_driver_sql("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
        conn.exec_driver_sql("DELETE FROM meta WHERE key = 'legacy_fleet'")
    engine.dispose()


def test_an_old_single_fleet_journal_opens_and_its_rows_stay_visible(
    make_sim: Callable[..., Sim], cli: Cli, tmp_path
) -> None:
    sim = named(make_sim, "prod-eu")
    path = tmp_path / "old.db"
    env = on(sim, str(path))
    cli("rollout 1.1.0 --yes", env=env)
    cli("freeze on --reason 'before the upgrade'", env=env)
    _as_version_5(str(path))
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert inspect(conn).get_pk_constraint("ledger")["constrained_columns"] == ["host", "component"]
    engine.dispose()

    assert versions(cli, env) == {n: "1.1.0" for n in sim.nodes}  # migrated on open, rows claimed
    assert [r["target"] for r in cli.json("runs --json", env=env)["runs"]] == ["1.1.0"]
    assert cli.json("freeze status --json", env=env)["frozen"] is True
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert inspect(conn).get_pk_constraint("ledger")["constrained_columns"] == [
            "fleet",
            "host",
            "component",
        ]
        assert conn.execute(text("SELECT DISTINCT fleet FROM ledger")).scalars().all() == ["prod-eu"]
        assert conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar() == "6"
    engine.dispose()
    # another fleet opening the journal later does not see them
    other = named(make_sim, "staging")
    assert cli.json("runs --json", env=on(other, str(path)))["runs"] == []
