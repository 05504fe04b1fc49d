"""Health probes (http, tcp, playbook; ssh arrives with fleetctl.ssh) and the gate that bakes a batch.

A probe round checks many hosts at once: HTTP (aiohttp, fleetctl.probes_http) and TCP probes run on one
asyncio loop, so 1000 answering hosts take well under a second and hanging ones cost at most the probe
timeout. A timeout, a refused
connection or an unexpected answer is a failed probe; `failures_to_fail` consecutive failures fail a host.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleetctl.config import HealthConfig, Probe
from fleetctl.executor import Executor
from fleetctl.inventory import Fleet

if TYPE_CHECKING:
    from fleetctl.probes_http import HttpTarget

MAX_CONCURRENT = 512


@dataclass(frozen=True)
class ProbeResult:
    host: str
    ok: bool
    latency_ms: float | None
    error: str | None = None


class Prober:
    """Runs every configured probe against a set of hosts; a host is healthy when all its probes pass."""

    def __init__(
        self,
        fleet: Fleet,
        probes: Sequence[Probe],
        executor: Executor | None = None,
        ssh_runner: Callable[[list[str], dict[str, str], float], dict[str, tuple[bool, float, str | None]]]
        | None = None,
    ):
        self.fleet = fleet
        self.probes = list(probes)
        self.executor = executor
        self.ssh_runner = ssh_runner
        self._targets: dict[tuple[int, str], str] = {}
        self._http_targets: dict[tuple[int, str], HttpTarget] = {}

    def _target(self, index: int, probe: Probe, host: str) -> str:
        key = (index, host)
        if key not in self._targets:
            self._targets[key] = self.fleet[host].render(probe.target)
        return self._targets[key]

    def round(self, hosts: Sequence[str]) -> dict[str, ProbeResult]:
        results = {h: ProbeResult(h, True, None) for h in hosts}
        for index, probe in enumerate(self.probes):
            if probe.kind in ("http", "tcp"):
                batch = asyncio.run(self._network_round(index, probe, list(hosts)))
            elif probe.kind == "playbook":
                batch = self._playbook_round(probe, list(hosts))
            else:
                batch = self._ssh_round(index, probe, list(hosts))
            for host, res in batch.items():
                prev = results[host]
                latency = max(filter(None, [prev.latency_ms, res.latency_ms]), default=None)
                if prev.ok and not res.ok:
                    results[host] = ProbeResult(host, False, latency, res.error)
                else:
                    results[host] = ProbeResult(host, prev.ok, latency, prev.error)
        return results

    async def _network_round(self, index: int, probe: Probe, hosts: list[str]) -> dict[str, ProbeResult]:
        if probe.kind == "tcp":
            target = lambda h: self._target(index, probe, h)  # noqa: E731
            return await self._gather(probe, hosts, target, lambda h: _tcp_check(target(h)))
        from fleetctl import probes_http  # aiohttp: imported only when a round probes HTTP

        targets = {h: self._http_target(index, probe, h) for h in hosts}
        async with probes_http.Client() as client:
            return await self._gather(
                probe, hosts, lambda h: targets[h].url, lambda h: client.check(targets[h], probe)
            )

    def _http_target(self, index: int, probe: Probe, host: str) -> HttpTarget:
        key = (index, host)
        if key not in self._http_targets:
            from fleetctl.probes_http import render_target

            self._http_targets[key] = render_target(probe, self.fleet[host])
        return self._http_targets[key]

    async def _gather(
        self,
        probe: Probe,
        hosts: list[str],
        label: Callable[[str], str],
        check: Callable[[str], Awaitable[str | None]],
    ) -> dict[str, ProbeResult]:
        """Run `check` (None: passed, else a reason) for every host, at most MAX_CONCURRENT at once, each
        bounded by the probe's timeout. An OSError or ValueError (a TCP check) is a failed probe too; the
        HTTP check turns everything an answer can cause into a reason itself."""
        gate = asyncio.Semaphore(MAX_CONCURRENT)

        async def one(host: str) -> ProbeResult:
            async with gate:
                target = label(host)
                started = time.monotonic()
                try:
                    async with asyncio.timeout(probe.timeout):
                        error = await check(host)
                except TimeoutError:
                    return ProbeResult(
                        host, False, None, f"{probe.kind} {target}: no answer within {probe.timeout:g}s"
                    )
                except (OSError, ValueError) as exc:
                    error = _reason(exc)
                if error is not None:
                    return ProbeResult(host, False, _ms(started), f"{probe.kind} {target}: {error}")
                return ProbeResult(host, True, _ms(started))

        return {r.host: r for r in await asyncio.gather(*(one(h) for h in hosts))}

    def _playbook_round(self, probe: Probe, hosts: list[str]) -> dict[str, ProbeResult]:
        if self.executor is None:
            raise RuntimeError("a playbook probe needs an executor")
        started = time.monotonic()
        run = self.executor.run(
            probe.target or "health.yml",
            hosts,
            forks=50,
            extravars={
                "hc_probe_timeout": int(max(1, probe.timeout)),
                "hc_probe_status": probe.expect_status,
            },
        )
        elapsed = _ms(started)
        return {
            h: ProbeResult(h, r.ok, elapsed, None if r.ok else f"playbook probe: {r.error}")
            for h, r in run.results.items()
        }

    def _ssh_round(self, index: int, probe: Probe, hosts: list[str]) -> dict[str, ProbeResult]:
        if self.ssh_runner is None:
            raise RuntimeError("an ssh probe needs fleetctl's SSH client")
        commands = {h: self._target(index, probe, h) for h in hosts}
        out = self.ssh_runner(hosts, commands, probe.timeout)
        return {
            h: ProbeResult(h, ok, ms, None if ok else f"ssh `{probe.target}`: {err}")
            for h, (ok, ms, err) in out.items()
        }


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 2)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__


async def _tcp_check(target: str) -> str | None:
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"tcp probe target must be host:port, got {target!r}")
    _reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    writer.close()
    return None


@dataclass
class GateOutcome:
    failed: dict[str, str] = field(default_factory=dict)
    latency: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # host -> (last, max)
    rounds: int = 0
    stopped: bool = False  # ended early: a stop request, or on_failure asked to stop


def bake(
    prober: Prober,
    hosts: Sequence[str],
    *,
    duration: float,
    config: HealthConfig,
    stop: threading.Event,
    on_failure: Callable[[str, str], bool] | None = None,
    on_tick: Callable[[float, int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> GateOutcome:
    """Probe `hosts` every interval for `duration` seconds (at least one round).

    A host fails after `failures_to_fail` consecutive failed probes and is not probed again. When the
    time is up, hosts in the middle of a failing streak are probed until they pass or fail, so a host
    never passes on a failed last probe. `on_failure` returning True ends the bake early.
    """
    outcome = GateOutcome()
    if not prober.probes or not hosts:
        return outcome
    streak = dict.fromkeys(hosts, 0)
    started = clock()
    while True:
        active = [h for h in hosts if h not in outcome.failed]
        if not active:
            break
        results = prober.round(active)
        outcome.rounds += 1
        for host in active:
            res = results[host]
            last, worst = outcome.latency.get(host, (None, None))
            if res.latency_ms is not None:
                worst = max(worst or 0.0, res.latency_ms)
            outcome.latency[host] = (res.latency_ms, worst)
            streak[host] = 0 if res.ok else streak[host] + 1
            if streak[host] >= config.failures_to_fail:
                outcome.failed[host] = res.error or "probe failed"
                if on_failure and on_failure(host, outcome.failed[host]):
                    outcome.stopped = True
                    return outcome
        remaining = duration - (clock() - started)
        deciding = any(0 < streak[h] < config.failures_to_fail for h in active if h not in outcome.failed)
        if on_tick:
            on_tick(max(0.0, remaining), len(outcome.failed))
        if remaining <= 0 and not deciding:
            break
        if stop.wait(config.interval if remaining <= 0 else min(config.interval, max(remaining, 0.05))):
            outcome.stopped = True
            break
    return outcome
