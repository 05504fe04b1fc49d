"""Ansible inventory -> Fleet. Loaded with Ansible's own loader (every source Ansible accepts: YAML, INI
with ranges, directories with group_vars/host_vars, executable scripts); host patterns keep Ansible's
semantics (`ring1:&zone_a`, `web*`, `!drain`)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetctl.errors import InventoryError

# Variables fleetctl itself reads; the fingerprint covers them (and group membership), nothing else.
_FINGERPRINT_VARS = ("ansible_host", "ansible_port", "ansible_connection", "hc_root", "hc_port")
_LOADER: Any = None


def _loader() -> Any:
    global _LOADER
    if _LOADER is None:
        from ansible.parsing.dataloader import DataLoader

        _LOADER = DataLoader()
    return _LOADER


@dataclass(frozen=True)
class Host:
    name: str
    groups: tuple[str, ...]
    vars: dict[str, Any] = field(compare=False, hash=False)

    def var(self, key: str, default: Any = None) -> Any:
        return self.vars.get(key, default)

    def rendered_var(self, key: str, default: Any = None) -> Any:
        """A variable as Ansible would use it: a template in it (`"{{ inventory_hostname }}.example"`) is
        rendered with the host's variables; a value marked `!unsafe` stays literal. Raises InventoryError."""
        raw = self.vars.get(key, default)
        if not isinstance(raw, str) or ("{{" not in raw and "{%" not in raw):
            return raw
        from ansible.errors import AnsibleError
        from ansible.template import Templar

        templar = Templar(loader=_loader(), variables={**self.vars, "inventory_hostname": self.name})
        try:
            with _quiet():
                return templar.template(raw)
        except AnsibleError as exc:
            raise InventoryError(
                f"cannot render {key} of host {self.name} ({raw!r}): {_first_line(exc)}",
                "fix the variable in the inventory",
            ) from None

    def render(self, template: str) -> str:
        """Render a Jinja template (e.g. a probe URL) with this host's variables, with Ansible's own
        templating: nested variables resolve, filters work, `!unsafe` values stay literal."""
        from ansible.errors import AnsibleError
        from ansible.template import Templar, trust_as_template

        templar = Templar(loader=_loader(), variables={**self.vars, "inventory_hostname": self.name})
        try:
            with _quiet():
                return str(templar.template(trust_as_template(template)))
        except AnsibleError as exc:
            raise InventoryError(
                f"cannot render {template!r} for host {self.name}: {_first_line(exc)}",
                "define the variable for the host in the inventory",
            ) from None


class Fleet:
    """The hosts of an inventory, in inventory order, with Ansible pattern selection."""

    def __init__(
        self, sources: Sequence[Path], manager: Any, hosts: dict[str, Host], index: Any = None
    ) -> None:
        self.sources = list(sources)
        self._manager = manager  # Ansible's InventoryManager, or the index's view (inventory_index.py)
        self.hosts = hosts
        self.index = index  # set when loaded from the compiled index: playbook runs get a small inventory
        self.whole_fingerprint: str | None = None  # fingerprint() of every host, when the index knows it

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    @property
    def names(self) -> list[str]:
        return list(self.hosts)

    def select(self, pattern: str | None, *, required: bool = True) -> list[str]:
        """Host names matching an Ansible pattern, in inventory order. No pattern means all hosts."""
        if not pattern:
            return self.names
        with _quiet():
            try:
                matched = {h.name for h in self._manager.list_hosts(pattern)}
            except Exception as exc:  # noqa: BLE001 - Ansible raises AnsibleError subclasses
                raise InventoryError(
                    f"invalid host pattern {pattern!r}: {_first_line(exc)}",
                    "use an Ansible host pattern such as canary, ring1:&zone_a, web*, all:!drain",
                ) from None
        names = [n for n in self.hosts if n in matched]
        if required and not names:
            raise InventoryError(
                f"host pattern {pattern!r} matches no host in the inventory",
                "check the pattern with `fleetctl hosts -l PATTERN`",
            )
        return names

    def groups_of(self, name: str) -> tuple[str, ...]:
        return self.hosts[name].groups

    def _rendered(self, name: str, key: str) -> str:
        try:
            return str(self.hosts[name].rendered_var(key))  # `!unsafe` values stay literal
        except InventoryError:
            return str(self.hosts[name].vars.get(key))

    def _fingerprint_var(self, name: str, key: str) -> str:
        value = self.hosts[name].vars.get(key)
        if isinstance(value, str) and ("{{" in value or "{%" in value):
            return self._rendered(name, key)
        return str(value)

    def fingerprint(self, names: Iterable[str] | None = None) -> str:
        """Hash of hosts, group membership and the variables fleetctl reads: changes when the fleet does."""
        if names is None and self.whole_fingerprint is not None:
            return self.whole_fingerprint
        chosen = list(self.hosts) if names is None else list(names)
        doc = [
            [n, list(self.hosts[n].groups), {k: self._fingerprint_var(n, k) for k in _FINGERPRINT_VARS}]
            for n in chosen
            if n in self.hosts
        ]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def load_inventory(sources: Sequence[Path], vault_password_file: Path | None = None) -> Fleet:
    """Load inventory sources with Ansible's InventoryManager; any unparsable source is an error.
    Vaulted values stay encrypted until something (a probe URL) needs them."""
    missing = [s for s in sources if not Path(s).exists()]
    if missing:
        raise InventoryError(
            f"inventory source {missing[0]} does not exist",
            "fix `inventory:` in fleet.yml (paths are relative to fleet.yml)",
        )
    from ansible import constants as C
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.manager import VariableManager

    C.INVENTORY_UNPARSED_IS_FAILED = True
    C.INVENTORY_ANY_UNPARSED_IS_FAILED = True
    loader = DataLoader()  # a fresh one: a loader caches the files it read, and they may have changed
    if vault_password_file is not None:
        _set_vault_secret(loader, vault_password_file)
    captured = io.StringIO()
    try:
        with _quiet(captured):
            manager = InventoryManager(loader=loader, sources=[str(s) for s in sources])
            variables = VariableManager(loader=loader, inventory=manager)
            hosts: dict[str, Host] = {}
            for h in manager.get_hosts("all"):
                groups = tuple(sorted(g.name for g in h.get_groups() if g.name not in ("all", "ungrouped")))
                hv = variables.get_vars(host=h, include_hostvars=False)
                hosts[h.name] = Host(h.name, groups, {k: v for k, v in hv.items() if not _is_magic(k)})
    except Exception as exc:  # noqa: BLE001 - AnsibleError and YAML errors
        reason = _parse_reason(captured.getvalue()) or _first_line(exc)
        names = ", ".join(str(s) for s in sources)
        raise InventoryError(
            f"cannot load inventory {names}: {reason}",
            "fix the inventory file; `ansible-inventory -i FILE --list` shows Ansible's view",
        ) from None
    if not hosts:
        raise InventoryError(
            f"inventory {', '.join(map(str, sources))} has no hosts", "add hosts to the inventory"
        )
    return Fleet(sources, manager, hosts)


_MAGIC = {
    "groups",
    "group_names",
    "inventory_file",
    "inventory_dir",
    "playbook_dir",
    "ansible_facts",
    "ansible_version",
    "ansible_config_file",
    "ansible_playbook_python",
    "inventory_hostname",
    "inventory_hostname_short",
    "omit",
    "hostvars",
    "environment",
}


def _set_vault_secret(loader: Any, path: Path) -> None:
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import get_file_vault_secret

    if not Path(path).is_file():
        raise InventoryError(
            f"vault_password_file {path} does not exist", "fix `vault_password_file:` in fleet.yml"
        )
    try:
        secret = get_file_vault_secret(filename=str(path), vault_id="default", loader=loader)
        secret.load()
    except AnsibleError as exc:
        raise InventoryError(
            f"cannot read vault password file {path}: {_first_line(exc)}", "check the file"
        ) from None
    loader.set_vault_secrets([("default", secret)])
    with contextlib.suppress(ImportError):  # ansible-core >= 2.19 templating decrypts through this context
        from ansible.parsing.vault import VaultSecretsContext

        if VaultSecretsContext.current(optional=True) is None:
            VaultSecretsContext.initialize(VaultSecretsContext([("default", secret)]))
        else:
            VaultSecretsContext.current().secrets = [("default", secret)]
    global _LOADER
    _LOADER = loader  # Host.render decrypts with the same secrets


def _is_magic(key: str) -> bool:
    return key in _MAGIC


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parse_reason(stderr: str) -> str | None:
    """Pick the most useful line out of Ansible's multi-line parse warnings: a failing inventory script's
    own complaint first, then the first plugin that explained itself."""
    plugins = re.findall(r"Failed to parse inventory with '(\w+)' plugin: ([^\n]+)", stderr)
    for plugin, reason in plugins:
        if plugin == "script":
            return reason.strip()
    for pattern in (
        r"YAML parsing failed: ([^\n]+)",
        r"Failed to parse inventory: ([^\n]+)",
        r"\[WARNING\]: ([^\n]+)",
    ):
        m = re.search(pattern, stderr)
        if m:
            return m.group(1).strip()
    return None


@contextlib.contextmanager
def _quiet(sink: io.StringIO | None = None):
    """Ansible's Display writes warnings straight to the terminal; the library never prints."""
    sink = sink if sink is not None else io.StringIO()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        yield sink
