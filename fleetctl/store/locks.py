"""One run per fleet at a time: the fleet lock is a lease in the journal, so it holds across machines.

A lease row per lock name: the holder (operator, machine, boot, pid, run), a token, a fencing counter and
an expiry computed from the database's own clock (`now()` on PostgreSQL; on SQLite the application's clock
is the database's). The holder renews it from its heartbeat (watch.py). A holder on another machine is
judged only by its lease; on this machine (same host name and boot) a holder whose pid is gone is dead at
once. Taking over a dead holder's lease is audited (`lock.takeover`) and bumps the fence; the process that
lost the lease has its run-state writes refused (`Locks.check`, inside the same transaction as the write)
and stops. Only row locks and plain transactions are used: no session-level advisory locks, so the lock
works behind a transaction-pooling PgBouncer. Taking the lock also ends and waits for any Ansible process
group a dead fleetctl left on this machine (orphans.py)."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select

from fleetctl.orphans import AnsibleGroup, boot_id, reap
from fleetctl.store import schema

if TYPE_CHECKING:
    from fleetctl.store import Store

DEFAULT_LEASE = timedelta(seconds=60)
STALE_AFTER = DEFAULT_LEASE  # the old name: a holder is dead once its lease (default 60 s) ran out

HOSTNAME_ENV = "FLEETCTL_HOSTNAME"


def this_host() -> str:
    """This machine's name in the lease: FLEETCTL_HOSTNAME (tests, containers sharing a host name), else
    the host name."""
    return os.environ.get(HOSTNAME_ENV) or socket.gethostname()


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
    fence: int = 0
    expires_at: datetime | None = None
    boot_id: str | None = None

    def describe(self) -> str:
        until = f", lease until {self.expires_at:%H:%M:%S}Z" if self.expires_at else ""
        return (
            f"run {self.run_id or '-'} by {self.owner or '?'} on {self.hostname}, pid {self.pid}, "
            f"since {self.acquired_at:%Y-%m-%d %H:%M:%S}Z{until}"
        )

    def to_json(self) -> dict:
        return {
            "run": self.run_id,
            "operator": self.owner,
            "host": self.hostname,
            "pid": self.pid,
            "since": self.acquired_at.isoformat(),
            "heartbeat": self.heartbeat_at.isoformat(),
            "expires": self.expires_at.isoformat() if self.expires_at else None,
            "fence": self.fence,
        }


@dataclass(frozen=True)
class Fence:
    """The lease this process holds: its run-state writes are checked against it."""

    name: str
    token: str
    fence: int


def _info(row: Any) -> LockInfo:
    return LockInfo(**{k: row[k] for k in LockInfo.__dataclass_fields__})


class Locks:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.groups = AnsibleGroups(store)
        self.lease = DEFAULT_LEASE  # fleet.yml `lock: {lease: ...}` (set by FleetContext.store)
        self.held: Fence | None = None

    def db_now(self, conn: Connection) -> datetime:
        """The database's clock: `now()` on PostgreSQL (one clock for every machine); on SQLite the
        journal is on this machine and the application's clock (injectable in tests) is its clock."""
        if conn.dialect.name == "postgresql":
            return conn.execute(select(func.now())).scalar_one().astimezone(UTC)
        return self.store.now()

    def holder(self, name: str) -> LockInfo | None:
        t = schema.leases
        with self.store.read() as conn:
            row = conn.execute(select(t).where(t.c.name == name, t.c.token.is_not(None))).mappings().first()
        return _info(row) if row else None

    def is_dead(self, lock: LockInfo) -> bool:
        with self.store.read() as conn:
            now = self.db_now(conn)
        return self._dead(lock, now)

    def _dead(self, lock: LockInfo, now: datetime) -> bool:
        if lock.expires_at is None or lock.expires_at < now:
            return True  # the lease ran out: the holder stopped renewing it, wherever it runs
        if lock.hostname != this_host() or not lock.pid:
            return False  # another machine: only its lease says whether it lives
        if lock.boot_id and boot_id() and lock.boot_id != boot_id():
            return True  # this machine rebooted since
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

        token = secrets.token_hex(8)
        t = schema.leases
        with self.store.tx() as conn:
            now = self.db_now(conn)
            conn.execute(_insert_missing(conn, name))
            row = conn.execute(select(t).where(t.c.name == name).with_for_update()).mappings().one()
            previous = _info(row) if row["token"] is not None else None
            if previous and not self._dead(previous, now):
                raise LockedError(
                    f"another run holds the fleet lock: {previous.describe()}",
                    "wait for it, watch it with `fleetctl status`, or stop it with `fleetctl abort`",
                )
            fence = row["fence"] + 1
            conn.execute(
                t.update()
                .where(t.c.name == name, t.c.fence == row["fence"])
                .values(
                    fence=fence,
                    token=token,
                    run_id=run_id,
                    owner=owner,
                    hostname=this_host(),
                    boot_id=boot_id(),
                    pid=os.getpid(),
                    acquired_at=now,
                    heartbeat_at=now,
                    expires_at=now + self.lease,
                )
            )
            if previous:
                expired = previous.expires_at is None or previous.expires_at < now
                why = "its lease expired" if expired else "its process is gone"
                self.store.audit.write(
                    conn,
                    "lock.takeover",
                    previous.run_id or name,
                    f"holder {previous.owner or '?'} on {previous.hostname} is dead: {why}",
                    owner,
                    {**previous.to_json(), "lock": name, "new_fence": fence},
                )
        self.held = Fence(name, token, fence)
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
        """Renew the lease; False if it is no longer ours (taken over)."""
        t = schema.leases
        with self.store.tx() as conn:
            now = self.db_now(conn)
            values: dict = {"heartbeat_at": now, "expires_at": now + self.lease}
            if run_id:
                values["run_id"] = run_id
            done = conn.execute(t.update().where(t.c.name == name, t.c.token == token).values(**values))
            return done.rowcount == 1

    def release(self, name: str, token: str) -> None:
        t = schema.leases
        with self.store.tx() as conn:
            conn.execute(
                t.update()
                .where(t.c.name == name, t.c.token == token)
                .values(token=None, run_id=None, pid=None, expires_at=None)
            )
        if self.held and self.held.token == token:
            self.held = None

    def check(self, conn: Connection) -> None:
        """Inside a run-state write's transaction: refuse the write if this process held the lock and
        lost it. The lease row is read FOR SHARE, so a takeover waits for this transaction to end."""
        held = self.held
        if held is None:
            return
        from fleetctl.errors import LockedError

        t = schema.leases
        row = (
            conn.execute(select(t).where(t.c.name == held.name).with_for_update(read=True)).mappings().first()
        )
        if row is None or row["token"] != held.token or row["fence"] != held.fence:
            who = f"{row['owner'] or '?'} on {row['hostname']}" if row and row["token"] else "nobody"
            raise LockedError(
                f"this fleetctl lost the fleet lock (fence {held.fence}; now held by {who}): "
                "its writes are refused and it stops",
                "see `fleetctl status` and `fleetctl audit`; the new holder carries on",
            )


def _insert_missing(conn: Connection, name: str) -> Any:
    """INSERT the free lease row unless it exists (ON CONFLICT DO NOTHING: a concurrent inserter waits)."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    return (
        dialect.insert(schema.leases)
        .values(name=name, fence=0)
        .on_conflict_do_nothing(index_elements=["name"])
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
