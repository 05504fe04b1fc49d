"""What the library tells the outside while it works. The engine never prints: it emits events and the
CLI renders them (rich progress, JSON lines, or journald-friendly lines).

Kinds: run.started, run.resumed, stage.started, batch.started, host.result, batch.finished, bake.started,
bake.tick, probe.failed, host.failed, gate.passed, run.paused, run.halted, rollback.started, run.finished,
message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str
    run_id: str | None
    data: dict[str, Any]
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"event": self.kind, "run": self.run_id, "at": self.at.isoformat(), **self.data}


EventSink = Callable[[Event], None]


def discard(_event: Event) -> None:
    return None
