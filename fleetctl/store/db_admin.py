"""Administering the journal's database: its schema version and pending migrations (`fleetctl db status`),
an explicit, guarded upgrade (`fleetctl db upgrade`), and copying an embedded SQLite journal into an empty
PostgreSQL one (`fleetctl db copy --to URL`), the path from one operator to a team.

The upgrade guard: on PostgreSQL the schema_version row of `meta` is locked `SELECT ... FOR UPDATE` for the
whole (transactional) migration, so a second controller upgrading at once waits, then finds nothing to do;
on SQLite the migration runs inside BEGIN IMMEDIATE (one writer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Integer, Table, func, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, ProgrammingError, SQLAlchemyError

from fleetctl.errors import StoreError, UsageError
from fleetctl.store import Store, _where, make_engine, schema
from fleetctl.store.migrations import MIGRATIONS, current_version, describe, migrate, newer_error, set_version


@dataclass(frozen=True)
class DbStatus:
    where: str
    backend: str
    version: int
    known: int  # the newest version this fleetctl knows

    @property
    def pending(self) -> list[tuple[int, str]]:
        return [(n, describe(n)) for n in range(self.version + 1, self.known + 1)]

    @property
    def newer(self) -> bool:
        return self.version > self.known

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.where,
            "backend": self.backend,
            "schema_version": self.version,
            "known_version": self.known,
            "pending": [{"version": n, "description": d} for n, d in self.pending],
            "newer_than_this_fleetctl": self.newer,
            "migrates_on_open": self.backend == "sqlite",
        }


def _engine(url: str) -> tuple[Engine, str]:
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy raises several kinds for a bad URL
        raise UsageError(
            f"database URL {url!r} is not valid", "e.g. postgresql+psycopg://user@host/db"
        ) from None
    return make_engine(url), _where(parsed)


def _fail(exc: SQLAlchemyError, where: str) -> StoreError:
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return StoreError(
        f"the journal at {where}: {detail[0] if detail else type(exc).__name__}", "check the URL"
    )


def status(url: str) -> DbStatus:
    engine, where = _engine(url)
    try:
        with engine.connect() as conn:
            version = current_version(conn)
    except SQLAlchemyError as exc:
        raise _fail(exc, where) from None
    finally:
        engine.dispose()
    return DbStatus(where, engine.dialect.name, version, len(MIGRATIONS))


def upgrade(url: str) -> tuple[int, int]:
    """Apply the pending migrations under the guard; returns (version before, version after)."""
    engine, where = _engine(url)
    try:
        if engine.dialect.name == "sqlite":
            with engine.begin() as conn:  # BEGIN IMMEDIATE: one writer at a time
                before = current_version(conn)
                return before, migrate(conn, where)
        _ensure_meta(engine)
        with engine.begin() as conn:
            return _upgrade_locked(conn, where)
    except SQLAlchemyError as exc:
        raise _fail(exc, where) from None
    finally:
        engine.dispose()


def _ensure_meta(engine: Engine) -> None:
    """The meta table and its version row, so that there is a row to lock (two first upgrades race here:
    the loser's CREATE or INSERT fails and it goes on to wait on the row lock)."""
    for _ in range(3):
        try:
            with engine.begin() as conn:
                schema.metadata.create_all(conn, tables=[schema.meta])
                t = schema.meta
                if conn.execute(select(t.c.key).where(t.c.key == "schema_version")).first() is None:
                    conn.execute(t.insert().values(key="schema_version", value="0"))
            return
        except (IntegrityError, ProgrammingError):
            continue


def _upgrade_locked(conn: Connection, where: str) -> tuple[int, int]:
    t = schema.meta
    row = conn.execute(select(t.c.value).where(t.c.key == "schema_version").with_for_update()).first()
    before = int(row[0]) if row else 0
    if before > len(MIGRATIONS):
        raise newer_error(before, where)
    for number, step in enumerate(MIGRATIONS[before:], start=before + 1):
        step(conn)
        set_version(conn, number)
    return before, len(MIGRATIONS)


# -- copy ---------------------------------------------------------------------------------------------


def live_tables() -> list[Table]:
    """Every table of the current schema, in dependency order (meta excluded: the target has its own)."""
    from fleetctl.store import guards, outbox  # noqa: F401 - they define their tables on import

    return [
        t
        for t in schema.metadata.sorted_tables
        if t.name not in schema.RETIRED_TABLES and t.name != schema.meta.name
    ]


def copy(source_url: str, target_url: str) -> dict[str, int]:
    """Copy the SQLite journal at `source_url` into the empty PostgreSQL journal at `target_url`, in one
    transaction; verify every table's row count. Returns the counts."""
    src_engine, src_where = _engine(source_url)
    dst_engine, dst_where = _engine(target_url)
    src_engine.dispose()
    if src_engine.dialect.name != "sqlite":
        raise UsageError(
            f"db copy reads a SQLite journal; {src_where} is not one", "point --db at the fleetctl.db"
        )
    if dst_engine.dialect.name == "sqlite":
        raise UsageError(
            f"db copy writes a PostgreSQL journal; {dst_where} is SQLite",
            "pass --to postgresql+psycopg://...",
        )
    source = Store.open(source_url)  # an old SQLite journal is migrated first, as on every open
    try:
        _refuse_live_run(source)
        upgrade(target_url)
        tables = live_tables()
        with source.read() as src, dst_engine.begin() as dst:
            busy = {t.name: n for t in tables if (n := _count(dst, t))}
            if busy:
                raise UsageError(
                    f"the target journal {dst_where} is not empty ({', '.join(f'{k}: {v} rows' for k, v in busy.items())})",
                    "copy into a new, empty database (createdb), never over a journal in use",
                )
            counts = {}
            for t in tables:
                rows = [dict(r) for r in src.execute(select(t)).mappings()]
                for i in range(0, len(rows), 1000):
                    dst.execute(t.insert(), rows[i : i + 1000])
                _reset_sequence(dst, t)
                counts[t.name] = len(rows)
            copied = {t.name: _count(dst, t) for t in tables}
            if copied != counts:
                raise StoreError(
                    f"db copy: row counts differ after the copy: {counts} vs {copied}; nothing kept"
                )
        return counts
    except DBAPIError as exc:
        raise _fail(exc, dst_where) from None
    finally:
        source.close()
        dst_engine.dispose()


def _count(conn: Connection, table: Table) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _reset_sequence(conn: Connection, table: Table) -> None:
    """Serial ids copied verbatim: move the sequence past them, or the next insert collides."""
    for col in table.primary_key.columns:
        if (
            isinstance(col.type, Integer)
            and col.autoincrement in (True, "auto")
            and len(table.primary_key) == 1
        ):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{col.name}'), "
                    f"COALESCE((SELECT max({col.name}) FROM {table.name}), 0) + 1, false)"
                )
            )


def _refuse_live_run(source: Store) -> None:
    t = schema.leases
    with source.read() as conn:
        if not inspect(conn).has_table("leases"):
            return
        rows = conn.execute(select(t).where(t.c.token.is_not(None))).mappings().all()
    for row in rows:
        holder = source.locks.holder(row["name"])
        if holder and not source.locks.is_dead(holder):
            raise UsageError(
                f"a run holds the fleet lock in the source journal: {holder.describe()}",
                "copy when no run is in flight",
            )
