"""`notify list|test|flush`, `metrics`, and the courier every command runs in the background."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Annotated

import typer

from fleetctl import metrics as metrics_mod
from fleetctl import notify, notify_send
from fleetctl.cli.output import print_json, state, table, when
from fleetctl.context import FleetContext
from fleetctl.errors import ExitCode, UsageError

app = typer.Typer(
    help="Notifications: the outbox of events for fleet.yml's `notify:` targets.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="JSON to stdout.")]
COURIER = "fleetctl.courier"


def start_courier(ctx: typer.Context, fctx: FleetContext) -> None:
    """Deliver notifications and rewrite the metrics textfile while the command runs; a short budget at
    its end (see fleetctl.notify_send.Courier)."""
    courier = notify_send.Courier(fctx, on_tick=metrics_mod.TextfileWriter()).start()
    ctx.meta[COURIER] = courier
    ctx.call_on_close(courier.close)


def stop_courier(ctx: typer.Context) -> None:
    """For read-only commands (serve): no deliveries from this process."""
    courier = ctx.find_root().meta.get(COURIER)
    if courier is not None:
        courier.cancel()


@app.command("list")
def list_(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only rows in this state: pending, sending, delivered, failed."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many rows, newest first.")] = 50,
    json_out: JsonOption = False,
) -> None:
    """Show the outbox: each event per target, delivered or not, its attempts and last error."""
    st = state(ctx)
    rows = st.ctx.store.outbox.list(limit=limit, status=status)
    if json_out:
        return print_json({"outbox": [r.to_json() for r in rows], "stats": st.ctx.store.outbox.stats()})
    if not rows:
        st.err.print(
            "the outbox is empty" + ("" if st.ctx.config.notify else " (no `notify:` targets in fleet.yml)")
        )
        return
    t = table("ID", "EVENT", "TARGET", "RUN", "STATUS", "TRIES", "WHEN", "LAST ERROR")
    for r in rows:
        at = r.delivered_at or (r.next_attempt_at if r.status == "pending" else r.last_attempt_at)
        t.add_row(
            str(r.id),
            r.event,
            r.target,
            r.run_id or "-",
            r.status,
            str(r.attempts),
            when(at),
            r.last_error or "",
        )
    st.out.print(t)


@app.command()
def test(
    ctx: typer.Context,
    target: Annotated[
        str | None, typer.Argument(help="A target's name (see `notify:`); default: every target.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Send a `notify.test` event now to one target or all of them (nothing is queued)."""
    st = state(ctx)
    results = notify_send.test_targets(st.ctx, target)
    shown = dict(notify.named(st.ctx.config.notify))
    if json_out:
        print_json([{"target": n, "ok": e is None, "error": e} for n, e in results])
    else:
        for name, error in results:
            st.out.print(
                f"{name} ({shown[name].shown()}): " + ("delivered" if error is None else f"FAILED: {error}")
            )
    if any(e for _n, e in results):
        raise typer.Exit(int(ExitCode.FAILED))


@app.command()
def flush(
    ctx: typer.Context,
    budget: Annotated[float, typer.Option("--budget", help="Seconds to spend at most.")] = 60.0,
    json_out: JsonOption = False,
) -> None:
    """Deliver every undelivered event now, ignoring backoff (failed ones too). Exits 1 when some remain."""
    st = state(ctx)
    report = notify_send.flush(st.ctx, budget)
    left = st.ctx.store.outbox.stats()
    remaining = left["pending"] + left["failed"] + left["sending"]
    if json_out:
        print_json({**report.to_json(), "undelivered": remaining})
    else:
        st.out.print(f"delivered {report.delivered}, failed {report.failed}, undelivered {remaining}")
        for target, event, error in report.errors[:20]:
            st.err.print(f"  {target}: {event}: {error}")
    if remaining:
        raise typer.Exit(int(ExitCode.FAILED))


def metrics(
    ctx: typer.Context,
    textfile: Annotated[
        bool, typer.Option("--textfile", help="Also write `metrics.textfile` from fleet.yml now.")
    ] = False,
) -> None:
    """Print the Prometheus metrics (text exposition format) read from the journal."""
    st = state(ctx)
    typer.echo(metrics_mod.exposition(st.ctx), nl=False)
    if textfile:
        path = metrics_mod.TextfileWriter()(st.ctx, True)
        if path is None:
            st.err.print("no metrics written: set `metrics: {textfile: PATH}` in fleet.yml")
            raise typer.Exit(int(ExitCode.USAGE))
        st.err.print(f"wrote {path}")


@app.command()
def receive(
    ctx: typer.Context,
    bind: Annotated[
        str, typer.Option("--bind", help="HOST:PORT to listen on (port 0: any free one).")
    ] = "127.0.0.1:9000",
    secret_file: Annotated[
        Path | None,
        typer.Option("--secret-file", help="Check each body's HMAC-SHA256 signature with this key."),
    ] = None,
    count: Annotated[
        int, typer.Option("--count", help="Exit after this many events (0: run until Ctrl-C).")
    ] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print each event as one JSON line.")] = False,
) -> None:
    """A local webhook receiver that prints the events it gets, to try `notify:` out (not for production)."""
    from fleetctl import notify_receive
    from fleetctl.web.server import parse_bind

    stop_courier(ctx)
    host, port = parse_bind(bind)
    key = None
    if secret_file is not None:
        try:
            key = secret_file.read_bytes().strip()
        except OSError as exc:
            raise UsageError(f"--secret-file {secret_file}: {exc.strerror}", "give a readable file") from None
    got = 0

    def show(event: dict) -> None:
        nonlocal got
        typer.echo(json.dumps(event, sort_keys=True) if json_out else notify_receive.line(event))
        got += 1
        if count and got >= count:
            threading.Thread(target=server.shutdown, daemon=True).start()

    try:
        server = notify_receive.listen(host, port, key, show)
    except OSError as exc:
        raise UsageError(f"cannot listen on {bind}: {exc.strerror or exc}", "choose another --bind") from None
    typer.echo(f"listening on {server.url}", err=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
