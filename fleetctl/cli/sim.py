"""`fleetctl sim`: create, inspect and stop a simulated fleet on loopback."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fleetctl.errors import SimError
from fleetctl.sim import fleet
from fleetctl.units import parse_duration

app = typer.Typer(
    help="A simulated fleet on loopback (real node directories, real HTTP controllers) to try fleetctl on.",
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
    json_out: JsonOption = False,
) -> None:
    """Create a simulated fleet (all nodes at 1.0.0) and start it, or start a stopped one again."""
    seconds = None
    if hang_after is not None:
        try:
            seconds = parse_duration(hang_after)
        except ValueError as exc:
            raise SimError(f"--hang-after: {exc}") from None
    info = fleet.create(dir, nodes, seconds)
    if json_out:
        _print_json(info.to_json())
        return
    out = Console()
    out.print(f"Simulated fleet of {len(info.nodes)} nodes running in {info.dir} (port {info.port}).")
    out.print(f"  inventory  {info.inventory}\n  config     {info.config}")
    out.print(f"  2.0.0 is the faulty build: its API blocks {info.hang_after:g}s after a restart.")
    out.print("Point fleetctl at it:")
    out.print(f"  export FLEETCTL_CONFIG={info.config}", highlight=False)
    out.print(f"Stop it with: fleetctl sim down --dir {info.dir}", highlight=False)


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
            }
        )
        return
    out = Console()
    table = Table("node", "address", "zone", "version", "healthy")
    for n in nodes:
        table.add_row(
            n.name, n.address, n.zone, n.version or "-", "[green]yes[/]" if n.healthy else "[red]no[/]"
        )
    out.print(table)
    state = f"running (pid {pid}, port {info.port})" if pid else "stopped"
    census = ", ".join(f"{v}: {c}" for v, c in sorted(counts.items()))
    healthy = sum(n.healthy for n in nodes)
    out.print(f"{info.dir}: {state}; versions {census}; healthy {healthy}/{len(nodes)}", highlight=False)


@app.command()
def down(dir: DirOption = Path("sim"), json_out: JsonOption = False) -> None:
    """Stop the simulated fleet's server. Files stay on disk; `sim up` starts it again as it was."""
    pid = fleet.stop(dir)
    if json_out:
        _print_json({"dir": str(dir), "stopped": pid is not None, "pid": pid})
    elif pid is None:
        Console().print(f"No simulated fleet is running in {dir}.", highlight=False)
    else:
        Console().print(f"Stopped the simulated fleet in {dir} (pid {pid}).", highlight=False)
