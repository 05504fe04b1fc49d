"""OpenSSH side of the SSH test hosts: keys, sshd_config and ssh_config, starting sshd, waiting until a
login works, logs."""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fleetctl.errors import SimError
from fleetctl.sim.procs import INSTALL_HINT, run, which

READY_TIMEOUT = 15.0


def sshd_bin() -> str | None:
    return which("sshd", "/usr/sbin/sshd")


def ssh_bin() -> str | None:
    return which("ssh", "/usr/bin/ssh")


def keygen_bin() -> str | None:
    return which("ssh-keygen", "/usr/bin/ssh-keygen")


def keygen(path: Path, comment: str) -> None:
    """A new ed25519 key pair at `path` and `path`.pub (existing files are replaced)."""
    exe = keygen_bin()
    if exe is None:
        raise SimError("ssh-keygen is not installed", INSTALL_HINT)
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    run([exe, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], "ssh-keygen")


def read_pub(key: Path) -> tuple[str, str]:
    """("ssh-ed25519 AAAA..." without comment, "SHA256:..." fingerprint) of a key's .pub file."""
    pub = key.with_name(key.name + ".pub")
    kind, b64 = pub.read_text().split()[:2]
    fp = run([keygen_bin() or "ssh-keygen", "-lf", str(pub)], "ssh-keygen -lf").split()[1]
    return f"{kind} {b64}", fp


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) or "(sshd log is empty)"
    except OSError:
        return f"(no sshd log at {path})"


def sshd_config(name: str, address: str, port: int, host_dir: Path, authorized_keys: Path) -> str:
    """sshd_config of one test host: key auth only, its own host key, pid file and log in `host_dir`."""
    listen = address if port == 22 else f"{address}:{port}"
    return "\n".join(
        [
            "# fleetctl SSH test host " + name,
            f"ListenAddress {listen}",
            f"Port {port}",
            "AddressFamily inet",
            f"HostKey {host_dir / 'ssh_host_ed25519_key'}",
            f"PidFile {host_dir / 'sshd.pid'}",
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


def write_ssh_config(
    path: Path,
    title: str,
    hosts: Sequence[tuple[str, str, int]],
    *,
    user: str,
    client_key: Path,
    known_hosts: Path,
    alive: tuple[int, int],
) -> None:
    """An ssh_config for `ssh -F path NAME`: (name, address, port) hosts, our key and known_hosts only."""
    lines = [f"# {title}; use: ssh -F {path} NAME"]
    for name, address, port in hosts:
        lines += [f"Host {name} {address}", f"  HostName {address}", f"  Port {port}", f"  User {user}"]
    lines += [
        "Host *",
        f"  IdentityFile {client_key}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {known_hosts}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        "  UpdateHostKeys no",
        "  BatchMode yes",
        "  ConnectTimeout 5",
        f"  ServerAliveInterval {alive[0]}",
        f"  ServerAliveCountMax {alive[1]}",
        "",
    ]
    path.write_text("\n".join(lines))


def start(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start sshd (`argv`, already wrapped for its namespace) in its own session, logging to log_path."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )


_SSH_POPEN: dict[str, Any] = {
    "stdin": subprocess.DEVNULL,
    "stdout": subprocess.DEVNULL,
    "stderr": subprocess.PIPE,
    "text": True,
}

# (name, address, port, sshd log, host dir, sshd process)
ReadyHost = tuple[str, str, int, Path, Path, "subprocess.Popen[bytes]"]


def wait_ready(hosts: Sequence[ReadyHost], login_argv: Callable[[str], list[str]]) -> None:
    """Wait until every sshd accepts TCP from here and then a real login (`login_argv(name)`, run in
    parallel, retried) succeeds; a SimError with the sshd log when one does not within READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    for name, address, port, log_path, host_dir, proc in hosts:
        while True:  # 1. TCP from the root namespace
            if proc.poll() is not None:
                raise SimError(
                    f"sshd for {name} exited with status {proc.returncode}:\n{tail(log_path)}",
                    f"config: {host_dir / 'sshd_config'}",
                )
            try:
                with socket.create_connection((address, port), timeout=0.5):
                    break
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise SimError(
                        f"sshd for {name} does not accept connections on {address}:{port} "
                        f"after {READY_TIMEOUT:g}s ({exc}):\n{tail(log_path)}",
                        f"config: {host_dir / 'sshd_config'}",
                    ) from exc
                time.sleep(0.02)
    pending = list(hosts)  # 2. a real login on every host, in parallel; retried until the deadline
    while pending:
        runs = []
        for h in pending:
            argv = login_argv(h[0])
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
        for (name, address, port, log_path, _, proc), argv, err in failed:
            final = "Permission denied" in err or "Host key verification failed" in err
            if final or time.monotonic() > deadline or proc.poll() is not None:
                raise SimError(
                    f"`ssh ... true` against {name} ({address}:{port}) failed: {err}\n"
                    f"sshd log:\n{tail(log_path)}",
                    f"try: {shlex.join(argv)}",
                )
        pending = [h for h, _, _ in failed]
        if pending:
            time.sleep(0.05)
