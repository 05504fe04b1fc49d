"""The journal's tables (SQLAlchemy Core). Changes go through versioned migrations in migrations.py."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in, timezone-aware UTC out, on SQLite (which keeps no zone) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the journal")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

meta = Table("meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text))

ledger = Table(
    "ledger",
    metadata,
    Column("fleet", String(128), primary_key=True, server_default=""),  # v6: key (fleet, host, component)
    Column("host", String(255), primary_key=True),
    Column("component", String(64), primary_key=True),
    Column("version", String(128)),
    Column("previous_version", String(128)),
    Column("changed_at", UTCDateTime),
    Column("run_id", String(64)),
    Column("operator", String(128)),
    Column("source", String(16), nullable=False),  # fleetctl | observed
)

history = Table(
    "history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fleet", String(128), nullable=False, server_default=""),  # v6: the fleet (fleet.yml `name:`)
    Column("host", String(255), nullable=False, index=True),
    Column("component", String(64), nullable=False),
    Column("from_version", String(128)),
    Column("to_version", String(128)),
    Column("run_id", String(64), index=True),
    Column("operator", String(128)),
    Column("source", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("fleet", String(128), nullable=False, server_default=""),  # v6: the fleet (fleet.yml `name:`)
    Column("kind", String(16), nullable=False),  # rollout | rollback
    Column("target", String(128)),  # the version (rollout, rollback --to), or None
    Column("component", String(64), nullable=False),
    Column("fingerprint", String(64)),
    Column("status", String(16), nullable=False, index=True),
    Column("status_reason", Text),
    Column("operator", String(128)),
    Column("reason", Text),
    Column("plan", JSON),  # the Plan the run executes
    Column("options", JSON),  # forks, on_failure, override_freeze, unattended ...
    Column("reverts", String(64)),  # a rollback: the run it reverts
    Column("stage", String(128)),
    Column("batch", Integer),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("control", String(16)),  # pause | abort: a request from another terminal
)

run_hosts = Table(
    "run_hosts",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("host", String(255), primary_key=True),
    Column("seq", Integer, nullable=False),  # order in the plan
    Column("stage", String(128)),
    Column("batch", Integer),
    Column(
        "state", String(16), nullable=False
    ),  # pending updating verifying done failed rolling_back rolled_back skipped
    Column("from_version", String(128)),
    Column("to_version", String(128)),
    Column("error", Text),
    Column("probe_ms", Float),  # last probe latency
    Column("probe_max_ms", Float),
    Column("updated_at", UTCDateTime),
)

freezes = Table(
    "freezes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fleet", String(128), nullable=False, server_default=""),  # v6: the fleet (fleet.yml `name:`)
    Column("scope", String(255), nullable=False),  # an Ansible host pattern; "all" for the fleet
    Column("reason", Text, nullable=False),
    Column("created_by", String(128)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("until", UTCDateTime),
    Column("lifted_at", UTCDateTime),
    Column("lifted_by", String(128)),
    Column("lift_reason", Text),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fleet", String(128), nullable=False, server_default=""),  # v6: the fleet (fleet.yml `name:`)
    Column("component", String(64), nullable=False),
    Column("version", String(128), nullable=False, index=True),
    Column("reason", Text, nullable=False),
    Column("run_id", String(64)),
    Column("created_by", String(128)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("cleared_at", UTCDateTime),
    Column("cleared_by", String(128)),
    Column("clear_reason", Text),
)

locks = Table(
    "locks",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("run_id", String(64)),
    Column("owner", String(128)),
    Column("hostname", String(255)),
    Column("pid", Integer),
    Column("token", String(64), nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
)

queue = Table(
    "queue",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fleet", String(128), nullable=False, server_default=""),  # v6: the fleet (fleet.yml `name:`)
    Column("component", String(64), nullable=False),
    Column("version", String(128), nullable=False),
    Column("pattern", String(255)),
    Column("not_before", UTCDateTime),
    Column("created_by", String(128)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),  # queued | started | done | removed
    Column("run_id", String(64)),
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fleet", String(128), nullable=False, server_default=""),  # v6: the fleet (fleet.yml `name:`)
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("actor", String(128)),
    Column("action", String(64), nullable=False),
    Column("subject", String(255)),
    Column("reason", Text),
    Column("details", JSON),
)

# v3: the Ansible process groups fleetctl processes run, so that a dead one's can be ended (orphans.py).
ansible_groups = Table(
    "ansible_groups",
    metadata,
    Column("marker", String(64), primary_key=True),  # in the environment of each of its processes
    Column("hostname", String(255), nullable=False),  # the machine it runs on
    Column("boot_id", String(64)),
    Column("owner_pid", Integer, nullable=False),  # the fleetctl process that started it
    Column("owner_start", BigInteger),  # its start time (clock ticks since boot): pids are recycled
    Column("pgid", Integer),
    Column("pid", Integer),
    Column("start", BigInteger),
    Column("run_id", String(64)),
    Column("playbook", String(255), nullable=False),
    Column("hosts", JSON),
    Column("started_at", UTCDateTime, nullable=False),
)

# v5: the fleet lock as a lease (store/locks.py). The row stays when released (token NULL) so that the
# fencing counter only ever grows; expires_at is computed from the database's clock (now() on PostgreSQL).
leases = Table(
    "leases",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("fence", BigInteger, nullable=False),  # +1 at every acquisition; run-state writes carry it
    Column("token", String(64)),  # NULL: free
    Column("run_id", String(64)),
    Column("owner", String(128)),
    Column("hostname", String(255)),  # the machine (FLEETCTL_HOSTNAME overrides, for tests/containers)
    Column("boot_id", String(64)),
    Column("pid", Integer),
    Column("acquired_at", UTCDateTime),
    Column("heartbeat_at", UTCDateTime),
    Column("expires_at", UTCDateTime),
)

RETIRED_TABLES = frozenset({"locks"})  # created by migration 1, dropped by 5 (replaced by leases)
