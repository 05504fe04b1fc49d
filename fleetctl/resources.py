"""Where fleetctl's own files are: the playbooks ship inside the wheel (fleetctl/playbooks) and sit at
the top of a source checkout (playbooks/)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def playbooks_dir() -> Path:
    for candidate in (_HERE / "playbooks", _HERE.parent / "playbooks"):
        if (candidate / "update.yml").is_file():
            return candidate
    raise FileNotFoundError("fleetctl's playbooks are missing from this installation; reinstall fleetctl")
