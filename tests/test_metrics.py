"""Issue 13.2: Prometheus metrics from the journal. `fleetctl metrics` and the textfile that every command
rewrites are parsed back with prometheus_client's own parser, after a real rollout on the simulated fleet,
a freeze, a quarantine and a notification that cannot be delivered."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from fleetctl.context import FleetContext
from tests.conftest import TWO_BATCHES, Cli, Sim

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def one(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_follow_the_journal_and_the_textfile_is_rewritten(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    textfile = Path(sim.dir) / "fleetctl.prom"
    sim.write_config(name="lab", metrics={"textfile": "fleetctl.prom"})
    before = parse(cli("metrics", env=sim.env).stdout)
    assert one(before, "fleetctl_hosts", version="unknown") == 3  # nothing recorded yet
    assert ("fleetctl_run_info", ()) not in before

    summary = cli.json_lines("rollout 1.1.0 --yes --json", env=sim.env)[-1]
    assert textfile.is_file()  # the rollout's own command wrote it when it ended
    for samples in (parse(textfile.read_text()), parse(cli("metrics", env=sim.env).stdout)):
        assert one(samples, "fleetctl_hosts", version="1.1.0") == 3
        assert one(samples, "fleetctl_fleet_info", fleet="lab") == 1
        assert (
            one(
                samples,
                "fleetctl_run_info",
                run=summary["run"],
                kind="rollout",
                version="1.1.0",
                status="succeeded",
            )
            == 1
        )
        assert one(samples, "fleetctl_run_hosts", state="done") == 3
        assert one(samples, "fleetctl_run_hosts", state="failed") == 0
        assert one(samples, "fleetctl_last_run_timestamp_seconds", kind="rollout", status="succeeded") > 1.7e9
        assert one(samples, "fleetctl_run_duration_seconds", kind="rollout", status="succeeded") > 0
        assert one(samples, "fleetctl_frozen") == 0
        assert one(samples, "fleetctl_maintenance_window_open") == 1  # no windows: always open
        assert one(samples, "fleetctl_quarantined_versions") == 0
        assert one(samples, "fleetctl_notifications_failed_total") == 0

    cli(["freeze", "on", "--reason", "INC-1"], env=sim.env)  # a state change rewrites the textfile
    frozen = parse(textfile.read_text())
    assert (
        one(frozen, "fleetctl_frozen") == 1 and one(frozen, "fleetctl_frozen_since_timestamp_seconds") > 1.7e9
    )

    ctx = FleetContext(config_path=sim.config)
    ctx.store.quarantine.add(ctx.component, "2.0.0", reason="test", run_id=None, by="tester")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/hook"
    sim.write_config(notify=[{"webhook": dead, "events": ["freeze.*"]}])
    cli(["freeze", "off", "--reason", "done"], env=sim.env)
    after = parse(cli("metrics --textfile", env=sim.env).stdout)
    assert one(after, "fleetctl_quarantined_versions") == 1
    assert one(after, "fleetctl_frozen") == 0
    assert one(after, "fleetctl_notifications_failed_total") >= 1  # the freeze.off event's first attempt
    assert one(after, "fleetctl_notifications", status="pending") == 1
    written = parse(textfile.read_text())
    assert one(written, "fleetctl_quarantined_versions") == 1 and one(written, "fleetctl_frozen") == 0


def test_metrics_textfile_needs_a_path(make_sim: Callable[..., Sim], cli: Cli) -> None:
    sim = make_sim(nodes=3)
    assert "metrics: {textfile: PATH}" in cli("metrics --textfile", env=sim.env, code=2).stderr
