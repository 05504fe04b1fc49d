"""The journal: SQLAlchemy Core over SQLite (default, WAL, mode 0600) or PostgreSQL.

Every state change of a run or a host is written in a transaction before the next step is taken, so a
crash can be resumed and another terminal can watch. Use `Store.open(url)`; the repositories hang off it:
`store.ledger`, `store.runs`, `store.locks`, `store.freezes`, `store.quarantine`, `store.audit`, `store.queue`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError

from fleetctl.errors import StoreError
from fleetctl.store.migrations import claim_legacy, migrate, require_current

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(
        self, engine: Engine, clock: Clock = utcnow, where: str | None = None, fleet: str = ""
    ) -> None:
        from fleetctl.store.controls import Audit, Freezes, Quarantine
        from fleetctl.store.guards import Guards
        from fleetctl.store.ledger import Ledger
        from fleetctl.store.locks import Locks
        from fleetctl.store.outbox import Outbox
        from fleetctl.store.queue import Queue
        from fleetctl.store.runs import Runs

        self.engine = engine
        self.clock = clock
        self.where = where or _where(engine.url)
        self.fleet = fleet  # fleet.yml `name:`: every repository reads and writes this fleet's rows only
        self.ledger = Ledger(self)
        self.runs = Runs(self)
        self.locks = Locks(self)
        self.freezes = Freezes(self)
        self.quarantine = Quarantine(self)
        self.audit = Audit(self)
        self.queue = Queue(self)
        self.guards = Guards(self)
        self.outbox = Outbox(self)

    @classmethod
    def open(cls, url: str, clock: Clock = utcnow, fleet: str = "") -> Store:
        """Open (creating if needed) and migrate the journal at a SQLAlchemy URL, scoped to `fleet`."""
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise StoreError(
                f"state database URL {url!r} is not valid",
                "use a path or e.g. sqlite:///fleet.db or postgresql+psycopg://host/db",
            ) from None
        try:
            engine = make_engine(url)
            with engine.begin() as conn:
                if engine.dialect.name == "sqlite":  # embedded: migrated on open (BEGIN IMMEDIATE)
                    migrate(conn, _where(parsed))
                else:
                    require_current(conn, _where(parsed))  # a shared one only by `fleetctl db upgrade`
                if fleet:
                    claim_legacy(conn, fleet)
        except StoreError:
            raise
        except (NoSuchModuleError, ImportError) as exc:
            raise StoreError(
                f"no database driver for {parsed.drivername}: {exc}",
                "pip install 'fleetctl[postgres]' for PostgreSQL",
            ) from None
        except (SQLAlchemyError, OSError, RuntimeError) as exc:
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StoreError(
                f"cannot open state database {parsed.render_as_string(hide_password=True)}: {detail}",
                "check --db / FLEETCTL_DB / `state:` in fleet.yml",
            ) from None
        return cls(engine, clock, _where(parsed), fleet)

    def now(self) -> datetime:
        return self.clock()

    @contextmanager
    def tx(self) -> Iterator[Connection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite: writers queue instead of failing)."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except DBAPIError as exc:
            raise StoreError(
                f"the journal at {self.where} cannot be written: {_detail(exc)}",
                "retry; check the database is reachable and intact",
            ) from None

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read (a plain BEGIN on SQLite: WAL readers never wait for the writer). Database errors
        become one-line StoreErrors; a busy database is waited for (busy_timeout), not an error."""
        try:
            with self.engine.connect().execution_options(fleetctl_readonly=True) as conn:
                yield conn
        except DBAPIError as exc:
            raise StoreError(
                f"the journal at {self.where} cannot be read: {_detail(exc)}",
                "check the database is reachable; a damaged SQLite file can be restored from a backup",
            ) from None

    def close(self) -> None:
        self.engine.dispose()


def make_engine(url: str) -> Engine:
    """An engine on the journal at `url` (a SQLite file made private, WAL; or a server), not migrated."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed.database)
    return create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=3)


def _detail(exc: DBAPIError) -> str:
    text = str(exc.orig if exc.orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc.orig or exc).__name__


def _where(url: URL) -> str:
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _refuse_symlinks(path: Path) -> None:
    """A journal reached through a symlink could be swapped under a run (or point anywhere): refuse it,
    and the SQLite side files (-wal, -shm, -journal) too."""
    for p in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        if p.is_symlink():
            raise StoreError(
                f"cannot open state database {path}: {p} is a symlink (to {os.readlink(p)}); refused",
                "point --db / FLEETCTL_DB / `state:` at the real file, not at a symlink",
            )


def _sqlite_engine(database: str | None) -> Engine:
    database = database or ":memory:"  # `sqlite://` means an in-memory database, never a file named None
    if database and database != ":memory:":
        path = Path(database)
        _refuse_symlinks(path)
        if not path.parent.is_dir():
            raise StoreError(
                f"cannot open state database {path}: directory {path.parent} does not exist",
                "create the directory or point --db / FLEETCTL_DB elsewhere",
            )
        if path.exists() and not path.is_file():
            raise StoreError(
                f"cannot open state database {path}: not a file",
                "point --db / FLEETCTL_DB at a database file",
            )
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
        os.chmod(path, 0o600)
    engine = create_engine(f"sqlite:///{database}", connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # type: ignore[no-untyped-def]
        readonly = conn.get_execution_options().get("fleetctl_readonly")
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

    return engine
