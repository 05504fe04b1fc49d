"""Does a dead notification receiver slow a rollback? Measured, never asserted (issue 13).

    python benchmarks/notify_receivers.py --nodes 6 --trials 2 [--record]

For each receiver (none configured, ok, refused, 500, hang) and trial: a fresh simulated fleet, a rollout
of 1.1.0, then the one-command `fleetctl rollback`, with a webhook target on every event. Two numbers:
the rollback run's own duration from the journal (started -> finished: what the fleet waits for), and the
`fleetctl rollback` command's wall time (which adds the short end-of-command delivery budget, at most
notify_send.END_OF_COMMAND_BUDGET s plus one short attempt, when a receiver hangs).
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BIN, make_sim, record  # noqa: E402

from fleetctl.context import FleetContext  # noqa: E402
from fleetctl.sim import fleet as simfleet  # noqa: E402

MODES = ("none", "ok", "refused", "500", "hang")


def receiver(mode: str) -> tuple[str, ThreadingHTTPServer | None]:
    if mode in ("none", "refused"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{s.getsockname()[1]}/hook", None

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return None

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if mode == "hang":
                time.sleep(60)
                return
            self.send_response(500 if mode == "500" else 204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/hook", server


def trial(mode: str, nodes: int) -> tuple[float, float]:
    info = make_sim(nodes)
    url, server = receiver(mode)
    env = {"FLEETCTL_CONFIG": str(info.config), "FLEETCTL_OPERATOR": "bench"}
    try:
        doc = yaml.safe_load(info.config.read_text())
        if mode != "none":
            doc["notify"] = [{"webhook": url}]
        info.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        run = [str(BIN / "fleetctl")]
        subprocess.run([*run, "rollout", "1.1.0", "--yes"], env=env, check=True, capture_output=True)
        started = time.monotonic()
        subprocess.run([*run, "rollback", "--yes"], env=env, check=True, capture_output=True)
        wall = time.monotonic() - started
        ctx = FleetContext(config_path=info.config, env=env)
        rb = ctx.store.runs.list(limit=1)[0]
        assert rb.kind == "rollback" and rb.finished_at and rb.started_at, rb
        return (rb.finished_at - rb.started_at).total_seconds(), wall
    finally:
        if server:
            server.shutdown()
        simfleet.stop(info.dir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=6)
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--record", action="store_true", help="append a line to benchmarks/results.jsonl")
    args = ap.parse_args()
    rows = {}
    print(f"{'receiver':10} {'rollback run (s)':>18} {'command wall (s)':>18}")
    for mode in MODES:
        runs, walls = zip(*(trial(mode, args.nodes) for _ in range(args.trials)), strict=True)
        rows[mode] = {
            "run_s": round(statistics.median(runs), 2),
            "wall_s": round(statistics.median(walls), 2),
        }
        print(f"{mode:10} {rows[mode]['run_s']:>18} {rows[mode]['wall_s']:>18}", flush=True)
    if args.record:
        record("notify-receivers", {"nodes": args.nodes, "trials": args.trials, "medians": rows})


if __name__ == "__main__":
    main()
