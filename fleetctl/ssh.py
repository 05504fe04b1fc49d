"""fleetctl's own SSH path (paramiko), for ssh probes and `versions --refresh --via ssh`.

Host keys are checked against known_hosts (fleet.yml `ssh.known_hosts`, else ~/.ssh/known_hosts) with
paramiko's RejectPolicy: an unknown or changed key is refused before anything runs on that host, with a
message naming the host and the key's fingerprint. Every connection and command has a timeout, and hosts
are reached concurrently, so a dead link costs one timeout, not one per host in turn.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from fleetctl.config import SshConfig
from fleetctl.inventory import Fleet

MAX_WORKERS = 64


@dataclass(frozen=True)
class SshTarget:
    host: str  # inventory name
    address: str
    port: int = 22
    user: str | None = None
    key: Path | None = None


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
        """Where to connect, from the hosts' inventory variables (as Ansible would)."""
        out = []
        for name in hosts:
            h = fleet[name]
            key = h.var("ansible_ssh_private_key_file") or h.var("ansible_private_key_file")
            out.append(
                SshTarget(
                    host=name,
                    address=str(h.var("ansible_host") or name),
                    port=int(h.var("ansible_port") or 22),
                    user=h.var("ansible_user") or self.config.user,
                    key=Path(str(key)).expanduser() if key else self.config.key,
                )
            )
        return out

    def run(self, target: SshTarget, command: str, timeout: float | None = None) -> CommandResult:
        started = time.monotonic()
        timeout = timeout or self.config.command_timeout

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
        try:
            client.connect(
                target.address,
                port=target.port,
                username=target.user,
                key_filename=str(target.key) if target.key else None,
                timeout=self.config.connect_timeout,
                banner_timeout=self.config.connect_timeout,
                auth_timeout=self.config.connect_timeout,
                allow_agent=target.key is None,
                look_for_keys=target.key is None,
            )
            _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
            stdout.channel.settimeout(timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
            return done(
                status == 0, status, out, err, None if status == 0 else f"exit {status}: {err.strip()[:200]}"
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
            return done(False, error=f"authentication to {target.host} ({_where(target)}) failed: {exc}")
        except TimeoutError:
            return done(False, error=f"{target.host} ({_where(target)}): timed out", unreachable=True)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            return done(
                False,
                error=f"{target.host} ({_where(target)}): {exc or type(exc).__name__}",
                unreachable=True,
            )
        finally:
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


def _where(t: SshTarget) -> str:
    return t.address if t.port == 22 else f"{t.address}:{t.port}"


def read_versions(client: SshClient, fleet: Fleet, hosts: Sequence[str]) -> dict[str, CommandResult]:
    """What each node's `current` points at, read over SSH (the same truth facts.yml reports)."""
    import shlex

    targets = client.targets(fleet, hosts)
    commands = {
        t.host: f"readlink {shlex.quote(str(fleet[t.host].var('hc_root') or '/opt/host-controller'))}/current"
        for t in targets
    }
    return client.run_many(targets, commands)


def version_of(result: CommandResult) -> str | None:
    text = result.stdout.strip().rstrip("/")
    return text.rsplit("/", 1)[-1] if result.ok and text else None


def probe_runner(client: SshClient, fleet: Fleet):  # type: ignore[no-untyped-def]
    """An ssh probe for fleetctl.health.Prober: host -> (ok, latency ms, error)."""

    def run(
        hosts: list[str], command: str | dict[str, str], timeout: float
    ) -> dict[str, tuple[bool, float, str | None]]:
        results = client.run_many(client.targets(fleet, hosts), command, timeout)
        return {h: (r.ok, r.latency_ms, r.error) for h, r in results.items()}

    return run
