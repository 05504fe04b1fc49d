"""The journal on real SQLite files: opening and migrating, the ledger, runs, locks, freezes, quarantine,
the queue and the audit log; two Store objects on one file behave like two terminals."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from fleetctl.errors import ExitCode, LockedError, StoreError
from fleetctl.store import Store, schema
from fleetctl.store.locks import STALE_AFTER
from fleetctl.store.migrations import MIGRATIONS

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
HC = "host-controller"


class Clock:
    """A settable clock for `Store.open(url, clock=...)`."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "fleetctl.db"


@pytest.fixture
def sqlite_url(db: Path) -> str:
    return f"sqlite:///{db}"


@pytest.fixture
def url(journal_url: str) -> str:
    """The journal on each backend: a SQLite file, and a fresh database on the PostgreSQL server."""
    return journal_url


@pytest.fixture
def store(url: str, clock: Clock):
    s = Store.open(url, clock=clock)
    yield s
    s.close()


@pytest.fixture
def sqlite_store(sqlite_url: str, clock: Clock):
    s = Store.open(sqlite_url, clock=clock)
    yield s
    s.close()


def store_error(url: str) -> StoreError:
    with pytest.raises(StoreError) as info:
        Store.open(url)
    err = info.value
    assert err.exit_code == ExitCode.USAGE == 2
    assert "\n" not in err.message, err.message
    assert err.hint
    return err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def set_lock(store: Store, name: str, **values: object) -> None:
    with store.tx() as conn:
        conn.execute(schema.leases.update().where(schema.leases.c.name == name).values(**values))


def db_now(store: Store) -> datetime:
    """The database's clock (now() on PostgreSQL; the store's clock on SQLite)."""
    with store.read() as conn:
        return store.locks.db_now(conn)


# --- opening ---------------------------------------------------------------------------------------------


def test_open_creates_file_0600_in_wal_mode_with_schema(sqlite_store: Store, db: Path) -> None:
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchall() == [
            (str(len(MIGRATIONS)),)
        ]
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert set(schema.metadata.tables) - schema.RETIRED_TABLES <= tables and "locks" not in tables


def test_wal_and_shm_files_are_private_too(sqlite_store: Store, db: Path) -> None:
    sqlite_store.ledger.record(HC, {"h1": "1.0"}, source="observed", run_id=None, operator=None)
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        assert side.exists()
        assert stat.S_IMODE(side.stat().st_mode) == 0o600, suffix


def test_existing_file_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    sqlite3.connect(db).close()
    db.chmod(0o644)
    Store.open(f"sqlite:///{db}").close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_reopen_is_idempotent_and_keeps_data(sqlite_url: str, db: Path, clock: Clock) -> None:
    first = Store.open(sqlite_url, clock=clock)
    first.ledger.record(HC, {"h1": "1.0"}, source="observed", run_id=None, operator="op")
    first.close()
    for _ in range(3):
        again = Store.open(sqlite_url, clock=clock)
        assert again.ledger.versions(HC) == {"h1": "1.0"}
        again.close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT key, value FROM meta").fetchall() == [
            ("schema_version", str(len(MIGRATIONS)))
        ]
        assert raw.execute("SELECT count(*) FROM history").fetchone()[0] == 1


def test_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Store.open("sqlite:///rel.db").close()
    assert stat.S_IMODE((tmp_path / "rel.db").stat().st_mode) == 0o600


@pytest.mark.parametrize("memory_url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_store_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memory_url: str
) -> None:
    """`sqlite://` is SQLAlchemy's in-memory database: it must not become a file called 'None' in the cwd."""
    monkeypatch.chdir(tmp_path)
    s = Store.open(memory_url)
    changes = s.ledger.record(HC, {"h": "1"}, source="observed", run_id=None, operator=None)
    assert [c.to_version for c in changes] == ["1"]
    assert s.ledger.versions(HC) == {"h": "1"}
    s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_newer_schema_is_refused(sqlite_url: str, db: Path) -> None:
    Store.open(sqlite_url).close()
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    err = store_error(sqlite_url)
    assert "newer" in err.message and "99" in err.message


@pytest.mark.parametrize(
    "make_url, text",
    [
        (lambda d: f"sqlite:///{d}/missing/dir/x.db", "does not exist"),
        (lambda d: "not a url", "not valid"),
        (lambda d: "://nothing", "not valid"),
        (lambda d: "postgresql://nobody@127.0.0.1:1/x", "postgresql"),
        (lambda d: "postgresql+psycopg://nobody:secret@127.0.0.1:1/x", "postgresql"),
        (lambda d: "nosuchdialect://x/y", "nosuchdialect"),
    ],
)
def test_unreachable_database(tmp_path: Path, make_url, text: str) -> None:
    err = store_error(make_url(tmp_path))
    assert text in err.message
    assert "secret" not in err.message


def test_not_a_database_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a sqlite database, just some text long enough to have a header" * 4)
    assert "not a database" in store_error(f"sqlite:///{bad}").message


def test_directory_as_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    """`--db` pointing at a directory by mistake must not chmod that directory to 0600."""
    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    store_error(f"sqlite:///{d}")
    assert stat.S_IMODE(d.stat().st_mode) == 0o755


@pytest.mark.parametrize("side", ["", "-wal"])
def test_symlinked_database_is_refused(tmp_path: Path, side: str) -> None:
    """A journal reached through a symlink is refused (exit 2), naming the path and the fix."""
    real = tmp_path / "real.db"
    Store.open(f"sqlite:///{real}").close()
    (tmp_path / "real.db-wal").unlink(missing_ok=True)
    link = tmp_path / "link.db"
    if side:
        Store.open(f"sqlite:///{link}").close()
        (tmp_path / f"link.db{side}").unlink(missing_ok=True)
        (tmp_path / f"link.db{side}").symlink_to(tmp_path / "elsewhere")
    else:
        link.symlink_to(real)
    before = real.read_bytes()
    err = store_error(f"sqlite:///{link}")
    assert str(link) in err.message and "symlink" in err.message
    assert "real file" in (err.hint or "")
    assert real.read_bytes() == before and not (tmp_path / "elsewhere").exists()


def test_symlinked_database_path_from_fleet_yml_is_refused(tmp_path: Path) -> None:
    """The path is not resolved before the check (config and context keep the symlink as typed)."""
    from fleetctl.config import load_config
    from fleetctl.context import FleetContext

    (tmp_path / "inventory.yml").write_text("all:\n  hosts:\n    a:\n")
    (tmp_path / "fleet.yml").write_text("inventory: inventory.yml\nstate: link.db\n")
    Store.open(f"sqlite:///{tmp_path / 'real.db'}").close()
    (tmp_path / "link.db").symlink_to(tmp_path / "real.db")
    assert load_config(tmp_path / "fleet.yml").state_url().endswith("/link.db")
    for db_url in (None, str(tmp_path / "link.db")):
        ctx = FleetContext(config_path=tmp_path / "fleet.yml", db_url=db_url, env={})
        with pytest.raises(StoreError, match="symlink"):
            ctx.store  # noqa: B018


def _corrupt(db: Path) -> None:
    """Overwrite every page after the header page with garbage, as a failing disk would."""
    size = db.stat().st_size
    with open(db, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xde\xad\xbe\xef" * ((size - 100) // 4))


def test_reading_a_corrupt_journal_is_a_store_error(sqlite_url: str, db: Path) -> None:
    s = Store.open(sqlite_url)
    s.ledger.record(HC, {f"h{i}": "1.0" for i in range(200)}, source="observed", run_id=None, operator=None)
    s.close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _corrupt(db)
    reader = Store(_raw_engine(db))
    with pytest.raises(StoreError) as info:
        reader.ledger.versions(HC)
    err = info.value
    assert err.exit_code == ExitCode.USAGE
    assert err.message.startswith(f"the journal at {db} cannot be read: ")
    assert "\n" not in err.message and ("malformed" in err.message or "not a database" in err.message)
    with pytest.raises(StoreError, match="cannot be written"):
        reader.ledger.record(HC, {"h1": "2.0"}, source="observed", run_id=None, operator=None)


def _raw_engine(db: Path):
    """An engine on the file as fleetctl opens it, without the migration that would notice the damage."""
    from fleetctl.store import _sqlite_engine

    return _sqlite_engine(str(db))


# --- ledger ----------------------------------------------------------------------------------------------


def test_ledger_records_only_real_changes(store: Store, clock: Clock) -> None:
    first = store.ledger.record(HC, {"a": "1.0", "b": "1.0"}, source="observed", run_id=None, operator=None)
    assert [(c.host, c.from_version, c.to_version) for c in first] == [("a", None, "1.0"), ("b", None, "1.0")]
    clock.advance(minutes=1)
    assert (
        store.ledger.record(HC, {"a": "1.0", "b": "1.0"}, source="observed", run_id=None, operator=None) == []
    )
    clock.advance(minutes=1)
    changes = store.ledger.record(
        HC, {"a": "1.1", "b": "1.0"}, source="fleetctl", run_id="r1", operator="ann"
    )
    assert len(changes) == 1
    c = changes[0]
    assert (c.host, c.from_version, c.to_version, c.run_id, c.operator, c.source) == (
        "a",
        "1.0",
        "1.1",
        "r1",
        "ann",
        "fleetctl",
    )
    assert c.at == T0 + timedelta(minutes=2)
    entry = store.ledger.entries(HC)["a"]
    assert (entry.version, entry.previous_version, entry.run_id, entry.operator, entry.source) == (
        "1.1",
        "1.0",
        "r1",
        "ann",
        "fleetctl",
    )
    assert entry.changed_at == T0 + timedelta(minutes=2)
    assert store.ledger.entries(HC)["b"].changed_at == T0  # unchanged since first seen
    assert len(store.ledger.history(HC)) == 3


def test_ledger_new_host_reporting_nothing_is_not_a_change(store: Store) -> None:
    """None -> None is no change: only real changes make history."""
    assert store.ledger.record(HC, {"fresh": None}, source="observed", run_id=None, operator=None) == []
    assert store.ledger.history(HC, host="fresh") == []


def test_ledger_version_can_go_to_none_and_back(store: Store) -> None:
    store.ledger.record(HC, {"a": "1.0"}, source="observed", run_id=None, operator=None)
    gone = store.ledger.record(HC, {"a": None}, source="observed", run_id=None, operator=None)
    assert [(c.from_version, c.to_version) for c in gone] == [("1.0", None)]
    back = store.ledger.record(HC, {"a": "1.0"}, source="observed", run_id=None, operator=None)
    assert [(c.from_version, c.to_version) for c in back] == [(None, "1.0")]


def test_ledger_history_newest_first_and_per_host(store: Store, clock: Clock) -> None:
    for i, v in enumerate(["1.0", "1.1", "1.2"]):
        clock.advance(minutes=1)
        store.ledger.record(
            HC, {"a": v, "b": v if i < 2 else "1.1"}, source="fleetctl", run_id=f"r{i}", operator="o"
        )
    hist = store.ledger.history(HC)
    assert [(c.host, c.to_version) for c in hist] == [
        ("a", "1.2"),
        ("b", "1.1"),
        ("a", "1.1"),
        ("b", "1.0"),
        ("a", "1.0"),
    ]
    assert [c.at for c in hist] == sorted((c.at for c in hist), reverse=True)
    assert [c.to_version for c in store.ledger.history(HC, host="a")] == ["1.2", "1.1", "1.0"]
    assert [c.to_version for c in store.ledger.history(HC, host="b")] == ["1.1", "1.0"]
    assert [c.to_version for c in store.ledger.history(HC, host="a", limit=2)] == ["1.2", "1.1"]
    assert store.ledger.history(HC, host="zzz") == []


def test_ledger_same_instant_orders_by_insertion(store: Store) -> None:
    store.ledger.record(HC, {"a": "1"}, source="observed", run_id=None, operator=None)
    store.ledger.record(HC, {"a": "2"}, source="observed", run_id=None, operator=None)
    store.ledger.record(HC, {"a": "3"}, source="observed", run_id=None, operator=None)
    assert [c.to_version for c in store.ledger.history(HC)] == ["3", "2", "1"]


def test_ledger_components_are_separate(store: Store) -> None:
    store.ledger.record(HC, {"a": "1.0"}, source="observed", run_id=None, operator=None)
    store.ledger.record("agent", {"a": "7"}, source="observed", run_id=None, operator=None)
    assert store.ledger.versions(HC) == {"a": "1.0"}
    assert store.ledger.versions("agent") == {"a": "7"}
    assert [c.to_version for c in store.ledger.history("agent")] == ["7"]


def test_ledger_entries_filter_and_json(store: Store) -> None:
    store.ledger.record(HC, {"a": "1", "b": "2", "c": "3"}, source="observed", run_id=None, operator=None)
    assert set(store.ledger.entries(HC, hosts=["a", "c", "zzz"])) == {"a", "c"}
    doc = store.ledger.entries(HC)["b"].to_json()
    assert doc == {
        "host": "b",
        "version": "2",
        "source": "observed",
        "at": T0.isoformat(),
        "changed_at": T0.isoformat(),
        "run": None,
        "operator": None,
        "invalid": None,
    }
    assert store.ledger.history(HC, host="b")[0].to_json()["to"] == "2"


EVIL = "{{ lookup('pipe', 'touch /tmp/pwned') }}"


def test_ledger_never_records_a_version_that_is_not_plain(store: Store) -> None:
    """Last line of defence: a node's bad answer is recorded as unknown, never as text."""
    store.ledger.record(HC, {"a": "1.0"}, source="observed", run_id=None, operator=None)
    changes = store.ledger.record(
        HC, {"a": EVIL, "b": "x/../y"}, source="observed", run_id=None, operator=None
    )
    assert [(c.host, c.from_version, c.to_version) for c in changes] == [("a", "1.0", None)]
    with store.read() as conn:
        stored = {r.version for r in conn.execute(schema.ledger.select())} | {
            r.to_version for r in conn.execute(schema.history.select())
        }
    assert stored == {"1.0", None}


def test_ledger_rows_with_bad_versions_read_as_unknown(store: Store) -> None:
    """Rows written by an older fleetctl (or by hand) must not crash `versions`/`history` nor reach a plan."""
    store.ledger.record(HC, {"a": "1.0", "b": "1.0"}, source="observed", run_id=None, operator=None)
    store.ledger.record(HC, {"a": "1.1"}, source="fleetctl", run_id="r1", operator="ann")
    with store.tx() as conn:
        conn.execute(schema.ledger.update().where(schema.ledger.c.host == "a").values(version=EVIL))
        conn.execute(
            schema.history.update().where(schema.history.c.to_version == "1.1").values(to_version=EVIL)
        )
    entry = store.ledger.entries(HC)["a"]
    assert entry.version is None and entry.previous_version == "1.0"
    assert entry.invalid == repr(EVIL)  # shown escaped, never used
    assert entry.to_json()["version"] is None and entry.to_json()["invalid"]
    assert store.ledger.versions(HC) == {"a": None, "b": "1.0"}
    bad = store.ledger.history(HC, host="a")[0]
    assert (bad.from_version, bad.to_version) == ("1.0", None) and bad.invalid
    assert bad.to_json()["to"] is None and bad.to_json()["invalid"] == repr(EVIL)


def test_ledger_times_are_utc_aware(store: Store) -> None:
    at = datetime(2026, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    store.ledger.record(HC, {"a": "1"}, source="observed", run_id=None, operator=None, at=at)
    got = store.ledger.entries(HC)["a"].changed_at
    assert got == at and got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert store.ledger.history(HC)[0].at == datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


# --- runs ------------------------------------------------------------------------------------------------


def make_run(store: Store, kind: str = "rollout", hosts: list[str] | None = None, **kw: object):
    hosts = ["h1", "h2", "h3"] if hosts is None else hosts
    args: dict = dict(
        kind=kind,
        component=HC,
        target="1.1.0",
        operator="ann",
        reason="test",
        plan={"stages": [{"name": "canary", "batches": [hosts[:1]]}]},
        fingerprint="abc123",
        options={"forks": 5},
        hosts=[(h, "canary" if i == 0 else "rest", i, "1.0.0", "1.1.0") for i, h in enumerate(hosts)],
    )
    args.update(kw)
    return store.runs.create(**args)


def test_run_create_get(store: Store) -> None:
    run = make_run(store)
    assert run.id.startswith("20260301-120000-")
    got = store.runs.get(run.id)
    assert got == run
    assert (got.kind, got.target, got.component, got.status, got.operator, got.reason) == (
        "rollout",
        "1.1.0",
        HC,
        "running",
        "ann",
        "test",
    )
    assert got.plan == {"stages": [{"name": "canary", "batches": [["h1"]]}]}
    assert got.options == {"forks": 5}
    assert got.created_at == got.started_at == T0
    assert got.finished_at is None
    assert store.runs.get("nope") is None
    hosts = store.runs.hosts(run.id)
    assert [(h.host, h.seq, h.stage, h.batch, h.state, h.from_version, h.to_version) for h in hosts] == [
        ("h1", 0, "canary", 0, "pending", "1.0.0", "1.1.0"),
        ("h2", 1, "rest", 1, "pending", "1.0.0", "1.1.0"),
        ("h3", 2, "rest", 2, "pending", "1.0.0", "1.1.0"),
    ]
    assert run.to_json()["created_at"] == T0.isoformat()


def test_run_without_hosts_and_default_options(store: Store) -> None:
    run = make_run(store, hosts=[], options={}, plan=None, status="planned")
    assert store.runs.hosts(run.id) == []
    assert store.runs.counts(run.id) == {}
    assert run.options == {} and run.plan is None and run.status == "planned"


def test_run_find_by_prefix(store: Store, clock: Clock) -> None:
    a = make_run(store)
    clock.advance(days=1)
    b = make_run(store)
    clock.advance(seconds=1)
    c = make_run(store)
    assert store.runs.find(a.id) == a
    assert store.runs.find("20260301") == a
    assert store.runs.find(a.id[:-1]) == a
    assert store.runs.find("20260302") is None  # b and c: ambiguous
    assert store.runs.find("20260302-120001") == c
    assert store.runs.find(b.id) == b
    assert store.runs.find("2027") is None


@pytest.mark.parametrize("ref", ["%", "_", "2026030_", "%-12"])
def test_run_find_prefix_is_literal(store: Store, ref: str) -> None:
    """A run reference is a prefix, not a LIKE pattern: '%' or '_' must not match a run."""
    make_run(store)
    assert store.runs.find(ref) is None


def test_run_list_order_and_filters(store: Store, clock: Clock) -> None:
    ids = []
    for kind in ["rollout", "rollback", "rollout", "rollout"]:
        clock.advance(minutes=1)
        ids.append(make_run(store, kind=kind).id)
    store.runs.update(ids[0], status="succeeded")
    store.runs.update(ids[1], status="failed")
    assert [r.id for r in store.runs.list()] == ids[::-1]
    assert [r.id for r in store.runs.list(limit=2)] == ids[:1:-1]
    assert [r.id for r in store.runs.list(kind="rollback")] == [ids[1]]
    assert [r.id for r in store.runs.list(statuses=["running"])] == [ids[3], ids[2]]
    assert [r.id for r in store.runs.list(kind="rollout", statuses=["succeeded", "failed"])] == [ids[0]]
    assert store.runs.list(statuses=[]) == []


@pytest.mark.parametrize(
    "status, finished",
    [(s, True) for s in ("succeeded", "failed", "halted", "rolled_back", "aborted")]
    + [(s, False) for s in ("running", "paused", "planned", "interrupted")],
)
def test_run_update_sets_finished_at_on_finish(
    store: Store, clock: Clock, status: str, finished: bool
) -> None:
    run = make_run(store)
    clock.advance(minutes=5)
    store.runs.update(run.id, status=status, status_reason="because", stage="canary", batch=0)
    got = store.runs.get(run.id)
    assert (got.status, got.status_reason, got.stage, got.batch) == (status, "because", "canary", 0)
    assert got.finished_at == (T0 + timedelta(minutes=5) if finished else None)


def test_run_update_keeps_explicit_finished_at(store: Store) -> None:
    run = make_run(store)
    at = T0 + timedelta(hours=1)
    store.runs.update(run.id, status="succeeded", finished_at=at)
    assert store.runs.get(run.id).finished_at == at


def test_run_request_control(store: Store) -> None:
    run = make_run(store)
    store.runs.request(run.id, "pause")
    assert store.runs.get(run.id).control == "pause"
    store.runs.request(run.id, None)
    assert store.runs.get(run.id).control is None
    assert store.runs.get(run.id).finished_at is None


def test_run_host_states_and_counts(store: Store, clock: Clock) -> None:
    run = make_run(store, hosts=["h1", "h2", "h3", "h4"])
    assert store.runs.counts(run.id) == {"pending": 4}
    clock.advance(seconds=10)
    store.runs.set_hosts(run.id, ["h1", "h2"], "updating")
    store.runs.set_hosts(run.id, [], "failed")  # nothing to do
    assert store.runs.counts(run.id) == {"updating": 2, "pending": 2}
    clock.advance(seconds=10)
    store.runs.set_host(run.id, "h1", state="done", probe_ms=12.5, probe_max_ms=30.0)
    store.runs.set_host(run.id, "h2", state="failed", error="unreachable")
    store.runs.set_hosts(run.id, ["h3"], "skipped", error="already there")
    assert store.runs.counts(run.id) == {"done": 1, "failed": 1, "skipped": 1, "pending": 1}
    by = {h.host: h for h in store.runs.hosts(run.id)}
    assert (by["h1"].state, by["h1"].probe_ms, by["h1"].probe_max_ms) == ("done", 12.5, 30.0)
    assert (by["h2"].state, by["h2"].error) == ("failed", "unreachable")
    assert by["h3"].error == "already there"
    assert by["h1"].updated_at == T0 + timedelta(seconds=20)
    assert by["h4"].updated_at == T0
    assert by["h2"].to_json()["error"] == "unreachable"


def test_run_hosts_are_per_run(store: Store, clock: Clock) -> None:
    a = make_run(store)
    clock.advance(seconds=1)
    b = make_run(store)
    store.runs.set_hosts(a.id, ["h1", "h2", "h3"], "done")
    assert store.runs.counts(a.id) == {"done": 3}
    assert store.runs.counts(b.id) == {"pending": 3}


# --- locks -----------------------------------------------------------------------------------------------


def test_lock_acquire_and_second_acquire_is_locked(store: Store, url: str, clock: Clock) -> None:
    token, previous = store.locks.acquire("fleet", run_id="run-1", owner="ann")
    assert token and previous is None
    holder = store.locks.holder("fleet")
    assert (holder.run_id, holder.owner, holder.hostname, holder.pid) == (
        "run-1",
        "ann",
        socket.gethostname(),
        os.getpid(),
    )
    other = Store.open(url, clock=clock)
    with pytest.raises(LockedError) as info:
        other.locks.acquire("fleet", run_id="run-2", owner="bob")
    err = info.value
    assert err.exit_code == ExitCode.LOCKED == 4
    for part in ("run-1", "ann", socket.gethostname(), f"pid {os.getpid()}"):
        assert part in err.message
    assert "\n" not in err.message
    assert store.locks.holder("fleet").token == token  # untouched
    # another lock name is independent
    other_token, _ = other.locks.acquire("other-fleet", run_id="run-2", owner="bob")
    assert other_token != token


def test_lock_release_then_acquire(store: Store) -> None:
    token, _ = store.locks.acquire("fleet", run_id="r1", owner="ann")
    store.locks.release("fleet", token)
    assert store.locks.holder("fleet") is None
    token2, previous = store.locks.acquire("fleet", run_id="r2", owner="bob")
    assert previous is None and token2 != token


def test_lock_holder_with_dead_pid_is_taken_over(store: Store, url: str, clock: Clock) -> None:
    token, _ = store.locks.acquire("fleet", run_id="crashed", owner="ann")
    pid = dead_pid()
    set_lock(store, "fleet", pid=pid)
    other = Store.open(url, clock=clock)
    new_token, dead = other.locks.acquire("fleet", run_id="next", owner="bob")
    assert dead is not None
    assert (dead.run_id, dead.owner, dead.pid, dead.token) == ("crashed", "ann", pid, token)
    assert other.locks.holder("fleet").run_id == "next"
    assert store.locks.heartbeat("fleet", token) is False
    assert other.locks.heartbeat("fleet", new_token) is True


def test_lock_on_another_machine_is_not_judged_by_pid(store: Store) -> None:
    token, _ = store.locks.acquire("fleet", run_id="r1", owner="ann")
    set_lock(store, "fleet", hostname="some-other-machine", pid=dead_pid())
    with pytest.raises(LockedError, match="some-other-machine"):
        store.locks.acquire("fleet", run_id="r2", owner="bob")


@pytest.mark.parametrize(
    "left, taken_over",
    [
        (timedelta(seconds=60), False),
        (timedelta(seconds=1), False),
        (timedelta(seconds=0), True),
        (timedelta(seconds=-1), True),
        (-timedelta(hours=3), True),
    ],
)
def test_lock_lease_expiry_by_the_database_clock(url: str, left: timedelta, taken_over: bool) -> None:
    """Our own live pid, on another machine's name: only the lease counts, read on the database's clock."""
    first = Store.open(url)
    token, _ = first.locks.acquire("fleet", run_id="r1", owner="ann")
    set_lock(first, "fleet", hostname="elsewhere", expires_at=db_now(first) + left)
    second = Store.open(url)
    if taken_over:
        _, dead = second.locks.acquire("fleet", run_id="r2", owner="bob")
        assert dead is not None and dead.run_id == "r1"
        assert first.locks.heartbeat("fleet", token) is False
    else:
        with pytest.raises(LockedError, match="elsewhere"):
            second.locks.acquire("fleet", run_id="r2", owner="bob")
        assert first.locks.heartbeat("fleet", token) is True


@pytest.mark.parametrize(
    "age, taken_over", [(STALE_AFTER, False), (STALE_AFTER + timedelta(seconds=1), True)]
)
def test_sqlite_lease_follows_the_application_clock(
    sqlite_url: str, age: timedelta, taken_over: bool
) -> None:
    first = Store.open(sqlite_url, clock=Clock(T0))
    first.locks.acquire("fleet", run_id="r1", owner="ann")
    set_lock(first, "fleet", hostname="elsewhere")
    second = Store.open(sqlite_url, clock=Clock(T0 + age))
    if taken_over:
        assert second.locks.acquire("fleet", run_id="r2", owner="bob")[1] is not None
    else:
        with pytest.raises(LockedError):
            second.locks.acquire("fleet", run_id="r2", owner="bob")


def test_heartbeat_renews_the_lease(url: str) -> None:
    holder = Store.open(url)
    token, _ = holder.locks.acquire("fleet", run_id=None, owner="ann")
    set_lock(holder, "fleet", hostname="elsewhere", expires_at=db_now(holder) - timedelta(seconds=5))
    assert holder.locks.heartbeat("fleet", token, run_id="r-late") is True  # not taken over: renewed
    watcher = Store.open(url)
    info = watcher.locks.holder("fleet")
    assert info.run_id == "r-late" and info.expires_at > db_now(watcher) + timedelta(seconds=50)
    assert watcher.locks.is_dead(info) is False
    with pytest.raises(LockedError):
        watcher.locks.acquire("fleet", run_id="r2", owner="bob")
    assert info.to_json()["run"] == "r-late"


def test_takeover_bumps_the_fence_is_audited_and_fences_the_loser(url: str) -> None:
    first = Store.open(url)
    run = make_run(first)
    token, _ = first.locks.acquire("fleet", run_id=run.id, owner="ann")
    fence = first.locks.holder("fleet").fence
    first.runs.set_host(run.id, "h1", state="updating")  # the holder writes
    set_lock(first, "fleet", hostname="elsewhere", expires_at=db_now(first) - timedelta(seconds=1))
    second = Store.open(url)
    second.locks.acquire("fleet", run_id=run.id, owner="bob")
    assert second.locks.holder("fleet").fence == fence + 1
    (entry,) = [e for e in second.audit.entries() if e.action == "lock.takeover"]
    assert entry.actor == "bob" and "lease expired" in entry.reason and "elsewhere" in entry.reason
    assert entry.details["fence"] == fence and entry.details["new_fence"] == fence + 1
    # the loser's run-state writes are refused, every one of them, and change nothing
    for write in (
        lambda: first.runs.set_host(run.id, "h1", state="done"),
        lambda: first.runs.set_hosts(run.id, ["h2"], "done"),
        lambda: first.runs.update(run.id, status="interrupted"),
        lambda: first.ledger.record(HC, {"h1": "9.9"}, source="fleetctl", run_id=run.id, operator="ann"),
    ):
        with pytest.raises(LockedError, match="lost the fleet lock") as info:
            write()
        assert "bob" in info.value.message and "elsewhere" not in info.value.message
    assert second.runs.counts(run.id) == {"updating": 1, "pending": 2}
    assert second.runs.get(run.id).status == "running" and second.ledger.versions(HC) == {}
    assert first.locks.heartbeat("fleet", token) is False
    second.runs.set_host(run.id, "h1", state="done")  # the new holder writes
    first.locks.release("fleet", token)  # a no-op for the new holder
    assert second.locks.holder("fleet").owner == "bob"


def test_fence_only_grows_across_releases(store: Store) -> None:
    fences = []
    for _ in range(3):
        token, _ = store.locks.acquire("fleet", run_id=None, owner="ann")
        fences.append(store.locks.holder("fleet").fence)
        store.locks.release("fleet", token)
    assert fences == sorted(set(fences)) and len(fences) == 3


def test_a_lock_on_this_host_after_a_reboot_is_dead(store: Store, url: str) -> None:
    store.locks.acquire("fleet", run_id="r1", owner="ann")
    set_lock(store, "fleet", boot_id="an-earlier-boot")  # our own live pid, but from another boot
    assert Store.open(url).locks.acquire("fleet", run_id="r2", owner="bob")[1] is not None


def test_concurrent_acquires_one_wins(url: str) -> None:
    """Eight processes race for a fresh lock: exactly one gets it (ON CONFLICT DO NOTHING + FOR UPDATE)."""
    code = (
        "import sys; from fleetctl.store import Store; from fleetctl.errors import LockedError\n"
        "s = Store.open(sys.argv[1])\n"
        "try:\n    s.locks.acquire('fleet', run_id=None, owner='p'); print('won')\n"
        "except LockedError:\n    print('locked')\n"
        "sys.stdout.flush(); sys.stdin.read()\n"  # the winner lives on until every racer has tried
    )
    Store.open(url).close()  # migrated once, so that the racers only race for the lock
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=os.environ,
        )
        for _ in range(8)
    ]
    outs = sorted(p.stdout.readline().strip() for p in procs if p.stdout)
    for p in procs:
        p.communicate(timeout=60)
    assert outs == ["locked"] * 7 + ["won"], outs


def test_release_with_old_token_does_not_free_new_holder(store: Store, url: str) -> None:
    token, _ = store.locks.acquire("fleet", run_id="r1", owner="ann")
    set_lock(store, "fleet", pid=dead_pid())
    other = Store.open(url)
    new_token, _ = other.locks.acquire("fleet", run_id="r2", owner="bob")
    store.locks.release("fleet", token)
    assert other.locks.holder("fleet").token == new_token


def test_heartbeat_and_release_without_a_lock(store: Store) -> None:
    assert store.locks.heartbeat("fleet", "nope") is False
    store.locks.release("fleet", "nope")
    assert store.locks.holder("fleet") is None


# --- freezes ---------------------------------------------------------------------------------------------


def test_freeze_add_active_lift_with_audit(store: Store, clock: Clock) -> None:
    f = store.freezes.add(scope="all", reason="incident 42", by="ann", until=None)
    assert (f.scope, f.reason, f.created_by, f.created_at, f.until, f.lifted_at) == (
        "all",
        "incident 42",
        "ann",
        T0,
        None,
        None,
    )
    assert [x.id for x in store.freezes.active(T0)] == [f.id]
    audit = store.audit.entries()
    assert [(a.action, a.subject, a.reason, a.actor) for a in audit] == [
        ("freeze.on", "all", "incident 42", "ann")
    ]
    assert audit[0].details == {"until": None, "id": f.id}
    clock.advance(minutes=10)
    lifted = store.freezes.lift(by="bob", reason="fixed")
    assert [x.id for x in lifted] == [f.id]
    assert store.freezes.active(clock.at) == []
    assert store.freezes.lift(by="bob", reason="again") == []
    rec = store.freezes.all()[0]
    assert (rec.lifted_by, rec.lift_reason, rec.lifted_at) == ("bob", "fixed", clock.at)
    assert not rec.active_at(clock.at)
    actions = [(a.action, a.actor, a.reason) for a in store.audit.entries()]
    assert actions == [("freeze.off", "bob", "fixed"), ("freeze.on", "ann", "incident 42")]
    assert store.audit.entries()[0].details == {"id": f.id, "frozen_for": "incident 42"}


def test_freeze_until_expires(store: Store, clock: Clock) -> None:
    until = T0 + timedelta(hours=1)
    f = store.freezes.add(scope="ring1", reason="r", by=None, until=until)
    assert f.until == until
    for at, active in [
        (T0, True),
        (T0 + timedelta(minutes=59), True),
        (until, False),
        (until + timedelta(seconds=1), False),
        (T0 - timedelta(seconds=1), False),  # before it was created
    ]:
        assert bool(store.freezes.active(at)) is active, at
        assert f.active_at(at) is active, at
    clock.advance(hours=2)
    assert store.freezes.lift(by="x", reason="y") == []  # expired: nothing to lift
    assert [a.action for a in store.audit.entries()] == ["freeze.on"]


def test_freeze_lift_by_scope(store: Store) -> None:
    a = store.freezes.add(scope="all", reason="a", by="ann", until=None)
    b = store.freezes.add(scope="ring1", reason="b", by="ann", until=None)
    c = store.freezes.add(scope="ring1", reason="c", by="ann", until=None)
    assert [f.id for f in store.freezes.lift(by="bob", reason="ok", scope="ring1")] == [b.id, c.id]
    assert [f.id for f in store.freezes.active(T0)] == [a.id]
    assert [f.id for f in store.freezes.all()] == [c.id, b.id, a.id]
    assert [x.action for x in store.audit.entries()].count("freeze.off") == 2


# --- quarantine ------------------------------------------------------------------------------------------


def test_quarantine_add_get_clear_list(store: Store, clock: Clock) -> None:
    assert store.quarantine.get(HC, "1.1.0") is None
    store.quarantine.add(HC, "1.1.0", reason="hung after 40m", run_id="r1", by="fleetctl")
    store.quarantine.add(HC, "1.1.0", reason="again", run_id="r2", by="fleetctl")  # already there: no-op
    q = store.quarantine.get(HC, "1.1.0")
    assert (q.version, q.reason, q.run_id, q.created_by, q.created_at) == (
        "1.1.0",
        "hung after 40m",
        "r1",
        "fleetctl",
        T0,
    )
    assert store.quarantine.get("other-component", "1.1.0") is None
    assert [e.version for e in store.quarantine.list(HC)] == ["1.1.0"]
    assert [(a.action, a.subject) for a in store.audit.entries()] == [("quarantine.add", "1.1.0")]
    clock.advance(hours=1)
    cleared = store.quarantine.clear(HC, "1.1.0", reason="root cause fixed", by="ann")
    assert cleared is not None and cleared.id == q.id
    assert store.quarantine.get(HC, "1.1.0") is None
    assert store.quarantine.list(HC) == []
    (old,) = store.quarantine.list(HC, include_cleared=True)
    assert (old.cleared_by, old.clear_reason, old.cleared_at) == ("ann", "root cause fixed", clock.at)
    assert store.quarantine.clear(HC, "1.1.0", reason="x", by="ann") is None
    assert store.audit.entries()[0].action == "quarantine.clear"
    store.quarantine.add(HC, "1.1.0", reason="regressed", run_id="r3", by="fleetctl")
    assert store.quarantine.get(HC, "1.1.0").reason == "regressed"
    assert len(store.quarantine.list(HC, include_cleared=True)) == 2


# --- queue and audit -------------------------------------------------------------------------------------


def test_queue_add_list_set(store: Store, clock: Clock) -> None:
    nb = T0 + timedelta(hours=8)
    a = store.queue.add(HC, "1.1.0", pattern="ring1", not_before=nb, by="ann")
    b = store.queue.add(HC, "1.2.0", pattern=None, not_before=None, by="bob")
    store.queue.add("agent", "9", pattern=None, not_before=None, by="bob")
    assert (a.status, a.version, a.pattern, a.not_before, a.created_by, a.created_at) == (
        "queued",
        "1.1.0",
        "ring1",
        nb,
        "ann",
        T0,
    )
    assert [i.id for i in store.queue.list(HC)] == [a.id, b.id]
    store.queue.set(a.id, status="started", run_id="r1")
    assert store.queue.get(a.id).run_id == "r1"
    assert [i.status for i in store.queue.list(HC)] == ["started", "queued"]
    store.queue.set(a.id, status="done")
    store.queue.set(b.id, status="removed")
    assert store.queue.list(HC) == []
    assert [i.id for i in store.queue.list(HC, statuses=("done", "removed"))] == [a.id, b.id]
    assert store.queue.get(999) is None
    audit = [(e.action, e.subject, e.details) for e in store.audit.entries() if e.action == "schedule.add"]
    assert audit[-1] == ("schedule.add", "1.1.0", {"id": a.id, "pattern": "ring1"})
    assert a.to_json()["not_before"] == nb.isoformat()


def test_audit_record_newest_first(store: Store, clock: Clock) -> None:
    store.audit.record("override", "1.1.0", "hotfix", "ann", {"freeze": "xmas"})
    clock.advance(seconds=1)
    store.audit.record("lock.break", "fleet", None, "bob")
    entries = store.audit.entries()
    assert [(e.action, e.actor, e.details) for e in entries] == [
        ("lock.break", "bob", {}),
        ("override", "ann", {"freeze": "xmas"}),
    ]
    assert entries[1].at == T0 and entries[0].at == T0 + timedelta(seconds=1)
    assert len(store.audit.entries(limit=1)) == 1


# --- two terminals ---------------------------------------------------------------------------------------


def test_two_stores_see_each_others_writes(url: str, clock: Clock) -> None:
    writer, watcher = Store.open(url, clock=clock), Store.open(url, clock=clock)
    run = make_run(writer)
    assert watcher.runs.get(run.id) == run
    writer.runs.set_hosts(run.id, ["h1"], "updating")
    assert watcher.runs.counts(run.id) == {"updating": 1, "pending": 2}
    watcher.runs.request(run.id, "abort")
    assert writer.runs.get(run.id).control == "abort"
    watcher.freezes.add(scope="all", reason="stop", by="bob", until=None)
    assert len(writer.freezes.active(T0)) == 1
    writer.ledger.record(HC, {"h1": "1.1.0"}, source="fleetctl", run_id=run.id, operator="ann")
    assert watcher.ledger.versions(HC) == {"h1": "1.1.0"}


def test_reader_is_not_blocked_by_an_open_write_transaction(url: str, clock: Clock) -> None:
    """WAL: `fleetctl status` reads the last committed state while a run is mid-transaction."""
    writer, watcher = Store.open(url, clock=clock), Store.open(url, clock=clock)
    writer.ledger.record(HC, {"h1": "1.0"}, source="observed", run_id=None, operator=None)
    with writer.tx() as conn:
        conn.execute(schema.ledger.update().values(version="2.0"))
        assert watcher.ledger.versions(HC) == {"h1": "1.0"}
    assert watcher.ledger.versions(HC) == {"h1": "2.0"}


def test_failed_transaction_rolls_back(store: Store) -> None:
    store.ledger.record(HC, {"h1": "1.0"}, source="observed", run_id=None, operator=None)
    with pytest.raises(RuntimeError):
        with store.tx() as conn:
            conn.execute(schema.ledger.update().values(version="2.0"))
            raise RuntimeError("crash mid-step")
    assert store.ledger.versions(HC) == {"h1": "1.0"}


def test_concurrent_ledger_writers_never_collide(url: str) -> None:
    """`versions --refresh` on two machines while a run records: every writer's changes land (on
    PostgreSQL the ledger's writers queue on a table lock, as SQLite's BEGIN IMMEDIATE makes them)."""
    code = (
        "import sys; from fleetctl.store import Store\n"
        "s = Store.open(sys.argv[1])\n"
        "for round in range(5):\n"
        "    s.ledger.record('hc', {f'h{i}': f'{sys.argv[2]}.{round}' for i in range(40)}, source='observed',"
        " run_id=None, operator=None)\n"
    )
    Store.open(url).close()
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(6)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, errors
    store = Store.open(url)
    assert len(store.ledger.versions("hc")) == 40
