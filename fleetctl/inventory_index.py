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

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fleetctl.inventory import _FINGERPRINT_VARS, _MAGIC, Fleet, Host, load_inventory
from fleetctl.inventory_view import (
    IndexView,
    _decode_vars,
    _encode_vars,
    _special_keys,
    limited_inventory,
    write_limited,
)

__all__ = ["load_fleet", "limited_inventory", "write_limited", "source_key", "compile_index", "build_index"]

FORMAT = 1
INDEX_NAME = "inventory-index.json"


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
    try:
        write_index(path, json.dumps(doc, separators=(",", ":")))
    except OSError:  # a read-only checkout or another user's state dir: work without the index
        pass
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
    tmp.unlink(missing_ok=True)  # a leftover keeps its own mode: make a new, private one
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
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
