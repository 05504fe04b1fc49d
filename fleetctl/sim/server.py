"""The simulated fleet's one background process: every node's controller API plus the service manager.

    python -m fleetctl.sim.server --dir D

Each node gets a listening socket on its own address (all on one port) and answers `GET /health` and
`GET /version`. A node whose sim.json entry names a network namespace (`"netns": "<ip netns name>"`, the
SSH test hosts of `fleetctl sim up --ssh`) gets its socket created and bound inside that namespace (this
thread enters it with setns(2) and returns at once; a socket keeps the namespace it was made in), so its
controller answers on the host's address like a service running on that host, and still one process
serves them all. What a node does comes only from the manifest of the release it runs
(`<root>/current/manifest.json`, read at start and at every restart): a release with `hang_after` makes the
API block that many seconds after the node's (re)start, like the build that once took a fleet down.
The unix socket D/sim.sock is the service manager (`restart <node>`, `status`, `ping`), separate from the
controller API so that a hung controller can still be restarted. sim.pid is written once everything
listens; SIGTERM/SIGINT close everything and remove sim.sock and sim.pid.
The clients at the bottom (send_command, probe_health) are what fleet.py uses to talk to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetctl.sim import netns

log = logging.getLogger("fleetctl.sim.server")

HANG_HOLD = 600.0  # a blocked API holds a connection at most this long
REQUEST_TIMEOUT = 10.0  # a client must send its request head within this
PORT_RANGE = (20000, 60000)
PORT_TRIES = 64


class StartupError(Exception):
    """The server cannot start (ports, addresses); the message goes to sim.log."""


@dataclass
class Node:
    name: str
    address: str
    root: Path
    netns: str | None = None  # the network namespace its socket listens in (None: this process's)
    version: str | None = None
    hang_after: float | None = None
    fails_under_load: bool = False  # the manifest says: blocks while the fleet is under load (`sim load`)
    under_load: bool = False
    started_at: float = 0.0
    restarts: int = 0
    hang_logged: bool = False
    conns: set[asyncio.StreamWriter] = field(default_factory=set)

    def start(self) -> None:
        """(Re)start the controller: load the running release's manifest, reset uptime and hang timer."""
        self.version, self.hang_after, self.fails_under_load = None, None, False
        try:
            manifest = json.loads((self.root / "current" / "manifest.json").read_text())
            self.version = str(manifest["version"])
            hang = manifest.get("hang_after")
            self.hang_after = float(hang) if hang is not None else None
            self.fails_under_load = manifest.get("fails_under_load") is True
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: no usable release at %s/current: %s", self.name, self.root, exc)
        self.started_at = time.monotonic()
        self.hang_logged = False

    def uptime(self) -> float:
        return time.monotonic() - self.started_at

    def hung(self) -> bool:
        if self.fails_under_load and self.under_load:
            return True
        return self.hang_after is not None and self.uptime() >= self.hang_after

    def healthy(self) -> bool:
        return self.version is not None and not self.hung()


def _response(status: int, reason: str, body: str) -> bytes:
    data = body.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


class SimServer:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.meta_path = directory / "sim.json"
        self.meta = json.loads(self.meta_path.read_text())
        self.sock_path = Path(self.meta["socket"])
        self.pid_path = directory / "sim.pid"
        self.load_path = directory / "load"
        self.load = False
        self.nodes = {
            n["name"]: Node(n["name"], n["address"], Path(n["root"]), n.get("netns"))
            for n in self.meta["nodes"]
        }
        # the namespace this (main) thread started in, to return to after binding inside a node's
        self.home_ns: int | None = None
        if any(n.netns for n in self.nodes.values()):
            self.home_ns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.servers: list[asyncio.AbstractServer] = []
        self.stopping = asyncio.Event()

    # -- startup -----------------------------------------------------------------------------------
    def bind_all(self) -> tuple[int, list[socket.socket]]:
        """Bind every node address. A recorded port is reused; port 0 means pick a free random one."""
        port = int(self.meta.get("port") or 0)
        if port:
            try:
                return port, self._bind_port(port)
            except OSError as exc:
                raise StartupError(
                    f"cannot bind the recorded port {port}: {exc} (is something else using it?)"
                ) from exc
        rng = random.Random()
        for _ in range(PORT_TRIES):
            candidate = rng.randint(*PORT_RANGE)
            try:
                socks = self._bind_port(candidate)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise StartupError(f"cannot bind node addresses on port {candidate}: {exc}") from exc
            self.meta["port"] = candidate
            tmp = self.meta_path.with_name(".sim.json.tmp")
            tmp.write_text(json.dumps(self.meta, indent=2) + "\n")
            os.replace(tmp, self.meta_path)
            return candidate, socks
        raise StartupError(f"no port in {PORT_RANGE[0]}-{PORT_RANGE[1]} was free on every node address")

    def _bind_port(self, port: int) -> list[socket.socket]:
        socks: list[socket.socket] = []
        try:
            for node in self.nodes.values():
                socks.append(self._listen_for(node, port))
        except BaseException:
            for s in socks:
                s.close()
            raise
        return socks

    def _listen_for(self, node: Node, port: int) -> socket.socket:
        if node.netns is None:
            return self._listen(node.address, port)
        try:
            with netns.entered(node.netns, self.home_ns):
                return self._listen(node.address, port)
        except netns.NamespaceError as exc:
            raise StartupError(f"{node.name}: {exc}") from exc

    @staticmethod
    def _listen(address: str, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
            s.listen(128)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        return s

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        port, socks = self.bind_all()
        for node in self.nodes.values():
            node.start()
        if self.load_path.exists():
            self.set_load(True)
        for node, sock in zip(self.nodes.values(), socks, strict=True):
            self.servers.append(await asyncio.start_server(self._api_handler(node), sock=sock))
        with contextlib.suppress(OSError):
            send_command(self.sock_path, "ping", timeout=1.0)
            raise StartupError(f"another sim server already answers on {self.sock_path}")
        with contextlib.suppress(FileNotFoundError):
            self.sock_path.unlink()  # stale, from a server that was killed (nothing is listening on it)
        self.servers.append(await asyncio.start_unix_server(self._control, path=str(self.sock_path)))
        tmp = self.pid_path.with_name(".sim.pid.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.pid_path)
        log.info("ready: %d nodes on port %d, control socket %s", len(self.nodes), port, self.sock_path)
        try:
            await self.stopping.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        log.info("stopping")
        for srv in self.servers:
            srv.close()
        for node in self.nodes.values():
            for writer in list(node.conns):
                writer.transport.abort()
        with contextlib.suppress(OSError):
            self.sock_path.unlink()
        with contextlib.suppress(OSError):
            if self.pid_path.read_text().strip() == str(os.getpid()):
                self.pid_path.unlink()
        log.info("stopped")

    # -- controller API ----------------------------------------------------------------------------
    def _api_handler(
        self, node: Node
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            node.conns.add(writer)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
                method, path = self._parse(head)
                if node.hung():
                    if not node.hang_logged:
                        node.hang_logged = True
                        log.info(
                            "%s: controller %s blocks (hang_after=%gs)",
                            node.name,
                            node.version,
                            node.hang_after,
                        )
                    async with asyncio.timeout(HANG_HOLD):
                        while await reader.read(4096):
                            pass
                    return
                writer.write(self._answer(node, method, path))
                await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                pass
            finally:
                node.conns.discard(writer)
                writer.close()

        return handle

    @staticmethod
    def _parse(head: bytes) -> tuple[str, str]:
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3:
            return "", ""
        return parts[0], parts[1].split("?", 1)[0]

    @staticmethod
    def _answer(node: Node, method: str, path: str) -> bytes:
        if path not in ("/health", "/version"):
            return _response(404, "Not Found", "not found\n")
        if method != "GET":
            return _response(405, "Method Not Allowed", "use GET\n")
        if node.version is None:
            return _response(503, "Service Unavailable", "no release installed\n")
        return _response(200, "OK", "ok" if path == "/health" else node.version)

    # -- service manager ---------------------------------------------------------------------------
    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                line = (await reader.readline()).decode("utf-8", "replace").strip()
            writer.write((self._command(line) + "\n").encode())
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    def _command(self, line: str) -> str:
        cmd, _, arg = line.partition(" ")
        if cmd == "ping":
            return "pong"
        if cmd == "status":
            return json.dumps(
                {
                    "nodes": [
                        {
                            "name": n.name,
                            "version": n.version,
                            "uptime": round(n.uptime(), 3),
                            "restarts": n.restarts,
                            "healthy": n.healthy(),
                        }
                        for n in self.nodes.values()
                    ],
                    "load": self.load,
                }
            )
        if cmd == "load":
            if arg.strip() not in ("on", "off"):
                return "error use: load on|off"
            self.set_load(arg.strip() == "on")
            return f"ok load {'on' if self.load else 'off'}"
        if cmd == "restart":
            node = self.nodes.get(arg.strip())
            if node is None:
                return f"error unknown node {arg.strip()!r}"
            for writer in list(node.conns):  # a restarted process drops its open connections
                writer.transport.abort()
            old = node.version
            node.start()
            node.restarts += 1
            log.info("%s: restarted (%s -> %s), restart #%d", node.name, old, node.version, node.restarts)
            if node.version is None:
                return f"error {node.name} has no usable release at {node.root}/current"
            return f"ok {node.version}"
        return f"error unknown command {cmd!r} (use ping, status, restart <node>, load on|off)"

    def set_load(self, on: bool) -> None:
        """Morning load: every controller whose release `fails_under_load` blocks while it lasts. Kept in
        the sim dir (`load`), so a restarted server keeps it."""
        self.load = on
        for node in self.nodes.values():
            node.under_load = on
        if on:
            self.load_path.write_text("on\n")
        else:
            self.load_path.unlink(missing_ok=True)
        log.info("load %s", "on" if on else "off")


# -- clients (fleet.py talks to a running server through these) ----------------------------------------
def send_command(sock_path: Path, command: str, timeout: float = 10.0) -> str:
    """One request to the service manager socket; returns the one-line reply. Raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(sock_path))
        conn.sendall(command.strip().encode() + b"\n")
        with conn.makefile("rb") as reply:
            return reply.readline(1 << 24).decode().strip()


def probe_health(addresses: list[str], port: int, timeout: float) -> list[bool]:
    """GET /health on every address concurrently: True where it answered 200 within `timeout`."""
    coro = _probe_all(addresses, port, timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[list[bool]] = []  # the caller runs an event loop: use a helper thread with its own
    thread = threading.Thread(target=lambda: result.append(asyncio.run(coro)))
    thread.start()
    thread.join()
    return result[0]


async def _probe_all(addresses: list[str], port: int, timeout: float) -> list[bool]:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = asyncio.Semaphore(max(16, min(512, (soft - 64) // 2)))

    async def probe(address: str) -> bool:
        async with limit:
            writer = None
            try:
                async with asyncio.timeout(timeout):
                    reader, writer = await asyncio.open_connection(address, port)
                    writer.write(
                        f"GET /health HTTP/1.1\r\nHost: {address}:{port}\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )
                    line = await reader.readline()
                return line.split()[1:2] == [b"200"]
            except (OSError, TimeoutError):
                return False
            finally:
                if writer is not None:
                    writer.close()

    return list(await asyncio.gather(*(probe(a) for a in addresses)))


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetctl.sim.server", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, type=Path, help="the sim directory (with sim.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    limit = raise_nofile_limit()
    server = SimServer(args.dir.resolve())
    if limit < len(server.nodes) + 64:
        log.error("open file limit %d is too low for %d nodes (raise `ulimit -n`)", limit, len(server.nodes))
        return 1
    try:
        asyncio.run(server.run())
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
