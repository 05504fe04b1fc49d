"""`fleetctl rollback`: the one command that restores the fleet."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetctl import rollback as rollbacks
from fleetctl.cli.output import CliState, print_json, state
from fleetctl.cli.run_cmds import JsonOption, YesOption, confirm, running
from fleetctl.cli.summary import finish, summary
from fleetctl.errors import UsageError


def rollback(
    ctx: typer.Context,
    run: Annotated[
        str | None, typer.Argument(help="Revert this rollout run. Default: the newest that changed hosts.")
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Bring every selected host not at VERSION back to VERSION, whatever put it there. Refused "
            "for a quarantined VERSION, and for a host that never ran VERSION or runs an older one.",
        ),
    ] = None,
    limit: Annotated[
        str | None, typer.Option("--limit", "-l", help="Only hosts matching this Ansible pattern.")
    ] = None,
    forks: Annotated[
        int | None,
        typer.Option("--forks", min=1, max=500, help="Parallel hosts (default: rollback.forks, 50)."),
    ] = None,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh/--no-refresh",
            help="With --to: first ask the hosts the ledger shows at VERSION or does not know (drift).",
        ),
    ] = True,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Retry just the failed hosts of the newest rollback.")
    ] = False,
    allow_forward: Annotated[
        bool,
        typer.Option(
            "--allow-forward",
            help="Let hosts go forward (to a version they never ran, or a newer one): a rollout in "
            "disguise. Needs --reason; audited as rollback.forward. Never allows a quarantined version.",
        ),
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why, for the journal and the audit log.")
    ] = None,
    yes: YesOption = False,
    json_out: JsonOption = False,
) -> None:
    """Roll back with one command: preempts a rollout in flight, skips hosts already at their target, runs
    wide without bakes, checks health once at the end. Allowed during freezes (audited). Only goes back:
    a host that would go forward is refused (exit 3 under a freeze, else 2) unless --allow-forward."""
    st = state(ctx)
    if retry_failed:
        if run or to or allow_forward:
            raise UsageError("--retry-failed takes no RUN, --to or --allow-forward", "drop them")
        if rollbacks.to_retry(st.ctx) is None:  # nothing to retry: say so, exit 0, like plain rollback
            if json_out:
                return print_json({**summary(None, "rollback", "noop"), "moves": []})
            st.err.print("nothing to do: no rollback has failed hosts")
            return
        confirm(st, yes, lambda: None, "Retry the failed hosts of the newest rollback?")
        with running(st, json_out) as (renderer, ready):
            st.ctx.events = renderer
            retried = rollbacks.retry_failed(st.ctx, engine_ready=ready)
        return finish(st, retried, json_out)
    preview = rollbacks.prepare(
        st.ctx,
        run,
        to=to,
        limit=limit,
        refresh=refresh,
        forks=forks,
        allow_forward=allow_forward,
        reason=reason,
    )
    if not preview.plan.hosts:
        ended = rollbacks.nothing_to_restore(st.ctx)
        if json_out:
            return print_json({**summary(None, "rollback", "noop"), "moves": [], "superseded": ended})
        what = f"run {preview.reverts} is" if preview.reverts else "the selected hosts are"
        st.err.print(f"nothing to do: {what} already at the target version(s)")
        for run_id in ended:
            st.err.print(f"run {run_id} ended aborted: it will not be resumed (superseded by this rollback)")
        return
    confirm(st, yes, lambda: show(st, preview), f"Roll back {len(preview.plan.hosts)} host(s)?")

    def final() -> rollbacks.Rollback:  # again under the lock: a preempted rollout may have moved on
        return rollbacks.prepare(
            st.ctx,
            preview.reverts,
            to=to,
            limit=limit,
            refresh=False,
            forks=forks,
            allow_forward=allow_forward,
            reason=reason,
        )

    with running(st, json_out) as (renderer, ready):
        st.ctx.events = renderer
        record = rollbacks.start(st.ctx, final, reason=reason, engine_ready=ready)
    if record is None:
        if json_out:
            return print_json({**summary(None, "rollback", "noop"), "moves": []})
        st.err.print("nothing to do: every host is already at its target")
        return
    finish(st, record, json_out)


def show(st: CliState, rb: rollbacks.Rollback) -> None:
    what = f"revert run {rb.reverts}" if rb.reverts else f"restore {rb.plan.version}"
    st.out.print(
        f"rollback: {what} on {len(rb.plan.hosts)} host(s), forks {rb.plan.forks}, "
        f"{len(rb.plan.stages[0].batches) if rb.plan.stages else 0} batch(es), no bakes"
    )
    for (src, dst, direction), n in sorted(rb.moves.items(), key=lambda kv: -kv[1]):
        st.out.print(f"  {n:5d} host(s)  {src or 'unknown'} -> {dst}  {direction}")
    for m in rb.forward:
        st.out.print(f"  FORWARD {m.host}: {m.why} (allowed by --allow-forward, audited)")
    if rb.plan.skipped:
        st.out.print(f"  skipped {len(rb.plan.skipped)} host(s) already at their target")
    if rb.unknown:
        st.out.print(
            f"  cannot revert {len(rb.unknown)} host(s) with no known from-version, e.g. {rb.unknown[0]}"
        )
