"""`execution: {strategy: mitogen}`: Mitogen for Ansible as an opt-in accelerator
(`pip install 'fleetctl[fast]'`).

Mitogen replaces Ansible's strategy and connection internals and only refuses ansible-core releases that
are too old, never too new: a release it does not know may half work. So fleetctl refuses, before any
Ansible runs, every pair of (mitogen, ansible-core) it has not seen work: ansible-core's minor release
must be in SUPPORTED, with at least the mitogen listed there.
"""

from __future__ import annotations

import os
import re

from fleetctl.errors import ConfigError

# ansible-core minor release -> the oldest mitogen that fleetctl has run it with.
SUPPORTED: dict[tuple[int, ...], tuple[int, ...]] = {(2, 19): (0, 3, 54)}
STRATEGY = "mitogen_linear"


def _parse(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def installed() -> tuple[str | None, str]:
    """(mitogen's version or None when it is not installed, ansible-core's version)."""
    from importlib.metadata import PackageNotFoundError, version

    from ansible.release import __version__ as core

    try:
        return version("mitogen"), core
    except PackageNotFoundError:
        return None, core


def check(mitogen: str | None, core: str) -> None:
    """Raise ConfigError (exit 2, nothing run) unless this pair is known to work."""
    if mitogen is None:
        raise ConfigError(
            "execution.strategy: mitogen is not installed",
            "pip install 'fleetctl[fast]', or remove `strategy: mitogen` from fleet.yml",
        )
    need = SUPPORTED.get(_parse(core)[:2])
    known = ", ".join(
        f"ansible-core {a}.{b} with mitogen >= {'.'.join(map(str, m))}" for (a, b), m in SUPPORTED.items()
    )
    if need is None or _parse(mitogen) < need:
        raise ConfigError(
            f"execution.strategy: mitogen {mitogen} is not known to support ansible-core {core} "
            f"(fleetctl runs it only with: {known})",
            "install a supported pair (pip install 'fleetctl[fast]'), or remove `strategy: mitogen`",
        )


def strategy_env() -> dict[str, str]:
    """The environment that makes ansible-playbook use Mitogen; checked first (ConfigError)."""
    mitogen, core = installed()
    check(mitogen, core)
    import ansible_mitogen

    plugins = os.path.join(os.path.dirname(ansible_mitogen.__file__), "plugins", "strategy")
    return {"ANSIBLE_STRATEGY_PLUGINS": plugins, "ANSIBLE_STRATEGY": STRATEGY}
