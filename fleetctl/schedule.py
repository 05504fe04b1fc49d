"""Maintenance windows, the queue of scheduled rollouts, and `tick`, which cron or a systemd timer runs.

A run that `tick` starts or resumes is unattended (options["unattended"]): it starts no batch while no
maintenance window is open or past the window's cutoff (it pauses `window closed: ...` and a later tick
resumes it), and it pauses before the first batch of a stage with `unattended: false` until an operator
runs `fleetctl resume`. An operator's resume applies only the freeze checkpoint, so the run goes on.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from fleetctl import control, guard, policy, windows
from fleetctl import rollout as rollouts
from fleetctl.context import FleetContext
from fleetctl.engine import Checkpoint, Engine
from fleetctl.errors import InventoryError, QuarantinedError, UsageError
from fleetctl.plan import Plan, StagePlan
from fleetctl.store.queue import QueueItem
from fleetctl.store.runs import FINISHED, RunRecord

fmt = policy.fmt_instant
RESUMED_BY_TICK = ("window closed", "frozen")  # pause reasons a later tick may continue


@dataclass(frozen=True)
class TickOutcome:
    """What one tick did: action is started | resumed | nothing; message is one line."""

    action: str
    message: str
    run: RunRecord | None = None
    guards: list[guard.RoundOutcome] = field(default_factory=list)  # the guard rounds this tick ran

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "message": self.message,
            "run": self.run.id if self.run else None,
            "status": self.run.status if self.run else None,
            "reason": self.run.status_reason if self.run else None,
            "guards": [g.to_json() for g in self.guards],
        }


def windows_state(ctx: FleetContext, at: datetime | None = None) -> windows.MaintenanceState:
    """May an unattended run start a batch at `at` (default now)? See windows.maintenance_state."""
    return windows.maintenance_state(ctx.config.maintenance.windows, at or ctx.now())


# -- the queue ----------------------------------------------------------------------------------------
def queue_add(
    ctx: FleetContext, version: str, not_before: datetime | str | None = None, pattern: str | None = None
) -> QueueItem:
    """Queue a rollout of `version` (optionally limited to `pattern`) for the next open window."""
    rollouts.valid_version(version)
    if isinstance(not_before, str):
        try:
            not_before = windows.parse_instant(not_before)
        except ValueError as exc:
            raise UsageError(f"--not-before: {exc}", "e.g. --not-before 2026-12-01T01:00:00Z") from None
    if pattern:
        try:
            ctx.fleet.select(pattern, required=True)
        except InventoryError as exc:
            raise UsageError(f"-l {pattern}: {exc.message}", exc.hint) from None
    rollouts.refuse_quarantined(ctx, version)  # exit 3 now, not at every tick of the window
    plan = rollouts.make_plan(ctx, version, pattern)
    if not plan.hosts:
        where = f"matching {pattern} " if pattern else ""
        raise UsageError(
            f"every host {where}already runs {version} (or is skipped): nothing to queue",
            f"see `fleetctl plan {version}`",
        )
    rollouts.require_published(ctx, plan)
    return ctx.store.queue.add(ctx.component, version, pattern=pattern, not_before=not_before, by=ctx.who)


def _sync(ctx: FleetContext) -> None:
    """A started item whose run has ended is done (the run may have been finished by an operator)."""
    for item in ctx.store.queue.list(ctx.component, statuses=("started",)):
        run = ctx.store.runs.get(item.run_id) if item.run_id else None
        if run is not None and run.status in FINISHED:
            ctx.store.queue.set(item.id, status="done")


def queue_list(ctx: FleetContext) -> list[QueueItem]:
    """Queued, started and blocked items, oldest first (a blocked one's reason is in the audit log)."""
    _sync(ctx)
    return ctx.store.queue.list(ctx.component, statuses=("queued", "started", "blocked"))


def queue_remove(ctx: FleetContext, qid: int) -> QueueItem:
    """Take a queued item off the queue (audited). A started one belongs to its run: abort that instead."""
    item = ctx.store.queue.get(qid)
    if item is None or item.component != ctx.component or item.status == "removed":
        raise UsageError(f"no queued rollout with id {qid}", "see `fleetctl schedule list`")
    if item.status not in ("queued", "blocked"):
        raise UsageError(
            f"queue item {qid} already {item.status} run {item.run_id}",
            f"stop the run with `fleetctl abort {item.run_id}`" if item.status == "started" else None,
        )
    ctx.store.queue.set(qid, status="removed")
    ctx.store.audit.record(
        "schedule.remove", item.version, None, ctx.who, {"id": qid, "pattern": item.pattern}
    )
    return item


# -- checkpoints for unattended runs -------------------------------------------------------------------
def window_checkpoint(ctx: FleetContext) -> Checkpoint:
    """Checkpoint: an unattended run starts no batch unless a maintenance window is open (before cutoff)."""

    def check(run: RunRecord, stage: StagePlan, batch_index: int) -> str | None:
        if not run.options.get("unattended"):
            return None
        now = ctx.now()
        state = windows_state(ctx, now)
        if state.open:
            return None
        current = windows.active(ctx.config.maintenance.windows, now)
        if current:
            occ = max(current, key=lambda o: o.cutoff_at)
            return f"window closed: {occ.name} cutoff at {fmt(occ.cutoff_at)}"
        return f"window closed: no maintenance window open (next opens {fmt(state.next_open)})"

    return check


def operator_stage_checkpoint(run: RunRecord, stage: StagePlan, batch_index: int) -> str | None:
    """Checkpoint: an unattended run pauses before the first batch of a stage with `unattended: false`."""
    if run.options.get("unattended") and not stage.unattended and batch_index == 0:
        return f"operator stage: {stage.name} needs `fleetctl resume {run.id}`"
    return None


def unattended_checkpoints(ctx: FleetContext) -> list[Checkpoint]:
    """Everything a tick-driven run honours: freezes, the window and its cutoff, operator stages."""
    return [policy.freeze_checkpoint(ctx), window_checkpoint(ctx), operator_stage_checkpoint]


# -- tick ---------------------------------------------------------------------------------------------
def _closed_message(state: windows.MaintenanceState) -> str:
    upcoming = f"next opens {fmt(state.next_open)}" if state.next_open else "no window opens again"
    if state.window:
        return f"nothing to do: window {state.window} is past its cutoff; {upcoming}"
    return f"nothing to do: window closed; {upcoming}"


def _waiting(ctx: FleetContext) -> tuple[RunRecord | None, RunRecord | None]:
    """(the unattended run tick may continue, a run that waits for an operator); at most one is set.

    Any unfinished run blocks new starts: a rollout paused by hand, at an operator stage, or left
    half rolled back must be settled by an operator before tick starts another one.
    """
    for run in ctx.store.runs.list(limit=5, statuses=("halted", "aborted")):
        if any(h.state == "rolling_back" for h in ctx.store.runs.hosts(run.id)):
            return None, run
    for run in ctx.store.runs.list(limit=20, statuses=("running", "paused", "interrupted")):
        if run.status == "running" and control.holder_alive(ctx, run):
            return None, run
        reason = run.status_reason or ""
        mine = run.options.get("unattended") and (
            run.status != "paused" or reason.startswith(RESUMED_BY_TICK)
        )
        return (run, None) if mine else (None, run)
    return None, None


def _due(ctx: FleetContext, now: datetime) -> tuple[QueueItem | None, QueueItem | None]:
    """(the oldest due queued item, the earliest not yet due)."""
    items = ctx.store.queue.list(ctx.component, statuses=("queued",))
    due = [i for i in items if i.not_before is None or i.not_before <= now]
    later = sorted((i for i in items if i not in due), key=lambda i: i.not_before or now)
    return (due[0] if due else None), (later[0] if later else None)


def _ended(verb: str, run: RunRecord, extra: str = "") -> str:
    why = f": {run.status_reason}" if run.status_reason else ""
    return f"{verb} run {run.id} ({run.kind} {run.target}{extra}): {run.status}{why}"


def tick(ctx: FleetContext, engine_ready: Callable[[Engine], None] | None = None) -> TickOutcome:
    """One scheduler step. First the guards' due rounds (always, windows or not: a guard trip rolls back,
    and rollbacks are never bound by windows or freezes); then, in an open window and without a freeze,
    resume the unattended run a window or freeze stopped (or one that was interrupted), else start the
    oldest due queued rollout."""
    rounds = guard.run_due(ctx, engine_ready)
    return dataclasses.replace(_tick_runs(ctx, engine_ready), guards=rounds)


def _tick_runs(ctx: FleetContext, engine_ready: Callable[[Engine], None] | None) -> TickOutcome:
    now = ctx.now()
    state = windows_state(ctx, now)
    if not state.open:
        return TickOutcome("nothing", _closed_message(state))
    lock = ctx.store.locks.holder(ctx.lock_name)
    if lock and not ctx.store.locks.is_dead(lock):
        return TickOutcome("nothing", f"nothing to do: the fleet lock is held by {lock.describe()}")
    _sync(ctx)
    resumable, blocking = _waiting(ctx)
    if blocking is not None:
        why = f" ({blocking.status_reason})" if blocking.status_reason else ""
        return TickOutcome(
            "nothing",
            f"nothing to do: run {blocking.id} is {blocking.status}{why} and needs an operator",
            blocking,
        )
    checkpoints = unattended_checkpoints(ctx)
    if resumable is not None:
        todo = [h.host for h in ctx.store.runs.hosts(resumable.id) if h.state in ("pending", "updating")]
        causes = policy.covering(ctx, todo, now)
        if causes and not resumable.options.get("override_freeze"):
            return TickOutcome("nothing", f"nothing to do: frozen by {causes[0].describe()}", resumable)
        run = control.resume(ctx, resumable.id, checkpoints=checkpoints, engine_ready=engine_ready)
        _sync(ctx)
        return TickOutcome("resumed", _ended("resumed", run), run)
    while True:  # a blocked item is marked (audited) and skipped: the rest of the queue goes on
        item, later = _due(ctx, now)
        if item is None:
            if later is not None:
                return TickOutcome(
                    "nothing",
                    f"nothing to do: queue item {later.id} is not due before {fmt(later.not_before)}",
                )
            return TickOutcome("nothing", "nothing to do: queue empty")
        plan = rollouts.make_plan(ctx, item.version, item.pattern)
        blocked = _blocked(ctx, plan)
        if blocked is None:
            break
        ctx.store.queue.set(item.id, status="blocked")
        ctx.store.audit.record("schedule.blocked", item.version, blocked, ctx.who, {"id": item.id})
        ctx.emit("message", None, text=f"queue item {item.id} ({item.version}) skipped: {blocked}")
    causes = policy.covering(ctx, plan.hosts, now)
    if causes:
        return TickOutcome("nothing", f"nothing to do: frozen by {causes[0].describe()}")
    if not plan.hosts:
        ctx.store.queue.set(item.id, status="done")
        return TickOutcome(
            "nothing", f"queue item {item.id}: every selected host already runs {item.version}"
        )
    return _start(ctx, item, plan, checkpoints, engine_ready)


def _blocked(ctx: FleetContext, plan: Plan) -> str | None:
    """Why a queued rollout can never start as it is (quarantined, not in the artifact store), or None."""
    assert plan.version
    try:
        rollouts.refuse_quarantined(ctx, plan.version)
        rollouts.require_published(ctx, plan)
    except (QuarantinedError, UsageError) as exc:
        return exc.message
    return None


def _start(
    ctx: FleetContext,
    item: QueueItem,
    plan: Plan,
    checkpoints: list[Checkpoint],
    engine_ready: Callable[[Engine], None] | None,
) -> TickOutcome:
    sink = ctx.events

    def events(event: Any) -> None:  # link the queue item to its run as soon as the run exists
        if event.kind == "run.started" and event.run_id:
            ctx.store.queue.set(item.id, status="started", run_id=event.run_id)
        sink(event)

    ctx.events = events
    try:
        run = rollouts.start(
            ctx,
            plan,
            reason=f"scheduled (queue item {item.id})",
            options={"unattended": True, "queue_id": item.id},
            checks=[policy.refuse_if_frozen],
            checkpoints=checkpoints,
            engine_ready=engine_ready,
        )
    except QuarantinedError as exc:
        raise QuarantinedError(exc.message, f"drop it with `fleetctl schedule remove {item.id}`") from None
    finally:
        ctx.events = sink
    if run is None:
        ctx.store.queue.set(item.id, status="done")
        return TickOutcome("nothing", f"queue item {item.id}: nothing to do")
    _sync(ctx)
    return TickOutcome("started", _ended("started", run, f", queue item {item.id}"), run)


# -- installing the timer -----------------------------------------------------------------------------
def install_units(
    kind: str, fleetctl_path: str | Path, config_path: str | Path, user: str | None = None
) -> str:
    """The text to install so `fleetctl tick` runs every 5 minutes: a systemd service and timer, or a
    crontab line, run as `user` (default: the owner of fleet.yml). Ticks outside a window only print one
    line, so a fixed 5-minute beat is enough. Paths are quoted for the target: systemd's own quoting
    with `%` and `$` doubled, a shell-quoted crontab command with `%` escaped (cron makes a bare `%` a
    newline)."""
    exe, cfg = str(fleetctl_path), str(config_path)
    for what, value in (("fleetctl path", exe), ("config path", cfg)):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise UsageError(
                f"the {what} {value!r} holds a control character and cannot go into a unit or crontab",
                "move fleetctl or fleet.yml to a plain path",
            )
    user = user or owner_of(cfg)
    if kind == "systemd":
        return SYSTEMD.format(exe=_systemd_quote(exe, argument=False), cfg=_systemd_quote(cfg), user=user)
    if kind == "cron":
        bad = next((v for v in (exe, cfg) if "\\" in v), None)
        if bad is not None:  # cron gives `\%` a meaning of its own: no backslash is written safely
            raise UsageError(
                f"the path {bad!r} holds a backslash, which a crontab line cannot carry safely",
                "use --systemd, or a path without backslashes",
            )
        cmd = f"{shlex.quote(exe)} --config {shlex.quote(cfg)} tick 2>&1 | logger -t fleetctl-tick"
        cmd = cmd.replace("%", "\\%")  # cron turns a bare % into a newline (the rest goes to stdin)
        check = f"{shlex.quote(exe)} --config {shlex.quote(cfg)} check >/dev/null 2>&1 && ".replace(
            "%", "\\%"
        )
        return (
            f"# crontab -u {user} -e (the user that owns fleet.yml and its state database)\n"
            f"*/5 * * * * FLEETCTL_OPERATOR=fleetctl-tick {cmd}\n"
            "# or, to tick only when the preflight passes (the guards' rounds then wait for it too):\n"
            f"# */5 * * * * FLEETCTL_OPERATOR=fleetctl-tick {check}{cmd}\n"
        )
    if kind == "guard-watch":
        return GUARD_WATCH.format(exe=_systemd_quote(exe, argument=False), cfg=_systemd_quote(cfg), user=user)
    raise UsageError(f"unknown unit kind {kind!r}", "use --systemd, --cron or --guard-watch")


_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")


def owner_of(path: str | Path) -> str:
    """The user that owns `path` (else the current user), as a name usable in User= and crontab -u;
    a uid when the name is unknown or unusual."""
    try:
        uid = os.stat(path).st_uid
    except OSError:
        uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
    return name if _USER.fullmatch(name) else str(uid)


def _systemd_quote(value: str, *, argument: bool = True) -> str:
    """One word of a systemd command line: specifiers (%) doubled, and in arguments variables ($) too
    (the executable's path is not expanded), then quoted with C-style escapes when it holds anything
    systemd would split or interpret."""
    value = value.replace("%", "%%")
    if argument:
        value = value.replace("$", "$$")
    if not value or any(c in value for c in " \t\"'\\;"):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


SYSTEMD = """\
# /etc/systemd/system/fleetctl-tick.service
[Unit]
Description=fleetctl tick: run scheduled host-controller rollouts inside maintenance windows
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
# the user that owns fleet.yml and its state database
User={user}
Environment=FLEETCTL_OPERATOR=fleetctl-tick
# The preflight first (uncomment): a failed check (unreachable hosts, a missing artifact, ...) then skips
# the tick and shows in `systemctl status`; the guards' rounds wait for the next passing check too.
#ExecStartPre={exe} --config {cfg} check
ExecStart={exe} --config {cfg} tick
# A rollout can outlast the 5-minute beat; the timer does not start a second tick meanwhile.
TimeoutStartSec=infinity

# /etc/systemd/system/fleetctl-tick.timer
[Unit]
Description=Run fleetctl tick every 5 minutes

[Timer]
OnCalendar=*:0/5
AccuracySec=30s
Persistent=false

[Install]
WantedBy=timers.target

# then: systemctl daemon-reload && systemctl enable --now fleetctl-tick.timer
"""

GUARD_WATCH = """\
# /etc/systemd/system/fleetctl-guard.service
# The guard's rounds as a service, for those who prefer it to `tick` (both may run: a round is due once).
[Unit]
Description=fleetctl guard watch: probe the hosts of recent rollouts, roll back a build that fails late
After=network-online.target
Wants=network-online.target

[Service]
# the user that owns fleet.yml and its state database
User={user}
Environment=FLEETCTL_OPERATOR=fleetctl-guard
ExecStart={exe} --config {cfg} guard watch
Restart=always
RestartSec=10s

[Install]
WantedBy=multi-user.target

# then: systemctl daemon-reload && systemctl enable --now fleetctl-guard.service
"""
