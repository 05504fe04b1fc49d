"""Issue 14 scale benchmarks: a generated static inventory (rings, zones, per-host vars), no nodes behind it.

    python benchmarks/bench.py scale-plan   --nodes 10000 100000   # plan: first load vs with the index
    python benchmarks/bench.py scale-status --nodes 100000         # status --json with N host rows
    python benchmarks/bench.py scale-batch  --nodes 100 100000     # one batch's Ansible start-up

Each command runs in a child process; its wall time and peak RSS (os.wait4's ru_maxrss) are reported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ZONES = ("a", "b", "c")
NOOP = "- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.ping:\n"


def make_fleet(n: int) -> Path:
    """fleet.yml + inventory.yml of `n` hosts: canary/ring1/ring2/ring3, zone_a/b/c, per-host vars."""
    from fleetctl.sim.fleet import rings

    d = Path(tempfile.mkdtemp(prefix=f"fleetctl-scale-{n}-"))
    names = [f"node{i:06d}" for i in range(n)]
    hosts = {
        name: {
            "ansible_host": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
            "zone": ZONES[i % 3],
            "hc_root": f"/srv/hc/{name}",
        }
        for i, name in enumerate(names)
    }
    children: dict[str, Any] = {g: {"hosts": dict.fromkeys(m)} for g, m in rings(names).items()}
    for z in ZONES:
        children[f"zone_{z}"] = {"hosts": dict.fromkeys(names[ZONES.index(z) :: 3])}
    common = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "hc_port": 8600,
        "hc_service_manager": "sim",
    }
    doc = {"all": {"vars": common, "hosts": hosts, "children": children}}
    with (d / "inventory.yml").open("w") as fh:
        yaml.dump(doc, fh, Dumper=yaml.CSafeDumper, sort_keys=False)
    fleet = {
        "inventory": "inventory.yml",
        "state": "fleetctl.db",
        "rollout": {
            "forks": 20,
            "on_failure": "rollback",
            "max_failures": "1%",
            "spread_by": "zone",
            "max_unavailable": "10%",
            "stages": [
                {"name": "canary", "hosts": "canary", "batch": 1, "bake": "1s"},
                {"name": "ring1", "hosts": "ring1", "batch": "10%", "bake": "1s"},
                {"name": "rest", "hosts": "all", "batch": "10%", "bake": "0s"},
            ],
        },
        "health": {"probes": []},
    }
    (d / "fleet.yml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    (d / "pb").mkdir()
    (d / "pb" / "noop.yml").write_text(NOOP)
    return d


LAST_CPU: list[float] = [0.0]  # CPU seconds (user + system) of the last measured() child: load-proof


def measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one child process; its CPU seconds go to LAST_CPU."""
    started = time.monotonic()
    proc = subprocess.Popen(
        argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    LAST_CPU[0] = round(usage.ru_utime + usage.ru_stime, 2)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"{' '.join(argv)} exited {status}: {proc.stderr.read()[-2000:] if proc.stderr else ''}"
        )
    return round(wall, 2), round(usage.ru_maxrss / 1024, 1)


def fleetctl_cmd(d: Path, *args: str) -> tuple[float, float]:
    env = {"FLEETCTL_CONFIG": str(d / "fleet.yml"), "FLEETCTL_OPERATOR": "bench"}
    return measured([str(Path(sys.executable).parent / "fleetctl"), *args], env)


def bench_plan(n: int, record: Any) -> None:
    d = make_fleet(n)
    index = d / ".fleetctl" / "inventory-index.json"
    first = fleetctl_cmd(d, "plan", "2.0.0")
    first_cpu = LAST_CPU[0]
    size = index.stat().st_size if index.exists() else 0
    indexed, cpus = [], []
    for _ in range(2):
        indexed.append(fleetctl_cmd(d, "plan", "2.0.0"))
        cpus.append(LAST_CPU[0])
    best = min(indexed)
    as_json = fleetctl_cmd(d, "plan", "2.0.0", "--json")
    json_cpu = LAST_CPU[0]
    help_wall, _ = fleetctl_cmd(d, "--help")  # the CLI's own start-up, for scale
    record(
        "scale-plan",
        {
            "hosts": n,
            "first_s": first[0],
            "first_cpu_s": first_cpu,
            "indexed_cpu_s": min(cpus),
            "indexed_json_cpu_s": json_cpu,
            "cli_start_s": help_wall,
            "cli_start_cpu_s": LAST_CPU[0],
            "first_mb": first[1],
            "indexed_s": best[0],
            "indexed_mb": max(m for _, m in indexed),
            "index_mb": round(size / 2**20, 1),
            "indexed_json_s": as_json[0],
            "indexed_json_mb": as_json[1],
            "target": "indexed < 2 s and < 500 MB",
            "met": best[0] < 2 and max(m for _, m in indexed) < 500,
        },
    )


STATUS_CODE = """
import json, sys, time, resource
t0 = time.monotonic()
from fleetctl.context import FleetContext
from fleetctl import control
ctx = FleetContext(config_path=__import__('pathlib').Path(sys.argv[1]))
t1 = time.monotonic()
s = control.status(ctx)
t2 = time.monotonic()
out = json.dumps(s.to_json())
t3 = time.monotonic()
print(json.dumps({"imports": t1 - t0, "status": t2 - t1, "json": t3 - t2, "rows": len(s.hosts)}), file=sys.stderr)
"""


def seed_run(d: Path, n: int) -> None:
    """A rollout run in the journal with `n` host rows (no Ansible): what status reads."""
    from fleetctl.context import FleetContext

    ctx = FleetContext(config_path=d / "fleet.yml")
    names = [f"node{i:06d}" for i in range(n)]
    ctx.store.runs.create(
        kind="rollout",
        component=ctx.component,
        target="2.0.0",
        operator="bench",
        reason=None,
        plan=None,
        fingerprint=None,
        options={},
        hosts=[(h, "rest", i // 1000, "1.0.0", "2.0.0") for i, h in enumerate(names)],
        status="paused",
    )


def bench_status(n: int, record: Any) -> None:
    d = make_fleet(n)
    seed_run(d, n)
    whole = min(fleetctl_cmd(d, "status", "--json") for _ in range(3))
    status_cpu = LAST_CPU[0]
    proc = subprocess.run(
        [sys.executable, "-c", STATUS_CODE, str(d / "fleet.yml")], capture_output=True, text=True, check=True
    )
    parts = yaml.safe_load(proc.stderr.strip().splitlines()[-1])
    record(
        "scale-status",
        {
            "hosts": n,
            "command_s": whole[0],
            "command_mb": whole[1],
            "command_cpu_s": status_cpu,
            "in_process_status_s": round(parts["status"], 3),
            "in_process_json_s": round(parts["json"], 3),
            "imports_s": round(parts["imports"], 3),
            "target": "status --json < 0.3 s",
            "met": whole[0] < 0.3,
        },
    )


BATCH_CODE = """
import sys, time
from pathlib import Path
from fleetctl.executor import Executor, ExecutorSettings
from fleetctl.inventory_index import limited_inventory, load_fleet
d, mode = Path(sys.argv[1]), sys.argv[2]
t0 = time.monotonic()
fleet = load_fleet([d / "inventory.yml"], state_dir=d / ".fleetctl") if mode == "index" else None
t1 = time.monotonic()
ex = Executor(ExecutorSettings(inventory=[d / "inventory.yml"], playbooks=d / "pb", work_dir=d / ".fleetctl" / "runner",
    inventory_for=(lambda hosts: limited_inventory(fleet, hosts)) if fleet else None))
run = ex.run("noop.yml", ["node000001", "node000002"])
t2 = time.monotonic()
assert run.status == "successful", run
print(f"{t1 - t0:.3f} {t2 - t1:.3f}", file=sys.stderr)
"""


def bench_batch(n: int, record: Any) -> None:
    """One 2-host batch of a no-op playbook: the full inventory (+ --limit) vs the batch's own inventory."""
    d = make_fleet(n)
    (d / ".fleetctl").mkdir(mode=0o700, exist_ok=True)
    subprocess.run([sys.executable, "-c", BATCH_CODE, str(d), "index"], check=True, capture_output=True)
    row: dict[str, Any] = {"hosts": n}
    for mode in ("full", "index"):
        runs = []
        for _ in range(2):
            proc = subprocess.run(
                [sys.executable, "-c", BATCH_CODE, str(d), mode], capture_output=True, text=True, check=True
            )
            runs.append(float(proc.stderr.split()[-1]))
        row[f"{mode}_batch_s"] = round(min(runs), 2)
    record("scale-batch", row)
