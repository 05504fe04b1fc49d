"""Issue 10: the example inventory in inventory/ loads with Ansible and with fleetctl, documents the node
contract, and its vaulted example decrypts with the example password."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleetctl.inventory import load_inventory

ROOT = Path(__file__).resolve().parent.parent
INVENTORY = ROOT / "inventory"
VAULT_PASS = INVENTORY / "vault-pass.example.txt"
DEFAULTS = ROOT / "playbooks" / "roles" / "host_controller" / "defaults" / "main.yml"
TASKS = ROOT / "playbooks" / "roles" / "host_controller" / "tasks"


@pytest.fixture(scope="module")
def listed() -> dict:
    """Ansible's own view: ansible-inventory --list, with the example vault password."""
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-inventory"),
            "-i",
            str(INVENTORY),
            "--list",
            "--vault-password-file",
            str(VAULT_PASS),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"ANSIBLE_INVENTORY_UNPARSED_FAILED": "True", "PATH": "/usr/bin:/bin", "HOME": str(ROOT)},
    )
    return json.loads(out.stdout)


def test_ansible_loads_it_with_rings_and_zones(listed: dict) -> None:
    hostvars = listed["_meta"]["hostvars"]
    assert len(hostvars) == 12
    for group in ("canary", "ring1", "ring2", "zone_a", "zone_b", "zone_c"):
        assert listed[group]["hosts"], group
    rings = [set(listed[g]["hosts"]) for g in ("canary", "ring1", "ring2")]
    assert sum(map(len, rings)) == len(set().union(*rings)), "a host is in two stage groups"
    for name, hv in hostvars.items():
        assert hv["ansible_host"] and hv["ansible_user"] == "deploy"
        assert name in listed[f"zone_{hv['zone']}"]["hosts"], f"{name}: zone var and zone group disagree"


def test_the_vault_password_file_is_not_read_as_a_host(listed: dict) -> None:
    """Regression: a password file named vault-pass.example was parsed as an INI inventory (one host)."""
    password = VAULT_PASS.read_text().strip()
    assert password not in listed["_meta"]["hostvars"]
    assert all(name.endswith(".example.net") for name in listed["_meta"]["hostvars"])


def test_fleetctl_loads_it() -> None:
    fleet = load_inventory([INVENTORY], vault_password_file=VAULT_PASS)
    assert len(fleet) == 12
    assert fleet.select("canary") == ["hc-a01.example.net"]
    assert fleet.select("ring1:&zone_b") == ["hc-b01.example.net"]
    assert fleet["hc-c04.example.net"].var("hc_port") == 8501  # a host override
    assert fleet["hc-a03.example.net"].var("hc_port") == 8500


def test_the_example_vaulted_variable_decrypts_with_the_example_password(listed: dict) -> None:
    from ansible.parsing.vault import VaultLib, VaultSecret

    blob = listed["_meta"]["hostvars"]["hc-a01.example.net"]["hc_artifact_password"]["__ansible_vault"]
    vault = VaultLib([("default", VaultSecret(VAULT_PASS.read_text().strip().encode()))])
    assert vault.decrypt(blob) == b"example-token-replace-me"


def test_group_vars_document_every_node_contract_variable() -> None:
    """Every hc_* variable the role reads (its defaults and its tasks) is set or described in all.yml."""
    documented = (INVENTORY / "group_vars" / "all.yml").read_text()
    names = set(yaml.safe_load(DEFAULTS.read_text()))
    for task in TASKS.glob("*.yml"):
        names |= set(re.findall(r"\bhc_[a-z_]+", task.read_text()))
    internal = {"hc_version", "hc_release", "hc_previous", "hc_staged", "hc_pruned", "hc_rollback_version"}
    internal |= {"hc_probe_timeout", "hc_probe_status"}  # set by fleetctl for the playbook probe
    missing = sorted(n for n in names - internal if not re.search(rf"^#? ?{n}:", documented, re.M))
    assert not missing, f"group_vars/all.yml does not document {missing}"


def test_fleetctl_decrypts_the_vaulted_example_when_it_renders_it() -> None:
    """Regression: with ansible-core 2.19, Host.render of a vaulted value failed ("A required
    VaultSecretsContext context is not active") although vault_password_file was given."""
    fleet = load_inventory([INVENTORY], vault_password_file=VAULT_PASS)
    assert fleet["hc-b02.example.net"].render("{{ hc_artifact_password }}") == "example-token-replace-me"
