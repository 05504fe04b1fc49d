"""The root `fleetctl` command: global options, the context, and the sub-apps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetctl import __version__
from fleetctl.cli import (
    db,
    demo,
    fleet_cmds,
    freeze,
    guard,
    notify_cmds,
    quarantine,
    rollback,
    run_cmds,
    schedule,
    serve,
    sim,
)
from fleetctl.cli.errors import FleetGroup
from fleetctl.cli.output import CliState
from fleetctl.context import FleetContext

app = typer.Typer(
    cls=FleetGroup,
    help="Staged, journaled, freeze-aware host-controller updates across a fleet, through Ansible.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fleetctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="fleet.yml to use (else $FLEETCTL_CONFIG, else ./fleet.yml)."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="State database: a SQLAlchemy URL or a SQLite path (else $FLEETCTL_DB, else `state:` in fleet.yml).",
        ),
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option(
            "--operator",
            help="Who is acting, for the journal (else $FLEETCTL_OPERATOR, else your login name).",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """fleetctl updates the host controller across a fleet in stages (canary, rings, the rest), records
    which version every node runs, honours freezes and windows, and rolls back with one command."""
    db_url = db
    if db and "://" not in db:
        db_url = f"sqlite:///{Path(db).resolve()}"
    ctx.obj = CliState(FleetContext(config_path=config, db_url=db_url, operator=operator), debug=debug)
    notify_cmds.start_courier(ctx, ctx.obj.ctx)  # notifications and the metrics textfile, off the run's path


fleet_cmds.register(app)
run_cmds.register(app)
from fleetctl.cli import setup_cmds  # noqa: E402 - init and check (issue 10)

setup_cmds.register(app)
app.command("rollback")(rollback.rollback)
app.command("demo")(demo.demo)
app.add_typer(quarantine.app, name="quarantine")
app.add_typer(sim.app, name="sim")
app.add_typer(freeze.app, name="freeze")
app.add_typer(schedule.app, name="schedule")
app.add_typer(guard.app, name="guard")
app.command("tick")(schedule.tick)
app.command("audit")(freeze.audit)
app.add_typer(notify_cmds.app, name="notify")
app.add_typer(db.app, name="db")
app.command("metrics")(notify_cmds.metrics)
app.command("serve")(serve.serve)


def run() -> None:
    app()
