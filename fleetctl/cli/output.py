"""Output defined once: data to stdout (JSON with --json), progress and logs to stderr, no colours or
bars when the stream is not a terminal.

Data is never markup. Reasons, errors, versions, host names and whatever a node answered are printed as
they are: every console fleetctl prints through comes from `console()` (rich markup, emoji codes and
highlighting off), and colour comes only from `styled()`, a Text whose style is set apart from its
content. So a reason like `[/]` or a health answer with brackets in its status line prints literally and
can never raise rich's MarkupError."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fleetctl.context import FleetContext


def console(stderr: bool = False, **options: Any) -> Console:
    """A console that prints data literally (no markup, no emoji codes, no highlighting). Off a terminal
    it never wraps lines (soft wrap): a suggested command or a path stays on one line for a log or grep."""
    stream = sys.stderr if stderr else sys.stdout
    if not stream.isatty():
        options.setdefault("soft_wrap", True)
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, **options)


def styled(text: object, style: str) -> Text:
    """`text` (any data) in `style`, without parsing it as markup."""
    return Text(str(text), style=style)


@dataclass
class CliState:
    """What the root callback parsed; commands build their FleetContext from it."""

    ctx: FleetContext
    debug: bool = False
    out: Console = field(default_factory=lambda: console(width=None if sys.stdout.isatty() else 250))
    err: Console = field(default_factory=lambda: console(stderr=True))

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
    """A plain table; print it through a `console()`, which renders its str cells literally."""
    return Table(*columns, box=None, pad_edge=False, header_style="bold")


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") + "Z" if value else "-"
