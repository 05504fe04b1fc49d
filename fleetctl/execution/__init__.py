"""How a batch's Ansible work is spread: over local shards (parallel ansible-runner jobs, one per slice
of the batch) and, later, over execution nodes. Every slice reports through the one `on_result`, called
on the caller's thread, so the journal and progress see one batch as before."""

from fleetctl.execution.shards import ShardedExecutor, slices

__all__ = ["ShardedExecutor", "slices"]
