"""Process plumbing for the SSH test hosts: run commands, find processes in /proc, terminate them for sure.

Pids are recorded together with their start time (:func:`proc_start`), so a recycled pid is never killed.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetctl.errors import SimError

INSTALL_HINT = "install OpenSSH: apt-get install -y openssh-server openssh-client"


def which(name: str, *fallbacks: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    return None


def run(argv: Sequence[str], what: str, *, timeout: float = 15.0, check: bool = True) -> str:
    """Run a command and return its stdout; a failure (when `check`) is a SimError naming `what`."""
    try:
        cp = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise SimError(f"{what}: {argv[0]} not found", INSTALL_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise SimError(f"{what}: `{shlex.join(argv)}` timed out after {timeout:g}s") from exc
    if check and cp.returncode != 0:
        detail = (cp.stderr or cp.stdout).strip() or f"exit status {cp.returncode}"
        raise SimError(f"{what}: `{shlex.join(argv)}` failed: {detail}")
    return cp.stdout


def quiet(argv: Sequence[str]) -> bool:
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


def proc_start(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot) or None when it does not exist or is a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int) -> bool:
    return proc_start(pid) is not None


def same_process(pid: int, start: int | None) -> bool:
    """Is `pid` still the process that had start time `start` (and not a zombie)?"""
    return start is not None and proc_start(pid) == start


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


def descendants(roots: Sequence[int]) -> set[int]:
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


def ssh_session_pids(endpoints: set[tuple[str, int]]) -> set[int]:
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


def terminate(
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
        if not any(alive(p) for p in singles) and not _live_in_groups(groups):
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
