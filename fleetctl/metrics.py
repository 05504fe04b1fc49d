"""Prometheus metrics from the journal (prometheus_client): `fleetctl metrics` prints them, and with
`metrics: {textfile: PATH}` in fleet.yml every command rewrites PATH atomically for node_exporter's
textfile collector (while it runs, after each state change, and when it ends: `tick` included).

A custom collector reads the journal at scrape time: the census per version, the newest run, the last
run and its duration per kind and status, freezes, the maintenance window, quarantine, guards and the
notification outbox. Nothing here writes the journal.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fleetctl.context import FleetContext

log = logging.getLogger("fleetctl.metrics")

RUN_STATES = ("pending", "updating", "verifying", "done", "failed", "rolling_back", "rolled_back", "skipped")
RECENT_RUNS = 200


def _ts(value: object) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else 0.0


class JournalCollector(Collector):
    """Reads the journal (and fleet.yml's windows) each time it is collected."""

    def __init__(self, ctx: FleetContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        from fleetctl import census, notify, policy, schedule

        ctx = self.ctx
        store = ctx.store
        fleet = notify.fleet_name(ctx.config)
        now = ctx.now()

        hosts = GaugeMetricFamily(
            "fleetctl_hosts", "Hosts per version in the ledger (the census).", labels=["version"]
        )
        for version, count in census.census(census.hosts(ctx)).items():
            hosts.add_metric([version], count)
        yield hosts

        runs = store.runs.list(limit=RECENT_RUNS)
        info = GaugeMetricFamily(
            "fleetctl_run_info",
            "The newest run (1), and any other unfinished one.",
            labels=["run", "kind", "version", "status"],
        )
        shown = [r for i, r in enumerate(runs) if i == 0 or r.status in ("running", "paused", "interrupted")][
            :3
        ]
        for r in shown:
            info.add_metric([r.id, r.kind, r.target or "", r.status], 1)
        yield info

        states = GaugeMetricFamily(
            "fleetctl_run_hosts", "Hosts of the newest run per state.", labels=["state"]
        )
        counts = store.runs.counts(runs[0].id) if runs else {}
        for state in sorted(set(RUN_STATES) | set(counts)):
            states.add_metric([state], counts.get(state, 0))
        yield states

        last = GaugeMetricFamily(
            "fleetctl_last_run_timestamp_seconds",
            "When the newest run of each kind and status ended (or started, while unfinished).",
            labels=["kind", "status"],
        )
        duration = GaugeMetricFamily(
            "fleetctl_run_duration_seconds",
            "How long the newest run of each kind and status took (so far, while unfinished).",
            labels=["kind", "status"],
        )
        seen: set[tuple[str, str]] = set()
        for r in runs:
            if (r.kind, r.status) in seen:
                continue
            seen.add((r.kind, r.status))
            start = r.started_at or r.created_at
            end = r.finished_at or now
            last.add_metric([r.kind, r.status], _ts(r.finished_at or start))
            duration.add_metric([r.kind, r.status], max(0.0, (end - start).total_seconds()))
        yield last
        yield duration

        freeze = policy.status(ctx, now)
        yield GaugeMetricFamily(
            "fleetctl_frozen", "1 while any freeze is in force.", value=int(freeze.frozen)
        )
        manual = store.freezes.active(now)
        since = min((f.created_at for f in manual), default=None)
        yield GaugeMetricFamily(
            "fleetctl_frozen_since_timestamp_seconds",
            "When the oldest manual freeze in force began (0: none).",
            value=_ts(since) if since else 0.0,
        )
        yield GaugeMetricFamily(
            "fleetctl_freeze_next_change_timestamp_seconds",
            "When the freeze state flips next (0: not foreseen, e.g. a freeze without an end).",
            value=_ts(freeze.next_change) if freeze.next_change else 0.0,
        )
        window = schedule.windows_state(ctx, now)
        yield GaugeMetricFamily(
            "fleetctl_maintenance_window_open",
            "1 while unattended runs may start batches.",
            value=int(window.open),
        )
        yield GaugeMetricFamily(
            "fleetctl_maintenance_window_next_open_timestamp_seconds",
            "When the next maintenance window opens (0: none ahead).",
            value=_ts(window.next_open) if window.next_open else 0.0,
        )
        quarantined = store.quarantine.list(ctx.component)
        yield GaugeMetricFamily(
            "fleetctl_quarantined_versions", "Versions in quarantine.", value=len(quarantined)
        )

        guards = store.guards.list(statuses=("active",))
        failing = sum(
            1 for g in guards for h in store.guards.hosts(g.run_id) if h.state in ("failing", "failed")
        )
        yield GaugeMetricFamily("fleetctl_guard_active", "Rollouts under guard.", value=len(guards))
        yield GaugeMetricFamily(
            "fleetctl_guard_failing_hosts", "Guarded hosts failing their probes.", value=failing
        )

        stats = store.outbox.stats()
        yield CounterMetricFamily(
            "fleetctl_notifications_failed",
            "Failed notification delivery attempts (each is retried with backoff).",
            value=stats["failed_attempts"],
        )
        rows = GaugeMetricFamily("fleetctl_notifications", "Outbox rows per status.", labels=["status"])
        for status in ("pending", "sending", "delivered", "failed"):
            rows.add_metric([status], stats.get(status, 0))
        yield rows
        yield _info(fleet)


def _info(fleet: str) -> Metric:
    family = GaugeMetricFamily(
        "fleetctl_fleet_info", "The fleet these metrics describe (name: in fleet.yml).", labels=["fleet"]
    )
    family.add_metric([fleet], 1)
    return family


def registry(ctx: FleetContext) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(JournalCollector(ctx))
    return reg


def exposition(ctx: FleetContext) -> str:
    """The metrics in Prometheus' text format."""
    return generate_latest(registry(ctx)).decode()


def textfile_path(ctx: FleetContext) -> Path | None:
    path = ctx.config.metrics.textfile
    if path is None:
        return None
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else ctx.config.base_dir / path


class TextfileWriter:
    """Rewrites `metrics.textfile` (atomically: a temp file renamed over it) at most every `every`
    seconds, unless forced. Errors are logged, never raised: metrics must not stop a command."""

    def __init__(self, every: float = 2.0) -> None:
        self.every = every
        self.last = 0.0

    def __call__(self, ctx: FleetContext, force: bool = False) -> Path | None:
        path = textfile_path(ctx)
        if path is None or (not force and time.monotonic() - self.last < self.every):
            return None
        self.last = time.monotonic()
        try:
            write_to_textfile(str(path), registry(ctx))
        except Exception as exc:  # noqa: BLE001
            log.warning("fleetctl: cannot write metrics to %s: %s: %s", path, type(exc).__name__, exc)
            return None
        return path
