"""Guard detection latency on the simulated fleet (issue 11), measured, never asserted.

    python benchmarks/guard_latency.py --nodes 10 --interval 5 --failures 2 --tick 3 --trials 3

Each trial: a quiet rollout of the faulty 2.0.0 passes every bake (it blocks only under load), a "timer"
runs `fleetctl tick` every --tick seconds, then the morning's load arrives at a random moment (`sim load`).
Measured from the journal and the nodes' disks:

- detect: first failing guard probe -> the guard's rollback run starts. The bound the design promises is
  failures_to_fail x interval + one tick period.
- load -> rollback start, and load -> every node back at 1.0.0 on disk.

Results are printed and appended to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BIN, make_sim, record  # noqa: E402

from fleetctl.context import FleetContext  # noqa: E402
from fleetctl.sim import fleet as simfleet  # noqa: E402


def configure(info: simfleet.SimInfo, interval: float, failures: int) -> None:
    doc = yaml.safe_load(info.config.read_text())
    doc["rollout"]["on_failure"] = "rollback"
    doc["health"] = {
        "interval": "1s",
        "failures_to_fail": 2,
        "probes": [{"http": "http://{{ ansible_host }}:{{ hc_port }}/health", "timeout": "1s"}],
    }
    doc["guard"] = {"duration": "1h", "interval": f"{interval:g}s", "failures_to_fail": failures}
    info.config.write_text(yaml.safe_dump(doc, sort_keys=False))


def trial(nodes: int, interval: float, failures: int, tick: float, rng: random.Random) -> dict:
    info = make_sim(nodes, forks=20)
    env = {**os.environ, "FLEETCTL_CONFIG": str(info.config), "FLEETCTL_OPERATOR": "bench"}
    fleetctl = [str(BIN / "fleetctl")]
    try:
        configure(info, interval, failures)
        out = subprocess.run(
            [*fleetctl, "rollout", "2.0.0", "--yes"], env=env, capture_output=True, text=True
        )
        if out.returncode != 0:
            raise SystemExit(f"rollout exited {out.returncode}: {out.stderr[-1500:]}")
        load_at = None
        wait_before_load = rng.uniform(0, interval * 2)
        started = time.monotonic()
        next_tick = started
        ctx = FleetContext(config_path=info.config, env=env)
        rollback_seen = None
        while time.monotonic() - started < 600:
            now = time.monotonic()
            if load_at is None and now - started >= wait_before_load:
                simfleet.set_load(info.dir, True)
                load_at = time.time()
            if now >= next_tick:
                subprocess.run([*fleetctl, "tick"], env=env, capture_output=True)
                next_tick = time.monotonic() + tick
            guard = ctx.store.guards.list(limit=1)[0]
            if guard.rollback_run_id and rollback_seen is None:
                rollback_seen = guard.rollback_run_id
            if rollback_seen and {s.version for s in simfleet.status(info.dir)} == {"1.0.0"}:
                break
            time.sleep(0.1)
        back_at = time.time()
        guard = ctx.store.guards.list(limit=1)[0]
        hosts = ctx.store.guards.hosts(guard.run_id)
        first_fail = min(h.first_failure_at for h in hosts if h.first_failure_at)
        rb = ctx.store.runs.get(guard.rollback_run_id or "")
        assert rb is not None and load_at is not None, "the guard never started a rollback"
        rb_start = (rb.started_at or rb.created_at).timestamp()
        return {
            "detect_s": round(rb_start - first_fail.timestamp(), 2),
            "bound_s": failures * interval + tick,
            "load_to_rollback_s": round(rb_start - load_at, 2),
            "load_to_all_back_s": round(back_at - load_at, 2),
        }
    finally:
        simfleet.stop(info.dir)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--interval", type=float, default=5.0, help="guard.interval, seconds")
    parser.add_argument("--failures", type=int, default=2, help="guard.failures_to_fail")
    parser.add_argument("--tick", type=float, default=3.0, help="seconds between `fleetctl tick` runs")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = [trial(args.nodes, args.interval, args.failures, args.tick, rng) for _ in range(args.trials)]
    for i, row in enumerate(rows, 1):
        within = "within" if row["detect_s"] <= row["bound_s"] else "OVER"
        print(
            f"trial {i}: first failing probe -> rollback start {row['detect_s']}s ({within} the bound "
            f"{row['bound_s']:g}s); load -> rollback {row['load_to_rollback_s']}s; "
            f"load -> every node back on disk {row['load_to_all_back_s']}s"
        )
    record(
        "guard_latency",
        {
            "nodes": args.nodes,
            "interval_s": args.interval,
            "failures_to_fail": args.failures,
            "tick_s": args.tick,
            "trials": rows,
            "max_detect_s": max(r["detect_s"] for r in rows),
            "bound_s": rows[0]["bound_s"],
        },
    )


if __name__ == "__main__":
    main()
