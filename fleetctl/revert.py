"""The revert side of the engine: a halted rollout's hosts back to their from-versions (then the
version is quarantined), rollback runs' batches, and the single health check at a rollback's end.
Wide and without bakes; hosts already at their target are skipped."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fleetctl.context import FleetContext
from fleetctl.executor import Executor, HostResult
from fleetctl.health import Prober, bake
from fleetctl.plan import Plan, revert_plan
from fleetctl.store.runs import RunHost, RunRecord
from fleetctl.units import BadNodeVersion, is_plain_version, node_version, shown
from fleetctl.watch import Watch

if TYPE_CHECKING:
    from collections.abc import Callable

    from fleetctl.store import Store


def record_report(ctx: FleetContext, plan: Plan, run: RunRecord, result: HostResult) -> None:
    """The ledger records what a node reports it runs, whatever fleetctl intended. A report that is
    not a plain version is recorded as unknown (the host's result says why it failed)."""
    if result.version is not None:
        try:
            version: str | None = node_version(result.version)
        except BadNodeVersion:
            version = None
        ctx.store.ledger.record(
            plan.component,
            {result.host: version},
            source="fleetctl",
            run_id=run.id,
            operator=run.operator,
        )


def reported(result: HostResult) -> str:
    """A node's reported version for an error message: escaped, never trusted."""
    return shown(result.version) if result.version is not None else "no version"


TOUCHED = ("updating", "verifying", "done", "failed", "rolling_back")
GATE = "health gate: "  # how the engine prefixes the error of a host that failed its health gate


def ran_the_version(hosts: Iterable[RunHost]) -> bool:
    """Did any host of the run run its version: updated (verifying, done), failed its health gate,
    or was caught mid-rollback by a crash (not known otherwise: counted as having run it)."""
    return any(
        h.state in ("verifying", "done", "rolling_back")
        or (h.state == "failed" and (h.error or "").startswith(GATE))
        for h in hosts
    )


def failure_cause(hosts: Iterable[RunHost]) -> str | None:
    """`node-001 failed its health gate: <error>` for the first failed host (and how many more)."""
    failed = [h for h in hosts if h.state == "failed" and h.error]
    if not failed:
        return None
    first = failed[0]
    error = first.error or ""
    what = (
        f"{first.host} failed its health gate: {error[len(GATE) :]}"
        if error.startswith(GATE)
        else f"{first.host} failed: {error}"
    )
    return what + (f" (and {len(failed) - 1} more host(s))" if len(failed) > 1 else "")


def restores(targets: dict[str, str]) -> str | None:
    """What a revert restores, in words: `1.0.0`, or `1.0.0 on 2 host(s), 1.1.0 on 1 host(s)`."""
    counts = Counter(targets.values())
    if not counts:
        return None
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{v} on {n} host(s)" for v, n in sorted(counts.items()))


class Reverter:
    """Mixed into the Engine: needs ctx, store, watch, _states() and _finish()."""

    ctx: FleetContext
    watch: Watch | None

    if TYPE_CHECKING:
        store: Store
        _states: Callable[[str], dict[str, RunHost]]
        _finish: Callable[..., None]

    def revert(
        self, run: RunRecord, plan: Plan, reason: str, executor: Executor | None = None, aborted: bool = False
    ) -> None:
        """Every host the run touched goes back to its from-version, wide and without bakes. A version
        that failed is quarantined; one an operator aborted is not."""
        executor = executor or self.ctx.executor()
        if self.watch:
            self.watch.cancel.clear()
        states = self._states(run.id)
        ran = ran_the_version(states.values())
        cause = failure_cause(states.values())
        touched = {h: s.from_version for h, s in states.items() if s.state in TOUCHED}
        bad = {h: v for h, v in touched.items() if v and not is_plain_version(v)}
        for host, was in sorted(bad.items()):  # never handed to a playbook: a human must look
            error = f"not rolled back: its from-version {shown(was)} is not a plain version"
            self.store.runs.set_host(run.id, host, state="failed", error=error)
            self.ctx.emit("host.failed", run.id, host=host, error=error, stage="rollback")
        targets = {h: v for h, v in touched.items() if v and h not in bad}
        unknown = self._unchanged_dropped(run, plan, sorted(h for h, v in touched.items() if not v), executor)
        unknown += sorted(bad)
        self.store.runs.set_hosts(run.id, list(targets), "rolling_back")
        versions = self.store.ledger.versions(plan.component)
        revert = revert_plan(
            self.ctx.fleet, self.ctx.config.rollback, versions, targets, component=plan.component
        )
        self.ctx.emit(
            "rollback.started", run.id, hosts=len(revert.hosts), reason=reason, to=restores(revert.targets)
        )
        done = set(targets) - set(revert.hosts)
        for batch in (b for s in revert.stages for b in s.batches):
            results = run_revert_batch(self.ctx, run, revert, batch, executor, self.watch)
            done.update(h for h, r in results.items() if r.ok and r.version == targets[h])
            if self.watch and self.watch.cancel.is_set():
                return
        self.store.runs.set_hosts(run.id, sorted(done), "rolled_back")
        if plan.kind == "rollout" and plan.version and not aborted and ran:
            # A version no node ever ran (a download that failed, a typo) says nothing about itself.
            why = f"{reason}; {cause}" if cause else reason
            self.store.quarantine.add(
                plan.component, plan.version, reason=why[:500], run_id=run.id, by=run.operator
            )
        left = sorted(set(targets) - done) + unknown
        status = ("aborted" if aborted else "rolled_back") if not left else "failed"
        note = reason if not left else f"{reason}; rollback incomplete on {len(left)} host(s), e.g. {left[0]}"
        self._finish(run.id, status, note)

    def _unchanged_dropped(
        self, run: RunRecord, plan: Plan, hosts: list[str], executor: Executor
    ) -> list[str]:
        """Of hosts whose from-version nobody recorded (they failed before reporting), keep those that may
        have changed: ask them, and drop the ones that do not run the run's target."""
        if not hosts:
            return []
        facts = executor.run("facts.yml", hosts, forks=50, ident=f"{run.id}-facts")
        reports = {h: r.version for h, r in facts.results.items() if r.ok}
        self.store.ledger.record(
            plan.component, reports, source="fleetctl", run_id=run.id, operator=run.operator
        )
        return [h for h in hosts if h not in reports or reports[h] == plan.targets.get(h)]

    def verify_rollback(self, run: RunRecord, prober: Prober) -> None:
        """A rollback checks health once, at the end, over every host it rolled back."""
        rolled = [h for h, s in self._states(run.id).items() if s.state == "rolled_back"]
        if prober.probes and rolled:
            self.ctx.emit("bake.started", run.id, stage="rollback", seconds=0, hosts=len(rolled))
            stop = self.watch.cancel if self.watch else threading.Event()
            outcome = bake(prober, rolled, duration=0, config=self.ctx.config.health, stop=stop)
            for host, error in outcome.failed.items():
                self.store.runs.set_host(
                    run.id, host, state="failed", error=f"health after rollback: {error}"
                )
                self.ctx.emit("host.failed", run.id, host=host, error=error, stage="rollback")
            for host, (last, worst) in outcome.latency.items():
                self.store.runs.set_host(run.id, host, probe_ms=last, probe_max_ms=worst)
            if outcome.stopped and self.watch and self.watch.interrupted:
                return
        failed = sum(1 for s in self._states(run.id).values() if s.state == "failed")
        if failed:
            self._finish(
                run.id, "failed", f"{failed} host(s) failed; retry: fleetctl rollback --retry-failed"
            )
        else:
            self._finish(run.id, "succeeded")


def run_revert_batch(
    ctx: FleetContext,
    run: RunRecord,
    plan: Plan,
    batch: list[str],
    executor: Executor,
    watch: Watch | None,
    forks: int | None = None,
) -> dict[str, HostResult]:
    """One batch of a revert: rollback.yml with each host's own target; journal and ledger per host."""
    runs = ctx.store.runs

    def record(result: HostResult) -> None:
        record_report(ctx, plan, run, result)
        if result.status == "cancelled":
            return
        target = plan.targets[result.host]
        if result.ok and result.version == target:
            runs.set_host(run.id, result.host, state="rolled_back")
        else:
            runs.set_host(
                run.id,
                result.host,
                state="failed",
                error=f"rollback: {result.error or f'reports {reported(result)}, expected {target}'}",
            )
        ctx.emit("host.result", run.id, stage="rollback", kind="rollback", **result.to_json())

    results = executor.run(
        "rollback.yml",
        batch,
        forks=forks or plan.forks,
        extravars={"fleetctl_targets": {h: plan.targets[h] for h in batch}},
        on_result=record,
        cancel=watch.cancel if watch else None,
        ident=f"{run.id}-rb",
    )
    return results.results
