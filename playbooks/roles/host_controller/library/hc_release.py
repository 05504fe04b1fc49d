#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Ansible module: stage, activate or query a host-controller release (the fleetctl node contract).

Releases live side by side in <root>/releases/<version>/; <root>/current is a relative symlink to the
active one, switched atomically (symlink to a temporary name, then rename). Activation restarts the
service through the configured service manager and waits until the controller answers with the new
version. Runs on the managed node with the standard library only (Python 3.6+).

A new release is downloaded (module_utils/hc_artifact: one deadline, a size cap, credentials kept to
their origin), checked against its digest, every archive member checked (module_utils/hc_archive),
extracted into a temporary dir inside releases/ and renamed into place: a refused archive fails the
host and leaves `current` untouched.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: hc_release
short_description: Stage, activate or query a host-controller release
options:
  root: {description: hc_root of the node, type: path, required: true}
  version: {description: release version (required for present/active), type: str}
  state: {description: present (stage only), active (stage if needed, switch, restart, wait) or query,
          type: str, choices: [present, active, query], default: active}
  artifact_url: {description: release archive (file://, http(s):// or a path), type: str}
  checksum: {description: "expected archive digest, 'sha256:<hex>'; empty: look it up in checksum_url", type: str}
  checksum_url: {description: "a SHA256SUMS file; empty: SHA256SUMS in the archive's own directory", type: str}
  require_checksum: {description: "refuse an archive fetched over anything but https without a digest",
                     type: bool, default: true}
  download_timeout: {description: seconds for the whole download (SHA256SUMS and archive), type: float,
                     default: 300}
  max_bytes: {description: largest archive accepted, in bytes, type: int, default: 2147483648}
  install_method: {description: archive (unpack artifact_url) or package (the OS package manager), type: str,
                   choices: [archive, package], default: archive}
  package_spec: {description: "pinned package, e.g. host-controller=1.2.0 (apt) or host-controller-1.2.0 (dnf)",
                 type: str}
  artifact_user: {description: user for HTTP basic auth to the artifact store, type: str}
  artifact_password: {description: password or token for the artifact store (never logged), type: str}
  keep: {description: releases kept on disk (never the active one nor the target), type: int, default: 3}
  service_manager: {description: how to restart, type: str, choices: [sim, systemd, none], default: systemd}
  service_name: {description: systemd unit or sim node name, type: str, default: host-controller}
  sim_socket: {description: control socket of the simulated fleet, type: path}
  version_url: {description: URL answering the running version, polled after a restart, type: str}
  wait_timeout: {description: seconds to wait for the controller after a restart, type: float, default: 30}
"""

import os
import shutil
import socket
import tarfile
import tempfile
import time

try:
    from urllib.request import urlopen
except ImportError:  # pragma: no cover - Python 2 nodes are not supported
    urlopen = None

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hc_archive import UnsafeArchive, safe_extract
from ansible.module_utils.hc_artifact import ChecksumError, FetchError, expected_digest, fetch, redact, sha256


def current_version(root):
    try:
        target = os.readlink(os.path.join(root, "current"))
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def install_package(module, spec):
    """Install a pinned package with the node's package manager (the package lays out the release)."""
    if module.check_mode:
        return True
    for tool, argv in (
        ("apt-get", ["apt-get", "install", "-y", "-q", "--allow-downgrades", spec]),
        ("dnf", ["dnf", "install", "-y", spec]),
        ("yum", ["yum", "install", "-y", spec]),
    ):
        path = module.get_bin_path(tool)
        if path:
            rc, out, err = module.run_command(
                [path] + argv[1:], environ_update={"DEBIAN_FRONTEND": "noninteractive"}
            )
            if rc != 0:
                module.fail_json(
                    msg="%s could not install %s: %s" % (tool, spec, (err or out).strip()[-300:])
                )
            return True
    module.fail_json(msg="no supported package manager (apt-get, dnf, yum) on the node for %s" % spec)


def stage(module, root, version):
    """Ensure releases/<version>/ exists. Returns True when it had to be installed."""
    releases = os.path.join(root, "releases")
    target = os.path.join(releases, version)
    if os.path.isdir(target):
        return False
    if module.params["install_method"] == "package":
        install_package(module, module.params["package_spec"] or "host-controller=%s" % version)
        if not os.path.isdir(target):
            module.fail_json(msg="package %s did not install %s" % (module.params["package_spec"], target))
        return True
    url = module.params["artifact_url"]
    if not url:
        module.fail_json(msg="release %s is not on the node and no artifact_url was given" % version)
    if module.check_mode:
        return True
    if not os.path.isdir(releases):
        os.makedirs(releases)
    work = tempfile.mkdtemp(prefix=".stage-%s-" % version, dir=releases)
    try:
        archive = os.path.join(work, "release.tar.gz")
        fetch_verified(module, url, archive)
        tree = os.path.join(work, "tree")
        try:
            safe_extract(archive, tree)
        except UnsafeArchive as exc:
            module.fail_json(msg="refused %s: %s" % (redact(url), exc))
        except (tarfile.TarError, EnvironmentError) as exc:
            module.fail_json(msg="cannot unpack %s: %s" % (redact(url), exc))
        os.rename(tree, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return True


def fetch_verified(module, url, archive):
    """Download the archive within one deadline and check its digest (required unless all-https)."""
    p = module.params
    deadline = time.time() + p["download_timeout"]
    auth = (p["artifact_user"], p["artifact_password"])
    try:
        want, source = expected_digest(
            url,
            p["checksum"],
            p["checksum_url"],
            archive + ".sums",
            *auth,
            timeout=min(60.0, p["download_timeout"]),
        )
    except (ChecksumError, FetchError) as exc:
        module.fail_json(msg=str(exc))
    insecure = not url.lower().startswith("https://")
    if want is None and p["require_checksum"] and insecure:
        module.fail_json(msg=missing_checksum(url, source))
    try:
        secure = fetch(
            url,
            archive,
            *auth,
            timeout=max(0.1, deadline - time.time()),
            max_bytes=p["max_bytes"],
            budget=p["download_timeout"],
        )
    except FetchError as exc:
        module.fail_json(msg=str(exc))
    if want is None and p["require_checksum"] and not secure:
        module.fail_json(msg=missing_checksum(url, "it was redirected off https"))
    if want is not None:
        got = sha256(archive)
        if got != want:
            module.fail_json(
                msg="checksum mismatch for %s: expected sha256:%s (from %s), got sha256:%s"
                % (redact(url), want, source, got)
            )


def missing_checksum(url, why):
    return (
        "no checksum for %s (%s): set hc_artifact_checksum to 'sha256:<hex>', publish a SHA256SUMS next to "
        "the archive (or point hc_artifact_checksum_url at one), or serve artifacts over https; to accept "
        "unverified archives set `artifacts: {require_checksum: false}` in fleet.yml" % (redact(url), why)
    )


def prune(root, keep, protect):
    """Keep the `keep` most recently activated releases; never remove a protected one."""
    releases = os.path.join(root, "releases")
    try:
        names = [n for n in os.listdir(releases) if not n.startswith(".")]
    except OSError:
        return []

    def activated(name):
        path = os.path.join(releases, name)
        marker = os.path.join(path, ".activated")
        return os.path.getmtime(marker if os.path.exists(marker) else path)

    names.sort(key=activated, reverse=True)
    removed = []
    for name in names[max(keep, 1) :]:
        if name not in protect:
            shutil.rmtree(os.path.join(releases, name), ignore_errors=True)
            removed.append(name)
    return removed


def switch(root, version):
    """Point `current` at releases/<version> atomically."""
    tmp = os.path.join(root, ".current-%d" % os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("releases", version), tmp)
    os.rename(tmp, os.path.join(root, "current"))
    with open(os.path.join(root, "releases", version, ".activated"), "w") as fh:
        fh.write("%f\n" % time.time())


def restart(module):
    manager = module.params["service_manager"]
    name = module.params["service_name"]
    if manager == "systemd":
        rc, out, err = module.run_command(["systemctl", "restart", name])
        if rc != 0:
            module.fail_json(msg="systemctl restart %s failed: %s" % (name, (err or out).strip()))
    elif manager == "sim":
        path = module.params["sim_socket"]
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(10)
            conn.connect(path)
            conn.sendall(("restart %s\n" % name).encode())
            reply = conn.makefile().readline().strip()
            conn.close()
        except (OSError, socket.timeout) as exc:
            module.fail_json(msg="sim service manager at %s: %s" % (path, exc))
        if not reply.startswith("ok"):
            module.fail_json(msg="sim service manager could not restart %s: %s" % (name, reply))


def running_version(url, timeout):
    try:
        return urlopen(url, timeout=timeout).read().decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - any failure means "not answering yet"
        return None


def wait_for(module, version):
    url = module.params["version_url"]
    if not url:
        return
    deadline = time.time() + module.params["wait_timeout"]
    last = None
    while time.time() < deadline:
        last = running_version(url, min(2.0, max(0.1, deadline - time.time())))
        if last == version:
            return
        time.sleep(0.2)
    module.fail_json(
        msg="controller did not answer %s within %gs after restart (last answer: %s)"
        % (version, module.params["wait_timeout"], last or "none"),
    )


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path", required=True),
            version=dict(type="str"),
            state=dict(type="str", default="active", choices=["present", "active", "query"]),
            artifact_url=dict(type="str"),
            checksum=dict(type="str", default=""),
            checksum_url=dict(type="str", default=""),
            require_checksum=dict(type="bool", default=True),
            download_timeout=dict(type="float", default=300.0),
            max_bytes=dict(type="int", default=2 << 30),
            install_method=dict(type="str", default="archive", choices=["archive", "package"]),
            package_spec=dict(type="str"),
            artifact_user=dict(type="str"),
            artifact_password=dict(type="str", no_log=True),
            keep=dict(type="int", default=3),
            service_manager=dict(type="str", default="systemd", choices=["sim", "systemd", "none"]),
            service_name=dict(type="str", default="host-controller"),
            sim_socket=dict(type="path"),
            version_url=dict(type="str"),
            wait_timeout=dict(type="float", default=30.0),
        ),
        required_if=[("state", "present", ["version"]), ("state", "active", ["version"])],
        supports_check_mode=True,
    )
    p = module.params
    root, version, state = p["root"], p["version"], p["state"]
    previous = current_version(root)
    fail = module.fail_json

    def fail_with_state(**kwargs):
        # Every failure says what the node runs now and ran before, so fleetctl's ledger stays true.
        kwargs.setdefault("hc_previous", previous)
        kwargs.setdefault("hc_version", current_version(root))
        fail(**kwargs)

    module.fail_json = fail_with_state
    if state == "query":
        module.exit_json(changed=False, hc_version=previous, hc_previous=previous)
    if p["download_timeout"] <= 0 or p["max_bytes"] <= 0:
        module.fail_json(msg="hc_download_timeout and hc_artifact_max_bytes must be positive")
    if version in ("", ".", "..") or "/" in version:
        module.fail_json(msg="no valid version given (%r): pass hc_version or hc_rollback_version" % version)

    changed = stage(module, root, version)
    if state == "active":
        up_to_date = previous == version and (
            not p["version_url"] or running_version(p["version_url"], 2.0) == version
        )
        if not up_to_date:
            changed = True
            if not module.check_mode:
                switch(root, version)
                restart(module)
                wait_for(module, version)
    removed = [] if module.check_mode else prune(root, p["keep"], {version, previous, current_version(root)})
    result = dict(changed=changed or bool(removed), hc_previous=previous, hc_pruned=removed)
    if state == "active":
        result["hc_version"] = current_version(root)  # the report fleetctl records: what `current` says
    else:
        result["hc_staged"] = version
    module.exit_json(**result)


if __name__ == "__main__":
    main()
