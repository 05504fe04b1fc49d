"""How a batch's Ansible work is spread: over local shards (parallel ansible-runner jobs, one per slice
of the batch) and over execution nodes (nodes.py). Every slice reports through the one `on_result`, called
on the caller's thread, so the journal and progress see one batch as before."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleetctl.execution.shards import ShardedExecutor, slices

if TYPE_CHECKING:
    from fleetctl.config import FleetConfig
    from fleetctl.execution.nodes import NodeTarget

__all__ = ["ShardedExecutor", "node_targets", "slices"]


def node_targets(cfg: FleetConfig) -> list[NodeTarget]:
    """fleet.yml's execution nodes, their key and known_hosts paths relative to fleet.yml."""
    from fleetctl.execution.nodes import NodeTarget

    def resolve(p: object) -> object:
        return None if p is None else (cfg.base_dir / str(p)).resolve()

    return [NodeTarget(n, resolve(n.key), resolve(n.known_hosts)) for n in cfg.execution.nodes]  # type: ignore[arg-type]
