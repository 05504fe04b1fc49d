"""Versioned schema migrations, applied in order when the journal is opened.

Add a migration by appending a function to MIGRATIONS; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, select

from fleetctl.errors import StoreError
from fleetctl.store import schema

V1_TABLES = [
    schema.meta,
    schema.ledger,
    schema.history,
    schema.runs,
    schema.run_hosts,
    schema.freezes,
    schema.quarantine,
    schema.locks,
    schema.queue,
    schema.audit,
]


def _v1(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=V1_TABLES)


def _v2_guards(conn: Connection) -> None:
    """The guard after a rollout (fleetctl.guard): guards and guard_hosts."""
    from fleetctl.store import guards

    schema.metadata.create_all(conn, tables=guards.TABLES)


def _v3_ansible_groups(conn: Connection) -> None:
    """Ansible process groups, so that resume, rollback and a lock takeover end a dead holder's."""
    schema.metadata.create_all(conn, tables=[schema.ansible_groups])


def _v4_outbox(conn: Connection) -> None:
    """The notification outbox (fleetctl.notify): one row per event and target."""
    from fleetctl.store import outbox

    schema.metadata.create_all(conn, tables=outbox.TABLES)


def _v5_leases(conn: Connection) -> None:
    """The fleet lock becomes a lease with a fencing counter (leases); the old locks table goes. A lock
    held at upgrade time is not carried over: upgrade with no run in flight (`fleetctl db status`)."""
    schema.metadata.create_all(conn, tables=[schema.leases])
    conn.exec_driver_sql("DROP TABLE IF EXISTS locks")


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1,
    _v2_guards,
    _v3_ansible_groups,
    _v4_outbox,
    _v5_leases,
]


def current_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, "meta"):
        return 0
    row = conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")).first()
    return int(row[0]) if row else 0


def newer_error(version: int, where: str) -> StoreError:
    return StoreError(
        f"the journal at {where} has schema version {version}, newer than this fleetctl knows "
        f"({len(MIGRATIONS)}): a newer fleetctl migrated it",
        "upgrade fleetctl on this machine to the version the other controllers run",
    )


def require_current(conn: Connection, where: str) -> None:
    """A shared journal is never migrated by opening it: refuse one that is behind or ahead."""
    version = current_version(conn)
    if version > len(MIGRATIONS):
        raise newer_error(version, where)
    if version < len(MIGRATIONS):
        state = "is empty" if version == 0 else f"has schema version {version}"
        raise StoreError(
            f"the journal at {where} {state}; this fleetctl needs version {len(MIGRATIONS)} "
            f"({len(MIGRATIONS) - version} pending migration(s))",
            "run `fleetctl db upgrade` once (with no run in flight), then retry; `fleetctl db status` shows them",
        )


def set_version(conn: Connection, number: int) -> None:
    """Update the version row in place (a concurrent upgrader waiting on it FOR UPDATE then sees it)."""
    t = schema.meta
    done = conn.execute(t.update().where(t.c.key == "schema_version").values(value=str(number)))
    if done.rowcount == 0:
        conn.execute(t.insert().values(key="schema_version", value=str(number)))


def migrate(conn: Connection, where: str = "the journal") -> int:
    """Bring the schema to the newest version inside the caller's transaction; returns that version."""
    version = current_version(conn)
    if version > len(MIGRATIONS):
        raise newer_error(version, where)
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        step(conn)
        set_version(conn, number)
    return len(MIGRATIONS)


def describe(number: int) -> str:
    """A migration's one-line description (its docstring's first line)."""
    step = MIGRATIONS[number - 1]
    doc = (step.__doc__ or step.__name__).strip().splitlines()[0]
    return doc if step.__doc__ else {1: "The journal's tables."}.get(number, doc)
