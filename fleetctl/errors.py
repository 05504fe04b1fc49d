"""Domain exceptions. The CLI maps each to one exit code in one place (fleetctl.cli.errors)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a run failed or halted
    USAGE = 2  # bad usage, config, inventory or input
    BLOCKED = 3  # freeze, quarantine or closed window: nothing was changed
    LOCKED = 4  # another run holds the fleet lock
    STOPPED = 5  # the run stopped unfinished: paused by an operator, a closed window or an operator stage
    INTERRUPTED = 130


class FleetError(Exception):
    """Base of every error fleetctl reports to a user. `hint` says how to fix it."""

    exit_code = ExitCode.FAILED

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(FleetError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """fleet.yml is missing or malformed."""


class InventoryError(UsageError):
    """The inventory cannot be loaded, or a pattern matches nothing."""


class StoreError(UsageError):
    """The state database cannot be opened or used."""


class StalePlanError(UsageError):
    """A saved plan no longer matches the fleet."""


class BlockedError(FleetError):
    """A freeze, a quarantine or a closed window forbids the change. Nothing was changed."""

    exit_code = ExitCode.BLOCKED


class FrozenError(BlockedError):
    pass


class QuarantinedError(BlockedError):
    pass


class WindowClosedError(BlockedError):
    pass


class LockedError(FleetError):
    exit_code = ExitCode.LOCKED


class RunFailed(FleetError):
    """A run ended failed or halted (the journal has the details)."""


class CheckFailed(FleetError):
    """`fleetctl check` found a problem (each failed check says which host or field, and the fix)."""


class Interrupted(FleetError):
    """Ctrl-C or SIGTERM stopped a run cleanly; the journal says where (resume continues it)."""

    exit_code = ExitCode.INTERRUPTED


class SimError(UsageError):
    """The simulated fleet cannot be created, started or stopped as asked."""
