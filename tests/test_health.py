"""Health probes against real HTTP/TCP servers on 127.0.0.1, and `bake()` over scripted controllers.

Every controller is a real `http.server` in a thread; each answers /health by the next step of its script
(then repeats its last step): "ok" and "500" (the whole answer in one write), "hang" (longer than the probe
timeout), "split" (headers, then the body in a second write, as http.server's own send_response/end_headers
do), "garbage" (not HTTP), "close" (no answer at all).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fleetctl.config import HealthConfig, Probe
from fleetctl.health import GateOutcome, Prober, ProbeResult, bake
from tests.conftest import StepClock, closed_port, make_fleet

URL = "http://{{ ansible_host }}:{{ hc_port }}/health"
TIMEOUT = 0.2
HANG = 5.0  # a hanging controller answers after this long, or when the test ends


class Controller(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, script: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = list(script) or ["ok"]
        self.hits = 0
        self.paths: list[str] = []
        self.agents: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def next_step(self, path: str, agent: str) -> str:
        with self.lock:
            self.hits += 1
            self.paths.append(path)
            self.agents.append(agent)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def handle_error(self, request, client_address) -> None:
        pass


class Handler(BaseHTTPRequestHandler):
    server: Controller

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        # status line, headers and body in one write: one segment on loopback (see "split" for two)
        head = f"HTTP/1.0 {status} X\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        self.wfile.write(head.encode() + body)

    def do_GET(self) -> None:
        step = self.server.next_step(self.path, self.headers.get("User-Agent", ""))
        if step == "ok":
            self._answer(200, b"status: ok\n")
        elif step == "500":
            self._answer(500, b"boom\n")
        elif step == "hang":
            self.server.release.wait(HANG)
            self._answer(200, b"status: ok\n")
        elif step == "split":
            body = b"status: ok\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            self.server.release.wait(0.1)
            self.wfile.write(body)
        elif step == "garbage":
            self.wfile.write(b"HELLO THERE\r\n\r\n")
        elif step == "close":
            self.close_connection = True
        else:  # pragma: no cover - a typo in a test script
            raise AssertionError(step)


@pytest.fixture
def controllers() -> Iterator[Callable[..., Controller]]:
    started: list[Controller] = []

    def start(*script: str) -> Controller:
        server = Controller(list(script))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.release.set()
        server.shutdown()
        server.server_close()


def http(**kw: object) -> Probe:
    return Probe(**{"http": URL, "timeout": TIMEOUT, **kw})


def health(*probes: Probe, failures_to_fail: int = 2) -> HealthConfig:
    return HealthConfig(interval=0.02, failures_to_fail=failures_to_fail, probes=list(probes))


# --- one probe round -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step, probe, ok, error",
    [
        ("ok", http(), True, None),
        ("500", http(), False, "status 500, expected 200"),
        ("500", http(expect_status=500), True, None),
        ("ok", http(expect_status=204), False, "status 200, expected 204"),
        ("hang", http(), False, f"no answer within {TIMEOUT:g}s"),
        ("garbage", http(), False, "bad HTTP answer 'HELLO THERE'"),
        ("close", http(), False, "connection closed without an answer"),
        ("ok", http(expect_body=r"status: ok"), True, None),
        ("ok", http(expect_body=r"^OK$"), False, "body does not match"),
        ("ok", http(expect_body=r"(?m)^status: ok$"), True, None),
        ("ok", http(expect_body="healthy"), False, "body does not match 'healthy'"),
        ("500", http(expect_body="boom"), False, "status 500"),
    ],
)
def test_http_probe(
    tmp_path: Path, controllers, step: str, probe: Probe, ok: bool, error: str | None
) -> None:
    server = controllers(step)
    fleet = make_fleet(tmp_path, {"web1": server.port})
    result = Prober(fleet, [probe]).round(["web1"])["web1"]
    assert result.host == "web1"
    assert result.ok is ok
    if ok:
        assert result.error is None
        assert result.latency_ms is not None and result.latency_ms >= 0
    else:
        assert error in result.error
        assert result.error.startswith(f"http http://127.0.0.1:{server.port}/health: "), result.error
        assert "\n" not in result.error
    assert server.hits == 1
    assert server.paths == ["/health"]
    assert server.agents == ["fleetctl-probe"]


def test_http_probe_refused(tmp_path: Path) -> None:
    port = closed_port()
    result = Prober(make_fleet(tmp_path, {"web1": port}), [http()]).round(["web1"])["web1"]
    assert not result.ok
    assert result.error == f"http http://127.0.0.1:{port}/health: connection refused"


def test_controller_that_never_accepts(tmp_path: Path) -> None:
    """The night this tool exists for: the API blocks (IPC backlog). The kernel completes the TCP handshake for
    a listening socket nobody accepts from, so only the answer's timeout can tell."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        result = Prober(make_fleet(tmp_path, {"web1": port}), [http()]).round(["web1"])["web1"]
    assert not result.ok
    assert result.error == f"http http://127.0.0.1:{port}/health: no answer within {TIMEOUT:g}s"


def test_hang_has_no_latency(tmp_path: Path, controllers) -> None:
    fleet = make_fleet(tmp_path, {"hung": controllers("hang").port})
    result = Prober(fleet, [http()]).round(["hung"])["hung"]
    assert result == ProbeResult("hung", False, None, result.error)
    assert "no answer" in result.error


def test_body_that_arrives_after_the_headers(tmp_path: Path, controllers) -> None:
    """A controller that writes its headers and then its body (two TCP segments, as http.server and most
    frameworks do) answers within the timeout: the probe must read the whole answer, not the first chunk."""
    server = controllers("split")
    fleet = make_fleet(tmp_path, {"web1": server.port})
    result = Prober(fleet, [http(timeout=2.0, expect_body="status: ok")]).round(["web1"])["web1"]
    assert result.ok, result.error


def test_query_string_and_rendered_target(tmp_path: Path, controllers) -> None:
    server = controllers("ok")
    fleet = make_fleet(tmp_path, {"web1": server.port})
    probe = Probe(http="http://{{ ansible_host }}:{{ hc_port }}/health?deep=1&host={{ inventory_hostname }}")
    assert Prober(fleet, [probe]).round(["web1"])["web1"].ok
    assert server.paths == ["/health?deep=1&host=web1"]


@pytest.mark.parametrize(
    "template, error",
    [
        ("ftp://{{ ansible_host }}:{{ hc_port }}/", "not an http(s) URL"),
        ("{{ ansible_host }}:{{ hc_port }}", "not an http(s) URL"),
    ],
)
def test_http_probe_bad_url(tmp_path: Path, template: str, error: str) -> None:
    result = Prober(make_fleet(tmp_path, {"web1": 1}), [Probe(http=template)]).round(["web1"])["web1"]
    assert not result.ok and error in result.error


def test_one_round_many_hosts(tmp_path: Path, controllers) -> None:
    steps = {"a": "ok", "b": "500", "c": "hang", "d": "ok", "e": "garbage"}
    servers = {h: controllers(s) for h, s in steps.items()}
    ports = {h: s.port for h, s in servers.items()} | {"f": closed_port()}
    results = Prober(make_fleet(tmp_path, ports), [http()]).round(list(ports))
    assert list(results) == list(ports)
    assert {h: r.ok for h, r in results.items()} == {
        "a": True,
        "b": False,
        "c": False,
        "d": True,
        "e": False,
        "f": False,
    }
    assert "connection refused" in results["f"].error
    assert all(s.hits == 1 for s in servers.values())


def test_round_on_a_subset_probes_only_those(tmp_path: Path, controllers) -> None:
    a, b = controllers("ok"), controllers("ok")
    prober = Prober(make_fleet(tmp_path, {"a": a.port, "b": b.port}), [http()])
    assert set(prober.round(["b"])) == {"b"}
    assert (a.hits, b.hits) == (0, 1)


# --- tcp and several probes ------------------------------------------------------------------------------


def test_tcp_probe(tmp_path: Path, controllers) -> None:
    port, dead = controllers("ok").port, closed_port()
    fleet = make_fleet(tmp_path, {"up": port, "down": dead})
    results = Prober(fleet, [Probe(tcp="{{ ansible_host }}:{{ hc_port }}", timeout=TIMEOUT)]).round(
        ["up", "down"]
    )
    assert results["up"].ok and results["up"].latency_ms is not None
    assert not results["down"].ok
    assert results["down"].error == f"tcp 127.0.0.1:{dead}: connection refused"


@pytest.mark.parametrize("target", ["{{ ansible_host }}", "{{ ansible_host }}:http", ":{{ hc_port }}"])
def test_tcp_probe_bad_target(tmp_path: Path, target: str) -> None:
    result = Prober(make_fleet(tmp_path, {"web1": 1}), [Probe(tcp=target)]).round(["web1"])["web1"]
    assert not result.ok and "must be host:port" in result.error


def test_all_probes_must_pass_and_first_failure_is_reported(tmp_path: Path, controllers) -> None:
    server = controllers("500")
    dead = closed_port()
    fleet = make_fleet(tmp_path, {"web1": server.port})
    tcp_ok = Probe(tcp="{{ ansible_host }}:{{ hc_port }}", timeout=TIMEOUT)
    tcp_dead = Probe(tcp=f"127.0.0.1:{dead}", timeout=TIMEOUT)
    assert Prober(fleet, [tcp_ok, http(expect_status=500)]).round(["web1"])["web1"].ok
    both = Prober(fleet, [tcp_ok, tcp_dead]).round(["web1"])["web1"]
    assert not both.ok and f"127.0.0.1:{dead}" in both.error
    first = Prober(fleet, [http(), tcp_dead]).round(["web1"])["web1"]
    assert not first.ok and "status 500" in first.error  # the first failure is the one reported


def test_playbook_and_ssh_probes_need_their_runner(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, {"web1": 1})
    with pytest.raises(RuntimeError, match="executor"):
        Prober(fleet, [Probe(playbook="health.yml")]).round(["web1"])
    with pytest.raises(RuntimeError, match="SSH"):
        Prober(fleet, [Probe(ssh="true")]).round(["web1"])


def test_ssh_probe_results_through_runner(tmp_path: Path) -> None:
    fleet = make_fleet(tmp_path, {"a": 1, "b": 2})
    calls: list[tuple[list[str], dict[str, str], float]] = []

    def runner(
        hosts: list[str], commands: dict[str, str], timeout: float
    ) -> dict[str, tuple[bool, float, str | None]]:
        calls.append((hosts, commands, timeout))
        return {"a": (True, 3.0, None), "b": (False, 7.0, "exit 3")}

    probe = Probe(ssh="systemctl is-active hc --port {{ hc_port }}", timeout=1)
    results = Prober(fleet, [probe], ssh_runner=runner).round(["a", "b"])
    # each host gets its own command, rendered with its own variables
    assert calls == [
        (["a", "b"], {"a": "systemctl is-active hc --port 1", "b": "systemctl is-active hc --port 2"}, 1.0)
    ]
    assert results["a"] == ProbeResult("a", True, 3.0, None)
    assert results["b"] == ProbeResult(
        "b", False, 7.0, "ssh `systemctl is-active hc --port {{ hc_port }}`: exit 3"
    )


# --- bake ------------------------------------------------------------------------------------------------


def run_bake(
    prober: Prober, hosts: list[str], duration: float = 1.0, step: float = 0.25, **kw
) -> GateOutcome:
    kw.setdefault("config", health(*prober.probes))
    kw.setdefault("stop", threading.Event())
    return bake(prober, hosts, duration=duration, clock=StepClock(step), **kw)


def test_bake_healthy_host_passes(tmp_path: Path, controllers) -> None:
    server = controllers("ok")
    prober = Prober(make_fleet(tmp_path, {"web1": server.port}), [http()])
    ticks: list[tuple[float, int]] = []
    outcome = run_bake(prober, ["web1"], on_tick=lambda left, failed: ticks.append((left, failed)))
    assert outcome.failed == {} and not outcome.stopped
    assert outcome.rounds == 4 == server.hits  # 1.0s of bake at 0.25s a round (the injected clock)
    assert [left for left, _ in ticks] == [0.75, 0.5, 0.25, 0.0]
    assert all(failed == 0 for _, failed in ticks)
    last, worst = outcome.latency["web1"]
    assert last is not None and worst is not None and worst >= last >= 0


@pytest.mark.parametrize(
    "script",
    [
        ["500", "ok"],
        ["ok", "500", "ok"],
        ["500", "ok", "500", "ok", "500", "ok"],  # never twice in a row
        ["hang", "ok"],
        ["ok", "ok", "ok", "close", "ok"],
    ],
)
def test_bake_host_failing_once_then_recovering_passes(
    tmp_path: Path, controllers, script: list[str]
) -> None:
    server = controllers(*script)
    prober = Prober(make_fleet(tmp_path, {"web1": server.port}), [http()])
    outcome = run_bake(prober, ["web1"], duration=1.5)
    assert outcome.failed == {}
    assert outcome.rounds == 6 == server.hits


@pytest.mark.parametrize(
    "script, error, rounds",
    [
        (["500", "500"], "status 500", 2),
        (["ok", "500", "500"], "status 500", 3),
        (["ok", "ok", "hang", "hang"], "no answer within", 4),
        (["500", "ok", "500", "500"], "status 500", 4),
        (["garbage"], "bad HTTP answer", 2),
    ],
)
def test_bake_host_failing_twice_in_a_row_fails(
    tmp_path: Path, controllers, script: list[str], error: str, rounds: int
) -> None:
    bad, good = controllers(*script), controllers("ok")
    prober = Prober(make_fleet(tmp_path, {"bad": bad.port, "good": good.port}), [http()])
    outcome = run_bake(prober, ["bad", "good"], duration=1.0)
    assert set(outcome.failed) == {"bad"}
    assert error in outcome.failed["bad"]
    assert bad.hits == rounds  # a failed host is not probed again
    assert good.hits == outcome.rounds == 4  # the bake goes on for the others
    assert not outcome.stopped


@pytest.mark.parametrize("failures_to_fail, fails", [(1, True), (2, True), (3, True), (4, False)])
def test_bake_failures_to_fail(tmp_path: Path, controllers, failures_to_fail: int, fails: bool) -> None:
    server = controllers("500", "500", "500", "ok")
    prober = Prober(make_fleet(tmp_path, {"web1": server.port}), [http()])
    outcome = run_bake(
        prober, ["web1"], duration=1.5, config=health(http(), failures_to_fail=failures_to_fail)
    )
    assert ("web1" in outcome.failed) is fails
    if fails:
        assert server.hits == failures_to_fail


@pytest.mark.parametrize(
    "script, fails, rounds", [(["500", "ok"], False, 2), (["500", "500"], True, 2), (["ok"], False, 1)]
)
def test_bake_decides_a_streak_after_time_is_up(
    tmp_path: Path, controllers, script: list[str], fails: bool, rounds: int
) -> None:
    """A host never passes on a failed last probe: with no time left it is probed until it passes or fails."""
    server = controllers(*script)
    prober = Prober(make_fleet(tmp_path, {"web1": server.port}), [http()])
    outcome = run_bake(prober, ["web1"], duration=0.0)
    assert ("web1" in outcome.failed) is fails
    assert outcome.rounds == rounds == server.hits


def test_bake_on_failure_returning_true_stops_early(tmp_path: Path, controllers) -> None:
    servers = {h: controllers("500") for h in ("a", "b", "c")}
    prober = Prober(make_fleet(tmp_path, {h: s.port for h, s in servers.items()}), [http()])
    calls: list[tuple[str, str]] = []
    outcome = run_bake(
        prober, ["a", "b", "c"], duration=10.0, on_failure=lambda h, e: calls.append((h, e)) or True
    )
    assert outcome.stopped
    assert len(calls) == 1 and list(outcome.failed) == [calls[0][0]]
    assert "status 500" in calls[0][1]
    assert outcome.rounds == 2


def test_bake_on_failure_returning_false_goes_on(tmp_path: Path, controllers) -> None:
    servers = {"a": controllers("500"), "b": controllers("500"), "c": controllers("ok")}
    prober = Prober(make_fleet(tmp_path, {h: s.port for h, s in servers.items()}), [http()])
    calls: list[str] = []
    outcome = run_bake(prober, ["a", "b", "c"], on_failure=lambda h, e: calls.append(h) or False)
    assert not outcome.stopped
    assert sorted(calls) == ["a", "b"] == sorted(outcome.failed)
    assert outcome.rounds == 4 == servers["c"].hits


def test_bake_stop_event_set_before(tmp_path: Path, controllers) -> None:
    server = controllers("ok")
    prober = Prober(make_fleet(tmp_path, {"web1": server.port}), [http()])
    stop = threading.Event()
    stop.set()
    outcome = run_bake(prober, ["web1"], duration=60.0, stop=stop)
    assert outcome.stopped and outcome.rounds == 1 == server.hits and outcome.failed == {}


def test_bake_stop_event_set_during(tmp_path: Path, controllers) -> None:
    server = controllers("ok")
    prober = Prober(make_fleet(tmp_path, {"web1": server.port}), [http()])
    stop = threading.Event()

    def tick(left: float, failed: int) -> None:
        if server.hits == 3:
            stop.set()

    outcome = run_bake(prober, ["web1"], duration=60.0, stop=stop, on_tick=tick)
    assert outcome.stopped and outcome.rounds == 3


def test_bake_stop_from_another_thread(tmp_path: Path, controllers) -> None:
    server = controllers("ok")
    prober = Prober(make_fleet(tmp_path, {"web1": server.port}), [http()])
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    outcome = bake(prober, ["web1"], duration=3600.0, config=health(http()), stop=stop)  # real clock
    assert outcome.stopped and outcome.failed == {} and outcome.rounds >= 1


def test_bake_latencies(tmp_path: Path, controllers) -> None:
    servers = {"fast": controllers("ok"), "hung_once": controllers("ok", "hang", "ok")}
    prober = Prober(make_fleet(tmp_path, {h: s.port for h, s in servers.items()}), [http()])
    outcome = run_bake(prober, ["fast", "hung_once"], duration=0.75)
    assert outcome.failed == {} and outcome.rounds == 3
    for host in servers:
        last, worst = outcome.latency[host]
        assert last is not None and worst is not None and worst >= last
    assert outcome.latency["hung_once"][1] is not None


@pytest.mark.parametrize("probes, hosts", [([], ["web1"]), ([http()], [])])
def test_bake_with_nothing_to_do(tmp_path: Path, probes: list[Probe], hosts: list[str]) -> None:
    prober = Prober(make_fleet(tmp_path, {"web1": closed_port()}), probes)
    outcome = bake(prober, hosts, duration=5.0, config=health(*probes), stop=threading.Event())
    assert outcome == GateOutcome()
