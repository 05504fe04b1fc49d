"""`fleetctl init`: a commented fleet.yml for an existing inventory.

Stages come from the inventory's groups when they look like canary and rings (canary, ring1..ringN, then
every other host as the rest); otherwise a canary of one host and waves of 10% and 50% of the rest, then
the rest. The probes are the node contract's health endpoint, and the file is never overwritten.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from fleetctl.errors import UsageError
from fleetctl.inventory import Fleet, load_inventory

CONFIG_NAME = "fleet.yml"
PROBE_URL = "http://{{ ansible_host | default(inventory_hostname) }}:{{ hc_port | default(8500) }}/health"
_RING = re.compile(r"^ring[_-]?(\d+)$")
WAVES = (0.10, 0.50)  # cumulative shares of the rest for fleets without ring groups


@dataclass(frozen=True)
class StageSpec:
    """One stage as written to fleet.yml, with how many hosts it matched when it was written."""

    name: str
    hosts: str  # Ansible host pattern
    batch: int | str
    bake: str
    count: int
    max_failures: int | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InitResult:
    path: Path
    inventory: str  # as written in fleet.yml
    stages: list[StageSpec]
    spread_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "inventory": self.inventory,
            "spread_by": self.spread_by,
            "stages": [s.to_json() for s in self.stages],
        }


def ring_groups(fleet: Fleet) -> list[str]:
    """The groups named ring1, ring2, ... (ring_1, ring-1 too), in ring order."""
    groups = {str(g) for h in fleet.hosts.values() for g in h.groups}
    rings = [(int(m.group(1)), g) for g in groups if (m := _RING.match(g))]
    return [g for _, g in sorted(rings)]


def derive_stages(fleet: Fleet) -> list[StageSpec]:
    """Stages for this inventory: from canary/ring groups when it has them, else percentage waves."""
    total = len(fleet)
    groups = {str(g) for h in fleet.hosts.values() for g in h.groups}
    rings = ring_groups(fleet)
    taken: set[str] = set()

    def count(pattern: str) -> int:
        members = [h for h in fleet.select(pattern, required=False) if h not in taken]
        taken.update(members)
        return len(members)

    if "canary" in groups or rings:
        canary = "canary" if "canary" in groups else "all[0]"
        stages = [StageSpec("canary", canary, 1, "15m", count(canary), 0, "one host at a time")]
        for ring in rings:
            stages.append(StageSpec(ring, ring, "50%", "10m", count(ring)))
        rest = count("all")
        stages.append(StageSpec("rest", "all", "25%", "5m", rest, note="every host in no stage above"))
        return stages
    stages = [StageSpec("canary", "all[0]", 1, "15m", count("all[0]"), 0, "the first host of the inventory")]
    rest, start = total - 1, 1
    for i, share in enumerate(WAVES, start=1):
        end = max(start, math.ceil(share * rest))  # hosts 1..end of the rest, cumulative
        if end >= rest:
            break
        pattern = f"all[{start}:{end}]"
        note = f"hosts {start + 1}-{end + 1} of {total} in inventory order ({share:.0%} of the rest)"
        stages.append(StageSpec(f"wave{i}", pattern, "100%", "10m", count(pattern), note=note))
        start = end + 1
    stages.append(StageSpec("rest", "all", "100%", "5m", count("all"), note="every host not in a wave"))
    return stages


def spread_label(fleet: Fleet) -> str | None:
    """`zone` when every host has one, so batches spread across zones."""
    return "zone" if all(h.var("zone") not in (None, "") for h in fleet.hosts.values()) else None


def init_config(inventory: Path, directory: Path, vault_password_file: Path | None = None) -> InitResult:
    """Write <directory>/fleet.yml for `inventory`; refuse when it exists. Nothing is written on error."""
    directory = Path(directory)
    target = directory / CONFIG_NAME
    if target.exists():
        raise UsageError(
            f"{target} already exists; fleetctl init never overwrites it",
            "edit it, remove it, or pass another --dir",
        )
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dir {directory} is not a directory", "pass a directory for fleet.yml")
    fleet = load_inventory([inventory], vault_password_file=vault_password_file)
    stages = derive_stages(fleet)
    spread_by = spread_label(fleet)
    shown = _relative(Path(inventory), directory)
    text = render(shown, stages, spread_by, len(fleet))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(
            f"{target} already exists; fleetctl init never overwrites it", "edit it or remove it"
        ) from None
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return InitResult(target.resolve(), shown, stages, spread_by)


def _relative(inventory: Path, directory: Path) -> str:
    """The inventory as fleet.yml should name it: relative to fleet.yml's directory when that stays
    short (inside it, or beside it), else absolute."""
    inv = inventory.resolve()
    rel = os.path.relpath(inv, directory.resolve())
    if rel.split(os.sep).count("..") <= 1:
        return rel + ("/" if inv.is_dir() else "")
    return str(inv) + ("/" if inv.is_dir() else "")


def _q(value: object) -> str:
    """A YAML scalar, quoted only when it must be."""
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix("\n...\n").strip()


def _stage_lines(stages: list[StageSpec]) -> str:
    out = []
    for s in stages:
        out.append(f"    - name: {_q(s.name)}")
        out.append(f"      hosts: {_q(s.hosts):<18} # {s.count} host(s) now; {s.note}".rstrip("; "))
        out.append(f"      batch: {_q(s.batch)}")
        out.append(f"      bake: {s.bake}")
        if s.max_failures is not None:
            out.append(f"      max_failures: {s.max_failures}")
    return "\n".join(out)


def render(inventory: str, stages: list[StageSpec], spread_by: str | None, hosts: int) -> str:
    """The commented fleet.yml text."""
    spread = (
        f"  spread_by: {spread_by}           # hosts' `{spread_by}` variable: a batch never takes a whole {spread_by}\n"
        "  max_unavailable: 50%      # at most this share of one zone's hosts in a batch\n"
        if spread_by
        else "  # spread_by: zone          # a host variable; batches then spread across its values\n"
        "  # max_unavailable: 50%\n"
    )
    return f"""\
# fleet.yml: how fleetctl rolls the host controller out across this fleet.
# Written by `fleetctl init` for {hosts} host(s); edit freely. Relative paths are relative to this file.
# Check it with `fleetctl check`, see a rollout with `fleetctl plan VERSION`.

# The Ansible inventory (a file, a directory, or a list of them).
inventory: {_q(inventory)}
# Ansible Vault password file, when the inventory holds vaulted variables:
# vault_password_file: ~/.fleet-vault-pass

# The journal: a SQLite path (beside this file) or a SQLAlchemy URL (postgresql+psycopg://host/db).
state: fleetctl.db

# Release archives: without a digest (hc_artifact_checksum or a SHA256SUMS beside the archive) a node
# accepts an archive only when it came over https all the way:
# artifacts:
#   require_checksum: true

# Extra variables for every playbook run (they override the inventory), e.g. a staging artifact store:
# vars:
#   hc_artifact_base_url: https://artifacts.example.net/host-controller

rollout:
  forks: 20                 # hosts updated in parallel within a batch
  on_failure: rollback      # a failed budget halts, reverts every host the run changed, quarantines
  max_failures: 0           # the run's failure budget (a count or a percent of its hosts)
{spread}  # Stages run in order; each takes the hosts its pattern matches that no earlier stage took,
  # in batches (a count or a percent of the stage), and bakes under the health probes after each batch.
  # `unattended: false` makes a scheduled (`tick`) run pause before that stage for an operator.
  stages:
{_stage_lines(stages)}

rollback:
  forks: 50                 # rollbacks run wide: no bakes, only a final health check
  batch: 100%

health:
  interval: 10s             # between probe rounds during a bake
  failures_to_fail: 2       # consecutive failed probes that fail a host
  probes:
    # The node contract's health endpoint, rendered per host with its inventory variables.
    - http: "{PROBE_URL}"
      timeout: 2s
      expect_status: 200
    # - tcp: "{{{{ ansible_host }}}}:{{{{ hc_port }}}}"
    # - playbook: health.yml  # asks hc_health_url from the node itself, through Ansible

# Change freezes and maintenance windows (times in the window's zone):
# freeze:
#   windows:
#     - {{name: year-end, start: "2026-12-20 00:00", end: "2027-01-04 00:00", timezone: Europe/Berlin}}
# maintenance:
#   windows:
#     - {{name: nightly, cron: "0 1 * * *", duration: 4h, cutoff: 1h, timezone: UTC}}
"""
