"""One run per fleet at a time: a lock row with a heartbeat. A holder whose heartbeat stopped (or whose
process is gone on this machine) is dead, and its lock can be taken over safely."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

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
