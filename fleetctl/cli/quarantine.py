"""`fleetctl quarantine`: versions a rollout refuses until a human clears them."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetctl.cli.output import print_json, state, table, when
from fleetctl.errors import UsageError
from fleetctl.rollout import valid_version

app = typer.Typer(help="Versions refused by rollouts after they had to be rolled back.", no_args_is_help=True)


@app.command("list")
def list_(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Include cleared entries.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """List quarantined versions with the reason and the run that put them there."""
    st = state(ctx)
    entries = st.ctx.store.quarantine.list(st.ctx.component, include_cleared=all_)
    if json_out:
        return print_json({"quarantine": [e.to_json() for e in entries]})
    t = table("VERSION", "SINCE", "RUN", "REASON", "CLEARED")
    for e in entries:
        t.add_row(
            e.version,
            when(e.created_at),
            e.run_id or "-",
            e.reason,
            when(e.cleared_at) if e.cleared_at else "",
        )
    st.out.print(t)


@app.command()
def clear(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="The quarantined version.")],
    reason: Annotated[str, typer.Option("--reason", help="Why it is safe again (audited).")],
) -> None:
    """Allow a quarantined version again. Audited."""
    st = state(ctx)
    valid_version(version)
    if not reason.strip():
        raise UsageError("--reason must not be empty", "say why the version is safe again")
    entry = st.ctx.store.quarantine.clear(st.ctx.component, version, reason=reason, by=st.ctx.who)
    if entry is None:
        raise UsageError(f"version {version} is not quarantined", "see `fleetctl quarantine list`")
    st.err.print(f"{version} cleared from quarantine by {st.ctx.who}")
