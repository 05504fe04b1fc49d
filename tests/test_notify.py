"""Issue 13.1: notifications. A real local HTTP receiver records webhook deliveries (HMAC checked); the
faulty build on the simulated fleet produces run.started, run.halted, run.rolled_back (and the rollback
and quarantine events) exactly once each, with the failed host and its error; receivers that refuse,
answer 500 or hang leave the run's outcome unchanged and get the events later; two senders never send
a row twice; a kill -9 and resume do not repeat an event; Apprise URLs through the `notify` extra."""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetctl import notify_send
from fleetctl.context import FleetContext
from tests.conftest import TWO_BATCHES, Cli, Sim, fleetctl_proc, host_states, need, run_status, wait_for

SECRET = "s3cret-for-the-test"
CANARY_CATCHES_2_0_0 = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "6s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
]


class Receiver:
    """A real HTTP server on loopback that records what it is sent. mode: ok | 500 | hang."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                if receiver.mode == "500":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b"internal \x1b[31mtrouble\x1b[0m")
                    return
                receiver.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _h, body in self.got]

    def names(self) -> Counter[str]:
        return Counter(e["event"] for e in self.events())

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def notify_sim(make_sim: Callable[..., Sim], url: str, nodes: int = 3, **target: Any) -> Sim:
    sim = make_sim(nodes=nodes, hang_after=2.0, stages=CANARY_CATCHES_2_0_0)
    secret = sim.dir / "hook.secret"
    secret.write_text(SECRET + "\n")
    sim.write_config(
        name="lab", notify=[{"webhook": url, "secret_file": str(secret), "timeout": "1s", **target}]
    )
    return sim


def test_the_faulty_build_is_reported_once_each_with_the_failed_host(
    make_sim: Callable[..., Sim], cli: Cli, receiver: Receiver, tmp_path: Path
) -> None:
    sim = notify_sim(make_sim, receiver.url)
    summary = cli.json_lines("rollout 2.0.0 --yes --json", env=sim.env, code=1)[-1]
    assert summary["status"] == "rolled_back"
    assert set(sim.current().values()) == {"1.0.0"}
    wanted = [
        "run.started",
        "run.halted",
        "rollback.started",
        "quarantine.added",
        "rollback.finished",
        "run.rolled_back",
    ]
    assert receiver.names() == Counter(wanted)  # each exactly once, and nothing else
    for headers, body in receiver.got:  # every body signed with the shared secret, over its exact bytes
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-fleetctl-signature"], expected)
        assert headers["x-fleetctl-event"] == json.loads(body)["event"]
    events = {e["event"]: e for e in receiver.events()}
    rolled = events["run.rolled_back"]
    assert rolled["fleet"] == "lab" and rolled["run"] == summary["run"] and rolled["kind"] == "rollout"
    assert (
        rolled["version"] == "2.0.0"
        and rolled["status"] == "rolled_back"
        and "stage canary" in rolled["reason"]
    )
    assert rolled["operator"] == "tester" and rolled["see"] == f"fleetctl status {summary['run']}"
    assert [h["host"] for h in rolled["failed"]] == ["node-001"] and "no answer" in rolled["failed"][0][
        "error"
    ]
    assert rolled["counts"] == {"rolled_back": 1, "skipped": 2}
    assert events["quarantine.added"]["version"] == "2.0.0"
    (tmp_path / "payload-run.rolled_back.json").write_text(json.dumps(rolled, indent=2))

    cli("notify flush", env=sim.env)  # a later command sends nothing twice
    cli("status", env=sim.env)
    assert len(receiver.got) == len(wanted)
    outbox = cli.json("notify list --json", env=sim.env)
    assert {r["status"] for r in outbox["outbox"]} == {"delivered"} and outbox["stats"]["delivered"] == len(
        wanted
    )


@pytest.mark.parametrize("dead", ["refused", "500", "hang"])
def test_a_dead_receiver_changes_nothing_in_the_run_and_gets_the_events_later(
    make_sim: Callable[..., Sim], cli: Cli, receiver: Receiver, dead: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook" if dead == "refused" else receiver.url
    receiver.mode = dead
    sim = notify_sim(make_sim, url)
    summary = cli.json_lines("rollout 2.0.0 --yes --json", env=sim.env, code=1)[-1]
    assert summary["status"] == "rolled_back"  # the same outcome as with a live receiver
    assert set(sim.current().values()) == {"1.0.0"}
    assert [q["version"] for q in cli.json("quarantine list --json", env=sim.env)["quarantine"]] == ["2.0.0"]
    rows = cli.json("notify list --json", env=sim.env)["outbox"]
    assert rows and all(r["status"] == "pending" for r in rows)  # tried, recorded, waiting for a retry
    error = {"refused": "cannot reach", "500": "HTTP 500: internal", "hang": "no answer within"}[dead]
    tried = [r for r in rows if r["attempts"]]
    assert tried and all(error in r["last_error"] for r in tried)
    assert all("\x1b" not in (r["last_error"] or "") for r in rows)  # a receiver's answer is untrusted

    if dead == "refused":  # the receiver comes back where the target points
        sim.write_config(
            notify=[
                {"webhook": receiver.url, "secret_file": str(sim.dir / "hook.secret"), "name": "webhook-1"}
            ]
        )
    receiver.mode = "ok"
    cli("notify flush", env=sim.env)
    assert receiver.names() == Counter(r["event"] for r in rows)
    assert receiver.names()["run.rolled_back"] == 1
    cli("notify flush", env=sim.env)
    assert all(n == 1 for n in receiver.names().values())


def test_two_senders_deliver_each_row_once(
    make_sim: Callable[..., Sim], cli: Cli, receiver: Receiver
) -> None:
    sim = notify_sim(make_sim, receiver.url, events=["freeze.*", "quarantine.*"])
    for i in range(6):
        cli(["freeze", "on", "--reason", f"test {i}"], env=sim.env)
        cli(["freeze", "off", "--reason", f"done {i}"], env=sim.env)
    assert receiver.names() == Counter({"freeze.on": 6, "freeze.off": 6})  # each command sent its own
    receiver.got.clear()
    ctx = FleetContext(config_path=sim.config, env={"FLEETCTL_OPERATOR": "tester"})
    with ctx.store.tx() as conn:  # twenty more events queued at once, then two processes' worth of senders
        for i in range(20):
            ctx.store.audit.write(conn, "quarantine.add", f"9.{i}.0", "test", "tester", {})
    ctxs = [FleetContext(config_path=sim.config) for _ in range(2)]
    threads = [threading.Thread(target=notify_send.deliver_due, args=(c, 30.0)) for c in ctxs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e["version"] for e in receiver.events()) == sorted(f"9.{i}.0" for i in range(20))


def test_kill_9_and_resume_repeat_no_event(
    make_sim: Callable[..., Sim], cli: Cli, receiver: Receiver
) -> None:
    sim = notify_sim(make_sim, receiver.url, events=["run.*"])
    sim.write_config(rollout={**_policy(sim), "stages": [{**TWO_BATCHES[0], "bake": "20s"}, TWO_BATCHES[1]]})
    proc = fleetctl_proc(["rollout", "1.1.0", "--yes"], sim.env)
    wait_for(lambda: host_states(run_status(sim)).get("node-001") == "verifying", what="canary bake")
    wait_for(
        lambda: receiver.names()["run.started"] == 1, what="run.started delivered by the running process"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    cli("resume --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}
    assert receiver.names() == Counter({"run.started": 1, "run.succeeded": 1})


def _policy(sim: Sim) -> dict[str, Any]:
    import yaml

    return dict(yaml.safe_load(sim.config.read_text())["rollout"])


def test_notify_test_reports_each_target(make_sim: Callable[..., Sim], cli: Cli, receiver: Receiver) -> None:
    sim = make_sim(nodes=3)
    dead = f"http://user:pw@127.0.0.1:{free_port()}/hook?token=abc"
    sim.write_config(notify=[{"webhook": receiver.url, "name": "ops"}, {"webhook": dead}])
    result = cli("notify test", env=sim.env, code=1)
    assert "ops (webhook http://127.0.0.1:" in result.stdout and "delivered" in result.stdout
    assert "webhook-2" in result.stdout and "FAILED: cannot reach" in result.stdout
    assert "pw" not in result.stdout and "token" not in result.stdout  # a URL's secrets are never shown
    assert receiver.events()[0]["event"] == "notify.test"
    cli("notify test ops", env=sim.env)
    assert cli("notify test nope", env=sim.env, code=2).stderr.startswith(
        "fleetctl: error: no notification target"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ({"webhook": "ftp://x/y"}, "notify.0: webhook: must be an http"),
        ({"webhook": "http://x/y", "events": ["run.halt"]}, "'run.halt' matches no event"),
        ({"webhook": "http://x/y", "apprise": "json://x"}, "exactly one of webhook"),
        ({"apprise": "json://x", "secret_env": "K"}, "Apprise URLs carry their own keys"),
    ],
)
def test_bad_targets_are_refused_naming_the_field(
    make_sim: Callable[..., Sim], cli: Cli, target: dict, message: str
) -> None:
    sim = make_sim(nodes=3)
    sim.write_config(notify=[target])
    assert message in cli("notify list", env=sim.env, code=2).stderr


def test_apprise_targets_deliver_through_the_extra(
    make_sim: Callable[..., Sim], cli: Cli, receiver: Receiver
) -> None:
    try:
        import apprise  # noqa: F401
    except ImportError:
        need(False, "Apprise (pip install 'fleetctl[notify]')")
    sim = make_sim(nodes=3)
    sim.write_config(
        name="lab", notify=[{"apprise": f"json://127.0.0.1:{receiver.port}/hook", "events": ["freeze.*"]}]
    )
    cli(["freeze", "on", "--reason", "INC-7 [urgent]"], env=sim.env)
    (got,) = receiver.events()
    assert got["title"].startswith("[lab] freeze.on") and "reason: INC-7 [urgent]" in got["message"]
    assert cli.json("notify list --json", env=sim.env)["outbox"][0]["status"] == "delivered"


def lifecycle_store(url: str, kind: str = "rollout") -> tuple[Any, str]:
    from fleetctl.store import Store
    from fleetctl.store.outbox import Route

    store = Store.open(url)
    store.outbox.configure([Route("all"), Route("pauses", ("run.paused",))], "lab")
    run = store.runs.create(
        kind=kind,
        component="host-controller",
        target="2.0.0",
        operator="tester",
        reason=None,
        plan=None,
        fingerprint=None,
        options={},
        hosts=[("a", "canary", 1, "1.0.0", "2.0.0"), ("b", "rest", 1, "1.0.0", "2.0.0")],
    )
    return store, run.id


def test_a_runs_status_changes_become_events_once_in_the_same_transaction(journal_url: str) -> None:
    store, run = lifecycle_store(journal_url)
    update = store.runs.update
    update(run, status="running", status_reason=None)  # the engine starting: run.started
    update(run, status="running", status_reason=None)  # a resume after kill -9 says it again: nothing new
    update(run, stage="canary", batch=1)  # not a status change
    update(run, status="paused", status_reason="frozen: manual #1: INC-9")
    update(run, status="running", status_reason=None)
    update(run, status="paused", status_reason="window closed (maintenance nightly past its cutoff)")
    store.runs.set_host(run, "a", state="failed", error="health gate: no answer within 1s")
    update(run, status="halted", status_reason="stage canary: 1 failed host(s), budget 0")
    store.runs.set_hosts(run, ["a"], "rolled_back")
    update(run, status="rolled_back", status_reason="stage canary: 1 failed host(s), budget 0")
    update(run, status="rolled_back")  # said twice: still once
    rows = sorted(store.outbox.list(limit=100), key=lambda r: r.id)
    events = [(r.event, r.target) for r in rows]
    assert events == [
        ("run.started", "all"),
        ("run.paused", "all"),
        ("run.paused", "pauses"),
        ("run.resumed", "all"),
        ("run.paused", "all"),
        ("run.paused", "pauses"),
        ("run.halted", "all"),
        ("run.rolled_back", "all"),
        ("rollback.finished", "all"),
    ]
    pauses = [r.payload["pause"] for r in rows if r.event == "run.paused" and r.target == "all"]
    assert pauses == ["frozen", "window closed"]
    last = rows[-2].payload
    assert last["failed"] == [
        {"host": "a", "state": "rolled_back", "error": "health gate: no answer within 1s"}
    ]
    assert last["counts"] == {"rolled_back": 1, "pending": 1} and last["fleet"] == "lab"


def test_a_notification_that_cannot_be_queued_never_undoes_the_change(journal_url: str) -> None:
    store, run = lifecycle_store(journal_url, kind="rollback")
    with store.tx() as conn:
        conn.exec_driver_sql("DROP TABLE outbox")  # the outbox is broken ...
    store.runs.update(run, status="running", status_reason=None)
    store.runs.update(run, status="succeeded")
    assert store.runs.get(run).status == "succeeded"  # ... and the journal still records the run


def test_the_guard_reports_each_failing_host_once_and_its_trip(
    make_sim: Callable[..., Sim], cli: Cli, receiver: Receiver
) -> None:
    import time

    sim = make_sim(nodes=3, hang_after=3600, stages=TWO_BATCHES)  # 2.0.0 passes its bakes, blocks under load
    sim.write_config(
        guard={"duration": "1h", "interval": "1s", "failures_to_fail": 2, "max_failures": 0},
        notify=[{"webhook": receiver.url, "events": ["guard.*", "rollback.*", "run.rolled_back"]}],
    )
    cli("rollout 2.0.0 --yes", env=sim.env)
    cli(f"sim load --dir {sim.dir}", env=sim.env)
    for _ in range(6):  # failing rounds, then a failed one that trips (exit 1) and rolls back
        time.sleep(1.05)
        if cli("tick", env=sim.env, code=None).exit_code == 1:
            break
    cli("tick", env=sim.env)  # later ticks repeat nothing
    assert set(sim.current().values()) == {"1.0.0"}
    names = receiver.names()
    assert names == Counter(
        {"guard.host_failed": 3, "guard.tripped": 1, "rollback.started": 1, "rollback.finished": 1}
    )
    events = receiver.events()
    assert sorted(e["host"] for e in events if e["event"] == "guard.host_failed") == sim.nodes
    trip = next(e for e in events if e["event"] == "guard.tripped")
    assert trip["version"] == "2.0.0" and trip["failed_total"] == 3 and trip["see"] == "fleetctl guard status"
    assert all("no answer" in h["error"] for h in trip["failed"])
    done = next(e for e in events if e["event"] == "rollback.finished")
    assert (
        done["kind"] == "rollback" and done["status"] == "succeeded" and done["counts"] == {"rolled_back": 3}
    )


def test_notify_receive_prints_signed_events_and_refuses_forged_ones(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    import re
    import urllib.error
    import urllib.request

    sim = make_sim(nodes=3)
    secret = sim.dir / "hook.secret"
    secret.write_text(SECRET)
    proc = fleetctl_proc(
        [
            "notify",
            "receive",
            "--bind",
            "127.0.0.1:0",
            "--secret-file",
            str(secret),
            "--count",
            "1",
            "--json",
        ],
        sim.env,
    )
    assert proc.stderr is not None and proc.stdout is not None
    match = re.search(r"listening on (http://\S+)", proc.stderr.readline())
    assert match
    url = match.group(1)
    forged = urllib.request.Request(
        url, data=b'{"event": "run.halted"}', headers={"X-Fleetctl-Signature": "sha256=00"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=5)
    assert refused.value.code == 401
    sim.write_config(name="lab", notify=[{"webhook": url, "secret_file": "hook.secret"}])
    cli("notify test", env=sim.env)
    assert proc.wait(timeout=30) == 0
    (event,) = [json.loads(line) for line in proc.stdout.read().splitlines()]
    assert event["event"] == "notify.test" and event["fleet"] == "lab" and event["operator"] == "tester"


def test_concurrent_senders_claim_each_row_once(journal_url: str) -> None:
    from fleetctl.store import Store

    store, _run = lifecycle_store(journal_url)
    with store.tx() as conn:
        for i in range(30):
            store.audit.write(conn, "freeze.on", f"scope{i}", "test", "tester", {})
    claimed: list[int] = []

    def sender() -> None:
        other = Store.open(journal_url)
        while rows := other.outbox.due(other.now(), ["all"]):
            claimed.extend(r.id for r in rows if other.outbox.claim(r, other.now(), 60))
        other.close()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(r.id for r in store.outbox.list(limit=100))
    assert len(claimed) == 30 and store.outbox.stats()["sending"] == 30
