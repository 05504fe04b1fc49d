"""Issue 6, secrets: vault secrets reach Ansible only through its own mechanism (a password file), and
nothing secret lands in the journal, the audit log, JSON output or runner artifacts."""

from __future__ import annotations

import json
from pathlib import Path

from ansible.parsing.vault import VaultLib, VaultSecret

from tests.conftest import Cli, Sim

SECRET = "tok-PLAINTEXT-SECRET-4f2a9c"


def vaulted(plaintext: str, password: str) -> str:
    blob = VaultLib([("default", VaultSecret(password.encode()))]).encrypt(plaintext).decode()
    return "!vault |\n" + "".join(f"  {line}\n" for line in blob.splitlines())


def add_vaulted_secret(sim: Sim, password: str = "vault-pw-for-tests") -> Path:
    group_vars = sim.dir / "group_vars"
    group_vars.mkdir(exist_ok=True)
    (group_vars / "all.yml").write_text(
        f"hc_artifact_user: fleet\nhc_artifact_password: {vaulted(SECRET, password)}"
    )
    pw = sim.dir / "vault-pass.txt"
    pw.write_text(password + "\n")
    pw.chmod(0o600)
    return pw


def files_mentioning(root: Path, needle: str) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if needle.encode() in path.read_bytes():
                    hits.append(path)
            except OSError:
                continue
    return hits


def test_vaulted_variable_is_used_but_never_written(sim: Sim, cli: Cli) -> None:
    add_vaulted_secret(sim)
    sim.write_config(vault_password_file="vault-pass.txt")
    outputs = [cli("rollout 1.1.0 -l canary --yes --json", env=sim.env).stdout]
    assert json.loads(outputs[0].splitlines()[-1])["status"] == "succeeded"
    assert sim.current()["node-001"] == "1.1.0"
    cli("freeze on --reason 'secret test' --for 1h", env=sim.env)
    outputs.append(cli("rollback --yes --json", env=sim.env).stdout)  # a rollback during a freeze: audited
    cli("freeze off --reason done", env=sim.env)
    for args in (
        "status --json",
        "history --json",
        "audit --json",
        "runs --json",
        "hosts --json",
        "versions --refresh --json",
        "plan 1.2.0 --json",
    ):
        outputs.append(cli(args, env=sim.env).stdout)
    assert sim.current()["node-001"] == "1.0.0"
    assert all(SECRET not in out for out in outputs)
    # the journal (with its WAL), runner artifacts and every other file fleetctl wrote
    assert files_mentioning(sim.dir, SECRET) == []
    actions = [a["action"] for a in json.loads(outputs[4])["audit"]]
    assert "rollback.during_freeze" in actions


def test_without_the_vault_password_the_run_fails_cleanly(sim: Sim, cli: Cli) -> None:
    add_vaulted_secret(sim)
    result = cli("rollout 1.1.0 -l canary --yes --json", env=sim.env, code=1)
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["status"] == "rolled_back"  # nothing had changed, so nothing was left half-done
    assert "no vault secrets found" in summary["failed"][0]["error"]
    assert sim.current()["node-001"] == "1.0.0"
    assert SECRET not in result.stdout + result.stderr


ENV_SECRET = "env-PLAINTEXT-TOKEN-7d1e88"


def test_environment_secrets_never_reach_runner_artifacts(sim: Sim, cli: Cli) -> None:
    """ansible-runner writes the environment it gives Ansible into each run's artifacts: fleetctl gives
    it a minimal one, so tokens and passwords in fleetctl's own environment stay out of every file."""
    env = {**sim.env, "FLEETCTL_TEST_SECRET_TOKEN": ENV_SECRET, "PGPASSWORD": ENV_SECRET}
    out = cli("rollout 1.1.0 -l canary --yes --json", env=env).stdout
    out += cli("versions --refresh --json", env=env).stdout
    out += cli("rollback --yes --json", env=env).stdout
    assert sim.current()["node-001"] == "1.0.0"
    artifacts = list((sim.dir / ".fleetctl" / "runner" / "artifacts").glob("*/command"))
    assert artifacts, "runner artifacts were written"
    assert ENV_SECRET not in out
    assert files_mentioning(sim.dir, ENV_SECRET) == []
