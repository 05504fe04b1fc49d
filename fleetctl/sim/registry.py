"""The registry of SSH test hosts: what every run created, so that a run killed with SIGKILL is cleaned up.

One JSON record per run (``/run/fleetctl-sshhosts/<run id>.json`` as root, else in the temp dir): its owner
process (pid and start time), namespaces, veths, guard routes and the pids it started. A record whose owner
is gone is stale; :func:`cleanup_stale` tears down what it lists. Owners are usually the process that made
the hosts; :meth:`~fleetctl.sim.sshhosts.SshHosts.detach` hands them to a longer-lived one (the sim server).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetctl.sim import netns, procs


def registry_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/fleetctl-sshhosts")
    return Path(tempfile.gettempdir()) / f"fleetctl-sshhosts-{os.geteuid()}"


@contextlib.contextmanager
def registry_lock() -> Iterator[Path]:
    d = registry_dir()
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(d / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield d
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_json(path: Path, rec: dict[str, Any], mode: int = 0o600) -> None:
    """Write `rec` atomically (best effort: the registry must never break the hosts themselves)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            json.dump(rec, fh, indent=1)
        os.replace(tmp, path)


def cleanup_record(rec: dict[str, Any]) -> None:
    """Kill the record's processes (start times must match) and everything in its namespaces, then delete
    its veths, namespaces and guard routes."""
    ip = netns.ip_bin()
    pids: set[int] = set()
    for item in rec.get("pids", []):
        if procs.same_process(int(item["pid"]), item.get("start")):
            pids.add(int(item["pid"]))
    if ip:
        for ns in rec.get("namespaces", []):
            pids |= netns.netns_pids(ip, ns)
    pids |= procs.descendants(sorted(pids))
    procs.terminate([], pids, [])
    if ip:
        netns.remove_networks(
            ip, rec.get("veths", []), rec.get("namespaces", []), rec.get("guard_routes", [])
        )


def owner_alive(rec: dict[str, Any]) -> bool:
    owner = int(rec.get("owner_pid", 0))
    return bool(owner) and procs.same_process(owner, rec.get("owner_start"))


def cleanup_stale() -> list[str]:
    """Remove what earlier runs whose owning process is gone left behind. Returns their run ids."""
    cleaned: list[str] = []
    d = registry_dir()
    if not d.is_dir():
        return cleaned
    with registry_lock():
        for path in sorted(d.glob("*.json")):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            if owner_alive(rec):
                continue
            cleanup_record(rec)
            path.unlink(missing_ok=True)
            cleaned.append(str(rec.get("run_id", path.stem)))
    return cleaned
