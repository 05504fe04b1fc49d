"""Shared fixtures: real simulated fleets (real files, real HTTP controllers, real ansible-runner runs),
real SQLite journals, and a CLI runner that fails loudly on an unexpected exit code."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from fleetctl.cli.app import app
from fleetctl.sim import fleet as simfleet

FLEETCTL = [sys.executable, "-m", "fleetctl"]

# Two batches: the canary, then the other hosts together. No bakes: the gates still probe once.
TWO_BATCHES = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "0s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s"},
]


def write(path: Path, content: Any, mode: int | None = None) -> Path:
    """Write a test file: text (dedented) as it is, anything else as YAML. Makes the parent dirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(content) if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    if mode is not None:
        path.chmod(mode)
    return path


def say(request: pytest.FixtureRequest, text: str, tag: str = "") -> None:
    """Write a line to the real terminal, past output capturing (what a fixture fell back to, and why)."""
    line = f"[{tag}] {text}" if tag else text
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print(f"\n{line}", flush=True)
    else:
        print(line)


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def need(tool: str | bool, reason: str) -> None:
    """Skip when a tool (a program on PATH, or a condition already checked) is missing, saying why; under
    CI (the CI environment variable) a missing tool fails the test instead: CI must run everything."""
    present = shutil.which(tool) is not None if isinstance(tool, str) else tool
    if present:
        return
    what = f"{tool} is missing" if isinstance(tool, str) else "missing"
    if in_ci():
        pytest.fail(f"{what}: {reason} (CI must run this test)", pytrace=False)
    pytest.skip(f"{what}: {reason}")


def fallback(reason: str) -> None:
    """A fixture ran in a degraded mode (said so with `say`): fine locally, a failure under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI must run the full tests)", pytrace=False)


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll until `predicate` returns something truthy (returned); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def run_status(sim: Sim) -> dict[str, Any] | None:
    """`status --json` of the newest run, read through the library (None while there is no run)."""
    from fleetctl import control
    from fleetctl.context import FleetContext

    try:
        return control.status(FleetContext(config_path=sim.config)).to_json()
    except Exception:  # noqa: BLE001 - no run yet
        return None


def host_states(doc: dict[str, Any] | None) -> dict[str, str]:
    return {h["host"]: h["state"] for h in (doc or {}).get("hosts", [])}


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_fleet(tmp_path: Path, ports: dict[str, int], **host_vars: Any) -> Any:
    """An inventory of hosts on 127.0.0.1, each with its controller's port (hc_port), loaded as a Fleet."""
    from fleetctl.inventory import load_inventory

    hosts = {h: {"ansible_host": "127.0.0.1", "hc_port": p, **host_vars} for h, p in ports.items()}
    return load_inventory([write(tmp_path / "inventory.yml", {"all": {"hosts": hosts}})])


class StepClock:
    """A monotonic clock that moves `step` seconds each time it is read: rounds become deterministic."""

    def __init__(self, step: float) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        now = self.t
        self.t += self.step
        return now


class Clock:
    """An injected clock the test moves by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


def fast_policy(**overrides: Any) -> dict[str, Any]:
    """A staged policy with short bakes, for tests (the sim's default bakes are minutes-long in spirit)."""
    policy = {
        "forks": 20,
        "on_failure": "rollback",
        "max_failures": 0,
        "spread_by": "zone",
        "max_unavailable": "50%",
        "stages": [
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "1s", "max_failures": 0},
            {"name": "ring1", "hosts": "ring1", "batch": "100%", "bake": "1s"},
            {"name": "rest", "hosts": "all", "batch": "50%", "bake": "0s"},
        ],
    }
    policy.update(overrides)
    return policy


class Sim:
    """A running simulated fleet in a temp dir, with helpers to read the ground truth on disk."""

    def __init__(self, info: simfleet.SimInfo) -> None:
        self.info = info
        self.dir = info.dir
        self.config = info.config
        self.env = {"FLEETCTL_CONFIG": str(info.config), "FLEETCTL_OPERATOR": "tester"}

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self.info.nodes]

    def current(self) -> dict[str, str | None]:
        """What each node's `current` symlink points at, read from disk."""
        out: dict[str, str | None] = {}
        for n in self.info.nodes:
            link = n.root / "current"
            out[n.name] = os.path.basename(os.readlink(link)) if link.is_symlink() else None
        return out

    def releases(self, node: str) -> set[str]:
        return {
            p.name for p in (self.dir / "nodes" / node / "releases").iterdir() if not p.name.startswith(".")
        }

    def write_config(self, **sections: Any) -> None:
        """Rewrite fleet.yml with the given top-level sections replaced."""
        doc = yaml.safe_load(self.config.read_text())
        doc.update(sections)
        self.config.write_text(yaml.safe_dump(doc, sort_keys=False))

    def host_vars(self, node: str, **values: Any) -> None:
        """Set inventory variables of one node (e.g. a bad checksum to make its update task fail)."""
        doc = yaml.safe_load(self.info.inventory.read_text())
        doc["all"]["hosts"][node].update(values)
        self.info.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))

    def set_current(self, node: str, version: str) -> None:
        """Flip a node by hand, outside fleetctl (drift), and restart its controller."""
        from fleetctl.sim import artifacts

        root = self.dir / "nodes" / node
        if version not in self.releases(node):
            artifacts.install_release(root, self.dir / "artifacts" / f"host-controller-{version}.tar.gz")
        artifacts.switch_release(root, version)
        simfleet.restart_node(self.dir, node)


@pytest.fixture
def make_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Sim]]:
    made: list[Path] = []

    def make(nodes: int = 6, hang_after: float = 20.0, **policy: Any) -> Sim:
        d = tmp_path_factory.mktemp("sim")
        info = simfleet.create(d, nodes, hang_after)
        made.append(d)
        sim = Sim(info)
        sim.write_config(
            name=d.name,  # a shared (PostgreSQL) journal needs it; the same as SQLite's default
            rollout=fast_policy(**policy),
            health={
                "interval": "1s",
                "failures_to_fail": 2,
                "probes": [{"http": "http://{{ ansible_host }}:{{ hc_port }}/health", "timeout": "1s"}],
            },
        )
        return sim

    yield make
    for d in made:
        simfleet.stop(d)


@pytest.fixture
def sim(make_sim: Callable[..., Sim]) -> Sim:
    return make_sim()


class Cli:
    """typer's CliRunner over the real app; `ok` fails the test on an unexpected exit code."""

    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(
        self,
        args: list[str] | str,
        env: dict[str, str] | None = None,
        code: int | None = 0,
        input: str | None = None,
    ) -> Any:
        argv = shlex.split(args) if isinstance(args, str) else args
        result = self.runner.invoke(app, argv, env=env, input=input, catch_exceptions=False)
        if code is not None and result.exit_code != code:
            raise AssertionError(
                f"fleetctl {' '.join(argv)} exited {result.exit_code}, expected {code}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def json(self, args: list[str] | str, env: dict[str, str] | None = None, code: int | None = 0) -> Any:
        return json.loads(self(args, env=env, code=code).stdout)

    def json_lines(
        self, args: list[str] | str, env: dict[str, str] | None = None, code: int | None = 0
    ) -> list[Any]:
        out = self(args, env=env, code=code).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def cli() -> Cli:
    return Cli()


def fleetctl_proc(args: list[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    """The real entry point in a subprocess (for kill -9, concurrency and signal tests)."""
    return subprocess.Popen(
        FLEETCTL + args,
        env={**os.environ, **env},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


# --- the journal on SQLite and on a real PostgreSQL server (.ci/postgres.sh) -----------------------------

PG_URL_ENV = "FLEETCTL_TEST_PG_URL"


def fresh_pg_database(upgraded: bool = True) -> Iterator[str]:
    """A new PostgreSQL database for one test (dropped after it), with the journal's schema (`fleetctl db
    upgrade`) unless `upgraded` is false; skips (fails under CI) without a server: run
    `eval "$(.ci/postgres.sh)"` to get one."""
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = os.environ.get(PG_URL_ENV)
    if not base:
        need(False, f'{PG_URL_ENV} is unset: no PostgreSQL server (start one: eval "$(.ci/postgres.sh)")')
    admin = create_engine(base, isolation_level="AUTOCOMMIT")  # type: ignore[arg-type]
    name = f"fleetctl_t_{secrets.token_hex(5)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        if upgraded:
            from fleetctl.store import db_admin

            db_admin.upgrade(url)  # a shared journal is never migrated by opening it
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh journal URL on each backend: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'journal.db'}"
    else:
        yield from fresh_pg_database()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (no schema yet): tests of `fleetctl db` on PostgreSQL."""
    yield from fresh_pg_database(upgraded=False)
