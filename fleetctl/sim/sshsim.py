"""What makes a simulated fleet an ssh sim (`fleetctl sim up --ssh`): its SSH hosts, the inventory variables
that reach them, and the fleet.yml sections for Ansible and fleetctl's own SSH client. fleet.py drives it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from fleetctl.errors import SimError
from fleetctl.sim.sshhosts import SshHosts, create_ssh_hosts

MAX_SSH_NODES = 50  # one sshd and one network namespace per node
SSH_PORT = 8500  # controllers in namespaces all listen on the role's default hc_port
CONNECTIONS = ("ssh", "paramiko")
SSH_DIR = "ssh"
_CONTROL_PATH_DIR_MAX = 79  # ansible: <dir>/<10 hex>, ssh adds .<16 random> while binding: <= 107 bytes


def check_size(ssh: bool, count: int) -> None:
    if ssh and count > MAX_SSH_NODES:
        raise SimError(
            f"an ssh sim has at most {MAX_SSH_NODES} nodes (one sshd and network namespace each), not {count}",
            hint="use fewer --nodes, or a sim without --ssh",
        )


def make_hosts(d: Path, meta: dict[str, Any], connection: str | None, netns: bool | None) -> SshHosts:
    """One SSH host per node of sim.json's `meta`, in D/ssh; updates `meta` (addresses, namespaces, port,
    ssh_mode, fallback_reason, connection) for the caller to write. Closes the hosts if that fails."""
    hosts = create_ssh_hosts(d / SSH_DIR, [n["name"] for n in meta["nodes"]], netns=netns)
    try:
        for node in meta["nodes"]:
            h = hosts.host(node["name"])
            node["address"] = h.address
            node.pop("netns", None)
            if h.namespace:
                node["netns"] = h.namespace
        # in namespaces every controller has the role's default port; on loopback pick a free one
        meta["port"] = SSH_PORT if hosts.mode == "netns" else 0
        meta["ssh_mode"], meta["fallback_reason"] = hosts.mode, hosts.fallback_reason
        meta["connection"] = connection or meta.get("connection") or "ssh"
        control_path_dir(d).mkdir(mode=0o700, parents=True, exist_ok=True)
    except BaseException:
        hosts.close()
        raise
    return hosts


def node_vars(hosts: SshHosts, names: list[str], connection: str) -> dict[str, dict[str, Any]]:
    """Per node: Ansible connection, address, port, user, key and ssh args (known_hosts pinned, host keys
    checked, keepalives), and the Python that runs modules there."""
    python = node_python()
    return {
        name: {
            "ansible_connection": connection,
            **hosts.ansible_vars(name),
            "ansible_python_interpreter": python,
        }
        for name in names
    }


def fleet_config(d: Path, hosts: SshHosts) -> dict[str, Any]:
    """The fleet.yml sections of an ssh sim: `env` for ansible-playbook, `ssh` for fleetctl's own client."""
    return {
        "env": {
            # Ansible's paramiko connection reads only ~/.ssh/known_hosts: ours is in hosts.home
            "HOME": str(hosts.home),
            # ControlPersist masters per sim, not shared with other sims or the user's own
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_path_dir(d)),
            # paramiko PROMPTS on an unknown host key ("Are you sure you want to continue connecting"), and
            # under ansible-runner nobody answers: the run hangs for ever. With this set it fails at once
            # (host unreachable). It changes nothing else for ssh, paramiko or local connections.
            "ANSIBLE_USE_PERSISTENT_CONNECTIONS": "True",
        },
        "ssh": {
            "known_hosts": str(hosts.known_hosts),
            "key": str(hosts.client_key),
            "user": hosts.user,
            "connect_timeout": "5s",
            "command_timeout": "10s",
        },
    }


def control_path_dir(d: Path) -> Path:
    """Where Ansible's ssh connection keeps its ControlPersist sockets for the sim in `d`: D/ssh/cp, or a
    short per-sim directory in the temp dir when that path is too long for a unix socket."""
    cp = d / SSH_DIR / "cp"
    if len(str(cp)) <= _CONTROL_PATH_DIR_MAX:
        return cp
    digest = hashlib.sha256(str(d).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"fleetctl-cp-{digest}"


def node_python() -> str:
    """The Python a node runs modules with over SSH (the node shares this machine's filesystem)."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
