"""Issue 14, inventory at scale: the compiled index gives the same fleet as Ansible's loader (hosts, groups,
variables, Ansible's host patterns, rendering, fingerprint), is reused until a source changes, never holds
a decrypted vault value, and each playbook run gets an inventory of just its hosts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from fleetctl import inventory_index
from fleetctl.inventory import Fleet, load_inventory
from fleetctl.inventory_index import INDEX_NAME, limited_inventory, load_fleet, source_key, write_limited
from tests.conftest import Cli, Sim
from tests.test_inventory import YAML_INV

PATTERNS = [
    None,
    "all",
    "ring1",
    "ring1:&zone_a",
    "web*",
    "all:!ring2",
    "~db\\d+",
    "ring1[0:1]",
    "ring2[1]",
    "canary,db01",
    "zone_*:!web01",
    "ring1:ring2:&zone_b",
    "drain",
    "nothing*",
    "*",
    "web0?:!web02",
    "&ring1",
    "!ring1",
    "db*,&zone_a",
    "all:&ring1:!web01:!db*",
    "ring1:ring2:&zone_a:!canary",
    "ungrouped",
]


def inventory_dir(tmp_path: Path) -> Path:
    (tmp_path / "inv.yml").write_text(YAML_INV)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "ring2.yml").write_text("tier: two\nhc_root: /srv/{{ inventory_hostname }}\n")
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "db01.yml").write_text("literal: !unsafe '{{ not_rendered }}'\n")
    state = tmp_path / ".fleetctl"
    state.mkdir()
    return tmp_path


def both(tmp_path: Path) -> tuple[Fleet, Fleet]:
    d = inventory_dir(tmp_path)
    full = load_inventory([d / "inv.yml"])
    load_fleet([d / "inv.yml"], state_dir=d / ".fleetctl")  # builds the index
    return full, load_fleet([d / "inv.yml"], state_dir=d / ".fleetctl")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_index_selects_like_ansible(tmp_path: Path, pattern: str | None) -> None:
    full, indexed = both(tmp_path)
    assert indexed.index is not None and full.index is None
    assert indexed.select(pattern, required=False) == full.select(pattern, required=False)


def test_index_has_the_same_hosts_groups_vars_and_renders(tmp_path: Path) -> None:
    full, indexed = both(tmp_path)
    assert indexed.names == full.names
    for name in full.names:
        assert indexed[name].groups == full[name].groups
        assert indexed[name].vars.keys() == full[name].vars.keys()
        for key in ("hc_port", "hc_root", "ansible_host", "literal", "tier"):
            assert indexed[name].rendered_var(key) == full[name].rendered_var(key)
    assert indexed["db01"].rendered_var("literal") == "{{ not_rendered }}"  # `!unsafe` stays literal
    assert indexed["db01"].rendered_var("hc_root") == "/srv/db01"
    assert indexed.fingerprint() == full.fingerprint()


def test_index_reused_until_a_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = inventory_dir(tmp_path)
    load_fleet([d / "inv.yml"], state_dir=d / ".fleetctl")
    index = d / ".fleetctl" / INDEX_NAME
    assert stat.S_IMODE(index.stat().st_mode) == 0o600

    def no_ansible(*a: object, **k: object) -> None:
        raise AssertionError("Ansible's loader ran although the index matches")

    with monkeypatch.context() as m:
        m.setattr(inventory_index, "load_inventory", no_ansible)
        assert load_fleet([d / "inv.yml"], state_dir=d / ".fleetctl")["db02"].var("tier") == "two"
    (d / "group_vars" / "ring2.yml").write_text("tier: three\n")  # a group_vars file changed
    fleet = load_fleet([d / "inv.yml"], state_dir=d / ".fleetctl")
    assert fleet["db02"].var("tier") == "three"


def test_inventory_scripts_are_never_indexed(tmp_path: Path) -> None:
    script = tmp_path / "inv.py"
    script.write_text('#!/bin/sh\necho \'{"all": {"hosts": ["a"]}, "_meta": {"hostvars": {}}}\'\n')
    script.chmod(0o755)
    assert source_key([script]) is None
    (tmp_path / "state").mkdir()
    assert load_fleet([script], state_dir=tmp_path / "state").names == ["a"]
    assert not (tmp_path / "state" / INDEX_NAME).exists()


def vault_setup(tmp_path: Path) -> tuple[Path, Path]:
    from ansible.parsing.vault import VaultLib, VaultSecret

    pw = tmp_path / "vault.txt"
    pw.write_text("s3cret-pass\n")
    ciphertext = VaultLib([("default", VaultSecret(b"s3cret-pass"))]).encrypt("the-plain-password").decode()
    body = "\n".join("        " + line for line in ciphertext.splitlines())
    inv = tmp_path / "inv.yml"
    inv.write_text(f"all:\n  hosts:\n    h1:\n      hc_artifact_password: !vault |\n{body}\n    h2:\n")
    (tmp_path / ".fleetctl").mkdir()
    return inv, pw


def test_vaulted_values_never_reach_the_index_decrypted(tmp_path: Path) -> None:
    inv, pw = vault_setup(tmp_path)
    load_fleet([inv], vault_password_file=pw, state_dir=tmp_path / ".fleetctl")
    fleet = load_fleet([inv], vault_password_file=pw, state_dir=tmp_path / ".fleetctl")
    assert fleet.index is not None
    assert b"the-plain-password" not in (tmp_path / ".fleetctl" / INDEX_NAME).read_bytes()
    assert fleet["h1"].render("{{ hc_artifact_password }}") == "the-plain-password"
    # Nothing templated in what the fingerprint covers: the index keeps it, and it is Ansible's.
    assert fleet.whole_fingerprint == load_inventory([inv], vault_password_file=pw).fingerprint()
    # The inventory of one run keeps the value vaulted, and Ansible decrypts it with the password file.
    doc = limited_inventory(fleet, ["h1"])
    assert doc is not None
    out = tmp_path / "one.yml"
    write_limited(out, doc)
    assert b"the-plain-password" not in out.read_bytes() and b"!vault" in out.read_bytes()
    again = load_inventory([out], vault_password_file=pw)
    assert again.names == ["h1"]
    assert again["h1"].render("{{ hc_artifact_password }}") == "the-plain-password"


def test_limited_inventory_holds_just_its_hosts_with_all_their_vars(tmp_path: Path) -> None:
    full, indexed = both(tmp_path)
    doc = limited_inventory(indexed, ["web03", "db01"])
    assert doc is not None
    out = tmp_path / "limited.yml"
    write_limited(out, doc)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    small = load_inventory([out])
    assert small.names == ["web03", "db01"]
    for name in small.names:
        assert small[name].groups == full[name].groups
        for key in ("hc_port", "hc_root", "ansible_host", "literal", "tier", "base_port"):
            assert small[name].rendered_var(key) == full[name].rendered_var(key)
    assert small.select("ring1:&zone_a", required=False) == []
    assert small.select("ring2", required=False) == ["db01"]


def test_rollout_and_rollback_run_on_the_inventory_of_each_batch(make_sim: object, cli: Cli) -> None:
    sim: Sim = make_sim(nodes=4)  # type: ignore[operator]
    cli("rollout 1.1.0 --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}
    state = sim.config.parent / ".fleetctl"
    index = json.loads((state / INDEX_NAME).read_text())
    assert sorted(h[0] for h in index["hosts"]) == sorted(sim.nodes)
    commands = [json.loads(p.read_text()) for p in (state / "runner" / "artifacts").glob("*/command")]
    assert commands
    for command in commands:  # every playbook ran on a generated inventory, never on inventory.yml
        argv = command["command"]
        inv = argv[argv.index("-i") + 1]
        assert os.path.basename(inv).startswith("inv-"), argv
    cli("rollback --yes", env=sim.env)
    assert set(sim.current().values()) == {"1.0.0"}
    assert not list((state / "runner").glob("inv-*"))  # removed after each run
    assert yaml.safe_load(sim.info.inventory.read_text())["all"]["hosts"].keys() == set(sim.nodes)


def test_compiled_index_equals_ansibles_variable_manager(tmp_path: Path) -> None:
    """The fast build (vars merged once per set of groups, no deep copies) gives exactly the document the
    classic one does (Ansible's VariableManager per host), vaulted value included."""
    d = inventory_dir(tmp_path)
    (tmp_path / "v").mkdir()
    inv, _ = vault_setup(tmp_path / "v")
    sources = [d / "inv.yml", inv]
    fast = json.loads(json.dumps(inventory_index.compile_index(sources, "k")))
    classic = json.loads(json.dumps(inventory_index.build_index(load_inventory(sources), "k")))
    assert fast == classic
    assert any(row[3] for row in fast["hosts"])  # the vaulted and unsafe values went through the encoder


def test_read_only_commands_use_the_index_and_see_a_changed_inventory(make_sim: object, cli: Cli) -> None:
    sim: Sim = make_sim(nodes=3)  # type: ignore[operator]
    rows = cli.json("hosts --json -l 'all:!canary'", env=sim.env)["hosts"]
    index = sim.config.parent / ".fleetctl" / INDEX_NAME
    assert index.exists() and stat.S_IMODE(index.stat().st_mode) == 0o600
    assert sorted(r["host"] for r in rows) == sorted(n for n in sim.nodes if n != "node-001")
    built = index.stat().st_mtime_ns
    cli("hosts --json", env=sim.env)
    assert index.stat().st_mtime_ns == built  # unchanged sources: the index is read, not rebuilt
    sim.host_vars("node-002", zone="z9")  # the inventory changes: the next command sees it
    rows = cli.json("hosts --json -l node-002", env=sim.env)["hosts"]
    assert rows[0]["zone"] == "z9"
