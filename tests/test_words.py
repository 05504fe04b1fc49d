"""Issue 10, deliverable 4: the terminal view speaks in words. Every event kind the library emits has a
sentence (this test fails when a new kind has none); a whole run through the live view under a
pseudo-terminal shows sentences, never `kind {json}`; a host that failed its health gate counts as
failed even after its rollback, and the rollback names the version it restores."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import fleetctl
from fleetctl.cli.progress import SENTENCES, sentence
from fleetctl.events import Event
from tests.conftest import TWO_BATCHES, Cli, Sim
from tests.health_stub import HealthStub
from tests.test_markup import run_in_a_terminal

EMIT = re.compile(r"""\bemit\(\s*["']([\w.]+)["']""")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
RAW = re.compile(r"[a-z]+\.[a-z_]+ \{")  # `gate.passed {"stage": ...}`: an event name and a JSON dict


def emitted_kinds() -> set[str]:
    root = Path(fleetctl.__file__).parent
    return {k for path in root.rglob("*.py") for k in EMIT.findall(path.read_text())}


def test_every_event_kind_emitted_anywhere_in_fleetctl_has_a_sentence() -> None:
    kinds = emitted_kinds()
    assert {"run.started", "gate.passed", "batch.finished", "guard.tripped"} <= kinds  # the grep works
    assert sorted(kinds - set(SENTENCES)) == []


def event(name: str, run: str | None = "r1", **data: object) -> Event:
    return Event(name, run, data, datetime(2026, 12, 1, tzinfo=UTC))


def test_sentences_name_hosts_counts_errors_and_what_a_rollback_restores() -> None:
    counts = {"done": 2, "failed": 1, "pending": 3}
    assert sentence(event("batch.finished", stage="canary", batch=1, counts=counts)) == (
        "stage canary batch 1 finished: 2 done, 1 failed, 3 pending"
    )
    assert sentence(event("bake.started", stage="ring1", seconds=60, hosts=3)).startswith(
        "bake of stage ring1 started: watching 3 hosts for "
    )
    assert sentence(event("host.failed", host="node-001", error="HTTP 500", stage="canary")) == (
        "node-001 failed its health gate in stage canary: HTTP 500"
    )
    assert sentence(event("gate.passed", stage="canary", hosts=1)) == (
        "health gate of stage canary passed: 1 host healthy"
    )
    paused = event("run.paused", reason="paused by request", stage="rest", batch=2)
    assert sentence(paused) == "run r1 paused before stage rest batch 2: paused by request"
    assert sentence(event("run.started", kind="rollout", version="1.2.0", hosts=6, resumed=True)) == (
        "run r1 resumed: rollout of 1.2.0 to 6 hosts"
    )
    rollback = event("run.started", kind="rollback", version=None, hosts=2, reverts="r0")
    assert (
        sentence(rollback, lambda _run: "1.0.0")
        == "run r1 started: rolling 2 hosts back to 1.0.0 (undoing run r0)"
    )
    started = event(
        "rollback.started", hosts=1, reason="stage canary: 1 failed host(s), budget 0", to="1.0.0"
    )
    assert sentence(started) == "rolling 1 host back to 1.0.0: stage canary: 1 failed host(s), budget 0"
    tripped = event("guard.tripped", version="1.2.0", action="rollback", reason="guard: 2 host(s) failed")
    assert sentence(tripped) == "guard of run r1 tripped on 1.2.0, rolling back: guard: 2 host(s) failed"
    for kind in SENTENCES:  # an event missing its fields still reads as words, never as JSON
        assert "{" not in sentence(event(kind))


def test_a_whole_run_in_the_live_view_speaks_in_words(make_sim: Callable[..., Sim], cli: Cli) -> None:
    """Under a pseudo-terminal: a good rollout, then one whose canary fails its health gate, is rolled
    back and quarantined. Both read as sentences; the failed canary counts as failed, with its error."""
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    code, good = run_in_a_terminal(["rollout", "1.1.0", "--yes"], sim.env)
    text = ANSI.sub("", good)
    assert code == 0, text[-3000:]
    assert not RAW.search(text), text
    for said in (
        "started: rollout of 1.1.0 to 3 hosts",
        "stage canary started: 1 host in 1 batch",
        "stage canary batch 1 finished: 1 verifying, 2 pending",
        "health gate of stage canary passed: 1 host healthy",
        "stage rest batch 1 finished:",
        "succeeded",
        "3/3",  # the bar ends full
        "eta ",  # the ETA of the one model (plan, bar, status)
        "3 host(s) ok, 0 failed",
    ):
        assert said in text, f"{said!r} not in:\n{text}"

    stub = HealthStub(sim, "node-001", "1.2.0", b"HTTP/1.1 500 broken\r\nConnection: close\r\n\r\n")
    try:
        code, bad = run_in_a_terminal(["rollout", "1.2.0", "--yes"], sim.env)
    finally:
        stub.close()
    text = ANSI.sub("", bad)
    assert code == 1, text[-3000:]
    assert not RAW.search(text), text
    for said in (
        "node-001 failed its health gate in stage canary:",
        "rolling 1 host back to 1.1.0: stage canary: 1 failed host(s), budget 0",
        "rollback ━",  # the bar turns to the rollback
        "ended rolled back",
        "0 host(s) ok, 1 failed (1 of them rolled back)",
        "✗ node-001: health gate:",
        "version 1.2.0 quarantined: stage canary: 1 failed host(s), budget 0; node-001 failed its health gate:",
    ):
        assert said in text, f"{said!r} not in:\n{text}"
    assert "ok, 0 failed" not in text  # the canary that failed its gate counts as failed
    assert set(sim.current().values()) == {"1.1.0"}
