"""A simulated fleet on loopback: real node directories, real HTTP controllers, one background server.

Used by `fleetctl sim`, the demo and the tests. fleet.py is the library API (create, load, status,
stop, restart_node); server.py is the background process and its protocols; artifacts.py the files.
Names are re-exported lazily, so that `python -m fleetctl.sim.server` does not import itself twice.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "NodeStatus",
    "SimInfo",
    "SimNode",
    "create",
    "fleet_config",
    "is_running",
    "load",
    "restart_node",
    "server_status",
    "status",
    "stop",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fleetctl.sim import fleet

        return getattr(fleet, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
