"""`fleetctl guard`: the watch kept over a rollout after its last bake (status, list, stop, watch)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from fleetctl import guard
from fleetctl.cli.output import CliState, print_json, state, table, when
from fleetctl.cli.progress import Renderer

app = typer.Typer(
    help="Guards: after a successful rollout its hosts stay under health probes for `guard.duration`; "
    "too many failing hosts roll the run back by themselves (or freeze the fleet).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]


def _show(st: CliState, status: guard.GuardStatus) -> None:
    g = status.guard
    doc = status.to_json()
    st.out.print(f"guard of run {g.run_id} ({g.component} {g.version}): {g.status}")
    st.out.print(
        f"  {doc['guarded']} host(s) guarded until {when(g.until)}, a round every {g.interval:g}s, "
        f"{g.failures_to_fail} failed round(s) fail a host, budget {g.max_failures} host(s), on trip: {g.on_trip}"
    )
    st.out.print(f"  rounds: {g.rounds}, last {when(g.last_round_at)}")
    if g.end_reason:
        st.out.print(
            f"  ended {when(g.ended_at)}: {g.end_reason}" + (f" (by {g.ended_by})" if g.ended_by else "")
        )
    if g.rollback_run_id:
        st.out.print(f"  rollback: run {g.rollback_run_id} (see `fleetctl status {g.rollback_run_id}`)")
    failing = [h for h in status.hosts if h.state in ("failing", "failed")]
    if failing:
        t = table("host", "state", "rounds", "first failure", "last failure", "error")
        for h in failing:
            t.add_row(
                h.host,
                h.state,
                str(h.streak),
                when(h.first_failure_at),
                when(h.last_failure_at),
                h.last_error or "",
            )
        st.out.print(t)


@app.command("status")
def status_cmd(
    ctx: typer.Context,
    run: Annotated[
        str | None, typer.Argument(help="The guarded run (default: the newest active guard).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """The guard of a run: guarded hosts, until when, last round, failing hosts and why."""
    st = state(ctx)
    result = guard.status(st.ctx, run)
    if json_out:
        return print_json(result.to_json())
    _show(st, result)


@app.command("list")
def list_cmd(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Every guard, newest first."""
    st = state(ctx)
    guards = st.ctx.store.guards.list(limit=100)
    if json_out:
        return print_json({"guards": [g.to_json() for g in guards]})
    if not guards:
        st.err.print("no guard in the journal")
        return
    t = table("run", "version", "status", "until", "rounds", "last round", "reason")
    for g in guards:
        t.add_row(
            g.run_id,
            g.version,
            g.status,
            when(g.until),
            str(g.rounds),
            when(g.last_round_at),
            g.end_reason or "",
        )
    st.out.print(t)


@app.command("stop")
def stop_cmd(
    ctx: typer.Context,
    run: Annotated[
        str | None, typer.Argument(help="The guarded run (default: the newest active guard).")
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why the guard ends early (required; audited).")
    ] = "",
    json_out: JsonOption = False,
) -> None:
    """End a guard early (audited): its hosts are no longer probed."""
    st = state(ctx)
    stopped = guard.stop(st.ctx, run, reason)
    if json_out:
        return print_json(stopped.to_json())
    st.err.print(f"guard of run {stopped.run_id} ({stopped.version}) stopped: {reason}")


@app.command("watch")
def watch_cmd(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Run the due guard rounds continuously (a service, instead of or beside `tick`). Ctrl-C stops."""
    st = state(ctx)
    stop = threading.Event()
    with Renderer.choose(json_out) as renderer:
        st.ctx.events = renderer
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            guard.watch(st.ctx, stop)
        except KeyboardInterrupt:
            stop.set()
        finally:
            signal.signal(signal.SIGTERM, previous)
