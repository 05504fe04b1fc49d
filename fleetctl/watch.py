"""Supervising a run while it executes: the lock's heartbeat, and `abort` / `preempt` requests from
another terminal (or an interrupt here) turned into a cancel that stops Ansible at once."""

from __future__ import annotations

import threading

from fleetctl.context import FleetContext

HEARTBEAT_EVERY = 10.0
CONTROL_POLL = 0.5


class Watch:
    """Background thread for a running run: keeps the lock's heartbeat, and turns an `abort` request
    from another terminal (or an interrupt here) into a cancel that stops Ansible at once."""

    def __init__(self, ctx: FleetContext, run_id: str, token: str) -> None:
        self.ctx, self.run_id, self.token = ctx, run_id, token
        self.cancel = threading.Event()
        self.preempted = False  # a rollback took over: stop without applying on_failure
        self.interrupted = False
        self.lost_lock = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{run_id}", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def interrupt(self) -> None:
        self.interrupted = True
        self.cancel.set()

    def _loop(self) -> None:
        store = self.ctx.store
        beat = 0.0
        while not self._stop.wait(CONTROL_POLL):
            beat += CONTROL_POLL
            run = store.runs.get(self.run_id)
            if run and run.control in ("abort", "preempt") and not self.cancel.is_set():
                self.preempted = run.control == "preempt"
                self.cancel.set()
            if beat >= HEARTBEAT_EVERY:
                beat = 0.0
                if not store.locks.heartbeat(self.ctx.lock_name, self.token, self.run_id):
                    self.lost_lock = True
                    self.cancel.set()
