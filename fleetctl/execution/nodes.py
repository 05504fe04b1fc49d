"""Execution nodes: a slice of a batch runs on another machine through ansible-runner's own streaming
protocol (the one AWX's execution nodes use), so Ansible's CPU cost leaves the controller.

    controller: ansible_runner.run(streamer="transmit")  -> ssh node -> `ansible-runner worker`
    controller: ansible_runner.interface.run(streamer="process") <- the worker's event stream

- Before a node's first batch, `ansible-runner worker --worker-info` and `ansible-playbook --version` on
  the node must report this controller's ansible-runner and ansible-core versions; a node that differs is
  refused (ExecutionNodeRefused) before anything runs.
- The worker runs under a small supervisor on the node (standard library only) that puts fleetctl's
  group marker in the environment of the worker and everything it starts, and kills them all when the
  SSH session ends (a cancel ends it from here, a dead fleetctl ends it through the launcher).
- A node that cannot be reached, or whose stream breaks mid-batch (OpenSSH keepalives notice a dead link
  within seconds), makes the hosts without a result fail as unreachable: the run never hangs on it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetctl.config import ExecutionNode
from fleetctl.errors import UsageError
from fleetctl.orphans import MARKER, launcher_command

CONNECT_TIMEOUT = 5  # seconds for the SSH connection to a node
ALIVE_INTERVAL, ALIVE_COUNT = 2, 3  # a silent link is dropped after about 6 s
CHECK_TIMEOUT = 30.0

# Runs on the node: the worker (its stdin/stdout are the SSH channel) with the group marker in its
# environment; when the SSH session ends (our parent changes) every process carrying the marker dies.
SUPERVISOR = r"""
import os, signal, subprocess, sys, time
key, marker, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
env = dict(os.environ, **{key: marker})
env["PATH"] = os.path.dirname(argv[0]) + os.pathsep + env.get("PATH", os.defpath)
child = subprocess.Popen(argv, env=env)
parent = os.getppid()
tag = ("\0%s=%s\0" % (key, marker)).encode()
def marked():
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                with open("/proc/%s/environ" % pid, "rb") as fh:
                    if tag in b"\0" + fh.read():
                        yield int(pid)
            except OSError:
                pass
def kill():
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        for pid in list(marked()):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        end = time.monotonic() + wait
        while time.monotonic() < end and list(marked()):
            child.poll()
            time.sleep(0.1)
while child.poll() is None:
    if os.getppid() != parent:
        kill()
        break
    time.sleep(0.3)
sys.exit(child.wait())
"""


class ExecutionNodeRefused(UsageError):
    """An execution node whose ansible-runner or ansible-core differs from the controller's."""


@dataclass(frozen=True)
class NodeTarget:
    """An execution node with its paths resolved (relative to fleet.yml)."""

    node: ExecutionNode
    key: Path | None = None
    known_hosts: Path | None = None

    @property
    def name(self) -> str:
        return self.node.name


def ssh_argv(target: NodeTarget, remote: Sequence[str]) -> list[str]:
    """`ssh` to the node running `remote` (quoted for the node's shell); host keys are always checked."""
    n = target.node
    argv = [shutil.which("ssh") or "ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    for opt in n.ssh_options:
        argv += ["-o", opt]
    argv += ["-o", f"ConnectTimeout={CONNECT_TIMEOUT}", "-o", f"ServerAliveInterval={ALIVE_INTERVAL}"]
    argv += ["-o", f"ServerAliveCountMax={ALIVE_COUNT}", "-p", str(n.port)]
    if target.key:
        argv += ["-i", str(target.key), "-o", "IdentitiesOnly=yes"]
    if target.known_hosts:
        argv += ["-o", f"UserKnownHostsFile={target.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
    argv.append(f"{n.user}@{n.host}" if n.user else n.host)
    return [*argv, shlex.join(remote)]


def local_versions() -> tuple[str, str]:
    """(ansible-runner, ansible-core) versions of this controller."""
    from importlib.metadata import version

    from ansible.release import __version__ as core

    return version("ansible-runner"), core


_checked: dict[str, str | None] = {}
_check_lock = threading.Lock()


def check_node(target: NodeTarget) -> str | None:
    """None when the node is usable; the reason when it cannot be reached. Raises ExecutionNodeRefused
    when its versions differ. Checked once per node per process."""
    cache_key = f"{target.node.model_dump_json()} {target.key} {target.known_hosts}"
    with _check_lock:
        if cache_key in _checked:
            return _checked[cache_key]
    runner = target.node.ansible_runner
    playbook = (
        os.path.join(os.path.dirname(runner), "ansible-playbook") if "/" in runner else "ansible-playbook"
    )
    remote = ["sh", "-c", f"{shlex.quote(runner)} worker --worker-info && {shlex.quote(playbook)} --version"]
    try:
        out = subprocess.run(
            ssh_argv(target, remote),
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"execution node {target.name} did not answer within {CHECK_TIMEOUT:.0f} s"
    if out.returncode == 255:
        return f"execution node {target.name} unreachable: {_last_line(out.stderr)}"
    runner_v = re.search(r"runner_version:\s*'?([\w.+-]+)", out.stdout)
    core_v = re.search(r"\[core ([\w.+-]+)\]", out.stdout)
    want_runner, want_core = local_versions()
    if out.returncode != 0 or not runner_v or not core_v:
        raise ExecutionNodeRefused(
            f"execution node {target.name}: `{runner} worker --worker-info` failed: "
            f"{_last_line(out.stderr or out.stdout)}",
            f"install ansible-runner {want_runner} and ansible-core {want_core} on the node, or fix "
            "execution.nodes[].ansible_runner in fleet.yml",
        )
    if (runner_v.group(1), core_v.group(1)) != (want_runner, want_core):
        raise ExecutionNodeRefused(
            f"execution node {target.name} runs ansible-runner {runner_v.group(1)} and ansible-core "
            f"{core_v.group(1)}; this controller runs {want_runner} and {want_core}",
            "install the controller's versions on the node (both sides must match)",
        )
    with _check_lock:
        _checked[cache_key] = None
    return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


class RemoteRunner:
    """What Executor expects of ansible-runner's Runner (run, status, rc, config.artifact_dir, stdout),
    with the playbook run by `ansible-runner worker` on an execution node. `lost` says why the hosts
    without a result are unreachable (the node could not be reached, or its stream broke)."""

    def __init__(
        self,
        target: NodeTarget,
        *,
        work_dir: Path,
        playbooks: Path,
        playbook: str,
        hosts: Sequence[str],
        inventory: Sequence[Path],
        vars_file: Path,
        forks: int,
        envvars: dict[str, str],
        ident: str | None,
        marker: str,
        timeout: int | None,
        handle: Callable[[dict[str, Any]], bool],
        cancelled: Callable[[], bool],
    ) -> None:
        self.target, self.work_dir, self.playbooks, self.playbook = target, work_dir, playbooks, playbook
        self.hosts = list(hosts)
        self.inventory, self.vars_file, self.forks, self.envvars = list(inventory), vars_file, forks, envvars
        self.ident = ident or uuid.uuid4().hex
        self.marker, self.timeout, self.handle, self.cancelled = marker, timeout, handle, cancelled
        self.status: str = "unstarted"
        self.rc: int | None = None
        self.lost: str | None = None
        self.stdout = io.StringIO()
        self.config = _Config(str(work_dir / "artifacts" / self.ident))

    def run(self) -> None:
        reason = check_node(self.target)
        if reason is not None:
            self.status, self.lost = "error", reason
            return
        pdd = Path(tempfile.mkdtemp(prefix="transmit-", dir=self.work_dir))
        try:
            self._stream(self._prepare(pdd))
        finally:
            shutil.rmtree(pdd, ignore_errors=True)

    def _prepare(self, pdd: Path) -> dict[str, Any]:
        """The private data dir the worker receives: project (playbooks), inventory, env/extravars."""
        shutil.copytree(self.playbooks, pdd / "project", symlinks=False)
        inv = pdd / "inventory"
        inv.mkdir()
        for i, src in enumerate(self.inventory):
            dest = inv / f"{i:02d}-{src.name}"
            shutil.copytree(src, dest) if src.is_dir() else shutil.copy(src, dest)
        (pdd / "env").mkdir(mode=0o700)
        shutil.copy(self.vars_file, pdd / "env" / "extravars")  # fleetctl's !unsafe-tagged extra vars
        return {
            "private_data_dir": str(pdd),
            "playbook": self.playbook,
            "inventory": str(inv),
            # Exactly these hosts, also when the inventory is the fleet's whole one (not indexed).
            "limit": ",".join(self.hosts) + ",",
            "forks": self.forks,
            "envvars": self.envvars,
            "ident": self.ident,
            "timeout": self.timeout,
            "suppress_env_files": True,
        }

    def _stream(self, kwargs: dict[str, Any]) -> None:
        import ansible_runner

        remote = [self.target.node.python, "-c", SUPERVISOR, MARKER, self.marker]
        remote += [self.target.node.ansible_runner, "worker"]
        proc = subprocess.Popen(
            launcher_command(ssh_argv(self.target, remote)),  # ssh dies with this fleetctl
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, MARKER: self.marker, "ANSIBLE_RUNNER_KEEPALIVE_SECONDS": "2"},
            start_new_session=True,
        )
        assert proc.stdin and proc.stdout and proc.stderr
        err = proc.stderr
        stderr: list[str] = []
        done = threading.Event()
        cancelled = threading.Event()

        def transmit() -> None:
            with contextlib.suppress(OSError, ValueError):  # a dead node: the stream's end says so
                ansible_runner.run(streamer="transmit", _output=proc.stdin, **kwargs)
            with contextlib.suppress(OSError):
                proc.stdin.close()  # type: ignore[union-attr]

        def watch() -> None:
            while not done.wait(0.25):
                if self.cancelled():
                    cancelled.set()
                    _kill_group(proc)
                    return

        def drain() -> None:
            for line in io.TextIOWrapper(err, errors="replace"):
                stderr.append(line)
                del stderr[:-20]

        threads = [threading.Thread(target=f, daemon=True) for f in (transmit, watch, drain)]
        for t in threads:
            t.start()
        processor = ansible_runner.interface.run(
            streamer="process",
            _input=proc.stdout,
            private_data_dir=str(self.work_dir),
            ident=self.ident,
            quiet=True,
            event_handler=self.handle,
        )
        done.set()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
        for t in threads:
            t.join(timeout=5)
        self.stdout = io.StringIO("".join(stderr))
        status = processor.status
        if cancelled.is_set():
            self.status = "canceled"
        elif status in ("successful", "failed", "timeout"):
            self.status = status
        else:
            self.status = "error"
            why = _last_line("".join(stderr)) if stderr else "the worker's stream ended"
            self.lost = f"execution node {self.target.name} lost: {why}"
        self.rc = {"successful": 0, "failed": 2}.get(self.status)


@dataclass
class _Config:
    artifact_dir: str


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
