"""A run's end, for every command that runs one (rollout, resume, abort, rollback, tick): the summary
(text and JSON: each failed host with its error, also those rolled back later, and what was quarantined),
the advice for a paused run, and the exit code (docs/json.md)."""

from __future__ import annotations

from typing import Any

import typer

from fleetctl import control, policy, revert
from fleetctl import rollback as rollbacks
from fleetctl.cli.output import CliState, print_json
from fleetctl.errors import ExitCode
from fleetctl.store.controls import QuarantineEntry
from fleetctl.store.runs import RunRecord

FROZEN = "frozen"


def restored_by(st: CliState, run_id: str) -> str | None:
    """What a rollback run restores, from its journaled plan (for the progress line)."""
    run = st.ctx.store.runs.get(run_id)
    targets = (run.plan or {}).get("targets") if run else None
    return revert.restores(targets) if isinstance(targets, dict) else None


def summary(
    run: RunRecord | None,
    kind: str,
    status: str,
    hosts: list[Any] | None = None,
    quarantined: QuarantineEntry | None = None,
) -> dict[str, Any]:
    """A run's end in JSON: `failed` lists every host that failed with its error, also those a rollback
    brought back later; `quarantined` the quarantine entry the run made (null when none)."""
    hosts = hosts or []
    ok_states = ("done", "rolled_back") if kind == "rollback" else ("done",)
    return {
        "run": run.id if run else None,
        "kind": kind,
        "status": status,
        "version": run.target if run else None,
        "succeeded": [h.host for h in hosts if h.state in ok_states],
        "failed": control.failed_hosts(hosts) if kind == "rollout" else _failed(hosts),
        "rolled_back": [h.host for h in hosts if h.state == "rolled_back"] if kind == "rollout" else [],
        "quarantined": quarantined.to_json() if quarantined else None,
        "reason": run.status_reason if run else None,
    }


def _failed(hosts: list[Any]) -> list[dict[str, Any]]:
    return [{"host": h.host, "error": h.error, "state": h.state} for h in hosts if h.state == "failed"]


def exit_code(run: RunRecord) -> int:
    """0 finished, 1 failed, 3 paused by a freeze, 5 stopped unfinished (paused by an operator, a closed
    window or an operator stage), 130 interrupted."""
    if run.status == "succeeded":
        return ExitCode.OK
    if run.status == "interrupted":
        return ExitCode.INTERRUPTED
    if run.status == "paused":
        return ExitCode.BLOCKED if (run.status_reason or "").startswith(FROZEN) else ExitCode.STOPPED
    return ExitCode.FAILED


def finish(st: CliState, run: RunRecord | None, json_out: bool) -> None:
    """The run's end: a summary on stderr (JSON with --json; a rollback's also lists its `moves`, one per
    host: host, from, to, direction back|forward, why), and its exit code."""
    if run is None:
        return
    hosts = st.ctx.store.runs.hosts(run.id)
    doc = summary(run, run.kind, run.status, hosts, control.quarantined_by(st.ctx, run))
    if run.kind == "rollback":
        doc["moves"] = [m.to_json() for m in rollbacks.moves_of(run)]
    if json_out:
        print_json(doc)
    else:
        for line in summary_lines(run, doc):
            st.err.print(line)
        if run.status == "paused":
            st.err.print(f"  {paused_advice(st, run)}")
    code = exit_code(run)
    if code:
        raise typer.Exit(int(code))


def summary_lines(run: RunRecord, doc: dict[str, Any]) -> list[str]:
    """The text summary: counts where a host that failed counts as failed even after its rollback, each
    failed host with its error, and what was quarantined."""
    lines = [f"run {run.id} {run.status}" + (f": {run.status_reason}" if run.status_reason else "")]
    failed = doc["failed"]
    back = sum(1 for f in failed if f["state"] == "rolled_back")
    then = f" ({back} of them rolled back)" if back else ""
    also = len(doc["rolled_back"]) - back
    rolled = f", {also} more rolled back" if also > 0 else ""
    lines.append(f"  {len(doc['succeeded'])} host(s) ok, {len(failed)} failed{then}{rolled}")
    for f in failed[:20]:
        lines.append(
            f"  ✗ {f['host']}: {f['error']}" + (" (rolled back)" if f["state"] == "rolled_back" else "")
        )
    if len(failed) > 20:
        lines.append(f"  ... and {len(failed) - 20} more failed host(s): `fleetctl status {run.id}`")
    q = doc.get("quarantined")
    if q:
        lines.append(
            f"  version {q['version']} quarantined: {q['reason']} "
            f"(`fleetctl quarantine clear {q['version']} --reason TEXT` once the fault is understood)"
        )
    return lines


def paused_advice(st: CliState, run: RunRecord) -> str:
    """How to go on from a pause: for a freeze, which freeze, its end and how to lift it."""
    if (run.status_reason or "").startswith(FROZEN):
        causes = policy.covering(
            st.ctx, [h.host for h in st.ctx.store.runs.hosts(run.id) if h.state == "pending"]
        )
        if causes:
            what = "; ".join(c.describe() for c in causes)
            return (
                f"the fleet is frozen ({what}); `fleetctl resume {run.id}` once the freeze ends, "
                "or lift it with `fleetctl freeze off --reason TEXT`"
            )
    return f"continue with `fleetctl resume {run.id}`"
