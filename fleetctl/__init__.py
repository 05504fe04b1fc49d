"""fleetctl: staged, journaled, freeze-aware host-controller updates across a fleet."""

__version__ = "0.1.0"
