"""Real sshd test hosts (fleetctl.sim.sshhosts): keys, known_hosts, link cuts, processes in hosts, cleanup.

The mode that ran (netns or loopback, and why) is printed to the terminal and recorded in each test's
user_properties (junit xml)."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import paramiko
import pytest

from fleetctl.errors import SimError
from fleetctl.sim.sshd import ssh_bin, sshd_bin
from fleetctl.sim.sshhosts import SshHosts, cleanup_stale, create_ssh_hosts, netns_available
from tests.conftest import fallback, need, say

pytestmark = pytest.mark.ssh

NAMES = ["web1", "web2", "web3"]


@pytest.fixture(scope="module")
def hosts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SshHosts:
    need(sshd_bin() is not None and ssh_bin() is not None, "the SSH tests need OpenSSH (sshd and ssh)")
    started = time.monotonic()
    hs = create_ssh_hosts(tmp_path_factory.mktemp("sshhosts"), NAMES)
    request.addfinalizer(hs.close)
    took = time.monotonic() - started
    if hs.mode == "netns":
        say(
            request,
            tag="sshhosts",
            text=f"mode=netns: {len(hs.hosts)} hosts in network namespaces, up in {took:.2f}s",
        )
    else:
        text = f"mode=loopback (NO namespaces, link cuts untested): {hs.fallback_reason}; up {took:.2f}s"
        say(request, text, "sshhosts")
        fallback(f"SSH test hosts without network namespaces: {hs.fallback_reason}")
    return hs


@pytest.fixture(autouse=True)
def _record_mode(request: pytest.FixtureRequest, hosts: SshHosts) -> None:
    request.node.user_properties.append(("sshhosts_mode", hosts.mode))
    if hosts.fallback_reason:
        request.node.user_properties.append(("sshhosts_fallback_reason", hosts.fallback_reason))
        print(f"sshhosts mode={hosts.mode}: {hosts.fallback_reason}")


def _ssh(hs: SshHosts, host, *command: str, timeout: float = 15, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        hs.ssh_argv(host, *command, **kw),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _fingerprint(pub_line: str, tmp_path: Path) -> str:
    f = tmp_path / "k.pub"
    f.write_text(pub_line + "\n")
    return subprocess.run(
        ["ssh-keygen", "-lf", str(f)], capture_output=True, text=True, check=True
    ).stdout.split()[1]


def _paramiko_client(hs: SshHosts, known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or hs.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def _connect(client: paramiko.SSHClient, hs: SshHosts, host) -> None:
    client.connect(
        host.address,
        port=host.port,
        username=hs.user,
        key_filename=str(hs.client_key),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
        banner_timeout=5,
        auth_timeout=5,
    )


def test_mode_is_the_best_available(hosts: SshHosts) -> None:
    ok, why = netns_available()
    if ok:
        # namespaces work here: falling back would hide a setup bug
        assert hosts.mode == "netns", hosts.fallback_reason
        assert hosts.fallback_reason is None
    else:
        assert hosts.mode == "loopback"
        assert hosts.fallback_reason
    assert [h.name for h in hosts.hosts] == NAMES
    assert len({(h.address, h.port) for h in hosts.hosts}) == len(NAMES)
    for h in hosts.hosts:
        if hosts.mode == "netns":
            assert h.address.startswith(("198.18.", "198.19.")) and h.port == 22
            assert h.namespace and h.veth_host and len(h.veth_host) <= 15 and len(h.veth_ns or "") <= 15
        else:
            assert h.address.startswith("127.78.") and h.namespace is None and h.veth_host is None


def test_known_hosts_and_fingerprints(hosts: SshHosts, tmp_path: Path) -> None:
    lines = hosts.known_hosts.read_text().splitlines()
    assert lines == [h.known_hosts_line for h in hosts.hosts]
    for h in hosts.hosts:
        assert h.host_key_pub.startswith("ssh-ed25519 AAAA")
        assert h.host_key_fingerprint.startswith("SHA256:")
        assert _fingerprint(h.host_key_pub, tmp_path) == h.host_key_fingerprint
    assert hosts.client_key == hosts.workdir / "id_ed25519" and hosts.client_key.is_file()
    assert (hosts.home / ".ssh" / "known_hosts").read_text() == hosts.known_hosts.read_text()


def test_ssh_true_on_every_host_with_strict_host_key_checking(hosts: SshHosts) -> None:
    for h in hosts.hosts:
        # the plain command line a caller would type, without our ssh_config
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(hosts.client_key),
            "-o",
            f"UserKnownHostsFile={hosts.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-p",
            str(h.port),
            f"{hosts.user}@{h.address}",
            "true",
        ]
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
        assert cp.returncode == 0, cp.stderr
        # and by name through the generated ssh_config
        cp = subprocess.run(
            ["ssh", "-F", str(hosts.ssh_config), h.name, "echo", "ok"],
            capture_output=True,
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )
        assert cp.returncode == 0 and cp.stdout.strip() == "ok", cp.stderr


def test_unknown_host_is_refused(hosts: SshHosts, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    cp = _ssh(hosts, hosts.hosts[0], "true", known_hosts=empty)
    assert cp.returncode == 255
    assert "Host key verification failed" in cp.stderr


def test_password_auth_is_off(hosts: SshHosts) -> None:
    h = hosts.hosts[0]
    cp = _ssh(
        hosts,
        h,
        "true",
        options=["-o", "IdentityFile=/dev/null", "-o", "PubkeyAuthentication=no"],
    )
    assert cp.returncode == 255
    assert "Permission denied (publickey)" in cp.stderr


def test_paramiko_connects_with_reject_policy(hosts: SshHosts) -> None:
    for h in hosts.hosts:
        client = _paramiko_client(hosts)
        try:
            _connect(client, hosts, h)
            _, stdout, _ = client.exec_command("echo hello; ip -o -4 addr show")
            out = stdout.read().decode()
            assert stdout.channel.recv_exit_status() == 0
        finally:
            client.close()
        assert out.startswith("hello")
        if hosts.mode == "netns":
            # the command ran inside the host's namespace: it sees the host's address, not the others'
            assert f"inet {h.address}/30" in out
            assert all(o.address not in out for o in hosts.hosts if o is not h)


def test_paramiko_rejects_unknown_host(hosts: SshHosts, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    client = _paramiko_client(hosts, empty)
    try:
        with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
            _connect(client, hosts, hosts.hosts[0])
    finally:
        client.close()


def test_name_lookups_inside_a_host_do_not_hang(hosts: SshHosts) -> None:
    """A namespace cannot reach the machine's DNS server: lookups must fail fast, test hosts resolve."""
    h = hosts.hosts[0]
    code = (
        "import socket, time; t = time.monotonic(); socket.getfqdn(); socket.getfqdn('example.invalid'); "
        f"print(socket.gethostbyname({hosts.hosts[1].name!r}), round(time.monotonic() - t, 2))"
    )
    cp = _ssh(hosts, h, "python3", "-c", shlex.quote(code), timeout=20)
    assert cp.returncode == 0, cp.stderr
    if hosts.mode == "netns":
        resolved, took = cp.stdout.split()
        assert resolved == hosts.hosts[1].address
        assert float(took) >= 0  # it returned (the ssh timeout guards a hang); the figure is printed
        print(f"name lookups inside a host: {took}s")


def test_popen_on_runs_inside_the_host(hosts: SshHosts, tmp_path: Path) -> None:
    h = hosts.hosts[1]
    (tmp_path / "hello.txt").write_text(f"hello from {h.name}\n")
    proc = hosts.popen_on(
        h,
        [sys.executable, "-m", "http.server", "--bind", h.address, "8080"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _popen_pids.append(proc.pid)
    url = f"http://{h.address}:8080/hello.txt"
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, "http.server exited"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                body = resp.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert body == f"hello from {h.name}\n"
    if hosts.mode == "netns":
        ns = subprocess.run(["ip", "netns", "identify", str(proc.pid)], capture_output=True, text=True)
        assert ns.stdout.strip() == h.namespace


def test_cut_link_makes_host_unreachable_and_restore_brings_it_back(hosts: SshHosts) -> None:
    h = hosts.hosts[0]
    if hosts.mode != "netns":
        with pytest.raises(SimError, match="cannot cut"):
            hosts.cut_link(h)
        need(False, f"link cuts need network namespaces; ran in loopback mode: {hosts.fallback_reason}")
    other = hosts.hosts[1]
    # an established session (a run in progress) must notice the cut through ssh_options()' keepalives
    session = subprocess.Popen(
        hosts.ssh_argv(h, "echo started; sleep 30"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert session.stdout is not None and session.stdout.readline() == "started\n"
    hosts.cut_link(h)
    try:
        cp = _ssh(hosts, h, "true", options=["-o", "ConnectTimeout=2"], timeout=10)
        assert cp.returncode == 255, cp.stderr
        assert any(w in cp.stderr.lower() for w in ("timed out", "no route")), cp.stderr  # cut, not refused
        # the other hosts are not affected
        assert _ssh(hosts, other, "true").returncode == 0
        # paramiko sees it as unreachable too
        client = _paramiko_client(hosts)
        try:
            with pytest.raises((OSError, paramiko.SSHException)):
                _connect(client, hosts, h)
        finally:
            client.close()
        try:
            _, err = session.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            session.kill()
            session.communicate()
            pytest.fail("an established ssh session did not notice the cut link within 10 s")
        assert session.returncode == 255, err
    finally:
        hosts.restore_link(h)
    cp = _ssh(hosts, h, "true", options=["-o", "ConnectTimeout=5"])
    assert cp.returncode == 0, cp.stderr


def test_rotated_host_key_is_refused(hosts: SshHosts, tmp_path: Path) -> None:
    h = hosts.hosts[2]
    old_pub, old_fp, old_pid = h.host_key_pub, h.host_key_fingerprint, h.sshd_pid
    known_before = hosts.known_hosts.read_text()
    # a session open before the rotation is ended (as a reinstalled host would end it), so a multiplexed
    # connection cannot keep using the old key
    before = _paramiko_client(hosts)
    _connect(before, hosts, h)
    transport = before.get_transport()
    assert transport is not None and transport.is_active()

    new_pub = hosts.rotate_host_key(h)
    assert new_pub == h.host_key_pub != old_pub
    assert h.host_key_fingerprint != old_fp and h.sshd_pid != old_pid
    assert hosts.known_hosts.read_text() == known_before  # known_hosts is NOT updated

    cp = _ssh(hosts, h, "true")
    assert cp.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in cp.stderr
    assert "Host key verification failed" in cp.stderr

    client = _paramiko_client(hosts)
    try:
        with pytest.raises(paramiko.BadHostKeyException):
            _connect(client, hosts, h)
    finally:
        client.close()

    # the new key is the one sshd serves
    fresh = tmp_path / "known_hosts"
    fresh.write_text(h.known_hosts_line + "\n")
    assert _ssh(hosts, h, "true", known_hosts=fresh).returncode == 0

    deadline = time.monotonic() + 3
    while transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not transport.is_active(), "a session from before the rotation survived"
    before.close()

    hosts.trust_host_key(h)  # leave the fixture usable
    assert _ssh(hosts, h, "true").returncode == 0


def test_close_leaves_nothing_behind(tmp_path: Path) -> None:
    """Hosts of its own (closing the module's shared hosts would break every test that runs after)."""
    hosts = create_ssh_hosts(tmp_path / "own", NAMES[:2])
    try:
        spawned = [hosts.popen_on(hosts.hosts[1], ["sleep", "300"]).pid]
        _close_and_check(hosts, spawned)
    finally:
        hosts.close()


def _close_and_check(hosts: SshHosts, spawned: list[int]) -> None:
    # a process that daemonized over ssh (new session, parent gone) must be found and killed as well
    marker = f"{time.time_ns() % 10**9}"
    cp = _ssh(hosts, hosts.hosts[0], f"setsid sleep 3{marker} </dev/null >/dev/null 2>&1 &")
    assert cp.returncode == 0, cp.stderr
    deadline = time.monotonic() + 5
    while not _pids_of(f"sleep 3{marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_of(f"sleep 3{marker}")

    sshd_pids = [h.sshd_pid for h in hosts.hosts]
    namespaces = [h.namespace for h in hosts.hosts if h.namespace]
    veths = [h.veth_host for h in hosts.hosts if h.veth_host]
    hosts.close()
    hosts.close()  # idempotent

    for pid in sshd_pids + spawned:
        assert not _running(pid), f"pid {pid} survived close()"
    assert not _pids_of(f"sleep 3{marker}"), "a daemonized ssh session process survived close()"
    if namespaces:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
        for ns in namespaces:
            assert ns not in listed
        for veth in veths:
            assert veth not in links
        for h in hosts.hosts:
            block = ipaddress.IPv4Network(f"{h.address}/30", strict=False)
            assert str(block) not in routes and f"{h.gateway} " not in routes
    with pytest.raises(SimError):
        hosts.popen_on(hosts.hosts[0], ["true"])


_popen_pids: list[int] = []


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _pids_of(cmdline: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip().decode() == cmdline:
                    if _running(int(entry.name)):
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_loopback_mode(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The fallback works too (forced with netns=False), and says why it ran."""
    with create_ssh_hosts(tmp_path / "lo", ["lo1"], netns=False) as hs:
        request.node.user_properties.append(("sshhosts_forced_mode", hs.mode))
        assert hs.mode == "loopback" and "netns=False" in (hs.fallback_reason or "")
        h = hs.hosts[0]
        assert h.namespace is None and h.veth_host is None and h.address.startswith("127.78.")
        if h.port != 22:
            assert hs.known_hosts.read_text().startswith(f"[{h.address}]:{h.port} ssh-ed25519 ")
        cp = _ssh(hs, h, "true")
        assert cp.returncode == 0, cp.stderr
        client = _paramiko_client(hs)
        try:
            _connect(client, hs, h)
        finally:
            client.close()
        with pytest.raises(SimError, match="loopback"):
            hs.cut_link(h)
        pid = h.sshd_pid
    assert not _running(pid)


def test_stale_hosts_of_a_killed_run_are_cleaned_up(tmp_path: Path) -> None:
    """A run killed with SIGKILL leaves sshd and namespaces behind; cleanup_stale() (run by the next
    create_ssh_hosts) removes them."""
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from pathlib import Path
        from fleetctl.sim.sshhosts import create_ssh_hosts
        hs = create_ssh_hosts(Path({str(tmp_path / "stale")!r}), ["s1"])
        h = hs.hosts[0]
        print(json.dumps({{"run_id": hs.run_id, "pid": h.sshd_pid, "ns": h.namespace, "veth": h.veth_host}}))
        sys.stdout.flush()
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line, "child did not start its host"
        info = json.loads(line)
        assert _running(info["pid"])
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        if child.stdout:
            child.stdout.close()
    assert info["run_id"] in cleanup_stale()
    assert not _running(info["pid"])
    if info["ns"]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert info["ns"] not in listed and info["veth"] not in links
        assert not Path("/etc/netns", info["ns"]).exists()


def test_detached_hosts_outlive_their_maker_and_close_from_another_process(tmp_path: Path) -> None:
    """detach(owner) keeps the hosts after the making process exits; SshHosts.load() in another process
    reaches and closes them; cleanup_stale() leaves them alone while the owner lives."""
    owner = subprocess.Popen(["sleep", "60"], start_new_session=True)
    script = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from fleetctl.sim.sshhosts import create_ssh_hosts
        hs = create_ssh_hosts(Path({str(tmp_path / "det")!r}), ["d1", "d2"])
        hs.detach({owner.pid})
        print(json.dumps({{"run_id": hs.run_id, "pids": [h.sshd_pid for h in hs.hosts]}}))
        """
    )
    try:
        cp = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stderr
        made = json.loads(cp.stdout)
        assert all(_running(p) for p in made["pids"]), "the hosts died with their maker"
        assert made["run_id"] not in cleanup_stale()  # the owner still runs
        hs = SshHosts.load(tmp_path / "det")
        assert hs.detached and hs.run_id == made["run_id"] and [h.sshd_pid for h in hs.hosts] == made["pids"]
        for h in hs.hosts:
            assert _ssh(hs, h, "true").returncode == 0
        hs.close()
        assert not any(_running(p) for p in made["pids"])
        assert not (tmp_path / "det" / "hosts.json").exists()
        with pytest.raises(SimError, match="no running SSH test hosts"):
            SshHosts.load(tmp_path / "det")
    finally:
        owner.kill()
        owner.wait()
