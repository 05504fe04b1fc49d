"""`fleetctl db`: the journal's schema version and pending migrations, an explicit upgrade, and copying
an embedded SQLite journal into an empty PostgreSQL one."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from fleetctl.cli.output import CliState, print_json, state
from fleetctl.store import db_admin

app = typer.Typer(
    help="The journal's database: schema status, explicit upgrades, copying SQLite to PostgreSQL.",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]


def journal_url(st: CliState) -> str:
    """--db, FLEETCTL_DB, else fleet.yml's `state:` (default: fleetctl.db beside fleet.yml)."""
    ctx = st.ctx
    url = ctx.db_url or ctx.env.get("FLEETCTL_DB") or None
    if url and "://" not in url:
        url = f"sqlite:///{os.path.abspath(url)}"
    if url and "://" in url:
        return url
    return ctx.config.state_url(url)


@app.command("status")
def status_cmd(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """The journal's schema version, and the migrations this fleetctl would apply."""
    st = state(ctx)
    s = db_admin.status(journal_url(st))
    if json_out:
        return print_json(s.to_json())
    st.out.print(
        f"journal {s.where} ({s.backend}): schema version {s.version}, this fleetctl knows {s.known}"
    )
    if s.newer:
        st.out.print("newer than this fleetctl: upgrade fleetctl before using this journal")
    elif s.pending:
        how = "applied on the next open" if s.backend == "sqlite" else "run `fleetctl db upgrade`"
        st.out.print(f"{len(s.pending)} pending migration(s) ({how}):")
        for number, text in s.pending:
            st.out.print(f"  {number}: {text}")
    else:
        st.out.print("up to date")
    return None


@app.command("upgrade")
def upgrade_cmd(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Apply pending migrations (guarded: a second controller upgrading at once waits, then has nothing
    to do). Run it with no run in flight; other controllers refuse the journal until it is done."""
    st = state(ctx)
    before, after = db_admin.upgrade(journal_url(st))
    if json_out:
        return print_json({"from": before, "to": after, "applied": after - before})
    if before == after:
        st.err.print(f"schema version {after}: already up to date")
    else:
        st.err.print(f"schema version {before} -> {after}: {after - before} migration(s) applied")
    return None


@app.command("copy")
def copy_cmd(
    ctx: typer.Context,
    to: Annotated[
        str, typer.Option("--to", help="The empty PostgreSQL journal, e.g. postgresql+psycopg://u@h/db.")
    ],
    json_out: JsonOption = False,
) -> None:
    """Copy this SQLite journal (ledger, history, runs, host states, freezes, quarantine, queue, audit,
    lock, guards, outbox) into an empty PostgreSQL journal; verifies every table's row count."""
    st = state(ctx)
    counts = db_admin.copy(journal_url(st), to)
    if json_out:
        return print_json({"tables": counts, "rows": sum(counts.values())})
    for name, n in counts.items():
        st.out.print(f"{name:16} {n:>8} rows")
    st.err.print(f"copied {sum(counts.values())} rows in {len(counts)} tables; counts verified")
    st.err.print(
        f"point fleet.yml `state:` (or FLEETCTL_DB) at the new journal; keep {journal_url(st)} as a backup"
    )
    return None
