"""The fleet lock across machines, on SQLite and on a real PostgreSQL server: real fleetctl processes that
present different host names (FLEETCTL_HOSTNAME) share one journal (FLEETCTL_DB). The truth is read from
the nodes' `current` symlinks and their controllers' restart counters."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fleetctl.sim import fleet as simfleet
from fleetctl.store import Store
from tests.conftest import Cli, Sim, fleetctl_proc, host_states, wait_for

LEASE = "5s"
# The canary (a bake long enough for the other controller to collide), then the rest one at a time.
BAKED_CANARY = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "4s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": 1, "bake": "0s"},
]


def controller(sim: Sim, url: str, machine: str, operator: str) -> dict[str, str]:
    """The environment of a fleetctl on `machine`, run by `operator`, on the shared journal `url`."""
    return {**sim.env, "FLEETCTL_DB": url, "FLEETCTL_HOSTNAME": machine, "FLEETCTL_OPERATOR": operator}


def shared_sim(make_sim: Callable[..., Sim], **policy: object) -> Sim:
    policy = {"stages": BAKED_CANARY, **policy}
    sim = make_sim(nodes=4, max_unavailable=None, **policy)
    sim.write_config(lock={"lease": LEASE})
    return sim


def states(cli: Cli, env: dict[str, str]) -> dict[str, str]:
    result = cli("status --json", env=env, code=None)
    return host_states(json.loads(result.stdout)) if result.exit_code == 0 else {}


def restarts(sim: Sim) -> dict[str, int]:
    return {name: int(n["restarts"]) for name, n in simfleet.server_status(sim.dir).items()}


def open_window() -> dict:
    """A maintenance window (UTC) open now, for `tick` on the real clock."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    window = {
        "name": "now",
        "start": f"{start:%Y-%m-%d %H:%M}",
        "end": f"{end:%Y-%m-%d %H:%M}",
        "timezone": "UTC",
    }
    return {"windows": [window]}


def lock_of(sim: Sim) -> str:
    """The name of the sim fleet's lock: fleet.yml `name:` (the sim's directory) and the component."""
    return f"fleet:{sim.dir.name}:host-controller"


def lease_expired(url: str, sim: Sim) -> bool:
    store = Store.open(url)
    try:
        holder = store.locks.holder(lock_of(sim))
        return holder is None or store.locks.is_dead(holder)
    finally:
        store.close()


def test_two_controllers_start_at_once_one_runs_the_other_exits_4(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    sim = shared_sim(make_sim)
    a = controller(sim, journal_url, "ctl-a", "alice")
    b = controller(sim, journal_url, "ctl-b", "bob")
    Store.open(journal_url).close()  # migrated once: the two race for the lock, not for the schema
    procs = {
        "a": fleetctl_proc(["rollout", "1.1.0", "--yes"], a),
        "b": fleetctl_proc(["rollout", "1.1.0", "--yes"], b),
    }
    results = {k: (p.wait(timeout=180), p.stderr.read() if p.stderr else "") for k, p in procs.items()}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 4], results
    winner = next(k for k, (code, _) in results.items() if code == 0)
    loser_err = results["b" if winner == "a" else "a"][1]
    who, machine = ("alice", "ctl-a") if winner == "a" else ("bob", "ctl-b")
    assert "another run holds the fleet lock" in loser_err
    assert f"by {who} on {machine}" in loser_err, loser_err
    assert set(sim.current().values()) == {"1.1.0"}
    runs = cli.json("runs --json", env=a)["runs"]
    assert [(r["operator"], r["status"]) for r in runs] == [(who, "succeeded")]


def test_kill_9_holder_other_machine_resumes_only_after_the_lease_expires(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    sim = shared_sim(make_sim)
    a = controller(sim, journal_url, "ctl-a", "alice")
    b = controller(sim, journal_url, "ctl-b", "bob")
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], a)
    wait_for(lambda: states(cli, b).get("node-001") == "verifying", what="the canary baking")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # its pid is gone, but it ran on ctl-a: from ctl-b only its lease says whether it lives
    refused = cli("resume --yes", env=b, code=4)
    assert "another run holds the fleet lock" in refused.stderr and "by alice on ctl-a" in refused.stderr
    assert set(sim.current().values()) <= {"1.0.0", "1.1.0"} and states(cli, b)["node-002"] == "pending"
    wait_for(lambda: lease_expired(journal_url, sim), timeout=30, what="the lease to expire")
    cli("resume --yes", env=b)
    assert set(sim.current().values()) == {"1.1.0"}
    assert all(n <= 1 for n in restarts(sim).values()), f"a node was updated twice: {restarts(sim)}"
    doc = cli.json("status --json", env=b)
    assert doc["run"]["status"] == "succeeded"
    changes = cli.json("history --json", env=b)["changes"]
    assert sorted(c["host"] for c in changes if c["to"] == "1.1.0") == sim.nodes  # each host once
    audit = cli.json("audit --json", env=b)["audit"]
    [takeover] = [e for e in audit if e["action"] == "lock.takeover" and e["details"].get("new_fence")]
    assert takeover["actor"] == "bob" and "lease expired" in takeover["reason"]
    assert takeover["details"]["host"] == "ctl-a" and takeover["details"]["operator"] == "alice"
    assert takeover["details"]["new_fence"] == takeover["details"]["fence"] + 1


def test_a_holder_that_lost_its_lease_stops_and_exits_4(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    """A holder stalled past its lease (SIGSTOP) is taken over by an abort from another machine; when it
    wakes its writes are refused: it exits 4 and leaves the run as the new holder left it."""
    long_bake = [{**BAKED_CANARY[0], "bake": "60s"}, BAKED_CANARY[1]]
    sim = shared_sim(make_sim, on_failure="halt", stages=long_bake)
    a = controller(sim, journal_url, "ctl-a", "alice")
    b = controller(sim, journal_url, "ctl-b", "bob")
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], a)
    wait_for(lambda: states(cli, b).get("node-001") == "verifying", what="the canary baking")
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: lease_expired(journal_url, sim), timeout=30, what="the stalled holder's lease to expire"
        )
        cli("abort", env=b, code=1)  # an aborted run is not a success
        after_abort = cli.json("status --json", env=b)
        assert after_abort["run"]["status"] == "aborted"
    finally:
        proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=60) == 4
    err = proc.stderr.read() if proc.stderr else ""
    assert "lost the fleet lock" in err, err
    doc = cli.json("status --json", env=b)
    assert doc["run"]["status"] == "aborted" and doc["hosts"] == after_abort["hosts"]
    assert set(sim.current().values()) <= {"1.0.0", "1.1.0"}
    assert sim.current()["node-002"] == "1.0.0"  # the stalled holder never went on to the next stage


def test_a_freeze_set_on_one_controller_blocks_the_others_tick(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    sim = make_sim(nodes=3)
    sim.write_config(maintenance=open_window())
    laptop = controller(sim, journal_url, "laptop", "carol")
    scheduler = controller(sim, journal_url, "scheduler", "cron")
    cli("schedule add 1.1.0", env=scheduler)
    cli("freeze on --reason 'INC-7 stop everything'", env=laptop)
    out = cli("tick", env=scheduler).stdout
    assert out.startswith("nothing to do: frozen by") and "INC-7" in out, out
    assert set(sim.current().values()) == {"1.0.0"} and cli.json("runs --json", env=scheduler)["runs"] == []
    cli("freeze off --reason 'understood'", env=laptop)
    assert cli("tick", env=scheduler).stdout.splitlines()[-1].startswith("started run ")
    assert set(sim.current().values()) == {"1.1.0"}


def test_status_watch_on_one_machine_follows_a_run_of_another(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    sim = shared_sim(make_sim)
    a = controller(sim, journal_url, "ctl-a", "alice")
    b = controller(sim, journal_url, "ctl-b", "bob")
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], a)
    wait_for(lambda: states(cli, b), what="the run to exist")
    lines = cli.json_lines("status --watch --json", env=b)
    assert proc.wait(timeout=120) == 0
    assert lines[-1]["run"]["status"] == "succeeded" and lines[-1]["run"]["operator"] == "alice"
    assert len(lines) >= 2


def test_the_heartbeat_renews_the_lease_past_its_first_expiry(
    make_sim: Callable[..., Sim], cli: Cli, journal_url: str
) -> None:
    long_bake = [{**BAKED_CANARY[0], "bake": "30s"}, BAKED_CANARY[1]]
    sim = shared_sim(make_sim, stages=long_bake)
    a = controller(sim, journal_url, "ctl-a", "alice")
    b = controller(sim, journal_url, "ctl-b", "bob")
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], a)
    try:
        store = Store.open(journal_url)
        first = wait_for(lambda: store.locks.holder(lock_of(sim)), what="the lock taken")
        assert first.expires_at is not None and first.hostname == "ctl-a"
        # renewed until the lease it first took is over: the holder lives on, judged by its lease alone
        wait_for(
            lambda: (h := store.locks.holder(lock_of(sim))) and h.heartbeat_at > first.expires_at,
            what="a renewal past the first expiry",
        )
        refused = cli("rollout 1.2.0 -l canary --yes", env=b, code=4)
        assert "by alice on ctl-a" in refused.stderr
        assert store.locks.holder(lock_of(sim)).fence == first.fence
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_a_lease_shorter_than_2s_is_refused(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(nodes=3)
    sim.write_config(lock={"lease": "1s"})
    err = cli("status", env=sim.env, code=2).stderr
    assert "lock" in err and "lease" in err and "at least 2s" in err
