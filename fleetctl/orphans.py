"""Ansible must not outlive the fleetctl that started it.

Two defences, because a `kill -9` of fleetctl gives it no chance to clean up:

- every ansible-playbook runs under a tiny launcher (`launch`) that asks the kernel for a parent-death
  signal (prctl PR_SET_PDEATHSIG) and, when its parent dies (or its pty hangs up), kills its whole
  process group: the playbook, its forks and the modules they run;
- every Ansible process group is recorded in the journal (`AnsibleGroup`, with a random marker set in
  the environment of every process of the group) before it starts, and `reap` ends and waits for the
  groups of a dead owner on this machine before anyone reads or touches a host.

This module is imported by the launcher in a fresh interpreter: keep its imports light.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

MARKER = "FLEETCTL_ANSIBLE_GROUP"  # set in the environment of every process an Executor starts
PR_SET_PDEATHSIG = 1
GRACE = 3.0  # seconds between SIGTERM and SIGKILL
WAIT = 30.0  # seconds to wait for killed processes to be gone


# -- what the journal records ------------------------------------------------------------------------
@dataclass
class AnsibleGroup:
    """One ansible-playbook process group started by a fleetctl process on `hostname`."""

    marker: str
    hostname: str
    boot_id: str | None
    owner_pid: int
    owner_start: int | None
    playbook: str
    hosts: list[str]
    run_id: str | None = None
    pgid: int | None = None  # the launcher's pid (it leads its own session); known once it runs
    pid: int | None = None
    start: int | None = None  # the launcher's start time, in clock ticks since boot

    @classmethod
    def new(cls, playbook: str, hosts: Sequence[str], run_id: str | None = None) -> AnsibleGroup:
        me = os.getpid()
        return cls(
            marker=secrets.token_hex(12),
            hostname=socket.gethostname(),
            boot_id=boot_id(),
            owner_pid=me,
            owner_start=start_time(me),
            playbook=playbook,
            hosts=list(hosts),
            run_id=run_id,
        )

    def find_leader(self) -> bool:
        """Fill in pgid/pid/start from the launcher (our child carrying the marker). True once known."""
        if self.pid is not None:
            return True
        me = os.getpid()
        for pid in _pids():
            st = _stat(pid)
            if st and st.ppid == me and _has_marker(pid, self.marker):
                self.pid, self.pgid, self.start = pid, st.pgrp, st.start
                return True
        return False

    def owner_alive(self) -> bool:
        """The fleetctl process that started the group still runs (same pid, same start time)."""
        if self.hostname != socket.gethostname() or self.boot_id != boot_id():
            return False
        st = _stat(self.owner_pid)
        return bool(
            st and st.state not in "ZX" and (self.owner_start is None or st.start == self.owner_start)
        )

    def members(self) -> list[int]:
        """Live processes of this group: they carry its marker, inherited through every fork and exec
        (so a recycled pid never matches). Not the process group: Ansible's workers setsid()."""
        if self.hostname != socket.gethostname() or self.boot_id != boot_id():
            return []  # another machine, or this one rebooted since: nothing of it can run here
        return marked(self.marker)

    def describe(self) -> str:
        what = f"ansible {self.playbook} on {len(self.hosts)} host(s)"
        return f"{what} (pgid {self.pgid or '?'}, started by pid {self.owner_pid} on {self.hostname})"


# -- ending orphans ----------------------------------------------------------------------------------
def terminate(group: AnsibleGroup, grace: float = GRACE, wait: float = WAIT) -> list[int]:
    """SIGTERM every process of the group, SIGKILL what is left after `grace`, and wait (up to `wait`)
    until none runs. Returns the pids still running at the end (empty when it worked)."""
    killed: set[int] = set()
    deadline = time.monotonic() + grace
    sig = signal.SIGTERM
    while True:
        alive = group.members()
        if not alive:
            return []
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                return alive
            sig, deadline = signal.SIGKILL, time.monotonic() + wait
            killed.clear()
        for pid in alive:
            if pid not in killed:  # new members (a fork) get the signal too
                _signal(pid, sig)
                killed.add(pid)
        time.sleep(0.05)


def reap(
    groups: Iterable[AnsibleGroup],
    clear: Callable[[AnsibleGroup], None],
    notice: Callable[[str], None] | None = None,
) -> list[AnsibleGroup]:
    """End and wait for every group whose owner is dead on this machine, then forget it (`clear`).
    Groups of a live owner are left alone; groups started on another machine are only reported."""
    ended = []
    for group in groups:
        if group.owner_alive():
            continue
        if group.hostname != socket.gethostname():
            if notice:
                notice(f"cannot end {group.describe()}: it runs on another machine")
            continue
        left = terminate(group) if group.members() else []
        if left:
            raise OSError(f"{group.describe()} did not stop: pids {left}")
        if notice:
            notice(f"ended {group.describe()} left by a dead fleetctl")
        clear(group)
        ended.append(group)
    return ended


# -- the launcher ------------------------------------------------------------------------------------
def launcher_command(command: Sequence[str]) -> list[str]:
    """`command` run under the launcher, which dies (with its whole group) when this process dies."""
    # This file run as a script, isolated (-I: no script dir on sys.path, no PYTHON* variables): it
    # needs nothing but the standard library, so it works whether fleetctl is installed or not.
    return [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), "--", *command]


def launch(argv: Sequence[str] | None = None) -> None:
    """Entry of the launcher: PARENT_PID -- COMMAND... (see launcher_command)."""
    args = list(sys.argv[1:] if argv is None else argv)
    parent, command = int(args[0]), args[2:]

    marker = os.environ.get(MARKER)
    child = 0

    def die(signum: int, _frame: object) -> None:
        """Kill the playbook, the workers it forks (each in a session of its own) and their modules."""
        if child:
            _signal(child, signal.SIGKILL)
        for _ in range(200):
            rest = [p for p in marked(marker) if p != os.getpid()] if marker else []
            if not rest:
                break
            for pid in rest:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.01)
        try:
            os.killpg(0, signal.SIGKILL)  # whatever else is in our own group
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, die)
    signal.signal(signal.SIGHUP, die)  # the pty closed: the fleetctl reading it is gone
    _set_pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the kernel was asked to tell us
        die(signal.SIGTERM, None)
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as pexpect leaves it for the command
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            os.write(2, f"cannot run {command[0]}: {exc}\n".encode())
            os._exit(127)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    sys.exit(code if code >= 0 else 128 - code)


def _set_pdeathsig(sig: int) -> None:
    """Linux: deliver `sig` to this process when the thread that forked it dies. Elsewhere: nothing
    (the journal's record and `reap` still end orphans)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (AttributeError, OSError):
        pass


# -- /proc ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Stat:
    state: str
    ppid: int
    pgrp: int
    start: int


def _stat(pid: int) -> _Stat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 onwards
    return _Stat(rest[0], int(rest[1]), int(rest[2]), int(rest[19]))


def start_time(pid: int) -> int | None:
    st = _stat(pid)
    return st.start if st else None


def boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []


def marked(marker: str) -> list[int]:
    """Live processes (zombies excepted) whose environment carries `marker`."""
    out = []
    for pid in _pids():
        st = _stat(pid)
        if st and st.state not in "ZX" and _has_marker(pid, marker):
            out.append(pid)
    return out


def _has_marker(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:  # gone, or not ours to read
        return False
    return f"{MARKER}={marker}".encode() in env.split(b"\0")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    launch()
