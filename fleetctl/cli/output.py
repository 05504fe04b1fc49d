"""Output defined once: data to stdout (JSON with --json), progress and logs to stderr, no colours or
bars when the stream is not a terminal."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from fleetctl.context import FleetContext


@dataclass
class CliState:
    """What the root callback parsed; commands build their FleetContext from it."""

    ctx: FleetContext
    debug: bool = False
    out: Console = field(
        default_factory=lambda: Console(highlight=False, width=None if sys.stdout.isatty() else 250)
    )
    err: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))

    @property
    def interactive(self) -> bool:
        return sys.stdin.isatty() and sys.stdout.isatty()


def state(ctx: typer.Context) -> CliState:
    return ctx.find_root().obj


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "to_json"):
        return value.to_json()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def table(*columns: str) -> Table:
    t = Table(*columns, box=None, pad_edge=False, header_style="bold")
    return t


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z" if value else "-"
