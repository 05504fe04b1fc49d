"""Release artifacts of the simulated host controller: tarballs, SHA256SUMS, and releases on nodes.

A release is three files (`manifest.json`, `VERSION`, `bin/host-controller`). The manifest's `hang_after`
is what makes a build faulty: the sim server reads it from the release a node runs, and nothing else.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

COMPONENT = "host-controller"
HEALTHY_VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
FAULTY_VERSION = "2.0.0"
INITIAL_VERSION = "1.0.0"
_EPOCH = 1_700_000_000  # fixed mtime: the same inputs always give the same bytes (and checksums)


def release_files(version: str, hang_after: float | None) -> dict[str, tuple[bytes, int]]:
    """The files of one release: relative path -> (content, mode)."""
    manifest: dict[str, object] = {"name": COMPONENT, "version": version, "hang_after": hang_after}
    if hang_after is not None:  # the faulty build also blocks under morning load (`fleetctl sim load`)
        manifest["fails_under_load"] = True
    script = f'#!/bin/sh\n# placeholder for the simulated host controller\necho "{COMPONENT} {version}"\n'
    return {
        "manifest.json": (json.dumps(manifest, indent=2).encode() + b"\n", 0o644),
        "VERSION": (f"{version}\n".encode(), 0o644),
        "bin/host-controller": (script.encode(), 0o755),
    }


def artifact_name(version: str) -> str:
    return f"{COMPONENT}-{version}.tar.gz"


def build_tarball(version: str, hang_after: float | None) -> bytes:
    """A reproducible .tar.gz of the release, members at the top level (no leading directory)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirinfo = tarfile.TarInfo("bin")
        dirinfo.type, dirinfo.mode, dirinfo.mtime = tarfile.DIRTYPE, 0o755, _EPOCH
        tar.addfile(dirinfo)
        for path, (data, mode) in sorted(release_files(version, hang_after).items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, _EPOCH
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def write_artifacts(directory: Path, hang_after: float) -> dict[str, str]:
    """Write the healthy releases and the faulty one (hanging after `hang_after` s), plus SHA256SUMS.

    Returns version -> sha256 hex digest.
    """
    directory.mkdir(parents=True, exist_ok=True)
    sums: dict[str, str] = {}
    for version in (*HEALTHY_VERSIONS, FAULTY_VERSION):
        data = build_tarball(version, hang_after if version == FAULTY_VERSION else None)
        _atomic_write(directory / artifact_name(version), data)
        sums[version] = hashlib.sha256(data).hexdigest()
    write_checksums(directory)
    return sums


def publish(directory: Path, version: str, data: bytes) -> str:
    """Put an archive into the store as the release `version` and list it in SHA256SUMS (the way a
    build pipeline publishes). Returns its sha256 hex digest."""
    _atomic_write(directory / artifact_name(version), data)
    return write_checksums(directory)[artifact_name(version)]


def write_checksums(directory: Path) -> dict[str, str]:
    """(Re)write SHA256SUMS ("<hex>  <name>" lines, as sha256sum writes them) for every archive in
    `directory`. The nodes check every archive against it (hc_release). Returns name -> hex digest."""
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("*.tar.gz"))}
    _atomic_write(directory / "SHA256SUMS", "".join(f"{d}  {n}\n" for n, d in sums.items()).encode())
    return sums


def write_release(node_root: Path, version: str, hang_after: float | None) -> Path:
    """Lay a release out as its tarball would extract, at <node_root>/releases/<version>/."""
    target = node_root / "releases" / version
    for path, (data, mode) in release_files(version, hang_after).items():
        dest = target / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        dest.chmod(mode)
    return target


def install_release(node_root: Path, artifact: Path) -> str:
    """Extract a release tarball into <node_root>/releases/<version>/ (version from its manifest)."""
    with tarfile.open(artifact) as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise ValueError(f"{artifact} has no manifest.json")
        version = str(json.load(member)["version"])
        tar.extractall(node_root / "releases" / version, filter="data")
    return version


def switch_release(node_root: Path, version: str) -> None:
    """Point <node_root>/current at releases/<version> atomically (relative symlink, then rename)."""
    tmp = node_root / f".current-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(os.path.join("releases", version), tmp)
    os.replace(tmp, node_root / "current")


def current_version(node_root: Path) -> str | None:
    """The version `current` points at on disk, or None when there is no (valid) link."""
    try:
        target = os.readlink(node_root / "current")
    except OSError:
        return None
    return os.path.basename(target.rstrip("/")) or None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
