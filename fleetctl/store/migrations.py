"""Versioned schema migrations, applied in order when the journal is opened.

Add a migration by appending a function to MIGRATIONS; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, select

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


def migrate(conn: Connection) -> int:
    """Bring the schema to the newest version inside the caller's transaction; returns that version."""
    version = current_version(conn)
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"the journal has schema version {version}, newer than this fleetctl knows ({len(MIGRATIONS)})"
        )
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        step(conn)
        table = schema.meta
        conn.execute(table.delete().where(table.c.key == "schema_version"))
        conn.execute(table.insert().values(key="schema_version", value=str(number)))
    return len(MIGRATIONS)
