"""`fleetctl serve`: the read-only web view."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fleetctl.cli.notify_cmds import stop_courier
from fleetctl.cli.output import state
from fleetctl.errors import UsageError
from fleetctl.web import server


def serve(
    ctx: typer.Context,
    bind: Annotated[
        str, typer.Option("--bind", help="HOST:PORT to listen on; anything but loopback needs a token.")
    ] = "127.0.0.1:8080",
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding the access token (else $FLEETCTL_SERVE_TOKEN)."),
    ] = None,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between journal reads.")] = 1.0,
) -> None:
    """Serve a live, read-only web view of the journal: census, the current run, freezes, windows,
    quarantine, guard, history and audit. It never offers a write action."""
    st = state(ctx)
    stop_courier(ctx)  # a viewer delivers nothing
    host, port = server.parse_bind(bind)
    token = st.ctx.env.get("FLEETCTL_SERVE_TOKEN") or None
    if token_file is not None:
        try:
            token = token_file.read_text()
        except OSError as exc:
            raise UsageError(f"--token-file {token_file}: {exc.strerror}", "give a readable file") from None
    st.ctx.store  # noqa: B018 - open (and migrate) the journal before the first visitor
    view = server.make_server(st.ctx, host, port, token, interval)
    st.err.print(f"serving {view.url} (read-only; Ctrl-C stops)", soft_wrap=True)
    try:
        view.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        view.stopping.set()
        view.server_close()
