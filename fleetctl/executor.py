"""ansible-runner adapter: run one of fleetctl's playbooks on a list of hosts and get typed per-host
results, streamed while Ansible runs, with a cancel that really stops it (ansible-runner kills the whole
process group). Runner artifacts are rotated, so they do not grow without bound."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

HostStatus = Literal["ok", "failed", "unreachable", "cancelled"]

# Quiet, predictable Ansible: fleetctl renders progress itself.
ANSIBLE_ENV = {
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_DEPRECATION_WARNINGS": "False",
    "ANSIBLE_LOCALHOST_WARNING": "False",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
    "ANSIBLE_SYSTEM_WARNINGS": "False",
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    # Without it, Ansible's paramiko connection asks "continue connecting?" for a host missing from
    # known_hosts, and nobody answers under ansible-runner: the run would hang. With it the host is
    # refused at once (unreachable). Harmless for ssh and local.
    "ANSIBLE_USE_PERSISTENT_CONNECTIONS": "True",
}


@dataclass(frozen=True)
class HostResult:
    host: str
    status: HostStatus
    version: str | None = None
    changed: bool = False
    error: str | None = None
    previous: str | None = None  # what `current` pointed at before this run touched it

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "status": self.status,
            "version": self.version,
            "previous": self.previous,
            "changed": self.changed,
            "error": self.error,
        }


@dataclass
class Execution:
    playbook: str
    status: str  # ansible-runner's: successful | failed | canceled | timeout
    rc: int | None
    results: dict[str, HostResult] = field(default_factory=dict)
    artifacts: Path | None = None

    @property
    def cancelled(self) -> bool:
        return self.status == "canceled"


@dataclass(frozen=True)
class ExecutorSettings:
    inventory: Sequence[Path]
    playbooks: Path
    work_dir: Path  # runner's private data dir; artifacts are kept for the last `keep_artifacts` runs
    extravars: dict[str, Any] = field(default_factory=dict)
    envvars: dict[str, str] = field(default_factory=dict)
    keep_artifacts: int = 10
    timeout: int | None = None  # seconds for the whole playbook run


class Executor:
    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    def run(
        self,
        playbook: str,
        hosts: Sequence[str],
        *,
        forks: int = 20,
        extravars: dict[str, Any] | None = None,
        on_result: Callable[[HostResult], None] | None = None,
        cancel: threading.Event | None = None,
        ident: str | None = None,
    ) -> Execution:
        """Run `playbook` (a file in the playbooks dir) on exactly `hosts`. Every host gets one HostResult.

        `on_result` is called (from this thread) as each host finishes: on failure, or when the task that
        reports the node's version returns. Setting `cancel` stops Ansible within about a second.
        """
        import ansible_runner

        s = self.settings
        hosts = list(dict.fromkeys(hosts))
        results: dict[str, HostResult] = {}
        if not hosts:
            return Execution(playbook, "successful", 0, results)
        s.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _remove_orphans(s.work_dir)
        limit_file = s.work_dir / f"limit-{os.getpid()}-{threading.get_ident()}"
        limit_file.write_text("".join(f"{h}\n" for h in hosts))
        # Extra vars go through a private file, not the command line (which `ps` shows to everyone).
        vars_file = limit_file.with_name(limit_file.name.replace("limit-", "vars-") + ".json")
        fd = os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({**s.extravars, **(extravars or {})}, fh)
        pending = {h: _Tracker() for h in hosts}

        def emit(result: HostResult) -> None:
            if result.host in results or result.host not in pending:
                return
            results[result.host] = result
            if on_result:
                on_result(result)

        def handle(event: dict[str, Any]) -> bool:
            data = event.get("event_data") or {}
            host = data.get("host")
            kind = event.get("event", "")
            if host not in pending:
                return True
            res = data.get("res") or {}
            tracker = pending[host]
            if "hc_previous" in res and tracker.previous is None:
                tracker.previous = res["hc_previous"]
            if kind == "runner_on_ok":
                tracker.changed |= bool(res.get("changed"))
                if "hc_version" in res:
                    tracker.version = res.get("hc_version")
                    emit(HostResult(host, "ok", tracker.version, tracker.changed, previous=tracker.previous))
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                emit(
                    HostResult(
                        host,
                        "failed",
                        res.get("hc_version", tracker.version),
                        tracker.changed,
                        _error_text(res, data),
                        tracker.previous,
                    )
                )
            elif kind == "runner_on_unreachable":
                emit(HostResult(host, "unreachable", tracker.version, False, _error_text(res, data)))
            return True

        runner = ansible_runner.run(
            private_data_dir=str(s.work_dir),
            project_dir=str(s.playbooks),
            playbook=playbook,
            inventory=[str(p) for p in s.inventory],
            limit=f"@{limit_file}",
            forks=max(1, min(forks, len(hosts))),
            cmdline=f"-e @{vars_file}",
            envvars={**ANSIBLE_ENV, "PATH": _path_with_ansible(), **s.envvars},
            ident=ident,
            rotate_artifacts=s.keep_artifacts,
            quiet=True,
            suppress_env_files=True,
            event_handler=handle,
            cancel_callback=(lambda: cancel.is_set()) if cancel is not None else (lambda: False),
            timeout=s.timeout,
        )
        limit_file.unlink(missing_ok=True)
        vars_file.unlink(missing_ok=True)
        status, rc = runner.status, runner.rc
        tail = None
        if status not in ("successful", "canceled"):
            tail = _stdout_tail(runner)
        for host, tracker in pending.items():
            if host in results:
                continue
            if status == "canceled":
                emit(HostResult(host, "cancelled", tracker.version, tracker.changed, "cancelled"))
            elif status == "successful":
                emit(HostResult(host, "ok", tracker.version, tracker.changed))
            else:
                emit(
                    HostResult(
                        host,
                        "failed",
                        tracker.version,
                        tracker.changed,
                        f"ansible-playbook {status} (rc={rc}) before this host finished: {tail}",
                    )
                )
        return Execution(playbook, status, rc, results, Path(runner.config.artifact_dir))


@dataclass
class _Tracker:
    version: str | None = None
    previous: str | None = None
    changed: bool = False


def _remove_orphans(work_dir: Path) -> None:
    """Limit and vars files of a process that died (kill -9) before it could remove them."""
    for path in list(work_dir.glob("limit-*")) + list(work_dir.glob("vars-*")):
        pid = path.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)


def _path_with_ansible() -> str:
    """PATH with fleetctl's own environment first, so its ansible-playbook runs (a venv need not be active)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])


def _error_text(res: dict[str, Any], data: dict[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("module_stderr") or res.get("exception") or "failed"
    text = " ".join(str(msg).split())
    task = data.get("task")
    return f"{task}: {text}"[:500] if task else text[:500]


def _stdout_tail(runner: Any) -> str:
    try:
        lines = [ln.strip() for ln in runner.stdout.read().splitlines() if ln.strip()]
    except Exception:  # noqa: BLE001 - best effort for an error message
        return "no output"
    interesting = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()] or lines
    return " | ".join(interesting[-2:])[:400] or "no output"
