"""Supervising a run while it executes: the lock's heartbeat (renewing its lease), and `abort` / `preempt`
requests from another terminal (or an interrupt here) turned into a cancel that stops Ansible at once."""

from __future__ import annotations

import logging
import threading

from fleetctl.context import FleetContext
from fleetctl.errors import LockedError, StoreError

HEARTBEAT_EVERY = 10.0  # at most; a short lease is renewed three times per lease
CONTROL_POLL = 0.5

log = logging.getLogger(__name__)


def heartbeat_every(lease_seconds: float) -> float:
    """Renew three times per lease (so two missed renewals still keep it), at most every 10 s."""
    return max(CONTROL_POLL, min(HEARTBEAT_EVERY, lease_seconds / 3))


class Watch:
    """Background thread for a running run: renews the lock's lease, and turns an `abort` request
    from another terminal (or an interrupt here) into a cancel that stops Ansible at once. A lease that
    was taken over (this process stalled past its expiry) cancels the run; leaving the `with` block then
    raises LockedError: the process exits 4 and writes nothing more (its writes are fenced)."""

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

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.lost_lock and exc_type is None:
            raise LockedError(
                f"run {self.run_id}: this fleetctl lost the fleet lock (its lease was taken over); it stopped",
                "see `fleetctl status` and `fleetctl audit`: the new holder carries on",
            )

    def interrupt(self) -> None:
        self.interrupted = True
        self.cancel.set()

    def _loop(self) -> None:
        store = self.ctx.store
        every = heartbeat_every(store.locks.lease.total_seconds())
        beat = 0.0
        while not self._stop.wait(CONTROL_POLL):
            beat += CONTROL_POLL
            try:
                run = store.runs.get(self.run_id)
                if run and run.control in ("abort", "preempt") and not self.cancel.is_set():
                    self.preempted = run.control == "preempt"
                    self.cancel.set()
                if beat >= every:
                    beat = 0.0
                    if not store.locks.heartbeat(self.ctx.lock_name, self.token, self.run_id):
                        self.lost_lock = True
                        self.cancel.set()
                        return
            except StoreError as exc:  # the database is unreachable for a moment: try again
                log.warning("fleetctl: the run's watch could not reach the journal: %s", exc)
