"""fleet.yml -> FleetConfig (pydantic). Relative paths resolve against fleet.yml's own directory.

Where the file comes from: `--config PATH`, else `FLEETCTL_CONFIG`, else `./fleet.yml`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetctl.errors import ConfigError
from fleetctl.notify import NotifyTargets
from fleetctl.units import CountOrPercent, parse_duration
from fleetctl.windows import WindowsConfig

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _count_or_percent(raw: Any) -> CountOrPercent:
    return raw if isinstance(raw, CountOrPercent) else CountOrPercent.parse(raw)


Amount = Annotated[CountOrPercent, BeforeValidator(_count_or_percent)]
JsonScalar = str | int | float | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)


class Probe(_Model):
    """One health probe. Exactly one of http / tcp / playbook / ssh names its kind and target.

    HTTP probes also take request headers, TLS files and a JSON check. The URL, header values, TLS paths
    and server_name are templates rendered with each host's variables (vaulted ones too); relative TLS
    paths resolve against fleet.yml's directory unless they start with a template."""

    http: str | None = None  # URL template, rendered with the host's variables
    tcp: str | None = None  # "host:port" template
    playbook: str | None = None  # a playbook (default health.yml) run through ansible-runner
    ssh: str | None = None  # a command run over fleetctl's SSH client
    timeout: Duration = 2.0
    expect_status: int = 200
    expect_body: str | None = None  # regex the HTTP body (its first 64 KiB) must match
    expect_json: dict[str, JsonScalar] = {}  # dotted path in the JSON answer -> the value it must hold
    headers: dict[str, str] = {}  # request headers; values are templates
    ca_file: str | None = None  # PEM bundle of the CAs to trust (instead of the system's)
    client_cert: str | None = None  # PEM client certificate for mTLS (may hold the key too)
    client_key: str | None = None  # PEM key of client_cert, unencrypted
    server_name: str | None = None  # TLS name to verify and send as SNI, when the URL holds an address

    @field_validator("expect_body")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Probe:
        kinds = [k for k in ("http", "tcp", "playbook", "ssh") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("a probe needs exactly one of http, tcp, playbook, ssh")
        if self.timeout <= 0:
            raise ValueError("probe timeout must be positive")
        _check_http_options(self)
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("http", "tcp", "playbook", "ssh") if getattr(self, k))

    @property
    def target(self) -> str:
        return str(getattr(self, self.kind))


_HTTP_ONLY = ("expect_json", "headers", "ca_file", "client_cert", "client_key", "server_name")
_TLS_PATHS = ("ca_file", "client_cert", "client_key")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _templated(value: str) -> bool:
    return "{{" in value or "{%" in value


def _check_http_options(p: Probe) -> None:
    """Errors name the key and what to write instead; load_config adds the probe's place in fleet.yml."""
    used = [k for k in _HTTP_ONLY if getattr(p, k)]
    if p.kind != "http":
        if used:
            raise ValueError(f"{used[0]} applies to http probes only (this is a {p.kind} probe)")
        return
    for name, value in p.headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not a valid header name (letters, digits, '-')")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"headers: the value of {name} holds a line break or NUL")
    for path in p.expect_json:
        if not path or "" in path.split("."):
            raise ValueError(f"expect_json: {path!r} is not a dotted path (e.g. status or checks.db)")
    tls = [k for k in (*_TLS_PATHS, "server_name") if getattr(p, k)]
    if tls and str(p.http).lower().startswith("http://"):
        raise ValueError(f"{tls[0]} needs an https:// URL")
    if p.client_key and not p.client_cert:
        raise ValueError("client_key needs client_cert")
    for key in _TLS_PATHS:
        value = getattr(p, key)
        if value and not _templated(value) and not Path(value).is_file():
            raise ValueError(f"{key}: no such file {value} (relative paths start at fleet.yml's directory)")


def _probe_paths(base: Path, probe: Any) -> Any:
    """Resolve a probe's TLS file paths against fleet.yml's directory (a path that starts with a template
    is left to render)."""
    if not isinstance(probe, dict):
        return probe
    return {
        k: str(_resolve(base, v))
        if k in _TLS_PATHS and isinstance(v, str) and v and not v.startswith(("{{", "{%"))
        else v
        for k, v in probe.items()
    }


def _positive(seconds: float, example: str) -> float:
    """A duration that cannot be zero (an interval, a timeout)."""
    if seconds <= 0:
        raise ValueError(f"must be a positive duration (e.g. {example}), not {seconds:g}")
    return seconds


class HealthConfig(_Model):
    interval: Duration = 10.0
    failures_to_fail: int = Field(2, ge=1)
    probes: list[Probe] = []

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        return _positive(value, "10s")


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


class GuardConfig(_Model):
    """The guard after a successful rollout: the updated hosts stay under probes for `duration`, one
    round every `interval` (run by `tick` or `guard watch`); too many failing hosts trip it."""

    duration: Duration = 24 * 3600.0
    interval: Duration = 300.0
    failures_to_fail: int = Field(2, ge=1)  # consecutive failed rounds that fail a host
    max_failures: Amount = CountOrPercent(0, False)  # of the guarded hosts; exceeded -> trip
    on_trip: Literal["rollback", "alert"] = "rollback"

    @model_validator(mode="after")
    def _positive(self) -> GuardConfig:
        if self.duration <= 0:
            raise ValueError("guard.duration must be positive (remove the guard section to turn it off)")
        if self.interval <= 0:
            raise ValueError("guard.interval must be positive")
        return self


class SshConfig(_Model):
    known_hosts: Path | None = None  # default: ~/.ssh/known_hosts
    user: str | None = None
    key: Path | None = None
    connect_timeout: Duration = 10.0
    command_timeout: Duration = 30.0

    @field_validator("connect_timeout", "command_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        return _positive(value, "10s")


class ArtifactsConfig(_Model):
    """Release archives on the nodes. Without a digest (hc_artifact_checksum or a SHA256SUMS beside the
    archive) an archive fetched over anything but https fails the host, unless require_checksum is false."""

    require_checksum: bool = True

    def playbook_vars(self) -> dict[str, Any]:
        return {"hc_require_checksum": self.require_checksum}


class LockConfig(_Model):
    """The fleet lock's lease: a holder that stops renewing it (killed, its machine gone) is taken over
    once it expires. Renewed three times per lease (at most every 10 s)."""

    lease: Duration = 60.0

    @field_validator("lease")
    @classmethod
    def _at_least_2s(cls, value: float) -> float:
        if value < 2:
            raise ValueError(f"must be at least 2s (e.g. 60s), not {value:g}s")
        return value


class MetricsConfig(_Model):
    textfile: Path | None = None  # node_exporter textfile, rewritten atomically (relative to fleet.yml)


class ExecutionNode(_Model):
    """A machine that runs `ansible-runner worker` for a slice of each batch, reached over SSH."""

    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key: Path | None = None  # SSH private key (relative to fleet.yml)
    known_hosts: Path | None = None  # default: ~/.ssh/known_hosts (host keys are always checked)
    ansible_runner: str = "ansible-runner"  # the command on the node (ansible-playbook must sit beside it)
    python: str = "python3"  # runs fleetctl's small supervisor on the node (standard library only)
    ssh_options: list[str] = []  # extra `ssh -o` options, e.g. ["ProxyJump=bastion"]

    @property
    def name(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"


class ExecutionConfig(_Model):
    """How a batch runs: `shards` parallel ansible-runner jobs, each on a round-robin slice of it;
    with `nodes`, one slice per execution node (ansible-runner's transmit / worker / process)."""

    shards: int = Field(1, ge=1, le=64)
    nodes: list[ExecutionNode] = []
    strategy: Literal["linear", "mitogen"] = "linear"  # mitogen: pip install 'fleetctl[fast]'


class FleetConfig(_Model):
    path: Path  # the fleet.yml this came from (set by the loader)
    name: str | None = None  # the fleet's name in notifications and metrics; default: fleet.yml's directory
    inventory: list[Path]
    state: str | None = None  # SQLAlchemy URL or SQLite path; default fleetctl.db beside fleet.yml
    component: str = "host-controller"
    playbooks: Path | None = None  # default: the playbooks shipped with fleetctl
    vars: dict[str, Any] = {}  # extra vars for every playbook
    rollout: RolloutPolicy = RolloutPolicy()
    rollback: RollbackPolicy = RollbackPolicy()
    health: HealthConfig = HealthConfig()
    guard: GuardConfig | None = None  # absent: no guard after rollouts
    freeze: WindowsConfig = WindowsConfig()
    maintenance: WindowsConfig = WindowsConfig()
    ssh: SshConfig = SshConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    vault_password_file: Path | None = None  # Ansible Vault secrets for inventory and playbooks
    env: dict[str, str] = {}  # environment variables for every ansible-playbook run (e.g. HOME, ANSIBLE_*)
    notify: NotifyTargets = []  # where events go (fleetctl.notify)
    metrics: MetricsConfig = MetricsConfig()
    lock: LockConfig = LockConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @field_validator("vars")
    @classmethod
    def _no_artifact_policy_in_vars(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "hc_require_checksum" in value:
            raise ValueError(
                "hc_require_checksum comes from fleet.yml: write `artifacts: {require_checksum: false}`"
            )
        return value

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def playbook_vars(self) -> dict[str, Any]:
        """Extra vars for every playbook run: `vars:` plus what fleet.yml's sections decide on the nodes."""
        return {**self.vars, **self.artifacts.playbook_vars()}

    def state_url(self, override: str | None = None) -> str:
        """--db / FLEETCTL_DB, else `state:` in fleet.yml, else sqlite:///<dir of fleet.yml>/fleetctl.db."""
        raw = override or self.state or "fleetctl.db"
        if "://" in raw:
            return raw
        return f"sqlite:///{os.path.abspath(self.base_dir / raw)}"  # not resolved: symlinks are refused


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
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML refuses; its str() spans lines
            what = f"character {chr(exc.character)!r} at position {exc.position} is not allowed"
        else:
            what = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{path}: not valid YAML{where}: {what}", "fix the YAML syntax") from None
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
    health = data.get("health")
    if isinstance(health, dict) and isinstance(health.get("probes"), list):
        data["health"] = dict(health, probes=[_probe_paths(base, p) for p in health["probes"]])
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
