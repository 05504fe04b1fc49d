"""The injected context every entry point takes: where config and journal are, who operates, what time it is.

Tests build one with a fixed clock and their own paths; the CLI builds one from its options. Config,
inventory and store are loaded lazily and once.
"""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path

from sqlalchemy.engine import make_url

from fleetctl import notify
from fleetctl.config import FleetConfig, find_config, load_config
from fleetctl.errors import ConfigError
from fleetctl.events import Event, EventSink, discard
from fleetctl.executor import Executor, ExecutorSettings
from fleetctl.health import Prober
from fleetctl.inventory import Fleet
from fleetctl.inventory_index import limited_inventory, load_fleet
from fleetctl.resources import playbooks_dir
from fleetctl.store import Store

log = logging.getLogger("fleetctl.events")


def _vault_env(cfg: FleetConfig) -> dict[str, str]:
    """Vault secrets reach Ansible only through its own mechanism: a password file it reads itself."""
    return {"ANSIBLE_VAULT_PASSWORD_FILE": str(cfg.vault_password_file)} if cfg.vault_password_file else {}


def _strategy_env(cfg: FleetConfig) -> dict[str, str]:
    """`execution: {strategy: mitogen}`: checked against ansible-core before anything runs."""
    if cfg.execution.strategy != "mitogen":
        return {}
    from fleetctl.execution.mitogen import strategy_env

    return strategy_env()


def default_operator(env: Mapping[str, str]) -> str:
    if env.get("FLEETCTL_OPERATOR"):
        return env["FLEETCTL_OPERATOR"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


@dataclass
class FleetContext:
    config_path: Path | None = None
    db_url: str | None = None
    operator: str | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    events: EventSink = discard

    def now(self) -> datetime:
        return self.clock()

    @property
    def who(self) -> str:
        return self.operator or default_operator(self.env)

    @cached_property
    def config(self) -> FleetConfig:
        return load_config(find_config(self.config_path, self.env))

    @cached_property
    def fleet(self) -> Fleet:
        cfg = self.config  # the compiled index under the state dir, rebuilt when a source changes
        return load_fleet(
            cfg.inventory, vault_password_file=cfg.vault_password_file, state_dir=self.state_dir
        )

    @property
    def state_url(self) -> str:
        """--db, else $FLEETCTL_DB, else `state:` in fleet.yml, else fleetctl.db beside it."""
        url = self.db_url or self.env.get("FLEETCTL_DB") or None
        if url and "://" not in url:  # a path typed at the shell is relative to where it was typed
            url = f"sqlite:///{os.path.abspath(url)}"  # not resolved: a symlink is refused
        return self.config.state_url(url)

    def journal_exists(self) -> bool:
        """False only for a SQLite journal not created yet: a command that merely reads (a plan) then
        needs no journal, and creates none."""
        if "store" in self.__dict__:
            return True
        url = make_url(self.state_url)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return True
        return os.path.lexists(url.database)

    @cached_property
    def store(self) -> Store:
        store = Store.open(self.state_url, clock=self.clock, fleet=self.fleet_name)
        notify.configure_store(store, self.config)  # the outbox fans events out to fleet.yml's targets
        store.locks.lease = timedelta(seconds=self.config.lock.lease)
        return store

    @property
    def component(self) -> str:
        return self.config.component

    @cached_property
    def fleet_name(self) -> str:
        """fleet.yml `name:`, which scopes the journal; required once the journal is a shared server (two
        fleets must not fall back to the same directory name), else the name of fleet.yml's directory."""
        if self.config.name is None and make_url(self.state_url).get_backend_name() != "sqlite":
            raise ConfigError(
                "fleet.yml: name: is required when `state:` / --db is a database server (several fleets share it)",
                "add e.g. `name: prod-eu` to fleet.yml (unique among the fleets in that database)",
            )
        return notify.fleet_name(self.config)

    @property
    def lock_name(self) -> str:
        return f"fleet:{self.fleet_name}:{self.component}"

    @cached_property
    def state_dir(self) -> Path:
        """Private working files (ansible-runner artifacts) beside fleet.yml."""
        path = self.config.base_dir / ".fleetctl"
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def executor(self) -> Executor:
        cfg = self.config
        settings = ExecutorSettings(
            inventory=cfg.inventory,
            playbooks=cfg.playbooks or playbooks_dir(),
            work_dir=self.state_dir / "runner",
            extravars=cfg.playbook_vars(),
            envvars={**_vault_env(cfg), **cfg.env, **_strategy_env(cfg)},
            inventory_for=lambda hosts: limited_inventory(self.fleet, hosts),
        )
        if cfg.execution.shards > 1 or cfg.execution.nodes:  # parallel jobs, one per slice of each batch
            from fleetctl.execution import ShardedExecutor, node_targets

            return ShardedExecutor(settings, cfg.execution.shards, node_targets(cfg))
        return Executor(settings)

    def prober(self, executor: Executor | None = None) -> Prober:
        """The configured health probes; ssh probes go through fleetctl's paramiko client."""
        probes = self.config.health.probes
        ssh = None
        if any(p.kind == "ssh" for p in probes):
            from fleetctl.ssh import SshClient, probe_runner  # paramiko is slow to import: only when needed

            ssh = probe_runner(SshClient(self.config.ssh), self.fleet)
        return Prober(self.fleet, probes, executor or self.executor(), ssh_runner=ssh)

    def emit(self, event_kind: str, run_id: str | None = None, /, **data: object) -> None:
        """Tell the event sink. A sink that fails (a renderer choking on what a node answered) is logged
        and never stops the caller: rendering must not end a run before its rollback."""
        event = Event(event_kind, run_id, dict(data), self.now())
        notify.record(self, event)  # the few engine events that go to the notification outbox
        try:
            self.events(event)
        except Exception as exc:  # noqa: BLE001 - the sink is outside the engine's concern
            log.warning("fleetctl: could not show event %s: %s: %s", event_kind, type(exc).__name__, exc)
            log.debug("event sink traceback", exc_info=True)
