"""Every command has help text, `--help` works everywhere, and every command is in the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer.main

from fleetctl.cli.app import app
from tests.conftest import Cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def commands() -> list[tuple[str, Any]]:
    root = typer.main.get_command(app)
    out: list[tuple[str, Any]] = []

    def walk(prefix: str, group: Any) -> None:
        for name, cmd in group.commands.items():
            path = f"{prefix} {name}".strip()
            out.append((path, cmd))
            if hasattr(cmd, "commands"):
                walk(path, cmd)

    walk("", root)
    return out


ALL = commands()


def documented(path: str) -> bool:
    """`fleetctl PATH` in the README, or a sub-command named on a line about its group
    (e.g. `fleetctl freeze on/off/list/status`)."""
    if f"fleetctl {path}" in README:
        return True
    group, _, sub = path.rpartition(" ")
    return bool(group) and any(
        f"fleetctl {group}" in line and sub in line.split(f"fleetctl {group}", 1)[1]
        for line in README.splitlines()
    )


def test_there_are_commands() -> None:
    names = {n for n, _ in ALL}
    assert {"rollout", "rollback", "plan", "status", "freeze on", "schedule add", "tick", "sim up"} <= names


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=[n for n, _ in ALL])
def test_command_has_help_and_is_documented(path: str, cmd: Any, cli: Cli) -> None:
    assert (cmd.help or "").strip(), f"`fleetctl {path}` has no help text"
    result = cli(f"{path} --help")
    assert "Usage:" in result.stdout
    assert documented(path), f"`fleetctl {path}` is not in README.md"


def test_every_option_has_help() -> None:
    missing = [
        f"{path} {p.name}"
        for path, cmd in ALL
        for p in cmd.params
        if getattr(p, "param_type_name", "") == "option"
        and not (p.help or "").strip()
        and p.name not in ("help",)
    ]
    assert missing == []
