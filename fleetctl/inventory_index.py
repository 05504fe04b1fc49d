"""A compiled inventory index: Ansible loads the inventory once per change of its sources; commands that only
read use the index (hosts, groups, every host's variables), and each playbook run gets a small inventory of
just the hosts it acts on.

- The key hashes the sources' content (files, their group_vars/ and host_vars/ dirs, whole directories),
  the vault password file's path and mtime, ansible-core's version and the ANSIBLE_* environment.
- Only static sources are indexed: an executable script or a plugin config (`plugin:`) can answer
  differently without a change on disk, and a whole-file vault would be decrypted by the loader; those
  are loaded by Ansible every time, as before.
- Nothing decrypted is ever written: a `!vault` value is kept as its ciphertext (and given back to Ansible
  as `!vault`), a `!unsafe` value stays unsafe, templates stay templates.
- The index lives in the state dir (`.fleetctl/inventory-index.json`), mode 0600, written atomically.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from fleetctl.inventory import _FINGERPRINT_VARS, _MAGIC, Fleet, Host, load_inventory

FORMAT = 1
INDEX_NAME = "inventory-index.json"
_VAULT, _UNSAFE = "__fleetctl_vault__", "__fleetctl_unsafe__"
_TEMPLATE_MARKS = ("{{", "{%", "{#")
_SIMPLE = re.compile(r"[\w.*?!&:,-]+")  # patterns matched here without Ansible (else: Ansible's code)


# -- the key -----------------------------------------------------------------------------------------
def source_key(sources: Sequence[Path], vault_password_file: Path | None = None) -> str | None:
    """Hash of everything the inventory is loaded from, or None when the sources are not static."""
    import ansible

    h = hashlib.sha256(f"fleetctl-index {FORMAT} ansible {ansible.__version__}\n".encode())
    for key in sorted(k for k in os.environ if k.startswith("ANSIBLE_")):
        h.update(f"env {key}={os.environ[key]}\n".encode())
    if vault_password_file is not None:
        try:
            h.update(f"vault {vault_password_file} {os.stat(vault_password_file).st_mtime_ns}\n".encode())
        except OSError:
            return None
    for source in sources:
        path = Path(source).resolve()
        h.update(f"source {path}\n".encode())
        if path.is_dir():
            files = _walk(path)
        elif path.is_file():
            if path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH):
                return None  # an inventory script
            files = [path, *_walk(path.parent / "group_vars"), *_walk(path.parent / "host_vars")]
        else:
            return None
        for f in files:
            data = f.read_bytes()
            if data.lstrip().startswith(b"$ANSIBLE_VAULT") or _is_plugin_config(f, data):
                return None
            h.update(f"file {f} {len(data)}\n".encode())
            h.update(data)
    return h.hexdigest()


def _walk(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def _is_plugin_config(path: Path, data: bytes) -> bool:
    if path.suffix not in (".yml", ".yaml"):
        return False
    return any(line.startswith(b"plugin:") for line in data.splitlines())


# -- building and reading ----------------------------------------------------------------------------
def load_fleet(
    sources: Sequence[Path], vault_password_file: Path | None = None, state_dir: Path | None = None
) -> Fleet:
    """The fleet, from the index when it matches the sources, else through Ansible (and index it)."""
    key = source_key(sources, vault_password_file) if state_dir is not None else None
    if key is None or state_dir is None:
        return load_inventory(sources, vault_password_file=vault_password_file)
    path = state_dir / INDEX_NAME
    doc = _read(path)
    if doc is not None and doc.get("key") == key and doc.get("format") == FORMAT:
        return fleet_from_index(doc, sources, vault_password_file)
    try:
        doc = compile_index(sources, key)  # no vault secret at all: nothing can be decrypted on the way
    except Exception:  # noqa: BLE001 - the full loader says what is wrong (InventoryError), or copes
        doc = build_index(load_inventory(sources, vault_password_file), key)
    # The same view as every later command, in plain types (no Ansible tags left on names and values).
    doc = json.loads(json.dumps(doc))
    fleet = fleet_from_index(doc, sources, vault_password_file)
    if not any(set(_FINGERPRINT_VARS) & _special_keys(row[2]) for row in doc["hosts"] if row[3]):
        # Nothing templated or vaulted in what the fingerprint covers: it is the same for every load.
        doc["fingerprint"] = fleet.whole_fingerprint = fleet.fingerprint()
    write_index(path, json.dumps(doc, separators=(",", ":")))
    return fleet


def _read(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def build_index(fleet: Fleet, key: str) -> dict[str, Any]:
    """The index document of a fully loaded fleet (vaulted values as ciphertext, unsafe values marked)."""
    manager = fleet._manager
    group_names = sorted(manager.groups)
    gidx = {g: i for i, g in enumerate(group_names)}
    hidx = {n: i for i, n in enumerate(fleet.hosts)}
    files: dict[str, int] = {}
    hosts = []
    for name, host in fleet.hosts.items():
        encoded, special = _encode_vars(host.vars)
        ahost = manager.get_host(name)
        where = (str(ahost.vars.get("inventory_file")), str(ahost.vars.get("inventory_dir")))
        fidx = files.setdefault(json.dumps(where), len(files))
        hosts.append([name, [gidx[g] for g in host.groups], encoded, int(special), fidx])
    groups = [
        [g, [hidx[h.name] for h in manager.groups[g].get_hosts() if h.name in hidx]] for g in group_names
    ]
    return {
        "format": FORMAT,
        "key": key,
        "hosts": hosts,
        "groups": groups,
        "files": [json.loads(f) for f in files],
    }


_PRECEDENCE = [
    "all_inventory",
    "groups_inventory",
    "all_plugins_inventory",
    "all_plugins_play",
    "groups_plugins_inventory",
    "groups_plugins_play",
]


def compile_index(sources: Sequence[Path], key: str) -> dict[str, Any]:
    """The index straight from Ansible's InventoryManager, with each host's variables merged as Ansible's
    VariableManager does (group vars by depth and priority, the vars plugins of the inventory sources,
    host vars) but computed once per distinct set of groups, and without Ansible's defensive deep copies
    (of the whole parsed file, and of every host's facts). Raises on anything unusual (the caller then
    loads the classic way): non-default precedence or vars plugins, a loading error, no host."""
    from ansible import constants as C
    from ansible.inventory.helpers import get_group_vars, sort_groups
    from ansible.inventory.manager import InventoryManager
    from ansible.utils.vars import combine_vars
    from ansible.vars.plugins import get_vars_from_inventory_sources

    from fleetctl.inventory import _quiet

    if list(C.VARIABLE_PRECEDENCE) != _PRECEDENCE or list(C.VARIABLE_PLUGINS_ENABLED) != ["host_group_vars"]:
        raise RuntimeError("non-default variable precedence or vars plugins")
    C.INVENTORY_UNPARSED_IS_FAILED = True
    C.INVENTORY_ANY_UNPARSED_IS_FAILED = True
    loader = _index_loader([str(Path(s).resolve()) for s in sources])
    with _quiet():
        manager = InventoryManager(loader=loader, sources=[str(s) for s in sources])
        srcs = manager._sources

        def plugins(entities: list[Any]) -> dict[str, Any]:
            return get_vars_from_inventory_sources(loader, srcs, entities, "task")

        all_group = manager.groups["all"]
        host_vars_dirs = any(
            (Path(p) / "host_vars").is_dir() if Path(p).is_dir() else (Path(p).parent / "host_vars").is_dir()
            for p in srcs
        )
        by_groups: dict[tuple[str, ...], dict[str, Any]] = {}
        hosts_doc: list[list[Any]] = []
        group_names = sorted(str(g) for g in manager.groups)
        gidx = {g: i for i, g in enumerate(group_names)}
        hidx: dict[str, int] = {}
        files: dict[tuple[str, str], int] = {}
        for h in manager.get_hosts("all"):
            groups = sort_groups([g for g in h.get_groups() if g.name != "all"])
            gkey = tuple(g.name for g in groups)
            base = by_groups.get(gkey)
            if base is None:
                base = combine_vars(all_group.get_vars(), get_group_vars(groups))  # all, groups inventory
                base = combine_vars(base, plugins([all_group]))  # all_plugins_inventory (play ones: none)
                base = by_groups[gkey] = combine_vars(base, plugins(groups))  # groups_plugins_inventory
            hv = combine_vars(base, h.get_vars())
            if host_vars_dirs:
                hv = combine_vars(hv, plugins([h]))
            encoded, special = _encode_vars({k: v for k, v in hv.items() if k not in _MAGIC})
            name = str.__str__(h.name)
            where = (str(h.vars.get("inventory_file")), str(h.vars.get("inventory_dir")))
            fidx = files.setdefault(where, len(files))
            names = sorted(str.__str__(g.name) for g in h.get_groups())
            groups_of = [gidx[g] for g in names if g not in ("all", "ungrouped")]
            hidx[name] = len(hosts_doc)
            hosts_doc.append([name, groups_of, encoded, int(special), fidx])
        if not hosts_doc:
            raise RuntimeError("no hosts")
        groups_doc = [[g, [hidx[h.name] for h in manager.groups[g].get_hosts()]] for g in group_names]
    return {"format": FORMAT, "key": key, "hosts": hosts_doc, "groups": groups_doc, "files": list(files)}


def _index_loader(source_files: list[str]) -> Any:
    """A DataLoader without vault secrets that returns what it parsed without deep-copying it (the index
    only reads it) and answers the `auto` plugin's probe of a source file (checked to hold no `plugin:`
    line by source_key) without parsing it a second time."""
    from ansible.parsing.dataloader import DataLoader

    class _Loader(DataLoader):
        def load_from_file(
            self,
            file_name: str,
            cache: str = "all",
            unsafe: bool = False,
            json_only: bool = False,
            trusted_as_template: bool = False,
        ) -> Any:
            if not trusted_as_template and cache == "none" and os.path.realpath(file_name) in sources:
                return {}  # the auto plugin's probe: not a plugin config, the yaml plugin parses it
            return super().load_from_file(file_name, cache, True, json_only, trusted_as_template)

    sources = {os.path.realpath(s) for s in source_files}
    return _Loader()


def write_index(path: Path, text: str) -> None:
    """Atomically, private (0600): a reader sees the old index or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def fleet_from_index(
    doc: dict[str, Any], sources: Sequence[Path], vault_password_file: Path | None = None
) -> Fleet:
    if vault_password_file is not None:
        from ansible.parsing.dataloader import DataLoader

        from fleetctl.inventory import _set_vault_secret

        _set_vault_secret(DataLoader(), vault_password_file)  # rendering decrypts a `!vault` value
    display = [g for g, _ in doc["groups"]]
    hosts: dict[str, Host] = {}
    memberships: dict[tuple[int, ...], tuple[str, ...]] = {}  # hosts share a few sets of groups
    for name, gids, hvars, special, _f in doc["hosts"]:
        key = tuple(gids)
        groups = memberships.get(key)
        if groups is None:
            groups = memberships[key] = tuple(
                display[i] for i in gids if display[i] not in ("all", "ungrouped")
            )
        hosts[name] = Host(name, groups, _decode_vars(hvars) if special else hvars)
    index = IndexView(doc)
    fleet = Fleet(sources, index, hosts, index=index)
    fleet.whole_fingerprint = doc.get("fingerprint")
    return fleet


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
