"""Executes a Plan batch by batch: checkpoint, journal, executor, journal, health gate, budgets.

Every host state is written before and after each step, so `resume` after a crash re-checks the hosts
left `updating` (facts.yml) and carries on: no host updated twice, none forgotten. On a halt with
`on_failure: rollback` the engine runs a revert plan over every host the run touched and quarantines
the version. The engine never prints; it emits events through the context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from fleetctl import guard
from fleetctl.context import FleetContext
from fleetctl.errors import FleetError, Interrupted
from fleetctl.executor import Executor, HostResult
from fleetctl.health import Prober, bake
from fleetctl.plan import Plan, StagePlan
from fleetctl.revert import Reverter, record_report, run_revert_batch
from fleetctl.store.runs import ACTIVE, RunHost, RunRecord
from fleetctl.watch import Watch

IN_FLIGHT = ("updating", "rolling_back")  # a crash leaves hosts here: nobody knows what they run

# A checkpoint looks at the run before a batch starts and returns a reason to pause, or None.
Checkpoint = Callable[[RunRecord, StagePlan, int], str | None]


@dataclass
class _Counters:
    run_failed: int
    stage_failed: dict[str, int]


class Engine(Reverter):
    def __init__(self, ctx: FleetContext, checkpoints: list[Checkpoint] | None = None) -> None:
        self.ctx = ctx
        self.store = ctx.store
        self.checkpoints = checkpoints or []
        self.watch: Watch | None = None

    # -- entry -----------------------------------------------------------------------------------
    def execute(self, run_id: str, token: str) -> RunRecord:
        """Run (or continue) `run_id` while holding the fleet lock `token`. Returns the final record."""
        run = self._run(run_id)
        plan = Plan.from_json(run.plan or {})
        executor = self.ctx.executor().track(self.store.locks.groups, run_id)
        with Watch(self.ctx, run_id, token) as watch:
            self.watch = watch
            try:
                self._reconcile(run, executor)
                if plan.kind == "rollback":
                    self._forward(run, plan, executor)
                elif run.status in ("halted", "aborted") or any(
                    h.state == "rolling_back" for h in self.store.runs.hosts(run_id)
                ):
                    aborted = run.status == "aborted"
                    self.revert(run, plan, run.status_reason or "halted", executor, aborted=aborted)
                else:
                    self._forward(run, plan, executor)
            except KeyboardInterrupt:
                watch.interrupt()
                self._interrupted(run_id)
            except Exception as exc:
                # Leave the run resumable, with the cause in the journal, then let the error surface.
                self.store.runs.update(
                    run_id, status="interrupted", status_reason=f"internal error: {exc}"[:500]
                )
                raise
            finally:
                self.watch = None
        if watch.interrupted:
            self._interrupted(run_id)
        return self._run(run_id)

    def interrupt(self) -> None:
        """Called from a signal handler: cancel Ansible now; the run ends `interrupted`."""
        if self.watch:
            self.watch.interrupt()

    # -- forward ---------------------------------------------------------------------------------
    def _forward(self, run: RunRecord, plan: Plan, executor: Executor) -> None:
        states = self._states(run.id)
        counters = _Counters(
            run_failed=sum(1 for h in states.values() if h.state == "failed"),
            stage_failed={
                s.name: sum(1 for h in s.hosts if states[h].state == "failed") for s in plan.stages
            },
        )
        prober = self.ctx.prober(executor)
        forks = int(run.options.get("forks") or plan.forks)
        self.store.runs.update(run.id, status="running", status_reason=None)  # keep a pause asked for already
        for stage in plan.stages:
            for index, batch in enumerate(stage.batches):
                states = self._states(run.id)
                todo = [h for h in batch if states[h].state == "pending"]
                verifying = [h for h in batch if states[h].state == "verifying"]
                if not todo and not verifying:
                    continue
                if todo:
                    pause = self._checkpoint(run.id, stage, index)
                    if pause:
                        self.store.runs.update(run.id, status="paused", status_reason=pause, control=None)
                        self.ctx.emit("run.paused", run.id, reason=pause, stage=stage.name, batch=index + 1)
                        return
                    self.store.runs.update(run.id, stage=stage.name, batch=index + 1)
                    if index == 0:
                        self.ctx.emit(
                            "stage.started",
                            run.id,
                            stage=stage.name,
                            hosts=len(stage.hosts),
                            batches=len(stage.batches),
                            bake=stage.bake,
                        )
                    if plan.kind == "rollback":
                        self.store.runs.set_hosts(run.id, todo, "rolling_back")
                        run_revert_batch(self.ctx, run, plan, todo, executor, self.watch, forks)
                    else:
                        self._update_batch(
                            run, plan, stage, index, todo, executor, forks, counters, bool(prober.probes)
                        )
                    if self._cancelled(run, plan, executor):
                        return
                    reason = self._over_budget(plan, stage, counters)
                    if reason:
                        return self._halt(run, plan, executor, reason)
                if plan.kind == "rollout" and not self._gate(run, plan, stage, executor, prober, counters):
                    return
        if plan.kind == "rollback":
            return self.verify_rollback(run, prober)
        self._finish(run.id, "succeeded")

    def _update_batch(
        self,
        run: RunRecord,
        plan: Plan,
        stage: StagePlan,
        index: int,
        hosts: list[str],
        executor: Executor,
        forks: int,
        counters: _Counters,
        probes: bool,
    ) -> None:
        runs = self.store.runs
        runs.set_hosts(run.id, hosts, "updating")
        self.ctx.emit(
            "batch.started", run.id, stage=stage.name, batch=index + 1, of=len(stage.batches), hosts=hosts
        )

        def record(result: HostResult) -> None:
            target = plan.targets[result.host]
            values = {"from_version": result.previous} if result.previous else {}
            record_report(self.ctx, plan, run, result)
            if result.status == "cancelled":
                return  # left `updating`: resume or the abort path re-checks it with facts
            if result.ok and result.version == target:
                runs.set_host(run.id, result.host, state="verifying" if probes else "done", **values)
            else:
                error = result.error or f"reports {result.version} after the update, expected {target}"
                runs.set_host(run.id, result.host, state="failed", error=error, **values)
                self._count_failure(plan, result.host, counters)
            self.ctx.emit("host.result", run.id, stage=stage.name, batch=index + 1, **result.to_json())

        executor.run(
            "update.yml",
            hosts,
            forks=forks,
            extravars={"hc_version": plan.version},
            on_result=record,
            cancel=self.watch.cancel if self.watch else None,
            ident=f"{run.id}-u{index}",
        )
        self.ctx.emit("batch.finished", run.id, stage=stage.name, batch=index + 1, counts=runs.counts(run.id))

    def _gate(
        self,
        run: RunRecord,
        plan: Plan,
        stage: StagePlan,
        executor: Executor,
        prober: Prober,
        counters: _Counters,
    ) -> bool:
        """Bake: probe every host this run has updated so far. False when the run stopped (halt/cancel)."""
        runs = self.store.runs
        states = self._states(run.id)
        watched = [h for h in plan.hosts if states[h].state in ("verifying", "done")]
        if not watched:
            return True
        halt: list[str] = []
        if prober.probes:
            self.ctx.emit("bake.started", run.id, stage=stage.name, seconds=stage.bake, hosts=len(watched))

            def failed(host: str, error: str) -> bool:
                runs.set_host(run.id, host, state="failed", error=f"health gate: {error}")
                self._count_failure(plan, host, counters)
                self.ctx.emit("host.failed", run.id, host=host, error=error, stage=plan.stage_of(host).name)
                reason = self._over_budget(plan, plan.stage_of(host), counters)
                if reason:
                    halt.append(reason)
                return bool(reason)

            outcome = bake(
                prober,
                watched,
                duration=stage.bake,
                config=self.ctx.config.health,
                stop=self.watch.cancel if self.watch else threading.Event(),
                on_failure=failed,
                on_tick=lambda left, n: self.ctx.emit(
                    "bake.tick", run.id, stage=stage.name, remaining=round(left, 1), failed=n
                ),
            )
            for host, (last, worst) in outcome.latency.items():
                runs.set_host(run.id, host, probe_ms=last, probe_max_ms=worst)
            if halt:
                self._halt(run, plan, executor, halt[0])
                return False
            if self._cancelled(run, plan, executor):
                return False
        states = self._states(run.id)
        runs.set_hosts(run.id, [h for h in stage.hosts if states[h].state == "verifying"], "done")
        self.ctx.emit("gate.passed", run.id, stage=stage.name, hosts=len(watched))
        return True

    # -- budgets, checkpoints, stops ----------------------------------------------------------------
    def _count_failure(self, plan: Plan, host: str, counters: _Counters) -> None:
        counters.run_failed += 1
        name = plan.stage_of(host).name
        counters.stage_failed[name] = counters.stage_failed.get(name, 0) + 1

    @staticmethod
    def _over_budget(plan: Plan, stage: StagePlan, counters: _Counters) -> str | None:
        failed = counters.stage_failed.get(stage.name, 0)
        if stage.max_failures is not None and failed > stage.max_failures:
            return f"stage {stage.name}: {failed} failed host(s), budget {stage.max_failures}"
        if counters.run_failed > plan.max_failures:
            return f"run: {counters.run_failed} failed host(s), budget {plan.max_failures}"
        return None

    def _checkpoint(self, run_id: str, stage: StagePlan, index: int) -> str | None:
        run = self._run(run_id)
        if run.control == "pause":
            return "paused by request"
        for check in self.checkpoints:
            reason = check(run, stage, index)
            if reason:
                return reason
        return None

    def _cancelled(self, run: RunRecord, plan: Plan, executor: Executor) -> bool:
        watch = self.watch
        if not watch or not watch.cancel.is_set():
            return False
        if watch.interrupted or watch.lost_lock:
            return True
        if watch.preempted:
            self._finish(run.id, "aborted", "preempted by a rollback")
            return True
        self._halt(run, plan, executor, "aborted by request", status="aborted")
        return True

    def _halt(
        self, run: RunRecord, plan: Plan, executor: Executor, reason: str, status: str = "halted"
    ) -> None:
        self.store.runs.update(run.id, status=status, status_reason=reason, control=None)
        self.ctx.emit("run.halted", run.id, reason=reason, on_failure=plan.on_failure)
        if plan.kind == "rollout" and plan.on_failure == "rollback":
            self.revert(run, plan, reason, executor, aborted=status == "aborted")
        elif status == "aborted":
            self._finish(run.id, "aborted", reason)

    # -- resume support ------------------------------------------------------------------------------
    @staticmethod
    def settle_dead_runs(ctx: FleetContext) -> None:
        """Before anything is planned from the journal (a rollback): end the Ansible that dead fleetctl
        processes left on this machine, and ask the hosts a run without a live process left in flight
        what they run, so the plan starts from what the nodes run, not from what the journal last saw."""
        store = ctx.store
        store.locks.groups.reap(notice=lambda text: ctx.emit("message", None, text=text))
        lock = store.locks.holder(ctx.lock_name)
        live = lock.run_id if lock and not store.locks.is_dead(lock) else None
        for run in store.runs.list(limit=20, statuses=ACTIVE + ("halted", "aborted")):
            if run.id != live and any(h.state in IN_FLIGHT for h in store.runs.hosts(run.id)):
                engine = Engine(ctx)
                engine._reconcile(run, ctx.executor().track(store.locks.groups), announce=False)

    def _reconcile(self, run: RunRecord, executor: Executor, announce: bool = True) -> None:
        """Hosts left `updating` by a crash: ask them (facts.yml) what they run and place them again.
        (Any Ansible the dead process left was ended when the lock was taken: see store.locks.)"""
        states = self._states(run.id)
        plan = Plan.from_json(run.plan or {})
        in_flight = ("updating", "rolling_back") if plan.kind == "rollback" else ("updating",)
        unsure = [h for h, s in states.items() if s.state in in_flight]
        if not unsure:
            return
        facts = executor.run("facts.yml", unsure, forks=50, ident=f"{run.id}-facts")
        reports = {h: r.version for h, r in facts.results.items() if r.ok}
        if reports:
            # What a node answers here is an observation, not a change this run is known to have made.
            self.store.ledger.record(
                plan.component, reports, source="observed", run_id=None, operator=run.operator
            )
        for host in unsure:
            result = facts.results.get(host)
            if result and result.ok and result.version == plan.targets.get(host):
                self.store.runs.set_host(
                    run.id, host, state="rolled_back" if plan.kind == "rollback" else "verifying"
                )
            elif result and result.ok:
                self.store.runs.set_host(run.id, host, state="pending")
        if announce:
            self.ctx.emit("run.resumed", run.id, rechecked=len(unsure))

    def _interrupted(self, run_id: str) -> None:
        run = self._run(run_id)
        if run.status not in ("succeeded", "failed", "rolled_back", "aborted"):
            self.store.runs.update(run_id, status="interrupted", status_reason="interrupted by the operator")
        raise Interrupted(
            f"run {run_id} interrupted; the journal says where it stopped",
            f"continue with `fleetctl resume {run_id}`",
        )

    def _finish(self, run_id: str, status: str, reason: str | None = None) -> None:
        if status != "succeeded":  # hosts the run never reached will not be reached by it
            pending = [h for h, s in self._states(run_id).items() if s.state == "pending"]
            self.store.runs.set_hosts(run_id, pending, "skipped")
        self.store.runs.update(run_id, status=status, status_reason=reason, control=None)
        self.ctx.emit("run.finished", run_id, status=status, reason=reason)
        run = self._run(run_id)
        if status == "succeeded" and run.kind == "rollout":  # the rollout is not over: guard its hosts
            try:  # the run has succeeded whatever happens here; a missed guard is adopted by the next tick
                guard.begin(self.ctx, run, [h for h, s in self._states(run_id).items() if s.state == "done"])
            except FleetError as exc:
                self.ctx.emit("message", run_id, text=f"the guard could not start yet: {exc.message}")

    def _states(self, run_id: str) -> dict[str, RunHost]:
        return {h.host: h for h in self.store.runs.hosts(run_id)}

    def _run(self, run_id: str) -> RunRecord:
        run = self.store.runs.get(run_id)
        assert run is not None, run_id
        return run


def open_run(
    ctx: FleetContext,
    plan: Plan,
    token: str,
    *,
    reason: str | None,
    options: dict,
    reverts: str | None = None,
) -> RunRecord:
    """Journal a new run of `plan` with every host pending, bind the fleet lock to it, announce it."""
    store = ctx.store
    hosts = [
        (h, s.name, i + 1, plan.from_versions.get(h), plan.targets[h])
        for s in plan.stages
        for i, b in enumerate(s.batches)
        for h in b
    ]
    run = store.runs.create(
        kind=plan.kind,
        component=plan.component,
        target=plan.version,
        operator=ctx.who,
        reason=reason,
        plan=plan.to_json(),
        fingerprint=plan.fingerprint,
        options=options,
        hosts=hosts,
        reverts=reverts,
    )
    store.locks.heartbeat(ctx.lock_name, token, run.id)
    store.guards.release(plan.hosts, run.id)  # hosts this run moves leave an earlier run's guard
    ctx.emit(
        "run.started",
        run.id,
        kind=plan.kind,
        version=plan.version,
        hosts=len(plan.hosts),
        stages=[s.name for s in plan.stages],
        fingerprint=plan.fingerprint,
        reverts=reverts,
    )
    return run
