"""Versioned schema migrations, applied in order when the journal is opened.

Add a migration by appending a function to MIGRATIONS; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect, select

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


FLEET_TABLES = ["ledger", "history", "runs", "freezes", "quarantine", "queue", "audit"]
_LEDGER_COLS = "fleet, host, component, version, previous_version, changed_at, run_id, operator, source"


def _v6_fleets(conn: Connection) -> None:
    """Several fleets in one journal: a fleet column on every fleet's table, the ledger keyed by fleet.

    Rows written before carry fleet '' until the first named fleet opens the journal and claims them
    (claim_legacy). A journal created by this fleetctl already has the columns (v1 creates the
    tables as schema.py defines them now), hence the checks."""
    insp = inspect(conn)
    for name in FLEET_TABLES:
        if "fleet" not in {c["name"] for c in insp.get_columns(name)}:
            conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN fleet VARCHAR(128) NOT NULL DEFAULT ''")
    pk = insp.get_pk_constraint("ledger")
    if pk["constrained_columns"] == ["fleet", "host", "component"]:
        return
    if conn.dialect.name == "sqlite":  # SQLite cannot change a primary key: rebuild the table
        conn.exec_driver_sql(
            "CREATE TABLE ledger_v6 (fleet VARCHAR(128) NOT NULL DEFAULT '', host VARCHAR(255) NOT NULL, "
            "component VARCHAR(64) NOT NULL, version VARCHAR(128), previous_version VARCHAR(128), "
            "changed_at DATETIME, run_id VARCHAR(64), operator VARCHAR(128), source VARCHAR(16) NOT NULL, "
            "PRIMARY KEY (fleet, host, component))"
        )
        conn.exec_driver_sql(f"INSERT INTO ledger_v6 ({_LEDGER_COLS}) SELECT {_LEDGER_COLS} FROM ledger")
        conn.exec_driver_sql("DROP TABLE ledger")
        conn.exec_driver_sql("ALTER TABLE ledger_v6 RENAME TO ledger")
    else:
        conn.exec_driver_sql(f'ALTER TABLE ledger DROP CONSTRAINT "{pk["name"]}"')
        conn.exec_driver_sql("ALTER TABLE ledger ADD PRIMARY KEY (fleet, host, component)")


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1,
    _v2_guards,
    _v3_ansible_groups,
    _v4_outbox,
    _v5_leases,
    _v6_fleets,
]


def claim_legacy(conn: Connection, fleet: str) -> None:
    """Rows from before migration 6 (fleet '') belong to the first named fleet that opens the journal: a
    journal held one fleet then. Claimed once (meta `legacy_fleet`), in the opener's transaction."""
    t = schema.meta
    if conn.execute(select(t.c.value).where(t.c.key == "legacy_fleet")).first():
        return
    if conn.dialect.name == "postgresql":  # two first openers at once: the second waits, then sees the row
        conn.exec_driver_sql("LOCK TABLE meta IN SHARE ROW EXCLUSIVE MODE")
        if conn.execute(select(t.c.value).where(t.c.key == "legacy_fleet")).first():
            return
    for name in FLEET_TABLES:
        table = schema.metadata.tables[name]
        conn.execute(table.update().where(table.c.fleet == "").values(fleet=fleet))
    conn.execute(t.insert().values(key="legacy_fleet", value=fleet))


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
