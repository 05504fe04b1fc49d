"""ansible-runner adapter: run one of fleetctl's playbooks on a list of hosts and get typed per-host
results, streamed while Ansible runs, with a cancel that really stops it (ansible-runner kills the whole
process group). Runner artifacts are rotated, so they do not grow without bound."""

from __future__ import annotations

import os
import shlex
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from fleetctl.ansible_env import ANSIBLE_ENV, minimal_env, path_with_ansible, write_vars
from fleetctl.inventory_index import write_limited
from fleetctl.orphans import MARKER, AnsibleGroup, launcher_command, terminate
from fleetctl.units import BadNodeVersion, node_version, shown

HostStatus = Literal["ok", "failed", "unreachable", "cancelled"]


class GroupJournal(Protocol):
    """Where an Executor records the Ansible process groups it runs (the journal's AnsibleGroups)."""

    def add(self, group: AnsibleGroup) -> None: ...
    def update(self, group: AnsibleGroup) -> None: ...
    def clear(self, group: AnsibleGroup) -> None: ...


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
    # The inventory of exactly these hosts (inventory_index.limited_inventory), or None: the full sources.
    inventory_for: Callable[[Sequence[str]], dict[str, Any] | None] | None = None


class Executor:
    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self.journal: GroupJournal | None = None
        self.run_id: str | None = None

    def track(self, journal: GroupJournal, run_id: str | None = None) -> Executor:
        """Record each Ansible process group in `journal` while it runs (so that a dead fleetctl's
        can be ended by the next one), on behalf of `run_id`."""
        self.journal, self.run_id = journal, run_id
        return self

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
        node: Any = None,
    ) -> Execution:
        """Run `playbook` (a file in the playbooks dir) on exactly `hosts`. Every host gets one HostResult.

        `on_result` is called (from this thread) as each host finishes: on failure, or when the task that
        reports the node's version returns. Setting `cancel` stops Ansible within about a second. Ansible
        dies with this process (see orphans.py); a version a node reports is checked (node_version).
        With `node` (execution.nodes.NodeTarget) the playbook runs on that execution node.
        """
        s = self.settings
        hosts = list(dict.fromkeys(hosts))
        results: dict[str, HostResult] = {}
        if not hosts:
            return Execution(playbook, "successful", 0, results)
        s.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _remove_orphans(s.work_dir)
        limit_file = _private_dir(s.work_dir) / f"limit-{os.getpid()}-{threading.get_ident()}"
        limit_file.write_text("".join(f"{h}\n" for h in hosts))
        # Extra vars go through a private file, not the command line (which `ps` shows to everyone).
        vars_file = limit_file.with_name(limit_file.name.replace("limit-", "vars-") + ".yml")
        write_vars(vars_file, s.extravars, extravars or {})
        inventory: list[Path] = list(s.inventory)
        limited = s.inventory_for(hosts) if s.inventory_for else None
        inv_file = limit_file.with_name(limit_file.name.replace("limit-", "inv-") + ".yml")
        if limited is not None:  # Ansible parses the hosts of this batch, not the whole fleet
            write_limited(inv_file, limited)
            inventory = [inv_file]
        pending = {h: _Tracker() for h in hosts}
        group = AnsibleGroup.new(playbook, hosts, self.run_id)

        def emit(result: HostResult) -> None:
            if result.host in results or result.host not in pending:
                return
            results[result.host] = result
            if on_result:
                on_result(result)

        def note_group() -> None:
            if group.pid is None and group.find_leader() and self.journal:
                self.journal.update(group)

        def handle(event: dict[str, Any]) -> bool:
            note_group()
            data = event.get("event_data") or {}
            host = data.get("host")
            kind = event.get("event", "")
            if host not in pending:
                return True
            res = data.get("res") or {}
            tracker = pending[host]
            if "hc_previous" in res and tracker.previous is None and tracker.bad is None:
                tracker.previous, tracker.bad = _checked(res["hc_previous"])
            if "hc_version" in res and tracker.bad is None:
                tracker.version, tracker.bad = _checked(res["hc_version"])
            if tracker.bad is not None and kind in ("runner_on_ok", "runner_on_failed"):
                emit(
                    HostResult(host, "failed", None, tracker.changed or bool(res.get("changed")), tracker.bad)
                )
            elif kind == "runner_on_ok":
                tracker.changed |= bool(res.get("changed"))
                if "hc_version" in res:
                    emit(HostResult(host, "ok", tracker.version, tracker.changed, previous=tracker.previous))
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                error = _error_text(res, data)
                emit(HostResult(host, "failed", tracker.version, tracker.changed, error, tracker.previous))
            elif kind == "runner_on_unreachable":
                emit(HostResult(host, "unreachable", tracker.version, False, _error_text(res, data)))
            return True

        def cancelled() -> bool:
            note_group()
            return cancel is not None and cancel.is_set()

        if self.journal:
            self.journal.add(group)
        try:
            runner = self._runner(
                playbook,
                hosts,
                forks,
                limit_file,
                vars_file,
                ident,
                group,
                handle,
                cancelled,
                inventory,
                node,
            )
            runner.run()
        finally:
            # A cancel kills the playbook's process group, not its workers (each in a session of its
            # own) nor their modules: end them, and wait, before anyone looks at the hosts.
            survivors = terminate(group)
            limit_file.unlink(missing_ok=True)
            vars_file.unlink(missing_ok=True)
            inv_file.unlink(missing_ok=True)
            if self.journal and not survivors:  # else the record stays: the next lock holder reaps it
                self.journal.clear(group)
        status, rc = runner.status, runner.rc
        tail = None
        if status not in ("successful", "canceled"):
            tail = _stdout_tail(runner)
        lost = getattr(runner, "lost", None)  # the execution node could not be reached, or was lost
        for host, tracker in pending.items():
            if host in results:
                continue
            if lost and status != "canceled":
                emit(HostResult(host, "unreachable", tracker.version, tracker.changed, lost))
            elif tracker.bad is not None:
                emit(HostResult(host, "failed", None, tracker.changed, tracker.bad))
            elif status == "canceled":
                emit(HostResult(host, "cancelled", tracker.version, tracker.changed, "cancelled"))
            elif status == "successful":
                emit(HostResult(host, "ok", tracker.version, tracker.changed))
            else:
                error = f"ansible-playbook {status} (rc={rc}) before this host finished: {tail}"
                emit(HostResult(host, "failed", tracker.version, tracker.changed, error))
        return Execution(playbook, status, rc, results, Path(runner.config.artifact_dir))

    def _runner(
        self,
        playbook: str,
        hosts: list[str],
        forks: int,
        limit_file: Path,
        vars_file: Path,
        ident: str | None,
        group: AnsibleGroup,
        handle: Callable[[dict[str, Any]], bool],
        cancelled: Callable[[], bool],
        inventory: Sequence[Path],
        node: Any = None,
    ) -> Any:
        """ansible-runner's Runner, prepared as ansible_runner.run would, then: a minimal environment
        (ansible_env.minimal_env) and the command under the launcher that dies with us (orphans.py).
        With `node`: a RemoteRunner, the same playbook through ansible-runner worker on that node."""
        from ansible_runner import Runner
        from ansible_runner.config.runner import RunnerConfig

        s = self.settings
        if node is not None:
            from fleetctl.execution.nodes import RemoteRunner

            return RemoteRunner(
                node,
                work_dir=s.work_dir,
                playbooks=s.playbooks,
                playbook=playbook,
                hosts=hosts,
                inventory=inventory,
                vars_file=vars_file,
                forks=max(1, min(forks, len(hosts))),
                envvars={**ANSIBLE_ENV, **s.envvars, MARKER: group.marker},
                ident=ident,
                marker=group.marker,
                timeout=s.timeout,
                handle=handle,
                cancelled=cancelled,
            )
        explicit = {**ANSIBLE_ENV, "PATH": path_with_ansible(), **s.envvars, MARKER: group.marker}
        config = RunnerConfig(
            private_data_dir=str(s.work_dir),
            project_dir=str(s.playbooks),
            playbook=playbook,
            inventory=[str(p) for p in inventory],
            # One argv item, but Ansible splits a limit on whitespace unless it holds a comma.
            limit=f"@{limit_file},",
            forks=max(1, min(forks, len(hosts))),
            cmdline=f"-e {shlex.quote('@' + str(vars_file))}",  # split with shlex by ansible-runner
            envvars=explicit,
            ident=ident,
            rotate_artifacts=s.keep_artifacts,
            quiet=True,
            suppress_env_files=True,
            timeout=s.timeout,
        )
        config.prepare()
        config.env = minimal_env(config.env, explicit)
        config.command = launcher_command(config.command)
        return Runner(config, event_handler=handle, cancel_callback=cancelled)


@dataclass
class _Tracker:
    version: str | None = None
    previous: str | None = None
    changed: bool = False
    bad: str | None = None  # the node reported a version that is not plain: why the host failed


def _checked(raw: object) -> tuple[str | None, str | None]:
    """(version, None) for a plain version or nothing; (None, error) for anything else a node says."""
    if raw is None:
        return None, None
    try:
        return node_version(raw), None
    except BadNodeVersion:
        return None, f"node reports an invalid version {shown(raw)}"


def _private_dir(work_dir: Path) -> Path:
    """Where limit files go: the work dir, unless its path holds a comma (Ansible splits a limit on
    commas); then a private dir of its own under the temp dir."""
    if "," not in str(work_dir):
        return work_dir
    path = Path(tempfile.gettempdir()) / f"fleetctl-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.is_symlink() or path.stat().st_uid != os.getuid():
        raise OSError(f"{path} is not a private directory of this user")
    return path


def _remove_orphans(work_dir: Path) -> None:
    """Limit and vars files of a process that died (kill -9) before it could remove them."""
    for path in [*work_dir.glob("limit-*"), *work_dir.glob("vars-*"), *work_dir.glob("inv-*")]:
        pid = path.name.split("-")[1]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)


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
