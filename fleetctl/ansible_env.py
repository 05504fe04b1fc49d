"""What fleetctl hands to ansible-playbook, and nothing more.

- The environment: ansible-runner copies the whole process environment and writes it into each run's
  artifacts (`command`); fleetctl keeps only what Ansible needs (PATH, HOME, locale, TMPDIR, the SSH
  agent, ANSIBLE_*), what ansible-runner itself adds, and what fleet.yml's `env:` and the vault set.
- Extra vars: a private YAML file in which every string fleetctl passes for a run is tagged `!unsafe`,
  so Ansible never renders a `{{ ... }}` that came from a node or the journal. The operator's own
  `vars:` from fleet.yml are passed as written (they may be templates on purpose).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# Quiet, predictable Ansible: fleetctl renders progress itself.
ANSIBLE_ENV = {
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_DEPRECATION_WARNINGS": "False",
    "ANSIBLE_LOCALHOST_WARNING": "False",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
    "ANSIBLE_SYSTEM_WARNINGS": "False",
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    # Without it, Ansible's paramiko connection asks "continue connecting?" for a host missing from
    # known_hosts, and nobody answers under ansible-runner: the run would hang. With it the host is
    # refused at once (unreachable). Harmless for ssh and local.
    "ANSIBLE_USE_PERSISTENT_CONNECTIONS": "True",
}

# Taken from fleetctl's own environment; everything else stays out of Ansible (and its artifacts).
KEEP = ("HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "SSH_AUTH_SOCK", "TERM")
KEEP_PREFIXES = ("LC_", "ANSIBLE_")


def path_with_ansible() -> str:
    """PATH with fleetctl's own environment first, so its ansible-playbook runs (a venv need not be active)."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])


def minimal_env(
    prepared: Mapping[str, str], explicit: Mapping[str, str], inherited: Mapping[str, str] | None = None
) -> dict[str, str]:
    """From ansible-runner's prepared environment (the process environment plus its own settings), keep
    the variables Ansible needs, those ansible-runner set itself and those fleetctl set (`explicit`)."""
    inherited = os.environ if inherited is None else inherited
    out = {}
    for key, value in prepared.items():
        if (
            key in explicit
            or key in KEEP
            or key.startswith(KEEP_PREFIXES)
            or inherited.get(key) != value  # ansible-runner's own (callback plugin, artifact dir ...)
        ):
            out[key] = value
    return out


class _Unsafe(str):
    """A string Ansible must never render: written as `!unsafe`."""


class _Dumper(yaml.SafeDumper):
    pass


def _unsafe(dumper: yaml.SafeDumper, value: _Unsafe) -> yaml.Node:
    return dumper.represent_scalar("!unsafe", str(value), style="'")


_Dumper.add_representer(_Unsafe, _unsafe)


def unsafe(value: Any) -> Any:
    """Every string in `value` (keys excepted) marked unsafe; numbers, booleans and None as they are."""
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, Mapping):
        return {str(k): unsafe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [unsafe(v) for v in value]
    return value


def write_vars(path: Path, config_vars: Mapping[str, Any], run_vars: Mapping[str, Any]) -> None:
    """A private (0600) extra-vars file: the operator's vars, then the run's, every string unsafe."""
    doc = {**config_vars, **unsafe(run_vars)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.dump(doc, fh, Dumper=_Dumper, allow_unicode=True, default_flow_style=False, sort_keys=False)
