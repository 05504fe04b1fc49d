"""`init` and `check`: the first hour with a real fleet, and the preflight before every change."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetctl import check as preflight
from fleetctl import scaffold
from fleetctl.cli.output import print_json, state
from fleetctl.errors import CheckFailed

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("check")(check)


def init(
    inventory: Annotated[
        Path, typer.Option("--inventory", "-i", help="The Ansible inventory (file or directory).")
    ] = Path("inventory"),
    directory: Annotated[Path, typer.Option("--dir", help="Where to write fleet.yml.")] = Path("."),
    json_out: JsonOption = False,
) -> None:
    """Write a commented fleet.yml for an inventory: stages from its canary/ring groups (else a canary
    and percentage waves), the node contract's health probe, rollback and state. Never overwrites."""
    result = scaffold.init_config(inventory, directory)
    if json_out:
        return print_json(result.to_json())
    typer.echo(f"wrote {result.path} (inventory: {result.inventory})")
    for s in result.stages:
        typer.echo(f"  stage {s.name}: hosts {s.hosts} ({s.count} now), batch {s.batch}, bake {s.bake}")
    typer.echo(f"next: fleetctl -c {result.path} check")


def check(
    ctx: typer.Context,
    version: Annotated[
        str | None, typer.Argument(help="Also check this version: artifact, checksum, quarantine.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Preflight: config and inventory, every host through Ansible, probes, the artifact of VERSION and
    its checksum, quarantine, journal, lock, freezes and windows. Exit 1 when a check fails."""
    report = preflight.preflight(state(ctx).ctx, version)
    if json_out:
        print_json(report.to_json())
    else:
        for c in report.checks:  # plain echo: hosts and errors are data, never markup
            where = f"{c.host}: " if c.host else ""
            fix = f" -- fix: {c.fix}" if c.fix else ""
            typer.echo(_plain(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<10} {where}{c.detail}{fix}"))
    if not report.ok:
        raise CheckFailed(
            f"{len(report.failures)} check(s) failed", "fix them and run `fleetctl check` again"
        )


def _plain(text: str) -> str:
    """One line, control characters escaped: what a node or Ansible answered cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
