"""The compiled inventory index as a fleet: its groups and hosts with Ansible's host patterns, its
values (vaulted ones kept as ciphertext, unsafe ones marked, templates trusted again), and the small
inventory of one playbook run. Built by inventory_index.py."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from fleetctl.inventory import _MAGIC, Fleet

_VAULT, _UNSAFE = "__fleetctl_vault__", "__fleetctl_unsafe__"
_TEMPLATE_MARKS = ("{{", "{%", "{#")
_SIMPLE = re.compile(r"[\w.*?!&:,-]+")  # patterns matched here without Ansible (else: Ansible's code)


class IndexView:
    """The index's groups and hosts, with Ansible's own pattern matching over them (list_hosts)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self._inventory: Any = None
        self._pattern_cache: dict[str, Any] = {}

    @property
    def groups(self) -> dict[str, Any]:
        return self._inv().groups

    def _inv(self) -> Any:
        if self._inventory is None:
            self._inventory = _Inventory(self.doc)
        return self._inventory

    def list_hosts(self, pattern: str = "all") -> list[Any]:
        fast = self._simple(pattern)
        if fast is not None:
            return [_H(n) for n in fast]
        from ansible.inventory.manager import InventoryManager, split_host_pattern
        from ansible.utils.helpers import deduplicate_list

        self._inv()
        return deduplicate_list(InventoryManager._evaluate_patterns(self, split_host_pattern(pattern)))

    def _simple(self, pattern: str) -> set[str] | None:
        """The hosts of a pattern made of names, globs, `&` and `!` (no regex, subscript or address),
        by Ansible's rules, without importing Ansible; None for any other pattern."""
        if not _SIMPLE.fullmatch(pattern):
            return None
        terms = [t.strip() for t in pattern.split("," if "," in pattern else ":") if t.strip()]
        if ":" in pattern and "," not in pattern and any(t.isdigit() for t in terms):
            return None  # `host:22` is one address to Ansible
        regular = [t for t in terms if t[0] not in "!&"] or ["all"]
        ordered = regular + [t for t in terms if t[0] == "&"] + [t for t in terms if t[0] == "!"]
        groups = {g: members for g, members in self.doc["groups"]}
        names = [row[0] for row in self.doc["hosts"]]
        known = set(names)
        selected: set[str] = set()
        for term in ordered:
            if term in known:
                selected.add(term)
                continue
            expr = term[1:] if term[0] in "!&" else term
            rx = re.compile(fnmatch.translate(expr))
            matched_groups = [g for g in groups if rx.match(g)]
            that = {names[i] for g in matched_groups for i in groups[g]}
            if not matched_groups or any(c in expr for c in ".?*["):
                that.update(n for n in names if rx.match(n))
            if term[0] == "!":
                selected -= that
            elif term[0] == "&":
                selected &= that
            else:
                selected |= that
        return selected

    # Ansible's matching helpers, run on this view (they use only _inventory and _pattern_cache).
    def _match_one_pattern(self, pattern: str) -> Any:
        from ansible.inventory.manager import InventoryManager

        return InventoryManager._match_one_pattern(self, pattern)  # type: ignore[arg-type]

    def _split_subscript(self, pattern: str) -> Any:
        from ansible.inventory.manager import InventoryManager

        return InventoryManager._split_subscript(self, pattern)  # type: ignore[arg-type]

    def _apply_subscript(self, hosts: Any, subscript: Any) -> Any:
        from ansible.inventory.manager import InventoryManager

        return InventoryManager._apply_subscript(self, hosts, subscript)  # type: ignore[arg-type]

    def _enumerate_matches(self, pattern: str) -> Any:
        from ansible.inventory.manager import InventoryManager

        return InventoryManager._enumerate_matches(self, pattern)  # type: ignore[arg-type]

    def _match_list(self, items: Any, pattern: str) -> Any:
        from ansible.inventory.manager import InventoryManager

        return InventoryManager._match_list(self, items, pattern)  # type: ignore[arg-type]

    def inventory_of(self, name: str) -> tuple[str, str]:
        row = self._rows()[name]
        file, directory = self.doc["files"][row[4]]
        return file, directory

    def _rows(self) -> dict[str, list[Any]]:
        rows = getattr(self, "_by_name", None)
        if rows is None:
            rows = self._by_name = {r[0]: r for r in self.doc["hosts"]}
        return rows

    def raw_vars(self, name: str) -> dict[str, Any]:
        return self._rows()[name][2]


class _H:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


class _G:
    __slots__ = ("name", "_hosts")

    def __init__(self, name: str, hosts: list[_H]) -> None:
        self.name, self._hosts = name, hosts

    def get_hosts(self) -> list[_H]:
        return self._hosts


class _Inventory:
    def __init__(self, doc: dict[str, Any]) -> None:
        objs = [_H(row[0]) for row in doc["hosts"]]
        self.hosts = {h.name: h for h in objs}
        self.groups = {g: _G(g, [objs[i] for i in members]) for g, members in doc["groups"]}

    def get_host(self, name: str) -> _H | None:
        return self.hosts.get(name)


# -- values ------------------------------------------------------------------------------------------
def _encode_vars(hvars: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    special = [False]
    out = {str(k): _encode(v, special) for k, v in hvars.items()}
    return out, special[0]


def _encode(value: Any, special: list[bool]) -> Any:
    from ansible._internal._datatag._tags import TrustedAsTemplate
    from ansible.parsing.vault import EncryptedString, VaultHelper

    if isinstance(value, EncryptedString):
        special[0] = True
        return {_VAULT: str(VaultHelper.get_ciphertext(value, with_tags=False))}
    if isinstance(value, str):
        ciphertext = VaultHelper.get_ciphertext(value, with_tags=False)
        if ciphertext is not None:  # a value tagged as vaulted: keep the ciphertext, never the text
            special[0] = True
            return {_VAULT: str(ciphertext)}
        plain = str.__str__(value) if type(value) is not str else value
        if any(m in plain for m in _TEMPLATE_MARKS):
            special[0] = True
            if not TrustedAsTemplate.is_tagged_on(value):
                return {_UNSAFE: plain}
        return plain
    if value is None:
        return None
    for kind in (bool, int, float):  # Ansible's tagged subclasses, as plain values
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {str(k): _encode(v, special) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_encode(v, special) for v in value]
    return str(value)


def _special_keys(hvars: dict[str, Any]) -> set[str]:
    """Keys whose value holds a template, a vaulted or an unsafe value."""
    return {k for k, v in hvars.items() if _is_special(v)}


def _is_special(value: Any) -> bool:
    if isinstance(value, str):
        return any(m in value for m in _TEMPLATE_MARKS)
    if isinstance(value, dict):
        return _VAULT in value or _UNSAFE in value or any(_is_special(v) for v in value.values())
    if isinstance(value, list):
        return any(_is_special(v) for v in value)
    return False


def _decode_vars(hvars: dict[str, Any]) -> dict[str, Any]:
    return {k: _decode(v) for k, v in hvars.items()}


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        if any(m in value for m in _TEMPLATE_MARKS):
            from ansible.template import trust_as_template

            return trust_as_template(value)
        return value
    if isinstance(value, dict):
        if len(value) == 1 and _VAULT in value:
            from ansible.parsing.vault import EncryptedString

            return EncryptedString(ciphertext=value[_VAULT])
        if len(value) == 1 and _UNSAFE in value:
            return str(value[_UNSAFE])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


# -- the inventory of one playbook run ---------------------------------------------------------------
class _Vault(str):
    pass


class _Unsafe(str):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Vault, lambda d, v: d.represent_scalar("!vault", str(v), style="|"))
_Dumper.add_representer(_Unsafe, lambda d, v: d.represent_scalar("!unsafe", str(v), style="'"))


def _for_yaml(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _VAULT in value:
            return _Vault(value[_VAULT])
        if len(value) == 1 and _UNSAFE in value:
            return _Unsafe(value[_UNSAFE])
        return {k: _for_yaml(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_yaml(v) for v in value]
    return value


def limited_inventory(fleet: Fleet, hosts: Iterable[str]) -> dict[str, Any] | None:
    """A YAML inventory of exactly `hosts`: each with every variable it has in the full inventory (group
    and host vars merged, vaulted values as `!vault`, unsafe as `!unsafe`) and all its groups. None when
    the fleet was not loaded from an index (the full sources are used then)."""
    index = fleet.index
    if index is None:
        return None
    members: dict[str, dict[str, None]] = {}
    out_hosts: dict[str, Any] = {}
    for name in hosts:
        row = index._rows().get(name)
        if row is None:
            continue
        raw = {k: v for k, v in row[2].items() if k not in _MAGIC}
        file, directory = index.doc["files"][row[4]]
        hvars = _for_yaml(raw) if row[3] else raw
        if file != "None":
            hvars = {**hvars, "inventory_file": file, "inventory_dir": directory}
        out_hosts[name] = hvars
        for g in fleet.hosts[name].groups:
            members.setdefault(g, {})[name] = None
    return {"all": {"hosts": out_hosts, "children": {g: {"hosts": m} for g, m in members.items()}}}


def write_limited(path: Path, doc: dict[str, Any]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yaml.dump(doc, fh, Dumper=_Dumper, allow_unicode=True, default_flow_style=False, sort_keys=False)
