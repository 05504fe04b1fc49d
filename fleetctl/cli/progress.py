"""Rendering engine events: a live rich display on a terminal, JSON lines with --json, and plain
journald-friendly lines otherwise (no colours, no bars). Every event kind the library emits has a
sentence in SENTENCES (tests/test_words.py fails when a new kind has none); an event is never shown as
its kind and a JSON dict."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from fleetctl.cli.output import console, styled
from fleetctl.events import Event
from fleetctl.units import format_duration

# Kinds a plain (non-terminal) stream leaves out: per-second ticks and routine per-host noise.
PLAIN_SILENT = {"bake.tick", "batch.started", "guard.round"}

# What a rollback restores, for a run id: "1.0.0" or "1.0.0 on 2 host(s), 1.1.0 on 1 host(s)".
Restores = Callable[[str], str | None]
# A run's remaining seconds from the journal, by the one ETA model (fleetctl.control.remaining_seconds).
Eta = Callable[[str], float | None]
ETA_AFTER = {"host.result", "batch.finished", "gate.passed", "bake.started", "run.resumed"}


def _n(count: object, what: str, plural: str | None = None) -> str:
    n = int(count or 0)  # type: ignore[call-overload]
    return f"{n} {what}" if n == 1 else f"{n} {plural or what + 's'}"


def _hosts(count: object) -> str:
    return _n(count, "host")


def _counts(counts: dict[str, int]) -> str:
    order = ("done", "verifying", "failed", "rolled_back", "updating", "rolling_back", "pending", "skipped")
    words = {
        "done": "done",
        "verifying": "verifying",
        "rolled_back": "rolled back",
        "rolling_back": "rolling back",
    }
    parts = [f"{counts[k]} {words.get(k, k)}" for k in order if counts.get(k)]
    parts += [f"{v} {k}" for k, v in counts.items() if k not in order and v]
    return ", ".join(parts) or "no hosts"


def _version(d: dict[str, Any]) -> str:
    return str(d.get("version") or "")


def _run_started(e: Event, restores: Restores | None) -> str:
    d = e.data
    what = "resumed" if d.get("resumed") else "started"
    if d.get("kind") == "rollback":
        back = d.get("version") or (restores(e.run_id) if restores and e.run_id else None)
        to = f" back to {back}" if back else " back to each host's previous version"
        of = f" (undoing run {d['reverts']})" if d.get("reverts") else ""
        return f"run {e.run_id} {what}: rolling {_hosts(d.get('hosts'))}{to}{of}"
    return f"run {e.run_id} {what}: {d.get('kind') or 'rollout'} of {_version(d)} to {_hosts(d.get('hosts'))}"


def _host_result(e: Event, _r: Restores | None) -> str:
    d = e.data
    verb = "rolled back to" if d.get("kind") == "rollback" else "now runs"
    if d.get("status") == "ok":
        return f"{d['host']} {verb} {d.get('version') or 'an unknown version'}"
    if d.get("status") == "cancelled":
        return f"{d['host']}: cancelled before it finished"
    what = "unreachable" if d.get("status") == "unreachable" else "failed"
    return f"{d['host']} {what}: {d.get('error') or 'no error given'}"


def _paused(e: Event, _r: Restores | None) -> str:
    d = e.data
    where = f" before stage {d['stage']} batch {d['batch']}" if d.get("stage") else ""
    return f"run {e.run_id} paused{where}: {d.get('reason')}"


def _finished(e: Event, _r: Restores | None) -> str:
    d = e.data
    words = {"rolled_back": "ended rolled back", "succeeded": "succeeded", "failed": "failed"}
    status = words.get(str(d.get("status")), f"ended {d.get('status')}")
    return f"run {e.run_id} {status}" + (f": {d['reason']}" if d.get("reason") else "")


def _rollback_started(e: Event, _r: Restores | None) -> str:
    d = e.data
    to = f" to {d['to']}" if d.get("to") else " to their previous versions"
    return f"rolling {_hosts(d.get('hosts'))} back{to}: {d.get('reason')}"


def _guard_tripped(e: Event, _r: Restores | None) -> str:
    d = e.data
    action = "rolling back" if d.get("action") == "rollback" else "freezing the fleet"
    return f"guard of run {e.run_id} tripped on {d.get('version')}, {action}: {d.get('reason')}"


Sentence = Callable[[Event, "Restores | None"], str]

SENTENCES: dict[str, Sentence] = {
    "run.started": _run_started,
    "run.resumed": lambda e, _r: (
        f"run {e.run_id}: re-checked {_hosts(e.data.get('rechecked'))} left mid-update by the last process"
    ),
    "stage.started": lambda e, _r: (
        f"stage {e.data['stage']} started: {_hosts(e.data['hosts'])} in "
        f"{_n(e.data['batches'], 'batch', 'batches')}, bake {format_duration(e.data['bake'])}"
    ),
    "batch.started": lambda e, _r: (
        f"stage {e.data['stage']} batch {e.data['batch']} of {e.data['of']}: "
        f"updating {_hosts(len(e.data['hosts']))}"
    ),
    "host.result": _host_result,
    "batch.finished": lambda e, _r: (
        f"stage {e.data['stage']} batch {e.data['batch']} finished: {_counts(e.data.get('counts') or {})}"
    ),
    "bake.started": lambda e, _r: (
        f"checking the health of {_hosts(e.data['hosts'])} after the rollback"
        if e.data.get("stage") == "rollback"
        else f"bake of stage {e.data['stage']} started: watching {_hosts(e.data['hosts'])} "
        f"for {format_duration(e.data['seconds'])}"
    ),
    "bake.tick": lambda e, _r: (
        f"bake of stage {e.data['stage']}: {format_duration(e.data['remaining'])} "
        f"left, {_n(e.data.get('failed'), 'failed host')}"
    ),
    "host.failed": lambda e, _r: (
        f"{e.data['host']} failed its health check after the rollback: {e.data['error']}"
        if e.data.get("stage") == "rollback"
        else f"{e.data['host']} failed its health gate in stage {e.data.get('stage')}: {e.data['error']}"
    ),
    "gate.passed": lambda e, _r: (
        f"health gate of stage {e.data['stage']} passed: {_hosts(e.data['hosts'])} healthy"
    ),
    "run.paused": _paused,
    "run.halted": lambda e, _r: (
        f"run {e.run_id} halted: {e.data['reason']} (on_failure: {e.data.get('on_failure')})"
    ),
    "rollback.started": _rollback_started,
    "run.finished": _finished,
    "refresh.started": lambda e, _r: (
        f"asking {_hosts(e.data['hosts'])} what they run"
        + (f" (via {e.data['via']})" if e.data.get("via") else "")
    ),
    "message": lambda e, _r: str(e.data.get("text")),
    "guard.started": lambda e, _r: (
        f"guarding {_hosts(e.data.get('hosts'))} on {e.data.get('version')} until {e.data.get('until')}"
    ),
    "guard.stopped": lambda e, _r: (
        f"guard of run {e.run_id} ({e.data.get('version')}) stopped by "
        f"{e.data.get('by')}: {e.data.get('reason')}"
    ),
    "guard.expired": lambda e, _r: (
        f"guard of run {e.run_id} ({e.data.get('version')}) ended: "
        f"the guard period is over after {_n(e.data.get('rounds'), 'round')}"
    ),
    "guard.host_failing": lambda e, _r: (
        f"{e.data['host']} failing ({_n(e.data.get('streak'), 'probe')} in a row): {e.data['error']}"
    ),
    "guard.host_failed": lambda e, _r: (
        f"{e.data['host']} failed under the guard "
        f"({_n(e.data.get('streak'), 'probe')} in a row): {e.data['error']}"
    ),
    "guard.round": lambda e, _r: (
        f"guard of run {e.run_id}: probed {_hosts(e.data.get('probed'))}, "
        f"{e.data.get('failing')} failing, {e.data.get('failed')} failed (budget {e.data.get('budget')})"
    ),
    "guard.tripped": _guard_tripped,
}


def sentence(event: Event, restores: Restores | None = None) -> str:
    """The event in words. An unknown kind (a bug: tests/test_words.py) still reads as words."""
    render = SENTENCES.get(event.kind)
    if render is not None:
        try:
            return render(event, restores)
        except (KeyError, TypeError, ValueError):
            pass  # an event missing a field still reads as words, below
    fields = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in event.data.items() if v not in (None, ""))
    return f"{event.kind.replace('.', ' ').replace('_', ' ')}" + (f": {fields}" if fields else "")


class Renderer:
    """An EventSink. mode: 'json' | 'live' | 'plain'. `restores` names what a rollback run restores."""

    def __init__(
        self, mode: str, err: Console | None = None, restores: Restores | None = None, eta: Eta | None = None
    ) -> None:
        self.mode = mode
        self.err = err or console(stderr=True)
        self.restores = restores
        self.eta = eta
        self.progress: Progress | None = None
        self.task: Any = None
        self.total = 0
        self.finished: set[str] = set()
        self.started = time.monotonic()

    @classmethod
    def choose(cls, json_out: bool, restores: Restores | None = None, eta: Eta | None = None) -> Renderer:
        if json_out:
            return cls("json")
        live = sys.stderr.isatty() and sys.stdout.isatty()
        return cls("live" if live else "plain", restores=restores, eta=eta)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None

    def __call__(self, event: Event) -> None:
        if self.mode == "json":
            if event.kind == "host.result":
                print(json.dumps(event.to_json(), default=str), flush=True)
            return
        if self.mode == "plain":
            if event.kind in PLAIN_SILENT or (
                event.kind == "host.result" and event.data.get("status") == "ok"
            ):
                return
            print(f"{event.at:%H:%M:%S} {self._line(event)}", file=sys.stderr, flush=True)
            return
        self._live(event)

    def _live(self, event: Event) -> None:
        d = event.data
        if event.kind == "run.started":
            self.close()
            self.total = int(d.get("hosts") or 0)
            self.finished.clear()
            self.started = time.monotonic()
            self.progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}", markup=False),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}", markup=False),
                TextColumn("{task.fields[note]}", markup=False),
                console=self.err,
                transient=False,
                refresh_per_second=4,
            )
            self.progress.start()
            label = "rollback" if d.get("kind") == "rollback" else f"{d.get('kind', 'run')} {_version(d)}"
            self.task = self.progress.add_task(label.strip(), total=self.total, rate="", note="", eta="")
            self._eta(event)
            self.progress.console.print(self._line(event))
            return
        if not self.progress:
            if event.kind not in ("bake.tick", "guard.round"):
                self.err.print(self._line(event))
            return
        if event.kind in ETA_AFTER:
            self._eta(event)
        if event.kind == "host.result":
            self.finished.add(d["host"])
            rate = len(self.finished) / max(0.001, time.monotonic() - self.started)
            self.progress.update(self.task, completed=len(self.finished), rate=f"{rate:.1f} hosts/s")
            if d.get("status") != "ok":
                self.progress.console.print(styled(f"✗ {self._line(event)}", "red"))
        elif event.kind == "bake.tick":
            self.progress.update(self.task, note=self._line(event))
        elif event.kind in ("batch.started", "bake.started"):
            self.progress.update(self.task, note=self._line(event))
            self.progress.console.print(self._line(event))
        elif event.kind in ("host.failed", "guard.host_failed", "run.halted"):
            self.progress.console.print(styled(f"✗ {self._line(event)}", "red"))
        elif event.kind == "rollback.started":
            self.finished.clear()
            self.started = time.monotonic()
            self.progress.update(
                self.task, description="rollback", total=d.get("hosts") or 0, completed=0, note=""
            )
            self.progress.console.print(styled(self._line(event), "yellow"))
        elif event.kind == "run.finished":
            if d.get("status") == "succeeded":  # the bar ends full: hosts re-checked count too
                self.progress.update(self.task, completed=self.progress.tasks[-1].total or 0)
            self.progress.update(self.task, note="", eta="")
            self.progress.console.print(self._line(event))
        else:
            self.progress.console.print(self._line(event))

    def _line(self, event: Event) -> str:
        return sentence(event, self.restores)

    def _eta(self, event: Event) -> None:
        """The bar's ETA, from the journal by the same model as `plan` and `status` (none once ended)."""
        if not self.progress or not self.eta or not event.run_id:
            return
        seconds = self.eta(event.run_id)
        self.progress.update(self.task, eta=f"eta {format_duration(seconds)}" if seconds is not None else "")
