"""Rendering engine events: a live rich display on a terminal, JSON lines with --json, and plain
journald-friendly lines otherwise (no colours, no bars)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fleetctl.cli.output import console, styled
from fleetctl.events import Event
from fleetctl.units import format_duration

QUIET_KINDS = {
    "run.started",
    "stage.started",
    "run.paused",
    "run.halted",
    "rollback.started",
    "run.finished",
    "host.failed",
    "message",
}


class Renderer:
    """An EventSink. mode: 'json' | 'live' | 'plain'."""

    def __init__(self, mode: str, err: Console | None = None) -> None:
        self.mode = mode
        self.err = err or console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.total = 0
        self.finished: set[str] = set()
        self.started = time.monotonic()

    @classmethod
    def choose(cls, json_out: bool) -> Renderer:
        if json_out:
            return cls("json")
        return cls("live" if sys.stderr.isatty() and sys.stdout.isatty() else "plain")

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
                print(json.dumps(event.to_json()), flush=True)
            return
        if self.mode == "plain":
            if event.kind in QUIET_KINDS or (
                event.kind == "host.result" and event.data.get("status") != "ok"
            ):
                print(f"{event.at:%H:%M:%S} {self._line(event)}", file=sys.stderr, flush=True)
            return
        self._live(event)

    def _live(self, event: Event) -> None:
        d = event.data
        if event.kind == "run.started":
            self.total = int(d.get("hosts") or 0)
            self.started = time.monotonic()
            self.progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}", markup=False),
                TimeElapsedColumn(),
                TextColumn("eta", markup=False),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}", markup=False),
                console=self.err,
                transient=False,
                refresh_per_second=4,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                f"{d.get('kind', 'run')} {d.get('version') or ''}".strip(), total=self.total, rate="", note=""
            )
            self.err.print(self._line(event))
            return
        if not self.progress:
            self.err.print(self._line(event))
            return
        if event.kind == "host.result":
            self.finished.add(d["host"])
            rate = len(self.finished) / max(0.001, time.monotonic() - self.started)
            self.progress.update(self.task, completed=len(self.finished), rate=f"{rate:.1f} hosts/s")
            if d.get("status") != "ok":
                self.progress.console.print(styled(f"✗ {d['host']}", "red"), f": {d.get('error')}", sep="")
        elif event.kind == "bake.tick":
            self.progress.update(self.task, note=f"bake {d['stage']}: {format_duration(d['remaining'])} left")
        elif event.kind in ("batch.started", "stage.started"):
            self.progress.update(self.task, note=self._line(event))
        elif event.kind == "rollback.started":
            self.finished.clear()
            self.started = time.monotonic()
            self.progress.update(
                self.task, description="rollback", total=d.get("hosts") or 0, completed=0, note=""
            )
            self.progress.console.print(styled(self._line(event), "yellow"))
        else:
            self.progress.console.print(self._line(event))

    @staticmethod
    def _line(event: Event) -> str:
        d = event.data
        k = event.kind
        if k == "run.started":
            what = "resumed" if d.get("resumed") else "started"
            return f"run {event.run_id} {what}: {d.get('kind')} {d.get('version') or ''} on {d.get('hosts')} host(s)"
        if k == "stage.started":
            return f"stage {d['stage']}: {d['hosts']} host(s) in {d['batches']} batch(es), bake {format_duration(d['bake'])}"
        if k == "batch.started":
            return f"stage {d['stage']} batch {d['batch']}/{d['of']}: {len(d['hosts'])} host(s)"
        if k == "host.result":
            return f"{d['host']}: {d['status']} {d.get('version') or ''} {d.get('error') or ''}".strip()
        if k == "host.failed":
            return f"{d['host']} failed its health gate: {d['error']}"
        if k == "run.paused":
            return f"run {event.run_id} paused before stage {d.get('stage')} batch {d.get('batch')}: {d['reason']}"
        if k == "run.halted":
            return f"run {event.run_id} HALTED: {d['reason']} (on_failure: {d['on_failure']})"
        if k == "rollback.started":
            return f"rolling back {d['hosts']} host(s): {d.get('reason')}"
        if k == "run.finished":
            return f"run {event.run_id} {d['status']}" + (f": {d['reason']}" if d.get("reason") else "")
        if k == "message":
            return str(d.get("text"))
        if k == "refresh.started":
            return f"asking {d['hosts']} host(s) what they run"
        return f"{k} {json.dumps(d, default=str)}"
