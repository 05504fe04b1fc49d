"""`rollout`, `plan`, `runs`, `status`, `pause`, `resume`, `abort`."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live

from fleetctl import control, policy
from fleetctl import plan as planning
from fleetctl import rollout as rollouts
from fleetctl.cli.output import CliState, print_json, state, table, when
from fleetctl.cli.progress import Renderer
from fleetctl.cli.summary import exit_code as exit_code  # re-exported
from fleetctl.cli.summary import finish, restored_by, summary
from fleetctl.engine import Engine
from fleetctl.errors import ExitCode, UsageError
from fleetctl.plan import Plan
from fleetctl.units import format_duration

JsonOption = Annotated[bool, typer.Option("--json", help="JSON to stdout (JSON lines while a run goes).")]
YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (needed without a terminal).")
]
RunArg = Annotated[
    str | None, typer.Argument(help="Run id (or a unique prefix). Default: the newest that fits.")
]


def register(app: typer.Typer) -> None:
    for name, fn in (
        ("plan", plan),
        ("rollout", rollout),
        ("runs", runs),
        ("status", status),
        ("pause", pause),
        ("resume", resume),
        ("abort", abort),
    ):
        app.command(name)(fn)


def plan(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The version to plan for, e.g. 1.2.0.")],
    limit: Annotated[
        str | None, typer.Option("--limit", "-l", help="Only hosts matching this Ansible pattern.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the plan as JSON to this file, for `rollout --plan`."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Show what a rollout would do, touching no node: stages, batches, bakes, budgets, skipped hosts."""
    st = state(ctx)
    p = rollouts.make_plan(st.ctx, version, limit)
    if output:
        output.write_text(json.dumps(p.to_json(), indent=2) + "\n")
    frozen = policy.covering(st.ctx, p.hosts)
    quarantined = st.ctx.store.quarantine.get(st.ctx.component, version)
    found = rollouts.published(st.ctx, p)  # a note, not a refusal: plan works before a release is out
    if json_out:
        q = quarantined.to_json() if quarantined else None
        artifact = {"ok": found.ok, "host": found.host, "detail": found.detail} if found else None
        doc = {**p.to_json(), "frozen_by": [c.to_json() for c in frozen], "quarantined": q}
        return print_json({**doc, "artifact": artifact})
    show_plan(st, p)
    if found is not None and not found.ok:
        st.out.print(
            f"NOT IN THE ARTIFACT STORE: {found.detail} (a rollout would be refused, exit 2; "
            f"`fleetctl check {version}` says more)"
        )
    if quarantined:
        st.out.print(
            f"QUARANTINED: {version} since {when(quarantined.created_at)} (run {quarantined.run_id}): "
            f"{quarantined.reason} (a rollout would be refused, exit 3)"
        )
    for cause in frozen:
        st.out.print(f"FROZEN: {cause.describe()} (a rollout would be refused, exit 3)")
    if output:
        st.err.print(f"plan written to {output}; run it with `fleetctl rollout --plan {output}`")


def show_plan(st: CliState, p: Plan) -> None:
    st.out.print(
        f"plan {p.fingerprint}: {p.component} -> {p.version} on {len(p.hosts)} host(s), "
        f"estimated {format_duration(p.estimate_seconds())}, run budget {p.max_failures} failure(s), "
        f"on_failure {p.on_failure}"
    )
    for stage in p.stages:
        st.out.print(f"  {planning.describe(stage)}")
        for i, batch in enumerate(stage.batches, 1):
            shown = ", ".join(batch[:8]) + (f", ... (+{len(batch) - 8})" if len(batch) > 8 else "")
            st.out.print(f"    batch {i}: {shown}")
    if p.skipped:
        st.out.print(f"  skipped: {skipped_summary(p)}")


def rollout(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Argument(help="The version to roll out, e.g. 1.2.0.")] = None,
    limit: Annotated[
        str | None, typer.Option("--limit", "-l", help="Only hosts matching this Ansible pattern.")
    ] = None,
    plan_file: Annotated[
        Path | None, typer.Option("--plan", help="Run exactly this saved plan (refused when stale).")
    ] = None,
    forks: Annotated[
        int | None,
        typer.Option("--forks", min=1, max=500, help="Parallel hosts per batch (default: rollout.forks)."),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the journal.")] = None,
    override_freeze: Annotated[
        bool, typer.Option("--override-freeze", help="Roll out despite a freeze (needs --reason; audited).")
    ] = False,
    yes: YesOption = False,
    json_out: JsonOption = False,
) -> None:
    """Roll VERSION out by the policy's stages (canary, rings, the rest), with health gates between batches.
    A failed budget halts the run and, with on_failure: rollback, reverts it and quarantines VERSION."""
    st = state(ctx)
    if override_freeze and not (reason or "").strip():
        raise UsageError(
            "--override-freeze needs --reason TEXT", "say why the freeze may be overridden (audited)"
        )
    p = rollouts.prepare(st.ctx, version, limit=limit, plan_file=plan_file)
    rollouts.refuse_quarantined(st.ctx, p.version or "")
    options: dict[str, Any] = {"forks": forks} if forks else {}
    if override_freeze:
        options |= {"override_freeze": True, "override_reason": reason}
    else:
        policy.refuse_if_frozen(st.ctx, p, options)  # refuse before asking for confirmation
    if not p.hosts:
        if json_out:
            return print_json(summary(None, "rollout", "noop"))
        st.err.print(f"nothing to do: {skipped_summary(p) or 'no host selected'}")
        return
    question = f"Roll {p.version} out to {len(p.hosts)} host(s)?"
    for other in control.unfinished(st.ctx):  # a new run beside one left unfinished: name it
        note = (
            f"run {other.id} ({other.kind} {other.target or ''}) is unfinished, {control.where(other)}; "
            f"`fleetctl resume {other.id}` continues it"
        )
        st.err.print(f"note: {note}")
        question = f"Roll {p.version} out to {len(p.hosts)} host(s) beside run {other.id}?"
    confirm(st, yes, lambda: show_plan(st, p), question)
    with running(st, json_out) as (renderer, ready):
        st.ctx.events = renderer
        run = rollouts.start(st.ctx, p, reason=reason, options=options, engine_ready=ready)
    finish(st, run, json_out)


def skipped_summary(p: Plan) -> str:
    reasons: dict[str, int] = {}
    for s in p.skipped:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    return ", ".join(f"{n} host(s) {reason}" for reason, n in reasons.items())


def confirm(st: CliState, yes: bool, show: Callable[[], None], question: str) -> None:
    if yes:
        return
    if not st.interactive:
        raise UsageError(
            "refusing to change the fleet without confirmation and without a terminal to ask on", "pass --yes"
        )
    show()
    if not typer.confirm(question, default=False, err=True):
        st.err.print("nothing done")
        raise typer.Exit(int(ExitCode.OK))


@contextmanager
def running(st: CliState, json_out: bool):  # type: ignore[no-untyped-def]
    """Progress rendering plus Ctrl-C/SIGTERM handling: the first interrupt cancels Ansible cleanly and the
    run ends `interrupted` (exit 130); a second one stops at once."""
    engines: list[Engine] = []

    def handler(signum: int, _frame: Any) -> None:
        if engines and not getattr(handler, "fired", False):
            handler.fired = True  # type: ignore[attr-defined]
            st.err.print("interrupt: stopping Ansible and recording where the run is (again to force)")
            engines[0].interrupt()
        else:
            raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    renderer = Renderer.choose(
        json_out,
        restores=lambda run_id: restored_by(st, run_id),
        eta=lambda run_id: control.status(st.ctx, run_id).eta_seconds(),
    )
    try:
        with renderer:
            yield renderer, engines.append
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def runs(
    ctx: typer.Context,
    last: Annotated[int, typer.Option("--last", "-n", help="How many runs.")] = 20,
    json_out: JsonOption = False,
) -> None:
    """List runs, newest first."""
    st = state(ctx)
    records = st.ctx.store.runs.list(limit=last)
    if json_out:
        return print_json({"fleet": st.ctx.store.fleet, "runs": [r.to_json() for r in records]})
    st.err.print(f"fleet {st.ctx.store.fleet}")
    t = table("RUN", "KIND", "TARGET", "STATUS", "OPERATOR", "STARTED", "FINISHED", "REASON")
    for r in records:
        t.add_row(
            r.id,
            r.kind,
            r.target or "-",
            r.status,
            r.operator or "-",
            when(r.started_at),
            when(r.finished_at),
            r.status_reason or "",
        )
    st.out.print(t)


def status(
    ctx: typer.Context,
    run: RunArg = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep showing progress until the run ends.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """A run's status from the journal (works from any terminal): stage, batch, hosts per state, ETA, failures."""
    st = state(ctx)
    if not watch:
        s = control.status(st.ctx, run)
        return print_json(s.to_json()) if json_out else st.out.print(render_status(s))
    run_id = control.status(st.ctx, run).run.id
    last = None
    live = Live(console=st.err, refresh_per_second=2) if st.interactive and not json_out else None
    if live:
        live.start()
    try:
        while True:
            s = control.status(st.ctx, run_id)
            doc = s.to_json()
            key = json.dumps(
                {k: doc["run"][k] for k in ("status", "stage", "batch", "counts")}, sort_keys=True
            )
            if live:
                live.update(render_status(s))
            elif key != last:
                print_json(doc) if json_out else st.out.print(render_status(s))
            last = key
            if doc["run"]["status"] not in ("running", "planned", "paused"):  # a pause is not an end
                break
            time.sleep(1.0)
    finally:
        if live:
            live.stop()


def render_status(s: control.RunStatus) -> str:
    doc = s.to_json()["run"]
    lines = [
        f"run {doc['id']}  {doc['kind']} {doc['target'] or ''}  {doc['status']}"
        + (f" ({doc['reason']})" if doc["reason"] else ""),
        f"  fleet {doc['fleet']}  operator {doc['operator']}  started {doc['started_at']}",
        f"  stage {doc['stage'] or '-'}  batch {doc['batch'] or '-'}  "
        + "  ".join(f"{k} {v}" for k, v in sorted(doc["counts"].items()))
        + f"  (of {doc['total']})",
    ]
    if doc["eta_seconds"] is not None:
        lines.append(f"  eta {format_duration(doc['eta_seconds'])}")
    full = s.to_json()
    for f in full["failed"]:
        lines.append(
            f"  ✗ {f['host']}: {f['error']}" + (" (rolled back)" if f["state"] == "rolled_back" else "")
        )
    q = full["quarantined"]
    if q:
        lines.append(f"  version {q['version']} quarantined: {q['reason']}")
    g = full["guard"]
    if g:
        lines.append(
            f"  guard {g['status']}: {g['guarded']} host(s) until {g['until']}, {g['rounds']} round(s), "
            f"{len(g['failing'])} failing (see `fleetctl guard status {doc['id']}`)"
        )
        lines.extend(f"  ! {h['host']} {h['state']} under guard: {h['error']}" for h in g["failing"])
    return "\n".join(lines)


def pause(ctx: typer.Context, run: RunArg = None) -> None:
    """Ask a running run to pause at its next batch boundary."""
    st = state(ctx)
    r = control.pause(st.ctx, run)
    st.err.print(f"run {r.id} will pause at the next batch boundary; `fleetctl resume {r.id}` continues it")


def resume(
    ctx: typer.Context, run: RunArg = None, yes: YesOption = False, json_out: JsonOption = False
) -> None:
    """Continue a paused or interrupted run (default: the newest). Hosts left mid-update are re-checked first."""
    st = state(ctx)
    r = control.to_resume(st.ctx, run)
    what = f"{r.kind} {r.target}" if r.target else r.kind
    confirm(st, yes, lambda: None, f"Resume run {r.id} ({what}), {control.where(r)}?")
    run = r.id
    with running(st, json_out) as (renderer, ready):
        st.ctx.events = renderer
        r = control.resume(st.ctx, run, engine_ready=ready)
    finish(st, r, json_out)


def abort(ctx: typer.Context, run: RunArg = None, json_out: JsonOption = False) -> None:
    """Abort a run: the batch in flight is cancelled, then the run's on_failure applies (rollback by default)."""
    st = state(ctx)
    with running(st, json_out) as (renderer, _ready):
        st.ctx.events = renderer
        r = control.abort(st.ctx, run)
    if r.status in ("running",):
        st.err.print(
            f"abort requested; run {r.id} stops its batch and applies on_failure "
            f"(watch with `fleetctl status --watch {r.id}`)"
        )
        return
    finish(st, r, json_out)
