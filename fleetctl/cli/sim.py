"""`fleetctl sim`: create, inspect and stop a simulated fleet on loopback, or on real SSH test hosts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fleetctl.cli.output import console, styled
from fleetctl.errors import SimError
from fleetctl.sim import fleet
from fleetctl.units import parse_duration

app = typer.Typer(
    help="A simulated fleet (real node directories, real HTTP controllers, optionally real SSH hosts) to try "
    "fleetctl on.",
    no_args_is_help=True,
)

DirOption = Annotated[
    Path, typer.Option("--dir", help="Directory of the simulated fleet.", file_okay=False, resolve_path=True)
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of text.")]


def _print_json(data: object) -> None:
    typer.echo(json.dumps(data))


@app.command()
def up(
    nodes: Annotated[
        int | None,
        typer.Option(
            "--nodes", "-n", help="Number of nodes (1-5000). Default: 10, or the size of the sim in --dir."
        ),
    ] = None,
    dir: DirOption = Path("sim"),
    hang_after: Annotated[
        str | None,
        typer.Option(
            "--hang-after",
            help="How long after a (re)start the faulty 2.0.0 build's API blocks, e.g. 20s (the default).",
        ),
    ] = None,
    ssh: Annotated[
        bool,
        typer.Option(
            "--ssh",
            help="Make every node a real SSH host (sshd in its own network namespace; needs root, else "
            "sshd on loopback addresses) reached over SSH with host keys checked. Stays on for this --dir.",
        ),
    ] = False,
    connection: Annotated[
        str | None,
        typer.Option(
            "--connection",
            help="With --ssh: Ansible's connection to the nodes, ssh (OpenSSH, the default) or paramiko.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create a simulated fleet (all nodes at 1.0.0) and start it, or start a stopped one again."""
    seconds = None
    if hang_after is not None:
        try:
            seconds = parse_duration(hang_after)
        except ValueError as exc:
            raise SimError(f"--hang-after: {exc}") from None
    if connection is not None and connection not in fleet.CONNECTIONS:
        raise SimError(f"--connection must be ssh or paramiko, not {connection!r}")
    if connection is not None and not ssh and not _is_ssh_sim(dir):
        raise SimError("--connection needs --ssh", hint="add --ssh")
    info = fleet.create(dir, nodes, seconds, ssh=ssh, connection=connection)
    if json_out:
        _print_json(info.to_json())
        return
    out = console()
    out.print(f"Simulated fleet of {len(info.nodes)} nodes running in {info.dir} (port {info.port}).")
    if info.ssh_mode == "netns":
        out.print(
            f"  SSH hosts: netns mode (each node in its own network namespace, sshd on port 22);"
            f" Ansible connects with {info.connection}, host keys checked.",
            highlight=False,
        )
    elif info.ssh_mode:
        out.print(
            f"  SSH hosts: {info.ssh_mode} mode (FALLBACK, no network namespaces: {info.fallback_reason});"
            f" sshd on loopback addresses, links cannot be cut. Ansible connects with {info.connection}.",
            highlight=False,
        )
    if info.ssh_mode:
        first = info.nodes[0]
        out.print(f"  try: ssh -F {info.ssh_dir / 'ssh_config'} {first.name}")
    out.print(f"  inventory  {info.inventory}\n  config     {info.config}")
    out.print(f"  2.0.0 is the faulty build: its API blocks {info.hang_after:g}s after a restart.")
    out.print("Point fleetctl at it:")
    out.print(f"  export FLEETCTL_CONFIG={info.config}")
    out.print(f"Stop it with: fleetctl sim down --dir {info.dir}")


@app.command()
def status(dir: DirOption = Path("sim"), json_out: JsonOption = False) -> None:
    """Show each node's version on disk and whether its controller answers /health."""
    info = fleet.load(dir)
    pid = fleet.is_running(info.dir)
    nodes = fleet.status(info.dir)
    counts = Counter(n.version or "none" for n in nodes)
    if json_out:
        _print_json(
            {
                "running": pid is not None,
                "pid": pid,
                "nodes": [
                    {
                        "name": n.name,
                        "address": n.address,
                        "zone": n.zone,
                        "version": n.version,
                        "healthy": n.healthy,
                    }
                    for n in nodes
                ],
                "counts": dict(sorted(counts.items())),
                **(
                    {
                        "ssh_mode": info.ssh_mode,
                        "fallback_reason": info.fallback_reason,
                        "connection": info.connection,
                    }
                    if info.ssh_mode
                    else {}
                ),
            }
        )
        return
    out = console()
    table = Table("node", "address", "zone", "version", "healthy")
    for n in nodes:
        table.add_row(
            n.name,
            n.address,
            n.zone,
            n.version or "-",
            styled("yes", "green") if n.healthy else styled("no", "red"),
        )
    out.print(table)
    state = f"running (pid {pid}, port {info.port})" if pid else "stopped"
    census = ", ".join(f"{v}: {c}" for v, c in sorted(counts.items()))
    healthy = sum(n.healthy for n in nodes)
    out.print(f"{info.dir}: {state}; versions {census}; healthy {healthy}/{len(nodes)}")
    if info.ssh_mode:
        why = f" (fallback: {info.fallback_reason})" if info.fallback_reason else ""
        out.print(f"SSH hosts: {info.ssh_mode} mode{why}, connection {info.connection}")


@app.command()
def load(
    dir: DirOption = Path("sim"),
    off: Annotated[bool, typer.Option("--off", help="Lift the load.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Morning load: every controller running a release whose manifest says `fails_under_load` (the
    faulty 2.0.0) starts to block now, long after its bakes passed, until `--off`."""
    reply = fleet.set_load(dir, not off)
    if json_out:
        return _print_json({"load": not off, "reply": reply})
    typer.echo(
        f"{reply}: controllers of a release that fails under load {'answer again' if off else 'now block'}"
    )


@app.command()
def down(dir: DirOption = Path("sim"), json_out: JsonOption = False) -> None:
    """Stop the simulated fleet's server (and tear down its SSH hosts). Files stay on disk; `sim up` starts
    it again as it was (an ssh sim gets new SSH hosts)."""
    had_hosts = fleet.ssh_hosts(dir) is not None
    pid = fleet.stop(dir)
    if json_out:
        extra = {"ssh_hosts_removed": True} if had_hosts else {}
        _print_json({"dir": str(dir), "stopped": pid is not None, "pid": pid, **extra})
        return
    what = (
        f"Stopped the simulated fleet in {dir} (pid {pid})"
        if pid
        else f"No simulated fleet is running in {dir}"
    )
    console().print(what + (", removed its SSH hosts." if had_hosts else "."))


def _is_ssh_sim(dir: Path) -> bool:
    try:
        return fleet.load(dir).ssh_mode is not None
    except SimError:
        return False
