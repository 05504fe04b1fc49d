"""`fleetctl freeze` (manual freezes and freeze status) and `fleetctl audit`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from fleetctl import policy
from fleetctl.cli.output import CliState, print_json, state, table, when
from fleetctl.errors import UsageError
from fleetctl.windows import parse_instant

app = typer.Typer(
    help="Change freezes: no rollout starts, and a running one pauses, while a freeze covers its hosts. "
    "Rollbacks always run (and are audited).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]
AtOption = Annotated[
    str | None,
    typer.Option("--at", help="Evaluate at this instant (ISO 8601 with offset or Z) instead of now."),
]


AllFleetsOption = Annotated[
    bool,
    typer.Option("--all-fleets", help="Every fleet in the journal (a shared database), not just this one."),
]


def _show_status(st: CliState, status: policy.FreezeStatus) -> None:
    st.out.print(f"fleet {status.fleet}")
    if not status.frozen:
        st.out.print("not frozen")
    for cause in status.by:
        st.out.print(f"frozen by {cause.describe()}")
    if status.next_change:
        st.out.print(f"changes at {policy.fmt_instant(status.next_change)}")


@app.command()
def on(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option("--reason", help="Why (required; recorded and audited).")],
    until: Annotated[
        str | None, typer.Option("--until", help="End by itself at this instant (ISO 8601 with offset or Z).")
    ] = None,
    for_: Annotated[
        str | None, typer.Option("--for", help="End by itself after this long, e.g. 2h, 1d.")
    ] = None,
    limit: Annotated[
        str, typer.Option("--limit", "-l", help="Freeze only hosts matching this Ansible pattern.")
    ] = "all",
    all_fleets: AllFleetsOption = False,
    json_out: JsonOption = False,
) -> None:
    """Start a manual freeze (until lifted with `freeze off`, or until --until / for --for)."""
    st = state(ctx)
    freeze = policy.freeze_on(st.ctx, reason, until=until, for_=for_, scope=limit, all_fleets=all_fleets)
    if json_out:
        return print_json(freeze.to_json())
    until_text = f" until {policy.fmt_instant(freeze.until)}" if freeze.until else " until lifted"
    where = "every fleet in the journal" if all_fleets else f"{freeze.scope} of fleet {freeze.fleet}"
    st.err.print(f"freeze #{freeze.id} on {where}{until_text} by {freeze.created_by}: {freeze.reason}")
    for run in policy.runs_it_pauses(st.ctx):
        st.err.print(
            f"run {run.id} (rollout {run.target}) will pause before its next batch on a frozen host; "
            f"`fleetctl resume {run.id}` after `fleetctl freeze off --reason TEXT`"
        )


@app.command()
def off(
    ctx: typer.Context,
    reason: Annotated[str | None, typer.Option("--reason", help="Why it is lifted (audited).")] = None,
    limit: Annotated[
        str | None, typer.Option("--limit", "-l", help="Lift only freezes with exactly this scope pattern.")
    ] = None,
    all_fleets: AllFleetsOption = False,
    json_out: JsonOption = False,
) -> None:
    """Lift this fleet's manual freezes in force (--all-fleets: those set with --all-fleets). Freeze
    windows from fleet.yml end by themselves."""
    st = state(ctx)
    lifted = policy.freeze_off(st.ctx, reason, scope=limit, all_fleets=all_fleets)
    after = policy.status(st.ctx)
    if json_out:
        return print_json({"lifted": [f.to_json() for f in lifted], "status": after.to_json()})
    if not lifted:
        st.err.print("no manual freeze was in force" + (" on every fleet" if all_fleets else ""))
    for f in lifted:
        st.err.print(f"lifted freeze #{f.id} on {f.scope} ({f.reason})")
    for cause in after.by:
        st.err.print(f"still frozen by {cause.describe()}")
    for run in policy.runs_waiting(st.ctx):
        st.err.print(
            f"run {run.id} (rollout {run.target}) paused by a freeze is waiting: "
            f"continue it with `fleetctl resume {run.id}`"
        )


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Manual freezes, newest first, with who, why, until and whether they are active, expired or lifted."""
    st = state(ctx)
    rows = policy.entries(st.ctx)
    if json_out:
        return print_json({"freezes": [r.to_json() for r in rows]})
    t = table("ID", "STATE", "FLEET", "SCOPE", "BY", "SINCE", "UNTIL", "REASON", "LIFTED")
    for r in rows:
        f = r.freeze
        lifted = f"{when(f.lifted_at)} by {f.lifted_by}" if f.lifted_at else ""
        t.add_row(
            str(f.id),
            r.state,
            "all fleets" if f.fleet == "*" else f.fleet,
            f.scope,
            f.created_by or "-",
            when(f.created_at),
            when(f.until),
            f.reason,
            lifted,
        )
    st.out.print(t)


@app.command()
def status(ctx: typer.Context, at: AtOption = None, json_out: JsonOption = False) -> None:
    """Is the fleet frozen (now or --at TIME), by which freezes, and when does that change?"""
    st = state(ctx)
    instant = None
    if at is not None:
        try:
            instant = parse_instant(at)
        except ValueError as exc:
            raise UsageError(f"--at: {exc}", "e.g. --at 2026-12-24T10:00:00Z") from None
    result = policy.status(st.ctx, instant)
    if json_out:
        return print_json(result.to_json())
    _show_status(st, result)


def audit(
    ctx: typer.Context,
    last: Annotated[int, typer.Option("--last", "-n", min=1, help="Show at most this many entries.")] = 50,
    json_out: JsonOption = False,
) -> None:
    """The audit log, newest first: freeze toggles and overrides, quarantine changes, lock takeovers, ..."""
    st = state(ctx)
    rows = st.ctx.store.audit.entries(last)
    if json_out:
        return print_json({"audit": [e.to_json() for e in rows]})
    t = table("AT", "ACTOR", "ACTION", "SUBJECT", "REASON", "DETAILS")
    for e in rows:
        details = json.dumps(e.details, separators=(",", ":")) if e.details else ""
        t.add_row(when(e.at), e.actor or "-", e.action, e.subject or "-", e.reason or "", details)
    st.out.print(t)
