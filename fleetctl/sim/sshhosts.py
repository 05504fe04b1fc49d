"""Real SSH test hosts: one OpenSSH ``sshd`` per simulated host, each in its own network namespace.

Used by the tests and the simulated fleet so that Ansible (``ssh`` and ``paramiko`` connections) and
fleetctl's own paramiko client talk to real sshd processes, with real host keys and known_hosts, and so a
test can cut one host's network link in the middle of a run.

Modes
-----
``netns`` (preferred, needs root or CAP_NET_ADMIN + CAP_SYS_ADMIN):
    per host a network namespace ``fc-<run id>-<i>`` and a veth pair ``fc<run id>h<i>`` (root namespace end,
    the one :meth:`SshHosts.cut_link` takes down) / ``fc<run id>n<i>`` (inside the namespace), addresses
    from 198.18.0.0/15: ``.1`` of a /30 is :attr:`SshHost.gateway`, ``.2`` the host (:attr:`SshHost.address`);
    see :mod:`fleetctl.sim.netns`. sshd listens on ``address:22`` inside the namespace.
``loopback`` (fallback):
    sshd in the root namespace on distinct loopback addresses ``127.78.<random>.<i+1>``, port 22 when it can
    be bound, else a free high port (known_hosts then uses ``[address]:port``). No link can be cut in this
    mode: :meth:`SshHosts.cut_link` raises :class:`~fleetctl.errors.SimError` (iptables is not assumed to
    be installed; a DROP rule would also not emulate a missing route). ``fallback_reason`` says why.

Everything lives under ``workdir``: the client key ``id_ed25519``, ``authorized_keys``, ``known_hosts``,
``ssh_config``, ``home/.ssh/known_hosts`` (for tools that only read ``~/.ssh/known_hosts``, e.g. Ansible's
paramiko connection: run them with ``HOME=<hosts.home>``), ``hosts.json`` (the state :meth:`SshHosts.load`
reads) and per host ``<name>/``: sshd_config, host key, ``sshd.log``, ``sshd.pid``.

Lifetime: hosts belong to the process that made them and are closed at its exit, unless
:meth:`SshHosts.detach` hands them to another process (the simulated fleet hands them to its server, so they
outlive ``fleetctl sim up``); any process can then :meth:`SshHosts.load` them and :meth:`~SshHosts.close`
them. A registry (:mod:`fleetctl.sim.registry`) records what every run created, so hosts whose owner died
(SIGKILL) are cleaned up by the next :func:`create_ssh_hosts` (or :func:`cleanup_stale`).

Notes for callers:

- Only the network is per host: the filesystem, users, PIDs and the hostname are the machine's, so give
  every host its own directories (and do not expect ``hostname`` to differ).
- Inside a namespace only the gateway address of the root namespace is reachable (no forwarding): services
  a host must reach (an artifact server) listen on ``0.0.0.0`` or the host's ``gateway``, or inside the
  host's namespace (:func:`fleetctl.sim.netns.entered`). DNS inside a namespace is refused at once
  (``/etc/netns/<ns>/resolv.conf``); the test hosts resolve each other by name through
  ``/etc/netns/<ns>/hosts``.
- A cut link makes new connections fail at once ("No route to host"); an established connection gets no
  RST and stalls until the client's own timeouts: :meth:`SshHosts.ssh_options` sets OpenSSH keepalives
  (~4 s), paramiko callers must pass timeouts (``exec_command(timeout=...)``, ``channel.settimeout``).
- Ansible's ``ssh`` connection multiplexes (ControlPersist): use :meth:`SshHosts.ansible_vars` (keepalives
  included) and a per-run ``ANSIBLE_SSH_CONTROL_PATH_DIR``.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetctl.errors import SimError
from fleetctl.sim import netns as net
from fleetctl.sim import procs, registry, sshd
from fleetctl.sim.netns import netns_available
from fleetctl.sim.registry import cleanup_stale

__all__ = [
    "SshHost",
    "SshHosts",
    "cleanup_stale",
    "create_ssh_hosts",
    "netns_available",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
STATE_FILE = "hosts.json"
# OpenSSH client keepalives in ssh_options(): an established connection to a cut host fails after ~4 s
SERVER_ALIVE_INTERVAL = 1
SERVER_ALIVE_COUNT = 3


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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "address": self.address,
            "port": self.port,
            "namespace": self.namespace,
            "host_key_pub": self.host_key_pub,
            "host_key_fingerprint": self.host_key_fingerprint,
            "sshd_pid": self.sshd_pid,
            "veth_host": self.veth_host,
            "veth_ns": self.veth_ns,
            "gateway": self.gateway,
            "dir": str(self.dir),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SshHost:
        host_dir = Path(d["dir"])
        return cls(
            name=d["name"],
            address=d["address"],
            port=int(d["port"]),
            namespace=d.get("namespace"),
            host_key_pub=d["host_key_pub"],
            host_key_fingerprint=d["host_key_fingerprint"],
            sshd_pid=int(d["sshd_pid"]),
            veth_host=d.get("veth_host"),
            veth_ns=d.get("veth_ns"),
            gateway=d.get("gateway"),
            dir=host_dir,
            log_path=host_dir / "sshd.log",
        )


class SshHosts:
    """Running SSH test hosts. A context manager; close() is idempotent and, unless the hosts were detached
    or loaded, also runs at interpreter exit."""

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
        self._ip = net.ip_bin() or "ip"
        self._sshd_procs: dict[str, subprocess.Popen[bytes]] = {}  # sshds this process started
        self._sshd_starts: dict[str, int | None] = {}  # start time of each host's sshd (pid in SshHost)
        self._procs: list[tuple[str, subprocess.Popen[Any]]] = []
        self._adopted: list[dict[str, Any]] = []  # popen_on processes of another process (after load)
        self._namespaces: list[str] = []
        self._veths: list[str] = []
        self._guards: list[str] = []
        self._closed = False
        self._detached = False
        self._lock = threading.RLock()
        self._registry = registry.registry_dir() / f"{run_id}.json"
        self._state = workdir / STATE_FILE
        self._creator = os.getpid()  # a forked child never tears down our hosts at its exit
        self._owner_pid, self._owner_start = os.getpid(), procs.proc_start(os.getpid())
        atexit.register(self._close_at_exit)

    # -- persistence -----------------------------------------------------------------------------

    @classmethod
    def load(cls, workdir: Path) -> SshHosts:
        """A handle on hosts another process made (and detached) in `workdir`, from its hosts.json.

        The handle is detached (nothing is closed at this interpreter's exit); close() tears them down."""
        workdir = Path(workdir).resolve()
        try:
            rec = json.loads((workdir / STATE_FILE).read_text())
        except FileNotFoundError:
            raise SimError(f"no running SSH test hosts recorded in {workdir}") from None
        except (OSError, ValueError) as exc:
            raise SimError(f"cannot read {workdir / STATE_FILE}: {exc}") from exc
        self = cls(workdir, rec["run_id"], rec["mode"], rec.get("fallback_reason"), rec["user"])
        atexit.unregister(self._close_at_exit)
        self._detached = True
        self.hosts = [SshHost.from_json(h) for h in rec["hosts"]]
        self._sshd_starts = {h["name"]: h.get("sshd_start") for h in rec["hosts"]}
        self._adopted = list(rec.get("procs", []))
        self._namespaces = list(rec.get("namespaces", []))
        self._veths = list(rec.get("veths", []))
        self._guards = list(rec.get("guard_routes", []))
        self._owner_pid, self._owner_start = int(rec.get("owner_pid", 0)), rec.get("owner_start")
        return self

    def detach(self, owner_pid: int) -> None:
        """Hand the hosts over to process `owner_pid` (e.g. a server that uses them): they are no longer
        closed when this interpreter exits, cleanup_stale() removes them only once `owner_pid` is gone, and
        close() -- here, or in any process through SshHosts.load(workdir) -- tears them down."""
        start = procs.proc_start(owner_pid)
        if start is None:
            raise SimError(f"cannot hand the SSH test hosts to pid {owner_pid}: no such process")
        with self._lock:
            self._owner_pid, self._owner_start = owner_pid, start
            self._detached = True
            atexit.unregister(self._close_at_exit)
            self._save_registry()

    @property
    def detached(self) -> bool:
        return self._detached

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
            sshd.ssh_bin() or "ssh",
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
        net.set_link(self._ip, self._require_link(h, "cut"), False, h.name)

    def restore_link(self, host: SshHost | str) -> None:
        """Bring the link back up and wait until the host's address is routed through it again."""
        h = self._host(host)
        veth = self._require_link(h, "restore")
        net.set_link(self._ip, veth, True, h.name)
        net.wait_routed(self._ip, h.address, veth, h.name)

    # -- host keys -------------------------------------------------------------------------------

    def rotate_host_key(self, host: SshHost | str) -> str:
        """Give the host a new host key and restart its sshd, ending its open SSH sessions (processes
        started with popen_on keep running); known_hosts is NOT updated, so clients that check host keys
        must refuse it. Returns the new public key line."""
        h = self._host(host)
        with self._lock:
            key = h.dir / "ssh_host_ed25519_key"
            tmp = h.dir / "ssh_host_ed25519_key.new"
            sshd.keygen(tmp, f"fleetctl-sim-{h.name}-rotated")
            os.replace(tmp.with_name(tmp.name + ".pub"), key.with_name(key.name + ".pub"))
            os.replace(tmp, key)
            h.host_key_pub, h.host_key_fingerprint = sshd.read_pub(key)
            # end the open sessions too, as a reinstalled host would: otherwise a multiplexed
            # connection (Ansible's ControlPersist master) keeps using the old key
            old = self._sshd_procs.get(h.name)
            if old is not None or procs.same_process(h.sshd_pid, self._sshd_starts.get(h.name)):
                sessions = procs.descendants([h.sshd_pid]) | procs.ssh_session_pids({(h.address, h.port)})
                procs.terminate([h.sshd_pid], sessions, [old] if old is not None else [])
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

    def _close_at_exit(self) -> None:
        if not self._detached and os.getpid() == self._creator:
            self.close()

    def close(self) -> None:
        """Kill every sshd and popen_on process (groups and descendants), delete namespaces and veths.
        Idempotent; tolerates a partial setup; works on hosts made by another process (after load())."""
        with self._lock:
            if self._closed or os.getpid() != self._creator:  # a forked child never tears down our hosts
                return
            self._closed = True
            with contextlib.suppress(Exception):
                atexit.unregister(self._close_at_exit)
            popens: list[subprocess.Popen[Any]] = [p for _, p in self._procs] + list(
                self._sshd_procs.values()
            )
            leaders = [p.pid for p in popens if p.poll() is None]
            for h in self.hosts:  # sshds started by another process
                if h.name not in self._sshd_procs and procs.same_process(
                    h.sshd_pid, self._sshd_starts.get(h.name)
                ):
                    leaders.append(h.sshd_pid)
            leaders += [p["pid"] for p in self._adopted if procs.same_process(p["pid"], p.get("start"))]
            endpoints = {(h.address, h.port) for h in self.hosts}
            others = procs.descendants(leaders) | procs.ssh_session_pids(endpoints)
            for ns in self._namespaces:
                others |= net.netns_pids(self._ip, ns)
            procs.terminate(leaders, others, popens)
            for ns in self._namespaces:  # anything that slipped in meanwhile
                rest = net.netns_pids(self._ip, ns)
                if rest:
                    procs.terminate([], rest, [])
            net.remove_networks(self._ip, self._veths, self._namespaces, self._guards)
            self._registry.unlink(missing_ok=True)
            self._remove_state()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- internals -------------------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        for name, p in self._sshd_procs.items():
            self._sshd_starts[name] = procs.proc_start(p.pid)
        live = [
            {"host": name, "pid": p.pid, "start": procs.proc_start(p.pid)} for name, p in self._procs
        ] + self._adopted
        live = [p for p in live if p["start"] is not None]
        sshds = [
            {"pid": h.sshd_pid, "start": self._sshd_starts.get(h.name)}
            for h in self.hosts
            if h.sshd_pid and self._sshd_starts.get(h.name) is not None
        ]
        return {
            "run_id": self.run_id,
            "mode": self.mode,
            "fallback_reason": self.fallback_reason,
            "user": self.user,
            "owner_pid": self._owner_pid,
            "owner_start": self._owner_start,
            "workdir": str(self.workdir),
            "state_file": str(self._state),
            "namespaces": self._namespaces,
            "veths": self._veths,
            "guard_routes": self._guards,
            "pids": sshds + [{"pid": p["pid"], "start": p["start"]} for p in live],
            "procs": live,
            "hosts": [{**h.to_json(), "sshd_start": self._sshd_starts.get(h.name)} for h in self.hosts],
        }

    def _save_registry(self) -> None:
        """Write the registry record and the workdir's hosts.json (the same document)."""
        rec = self._record()
        registry.write_json(self._registry, rec)
        if self.workdir.is_dir():
            registry.write_json(self._state, rec)

    def _remove_state(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self._state.read_text()).get("run_id") == self.run_id:
                self._state.unlink()

    def _write_known_hosts(self) -> None:
        text = "".join(h.known_hosts_line + "\n" for h in self.hosts)
        for path in (self.known_hosts, self.home / ".ssh" / "known_hosts"):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)

    def _write_ssh_config(self) -> None:
        sshd.write_ssh_config(
            self.ssh_config,
            f"fleetctl SSH test hosts {self.run_id} ({self.mode})",
            [(h.name, h.address, h.port) for h in self.hosts],
            user=self.user,
            client_key=self.client_key,
            known_hosts=self.known_hosts,
            alive=(SERVER_ALIVE_INTERVAL, SERVER_ALIVE_COUNT),
        )

    def _start_sshd(self, h: SshHost) -> None:
        argv = [sshd.sshd_bin() or "/usr/sbin/sshd", "-D", "-e", "-f", str(h.dir / "sshd_config")]
        proc = sshd.start(self.wrap_argv(h, argv), h.log_path)
        self._sshd_procs[h.name] = proc
        h.sshd_pid = proc.pid

    def _wait_ready(self, hosts: Sequence[SshHost], *, known_hosts: Path | None = None) -> None:
        sshd.wait_ready(
            [(h.name, h.address, h.port, h.log_path, h.dir, self._sshd_procs[h.name]) for h in hosts],
            lambda name: self.ssh_argv(
                name, "true", options=["-o", "ConnectTimeout=3"], known_hosts=known_hosts
            ),
        )


# ---------------------------------------------------------------------------------------- creation


def _setup_netns(hosts: SshHosts, names: list[str]) -> None:
    ip, rid = hosts._ip, hosts.run_id
    tracked = {"namespace": hosts._namespaces, "veth": hosts._veths, "guard": hosts._guards}

    def track(kind: str, name: str) -> None:
        tracked[kind].append(name)
        hosts._save_registry()

    with registry.registry_lock():
        blocks = net.allocate_blocks(ip, len(names))
        hosts._save_registry()
        for i, (name, block) in enumerate(zip(names, blocks, strict=True)):
            ns, vh, vn = f"fc-{rid}-{i}", f"fc{rid}h{i}", f"fc{rid}n{i}"
            gw, addr = net.add_host_network(ip, name, ns, vh, vn, block, track)
            hosts.hosts.append(SshHost(name, addr, 22, ns, "", "", 0, veth_host=vh, veth_ns=vn, gateway=gw))
    net.write_etc_netns([(h.namespace or "", h.name, h.address) for h in hosts.hosts])


def _setup_loopback(hosts: SshHosts, names: list[str]) -> None:
    for name, (addr, port) in zip(names, net.loopback_addresses(len(names)), strict=True):
        hosts.hosts.append(SshHost(name, addr, port, None, "", "", 0, veth_host=None))


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
    if sshd.sshd_bin() is None or sshd.ssh_bin() is None or sshd.keygen_bin() is None:
        raise SimError("OpenSSH (sshd, ssh, ssh-keygen) is not installed", procs.INSTALL_HINT)

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
    sshd.keygen(hosts.client_key, f"fleetctl-sim-client-{hosts.run_id}")
    authorized = wd / "authorized_keys"
    authorized.write_text(hosts.client_key.with_name("id_ed25519.pub").read_text())
    os.chmod(authorized, 0o600)
    for h in hosts.hosts:
        h.dir = wd / h.name
        h.dir.mkdir(parents=True, exist_ok=True)
        h.log_path = h.dir / "sshd.log"
        key = h.dir / "ssh_host_ed25519_key"
        sshd.keygen(key, f"fleetctl-sim-{h.name}")
        h.host_key_pub, h.host_key_fingerprint = sshd.read_pub(key)
        (h.dir / "sshd_config").write_text(sshd.sshd_config(h.name, h.address, h.port, h.dir, authorized))
    hosts._write_known_hosts()
    hosts._write_ssh_config()
    with hosts._lock:
        for h in hosts.hosts:
            hosts._start_sshd(h)
        hosts._save_registry()
    hosts._wait_ready(hosts.hosts)
