"""Issue 9, findings 4 and 5: release archives on the nodes. Credentials stay with their origin across
redirects (real HTTP servers on two ports), a download has one total deadline and a size cap, the expected
digest comes from hc_artifact_checksum or SHA256SUMS, and without one a non-https archive is refused;
real rollouts on the simulated fleet for a checksum mismatch, a missing checksum and the opt-out."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.request import Request

import pytest

from fleetctl.config import load_config
from fleetctl.sim import artifacts
from tests.conftest import TWO_BATCHES, Cli, Sim
from tests.role_utils import load_module_util

hc_artifact = load_module_util("hc_artifact")
TOKEN = "Basic ZmxlZXQ6czNjcmV0"  # fleet:s3cret


class Server:
    """A real HTTP server on 127.0.0.1 in a thread; `routes` maps a path to a handler body."""

    def __init__(self, routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]]) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization header)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.seen.append((self.path, self.headers.get("Authorization")))
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                try:
                    route(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(routes: dict[str, Any]) -> Server:
        made.append(Server(routes))
        return made[-1]

    yield make
    for s in made:
        s.close()


def body(data: bytes, length: int | None = None) -> Callable[[Any], None]:
    def send(h: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(data) if length is None else length))
        h.end_headers()
        h.wfile.write(data)

    return send


def redirect(to: Callable[[], str]) -> Callable[[Any], None]:
    def send(h: Any) -> None:
        h.send_response(302)
        h.send_header("Location", to())
        h.send_header("Content-Length", "0")
        h.end_headers()

    return send


# -- credentials and redirects ---------------------------------------------------------------------------
def test_authorization_never_reaches_another_origin(servers: Callable[..., Server], tmp_path: Path) -> None:
    other = servers({"/a.tar.gz": body(b"payload")})
    store = servers(
        {
            "/a.tar.gz": redirect(lambda: other.url + "/a.tar.gz"),  # another port: another origin
            "/same": redirect(lambda: store.url + "/b.tar.gz"),
            "/b.tar.gz": body(b"same origin"),
        }
    )
    dest = tmp_path / "a"
    hc_artifact.fetch(store.url + "/a.tar.gz", str(dest), "fleet", "s3cret", timeout=10)
    assert dest.read_bytes() == b"payload"
    assert store.seen == [("/a.tar.gz", TOKEN)]
    assert other.seen == [("/a.tar.gz", None)]  # followed, without the credentials
    # on the same origin the credentials go on (so the check above is not vacuous)
    hc_artifact.fetch(store.url + "/same", str(dest), "fleet", "s3cret", timeout=10)
    assert store.seen[-2:] == [("/same", TOKEN), ("/b.tar.gz", TOKEN)]


@pytest.mark.parametrize(
    "old, new, kept",
    [
        ("https://store.example/a", "http://store.example/a", False),  # downgrade
        ("https://store.example/a", "https://cdn.example/a", False),  # another host
        ("https://store.example/a", "https://store.example:8443/a", False),  # another port
        ("https://store.example/a", "https://STORE.example:443/b", True),  # same origin
    ],
)
def test_redirect_handler_drops_authorization_off_origin(old: str, new: str, kept: bool) -> None:
    handler = hc_artifact.SameOriginAuthRedirects()
    req = Request(old, headers={"Authorization": TOKEN})
    moved = handler.redirect_request(req, None, 302, "Found", {}, new)
    assert ("Authorization" in moved.headers) is kept
    assert handler.insecure is new.startswith("http://")


def test_a_redirect_off_https_counts_as_insecure(servers: Callable[..., Server], tmp_path: Path) -> None:
    srv = servers({"/a": body(b"x")})
    assert hc_artifact.fetch(srv.url + "/a", str(tmp_path / "a"), timeout=10) is False
    assert hc_artifact.fetch(str(tmp_path / "a"), str(tmp_path / "b"), timeout=10) is False


# -- deadline and size cap -------------------------------------------------------------------------------
def trickle(h: Any) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "100000")
    h.end_headers()
    for _ in range(100000):  # a byte every 20 ms: every read succeeds, the download never ends
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.02)


def test_a_trickling_server_hits_the_total_deadline(servers: Callable[..., Server], tmp_path: Path) -> None:
    srv = servers({"/slow": trickle})
    with pytest.raises(hc_artifact.FetchError) as info:
        # each read answers well within the 60 s read timeout: only the total deadline can stop this
        hc_artifact.fetch(srv.url + "/slow", str(tmp_path / "a"), timeout=1.0, budget=1.0)
    assert "did not finish within 1s (hc_download_timeout)" in str(info.value)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_an_oversized_body_hits_the_cap(
    servers: Callable[..., Server], tmp_path: Path, declared: bool
) -> None:
    def big(h: Any) -> None:
        h.send_response(200)
        if declared:
            h.send_header("Content-Length", str(5000))
        h.end_headers()
        h.wfile.write(b"x" * 5000)

    srv = servers({"/big": big})
    dest = tmp_path / "a"
    with pytest.raises(hc_artifact.FetchError) as info:
        hc_artifact.fetch(srv.url + "/big", str(dest), timeout=10, max_bytes=1000)
    assert "larger than hc_artifact_max_bytes (1000 bytes)" in str(info.value)
    assert not dest.exists() or dest.stat().st_size <= 1000
    local = tmp_path / "local"
    local.write_bytes(b"x" * 5000)
    with pytest.raises(hc_artifact.FetchError, match="larger than hc_artifact_max_bytes"):
        hc_artifact.fetch(f"file://{local}", str(tmp_path / "b"), timeout=10, max_bytes=1000)


def test_credentials_never_appear_in_errors(servers: Callable[..., Server], tmp_path: Path) -> None:
    srv = servers({})
    url = srv.url.replace("http://", "http://fleet:s3cret@") + "/missing"
    with pytest.raises(hc_artifact.FetchError) as info:
        hc_artifact.fetch(url, str(tmp_path / "a"), timeout=10)
    assert "s3cret" not in str(info.value)


# -- the expected digest ---------------------------------------------------------------------------------
def test_sums_lines_in_every_format() -> None:
    digest = "ab" * 32
    for line in (
        f"{digest}  a.tar.gz",
        f"{digest} *a.tar.gz",
        f"SHA256 (a.tar.gz) = {digest}",
        f"{digest}  ./a.tar.gz",
    ):
        assert hc_artifact.parse_sums(f"{'cd' * 32}  b.tar.gz\n{line}\n", "a.tar.gz") == digest
    assert hc_artifact.parse_sums(f"{digest}  b.tar.gz\n", "a.tar.gz") is None
    with pytest.raises(hc_artifact.ChecksumError, match="2 different digests"):
        hc_artifact.parse_sums(f"{digest}  a.tar.gz\n{'cd' * 32}  a.tar.gz\n", "a.tar.gz")


def test_expected_digest_sources(servers: Callable[..., Server], tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    sums = artifacts.publish(store, "1.0.0", b"archive")
    archive = f"file://{store}/host-controller-1.0.0.tar.gz"
    tmp = str(tmp_path / "sums")
    assert hc_artifact.expected_digest(archive, "", "", tmp) == (sums, f"file://{store}/SHA256SUMS")
    assert hc_artifact.expected_digest(str(store / "host-controller-1.0.0.tar.gz"), "", "", tmp)[0] == sums
    explicit = "sha256:" + "AB" * 32
    assert hc_artifact.expected_digest(archive, explicit, "", tmp) == ("ab" * 32, "hc_artifact_checksum")
    with pytest.raises(hc_artifact.ChecksumError, match="is not 'sha256:<64 hex digits>'"):
        hc_artifact.expected_digest(archive, "md5:abc", "", tmp)
    missing = f"file://{store}/host-controller-9.9.9.tar.gz"
    assert hc_artifact.expected_digest(missing, "", "", tmp) == (
        None,
        f"file://{store}/SHA256SUMS has no line for host-controller-9.9.9.tar.gz",
    )
    (store / "SHA256SUMS").unlink()
    assert hc_artifact.expected_digest(archive, "", "", tmp) == (
        None,
        f"file://{store}/SHA256SUMS does not exist",
    )
    # over HTTP: 404 is "absent", a broken store is an error
    broken = servers({"/SHA256SUMS": lambda h: h.send_error(500)})
    assert hc_artifact.expected_digest(servers({}).url + "/r/a.tar.gz", "", "", tmp)[0] is None
    with pytest.raises(hc_artifact.ChecksumError, match="cannot read .*/SHA256SUMS"):
        hc_artifact.expected_digest(broken.url + "/a.tar.gz?sig=1", "", "", tmp)


# -- real rollouts ---------------------------------------------------------------------------------------
def status_host(cli: Cli, sim: Sim, name: str) -> dict[str, Any]:
    return next(h for h in cli.json("status --json", env=sim.env)["hosts"] if h["host"] == name)


def node_side_update(sim: Sim, version: str) -> str:
    """update.yml on node-001 straight through the executor (real ansible-runner), past the
    controller's preflight, as a fleet whose store changed after the check would see it: the error."""
    from fleetctl.context import FleetContext

    ctx = FleetContext(config_path=sim.config, env=sim.env)
    result = ctx.executor().run("update.yml", ["node-001"], extravars={"hc_version": version})
    host = result.results["node-001"]
    assert host.status == "failed"
    return host.error or ""


def test_checksum_mismatch_fails_the_host_with_both_digests(make_sim: Any, cli: Cli) -> None:
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    store = sim.dir / "artifacts"
    listed = hashlib.sha256((store / "host-controller-1.2.0.tar.gz").read_bytes()).hexdigest()
    tampered = artifacts.build_tarball("1.2.0", 1.0)  # a different build under the same name
    (store / "host-controller-1.2.0.tar.gz").write_bytes(tampered)  # SHA256SUMS not updated
    cli("rollout 1.2.0 --yes", env=sim.env, code=2)  # the controller's preflight refuses: nothing run
    assert set(sim.current().values()) == {"1.0.0"}
    error = node_side_update(sim, "1.2.0")  # and a node refuses it by itself too
    assert f"expected sha256:{listed}" in error
    assert f"got sha256:{hashlib.sha256(tampered).hexdigest()}" in error
    assert set(sim.current().values()) == {"1.0.0"}
    assert sim.releases("node-001") == {"1.0.0"}


def test_missing_checksum_is_refused_unless_fleet_yml_opts_out(make_sim: Any, cli: Cli) -> None:
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    (sim.dir / "artifacts" / "SHA256SUMS").unlink()
    cli("rollout 1.1.0 --yes", env=sim.env, code=2)  # the controller's preflight refuses: nothing run
    assert set(sim.current().values()) == {"1.0.0"}
    error = node_side_update(sim, "1.1.0")  # and a node refuses it by itself too
    assert "no checksum for file://" in error and "SHA256SUMS does not exist" in error
    assert "hc_artifact_checksum" in error and "require_checksum: false" in error  # the fixes
    assert set(sim.current().values()) == {"1.0.0"}
    assert sim.releases("node-001") == {"1.0.0"}
    sim.write_config(artifacts={"require_checksum": False})
    assert load_config(sim.config).playbook_vars()["hc_require_checksum"] is False
    cli("rollout 1.1.0 --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}


def test_check_sends_url_credentials_as_a_header_and_never_prints_them(tmp_path) -> None:
    """`fleetctl check` (fleetctl.artifacts): user:password@ in an artifact URL goes out as Basic auth,
    and no error or shown URL carries the password (a URL urllib cannot parse used to raise with it)."""
    import base64
    import http.server
    import threading

    from fleetctl import artifacts

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        digest, size = artifacts.fetch_digest(f"http://bob:s3cret@127.0.0.1:{port}/x.tgz")
        assert size == 2 and seen == ["Basic " + base64.b64encode(b"bob:s3cret").decode()]
    finally:
        server.shutdown()
    try:
        artifacts.fetch_digest("http://bob:s3cret@127.0.0.1:1/x.tgz")
    except OSError as exc:
        assert "s3cret" not in str(exc)
    assert (
        artifacts.redact("https://bob:s3cret@store.example/x.tgz?X-Sig=abc") == "https://store.example/x.tgz"
    )
