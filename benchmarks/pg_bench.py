"""The journal on PostgreSQL vs SQLite: figures, never asserted.

    eval "$(.ci/postgres.sh)"                          # a local server; or set FLEETCTL_TEST_PG_URL
    python benchmarks/pg_bench.py rollout --nodes 6    # per-host journal cost of one rollout, both backends
    python benchmarks/pg_bench.py status --hosts 10000 # `status --json` latency with 10k host rows, both

rollout: the same simulated fleet shape and the same staged run, in one process (the CLI in-process), once
per backend; the journal's cost is the wall time spent inside Store.tx / Store.read blocks (statements,
commits and the Python inside them), split into the run's own thread and the watch thread (heartbeats,
abort polling, off the run's path), divided by the hosts. status: `fleetctl status --json` as a
subprocess (best of 3), and control.status in-process. Results are printed and appended to
benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fleetctl.sim import fleet as simfleet  # noqa: E402
from fleetctl.store import Store, db_admin  # noqa: E402

STAGES = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "0s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": "50%", "bake": "0s"},
]


def pg_base() -> str:
    url = os.environ.get("FLEETCTL_TEST_PG_URL")
    if not url:
        raise SystemExit('FLEETCTL_TEST_PG_URL is unset: eval "$(.ci/postgres.sh)" first')
    return url


@contextmanager
def pg_database() -> Iterator[str]:
    base = pg_base()
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"fleetctl_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        db_admin.upgrade(url)
        yield url
    finally:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except SQLAlchemyError as exc:  # a figure is still a figure: say what was left behind
            print(f"pg_bench: could not drop database {name}: {exc}".splitlines()[0], file=sys.stderr)
        admin.dispose()


class JournalMeter:
    """Wall time inside Store.tx / Store.read, and statements, per thread kind (run / watch)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.blocks: dict[str, int] = defaultdict(int)
        self.statements: dict[str, int] = defaultdict(int)
        self._orig = (Store.tx, Store.read)

    @staticmethod
    def kind() -> str:
        return "watch" if threading.current_thread().name.startswith("watch-") else "run"

    def __enter__(self) -> JournalMeter:
        meter = self
        tx, read = self._orig

        def timed(inner: Any) -> Any:
            @contextmanager
            def wrapper(store: Store) -> Iterator[Any]:
                started = time.perf_counter()
                try:
                    with inner(store) as conn:
                        yield conn
                finally:
                    k = meter.kind()
                    meter.seconds[k] += time.perf_counter() - started
                    meter.blocks[k] += 1

            return wrapper

        Store.tx, Store.read = timed(tx), timed(read)  # type: ignore[method-assign]
        event.listen(Engine, "before_cursor_execute", self._count)
        return self

    def _count(self, *_args: Any) -> None:
        self.statements[self.kind()] += 1

    def __exit__(self, *exc: object) -> None:
        Store.tx, Store.read = self._orig  # type: ignore[method-assign]
        event.remove(Engine, "before_cursor_execute", self._count)


def make_sim(nodes: int) -> simfleet.SimInfo:
    info = simfleet.create(Path(tempfile.mkdtemp(prefix="fleetctl-pgbench-")) / "sim", nodes, 600.0)
    doc = yaml.safe_load(info.config.read_text())
    doc["rollout"] = {"forks": 10, "on_failure": "halt", "max_failures": 0, "stages": STAGES}
    doc["health"] = {"probes": []}
    info.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return info


def rollout_on(url: str, nodes: int) -> dict[str, Any]:
    from typer.testing import CliRunner

    from fleetctl.cli.app import app

    info = make_sim(nodes)
    env = {"FLEETCTL_CONFIG": str(info.config), "FLEETCTL_OPERATOR": "bench", "FLEETCTL_DB": url}
    try:
        with JournalMeter() as meter:
            started = time.perf_counter()
            result = CliRunner().invoke(app, ["rollout", "1.1.0", "--yes"], env=env, catch_exceptions=False)
            wall = time.perf_counter() - started
        if result.exit_code != 0:
            raise SystemExit(f"rollout exited {result.exit_code}: {result.stderr[-2000:]}")
        return {
            "wall_s": round(wall, 2),
            "journal_run_s": round(meter.seconds["run"], 3),
            "journal_watch_s": round(meter.seconds["watch"], 3),
            "per_host_run_ms": round(1000 * meter.seconds["run"] / nodes, 1),
            "per_host_all_ms": round(1000 * (meter.seconds["run"] + meter.seconds["watch"]) / nodes, 1),
            "transactions_run": meter.blocks["run"],
            "statements_run": meter.statements["run"],
            "statements_per_host": round(meter.statements["run"] / nodes, 1),
        }
    finally:
        simfleet.stop(info.dir)


def bench_rollout(nodes: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        sqlite = rollout_on(f"sqlite:///{d}/fleetctl.db", nodes)
    with pg_database() as url:
        pg = rollout_on(url, nodes)
    for backend, row in (("sqlite", sqlite), ("postgresql", pg)):
        record("pg-rollout", {"backend": backend, "hosts": nodes, **row})


STATUS_CODE = """
import json, sys, time
t0 = time.monotonic()
from fleetctl import control
from fleetctl.context import FleetContext
from pathlib import Path
ctx = FleetContext(config_path=Path(sys.argv[1]), db_url=sys.argv[2])
ctx.store
t1 = time.monotonic()
s = control.status(ctx)
t2 = time.monotonic()
json.dumps(s.to_json())
t3 = time.monotonic()
print(json.dumps({"open": t1 - t0, "status": t2 - t1, "json": t3 - t2, "rows": len(s.hosts)}))
"""


def seed(url: str, hosts: int) -> None:
    store = Store.open(url)
    store.runs.create(
        kind="rollout",
        component="host-controller",
        target="2.0.0",
        operator="bench",
        reason=None,
        plan=None,
        fingerprint=None,
        options={},
        hosts=[(f"node{i:06d}", "rest", i // 1000, "1.0.0", "2.0.0") for i in range(hosts)],
        status="paused",
    )
    store.close()


def status_on(url: str, hosts: int, config: Path) -> dict[str, Any]:
    seed(url, hosts)
    env = {**os.environ, "FLEETCTL_CONFIG": str(config), "FLEETCTL_DB": url}
    walls = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fleetctl", "status", "--json"], env=env, check=True, capture_output=True
        )
        walls.append(time.perf_counter() - started)
    parts = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", STATUS_CODE, str(config), url],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        for _ in range(3)
    ]
    best = min(parts, key=lambda p: p["status"])
    return {
        "command_s": round(min(walls), 3),
        "in_process_status_s": round(best["status"], 3),
        "in_process_json_s": round(best["json"], 3),
        "rows": best["rows"],
    }


def bench_status(hosts: int) -> None:
    info = make_sim(3)  # a fleet.yml to point at; the run's rows are seeded, not rolled out
    try:
        with tempfile.TemporaryDirectory() as d:
            sqlite = status_on(f"sqlite:///{d}/fleetctl.db", hosts, info.config)
        with pg_database() as url:
            pg = status_on(url, hosts, info.config)
    finally:
        simfleet.stop(info.dir)
    for backend, row in (("sqlite", sqlite), ("postgresql", pg)):
        record("pg-status", {"backend": backend, "hosts": hosts, **row})


def record(kind: str, row: dict[str, Any]) -> None:
    row = {
        "bench": kind,
        **row,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "at": time.time(),
    }
    print(json.dumps(row))
    with (HERE / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("rollout")
    r.add_argument("--nodes", type=int, nargs="+", default=[6])
    s = sub.add_parser("status")
    s.add_argument("--hosts", type=int, nargs="+", default=[10000])
    args = parser.parse_args()
    if args.what == "rollout":
        for n in args.nodes:
            bench_rollout(n)
    else:
        for n in args.hosts:
            bench_status(n)


if __name__ == "__main__":
    main()
