"""fleetctl's own SSH path (paramiko), for ssh probes and `versions --refresh --via ssh`.

Host keys are checked against known_hosts (fleet.yml `ssh.known_hosts`, else ~/.ssh/known_hosts) with
paramiko's RejectPolicy: an unknown or changed key is refused before anything runs on that host, with a
message naming the host and the key's fingerprint. Every connection and command has a timeout, and hosts
are reached concurrently, so a dead link costs one timeout, not one per host in turn.
"""

from __future__ import annotations

import base64
import hashlib
import select
import shlex
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paramiko

from fleetctl.config import SshConfig
from fleetctl.errors import InventoryError
from fleetctl.inventory import Fleet
from fleetctl.units import node_version

MAX_WORKERS = 64
MAX_OUTPUT = 64 * 1024  # bytes of stdout + stderr read from one command; more fails it
CHUNK = 32768


@dataclass(frozen=True)
class SshTarget:
    host: str  # inventory name
    address: str
    port: int = 22
    user: str | None = None
    key: Path | None = None
    error: str | None = None  # the inventory does not say where: this host fails without a connection


@dataclass(frozen=True)
class CommandResult:
    host: str
    ok: bool  # connected, and the command exited 0
    exit_status: int | None
    stdout: str
    stderr: str
    latency_ms: float
    error: str | None = None
    unreachable: bool = False  # could not connect (timeout, refused, no route)
    host_key_refused: bool = False


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _Reject(paramiko.MissingHostKeyPolicy):
    """RejectPolicy that says which key it refused."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(hostname, key)


class UnknownHostKey(paramiko.SSHException):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


class SshClient:
    def __init__(self, config: SshConfig, *, known_hosts: Path | None = None) -> None:
        self.config = config
        self.known_hosts = known_hosts or config.known_hosts or Path("~/.ssh/known_hosts").expanduser()

    def targets(self, fleet: Fleet, hosts: Sequence[str]) -> list[SshTarget]:
        """Where to connect, from the hosts' inventory variables (as Ansible would: templated values such
        as `ansible_host: "{{ inventory_hostname }}.example"` are rendered per host). A host whose
        variables cannot say where gets a target with `error` set: it fails, the others go on."""
        out = []
        for name in hosts:
            h = fleet[name]
            try:
                address = str(h.rendered_var("ansible_host") or name)
                port = _port(h.rendered_var("ansible_port") or 22)
                user = h.rendered_var("ansible_user") or self.config.user
                key = h.rendered_var("ansible_ssh_private_key_file") or h.rendered_var(
                    "ansible_private_key_file"
                )
            except InventoryError as exc:
                out.append(SshTarget(host=name, address=name, error=f"{name}: {exc.message}"))
                continue
            except ValueError as exc:
                out.append(SshTarget(host=name, address=name, error=f"{name}: ansible_port {exc}"))
                continue
            out.append(
                SshTarget(
                    host=name,
                    address=address,
                    port=port,
                    user=str(user) if user else None,
                    key=Path(str(key)).expanduser() if key else self.config.key,
                )
            )
        return out

    def run(self, target: SshTarget, command: str, timeout: float | None = None) -> CommandResult:
        """Run `command` on one host. `timeout` (default `ssh.command_timeout`) bounds the whole of it:
        connecting (also at most `ssh.connect_timeout`), running, reading; at most MAX_OUTPUT bytes are
        read. A host that trickles output or floods it fails; it never holds the caller longer."""
        started = time.monotonic()
        timeout = timeout or self.config.command_timeout
        deadline = started + timeout
        phase = ["connect"]

        def done(
            ok: bool,
            status: int | None = None,
            out: str = "",
            err: str = "",
            error: str | None = None,
            **flags: Any,
        ) -> CommandResult:
            ms = round((time.monotonic() - started) * 1000, 2)
            return CommandResult(target.host, ok, status, out, err, ms, error, **flags)

        if target.error:
            return done(False, error=target.error)
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(self.known_hosts))
        except FileNotFoundError:
            pass
        except (OSError, paramiko.SSHException) as exc:
            return done(
                False, error=f"cannot read known_hosts {self.known_hosts}: {exc}", host_key_refused=True
            )
        client.set_missing_host_key_policy(_Reject())
        # Connecting has several steps, each with its own timeout: a watchdog ends it at the deadline.
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            client.close()

        watchdog = threading.Timer(timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            step = min(self.config.connect_timeout, timeout)
            client.connect(
                target.address,
                port=target.port,
                username=target.user,
                key_filename=str(target.key) if target.key else None,
                timeout=step,
                banner_timeout=step,
                auth_timeout=step,
                channel_timeout=step,
                allow_agent=target.key is None,
                look_for_keys=target.key is None,
            )
            phase[0] = "command"
            status, out, err = _exec(client, command, deadline)
            return done(
                status == 0, status, out, err, None if status == 0 else f"exit {status}: {err.strip()[:200]}"
            )
        except _OutputTooLarge:
            return done(
                False, error=f"{target.host} ({_where(target)}): output too large (over {MAX_OUTPUT} bytes)"
            )
        except UnknownHostKey as exc:
            return done(
                False,
                error=(
                    f"host key of {target.host} ({_where(target)}) is not in {self.known_hosts}: refused "
                    f"({exc.key.get_name()} {fingerprint(exc.key)}); verify it, then add it to known_hosts"
                ),
                host_key_refused=True,
            )
        except paramiko.BadHostKeyException as exc:
            return done(
                False,
                error=(
                    f"host key of {target.host} ({_where(target)}) CHANGED: got {fingerprint(exc.key)}, known_hosts "
                    f"has {fingerprint(exc.expected_key)}; refused (possible man-in-the-middle, or a rebuilt host)"
                ),
                host_key_refused=True,
            )
        except paramiko.AuthenticationException as exc:
            if expired.is_set():
                return _timed_out(done, target, timeout, phase[0])
            return done(False, error=f"authentication to {target.host} ({_where(target)}) failed: {exc}")
        except (TimeoutError, _Deadline):
            return _timed_out(done, target, timeout, phase[0])
        except (OSError, paramiko.SSHException, EOFError) as exc:
            if expired.is_set():
                return _timed_out(done, target, timeout, phase[0])
            return done(
                False,
                error=f"{target.host} ({_where(target)}): {exc or type(exc).__name__}",
                unreachable=phase[0] == "connect",
            )
        finally:
            watchdog.cancel()
            client.close()

    def run_many(
        self, targets: Sequence[SshTarget], command: str | dict[str, str], timeout: float | None = None
    ) -> dict[str, CommandResult]:
        """Run a command (or a per-host command) on many hosts at once."""
        if not targets:
            return {}

        def one(t: SshTarget) -> CommandResult:
            cmd = command[t.host] if isinstance(command, dict) else command
            return self.run(t, cmd, timeout)

        with ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(targets))) as pool:
            return {r.host: r for r in pool.map(one, targets)}


class _Deadline(Exception):
    pass


class _OutputTooLarge(Exception):
    pass


def _exec(client: paramiko.SSHClient, command: str, deadline: float) -> tuple[int, str, str]:
    """Run a command on a connected client; read stdout and stderr until it exits, the deadline passes
    (_Deadline) or more than MAX_OUTPUT bytes arrive (_OutputTooLarge)."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise EOFError("connection closed")
    chan = transport.open_session(timeout=max(0.01, deadline - time.monotonic()))
    try:
        chan.exec_command(command)
        chan.shutdown_write()
        out, err = bytearray(), bytearray()
        wake = chan.fileno()  # readable when stdout or stderr data (or the close) arrives
        while True:
            while chan.recv_ready():
                out += chan.recv(CHUNK)
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(CHUNK)
            if len(out) + len(err) > MAX_OUTPUT:
                raise _OutputTooLarge
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Deadline
            if chan.closed and not chan.exit_status_ready():
                raise EOFError("the channel closed without an exit status")
            select.select([wake], [], [], min(left, 0.5))
        return chan.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
    finally:
        chan.close()


def _timed_out(done: Any, target: SshTarget, timeout: float, phase: str) -> CommandResult:
    what = "connecting" if phase == "connect" else "the command did not finish"
    return done(  # type: ignore[no-any-return]
        False,
        error=f"{target.host} ({_where(target)}): timed out after {timeout:g}s ({what})",
        unreachable=phase == "connect",
    )


def _port(raw: object) -> int:
    try:
        port = int(str(raw).strip())
    except ValueError:
        raise ValueError(f"is not a port number: {str(raw)[:60]!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"is not a port number: {port}")
    return port


def _where(t: SshTarget) -> str:
    return t.address if t.port == 22 else f"{t.address}:{t.port}"


def read_versions(client: SshClient, fleet: Fleet, hosts: Sequence[str]) -> dict[str, CommandResult]:
    """What each node's `current` points at, read over SSH (the same truth facts.yml reports).
    Pass each result to version_of, which checks what the node answered."""
    targets = client.targets(fleet, hosts)
    commands = {}
    for i, t in enumerate(targets):
        try:
            root = fleet[t.host].rendered_var("hc_root") or "/opt/host-controller"
        except InventoryError as exc:
            targets[i] = replace(t, error=f"{t.host}: {exc.message}")
            root = "/opt/host-controller"
        commands[t.host] = f"readlink {shlex.quote(str(root))}/current"
    return client.run_many(targets, commands)


def version_of(result: CommandResult) -> str | None:
    """The version a `readlink current` answer names; None when the command failed or printed nothing.
    Raises BadNodeVersion when the node's answer is not a plain version (it is untrusted text)."""
    text = result.stdout.strip().rstrip("/")
    if not result.ok or not text:
        return None
    return node_version(text.rsplit("/", 1)[-1])


def probe_runner(client: SshClient, fleet: Fleet):  # type: ignore[no-untyped-def]
    """An ssh probe for fleetctl.health.Prober: host -> (ok, latency ms, error)."""

    def run(
        hosts: list[str], command: str | dict[str, str], timeout: float
    ) -> dict[str, tuple[bool, float, str | None]]:
        results = client.run_many(client.targets(fleet, hosts), command, timeout)
        return {h: (r.ok, r.latency_ms, r.error) for h, r in results.items()}

    return run
