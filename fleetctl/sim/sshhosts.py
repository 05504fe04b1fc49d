"""Real SSH test hosts: one OpenSSH ``sshd`` per simulated host, each in its own network namespace.

Used by the tests and the simulated fleet so that Ansible (``ssh`` and ``paramiko`` connections) and
fleetctl's own paramiko client talk to real sshd processes, with real host keys and known_hosts, and so a
test can cut one host's network link in the middle of a run.

Modes
-----
``netns`` (preferred, needs root or CAP_NET_ADMIN + CAP_SYS_ADMIN):
    per host a network namespace ``fc-<run id>-<i>`` and a veth pair ``fc<run id>h<i>`` (root namespace end,
    the one :meth:`SshHosts.cut_link` takes down) / ``fc<run id>n<i>`` (inside the namespace). Every host gets
    a /30 from 198.18.0.0/15 (RFC 2544 benchmarking range): ``.1`` is the root-namespace end
    (:attr:`SshHost.gateway`, also the namespace's default route), ``.2`` the host (:attr:`SshHost.address`).
    sshd listens on ``address:22`` inside the namespace. An ``unreachable`` route of very low priority covers
    each /30 so that, while a link is cut, packets for the host fail fast with "No route to host" instead of
    leaking out of the machine's default route.
``loopback`` (fallback):
    sshd in the root namespace on distinct loopback addresses ``127.78.<random>.<i+1>``, port 22 when it can
    be bound, else a free high port (known_hosts then uses ``[address]:port``). No link can be cut in this
    mode: :meth:`SshHosts.cut_link` raises :class:`~fleetctl.errors.SimError` (iptables is not assumed to
    be installed; a DROP rule would also not emulate a missing route). ``fallback_reason`` says why.

Everything lives under ``workdir``: the client key ``id_ed25519``, ``authorized_keys``, ``known_hosts``,
``ssh_config``, ``home/.ssh/known_hosts`` (for tools that only read ``~/.ssh/known_hosts``, e.g. Ansible's
paramiko connection: run them with ``HOME=<hosts.home>``) and per host ``<name>/``: sshd_config, host key,
``sshd.log``, ``sshd.pid``.

Notes for callers:

- Only the network is per host: the filesystem, users, PIDs and the hostname are the machine's, so give
  every host its own directories (and do not expect ``hostname`` to differ).
- Inside a namespace only the gateway address of the root namespace is reachable (no forwarding): services
  a host must reach (an artifact server) listen on ``0.0.0.0`` or the host's ``gateway``. DNS inside a
  namespace is refused at once (``/etc/netns/<ns>/resolv.conf``); the test hosts resolve each other by name
  through ``/etc/netns/<ns>/hosts``.
- A cut link makes new connections fail at once ("No route to host"); an established connection gets no
  RST and stalls until the client's own timeouts: :meth:`SshHosts.ssh_options` sets OpenSSH keepalives
  (~4 s), paramiko callers must pass timeouts (``exec_command(timeout=...)``, ``channel.settimeout``).
- Ansible's ``ssh`` connection multiplexes (ControlPersist): use :meth:`SshHosts.ansible_vars` (keepalives
  included) and a per-run ``ANSIBLE_SSH_CONTROL_PATH_DIR``.

A small registry (``/run/fleetctl-sshhosts`` as root) records what every run created, so a run killed with
SIGKILL is cleaned up by the next :func:`create_ssh_hosts` (or :func:`cleanup_stale`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import os
import pwd
import random
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetctl.errors import SimError

__all__ = [
    "SshHost",
    "SshHosts",
    "cleanup_stale",
    "create_ssh_hosts",
    "netns_available",
]

BENCH_NET = ipaddress.IPv4Network("198.18.0.0/15")
_GUARD_METRIC = 4_000_000_000  # the unreachable guard route loses to the connected route while the link is up
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_INSTALL_HINT = "install OpenSSH: apt-get install -y openssh-server openssh-client"
_READY_TIMEOUT = 15.0
# OpenSSH client keepalives in ssh_options(): an established connection to a cut host fails after ~4 s
SERVER_ALIVE_INTERVAL = 1
SERVER_ALIVE_COUNT = 3


# --------------------------------------------------------------------------------------------- helpers


def _which(name: str, *fallbacks: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    return None


def _ip_bin() -> str | None:
    return _which("ip", "/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")


def _run(argv: Sequence[str], what: str, *, timeout: float = 15.0, check: bool = True) -> str:
    try:
        cp = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise SimError(f"{what}: {argv[0]} not found", _INSTALL_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise SimError(f"{what}: `{shlex.join(argv)}` timed out after {timeout:g}s") from exc
    if check and cp.returncode != 0:
        detail = (cp.stderr or cp.stdout).strip() or f"exit status {cp.returncode}"
        raise SimError(f"{what}: `{shlex.join(argv)}` failed: {detail}")
    return cp.stdout


def _quiet(argv: Sequence[str]) -> bool:
    """Run a best-effort cleanup command; True when it succeeded."""
    try:
        return (
            subprocess.run(
                list(argv), capture_output=True, timeout=10, stdin=subprocess.DEVNULL, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


def _proc_start(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot) or None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(pid: int) -> bool:
    return _proc_start(pid) is not None


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _descendants(roots: Sequence[int]) -> set[int]:
    children = _children_map()
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _netns_pids(ip: str, ns: str) -> set[int]:
    try:
        out = subprocess.run(
            [ip, "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return set()
    return {int(x) for x in out.split() if x.isdigit()}


def _ssh_session_pids(endpoints: set[tuple[str, int]]) -> set[int]:
    """Processes started through one of our sshds (SSH_CONNECTION names its address and port), including
    ones that daemonized and left the sshd's process tree."""
    found: set[int] = set()
    if not endpoints:
        return found
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            env = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(b"SSH_CONNECTION="):
                parts = var[15:].decode(errors="replace").split()
                if len(parts) == 4 and parts[3].isdigit() and (parts[2], int(parts[3])) in endpoints:
                    found.add(int(entry.name))
                break
    return found


def _live_in_groups(pgids: set[int]) -> set[int]:
    """Live (non-zombie) processes whose process group is one of pgids."""
    live: set[int] = set()
    if not pgids:
        return live
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) in pgids:
            live.add(int(entry.name))
    return live


def _terminate(
    group_leaders: Sequence[int], others: set[int], popens: Sequence[subprocess.Popen[Any]]
) -> None:
    """SIGTERM process groups and single pids, wait up to 2 s, SIGKILL what is left; reap our children."""
    own_group, me = os.getpgrp(), os.getpid()
    groups = set()
    for pid in group_leaders:
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid and pid != own_group:
                groups.add(pid)
    singles = (set(group_leaders) | others) - {me}

    def signal_all(sig: int) -> None:
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, sig)
        for pid in singles:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def reap() -> None:
        for p in popens:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                p.poll()

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    while True:
        reap()
        if not any(_alive(p) for p in singles) and not _live_in_groups(groups):
            break
        if time.monotonic() > deadline:
            signal_all(signal.SIGKILL)
            break
        time.sleep(0.02)
    for p in popens:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            p.wait(timeout=2)
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# ---------------------------------------------------------------------------------------- registry


def _registry_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/fleetctl-sshhosts")
    return Path(tempfile.gettempdir()) / f"fleetctl-sshhosts-{os.geteuid()}"


@contextlib.contextmanager
def _registry_lock() -> Any:
    d = _registry_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(d / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield d
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _cleanup_record(rec: dict[str, Any]) -> None:
    ip = _ip_bin()
    pids: set[int] = set()
    for item in rec.get("pids", []):
        pid, start = int(item["pid"]), item.get("start")
        if start is not None and _proc_start(pid) == start:
            pids.add(pid)
    if ip:
        for ns in rec.get("namespaces", []):
            pids |= _netns_pids(ip, ns)
    pids |= _descendants(sorted(pids))
    _terminate([], pids, [])
    if ip:
        for veth in rec.get("veths", []):
            _quiet([ip, "link", "del", veth])
        for ns in rec.get("namespaces", []):
            _quiet([ip, "netns", "del", ns])
            _remove_etc_netns(ns)
        for prefix in rec.get("guard_routes", []):
            _quiet([ip, "route", "del", "unreachable", prefix, "metric", str(_GUARD_METRIC)])


_ETC_NETNS = Path("/etc/netns")


def _remove_etc_netns(ns: str) -> None:
    if ns.startswith("fc-") and "/" not in ns:
        shutil.rmtree(_ETC_NETNS / ns, ignore_errors=True)
        with contextlib.suppress(OSError):
            _ETC_NETNS.rmdir()  # only when empty


def _write_etc_netns(hosts: SshHosts) -> None:
    """Per-namespace /etc/hosts and /etc/resolv.conf (`ip netns exec` bind-mounts /etc/netns/NS/*).

    A namespace cannot reach the machine's DNS server, so every lookup (Python's socket.getfqdn(), Ansible's
    fact gathering, ...) would hang for the resolver's full timeout: point DNS at the namespace's own
    loopback, where nothing listens (refused at once), and resolve the test hosts from /etc/hosts."""
    machine = socket.gethostname()
    for h in hosts.hosts:
        assert h.namespace is not None
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        for o in hosts.hosts:
            lines.append(f"{o.address} {o.name}" + (f" {machine}" if o is h and machine != o.name else ""))
        d = _ETC_NETNS / h.namespace
        try:
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text("\n".join(lines) + "\n")
            (d / "resolv.conf").write_text(
                "# fleetctl SSH test host: no DNS here (refused at once)\n"
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
            )
        except OSError as exc:
            raise SimError(f"cannot write {d}: {exc}") from exc


def cleanup_stale() -> list[str]:
    """Remove what earlier runs whose owning process is gone left behind. Returns their run ids."""
    cleaned: list[str] = []
    d = _registry_dir()
    if not d.is_dir():
        return cleaned
    with _registry_lock():
        for path in sorted(d.glob("*.json")):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            owner, start = int(rec.get("owner_pid", 0)), rec.get("owner_start")
            if owner and _proc_start(owner) == start:
                continue
            _cleanup_record(rec)
            path.unlink(missing_ok=True)
            cleaned.append(str(rec.get("run_id", path.stem)))
    return cleaned


# ------------------------------------------------------------------------------------ availability


def netns_available() -> tuple[bool, str]:
    """Can network namespaces and veth pairs be made here? (ok, reason) -- the reason says why not."""
    if not os.path.isdir("/proc/self/ns") or not os.path.exists("/proc/self/ns/net"):
        return False, "no network namespace support (/proc/self/ns/net missing: not Linux?)"
    ip = _ip_bin()
    if ip is None:
        return False, "the `ip` command (iproute2) is not installed"
    probe = f"fcp{secrets.token_hex(3)}"
    try:
        cp = subprocess.run([ip, "netns", "add", probe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"`ip netns add` could not run: {exc}"
    if cp.returncode != 0:
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}, not root"
        return False, f"`ip netns add` failed ({who}): {cp.stderr.strip() or cp.returncode}"
    try:
        cp = subprocess.run(
            [ip, "link", "add", probe + "h", "type", "veth", "peer", "name", probe + "n", "netns", probe],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if cp.returncode != 0:
            return False, f"cannot create a veth pair: {cp.stderr.strip() or cp.returncode}"
        return True, "ip netns and veth pairs work here"
    finally:
        _quiet([ip, "link", "del", probe + "h"])
        _quiet([ip, "netns", "del", probe])


# ------------------------------------------------------------------------------------------- model


@dataclass
class SshHost:
    name: str
    address: str
    port: int
    namespace: str | None
    host_key_pub: str  # "ssh-ed25519 AAAA..." (no comment)
    host_key_fingerprint: str  # "SHA256:..." as `ssh-keygen -lf` prints it
    sshd_pid: int
    veth_host: str | None  # root-namespace end of the veth pair: the link cut_link() takes down
    veth_ns: str | None = None
    gateway: str | None = None  # root-namespace address as seen from the host (its default route)
    dir: Path = field(default_factory=Path)  # per-host files: sshd_config, host key, sshd.log
    log_path: Path = field(default_factory=Path)

    @property
    def known_hosts_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        return f"{self.known_hosts_name} {self.host_key_pub}"


class SshHosts:
    """Running SSH test hosts. A context manager; close() is idempotent and also runs at interpreter exit."""

    def __init__(self, workdir: Path, run_id: str, mode: str, fallback_reason: str | None, user: str) -> None:
        self.workdir = workdir
        self.run_id = run_id
        self.mode = mode
        self.fallback_reason = fallback_reason
        self.user = user
        self.hosts: list[SshHost] = []
        self.client_key = workdir / "id_ed25519"
        self.known_hosts = workdir / "known_hosts"
        self.ssh_config = workdir / "ssh_config"
        self.home = workdir / "home"
        self._ip = _ip_bin() or "ip"
        self._sshd_procs: dict[str, subprocess.Popen[bytes]] = {}
        self._procs: list[tuple[str, subprocess.Popen[Any]]] = []
        self._namespaces: list[str] = []
        self._veths: list[str] = []
        self._guards: list[str] = []
        self._closed = False
        self._lock = threading.RLock()
        self._registry = _registry_dir() / f"{run_id}.json"
        self._owner = os.getpid()
        atexit.register(self.close)

    # -- lookups and client arguments ------------------------------------------------------------

    def __enter__(self) -> SshHosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SshHosts {self.run_id} mode={self.mode} hosts={[h.name for h in self.hosts]}>"

    def host(self, name: str) -> SshHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise SimError(f"no SSH test host named {name!r}", f"known: {', '.join(h.name for h in self.hosts)}")

    def _host(self, host: SshHost | str) -> SshHost:
        return self.host(host) if isinstance(host, str) else host

    def ssh_options(self, *, known_hosts: Path | None = None) -> list[str]:
        """OpenSSH options that pin our key and known_hosts and refuse unknown or changed host keys."""
        return [
            "-i",
            str(self.client_key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts or self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "BatchMode=yes",
            # a cut link must surface within seconds, also on an established (multiplexed) connection
            "-o",
            f"ServerAliveInterval={SERVER_ALIVE_INTERVAL}",
            "-o",
            f"ServerAliveCountMax={SERVER_ALIVE_COUNT}",
        ]

    def ssh_common_args(self) -> str:
        """The same as one string, for Ansible's `ansible_ssh_common_args` (no -i: use the key variable)."""
        return shlex.join(self.ssh_options()[2:])

    def ssh_argv(
        self,
        host: SshHost | str,
        *command: str,
        options: Sequence[str] = (),
        known_hosts: Path | None = None,
    ) -> list[str]:
        """`ssh -F <ssh_config> <options> -p PORT user@address command` (ignores ~/.ssh/config).

        `options` come first, so they win over ours (OpenSSH keeps the first value of an option)."""
        h = self._host(host)
        return [
            _which("ssh", "/usr/bin/ssh") or "ssh",
            "-F",
            str(self.ssh_config),
            *options,
            *self.ssh_options(known_hosts=known_hosts),
            "-p",
            str(h.port),
            f"{self.user}@{h.address}",
            *command,
        ]

    def ansible_vars(self, host: SshHost | str) -> dict[str, Any]:
        """Inventory variables for this host (for ansible_connection=paramiko also run with HOME=home)."""
        h = self._host(host)
        return {
            "ansible_host": h.address,
            "ansible_port": h.port,
            "ansible_user": self.user,
            "ansible_ssh_private_key_file": str(self.client_key),
            "ansible_ssh_common_args": self.ssh_common_args(),
            "ansible_host_key_checking": True,
        }

    # -- processes in a host -----------------------------------------------------------------------

    def wrap_argv(self, host: SshHost | str, argv: Sequence[str]) -> list[str]:
        """argv that runs inside the host's namespace (unchanged in loopback mode)."""
        h = self._host(host)
        if h.namespace is None:
            return list(argv)
        return [self._ip, "netns", "exec", h.namespace, *argv]

    def popen_on(self, host: SshHost | str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the host's namespace (plainly in loopback mode), in its own process group.

        close() kills it (its whole process group and descendants)."""
        h = self._host(host)
        if self._closed:
            raise SimError("the SSH test hosts are closed")
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.wrap_argv(h, argv), **kw)
        with self._lock:
            self._procs.append((h.name, proc))
            self._save_registry()
        return proc

    # -- links -----------------------------------------------------------------------------------

    def _require_link(self, h: SshHost, verb: str) -> str:
        if h.veth_host is None:
            raise SimError(
                f"cannot {verb} the link of {h.name}: the SSH test hosts run in {self.mode} mode "
                f"({self.fallback_reason or 'no namespaces'})",
                "links can only be cut in netns mode (run as root with iproute2)",
            )
        return h.veth_host

    def cut_link(self, host: SshHost | str) -> None:
        """Take the host's veth link down (root end): new connections fail with "No route to host",
        established ones stall (no RST) until the client's own timeouts fire."""
        h = self._host(host)
        _run([self._ip, "link", "set", self._require_link(h, "cut"), "down"], f"cut link of {h.name}")

    def restore_link(self, host: SshHost | str) -> None:
        """Bring the link back up and restore the host's address route."""
        h = self._host(host)
        veth = self._require_link(h, "restore")
        _run([self._ip, "link", "set", veth, "up"], f"restore link of {h.name}")
        # link down drops the connected route; link up brings it back, but wait until it is usable
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            out = _run([self._ip, "-4", "route", "get", h.address], "route lookup", check=False)
            if f"dev {veth}" in out:
                return
            time.sleep(0.02)
        raise SimError(f"link of {h.name} is up but {h.address} is not routed through {veth}")

    # -- host keys -------------------------------------------------------------------------------

    def rotate_host_key(self, host: SshHost | str) -> str:
        """Give the host a new host key and restart its sshd, ending its open SSH sessions (processes
        started with popen_on keep running); known_hosts is NOT updated, so clients that check host keys
        must refuse it. Returns the new public key line."""
        h = self._host(host)
        with self._lock:
            key = h.dir / "ssh_host_ed25519_key"
            tmp = h.dir / "ssh_host_ed25519_key.new"
            for p in (tmp, tmp.with_name(tmp.name + ".pub")):
                p.unlink(missing_ok=True)
            _keygen(tmp, f"fleetctl-sim-{h.name}-rotated")
            os.replace(tmp.with_name(tmp.name + ".pub"), key.with_name(key.name + ".pub"))
            os.replace(tmp, key)
            h.host_key_pub, h.host_key_fingerprint = _read_pub(key)
            old = self._sshd_procs.get(h.name)
            if old is not None:
                # end the open sessions too, as a reinstalled host would: otherwise a multiplexed
                # connection (Ansible's ControlPersist master) keeps using the old key
                sessions = _descendants([old.pid]) | _ssh_session_pids({(h.address, h.port)})
                _terminate([old.pid], sessions, [old])
            self._start_sshd(h)
            self._save_registry()
        probe_kh = h.dir / "known_hosts.current"
        probe_kh.write_text(h.known_hosts_line + "\n")
        self._wait_ready([h], known_hosts=probe_kh)
        return h.host_key_pub

    def trust_host_key(self, host: SshHost | str) -> None:
        """Write the host's current key into known_hosts (e.g. after rotate_host_key)."""
        self._host(host)
        self._write_known_hosts()

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every sshd and popen_on process (groups and descendants), delete namespaces and veths.
        Idempotent; tolerates a partial setup."""
        with self._lock:
            if self._closed or os.getpid() != self._owner:  # a forked child never tears down our hosts
                return
            self._closed = True
            with contextlib.suppress(Exception):
                atexit.unregister(self.close)
            popens: list[subprocess.Popen[Any]] = [p for _, p in self._procs] + list(
                self._sshd_procs.values()
            )
            leaders = [p.pid for p in popens if p.poll() is None]
            others = _descendants(leaders) | _ssh_session_pids({(h.address, h.port) for h in self.hosts})
            for ns in self._namespaces:
                others |= _netns_pids(self._ip, ns)
            _terminate(leaders, others, popens)
            for ns in self._namespaces:  # anything that slipped in meanwhile
                rest = _netns_pids(self._ip, ns)
                if rest:
                    _terminate([], rest, [])
            for veth in self._veths:
                _quiet([self._ip, "link", "del", veth])
            for ns in self._namespaces:
                _quiet([self._ip, "netns", "del", ns])
                _remove_etc_netns(ns)
            for prefix in self._guards:
                _quiet([self._ip, "route", "del", "unreachable", prefix, "metric", str(_GUARD_METRIC)])
            self._registry.unlink(missing_ok=True)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- internals -------------------------------------------------------------------------------

    def _save_registry(self) -> None:
        pids = []
        for p in [p for _, p in self._procs] + list(self._sshd_procs.values()):
            start = _proc_start(p.pid)
            if start is not None:
                pids.append({"pid": p.pid, "start": start})
        rec = {
            "run_id": self.run_id,
            "owner_pid": os.getpid(),
            "owner_start": _proc_start(os.getpid()),
            "workdir": str(self.workdir),
            "namespaces": self._namespaces,
            "veths": self._veths,
            "guard_routes": self._guards,
            "pids": pids,
        }
        with contextlib.suppress(OSError):
            self._registry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = self._registry.with_suffix(".tmp")
            tmp.write_text(json.dumps(rec))
            os.replace(tmp, self._registry)

    def _write_known_hosts(self) -> None:
        text = "".join(h.known_hosts_line + "\n" for h in self.hosts)
        for path in (self.known_hosts, self.home / ".ssh" / "known_hosts"):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def _write_ssh_config(self) -> None:
        lines = [f"# fleetctl SSH test hosts {self.run_id} ({self.mode}); use: ssh -F {self.ssh_config} NAME"]
        for h in self.hosts:
            lines += [
                f"Host {h.name} {h.address}",
                f"  HostName {h.address}",
                f"  Port {h.port}",
                f"  User {self.user}",
            ]
        lines += [
            "Host *",
            f"  IdentityFile {self.client_key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.known_hosts}",
            "  GlobalKnownHostsFile /dev/null",
            "  StrictHostKeyChecking yes",
            "  UpdateHostKeys no",
            "  BatchMode yes",
            "  ConnectTimeout 5",
            f"  ServerAliveInterval {SERVER_ALIVE_INTERVAL}",
            f"  ServerAliveCountMax {SERVER_ALIVE_COUNT}",
            "",
        ]
        self.ssh_config.write_text("\n".join(lines))

    def _start_sshd(self, h: SshHost) -> None:
        sshd = _which("sshd", "/usr/sbin/sshd") or "/usr/sbin/sshd"
        argv = [sshd, "-D", "-e", "-f", str(h.dir / "sshd_config")]
        with open(h.log_path, "ab") as log:
            proc = subprocess.Popen(
                self.wrap_argv(h, argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._sshd_procs[h.name] = proc
        h.sshd_pid = proc.pid

    def _wait_ready(self, hosts: Sequence[SshHost], *, known_hosts: Path | None = None) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        for h in hosts:
            proc = self._sshd_procs[h.name]
            # 1. TCP from the root namespace
            while True:
                if proc.poll() is not None:
                    raise SimError(
                        f"sshd for {h.name} exited with status {proc.returncode}:\n{_tail(h.log_path)}",
                        f"config: {h.dir / 'sshd_config'}",
                    )
                try:
                    with socket.create_connection((h.address, h.port), timeout=0.5):
                        break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise SimError(
                            f"sshd for {h.name} does not accept connections on {h.address}:{h.port} "
                            f"after {_READY_TIMEOUT:g}s ({exc}):\n{_tail(h.log_path)}",
                            f"config: {h.dir / 'sshd_config'}",
                        ) from exc
                    time.sleep(0.02)
        # 2. a real login on every host, in parallel; retried until the deadline
        pending = list(hosts)
        while pending:
            runs = []
            for h in pending:
                argv = self.ssh_argv(h, "true", options=["-o", "ConnectTimeout=3"], known_hosts=known_hosts)
                runs.append((h, argv, subprocess.Popen(argv, **_SSH_POPEN)))
            failed = []
            for h, argv, p in runs:
                try:
                    _, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    _, err = p.communicate()
                    err = "timed out; " + err
                if p.returncode != 0:
                    failed.append((h, argv, err.strip()))
            for h, argv, err in failed:
                final = "Permission denied" in err or "Host key verification failed" in err
                if final or time.monotonic() > deadline or self._sshd_procs[h.name].poll() is not None:
                    raise SimError(
                        f"`ssh ... true` against {h.name} ({h.address}:{h.port}) failed: {err}\n"
                        f"sshd log:\n{_tail(h.log_path)}",
                        f"try: {shlex.join(argv)}",
                    )
            pending = [h for h, _, _ in failed]
            if pending:
                time.sleep(0.05)


_SSH_POPEN: dict[str, Any] = {
    "stdin": subprocess.DEVNULL,
    "stdout": subprocess.DEVNULL,
    "stderr": subprocess.PIPE,
    "text": True,
}


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(sshd log is empty)"
    except OSError:
        return f"(no sshd log at {path})"


def _keygen(path: Path, comment: str) -> None:
    keygen = _which("ssh-keygen", "/usr/bin/ssh-keygen")
    if keygen is None:
        raise SimError("ssh-keygen is not installed", _INSTALL_HINT)
    _run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], "ssh-keygen")


def _read_pub(key: Path) -> tuple[str, str]:
    pub = key.with_name(key.name + ".pub")
    kind, b64 = pub.read_text().split()[:2]
    keygen = _which("ssh-keygen", "/usr/bin/ssh-keygen") or "ssh-keygen"
    fp = _run([keygen, "-lf", str(pub)], "ssh-keygen -lf").split()[1]
    return f"{kind} {b64}", fp


def _sshd_config(h: SshHost, authorized_keys: Path) -> str:
    listen = h.address if h.port == 22 else f"{h.address}:{h.port}"
    return "\n".join(
        [
            "# fleetctl SSH test host " + h.name,
            f"ListenAddress {listen}",
            f"Port {h.port}",
            "AddressFamily inet",
            f"HostKey {h.dir / 'ssh_host_ed25519_key'}",
            f"PidFile {h.dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
            "LogLevel VERBOSE",
            # OpenSSH's default sntrup761 hybrid KEX costs ~150 ms a connection on small CI VMs (and paramiko
            # cannot use it anyway): test hosts offer the curve25519/ECDH ones only
            "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,"
            "diffie-hellman-group14-sha256",
            # Ansible transfers modules with sftp by default; internal-sftp needs no helper binary path
            "Subsystem sftp internal-sftp",
            # ansible forks open many sessions at once
            "MaxStartups 200:30:400",
            "MaxSessions 100",
            # bash sources ~/.bashrc for every `ssh host cmd` unless SHLVL says it is nested; root's .bashrc
            # on CI machines (pyenv init, ...) costs ~0.5 s per command and is not part of a test host
            "SetEnv SHLVL=1",
            "ClientAliveInterval 5",
            "ClientAliveCountMax 3",
            "",
        ]
    )


# ---------------------------------------------------------------------------------------- creation


def _allocate_blocks(ip: str, count: int) -> list[ipaddress.IPv4Network]:
    """Pick `count` free /30s in 198.18.0.0/15 (not overlapping any address or route already there)."""
    used: list[ipaddress.IPv4Network] = []
    text = _run([ip, "-o", "-4", "addr", "show"], "list addresses") + _run(
        [ip, "-4", "route", "show", "table", "all"], "list routes"
    )
    for m in re.finditer(r"(\d+\.\d+\.\d+\.\d+)(/\d+)?", text):
        with contextlib.suppress(ValueError):
            net = ipaddress.IPv4Network(m.group(1) + (m.group(2) or "/32"), strict=False)
            if net.overlaps(BENCH_NET):
                used.append(net)
    blocks: list[ipaddress.IPv4Network] = []
    nblocks = BENCH_NET.num_addresses // 4
    rng = random.SystemRandom()
    tries = 0
    while len(blocks) < count:
        tries += 1
        if tries > 100_000:
            raise SimError("no free /30 left in 198.18.0.0/15 for SSH test hosts", "run cleanup_stale()")
        idx = rng.randrange(1, nblocks - 1)
        cand = ipaddress.IPv4Network((int(BENCH_NET.network_address) + 4 * idx, 30))
        if any(cand.overlaps(u) for u in used) or cand in blocks:
            continue
        blocks.append(cand)
    return blocks


def _setup_netns(hosts: SshHosts, names: list[str]) -> None:
    ip = hosts._ip
    rid = hosts.run_id
    with _registry_lock():
        blocks = _allocate_blocks(ip, len(names))
        hosts._save_registry()
        for i, (name, block) in enumerate(zip(names, blocks, strict=True)):
            ns, vh, vn = f"fc-{rid}-{i}", f"fc{rid}h{i}", f"fc{rid}n{i}"
            gw, addr = str(block.network_address + 1), str(block.network_address + 2)
            hosts._namespaces.append(ns)
            hosts._save_registry()
            _run([ip, "netns", "add", ns], f"create namespace for {name}")
            hosts._veths.append(vh)
            hosts._save_registry()
            _run([ip, "link", "add", vh, "type", "veth", "peer", "name", vn, "netns", ns], f"veth for {name}")
            _run([ip, "addr", "add", f"{gw}/30", "dev", vh], f"address {gw} on {vh}")
            _run([ip, "link", "set", vh, "up"], f"link {vh} up")
            _run([ip, "-n", ns, "link", "set", "lo", "up"], f"loopback up in {ns}")
            _run([ip, "-n", ns, "addr", "add", f"{addr}/30", "dev", vn], f"address {addr} in {ns}")
            _run([ip, "-n", ns, "link", "set", vn, "up"], f"link {vn} up in {ns}")
            _run([ip, "-n", ns, "route", "add", "default", "via", gw], f"default route in {ns}")
            hosts._guards.append(str(block))
            hosts._save_registry()
            _run(
                [ip, "route", "add", "unreachable", str(block), "metric", str(_GUARD_METRIC)],
                f"guard route for {block}",
            )
            hosts.hosts.append(
                SshHost(
                    name=name,
                    address=addr,
                    port=22,
                    namespace=ns,
                    host_key_pub="",
                    host_key_fingerprint="",
                    sshd_pid=0,
                    veth_host=vh,
                    veth_ns=vn,
                    gateway=gw,
                )
            )
    _write_etc_netns(hosts)


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
        return True


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _setup_loopback(hosts: SshHosts, names: list[str]) -> None:
    third = random.SystemRandom().randrange(0, 256)
    for i, name in enumerate(names):
        addr = f"127.78.{third}.{i + 1}"
        port = 22 if _port_free(addr, 22) else _free_port(addr)
        hosts.hosts.append(
            SshHost(
                name=name,
                address=addr,
                port=port,
                namespace=None,
                host_key_pub="",
                host_key_fingerprint="",
                sshd_pid=0,
                veth_host=None,
            )
        )


def create_ssh_hosts(workdir: Path, names: list[str], *, netns: bool | None = None) -> SshHosts:
    """Start one real sshd test host per name. netns: True = namespaces or fail, False = loopback,
    None = namespaces when possible, else loopback (``fallback_reason`` says why)."""
    workdir = Path(workdir).resolve()
    names = list(names)
    if not names:
        raise SimError("no SSH test host names given")
    bad = [n for n in names if not _NAME_RE.match(n)]
    if bad:
        raise SimError(f"invalid SSH test host names: {bad}", "use letters, digits, '.', '_' and '-'")
    if len(set(names)) != len(names):
        raise SimError(f"duplicate SSH test host names: {names}")
    sshd = _which("sshd", "/usr/sbin/sshd")
    if (
        sshd is None
        or _which("ssh", "/usr/bin/ssh") is None
        or _which("ssh-keygen", "/usr/bin/ssh-keygen") is None
    ):
        raise SimError("OpenSSH (sshd, ssh, ssh-keygen) is not installed", _INSTALL_HINT)

    with contextlib.suppress(Exception):
        cleanup_stale()

    mode, reason = "loopback", None
    if netns is False:
        reason = "netns=False was asked for"
    else:
        ok, why = netns_available()
        if ok:
            mode = "netns"
        elif netns:
            raise SimError(f"network namespaces are not available: {why}", "run as root, or pass netns=None")
        else:
            reason = why

    workdir.mkdir(parents=True, exist_ok=True)
    user = pwd.getpwuid(os.geteuid()).pw_name
    hosts = SshHosts(workdir, secrets.token_hex(3), mode, reason, user)
    try:
        if mode == "netns":
            try:
                _setup_netns(hosts, names)
            except SimError as exc:
                if netns:
                    raise
                hosts.close()  # undo the partial network, then fall back
                hosts = SshHosts(
                    workdir, secrets.token_hex(3), "loopback", f"netns setup failed: {exc}", user
                )
        if hosts.mode == "loopback":
            _setup_loopback(hosts, names)
        _start_all(hosts)
    except BaseException:
        hosts.close()
        raise
    return hosts


def _start_all(hosts: SshHosts) -> None:
    wd = hosts.workdir
    if os.geteuid() == 0:
        # sshd running as root needs its privilege separation directory
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    for p in (hosts.client_key, hosts.client_key.with_name("id_ed25519.pub")):
        p.unlink(missing_ok=True)
    _keygen(hosts.client_key, f"fleetctl-sim-client-{hosts.run_id}")
    authorized = wd / "authorized_keys"
    authorized.write_text(hosts.client_key.with_name("id_ed25519.pub").read_text())
    os.chmod(authorized, 0o600)
    for h in hosts.hosts:
        h.dir = wd / h.name
        h.dir.mkdir(parents=True, exist_ok=True)
        h.log_path = h.dir / "sshd.log"
        key = h.dir / "ssh_host_ed25519_key"
        for p in (key, key.with_name(key.name + ".pub")):
            p.unlink(missing_ok=True)
        _keygen(key, f"fleetctl-sim-{h.name}")
        h.host_key_pub, h.host_key_fingerprint = _read_pub(key)
        (h.dir / "sshd_config").write_text(_sshd_config(h, authorized))
    hosts._write_known_hosts()
    hosts._write_ssh_config()
    with hosts._lock:
        for h in hosts.hosts:
            hosts._start_sshd(h)
        hosts._save_registry()
    hosts._wait_ready(hosts.hosts)
