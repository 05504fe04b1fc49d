"""Issue 9, finding 0: a killed fleetctl's Ansible dies with it, and whatever it left is ended before
anyone reads or touches a host. Real fleetctl processes, `kill -9` mid-batch, then at once a rollback
or a resume; the truth is read from disk (`current` symlinks) and from the sim's restart counters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from fleetctl import control
from fleetctl.context import FleetContext
from fleetctl.orphans import MARKER, AnsibleGroup
from fleetctl.sim import fleet as simfleet
from fleetctl.store import Store
from tests.conftest import Cli, Sim, fleetctl_proc

# The canary, then one batch of five hosts updated one at a time: a batch that takes a while.
SLOW_BATCH = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "0s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
]


def wait_for(predicate: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def states(sim: Sim) -> dict[str, str]:
    try:
        doc = control.status(FleetContext(config_path=sim.config)).to_json()
    except Exception:  # noqa: BLE001 - no run yet
        return {}
    return {h["host"]: h["state"] for h in doc["hosts"]}


def restarts(sim: Sim) -> dict[str, int]:
    """How often each node's controller was restarted: Ansible's own per-host changes."""
    return {name: int(n["restarts"]) for name, n in simfleet.server_status(sim.dir).items()}


def slow_sim(make_sim: Callable[..., Sim], forks: int) -> Sim:
    sim = make_sim(nodes=6, stages=SLOW_BATCH, max_unavailable=None, forks=forks)
    sim.write_config(health={"probes": []})
    return sim


def kill_mid_batch(sim: Sim) -> list[AnsibleGroup]:
    """Start `rollout 1.1.0`, kill -9 it once a host of its second batch switched while others are
    still being updated; returns the Ansible groups it had recorded."""
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)

    def mid_batch() -> bool:
        s, now = states(sim), sim.current()
        rest = sim.nodes[1:]
        switched = [n for n in rest if now[n] == "1.1.0"]
        return s.get("node-001") == "done" and bool(switched) and any(s.get(n) == "updating" for n in rest)

    try:
        wait_for(mid_batch, what="the second batch half done")
        groups = Store.open(f"sqlite:///{sim.dir / 'fleetctl.db'}").locks.groups.all()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert groups, "the running ansible-playbook is recorded in the journal"
    return groups


def ledger(cli: Cli, sim: Sim) -> dict[str, str | None]:
    return {h["host"]: h["version"] for h in cli.json("versions --json", env=sim.env)["hosts"]}


def test_kill_9_mid_batch_then_rollback_at_once(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = slow_sim(make_sim, forks=1)  # one host after the other: most of the batch still to do
    cli("versions --refresh", env=sim.env)  # the ledger knows where each host comes from
    kill_mid_batch(sim)
    cli("rollback --yes", env=sim.env)  # at once: no sleep for the orphan to finish
    after = sim.current()
    counted = restarts(sim)
    assert set(after.values()) == {"1.0.0"}, after
    time.sleep(4)  # an orphaned ansible-playbook would go on updating hosts now
    assert sim.current() == after, "nothing changed behind the journal's back"
    assert restarts(sim) == counted
    assert ledger(cli, sim) == after
    # each node restarted at most twice: once to 1.1.0 (if the rollout got there) and once back
    assert all(n <= 2 for n in counted.values()), counted
    assert cli.json("status --json", env=sim.env)["run"]["status"] == "succeeded"


def test_kill_9_mid_batch_then_resume_at_once(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = slow_sim(make_sim, forks=5)  # the whole batch at once: several modules in flight at the kill
    kill_mid_batch(sim)
    cli("resume --yes", env=sim.env)  # at once
    after = sim.current()
    counted = restarts(sim)
    assert set(after.values()) == {"1.1.0"}, after
    time.sleep(4)
    assert sim.current() == after and restarts(sim) == counted
    assert ledger(cli, sim) == after
    # never updated twice (a node killed between its switch and its restart may show 0: facts read
    # `current`, and the disk check above is what proves it runs the target)
    assert all(n <= 1 for n in counted.values()), f"a node was updated twice: {counted}"
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["status"] == "succeeded"
    # what resume asked the nodes is an observation, never a change the run made
    changes = cli.json("history --json", env=sim.env)["changes"]
    by_run = [c for c in changes if c["run"] == doc["run"]["id"]]
    assert by_run and all(c["to"] == "1.1.0" and c["source"] == "fleetctl" for c in by_run), by_run


def test_killed_fleetctl_takes_its_ansible_with_it(make_sim: Callable[..., Sim]) -> None:
    # 2.0.0's API blocks at once, and the module waits up to 10 minutes for it to answer: an orphaned
    # ansible-playbook would live that long. Nobody reaps here: the parent-death signal alone ends it.
    sim = make_sim(nodes=3, hang_after=0)
    sim.write_config(vars={"hc_wait_timeout": 600}, health={"probes": []})
    proc = fleetctl_proc(["rollout", "2.0.0", "--yes"], sim.env)
    store = Store.open(f"sqlite:///{sim.dir / 'fleetctl.db'}")
    try:
        group = wait_for(lambda: next(iter(store.locks.groups.all()), None), what="a recorded group")
        # the switch is done: the module now waits for the hung controller to answer 2.0.0
        wait_for(lambda: sim.current()["node-001"] == "2.0.0", what="the canary switched")
        assert group.members()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    wait_for(lambda: not group.members(), timeout=30, what="the orphaned Ansible to die with fleetctl")


def _sleeper(marker: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **({MARKER: marker} if marker else {})}
    code = "import time; time.sleep(120)"
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)


def test_a_lock_takeover_ends_and_waits_for_a_dead_holders_ansible(tmp_path: Any) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'j.db'}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = _sleeper("m-orphan")
    stranger = _sleeper(None)
    ours = _sleeper("m-ours")
    try:
        left = AnsibleGroup.new("update.yml", ["h1"], "run-1")
        left.marker, left.owner_pid, left.owner_start, left.pgid = "m-orphan", dead.pid, None, orphan.pid
        store.locks.groups.add(left)
        mine = AnsibleGroup.new("update.yml", ["h2"], "run-2")  # its owner (this process) is alive
        mine.marker, mine.pgid = "m-ours", ours.pid
        store.locks.groups.add(mine)
        store.locks.acquire("fleet:x", run_id=None, owner="t")
        assert orphan.poll() is not None, "the dead holder's group was ended before acquire returned"
        assert stranger.poll() is None and ours.poll() is None
        assert [g.marker for g in store.locks.groups.all()] == ["m-ours"]
    finally:
        for p in (orphan, stranger, ours):
            p.kill()
            p.wait()


def test_resume_records_what_it_asks_a_node_as_observed(make_sim: Callable[..., Sim], cli: Cli) -> None:
    """Finding 9: the ledger never saw node-001; resume asks it what it runs after a kill -9. That
    answer is an observation (source `observed`, no run), not a change the run made."""
    sim = slow_sim(make_sim, forks=1)
    assert cli.json("history --json", env=sim.env)["changes"] == []
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    try:
        wait_for(lambda: states(sim).get("node-001") == "updating", what="the canary in flight")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    cli("resume --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}
    changes = [c for c in cli.json("history --json", env=sim.env)["changes"] if c["host"] == "node-001"]
    first = min(changes, key=lambda c: c["at"])
    assert first["from"] is None and first["source"] == "observed" and first["run"] is None, changes
    assert all(c["source"] == "fleetctl" for c in changes if c["run"] is not None), changes


def test_an_old_journal_gains_the_ansible_groups_table_on_open(tmp_path: Any) -> None:
    import sqlite3

    from sqlalchemy import create_engine

    from fleetctl.store import migrations, schema

    db = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # a journal as the first release wrote it: schema version 1
        migrations.MIGRATIONS[0](conn)
        conn.execute(schema.meta.insert().values(key="schema_version", value="1"))
    engine.dispose()
    store = Store.open(f"sqlite:///{db}")
    group = AnsibleGroup.new("update.yml", ["h1"], "run-1")
    store.locks.groups.add(group)
    assert [g.marker for g in store.locks.groups.all()] == [group.marker]
    with sqlite3.connect(db) as raw:
        version = raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert version == str(len(migrations.MIGRATIONS))
