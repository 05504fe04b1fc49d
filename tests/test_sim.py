"""The simulated fleet, for real: files on disk, a background server, HTTP controllers on loopback."""

from __future__ import annotations

import http.client
import json
import os
import socket
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fleetctl.cli.sim import app
from fleetctl.errors import SimError
from fleetctl.sim import artifacts, fleet

SimFactory = Callable[..., fleet.SimInfo]


@pytest.fixture
def make_sim(tmp_path: Path) -> Iterator[SimFactory]:
    """Create sims in tmp_path; every one is stopped afterwards, whatever the test did."""
    dirs: list[Path] = []

    def make(nodes: int = 5, hang_after: float = 20.0, name: str = "sim") -> fleet.SimInfo:
        d = tmp_path / name
        dirs.append(d)
        return fleet.create(d, nodes, hang_after)

    yield make
    for d in dirs:
        fleet.stop(d)


@pytest.fixture(scope="module")
def sim5(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fleet.SimInfo]:
    """A 5-node sim shared by the tests that only read it."""
    d = tmp_path_factory.mktemp("sim5") / "sim"
    try:
        yield fleet.create(d, 5, 20.0)
    finally:
        fleet.stop(d)


def get(info: fleet.SimInfo, node: str, path: str, timeout: float = 2.0) -> tuple[int, str]:
    address = next(n.address for n in info.nodes if n.name == node)
    conn = http.client.HTTPConnection(address, info.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def switch_to(info: fleet.SimInfo, node: str, version: str) -> str:
    """What the update playbook does to a node: unpack the artifact, flip `current`, restart."""
    root = info.dir / "nodes" / node
    artifacts.install_release(root, info.dir / "artifacts" / f"host-controller-{version}.tar.gz")
    artifacts.switch_release(root, version)
    return fleet.restart_node(info.dir, node)


# -- layout ------------------------------------------------------------------------------------------
def test_on_disk_layout(sim5: fleet.SimInfo) -> None:
    d = sim5.dir
    meta = json.loads((d / "sim.json").read_text())
    assert set(meta) == {"port", "socket", "hang_after", "nodes"}
    assert meta["port"] == sim5.port and 20000 <= sim5.port <= 60000
    assert meta["socket"] == str(d / "sim.sock") and (d / "sim.sock").is_socket()
    assert int((d / "sim.pid").read_text()) == fleet.is_running(d)
    names = [n["name"] for n in meta["nodes"]]
    assert names == ["node-001", "node-002", "node-003", "node-004", "node-005"]
    assert [n["zone"] for n in meta["nodes"]] == ["a", "b", "c", "a", "b"]
    assert len({n["address"] for n in meta["nodes"]}) == 5
    assert all(n["address"].startswith("127.") for n in meta["nodes"])
    for n in meta["nodes"]:
        root = Path(n["root"])
        assert root == d / "nodes" / n["name"]
        assert os.readlink(root / "current") == "releases/1.0.0"
        assert (root / "current" / "VERSION").read_text() == "1.0.0\n"
        assert os.access(root / "current" / "bin" / "host-controller", os.X_OK)
        assert json.loads((root / "current" / "manifest.json").read_text()) == {
            "name": "host-controller",
            "version": "1.0.0",
            "hang_after": None,
        }
    assert sim5.to_json() == {
        "dir": str(d),
        "config": str(d / "fleet.yml"),
        "inventory": str(d / "inventory.yml"),
        "nodes": 5,
    }


def test_artifacts_and_checksums(sim5: fleet.SimInfo) -> None:
    import hashlib

    art = sim5.dir / "artifacts"
    sums = dict(reversed(line.split("  ")) for line in (art / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {f"host-controller-{v}.tar.gz" for v in ("1.0.0", "1.1.0", "1.2.0", "2.0.0")}
    for name, digest in sums.items():
        assert hashlib.sha256((art / name).read_bytes()).hexdigest() == digest
        with tarfile.open(art / name) as tar:
            assert {"manifest.json", "VERSION", "bin/host-controller"} <= set(tar.getnames())
            manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest["hang_after"] == (20.0 if manifest["version"] == "2.0.0" else None)


def test_fleet_yml(sim5: fleet.SimInfo) -> None:
    text = sim5.config.read_text()
    assert text.startswith("#") and str(sim5.dir) in text.splitlines()[0]
    config = yaml.safe_load(text)
    assert config == fleet.fleet_config(20.0)
    assert config["rollout"]["stages"][0]["bake"] == "30s"


def test_controllers_answer(sim5: fleet.SimInfo) -> None:
    for node in sim5.nodes:
        assert get(sim5, node.name, "/health") == (200, "ok")
        assert get(sim5, node.name, "/version") == (200, "1.0.0")
    assert get(sim5, "node-001", "/nope")[0] == 404
    assert all(s.healthy and s.version == "1.0.0" for s in fleet.status(sim5.dir))


def test_inventory_loads_with_ansible(sim5: fleet.SimInfo) -> None:
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    inv = InventoryManager(loader=DataLoader(), sources=[str(sim5.inventory)])
    members = {g: sorted(h.name for h in inv.groups[g].get_hosts()) for g in inv.groups}
    assert members["canary"] == ["node-001"]
    assert members["ring1"] == ["node-002"]
    assert members["ring2"] == ["node-003", "node-004"]
    assert members["ring3"] == ["node-005"]
    assert members["zone_a"] == ["node-001", "node-004"]
    assert members["zone_c"] == ["node-003"]
    assert len(members["all"]) == 5
    host = inv.get_host("node-003").get_vars()
    assert host["ansible_host"] == "127.77.0.4"
    assert host["hc_root"] == str(sim5.dir / "nodes" / "node-003")
    assert host["zone"] == "c"
    allvars = inv.groups["all"].get_vars()
    assert allvars["ansible_connection"] == "local"
    assert allvars["hc_port"] == sim5.port
    assert allvars["hc_service_manager"] == "sim"
    assert allvars["hc_sim_socket"] == str(sim5.dir / "sim.sock")
    assert allvars["hc_artifact_base_url"] == f"file://{sim5.dir}/artifacts"


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        (1, [1]),
        (2, [1, 1]),
        (3, [1, 1, 1]),
        (5, [1, 1, 2, 1]),
        (10, [1, 2, 3, 4]),
        (1000, [1, 200, 300, 499]),
    ],
)
def test_rings(n: int, sizes: list[int]) -> None:
    groups = fleet.rings(fleet.node_names(n))
    assert [len(m) for m in groups.values()] == sizes
    assert sum(groups.values(), []) == fleet.node_names(n)


def test_names_and_addresses() -> None:
    assert fleet.node_names(1200)[0] == "node-0001"
    addresses = {fleet.node_address(i) for i in range(1, 5001)}
    assert len(addresses) == 5000 and not any(a.endswith((".0", ".255")) for a in addresses)


# -- behaviour ---------------------------------------------------------------------------------------
def test_faulty_release_blocks_after_hang_after_and_restart_resets(make_sim: SimFactory) -> None:
    info = make_sim(hang_after=1.0)
    assert switch_to(info, "node-001", "2.0.0") == "2.0.0"
    restarted = time.monotonic()
    assert get(info, "node-001", "/health") == (200, "ok")
    assert get(info, "node-001", "/version") == (200, "2.0.0")
    time.sleep(max(0.0, restarted + 1.2 - time.monotonic()))
    for path in ("/health", "/version"):
        with pytest.raises(TimeoutError):
            get(info, "node-001", path, timeout=0.5)
    assert get(info, "node-002", "/health") == (200, "ok")  # healthy builds never hang
    states = {s.name: s for s in fleet.status(info.dir)}
    assert not states["node-001"].healthy and states["node-001"].version == "2.0.0"
    assert all(s.healthy for name, s in states.items() if name != "node-001")
    before = fleet.server_status(info.dir)["node-001"]
    assert before["uptime"] >= 1.0 and before["restarts"] == 1 and not before["healthy"]

    assert fleet.restart_node(info.dir, "node-001") == "2.0.0"
    after = fleet.server_status(info.dir)["node-001"]
    assert after["uptime"] < before["uptime"] and after["restarts"] == 2 and after["healthy"]
    assert get(info, "node-001", "/health") == (200, "ok")


def test_rollback_to_healthy_release_stops_the_hang(make_sim: SimFactory) -> None:
    info = make_sim(hang_after=0.0)
    switch_to(info, "node-002", "2.0.0")
    with pytest.raises(TimeoutError):
        get(info, "node-002", "/health", timeout=0.3)
    artifacts.switch_release(info.dir / "nodes" / "node-002", "1.0.0")
    assert fleet.restart_node(info.dir, "node-002") == "1.0.0"
    time.sleep(0.2)
    assert get(info, "node-002", "/health") == (200, "ok")


def test_missing_release_answers_503(make_sim: SimFactory) -> None:
    info = make_sim(nodes=2)
    (info.dir / "nodes" / "node-002" / "current").unlink()
    with pytest.raises(SimError, match="no usable release"):
        fleet.restart_node(info.dir, "node-002")
    assert get(info, "node-002", "/health")[0] == 503
    with pytest.raises(SimError, match="unknown node"):
        fleet.restart_node(info.dir, "node-999")
    assert fleet.control(info.dir, "ping") == "pong"


def test_up_twice_refuses_and_down_leaves_nothing(tmp_path: Path) -> None:
    d = tmp_path / "sim"
    runner = CliRunner()
    try:
        result = runner.invoke(app, ["up", "--nodes", "3", "--dir", str(d), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {
            "dir": str(d),
            "config": str(d / "fleet.yml"),
            "inventory": str(d / "inventory.yml"),
            "nodes": 3,
        }
        pid = fleet.is_running(d)
        assert pid
        again = runner.invoke(app, ["up", "--nodes", "3", "--dir", str(d)])
        assert isinstance(again.exception, SimError)
        assert str(pid) in again.exception.message and str(d) in again.exception.message
        assert f"fleetctl sim down --dir {d}" in again.exception.message

        status = runner.invoke(app, ["status", "--dir", str(d), "--json"])
        assert status.exit_code == 0, status.output
        data = json.loads(status.stdout)
        assert data["running"] and data["pid"] == pid and data["counts"] == {"1.0.0": 3}
        assert data["nodes"][2] == {
            "name": "node-003",
            "address": "127.77.0.4",
            "zone": "c",
            "version": "1.0.0",
            "healthy": True,
        }
    finally:
        down = runner.invoke(app, ["down", "--dir", str(d), "--json"])
    assert down.exit_code == 0, down.output
    assert json.loads(down.stdout)["stopped"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (d / "sim.pid").exists() and not (d / "sim.sock").exists()
    assert fleet.stop(d) is None
    data = json.loads(runner.invoke(app, ["status", "--dir", str(d), "--json"]).stdout)
    assert not data["running"] and not any(n["healthy"] for n in data["nodes"])


def test_up_again_restarts_a_stopped_sim_as_it_was(make_sim: SimFactory) -> None:
    info = make_sim(nodes=3)
    fleet.stop(info.dir)
    root = info.dir / "nodes" / "node-002"
    artifacts.install_release(root, info.dir / "artifacts" / "host-controller-1.1.0.tar.gz")
    artifacts.switch_release(root, "1.1.0")
    with pytest.raises(SimError, match="3 nodes, not 4"):
        fleet.create(info.dir, 4, 20.0)
    again = fleet.create(info.dir)
    assert again.port == info.port and len(again.nodes) == 3
    assert fleet.server_status(info.dir)["node-002"]["version"] == "1.1.0"
    assert [s.version for s in fleet.status(info.dir)] == ["1.0.0", "1.1.0", "1.0.0"]


def test_taken_port_on_restart_is_a_clear_error(make_sim: SimFactory) -> None:
    info = make_sim(nodes=1)
    fleet.stop(info.dir)
    with socket.socket() as squatter:
        squatter.bind((info.nodes[0].address, info.port))
        squatter.listen()
        with pytest.raises(SimError, match="recorded port"):
            fleet.create(info.dir)
    assert fleet.is_running(info.dir) is None


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--nodes", "0"], "1 to 5000"),
        (["--nodes", "5001"], "1 to 5000"),
        (["--hang-after", "soon"], "--hang-after"),
    ],
)
def test_bad_up_arguments(tmp_path: Path, args: list[str], match: str) -> None:
    result = CliRunner().invoke(app, ["up", "--dir", str(tmp_path / "sim"), *args])
    assert isinstance(result.exception, SimError)
    assert match in result.exception.message
    assert not (tmp_path / "sim").exists()


def test_refuses_a_directory_that_is_not_a_sim(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(SimError, match="not a simulated fleet"):
        fleet.create(tmp_path, 2, 5.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


# -- scale -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_thousand_nodes(make_sim: SimFactory, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    info = make_sim(nodes=1000)
    created = time.monotonic()
    states = fleet.status(info.dir)
    swept = time.monotonic()
    assert len(states) == 1000 and all(s.healthy for s in states)
    pid = fleet.is_running(info.dir)
    fleet.stop(info.dir)
    assert fleet.is_running(info.dir) is None and pid
    with capsys.disabled():
        print(f"\n1000 nodes: create {created - started:.2f}s, health sweep {swept - created:.2f}s")


def test_need_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SSH tests' guard: a missing tool is a loud skip locally, a failure under CI."""
    from tests.conftest import fallback, need

    monkeypatch.delenv("CI", raising=False)
    need("sh", "present")
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-xyz is missing: r"):
        need("no-such-tool-xyz", "r")
    fallback("degraded")  # locally: said, not failed
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run"):
        need("no-such-tool-xyz", "r")
    with pytest.raises(pytest.fail.Exception, match="degraded"):
        fallback("degraded")
