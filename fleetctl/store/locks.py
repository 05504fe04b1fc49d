"""One run per fleet at a time: a lock row with a heartbeat. A holder whose heartbeat stopped (or whose
process is gone on this machine) is dead, and its lock can be taken over safely: taking the lock first
ends and waits for any Ansible process group a dead fleetctl left on this machine (orphans.py)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from fleetctl.orphans import AnsibleGroup, reap
from fleetctl.store import schema

if TYPE_CHECKING:
    from fleetctl.store import Store

STALE_AFTER = timedelta(seconds=60)


@dataclass(frozen=True)
class LockInfo:
    name: str
    run_id: str | None
    owner: str | None
    hostname: str | None
    pid: int | None
    token: str
    acquired_at: datetime
    heartbeat_at: datetime

    def describe(self) -> str:
        return (
            f"run {self.run_id or '-'} by {self.owner or '?'} on {self.hostname}, pid {self.pid}, "
            f"since {self.acquired_at:%Y-%m-%d %H:%M:%S}Z"
        )

    def to_json(self) -> dict:
        return {
            "run": self.run_id,
            "operator": self.owner,
            "host": self.hostname,
            "pid": self.pid,
            "since": self.acquired_at.isoformat(),
            "heartbeat": self.heartbeat_at.isoformat(),
        }


class Locks:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.groups = AnsibleGroups(store)

    def holder(self, name: str) -> LockInfo | None:
        with self.store.read() as conn:
            row = conn.execute(select(schema.locks).where(schema.locks.c.name == name)).mappings().first()
        return LockInfo(**row) if row else None

    def is_dead(self, lock: LockInfo) -> bool:
        if self.store.now() - lock.heartbeat_at > STALE_AFTER:
            return True
        if lock.hostname == socket.gethostname() and lock.pid:
            try:
                os.kill(lock.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def acquire(self, name: str, *, run_id: str | None, owner: str | None) -> tuple[str, LockInfo | None]:
        """Take the lock. Returns (token, the dead holder taken over or None); raises LockedError when held."""
        from fleetctl.errors import LockedError

        now = self.store.now()
        token = secrets.token_hex(8)
        t = schema.locks
        with self.store.tx() as conn:
            row = conn.execute(select(t).where(t.c.name == name)).mappings().first()
            previous = LockInfo(**row) if row else None
            if previous and not self.is_dead(previous):
                raise LockedError(
                    f"another run holds the fleet lock: {previous.describe()}",
                    "wait for it, watch it with `fleetctl status`, or stop it with `fleetctl abort`",
                )
            if previous:
                conn.execute(t.delete().where(t.c.name == name, t.c.token == previous.token))
            conn.execute(
                t.insert().values(
                    name=name,
                    run_id=run_id,
                    owner=owner,
                    hostname=socket.gethostname(),
                    pid=os.getpid(),
                    token=token,
                    acquired_at=now,
                    heartbeat_at=now,
                )
            )
        try:
            self.groups.reap()
        except OSError as exc:
            self.release(name, token)
            raise LockedError(
                f"the Ansible of a dead fleetctl is still running: {exc}",
                "end those processes, then try again",
            ) from None
        return token, previous

    def heartbeat(self, name: str, token: str, run_id: str | None = None) -> bool:
        """Refresh the lock; False if it is no longer ours (taken over)."""
        t = schema.locks
        values: dict = {"heartbeat_at": self.store.now()}
        if run_id:
            values["run_id"] = run_id
        with self.store.tx() as conn:
            return (
                conn.execute(t.update().where(t.c.name == name, t.c.token == token).values(**values)).rowcount
                == 1
            )

    def release(self, name: str, token: str) -> None:
        with self.store.tx() as conn:
            conn.execute(
                schema.locks.delete().where(schema.locks.c.name == name, schema.locks.c.token == token)
            )


class AnsibleGroups:
    """The Ansible process groups fleetctl processes are running (or left behind when killed)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, group: AnsibleGroup) -> None:
        with self.store.tx() as conn:
            conn.execute(
                schema.ansible_groups.insert().values(
                    **{k: getattr(group, k) for k in _COLUMNS}, started_at=self.store.now()
                )
            )

    def update(self, group: AnsibleGroup) -> None:
        t = schema.ansible_groups
        with self.store.tx() as conn:
            conn.execute(
                t.update()
                .where(t.c.marker == group.marker)
                .values(pgid=group.pgid, pid=group.pid, start=group.start)
            )

    def clear(self, group: AnsibleGroup) -> None:
        t = schema.ansible_groups
        with self.store.tx() as conn:
            conn.execute(t.delete().where(t.c.marker == group.marker))

    def all(self) -> list[AnsibleGroup]:
        with self.store.read() as conn:
            rows = conn.execute(select(schema.ansible_groups)).mappings().all()
        return [AnsibleGroup(**{k: r[k] for k in _COLUMNS}) for r in rows]

    def reap(self, notice: Callable[[str], None] | None = None) -> list[AnsibleGroup]:
        """End and wait for the groups of dead fleetctl processes on this machine (see orphans.reap)."""
        return reap(self.all(), self.clear, notice)


_COLUMNS = (
    "marker",
    "hostname",
    "boot_id",
    "owner_pid",
    "owner_start",
    "pgid",
    "pid",
    "start",
    "run_id",
    "playbook",
    "hosts",
)
