"""Issue 14 execution benchmarks on the simulated fleet: one rollout (and its rollback) per variant.

    python benchmarks/bench.py execution --nodes 30

Variants: one local job (the default), 2 local shards, 1 and 2 execution nodes (sshd hosts in network
namespaces running `ansible-runner worker`, on this same machine), and mitogen. For each: wall time and
the controller's CPU-seconds per host, i.e. the CPU of the fleetctl process and everything it waited for
(ansible-playbook when local; ssh and ansible-runner's processing when remote). A worker on an execution
node is a child of that node's sshd, so its CPU is not the controller's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

BIN = Path(sys.executable).parent


class Relay:
    """TCP relays on an address the execution nodes reach, to the simulated controllers' loopback ones."""

    def __init__(self, address: str) -> None:
        self.address = address

    def add(self, target: tuple[str, int]) -> int:
        server = socket.create_server((self.address, 0))
        threading.Thread(target=self._accept, args=(server, target), daemon=True).start()
        return int(server.getsockname()[1])

    def _accept(self, server: socket.socket, target: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                threading.Thread(target=self._both, args=(client, target), daemon=True).start()

    @staticmethod
    def _both(client: socket.socket, target: tuple[str, int]) -> None:
        def pipe(a: socket.socket, b: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := a.recv(65536):
                    b.sendall(data)
            with contextlib.suppress(OSError):
                b.shutdown(socket.SHUT_WR)

        with contextlib.suppress(OSError), client, socket.create_connection(target, timeout=10) as up:
            t = threading.Thread(target=pipe, args=(up, client), daemon=True)
            t.start()
            pipe(client, up)
            t.join(timeout=30)


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and the children it waited for)."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} failed: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime


def bench_execution(nodes: int, record: Any) -> None:
    from fleetctl.sim import fleet as simfleet
    from fleetctl.sim.sshhosts import create_ssh_hosts

    d = Path(tempfile.mkdtemp(prefix="fleetctl-bench-exec-"))
    info = simfleet.create(d / "sim", nodes, 600.0)
    hosts = create_ssh_hosts(d / "exec", ["exec1", "exec2"])
    try:
        relay = Relay(hosts.host("exec1").gateway if hosts.mode == "netns" else "127.0.0.1")
        inv = yaml.safe_load(info.inventory.read_text())
        for n in info.nodes:
            inv["all"]["hosts"][n.name].update(
                ansible_host=relay.address, hc_port=relay.add((n.address, info.port))
            )
        info.inventory.write_text(yaml.safe_dump(inv, sort_keys=False))

        def node(name: str) -> dict[str, Any]:
            h = hosts.host(name)
            return {
                "host": h.address,
                "port": h.port,
                "user": hosts.user,
                "key": str(hosts.client_key),
                "known_hosts": str(hosts.known_hosts),
                "ansible_runner": str(BIN / "ansible-runner"),
                "python": sys.executable,
            }

        variants: dict[str, dict[str, Any]] = {
            "local": {},
            "shards2": {"shards": 2},
            "nodes1": {"nodes": [node("exec1")]},
            "nodes2": {"nodes": [node("exec1"), node("exec2")]},
        }
        with contextlib.suppress(Exception):
            from fleetctl.execution import mitogen

            mitogen.check(*mitogen.installed())
            variants["mitogen"] = {"strategy": "mitogen"}
        env = {"FLEETCTL_CONFIG": str(info.config), "FLEETCTL_OPERATOR": "bench"}
        doc = yaml.safe_load(info.config.read_text())
        doc["rollout"] = {
            "forks": 10,
            "on_failure": "halt",
            "max_failures": "100%",
            "stages": [{"name": "all", "hosts": "all", "batch": "100%", "bake": "0s"}],
        }
        doc["health"] = {"probes": []}
        fleetctl = str(BIN / "fleetctl")
        info.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        run_measured([fleetctl, "rollout", "1.1.0", "--yes"], env)  # warm-up: installs the release
        run_measured([fleetctl, "rollback", "--yes"], env)
        row: dict[str, Any] = {"nodes": nodes, "exec_mode": hosts.mode}
        for name, execution in variants.items():
            doc["execution"] = execution
            info.config.write_text(yaml.safe_dump(doc, sort_keys=False))
            wall, cpu = run_measured([fleetctl, "rollout", "1.1.0", "--yes"], env)
            rb_wall, rb_cpu = run_measured([fleetctl, "rollback", "--yes"], env)
            row[name] = {
                "rollout_s": round(wall, 1),
                "controller_cpu_s_per_host": round(cpu / nodes, 3),
                "rollback_s": round(rb_wall, 1),
                "rollback_cpu_s_per_host": round(rb_cpu / nodes, 3),
            }
        base = row["local"]["controller_cpu_s_per_host"]
        for name in ("nodes1", "nodes2"):
            row[name]["controller_share_fall"] = round(
                base / max(row[name]["controller_cpu_s_per_host"], 1e-6), 1
            )
        record("execution", row)
    finally:
        hosts.close()
        simfleet.stop(info.dir)
