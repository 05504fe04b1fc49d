"""The host_controller role's node-side Python (module_utils), imported by path for unit tests: it is
plain standard-library code that Ansible ships to the nodes."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from fleetctl.resources import playbooks_dir

ROLE = playbooks_dir() / "roles" / "host_controller"


def load_module_util(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"hc_test_{name}", ROLE / "module_utils" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
