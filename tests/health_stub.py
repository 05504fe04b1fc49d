"""A health endpoint that stands in for one simulated node's controller: it answers 200 like the real one,
except while the node runs a chosen version on disk (read from its `current` symlink at every request),
when it sends the raw answer a test wants (a 500, a status line with brackets, ...). A real HTTP server
on the node's own address; only the health probe is pointed at it (the node role still talks to the
real controller)."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import Sim

PROBE = "http://{{ ansible_host }}:{{ probe_port | default(hc_port) }}/health"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class HealthStub:
    def __init__(self, sim: Sim, node: str, bad_version: str, answer: bytes) -> None:
        info = next(n for n in sim.info.nodes if n.name == node)
        self.root = Path(info.root)
        self.bad_version = bad_version
        self.answer = answer
        self.requests = 0
        self.sock = socket.create_server((info.address, 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        _route_probe(sim, node, self.port)

    def _running(self) -> str | None:
        link = self.root / "current"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    self.requests += 1
                    conn.sendall(self.answer if self._running() == self.bad_version else OK)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def _route_probe(sim: Sim, node: str, port: int) -> None:
    """fleet.yml's one probe takes a host's `probe_port` when it has one; `node` gets `port`."""
    doc = yaml.safe_load(sim.config.read_text())
    health: dict[str, Any] = doc["health"]
    health["probes"] = [{"http": PROBE, "timeout": "1s"}]
    sim.write_config(health=health)
    inventory = sim.info.inventory
    inv = yaml.safe_load(inventory.read_text())
    inv["all"]["hosts"][node]["probe_port"] = port
    inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
