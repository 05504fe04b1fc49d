"""`hosts`, `versions`, `history`: what the fleet runs, from the ledger and from the nodes."""

from __future__ import annotations

from typing import Annotated

import typer

from fleetctl import census
from fleetctl.cli.output import print_json, state, table, when
from fleetctl.errors import UsageError

LimitOption = Annotated[
    str | None, typer.Option("--limit", "-l", help="Ansible host pattern, e.g. ring1:&zone_a.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")]


def register(app: typer.Typer) -> None:
    app.command("hosts")(hosts)
    app.command("versions")(versions)
    app.command("history")(history)


def hosts(ctx: typer.Context, limit: LimitOption = None, json_out: JsonOption = False) -> None:
    """List hosts with their groups, zone, recorded version and last change."""
    st = state(ctx)
    rows = census.hosts(st.ctx, limit)
    if json_out:
        return print_json({"hosts": [r.to_json() for r in rows]})
    t = table("HOST", "GROUPS", "ZONE", "VERSION", "SOURCE", "CHANGED")
    for r in rows:
        e = r.entry
        t.add_row(
            r.host,
            ",".join(r.groups),
            r.zone or "-",
            (e.version if e else None) or "unknown",
            e.source if e else "-",
            when(e.changed_at if e else None),
        )
    st.out.print(t)


def versions(
    ctx: typer.Context,
    limit: LimitOption = None,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Ask the nodes (facts.yml) and record what they report.")
    ] = False,
    via: Annotated[
        str,
        typer.Option(
            "--via", help="With --refresh: ansible (facts.yml) or ssh (fleetctl's paramiko client)."
        ),
    ] = "ansible",
    json_out: JsonOption = False,
) -> None:
    """Version census and per-host versions. --refresh asks the nodes first; a version changed outside
    fleetctl is recorded with source `observed`."""
    st = state(ctx)
    unreachable: dict[str, str] = {}
    if refresh:
        if via not in ("ansible", "ssh"):
            raise UsageError(f"--via must be ansible or ssh, not {via!r}", "e.g. --via ssh")
        report = census.refresh(st.ctx, limit, via=via)
        unreachable = report.unreachable
        if not json_out:
            st.err.print(
                f"refreshed: {len(report.changes)} change(s) recorded, {len(unreachable)} unreachable"
            )
    rows = census.hosts(st.ctx, limit)
    counts = census.census(rows)
    if json_out:
        doc = {
            "hosts": [
                {k: r.to_json()[k] for k in ("host", "version", "source", "at", "changed_at")} for r in rows
            ],
            "counts": counts,
        }
        if refresh:
            doc["unreachable"] = [{"host": h, "error": e} for h, e in unreachable.items()]
        print_json(doc)
        raise typer.Exit(1 if unreachable else 0)
    summary = table("VERSION", "HOSTS")
    for v, n in counts.items():
        summary.add_row(v, str(n))
    st.out.print(summary)
    st.out.print()
    t = table("HOST", "VERSION", "SOURCE", "CHANGED")
    for r in rows:
        e = r.entry
        t.add_row(
            r.host,
            (e.version if e else None) or "unknown",
            e.source if e else "-",
            when(e.changed_at if e else None),
        )
    st.out.print(t)
    for h, err in unreachable.items():
        st.err.print(f"unreachable: {h}: {err}")
    if unreachable:
        raise typer.Exit(1)


def history(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Argument(help="Only this host's changes.")] = None,
    limit: Annotated[int, typer.Option("--last", "-n", help="Show at most this many changes.")] = 200,
    json_out: JsonOption = False,
) -> None:
    """Version changes, newest first: from, to, run, operator, time and source."""
    st = state(ctx)
    changes = census.history(st.ctx, host, limit)
    if json_out:
        return print_json({"changes": [c.to_json() for c in changes]})
    t = table("AT", "HOST", "FROM", "TO", "RUN", "OPERATOR", "SOURCE")
    for c in changes:
        t.add_row(
            when(c.at),
            c.host,
            c.from_version or "-",
            c.to_version or "-",
            c.run_id or "-",
            c.operator or "-",
            c.source,
        )
    st.out.print(t)
