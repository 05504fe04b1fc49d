"""HTTP probes for real endpoints, against real servers on 127.0.0.1: HTTPS with a throwaway CA made here,
mTLS, headers rendered from a vaulted host variable, JSON field checks, body regexes, capped bodies, and
answers that are not what HTTP should be (each must end as a short failed-probe reason, never a crash)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fleetctl.config import Probe, load_config
from fleetctl.errors import ConfigError
from fleetctl.health import Prober, ProbeResult
from fleetctl.inventory import Fleet, load_inventory
from fleetctl.probes_http import MAX_BODY

HOLD = 5.0  # a server that hangs or trickles stops after this long, or when the test ends
TOKEN = "s3cret-t0ken"
HEALTH = {
    "status": "ok",
    "checks": {"db": "up", "queue": 3},
    "items": [{"name": "a"}, {"name": "b"}],
    "ready": True,
}


# --- a throwaway CA -----------------------------------------------------------------------------------


class CA:
    def __init__(self, root: Path, name: str = "fleetctl test CA") -> None:
        self.root = root
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(subject, self.key.public_key())
            .issuer_name(subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self._write(
            f"{name.replace(' ', '-')}.pem", self.cert.public_bytes(serialization.Encoding.PEM)
        )

    @staticmethod
    def _builder(subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def issue(
        self, name: str, *, dns: tuple[str, ...] = (), ip: bool = True, client: bool = False
    ) -> tuple[Path, Path]:
        """A leaf certificate and its key, as two PEM files."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
            .issuer_name(self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return (
            self._write(f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM)),
            self._write(f"{name}.key", key_pem),
        )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    return CA(tmp_path_factory.mktemp("pki"))


# --- a real (optionally TLS, optionally mTLS) controller ----------------------------------------------


class Controller(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.tls = tls
        self.seen: list[dict[str, str]] = []
        self.release = threading.Event()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HOLD)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        conn = self.tls.wrap_socket(request, server_side=True)  # the handshake, in this connection's thread
        try:
            super().finish_request(conn, client_address)
        finally:
            conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class Handler(BaseHTTPRequestHandler):
    server: Controller
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append(dict(self.headers.items()))
        path = self.path
        if path == "/health":
            self._send(200, json.dumps(HEALTH).encode())
        elif path == "/auth":
            ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            self._send(200 if ok else 401, b'{"status": "ok"}' if ok else b"no")
        elif path == "/text":
            self._send(200, b"controller 1.2.0\nstatus: ok\n", "text/plain")
        elif path == "/notjson":
            self._send(200, b"<html>ok</html>", "text/html")
        elif path == "/binary":
            self._send(200, bytes(range(256)) * 4, "application/octet-stream")
        elif path == "/deep":
            self._send(200, b"[" * 60000)
        elif path == "/big":  # a 1 MiB JSON document: more than a probe reads
            self._send(200, json.dumps({"status": "ok", "pad": "x" * (1 << 20)}).encode())
        elif path == "/endless":  # no Content-Length, a body that never ends
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"status: ok\n")
            while not self.server.release.is_set():
                self.wfile.write(b"x" * 8192)
        elif path == "/trickle":  # an answer that starts, then drips a byte at a time
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                if self.server.release.wait(0.05):
                    break
        else:
            self._send(404, b"no such path")


@pytest.fixture
def serve() -> Iterator[Callable[..., Controller]]:
    started: list[Controller] = []

    def start(tls: ssl.SSLContext | None = None) -> Controller:
        server = Controller(tls)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.release.set()
        server.shutdown()
        server.server_close()


def server_tls(ca: CA, name: str = "controller", *, mtls: bool = False, **issue: Any) -> ssl.SSLContext:
    cert, key = ca.issue(name, **issue)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if mtls:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca.pem)
    return ctx


@pytest.fixture
def raw() -> Iterator[Callable[[bytes], int]]:
    """A server that answers every connection with fixed bytes, HTTP or not, then closes."""
    listeners: list[socket.socket] = []

    def start(payload: bytes) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listeners.append(listener)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.settimeout(HOLD)
                    try:
                        conn.recv(65536)
                        conn.sendall(payload)
                    except OSError:
                        pass

        threading.Thread(target=loop, daemon=True).start()
        return listener.getsockname()[1]

    yield start
    for listener in listeners:
        listener.close()


# --- fleets and probes --------------------------------------------------------------------------------


def make_fleet(tmp_path: Path, ports: dict[str, int], **host_vars: Any) -> Fleet:
    hosts = {h: {"ansible_host": "127.0.0.1", "hc_port": p, **host_vars} for h, p in ports.items()}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return load_inventory([path])


def probe_one(fleet: Fleet, probe: Probe, host: str = "web1") -> ProbeResult:
    return Prober(fleet, [probe]).round([host])[host]


def https(path: str = "/health", **kw: Any) -> Probe:
    return Probe(**{"http": "https://{{ ansible_host }}:{{ hc_port }}" + path, "timeout": 3.0, **kw})


def http(path: str = "/health", **kw: Any) -> Probe:
    return Probe(**{"http": "http://{{ ansible_host }}:{{ hc_port }}" + path, "timeout": 3.0, **kw})


def failed(result: ProbeResult, reason: str) -> bool:
    """A failed probe with a short one-line reason that contains `reason`."""
    assert not result.ok
    assert result.error is not None and "\n" not in result.error and len(result.error) < 400, result.error
    assert reason in result.error, result.error
    return True


# --- TLS ----------------------------------------------------------------------------------------------


def test_https_with_the_fleets_ca_passes_and_without_it_fails(tmp_path: Path, ca: CA, serve) -> None:
    server = serve(server_tls(ca))
    fleet = make_fleet(tmp_path, {"web1": server.port})
    assert probe_one(fleet, https(ca_file=str(ca.pem))).ok
    assert failed(probe_one(fleet, https()), "certificate verify failed")
    other = CA(tmp_path, "another CA")  # trusting the wrong CA is no better than trusting none
    assert failed(probe_one(fleet, https(ca_file=str(other.pem))), "certificate verify failed")


def test_ca_file_rendered_per_host(tmp_path: Path, ca: CA, serve) -> None:
    server = serve(server_tls(ca))
    fleet = make_fleet(tmp_path, {"web1": server.port}, fleet_ca=str(ca.pem))
    assert probe_one(fleet, https(ca_file="{{ fleet_ca }}")).ok


def test_server_name_for_a_certificate_without_the_address(tmp_path: Path, ca: CA, serve) -> None:
    """The inventory holds an address, the certificate a name: `server_name` says which name to verify."""
    server = serve(server_tls(ca, "named", dns=["web1.fleet.test"], ip=False))
    fleet = make_fleet(tmp_path, {"web1": server.port})
    probe = https(ca_file=str(ca.pem), server_name="{{ inventory_hostname }}.fleet.test")
    assert probe_one(fleet, probe).ok
    assert failed(probe_one(fleet, https(ca_file=str(ca.pem))), "certificate verify failed")
    wrong = https(ca_file=str(ca.pem), server_name="web2.fleet.test")
    assert failed(probe_one(fleet, wrong), "certificate verify failed")


def test_mtls_client_certificate(tmp_path: Path, ca: CA, serve) -> None:
    server = serve(server_tls(ca, mtls=True))
    cert, key = ca.issue("fleetctl-probe", ip=False, client=True)
    fleet = make_fleet(tmp_path, {"web1": server.port})
    assert probe_one(fleet, https(ca_file=str(ca.pem), client_cert=str(cert), client_key=str(key))).ok
    assert len(server.seen) == 1
    without = probe_one(fleet, https(ca_file=str(ca.pem)))
    # TLS 1.3: the server's alert arrives after the client's handshake, or the connection is just reset
    assert failed(without, "https://127.0.0.1:")
    assert "certificate required" in without.error or "client certificate?" in without.error
    assert len(server.seen) == 1  # the request never reached the handler
    combined = tmp_path / "probe.pem"  # certificate and key in one file
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    assert probe_one(fleet, https(ca_file=str(ca.pem), client_cert=str(combined))).ok


def test_mtls_with_a_certificate_of_another_ca_fails(tmp_path: Path, ca: CA, serve) -> None:
    server = serve(server_tls(ca, mtls=True))
    stranger = CA(tmp_path, "stranger CA")
    cert, key = stranger.issue("intruder", ip=False, client=True)
    fleet = make_fleet(tmp_path, {"web1": server.port})
    result = probe_one(fleet, https(ca_file=str(ca.pem), client_cert=str(cert), client_key=str(key)))
    assert not result.ok and server.seen == []


@pytest.mark.parametrize(
    "files, reason",
    [
        ({"ca_file": "{{ missing_ca }}"}, "cannot load ca_file /nonexistent/ca.pem"),
        ({"ca_file": "{{ not_pem }}"}, "cannot load ca_file"),
        ({"client_cert": "{{ not_pem }}"}, "cannot load client_cert"),
    ],
)
def test_unloadable_tls_files_fail_the_probe(
    tmp_path: Path, ca: CA, serve, files: dict[str, str], reason: str
) -> None:
    server = serve(server_tls(ca))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    fleet = make_fleet(
        tmp_path, {"web1": server.port}, missing_ca="/nonexistent/ca.pem", not_pem=str(not_pem)
    )
    assert failed(probe_one(fleet, https(**files)), reason)
    assert server.seen == []


def test_encrypted_client_key_fails_instead_of_prompting(tmp_path: Path, ca: CA, serve) -> None:
    server = serve(server_tls(ca, mtls=True))
    cert, key = ca.issue("sealed", ip=False, client=True)
    plain = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(
        plain.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    fleet = make_fleet(tmp_path, {"web1": server.port})
    result = probe_one(fleet, https(ca_file=str(ca.pem), client_cert=str(cert), client_key=str(key)))
    assert failed(result, "the client key is encrypted; give an unencrypted key file")


def test_one_tls_context_per_set_of_files(tmp_path: Path, ca: CA, serve) -> None:
    """A round over many hosts sharing one CA bundle loads it once (loading costs milliseconds a host)."""
    servers = {f"web{i}": serve(server_tls(ca)) for i in range(3)}
    fleet = make_fleet(tmp_path, {h: s.port for h, s in servers.items()})
    prober = Prober(fleet, [https(ca_file=str(ca.pem))])
    calls = []
    real = ssl.create_default_context

    def counting(*args: Any, **kw: Any) -> ssl.SSLContext:
        calls.append(kw.get("cafile"))
        return real(*args, **kw)

    ssl.create_default_context = counting  # type: ignore[assignment]
    try:
        results = prober.round(list(servers))
    finally:
        ssl.create_default_context = real  # type: ignore[assignment]
    assert all(r.ok for r in results.values())
    assert calls == [str(ca.pem)]


# --- headers ------------------------------------------------------------------------------------------


def vaulted_fleet(tmp_path: Path, ports: dict[str, int], tokens: dict[str, str]) -> Fleet:
    from ansible.parsing.vault import VaultLib, VaultSecret

    password = tmp_path / "vault-pass"
    password.write_text("correct horse\n")
    vault = VaultLib([("default", VaultSecret(b"correct horse"))])
    lines = ["all:", "  hosts:"]
    for host, port in ports.items():
        sealed = vault.encrypt(tokens[host]).decode()
        lines += [f"    {host}:", "      ansible_host: 127.0.0.1", f"      hc_port: {port}"]
        lines += ["      hc_health_token: !vault |"] + [f"        {line}" for line in sealed.splitlines()]
    inventory = tmp_path / "vaulted.yml"
    inventory.write_text("\n".join(lines) + "\n")
    assert "s3cret" not in inventory.read_text()
    return load_inventory([inventory], vault_password_file=password)


def test_authorization_header_from_a_vaulted_variable(tmp_path: Path, serve) -> None:
    good, bad = serve(), serve()
    fleet = vaulted_fleet(
        tmp_path, {"good": good.port, "bad": bad.port}, {"good": TOKEN, "bad": "s3cret-but-wrong"}
    )
    probe = http("/auth", headers={"Authorization": "Bearer {{ hc_health_token }}", "X-Probe": "fleetctl"})
    results = Prober(fleet, [probe]).round(["good", "bad"])
    assert results["good"].ok, results["good"].error
    assert good.seen[0]["Authorization"] == f"Bearer {TOKEN}"
    assert good.seen[0]["X-Probe"] == "fleetctl"
    assert good.seen[0]["User-Agent"] == "fleetctl-probe"
    assert failed(results["bad"], "status 401, expected 200")
    assert "s3cret" not in str(results["bad"].error)  # a reason never quotes a header value


def test_header_value_that_renders_a_line_break_fails_cleanly(tmp_path: Path, serve) -> None:
    server = serve()
    fleet = make_fleet(tmp_path, {"web1": server.port}, token="a\r\nX-Evil: 1")
    result = probe_one(fleet, http(headers={"X-Token": "{{ token }}"}))
    assert failed(result, "header X-Token renders with a line break")
    assert server.seen == []


# --- body and JSON checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expect, reason",
    [
        ("/health", {"status": "ok"}, None),
        ("/health", {"status": "ok", "checks.db": "up", "checks.queue": 3, "ready": True}, None),
        ("/health", {"items.1.name": "b"}, None),
        ("/health", {"status": "down"}, "JSON status is 'ok', expected 'down'"),
        ("/health", {"checks.db": "down"}, "JSON checks.db is 'up', expected 'down'"),
        ("/health", {"checks.cache": "up"}, "JSON has no checks.cache"),
        ("/health", {"items.5.name": "b"}, "JSON has no items.5.name"),
        ("/health", {"ready": 1}, "JSON ready is true, expected 1"),  # true is not 1
        ("/health", {"checks.queue": "3"}, "JSON checks.queue is 3, expected '3'"),
        ("/notjson", {"status": "ok"}, "body is not JSON"),
        ("/binary", {"status": "ok"}, "body is not JSON"),
        ("/deep", {"status": "ok"}, "body is not JSON"),  # nesting deeper than Python's recursion
        ("/big", {"status": "ok"}, f"body over {MAX_BODY // 1024} KiB"),
    ],
)
def test_expect_json(tmp_path: Path, serve, path: str, expect: dict[str, Any], reason: str | None) -> None:
    fleet = make_fleet(tmp_path, {"web1": serve().port})
    result = probe_one(fleet, http(path, expect_json=expect))
    if reason is None:
        assert result.ok, result.error
    else:
        assert failed(result, reason)


def test_expect_json_over_https_with_status(tmp_path: Path, ca: CA, serve) -> None:
    fleet = make_fleet(tmp_path, {"web1": serve(server_tls(ca)).port})
    assert probe_one(fleet, https("/health", ca_file=str(ca.pem), expect_json={"status": "ok"})).ok
    nope = https("/nope", ca_file=str(ca.pem), expect_json={"status": "ok"})
    assert failed(probe_one(fleet, nope), "status 404, expected 200")


@pytest.mark.parametrize(
    "path, regex, ok",
    [
        ("/text", r"(?m)^status: ok$", True),
        ("/text", r"^controller 1\.2\.", True),
        ("/text", r"status: degraded", False),
        ("/binary", r"\x00\x01\x02", True),  # bytes that are not UTF-8 do not crash the match
        ("/endless", r"^status: ok", True),  # only the first 64 KiB are read: no wait for an end
        ("/endless", r"never there", False),
    ],
)
def test_expect_body(tmp_path: Path, serve, path: str, regex: str, ok: bool) -> None:
    fleet = make_fleet(tmp_path, {"web1": serve().port})
    result = probe_one(fleet, http(path, expect_body=regex, timeout=HOLD - 1))
    assert result.ok is ok, result.error
    if not ok:
        assert failed(result, "body does not match")


# --- untrusted answers --------------------------------------------------------------------------------


def test_trickling_answer_hits_the_timeout(tmp_path: Path, serve) -> None:
    fleet = make_fleet(tmp_path, {"web1": serve().port})
    result = probe_one(fleet, http("/trickle", expect_body="x", timeout=0.3))
    assert result == ProbeResult("web1", False, None, result.error)
    assert failed(result, "no answer within 0.3s")


def test_status_line_with_brackets_is_a_clean_failure(tmp_path: Path, raw) -> None:
    port = raw(b"HTTP/1.1 500 [/]boom\r\nContent-Length: 4\r\nConnection: close\r\n\r\nboom")
    result = probe_one(make_fleet(tmp_path, {"web1": port}), http())
    assert result.error == f"http http://127.0.0.1:{port}/health: status 500, expected 200"


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"HTTP/1.1 5[/]0 [bold]x\r\n\r\n", "bad HTTP answer 'HTTP/1.1 5[/]0 [bold]x'"),
        (b"\x1b[31mred\x1b[0m\r\n\r\n", "bad HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok", "bad HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", "bad HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstatus: ok", "answer cut short"),
        (b"", "connection closed without an answer"),
    ],
)
def test_weird_answers_are_short_failed_probes(tmp_path: Path, raw, payload: bytes, reason: str) -> None:
    port = raw(payload)
    result = probe_one(make_fleet(tmp_path, {"web1": port}), http(expect_body="status: ok"))
    assert failed(result, reason)
    assert "\x1b" not in str(result.error)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1:99999/health", "not a valid URL: Port out of range"),
        ("http://[::1/health", "not a valid URL: Invalid IPv6 URL"),
        ("ftp://127.0.0.1/health", "not an http(s) URL"),
    ],
)
def test_urls_that_render_wrong_are_failed_probes(tmp_path: Path, url: str, reason: str) -> None:
    assert failed(probe_one(make_fleet(tmp_path, {"web1": 1}), Probe(http=url)), reason)


def test_a_redirect_is_not_followed(tmp_path: Path, raw, serve) -> None:
    target = serve()
    port = raw(f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{target.port}/health\r\n\r\n".encode())
    assert failed(probe_one(make_fleet(tmp_path, {"web1": port}), http()), "status 302, expected 200")
    assert target.seen == []


# --- configuration ------------------------------------------------------------------------------------


def write_config(tmp_path: Path, probe: dict[str, Any]) -> Path:
    (tmp_path / "inventory.yml").write_text(yaml.safe_dump({"all": {"hosts": {"web1": {}}}}))
    path = tmp_path / "fleet.yml"
    path.write_text(yaml.safe_dump({"inventory": "inventory.yml", "health": {"probes": [probe]}}))
    return path


URL = "https://{{ ansible_host }}:8443/health"


@pytest.mark.parametrize(
    "probe, message",
    [
        ({"tcp": "{{ ansible_host }}:22", "headers": {"A": "b"}}, "headers applies to http probes only"),
        ({"http": URL, "headers": {"Bad Name": "x"}}, "'Bad Name' is not a valid header name"),
        ({"http": URL, "headers": {"X-A": "1\n2"}}, "the value of X-A holds a line break"),
        ({"http": URL, "headers": {"X-A": 5}}, "headers.X-A"),
        ({"http": URL, "expect_body": "(unclosed"}, "expect_body: not a valid regular expression"),
        ({"http": URL, "expect_json": {"checks..db": "up"}}, "'checks..db' is not a dotted path"),
        ({"http": URL, "expect_json": {"status": ["ok"]}}, "expect_json.status"),
        ({"http": URL, "ca_file": "missing.pem"}, "ca_file: no such file"),
        ({"http": URL, "client_key": "{{ k }}"}, "client_key needs client_cert"),
        ({"http": "http://{{ ansible_host }}/h", "ca_file": "{{ ca }}"}, "ca_file needs an https:// URL"),
        ({"http": URL, "verify": False}, "verify"),
    ],
)
def test_bad_probe_options_are_config_errors(tmp_path: Path, probe: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, probe))
    assert "health.probes.0" in str(err.value) and message in str(err.value), str(err.value)


def test_tls_paths_resolve_against_the_config_directory(tmp_path: Path, ca: CA) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.pem").write_bytes(ca.pem.read_bytes())
    probe = {
        "http": URL,
        "ca_file": "pki/ca.pem",
        "client_cert": "pki/{{ inventory_hostname }}.pem",
        "client_key": "{{ key_dir }}/probe.key",
        "headers": {"Authorization": "Bearer {{ hc_health_token }}"},
        "expect_json": {"status": "ok", "checks.db": True},
    }
    loaded = load_config(write_config(tmp_path, probe)).health.probes[0]
    assert loaded.ca_file == str(tmp_path / "pki" / "ca.pem")
    assert loaded.client_cert == str(tmp_path / "pki" / "{{ inventory_hostname }}.pem")
    assert loaded.client_key == "{{ key_dir }}/probe.key"  # starts with a template: left to render
    assert loaded.expect_json == {"status": "ok", "checks.db": True}


def test_aiohttp_is_imported_only_for_an_http_round(tmp_path: Path, serve) -> None:
    """Commands that never probe over HTTP (`status`, `plan`) do not pay for aiohttp's imports."""
    import subprocess
    import sys

    port = serve().port
    script = f"""
import sys
from pathlib import Path
from fleetctl.config import Probe
from fleetctl.health import Prober
from fleetctl.inventory import load_inventory
import yaml
inv = Path({str(tmp_path)!r}) / "inv.yml"
inv.write_text(yaml.safe_dump({{"all": {{"hosts": {{"web1": {{"ansible_host": "127.0.0.1"}}}}}}}}))
prober = Prober(load_inventory([inv]), [Probe(http="http://{{{{ ansible_host }}}}:{port}/health")])
before = "aiohttp" in sys.modules
assert prober.round(["web1"])["web1"].ok
print(before, "aiohttp" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
