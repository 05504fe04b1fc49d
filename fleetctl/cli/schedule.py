"""`fleetctl schedule` (maintenance windows, the queue, timer units) and `fleetctl tick`."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetctl import guard, schedule
from fleetctl.cli.output import print_json, state, table, when
from fleetctl.cli.progress import Renderer
from fleetctl.cli.run_cmds import running
from fleetctl.config import find_config
from fleetctl.errors import ExitCode, UsageError
from fleetctl.policy import fmt_instant
from fleetctl.windows import parse_instant

app = typer.Typer(
    help="Maintenance windows and scheduled rollouts, run by `fleetctl tick` from cron or a systemd timer.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]


@app.command()
def windows(
    ctx: typer.Context,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Evaluate at this instant (ISO 8601 with offset or Z) instead of now."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """May an unattended run start a batch now (or --at TIME)? Open only inside a maintenance window and
    before its cutoff."""
    st = state(ctx)
    instant = None
    if at is not None:
        try:
            instant = parse_instant(at)
        except ValueError as exc:
            raise UsageError(f"--at: {exc}", "e.g. --at 2026-12-24T01:30:00Z") from None
    ms = schedule.windows_state(st.ctx, instant)
    if json_out:
        return print_json(ms.to_json())
    if ms.open and ms.window is None:
        st.out.print("open: no maintenance windows are configured, unattended runs are not restricted")
    elif ms.open:
        st.out.print(f"open: window {ms.window}, no batch starts after {fmt_instant(ms.closes_at)}")
    else:
        inside = f" (window {ms.window} is past its cutoff)" if ms.window else ""
        st.out.print(f"closed{inside}; next opens {fmt_instant(ms.next_open)}")


@app.command()
def add(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version to roll out, e.g. 1.2.0.")],
    not_before: Annotated[
        str | None,
        typer.Option("--not-before", help="Not before this instant (ISO 8601 with offset or Z)."),
    ] = None,
    limit: Annotated[
        str | None, typer.Option("--limit", "-l", help="Only hosts matching this Ansible pattern.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Queue a rollout for the next open maintenance window; `fleetctl tick` starts it."""
    st = state(ctx)
    item = schedule.queue_add(st.ctx, version, not_before=not_before, pattern=limit)
    if json_out:
        return print_json(item.to_json())
    after = f" not before {fmt_instant(item.not_before)}" if item.not_before else ""
    st.err.print(f"queued #{item.id}: {item.version} on {item.pattern or 'all'}{after}")


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Queued and started rollouts, oldest first (the next tick takes the oldest due one)."""
    st = state(ctx)
    items = schedule.queue_list(st.ctx)
    if json_out:
        return print_json({"queue": [i.to_json() for i in items]})
    t = table("ID", "VERSION", "HOSTS", "NOT BEFORE", "STATUS", "RUN", "BY", "ADDED")
    for i in items:
        t.add_row(
            str(i.id),
            i.version,
            i.pattern or "all",
            when(i.not_before),
            i.status,
            i.run_id or "-",
            i.created_by or "-",
            when(i.created_at),
        )
    st.out.print(t)


@app.command()
def remove(
    ctx: typer.Context,
    qid: Annotated[int, typer.Argument(metavar="ID", help="The queue item's id (see `schedule list`).")],
) -> None:
    """Take a queued rollout off the queue (audited)."""
    st = state(ctx)
    item = schedule.queue_remove(st.ctx, qid)
    st.err.print(f"removed #{item.id} ({item.version}) from the queue")


@app.command()
def install(
    ctx: typer.Context,
    systemd: Annotated[bool, typer.Option("--systemd", help="Print a systemd service and timer.")] = False,
    cron: Annotated[bool, typer.Option("--cron", help="Print a crontab line.")] = False,
    guard_watch: Annotated[
        bool, typer.Option("--guard-watch", help="Print a systemd service running `fleetctl guard watch`.")
    ] = False,
) -> None:
    """Print what to install so `fleetctl tick` runs every 5 minutes (with the preflight `check` offered
    as a commented line), or the guard as a service (nothing is installed)."""
    if systemd + cron + guard_watch != 1:
        raise UsageError(
            "give exactly one of --systemd, --cron or --guard-watch",
            "e.g. fleetctl schedule install --systemd",
        )
    st = state(ctx)
    config = find_config(st.ctx.config_path, st.ctx.env)
    exe = shutil.which("fleetctl") or str(Path(sys.argv[0]).resolve())
    kind = "systemd" if systemd else "cron" if cron else "guard-watch"
    typer.echo(schedule.install_units(kind, exe, config), nl=False)


def tick(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """One scheduler step, for cron or a systemd timer: first the due guard rounds (any time); then, inside
    an open maintenance window and without a freeze, resume the run a window closed on or start the
    oldest due queued rollout. With nothing to do,
    print one line saying why and exit 0. Plain output (no colours, no bars) for journald."""
    st = state(ctx)
    with running(st, json_out) as (_live, ready):
        st.ctx.events = Renderer("json" if json_out else "plain")
        outcome = schedule.tick(st.ctx, engine_ready=ready)
    if json_out:
        print_json(outcome.to_json())
    else:
        for r in outcome.guards:
            typer.echo(guard_line(r))
        typer.echo(outcome.message)
    if outcome.run is not None and outcome.run.status in ("failed", "halted", "rolled_back", "aborted"):
        raise typer.Exit(int(ExitCode.FAILED))
    if any(r.tripped for r in outcome.guards):
        raise typer.Exit(int(ExitCode.FAILED))


def guard_line(r: guard.RoundOutcome) -> str:
    """One line per guard round, for journald."""
    g = r.guard
    head = f"guard {g.run_id} ({g.version}): probed {r.probed} host(s), {len(r.failed)} failed, {len(r.failing)} failing"
    if r.tripped:
        then = f"rolling back (run {r.rollback_run})" if r.action == "rollback" else "fleet frozen"
        head += f"; TRIPPED (budget {g.max_failures}): {then}"
    if r.error:
        head += f"; {r.error}"
    return head
