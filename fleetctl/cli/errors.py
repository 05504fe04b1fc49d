"""The one place where exceptions become a one-line message, a hint and an exit code."""

from __future__ import annotations

import sys
import traceback

import typer
from typer.core import TyperGroup

from fleetctl.errors import ExitCode, FleetError


def one_line(text: str) -> str:
    """An error stays one line whatever operator or node text it quotes: control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def report(exc: BaseException, debug: bool = False) -> int:
    """Print `exc` for a human on stderr; return the exit code."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, FleetError):
        typer.echo(f"fleetctl: error: {one_line(exc.message)}", err=True)
        if exc.hint:
            typer.echo(f"  hint: {one_line(exc.hint)}", err=True)
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        typer.echo("fleetctl: interrupted", err=True)
        return int(ExitCode.INTERRUPTED)
    typer.echo(f"fleetctl: internal error: {type(exc).__name__}: {one_line(str(exc))}", err=True)
    typer.echo("  hint: rerun with --debug for the traceback, and report it", err=True)
    return int(ExitCode.FAILED)


class FleetGroup(TyperGroup):
    """Root command group: maps every domain error (and Ctrl-C) to its exit code, no traceback."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except typer.Abort:  # Ctrl-C (or end of input) at a prompt: interrupted, like Ctrl-C anywhere
            raise typer.Exit(report(KeyboardInterrupt())) from None
        except (typer.Exit, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - the single mapping point
            if getattr(exc, "exit_code", None) is not None and not isinstance(exc, FleetError):
                raise  # click's own usage errors carry their code
            debug = bool(ctx.obj and getattr(ctx.obj, "debug", False))
            raise typer.Exit(report(exc, debug)) from None
        except KeyboardInterrupt as exc:
            raise typer.Exit(report(exc)) from None
