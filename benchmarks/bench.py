"""fleetctl benchmarks on the simulated fleet. Ratios measured side by side in one run, never asserted.

    python benchmarks/bench.py rollout  --nodes 100          # fleetctl rollout vs plain ansible-playbook update.yml
    python benchmarks/bench.py rollback --nodes 30 100 300   # rollback vs rollout, hosts/s, vs plain rollback.yml
    python benchmarks/bench.py probes   --nodes 1000         # one health round: fleetctl vs bare aiohttp/httpx
    python benchmarks/bench.py ssh      --nodes 5            # versions --refresh --via ssh vs facts.yml (needs netns)
    python benchmarks/bench.py scale-plan   --nodes 10000 100000  # plan: first load vs the inventory index
    python benchmarks/bench.py scale-status --nodes 100000        # status --json with 100k host rows
    python benchmarks/bench.py scale-batch  --nodes 100 100000    # one batch's Ansible start-up (benchmarks/scale.py)
    python benchmarks/bench.py execution    --nodes 30            # local / 2 shards / 1-2 execution nodes / mitogen
    (add --quick for sizes that fit in a few minutes)

Results are printed as a table and appended to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import execution  # benchmarks/execution.py, beside this file
import scale  # benchmarks/scale.py, beside this file
import yaml

from fleetctl.resources import playbooks_dir
from fleetctl.sim import fleet as simfleet

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def wide_policy(forks: int) -> dict:
    return {
        "forks": forks,
        "on_failure": "halt",
        "max_failures": "100%",
        "stages": [{"name": "all", "hosts": "all", "batch": "100%", "bake": "0s"}],
    }


def make_sim(nodes: int, forks: int = 10) -> simfleet.SimInfo:
    d = Path(tempfile.mkdtemp(prefix="fleetctl-bench-"))
    info = simfleet.create(d / "sim", nodes, 600.0)
    doc = yaml.safe_load(info.config.read_text())
    doc["rollout"] = wide_policy(forks)
    doc["health"] = {"probes": []}
    info.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return info


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    out = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return elapsed


def fleetctl(info: simfleet.SimInfo, *args: str) -> float:
    env = {"FLEETCTL_CONFIG": str(info.config), "FLEETCTL_OPERATOR": "bench"}
    return timed([str(BIN / "fleetctl"), *args], env)


def playbook(info: simfleet.SimInfo, name: str, forks: int, *extra: str) -> float:
    env = {
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    return timed(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(info.inventory),
            str(playbooks_dir() / name),
            "-f",
            str(forks),
            *extra,
        ],
        env,
    )


def versions(info: simfleet.SimInfo) -> set[str | None]:
    return {s.version for s in simfleet.status(info.dir)}


def record(kind: str, row: dict) -> None:
    row = {
        "bench": kind,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **row,
    }
    with (HERE / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def refresh(info: simfleet.SimInfo) -> None:
    """Untimed: let the ledger see what plain ansible-playbook changed behind fleetctl's back."""
    fleetctl(info, "versions", "--refresh")


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    mid = len(xs) // 2
    return round(xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2, 2)


def bench_rollout(nodes: int, forks: int, repeats: int = 2) -> None:
    """Same playbook, same forks, same hosts, interleaved: fleetctl's overhead over plain ansible-playbook.
    The first pair installs the releases (warm-up, reported apart); measured pairs switch between them."""
    info = make_sim(nodes, forks)
    try:
        warm = [
            fleetctl(info, "rollout", "1.1.0", "--yes", "--forks", str(forks)),
            playbook(info, "update.yml", forks, "-e", "hc_version=1.2.0"),
        ]
        fc, ap = [], []
        for _ in range(repeats):
            refresh(info)
            fc.append(fleetctl(info, "rollout", "1.1.0", "--yes", "--forks", str(forks)))
            assert versions(info) == {"1.1.0"}
            ap.append(playbook(info, "update.yml", forks, "-e", "hc_version=1.2.0"))
            assert versions(info) == {"1.2.0"}
        f, a = median(fc), median(ap)
        record(
            "rollout",
            {
                "nodes": nodes,
                "forks": forks,
                "fleetctl_s": f,
                "ansible_playbook_s": a,
                "ratio": round(f / a, 3),
                "fleetctl_runs": fc,
                "ansible_playbook_runs": ap,
                "first_install_runs": [round(x, 2) for x in warm],
            },
        )
    finally:
        simfleet.stop(info.dir)


def bench_rollback(nodes: int, repeats: int = 2) -> None:
    """The incident: 2.0.0 pushed wide (forks 10, one 100% batch, no bake), then one `fleetctl rollback`;
    then fleetctl's rollback against plain `ansible-playbook rollback.yml` (same forks), interleaved."""
    info = make_sim(nodes, 10)
    try:
        push = fleetctl(info, "rollout", "2.0.0", "--yes", "--forks", "10")
        assert versions(info) == {"2.0.0"}
        back = fleetctl(info, "rollback", "--yes")
        assert versions(info) == {"1.0.0"}
        fc, plain = [back], []
        for i in range(repeats):
            playbook(info, "rollback.yml", 50, "-e", "hc_rollback_version=2.0.0")  # untimed: back to 2.0.0
            plain.append(playbook(info, "rollback.yml", 50, "-e", "hc_rollback_version=1.0.0"))
            assert versions(info) == {"1.0.0"}
            if i < repeats - 1:
                playbook(info, "rollback.yml", 50, "-e", "hc_rollback_version=2.0.0")
                refresh(info)
                fc.append(fleetctl(info, "rollback", "--to", "1.0.0", "--no-refresh", "--yes"))
                assert versions(info) == {"1.0.0"}
        f, p = median(fc), median(plain)
        record(
            "rollback",
            {
                "nodes": nodes,
                "rollout_s": round(push, 2),
                "rollback_s": round(back, 2),
                "rollback_over_rollout": round(back / push, 3),
                "hosts_per_s": round(nodes / back, 2),
                "fleetctl_rollback_runs": [round(x, 2) for x in fc],
                "plain_rollback_runs": [round(x, 2) for x in plain],
                "overhead_vs_plain": round(f / p - 1, 3),
            },
        )
    finally:
        simfleet.stop(info.dir)


def bench_probes(nodes: int, repeats: int = 5) -> None:
    """One healthy round over N simulated controllers through fleetctl's Prober (aiohttp), interleaved with
    the same GETs through bare aiohttp and bare httpx (the two clients the HTTP probes were chosen
    between, issue 10), all at most 512 at once on one loop. Medians of `repeats` rounds."""
    import asyncio

    from fleetctl.config import Probe
    from fleetctl.health import MAX_CONCURRENT, Prober
    from fleetctl.inventory import load_inventory

    info = make_sim(nodes)
    try:
        fleet = load_inventory([info.inventory])
        probe = Probe(http="http://{{ ansible_host }}:{{ hc_port }}/health", timeout=2.0)
        prober = Prober(fleet, [probe])
        prober.round(fleet.names)  # render and cache the targets
        urls = [fleet[h].render(probe.target) for h in fleet.names]
        rounds: dict[str, list[float]] = {"fleetctl": [], "aiohttp": [], "httpx": []}
        failed = dict.fromkeys(rounds, 0)  # probes that did not pass (timeouts on a loaded machine)
        clients = {"aiohttp": _aiohttp_round, "httpx": _httpx_round}
        if importlib.util.find_spec("httpx") is None:  # not a dependency: `pip install httpx` to compare
            del clients["httpx"]
        for _ in range(repeats):
            started = time.monotonic()
            res = prober.round(fleet.names)
            rounds["fleetctl"].append(round(time.monotonic() - started, 3))
            failed["fleetctl"] += sum(not r.ok for r in res.values())
            for name, client in clients.items():
                started = time.monotonic()
                oks = asyncio.run(client(urls, MAX_CONCURRENT, probe.timeout))
                rounds[name].append(round(time.monotonic() - started, 3))
                failed[name] += oks.count(False)
        record(
            "probes",
            {
                "nodes": nodes,
                "client": "aiohttp",
                "healthy_round_s": median(rounds["fleetctl"]),
                "bare_aiohttp_round_s": median(rounds["aiohttp"]),
                "bare_httpx_round_s": median(rounds["httpx"]) if rounds["httpx"] else None,
                "rounds": rounds,
                "failed_probes": failed,
                "timeout_s": probe.timeout,
            },
        )
    finally:
        simfleet.stop(info.dir)


async def _aiohttp_round(urls: list[str], limit: int, timeout: float) -> list[bool]:
    import asyncio

    import aiohttp

    gate = asyncio.Semaphore(limit)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def one(url: str) -> bool:
            async with gate:
                try:
                    async with asyncio.timeout(timeout), session.get(url, allow_redirects=False) as resp:
                        await resp.read()
                        return resp.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    return False

        return await asyncio.gather(*(one(u) for u in urls))


async def _httpx_round(urls: list[str], limit: int, timeout: float) -> list[bool]:
    import asyncio

    import httpx

    gate = asyncio.Semaphore(limit)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

        async def one(url: str) -> bool:
            async with gate:
                try:
                    async with asyncio.timeout(timeout):
                        resp = await client.get(url)
                        return resp.status_code == 200
                except (TimeoutError, httpx.HTTPError):
                    return False

        return await asyncio.gather(*(one(u) for u in urls))


def bench_ssh(nodes: int) -> None:
    info = simfleet.create(Path(tempfile.mkdtemp(prefix="fleetctl-bench-")) / "sim", nodes, 600.0, ssh=True)
    try:
        via_ssh = fleetctl(info, "versions", "--refresh", "--via", "ssh")
        via_facts = fleetctl(info, "versions", "--refresh")
        via_ssh2 = fleetctl(info, "versions", "--refresh", "--via", "ssh")
        s, f = (via_ssh + via_ssh2) / 2, via_facts
        record(
            "ssh", {"nodes": nodes, "ssh_s": round(s, 2), "facts_s": round(f, 2), "speedup": round(f / s, 2)}
        )
    finally:
        simfleet.stop(info.dir)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    scale_kinds = {
        "scale-plan": scale.bench_plan,
        "scale-status": scale.bench_status,
        "scale-batch": scale.bench_batch,
        "execution": execution.bench_execution,
    }
    parser.add_argument("kind", choices=["rollout", "rollback", "probes", "ssh", *scale_kinds])
    parser.add_argument("--nodes", type=int, nargs="+", default=None)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (scale and execution kinds)")
    args = parser.parse_args()
    defaults = {"rollout": [100], "rollback": [30, 100, 300], "probes": [1000], "ssh": [5]}
    defaults.update(
        {
            "scale-plan": [1000, 10000, 100000],
            "scale-status": [100000],
            "scale-batch": [100, 100000],
            "execution": [30],
        }
    )
    if args.quick:  # the same kinds at sizes that fit in a few minutes
        defaults.update({"scale-plan": [1000, 10000], "scale-status": [10000], "scale-batch": [100, 10000]})
        defaults["execution"] = [6]
    for n in args.nodes or defaults[args.kind]:
        if args.kind in scale_kinds:
            scale_kinds[args.kind](n, record)
        elif args.kind == "rollout":
            bench_rollout(n, args.forks)
        elif args.kind == "rollback":
            bench_rollback(n)
        elif args.kind == "probes":
            bench_probes(n)
        else:
            bench_ssh(n)


if __name__ == "__main__":
    main()
