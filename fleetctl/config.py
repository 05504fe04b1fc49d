"""fleet.yml -> FleetConfig (pydantic). Relative paths resolve against fleet.yml's own directory.

Where the file comes from: `--config PATH`, else `FLEETCTL_CONFIG`, else `./fleet.yml`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from fleetctl.errors import ConfigError
from fleetctl.units import CountOrPercent, parse_duration
from fleetctl.windows import WindowsConfig

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _count_or_percent(raw: Any) -> CountOrPercent:
    return raw if isinstance(raw, CountOrPercent) else CountOrPercent.parse(raw)


Amount = Annotated[CountOrPercent, BeforeValidator(_count_or_percent)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


class Probe(_Model):
    """One health probe. Exactly one of http / tcp / playbook / ssh names its kind and target."""

    http: str | None = None  # URL template, rendered with the host's variables
    tcp: str | None = None  # "host:port" template
    playbook: str | None = None  # a playbook (default health.yml) run through ansible-runner
    ssh: str | None = None  # a command run over fleetctl's SSH client
    timeout: Duration = 2.0
    expect_status: int = 200
    expect_body: str | None = None  # regex the HTTP body must match

    @model_validator(mode="after")
    def _one_kind(self) -> Probe:
        kinds = [k for k in ("http", "tcp", "playbook", "ssh") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("a probe needs exactly one of http, tcp, playbook, ssh")
        if self.timeout <= 0:
            raise ValueError("probe timeout must be positive")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("http", "tcp", "playbook", "ssh") if getattr(self, k))

    @property
    def target(self) -> str:
        return str(getattr(self, self.kind))


class HealthConfig(_Model):
    interval: Duration = 10.0
    failures_to_fail: int = Field(2, ge=1)
    probes: list[Probe] = []


class Stage(_Model):
    name: str
    hosts: str  # an Ansible host pattern
    batch: Amount = CountOrPercent(100, True)
    bake: Duration = 0.0
    max_failures: Amount | None = None  # None: only the run's budget applies
    unattended: bool = True  # false: a `tick` run pauses before this stage for an operator


class RolloutPolicy(_Model):
    forks: int = Field(20, ge=1, le=500)
    on_failure: Literal["rollback", "halt"] = "rollback"
    max_failures: Amount = CountOrPercent(0, False)
    spread_by: str | None = None
    max_unavailable: Amount | None = None
    stages: list[Stage] = [Stage(name="all", hosts="all", batch=CountOrPercent(10, True))]

    @model_validator(mode="after")
    def _unique_stages(self) -> RolloutPolicy:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique: {', '.join(dupes)}")
        if not self.stages:
            raise ValueError("at least one stage is needed")
        return self


class RollbackPolicy(_Model):
    forks: int = Field(50, ge=1, le=500)
    batch: Amount = CountOrPercent(100, True)


class SshConfig(_Model):
    known_hosts: Path | None = None  # default: ~/.ssh/known_hosts
    user: str | None = None
    key: Path | None = None
    connect_timeout: Duration = 10.0
    command_timeout: Duration = 30.0


class FleetConfig(_Model):
    path: Path  # the fleet.yml this came from (set by the loader)
    inventory: list[Path]
    state: str | None = None  # SQLAlchemy URL or SQLite path; default fleetctl.db beside fleet.yml
    component: str = "host-controller"
    playbooks: Path | None = None  # default: the playbooks shipped with fleetctl
    vars: dict[str, Any] = {}  # extra vars for every playbook
    rollout: RolloutPolicy = RolloutPolicy()
    rollback: RollbackPolicy = RollbackPolicy()
    health: HealthConfig = HealthConfig()
    freeze: WindowsConfig = WindowsConfig()
    maintenance: WindowsConfig = WindowsConfig()
    ssh: SshConfig = SshConfig()
    vault_password_file: Path | None = None  # Ansible Vault secrets for inventory and playbooks
    env: dict[str, str] = {}  # environment variables for every ansible-playbook run (e.g. HOME, ANSIBLE_*)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def state_url(self, override: str | None = None) -> str:
        """--db / FLEETCTL_DB, else `state:` in fleet.yml, else sqlite:///<dir of fleet.yml>/fleetctl.db."""
        raw = override or self.state or "fleetctl.db"
        if "://" in raw:
            return raw
        return f"sqlite:///{(self.base_dir / raw).resolve()}"


def find_config(explicit: Path | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if explicit is not None:
        path, origin = explicit, "--config"
    elif env.get("FLEETCTL_CONFIG"):
        path, origin = Path(env["FLEETCTL_CONFIG"]), "FLEETCTL_CONFIG"
    else:
        path, origin = Path("fleet.yml"), "./fleet.yml"
    if not path.is_file():
        raise ConfigError(
            f"no fleet configuration at {path} (from {origin})",
            "pass --config PATH, set FLEETCTL_CONFIG, or run in a directory with fleet.yml "
            "(`fleetctl sim up` writes one for a simulated fleet)",
        )
    return path.resolve()


def load_config(path: Path) -> FleetConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}", "fix the YAML syntax"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", "check the path and permissions") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings", "see README: Configuration")
    if not raw.get("inventory") or (isinstance(raw["inventory"], list) and not all(raw["inventory"])):
        raise ConfigError(f"{path}: inventory: missing or empty", "add `inventory: path/to/inventory.yml`")
    base = path.parent
    inv = raw["inventory"] if isinstance(raw["inventory"], list) else [raw["inventory"]]
    data = dict(raw, path=path, inventory=[_resolve(base, p) for p in inv])
    if data.get("vault_password_file"):
        data["vault_password_file"] = _resolve(base, data["vault_password_file"])
    if data.get("playbooks"):
        data["playbooks"] = _resolve(base, data["playbooks"])
    if isinstance(data.get("ssh"), dict):
        data["ssh"] = {
            k: (_resolve(base, v) if k in ("known_hosts", "key") and v else v) for k, v in data["ssh"].items()
        }
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(
            f"{path.name}: {field}: {msg}", "see README: Configuration for the accepted keys"
        ) from None


def _resolve(base: Path, value: Any) -> Path:
    p = Path(os.path.expanduser(str(value)))
    return p if p.is_absolute() else (base / p).resolve()
