"""The simulated fleet: create it on disk, start and stop its server, ask what it runs.

A sim directory D holds sim.json (port, control socket, nodes), the release artifacts, one root per node
(releases/<version>/ and a relative `current` symlink), and an inventory.yml + fleet.yml that point
fleetctl at it. One background process (fleetctl.sim.server) serves every node's controller API on its
own loopback address; see that module for the protocol.

With `ssh=True` every node is also a real SSH host (fleetctl.sim.sshhosts, files in D/ssh): sshd in its
own network namespace, the node's address is the host's, its controller listens inside that namespace
(still one server process), and the inventory reaches the nodes over `ansible_connection: ssh` or
`paramiko` with host keys checked. The hosts are handed to the server process, so they outlive the
process that ran create(); stop() tears them down. Without namespaces they fall back to sshd on loopback
addresses (`ssh_mode` "loopback", `fallback_reason` says why). sshsim.py holds the ssh-specific parts.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetctl.errors import SimError
from fleetctl.sim import artifacts, server, sshsim
from fleetctl.sim.sshhosts import SshHosts
from fleetctl.sim.sshsim import CONNECTIONS, SSH_DIR
from fleetctl.sim.sshsim import MAX_SSH_NODES as MAX_SSH_NODES  # re-exported
from fleetctl.sim.sshsim import SSH_PORT as SSH_PORT  # re-exported

MAX_NODES = 5000
DEFAULT_NODES = 10
DEFAULT_HANG_AFTER = 20.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PROBE_TIMEOUT = 1.0
ZONES = ("a", "b", "c")
_SUN_PATH_MAX = 107  # AF_UNIX path limit on Linux (108 bytes with the NUL)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_children: dict[int, subprocess.Popen[bytes]] = {}  # servers this process started, to reap them


@dataclass(frozen=True)
class SimNode:
    name: str
    address: str
    root: Path
    zone: str
    netns: str | None = None  # the node's network namespace (ssh sims in netns mode)


@dataclass(frozen=True)
class SimInfo:
    dir: Path
    config: Path  # fleet.yml
    inventory: Path
    port: int
    nodes: list[SimNode]
    hang_after: float
    ssh_mode: str | None = None  # None: ansible_connection local; "netns" | "loopback": real SSH hosts
    fallback_reason: str | None = None  # why an ssh sim runs in loopback mode
    connection: str = "local"  # the inventory's ansible_connection: local, ssh or paramiko

    @property
    def ssh_dir(self) -> Path:
        return self.dir / SSH_DIR

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dir": str(self.dir),
            "config": str(self.config),
            "inventory": str(self.inventory),
            "nodes": len(self.nodes),
        }
        if self.ssh_mode:
            out.update(
                port=self.port,
                ssh_mode=self.ssh_mode,
                fallback_reason=self.fallback_reason,
                connection=self.connection,
            )
        return out


@dataclass(frozen=True)
class NodeStatus:
    name: str
    address: str
    zone: str
    version: str | None  # what `current` points at on disk
    healthy: bool  # GET /health answered 200 within the probe timeout


# -- what a sim looks like ---------------------------------------------------------------------------
def node_names(count: int) -> list[str]:
    width = max(3, len(str(count)))
    return [f"node-{i:0{width}d}" for i in range(1, count + 1)]


def node_address(i: int) -> str:
    """Node i (1-based) -> a distinct loopback address."""
    return f"127.77.{i // 250}.{i % 250 + 1}"


def rings(names: list[str]) -> dict[str, list[str]]:
    """canary (1 host), ring1 (~20%), ring2 (~30%), ring3 (the rest); empty groups are left out."""
    n = len(names)
    sizes = {"canary": 1, "ring1": max(1, _round(0.2 * n)), "ring2": max(1, _round(0.3 * n)), "ring3": n}
    groups: dict[str, list[str]] = {}
    start = 0
    for group, size in sizes.items():
        members = names[start : start + size]
        start += len(members)
        if members:
            groups[group] = members
    return groups


def fleet_config(hang_after: float) -> dict[str, Any]:
    """fleet.yml for a simulated fleet whose faulty build hangs `hang_after` seconds after start.

    The canary bakes 10 s longer than the faulty build takes to hang, so the fault is caught there.
    """
    # fmt: off
    return {
        "inventory": "inventory.yml",
        "state": "fleetctl.db",
        "rollout": {
            "forks": 20, "on_failure": "rollback", "max_failures": 0,
            "spread_by": "zone", "max_unavailable": "50%",
            "stages": [
                {"name": "canary", "hosts": "canary", "batch": 1, "bake": f"{math.ceil(hang_after + 10)}s",
                 "max_failures": 0},
                {"name": "ring1", "hosts": "ring1", "batch": "50%", "bake": "10s"},
                {"name": "rest", "hosts": "all", "batch": "50%", "bake": "5s"},
            ],
        },
        "rollback": {"forks": 50, "batch": "100%"},
        "health": {
            "interval": "2s", "failures_to_fail": 2,
            "probes": [
                {"http": "http://{{ ansible_host }}:{{ hc_port }}/health", "timeout": "2s",
                 "expect_status": 200},
            ],
        },
    }
    # fmt: on


def inventory_data(info: SimInfo, hosts: SshHosts | None = None) -> dict[str, Any]:
    """The Ansible YAML inventory of a sim: ring groups, zone groups, connection and node vars.

    With `hosts` (an ssh sim) every node is reached over `info.connection` (ssh or paramiko) with the host's
    address, user, key and known_hosts (host keys checked); otherwise over `ansible_connection: local`.
    """
    names = [n.name for n in info.nodes]
    children: dict[str, Any] = {g: {"hosts": dict.fromkeys(m)} for g, m in rings(names).items()}
    for zone in ZONES:
        members = [n.name for n in info.nodes if n.zone == zone]
        if members:
            children[f"zone_{zone}"] = {"hosts": dict.fromkeys(members)}
    common: dict[str, Any] = {
        "hc_port": info.port,
        "hc_service_manager": "sim",
        "hc_sim_socket": str(info.dir / "sim.sock"),
        "hc_artifact_base_url": f"file://{info.dir / 'artifacts'}",
    }
    if hosts is None:
        common = {
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
            **common,
        }
        node_vars = {n.name: {"ansible_host": n.address} for n in info.nodes}
    else:
        node_vars = sshsim.node_vars(hosts, [n.name for n in info.nodes], info.connection)
    return {
        "all": {
            "vars": common,
            "hosts": {
                n.name: {**node_vars[n.name], "hc_root": str(n.root), "zone": n.zone} for n in info.nodes
            },
            "children": children,
        }
    }


# -- lifecycle -----------------------------------------------------------------------------------
def create(
    dir: Path,
    nodes: int | None = None,
    hang_after: float | None = None,
    ssh: bool = False,
    connection: str | None = None,
    *,
    netns: bool | None = None,
) -> SimInfo:
    """Create a simulated fleet of `nodes` nodes in `dir`, all at 1.0.0, and start its server.

    Refuses when a sim already runs in `dir`. When `dir` already holds a stopped sim, it is started
    again as it is (nodes keep the versions they had), provided `nodes` is None or matches its size;
    a different `hang_after` rebuilds the 2.0.0 artifact and fleet.yml (releases already unpacked on
    nodes keep their own manifest). A non-empty `dir` that holds no sim is refused. `nodes` defaults
    to 10 for a new sim and `hang_after` (seconds until the 2.0.0 build's API blocks) to 20.

    `ssh`: every node is a real SSH host (see the module docstring), reached over `connection` ("ssh",
    the default, or "paramiko"). An ssh sim stays one: starting it again makes new SSH hosts (new
    addresses and host keys) and keeps the recorded connection unless `connection` says otherwise.
    `netns` (ssh sims): None = namespaces when possible, else loopback; True = namespaces or fail;
    False = loopback (to test the fallback).
    """
    d = Path(dir).expanduser().resolve()
    if connection is not None and connection not in CONNECTIONS:
        raise SimError(f"connection must be one of {', '.join(CONNECTIONS)}, not {connection!r}")
    if hang_after is not None and (hang_after < 0 or not math.isfinite(hang_after)):
        raise SimError(f"hang-after must be a positive duration, not {hang_after}")
    if nodes is not None and not 1 <= nodes <= MAX_NODES:
        raise SimError(f"a simulated fleet has 1 to {MAX_NODES} nodes, not {nodes}")
    if len(str(d / "sim.sock")) > _SUN_PATH_MAX:
        raise SimError(
            f"the sim directory path is too long for a unix socket: {d}", hint="use a shorter --dir"
        )
    pid = is_running(d)
    if pid:
        raise SimError(
            f"a simulated fleet is already running in {d} (pid {pid}): "
            f"run `fleetctl sim down --dir {d}` first",
            hint="or choose another --dir",
        )
    if (d / "sim.json").exists():
        meta = _read_meta(d)
        old_hang = float(meta.get("hang_after", DEFAULT_HANG_AFTER))
        if nodes is not None and nodes != len(meta["nodes"]):
            raise SimError(
                f"{d} already holds a simulated fleet of {len(meta['nodes'])} nodes, not {nodes}",
                hint=f"start it with --nodes {len(meta['nodes'])}, or remove {d} / choose another --dir",
            )
        ssh = ssh or bool(meta.get("ssh_mode"))
        sshsim.check_size(ssh, len(meta["nodes"]))
        new_hang = old_hang if hang_after is None else hang_after
        if new_hang != old_hang:
            meta["hang_after"] = new_hang
            _write_json(d / "sim.json", meta)
        artifacts.write_artifacts(d / "artifacts", new_hang)
        rewrite_config = new_hang != old_hang or not (d / "fleet.yml").exists()
    else:
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise SimError(f"{d} exists and is not a simulated fleet", hint="choose a new or empty --dir")
        sshsim.check_size(ssh, nodes or DEFAULT_NODES)
        _build(d, nodes or DEFAULT_NODES, DEFAULT_HANG_AFTER if hang_after is None else hang_after)
        rewrite_config = True
    hosts = _start_ssh_hosts(d, connection, netns) if ssh else None
    try:
        pid = _start_server(d)
        if hosts is not None:
            hosts.detach(pid)  # the hosts now live as long as the server; stop() tears both down
    except BaseException:
        if hosts is not None:
            with contextlib.suppress(Exception):
                stop(d)
            hosts.close()
        raise
    info = load(d)
    _write_inventory(info, hosts)
    header = (
        f"fleetctl config generated for the simulated fleet in {d} by `fleetctl sim up`.\n"
        f"Use it with: export FLEETCTL_CONFIG={d / 'fleet.yml'}"
    )
    if rewrite_config or hosts is not None:
        config = fleet_config(info.hang_after) if rewrite_config else _read_yaml(d / "fleet.yml")
        if hosts is not None:  # paths are stable, but a plain sim started with ssh needs the sections
            config.update(sshsim.fleet_config(d, hosts))
        _write_yaml(d / "fleet.yml", config, header)
    return info


def load(dir: Path) -> SimInfo:
    d = Path(dir).expanduser().resolve()
    meta = _read_meta(d)
    nodes = [
        SimNode(n["name"], n["address"], Path(n["root"]), n["zone"], n.get("netns")) for n in meta["nodes"]
    ]
    return SimInfo(
        d,
        d / "fleet.yml",
        d / "inventory.yml",
        int(meta["port"]),
        nodes,
        float(meta.get("hang_after", DEFAULT_HANG_AFTER)),
        meta.get("ssh_mode"),
        meta.get("fallback_reason"),
        meta.get("connection") or "local",
    )


def set_connection(dir: Path, connection: str) -> SimInfo:
    """Point a running ssh sim's inventory at another Ansible connection (ssh or paramiko); no restart."""
    d = Path(dir).expanduser().resolve()
    if connection not in CONNECTIONS:
        raise SimError(f"connection must be one of {', '.join(CONNECTIONS)}, not {connection!r}")
    hosts = ssh_hosts(d)
    if hosts is None:
        raise SimError(f"{d} runs no SSH hosts", hint=f"start it with `fleetctl sim up --ssh --dir {d}`")
    meta = _read_meta(d)
    meta["connection"] = connection
    _write_json(d / "sim.json", meta)
    info = load(d)
    _write_inventory(info, hosts)
    return info


def ssh_hosts(dir: Path) -> SshHosts | None:
    """A handle on the running SSH hosts of an ssh sim (cut_link, restore_link, rotate_host_key, ssh_argv,
    popen_on, ...), or None when `dir` runs none. The handle does not own them: close() on it tears them
    down for everyone; stop() does that as well."""
    d = Path(dir).expanduser().resolve()
    if not (d / SSH_DIR / "hosts.json").exists():
        return None
    return SshHosts.load(d / SSH_DIR)


def is_running(dir: Path) -> int | None:
    """The pid of the sim server of `dir` if it really runs, else None."""
    try:
        pid = int((Path(dir).expanduser().resolve() / "sim.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def stop(dir: Path) -> int | None:
    """Stop the sim server (SIGTERM, then SIGKILL after 10 s) and, for an ssh sim, tear its SSH hosts down
    (sshd processes, namespaces, veths). Returns the server's pid, or None if none ran."""
    d = Path(dir).expanduser().resolve()
    pid = is_running(d)
    if pid:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, STOP_TIMEOUT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if not _wait_gone(pid, 5.0):
                raise SimError(f"the sim server (pid {pid}) of {d} did not stop")
    for stale in (d / "sim.pid", d / "sim.sock"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    hosts = ssh_hosts(d)
    if hosts is not None:
        hosts.close()
    return pid


def status(dir: Path) -> list[NodeStatus]:
    """Each node's version on disk and whether its controller answers /health (probed concurrently)."""
    info = load(dir)
    if is_running(info.dir):
        healthy = server.probe_health([n.address for n in info.nodes], info.port, PROBE_TIMEOUT)
    else:
        healthy = [False] * len(info.nodes)
    return [
        NodeStatus(n.name, n.address, n.zone, artifacts.current_version(n.root), ok)
        for n, ok in zip(info.nodes, healthy, strict=True)
    ]


def restart_node(dir: Path, node: str) -> str:
    """Restart one node's controller through the sim service manager. Returns the version it now runs."""
    reply = control(dir, f"restart {node}")
    if not reply.startswith("ok "):
        raise SimError(f"cannot restart {node}: {reply.removeprefix('error ')}")
    return reply[3:]


def set_load(dir: Path, on: bool) -> str:
    """Morning load on (or off): controllers running a release whose manifest says `fails_under_load`
    block until it is lifted, as the incident's build did under the morning's traffic."""
    reply = control(dir, f"load {'on' if on else 'off'}")
    if not reply.startswith("ok "):
        raise SimError(f"cannot set the load: {reply.removeprefix('error ')}")
    return reply[3:]


def server_status(dir: Path) -> dict[str, dict[str, Any]]:
    """What the server itself reports per node: running version, uptime, restarts, healthy."""
    return {n["name"]: n for n in json.loads(control(dir, "status"))["nodes"]}


def control(dir: Path, command: str, timeout: float = 10.0) -> str:
    """Send one line to the sim service manager (D/sim.sock) and return its one-line reply."""
    d = Path(dir).expanduser().resolve()
    try:
        return server.send_command(d / "sim.sock", command, timeout)
    except OSError as exc:
        raise SimError(
            f"the simulated fleet in {d} is not answering ({exc})",
            hint=f"start it with `fleetctl sim up --dir {d}`",
        ) from exc


# -- internals -------------------------------------------------------------------------------------
def _build(d: Path, count: int, hang_after: float) -> None:
    d.mkdir(parents=True, exist_ok=True)
    artifacts.write_artifacts(d / "artifacts", hang_after)
    nodes = [
        {
            "name": name,
            "address": node_address(i),
            "root": str(d / "nodes" / name),
            "zone": ZONES[(i - 1) % 3],
        }
        for i, name in enumerate(node_names(count), start=1)
    ]

    def install(node: dict[str, str]) -> None:
        root = Path(node["root"])
        artifacts.write_release(root, artifacts.INITIAL_VERSION, None)
        artifacts.switch_release(root, artifacts.INITIAL_VERSION)

    with ThreadPoolExecutor(max_workers=8) as pool:  # file creation is I/O bound: ~2x faster
        list(pool.map(install, nodes))
    # port 0: the server picks a free one on first start and records it here
    _write_json(
        d / "sim.json", {"port": 0, "socket": str(d / "sim.sock"), "hang_after": hang_after, "nodes": nodes}
    )


def _start_ssh_hosts(d: Path, connection: str | None, netns: bool | None) -> SshHosts:
    """Make one SSH host per node (new addresses and keys; hosts of an earlier run whose server died are
    torn down first) and record them in sim.json."""
    with contextlib.suppress(SimError):
        old = ssh_hosts(d)
        if old is not None:
            old.close()
    meta = _read_meta(d)
    hosts = sshsim.make_hosts(d, meta, connection, netns)
    try:
        _write_json(d / "sim.json", meta)
    except BaseException:
        hosts.close()
        raise
    return hosts


def _write_inventory(info: SimInfo, hosts: SshHosts | None) -> None:
    _write_yaml(
        info.inventory,
        inventory_data(info, hosts),
        f"Ansible inventory of the simulated fleet in {info.dir} (generated by `fleetctl sim up`).",
    )


def _start_server(d: Path) -> int:
    env = dict(os.environ)
    pkg_root = str(Path(__file__).resolve().parents[2])  # so the server imports this very fleetctl
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    with open(d / "sim.log", "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetctl.sim.server", "--dir", str(d)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=d,
            env=env,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimError(
                f"the sim server exited with code {proc.returncode}:\n{_log_tail(d)}",
                hint=f"see {d / 'sim.log'}",
            )
        if is_running(d) == proc.pid:
            with contextlib.suppress(SimError):
                if control(d, "ping", timeout=2.0) == "pong":
                    return proc.pid
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise SimError(
        f"the sim server did not become ready within {READY_TIMEOUT:g}s:\n{_log_tail(d)}",
        hint=f"see {d / 'sim.log'}",
    )


def _alive(pid: int) -> bool:
    proc = _children.get(pid)
    if proc is not None:  # our own child: waitpid is the truth (and reaps it once it has exited)
        if proc.poll() is None:
            return True
        del _children[pid]
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to a signal 0 probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # a zombie is gone; a recycled pid running something else is not our server (an exiting process
    # has an empty cmdline for a moment: still there)
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and (not cmdline or b"fleetctl.sim.server" in cmdline)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _read_meta(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / "sim.json").read_text())
    except FileNotFoundError:
        raise SimError(
            f"no simulated fleet in {d}", hint=f"create one with `fleetctl sim up --dir {d}`"
        ) from None
    except ValueError as exc:
        raise SimError(f"{d / 'sim.json'} is not valid JSON: {exc}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SimError(f"cannot read {path}: {exc}") from exc
    return doc if isinstance(doc, dict) else {}


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _write_yaml(path: Path, data: Any, header: str) -> None:
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        comment + yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
    )
    os.replace(tmp, path)


def _log_tail(d: Path, lines: int = 20) -> str:
    try:
        return "\n".join((d / "sim.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no sim.log)"


def _round(x: float) -> int:
    return math.floor(x + 0.5)
