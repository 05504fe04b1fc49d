"""`execution: {shards: N}`: a batch split round-robin into N slices, each run by its own ansible-runner
job (an `ansible-playbook` parent is single-threaded: one cannot use a many-core controller).

The slices run in threads; their per-host results are handed to `on_result` on the caller's thread, in
the order they arrive, so the journal writes and the progress are the same as with one job. A cancel
(or a slice that raises) stops every slice; each slice's Ansible process group is recorded in the journal
and dies with fleetctl, as for one job (executor.py, orphans.py)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from fleetctl.executor import Execution, Executor, ExecutorSettings, HostResult

_POLL = 0.2  # seconds between looks at the caller's cancel while slices run


def slices(hosts: Sequence[str], shards: int) -> list[list[str]]:
    """Round-robin: host i goes to slice i % shards; empty slices are left out."""
    hosts = list(dict.fromkeys(hosts))
    return [s for s in (hosts[i::shards] for i in range(max(1, shards))) if s]


class ShardedExecutor(Executor):
    """An Executor whose run() spreads a batch over `shards` parallel ansible-runner jobs."""

    def __init__(self, settings: ExecutorSettings, shards: int, nodes: Sequence[Any] = ()) -> None:
        super().__init__(settings)
        self.shards = max(1, shards)
        self.nodes = list(nodes)  # execution.nodes.NodeTarget: one slice per node, run there

    def run(
        self,
        playbook: str,
        hosts: Sequence[str],
        *,
        forks: int = 20,
        extravars: dict[str, Any] | None = None,
        on_result: Callable[[HostResult], None] | None = None,
        cancel: threading.Event | None = None,
        ident: str | None = None,
        node: Any = None,
    ) -> Execution:
        if self.nodes:
            from fleetctl.execution.nodes import check_node

            for target in self.nodes:  # a node with other versions is refused before the batch
                check_node(target)
        parts = slices(hosts, len(self.nodes) or self.shards)
        if len(parts) <= 1 and not self.nodes:
            return super().run(
                playbook,
                hosts,
                forks=forks,
                extravars=extravars,
                on_result=on_result,
                cancel=cancel,
                ident=ident,
                node=node,
            )
        stop = threading.Event()  # set on the caller's cancel, or when a slice fails to run at all
        results: queue.Queue[HostResult] = queue.Queue()
        done: list[Execution | None] = [None] * len(parts)
        errors: list[BaseException] = []
        per_slice_forks = forks if self.nodes else max(1, forks // len(parts))  # a node has its own CPUs

        def work(i: int, part: list[str]) -> None:
            try:
                done[i] = Executor.run(
                    self,
                    playbook,
                    part,
                    forks=per_slice_forks,
                    extravars=extravars,
                    on_result=results.put,
                    cancel=stop,
                    ident=f"{ident}-s{i + 1}" if ident else None,
                    node=self.nodes[i] if self.nodes else None,
                )
            except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
                errors.append(exc)
                stop.set()

        threads = [
            threading.Thread(target=work, args=(i, p), name=f"fleetctl-shard-{i + 1}", daemon=True)
            for i, p in enumerate(parts)
        ]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads) or not results.empty():
                if cancel is not None and cancel.is_set():
                    stop.set()
                try:
                    result = results.get(timeout=_POLL)
                except queue.Empty:
                    continue
                if on_result:
                    on_result(result)
        except BaseException:
            stop.set()  # the caller's thread failed (e.g. its journal write): end every slice first
            for t in threads:
                t.join()
            raise
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return merge(playbook, [e for e in done if e is not None])


def merge(playbook: str, runs: list[Execution]) -> Execution:
    """One Execution for the batch: canceled if any slice was, successful if all were, else failed."""
    statuses = {r.status for r in runs}
    if "canceled" in statuses:
        status = "canceled"
    elif statuses == {"successful"}:
        status = "successful"
    else:
        status = next(s for s in ("failed", "timeout", "error") if s in statuses) if statuses else "failed"
    rcs = [r.rc for r in runs if r.rc is not None]
    merged = Execution(playbook, status, max(rcs) if rcs else None)
    for r in runs:
        merged.results.update(r.results)
    merged.artifacts = runs[0].artifacts if runs else None
    return merged
