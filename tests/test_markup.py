"""Issue 9 finding 2: data is printed literally, never as rich markup, and a renderer that fails cannot
stop a run. Reasons, operators and node answers with brackets in them go through every table and the
live progress display; an event sink that raises is logged and the run goes on."""

from __future__ import annotations

import logging
import os
import pty
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime

from fleetctl import rollout as rollouts
from fleetctl.context import FleetContext
from fleetctl.events import Event
from tests.conftest import FLEETCTL, TWO_BATCHES, Cli, Sim
from tests.health_stub import HealthStub

CLOSER = "[/]"  # rich: "closing tag '[/]' has nothing to close" (MarkupError)
UNCLOSED = "[bold]x[/"  # rich: eaten as a style, the text shows as `x[/`


def test_reasons_and_operators_with_markup_print_literally(sim: Sim, cli: Cli) -> None:
    cli(["freeze", "on", "--reason", CLOSER], env=sim.env)
    cli(["freeze", "on", "--reason", UNCLOSED, "-l", "canary"], env=sim.env)
    odd = {**sim.env, "FLEETCTL_OPERATOR": UNCLOSED}
    args = ["rollout", "1.1.0", "-l", "canary", "--yes", "--override-freeze", "--reason", CLOSER]
    cli(args, env=odd)
    assert sim.current()["node-001"] == "1.1.0"

    listed = cli("freeze list", env=sim.env).stdout
    assert CLOSER in listed and UNCLOSED in listed
    status = cli("freeze status", env=sim.env).stdout
    assert f"manual #1: {CLOSER}" in status and f"manual #2 on canary: {UNCLOSED}" in status
    audit = cli("audit", env=sim.env).stdout
    assert CLOSER in audit and UNCLOSED in audit  # freeze.on reasons, the override's reason and actor
    runs = cli("runs", env=sim.env).stdout
    assert UNCLOSED in runs  # the operator of the run


def test_a_node_answering_brackets_mid_bake_is_halted_rolled_back_and_quarantined(
    make_sim: Callable[..., Sim], cli: Cli
) -> None:
    """The live renderer (a terminal on stdout and stderr) shows the canary's health error, whose status
    line carries brackets: the run still halts, rolls the canary back and quarantines the version."""
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    answer = b"HTTP/1.1 [/]boom\r\nConnection: close\r\n\r\n"
    stub = HealthStub(sim, "node-001", "1.1.0", answer)
    try:
        code, output = run_in_a_terminal(["rollout", "1.1.0", "--yes"], sim.env)
    finally:
        stub.close()
    assert stub.requests > 0
    assert "MarkupError" not in output and "internal error" not in output, output[-2000:]
    assert code == 1, output[-2000:]
    assert set(sim.current().values()) == {"1.0.0"}  # the canary is back; the others never moved
    doc = cli.json("status --json", env=sim.env)
    assert doc["run"]["status"] == "rolled_back"
    [failed] = [h for h in doc["hosts"] if h["host"] == "node-001"]
    assert failed["state"] == "rolled_back" and "[/]boom" in (failed["error"] or "")
    assert [q["version"] for q in cli.json("quarantine list --json", env=sim.env)["quarantine"]] == ["1.1.0"]
    for args in ("status", "runs", "audit", "quarantine list", "history"):
        cli(args, env=sim.env)  # the journal holds the bracketed error: every view still prints


def run_in_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """The real entry point with a pseudo-terminal as stdin, stdout and stderr (so the live renderer)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        FLEETCTL + args,
        env={**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": "120"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_a_sink_that_raises_is_logged_and_does_not_stop_emit(caplog) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    def broken(event: Event) -> None:
        seen.append(event.kind)
        raise RuntimeError("renderer fell over [/]")

    ctx = FleetContext(clock=lambda: datetime(2026, 1, 1, tzinfo=UTC), events=broken)
    with caplog.at_level(logging.WARNING, logger="fleetctl.events"):
        ctx.emit("host.failed", "r1", host="node-001", error="[/]")
        ctx.emit("message", None, text="still here")
    assert seen == ["host.failed", "message"]
    assert "could not show event host.failed: RuntimeError: renderer fell over [/]" in caplog.text


def test_a_run_whose_renderer_raises_on_every_event_still_finishes(make_sim: Callable[..., Sim]) -> None:
    sim = make_sim(nodes=3, stages=TWO_BATCHES)

    def broken(_event: Event) -> None:
        raise ValueError("cannot render")

    ctx = FleetContext(config_path=sim.config, operator="tester", env=sim.env, events=broken)
    run = rollouts.start(ctx, rollouts.make_plan(ctx, "1.1.0", "canary"))
    assert run is not None and run.status == "succeeded"
    assert sim.current() == {"node-001": "1.1.0", "node-002": "1.0.0", "node-003": "1.0.0"}
