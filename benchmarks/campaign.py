"""A fault campaign against fleetctl on the simulated fleet: kill -9 and resume, concurrency, node faults.

    python benchmarks/campaign.py                 # 24 kill trials, concurrency, every node fault
    python benchmarks/campaign.py --quick         # a slice that runs in about three minutes
    python benchmarks/campaign.py --trials 40 --seed 7 --nodes 6

Every fleetctl is a real subprocess (`python -m fleetctl ...`) with a hard timeout (a timeout is a hang);
every check reads the ground truth: `current` symlinks on disk, the journal's SQLite file, and the sim
server's own log of controller restarts (one line per activation, "restarted (old -> new)"), so a host
activated twice is seen even when the ledger skips same-version records. Reports honestly whatever the
code does: one table, and a JSON line appended to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleetctl.sim import fleet as simfleet

HERE = Path(__file__).resolve().parent
FLEETCTL = [sys.executable, "-m", "fleetctl"]
TIMEOUT = 240.0  # one fleetctl command; past this it is a hang
TRACEBACK = "Traceback (most recent call last)"
DB_LOCKED = "database is locked"
VERSION = re.compile(r"\d+\.\d+\.\d+")
JINJA = "{{ lookup('pipe', 'cd; touch fleetctl-pwned-SEED') }}"  # a node's release dir named so
RESTART = re.compile(r"(node-\d+): restarted \((\S+) -> (\S+)\)")


def one_line(text: str, limit: int = 400) -> str:
    flat = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- results ------------------------------------------------------------------------------------------
@dataclass
class Tally:
    trials: int = 0
    kills: int = 0
    resumes: int = 0
    hosts_checked: int = 0
    mismatches: int = 0  # ledger != disk, or disk != the expected version
    duplicates: int = 0  # a host changed twice for one change (journal or node side)
    tracebacks: int = 0
    hangs: int = 0
    db_locked: int = 0
    orphans: int = 0  # Ansible processes of a killed fleetctl still alive after the recovery command ended
    unhandled: int = 0  # a fault not named in status, a wrong exit code, a wrong final status
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)  # what each fault and control did (results.jsonl)

    def add(self, other: Tally) -> None:
        for name, value in asdict(other).items():
            if name in ("notes", "details"):
                getattr(self, name).extend(getattr(other, name))
            else:
                setattr(self, name, getattr(self, name) + value)

    def note(self, counter: str, text: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        self.notes.append(f"{counter}: {one_line(text)}")

    def observe(self, text: str) -> None:
        """Worth a look, not counted: the issue's checks did not ask for it."""
        self.notes.append(f"observed: {one_line(text)}")

    def zeros(self) -> dict[str, int]:
        keys = ("mismatches", "duplicates", "tracebacks", "hangs", "db_locked", "orphans", "unhandled")
        return {k: getattr(self, k) for k in keys}


@dataclass
class Done:
    code: int | None  # None: it hung and was killed
    out: str
    err: str


# -- a simulated fleet for one trial ------------------------------------------------------------------
def policy(stages: list[dict[str, Any]] | None = None, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "forks": 20,
        "on_failure": "rollback",
        "max_failures": 0,
        "spread_by": "zone",
        "max_unavailable": "50%",
        "stages": stages
        or [
            {"name": "canary", "hosts": "canary", "batch": 1, "bake": "1s", "max_failures": 0},
            {"name": "ring1", "hosts": "ring1", "batch": "100%", "bake": "1s"},
            {"name": "rest", "hosts": "all", "batch": "50%", "bake": "0s"},
        ],
    }
    doc.update(over)
    return doc


class Fleet:
    """A sim in its own temp dir, its journal, its server log, and every fleetctl process it ran."""

    def __init__(self, nodes: int, tally: Tally, hang_after: float = 600.0, **pol: Any) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fleetctl-campaign-"))
        self.info = simfleet.create(self.root / "sim", nodes, hang_after)
        self.dir = self.info.dir
        self.tally = tally
        self.env = {**os.environ, "FLEETCTL_CONFIG": str(self.info.config), "FLEETCTL_OPERATOR": "campaign"}
        self.procs: list[subprocess.Popen[str]] = []
        self.cleanups: list[Callable[[], None]] = []
        doc = yaml.safe_load(self.info.config.read_text())
        doc["rollout"] = policy(**pol)
        doc["health"] = {
            "interval": "1s",
            "failures_to_fail": 2,
            "probes": [{"http": "http://{{ ansible_host }}:{{ hc_port }}/health", "timeout": "1s"}],
        }
        self.info.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        self.log_mark = self._log_size()

    @property
    def nodes(self) -> list[str]:
        return [n.name for n in self.info.nodes]

    def node_root(self, name: str) -> Path:
        return self.dir / "nodes" / name

    def close(self) -> None:
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on
                print(f"campaign: cleanup failed: {exc}", file=sys.stderr)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        simfleet.stop(self.dir)
        shutil.rmtree(self.root, ignore_errors=True)

    # fleetctl as a real process
    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [*FLEETCTL, *args],
            env=self.env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen[str], what: str, timeout: float = TIMEOUT) -> Done:
        try:
            out, err = proc.communicate(timeout=timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            code = None
            self.tally.note("hangs", f"{what}: no answer within {timeout:g}s")
        self.scan(what, err)
        return Done(code, out, err)

    def run(self, *args: str, timeout: float = TIMEOUT) -> Done:
        return self.finish(self.start(*args), "fleetctl " + " ".join(args), timeout)

    def scan(self, what: str, err: str) -> None:
        if TRACEBACK in err:
            self.tally.note("tracebacks", f"{what}: {err.strip().splitlines()[-1][:200]}")
        if DB_LOCKED in err:
            self.tally.note("db_locked", f"{what}: {err.strip()[-200:]}")

    # ground truth
    def disk(self) -> dict[str, str | None]:
        return {n.name: simfleet.artifacts.current_version(n.root) for n in self.info.nodes}

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        for _ in range(50):
            try:
                conn = sqlite3.connect(f"file:{self.dir / 'fleetctl.db'}?mode=ro", uri=True, timeout=5)
                try:
                    return conn.execute(query, params).fetchall()
                finally:
                    conn.close()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc) or "unable to open" in str(exc):
                    return []
                time.sleep(0.05)
        raise RuntimeError(f"cannot read the journal: {query}")

    def states(self) -> dict[str, str]:
        rows = self.sql(
            "SELECT host, state FROM run_hosts WHERE run_id = (SELECT id FROM runs ORDER BY created_at DESC LIMIT 1)"
        )
        return dict(rows)  # type: ignore[arg-type]

    def runs(self) -> list[tuple[str, str, str]]:
        return self.sql("SELECT id, kind, status FROM runs ORDER BY created_at")  # type: ignore[return-value]

    def restarts(self) -> list[tuple[str, str, str]]:
        """(node, old, new) per controller restart since the last mark, from the sim server's log."""
        with (self.dir / "sim.log").open("rb") as fh:
            fh.seek(self.log_mark)
            text = fh.read().decode(errors="replace")
        return [m.groups() for m in RESTART.finditer(text)]  # type: ignore[misc]

    def mark(self) -> None:
        self.log_mark = self._log_size()

    def _log_size(self) -> int:
        try:
            return (self.dir / "sim.log").stat().st_size
        except OSError:
            return 0

    # edits
    def host_vars(self, node: str, **values: Any) -> None:
        doc = yaml.safe_load(self.info.inventory.read_text())
        doc["all"]["hosts"][node].update(values)
        self.info.inventory.write_text(yaml.safe_dump(doc, sort_keys=False))

    def wait_for(self, predicate: Callable[[], Any], timeout: float, proc: subprocess.Popen[str]) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if predicate():
                return True
            time.sleep(0.05)
        return False


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            out.add(pid)
    return out


def reap(pids: set[int]) -> None:
    for pid in alive(pids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- checks after a run ends ------------------------------------------------------------------------
def check_fleet(fleet: Fleet, expected: dict[str, str | None], what: str, run_ids: set[str]) -> None:
    """Disk at `expected` (hosts it names), ledger == disk where the disk holds a version, no duplicate
    change, the lock free."""
    t = fleet.tally
    disk = fleet.disk()
    ledger = dict(fleet.sql("SELECT host, version FROM ledger"))
    t.hosts_checked += len(disk)
    for host, version in disk.items():
        if host in expected and version != expected[host]:
            t.note("mismatches", f"{what}: {host} runs {version} on disk, expected {expected[host]}")
        elif host in ledger and VERSION.fullmatch(version or "") and ledger[host] != version:
            t.note("mismatches", f"{what}: {host} ledger says {ledger[host]}, disk {version}")
    # journal side: one history row per (host, run, to) and never a change to the version it came from
    for host, run_id, to, n in fleet.sql(
        "SELECT host, run_id, to_version, COUNT(*) FROM history WHERE source = 'fleetctl' "
        "GROUP BY host, run_id, to_version HAVING COUNT(*) > 1"
    ):
        if run_id in run_ids:
            t.note("duplicates", f"{what}: {host} has {n} history rows to {to} in run {run_id}")
    # node side: an activation is a restart; two in a row to one version is one change made twice
    last: dict[str, str] = {}
    for node, old, new in fleet.restarts():
        if old == new or last.get(node) == new:
            t.note("duplicates", f"{what}: {node} activated {new} twice (node log: {old} -> {new})")
        last[node] = new
    held = [(run, pid) for run, pid in fleet.sql("SELECT run_id, pid FROM locks") if pid and alive({pid})]
    if held:
        t.note("unhandled", f"{what}: the fleet lock is still held by a live process: {held}")


# -- kill -9 trials --------------------------------------------------------------------------------
KINDS = ("rollout", "rollback", "rollout", "rollout+rollback")
MOMENTS = ("batch", "bake", "journal")


def kill_trial(seed: int, nodes: int) -> Tally:
    """Start a run, kill -9 it at a random moment, recover at once (resume, or an emergency rollback)."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    moment = rng.choice(MOMENTS if kind != "rollback" else ("batch", "journal"))
    t = Tally(trials=1)
    fleet = Fleet(nodes, t)
    what = f"kill seed={seed} {kind} at {moment}"
    try:
        start = fleet.disk()
        if kind == "rollback":  # a finished rollout to revert
            setup = fleet.run("rollout", "1.1.0", "--yes")
            if setup.code != 0:
                t.note("unhandled", f"{what}: the setup rollout exited {setup.code}: {setup.err[-300:]}")
                return t
            fleet.mark()
            proc = fleet.start("rollback", "--yes", "--json")
            busy = ("rolling_back", "updating", "verifying")
        else:
            proc = fleet.start("rollout", "1.1.0", "--yes", "--json")
            busy = ("updating",) if moment == "batch" else ("verifying",)
        if moment == "journal":  # from the moment this trial's run is in the journal
            mine = "rollback" if kind == "rollback" else "rollout"
            fleet.wait_for(lambda: fleet.runs() and fleet.runs()[-1][1] == mine and fleet.states(), 60, proc)
            low = 2.0 if kind == "rollout+rollback" else 0.0
            time.sleep(rng.uniform(low, 6.0 if kind != "rollback" else 2.5))
        else:
            # the emergency rollback is the worst morning when some host already runs the new version
            need = ("done",) if kind == "rollout+rollback" else ()

            def moment_reached() -> bool:
                states = set(fleet.states().values())
                return bool(states & set(busy)) and all(n in states for n in need)

            fleet.wait_for(moment_reached, 60, proc)
            time.sleep(rng.uniform(0.0, 0.8))
        kids = descendants(proc.pid)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
            t.kills += 1
        ended = fleet.finish(proc, what)
        if not killed and ended.code != 0:
            t.note(
                "unhandled", f"{what}: the run ended {ended.code} before the kill: {ended.err.strip()[-300:]}"
            )
        kids = alive(kids)
        if kind == "rollout+rollback":
            expected = start  # the operator's emergency: everything back where it was
            done = fleet.run("rollback", "--yes", "--json")
            t.resumes += 1
            settle = 4.0
        else:
            expected = dict.fromkeys(fleet.nodes, "1.0.0" if kind == "rollback" else "1.1.0")
            done = fleet.run("resume", "--yes", "--json")
            t.resumes += 1
            settle = 1.0
            if kind == "rollback" and done.code == 2 and "no paused or interrupted run" in done.err:
                # killed before its rollback run was journaled: the operator simply rolls back again
                done = fleet.run("rollback", "--yes", "--json")
        left = alive(kids)
        if left:
            t.note("orphans", f"{what}: {len(left)} process(es) of the killed fleetctl outlived the recovery")
        time.sleep(settle)  # anything still changing nodes behind the journal's back shows now
        reap(left)
        if kind == "rollout+rollback" and done.code == 2 and "changed any host" in done.err:
            t.observe(f"{what}: the emergency rollback found nothing to do: {done.err.strip()[:160]}")
        elif done.code != 0:
            t.note("unhandled", f"{what}: recovery exited {done.code}: {done.err.strip()[-300:]}")
        runs = fleet.runs()
        check_fleet(fleet, expected, what, {r[0] for r in runs})
        if kind == "rollout+rollback":
            if runs and runs[-1][1] == "rollback" and runs[-1][2] != "succeeded":
                t.note("unhandled", f"{what}: the emergency rollback ended {runs[-1][2]}")
            stuck = [r for r in runs if r[2] in ("running", "planned", "paused")]
            if stuck:  # the journal still offers `resume` of the rollout the operator just rolled back
                t.observe(
                    f"{what}: rollback exited {done.code} ({done.out.strip()[-120:]!r}) and left {stuck}"
                )
        elif not runs or runs[-1][2] != "succeeded":
            t.note("unhandled", f"{what}: final run status {runs[-1:] or None}, expected succeeded")
    finally:
        fleet.close()
    return t


# -- concurrency -----------------------------------------------------------------------------------
def readers(fleet: Fleet, stop: threading.Event) -> threading.Thread:
    """`status --json`, `versions --json` and `runs` in a loop while a run writes, plus one `status --watch`."""

    def loop() -> None:
        watch = fleet.start("status", "--watch", "--json")
        while not stop.is_set():
            for args in (("status", "--json"), ("versions", "--json"), ("runs", "--json")):
                done = fleet.run(*args, timeout=60)
                if done.code not in (0, 2):  # 2: no run in the journal yet
                    fleet.tally.note(
                        "unhandled", f"reader {' '.join(args)} exited {done.code}: {done.err[-200:]}"
                    )
        fleet.finish(watch, "status --watch --json", timeout=60)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def concurrency_trial(nodes: int, control: str) -> Tally:
    """`lock`: three rollouts at once, readers while the winner writes. `pause`/`freeze`/`abort`: sent from
    another process mid-batch, then the run is finished (resume) or checked (abort)."""
    t = Tally(trials=1)
    fleet = Fleet(nodes, t)
    what = f"concurrency {control}"
    try:
        start = fleet.disk()
        stop = threading.Event()
        reading = readers(fleet, stop)
        if control == "lock":
            procs = [fleet.start("rollout", "1.1.0", "--yes", "--json") for _ in range(3)]
            results = [(p.pid, fleet.finish(p, f"{what} rollout")) for p in procs]
            winners = [pid for pid, d in results if d.code == 0]
            if len(winners) != 1:
                t.note(
                    "unhandled", f"{what}: {len(winners)} rollouts ran, exits {[d.code for _, d in results]}"
                )
            for _pid, d in results:
                if d.code != 0 and not (d.code == 4 and winners and f"pid {winners[0]}" in d.err):
                    t.note("unhandled", f"{what}: a loser exited {d.code}: {d.err.strip()[-200:]}")
            expected: dict[str, str | None] = dict.fromkeys(fleet.nodes, "1.1.0")
        else:
            proc = fleet.start("rollout", "1.1.0", "--yes", "--json")
            fleet.wait_for(lambda: "updating" in fleet.states().values(), 60, proc)
            if control == "freeze":
                fleet.run("freeze", "on", "--reason", "campaign: freeze mid-batch")
            else:
                fleet.run(control)
            done = fleet.finish(proc, f"{what} rollout")
            status = fleet.runs()[-1][2] if fleet.runs() else None
            # a run stopped unfinished exits 5 (older builds: 0 for a pause, 3 for a freeze)
            want = {"pause": ((0, 5), "paused"), "freeze": ((1, 3, 5), "paused"), "abort": ((1,), "aborted")}[
                control
            ]
            if done.code not in want[0] or status != want[1]:
                t.note(
                    "unhandled", f"{what}: rollout exited {done.code} with status {status}, expected {want}"
                )
            t.details.append(one_line(f"{control} mid-batch: rollout exit {done.code}, status {status}", 240))
            if control == "freeze":
                fleet.run("freeze", "off", "--reason", "campaign: lifted")
            if control in ("pause", "freeze") and status != "succeeded":
                t.resumes += 1
                resumed = fleet.run("resume", "--yes", "--json")
                if resumed.code != 0:
                    t.note("unhandled", f"{what}: resume exited {resumed.code}: {resumed.err.strip()[-200:]}")
            expected = start if control == "abort" else dict.fromkeys(fleet.nodes, "1.1.0")
        stop.set()
        reading.join(timeout=120)
        check_fleet(fleet, expected, what, {r[0] for r in fleet.runs()})
    finally:
        fleet.close()
    return t


# -- node faults -----------------------------------------------------------------------------------
class SlowHealth:
    """A front for one node's controller on the node's own address: /health answers after `delay` s,
    everything else is relayed at once (so activation still sees /version)."""

    def __init__(self, address: str, port: int, delay: float) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.error import HTTPError
        from urllib.request import urlopen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.startswith("/health"):
                    time.sleep(delay)
                try:
                    with urlopen(f"http://{address}:{port}{self.path}", timeout=5) as resp:
                        status, body = resp.status, resp.read()
                except HTTPError as exc:
                    status, body = exc.code, exc.read()
                except OSError:
                    status, body = 502, b"upstream down"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the prober gave up (over its timeout)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def readonly(path: Path) -> Callable[[], None]:
    """Make `path` read-only even for root (a read-only bind mount); without mount rights, block the target
    release with a file instead. Returns the undo."""
    ok = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
    if (
        ok
        and subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True).returncode == 0
    ):
        return lambda: subprocess.run(["umount", "-l", str(path)], check=False)
    if ok:
        subprocess.run(["umount", "-l", str(path)], check=False)
    (path / "1.1.0").write_text("not a release\n")
    return lambda: None


FAULTS = (
    "update-fails",
    "unreachable",
    "hang",
    "probe-under",
    "probe-over",
    "read-only",
    "artifact-missing",
    "dangling",
    "garbage",
)
MAY_PASS = ("probe-under", "dangling", "garbage")  # a host that may end done: the fault is survivable


def fault_trial(fault: str, nodes: int, seed: int) -> Tally:
    """One node fault on one host (the canary for `hang`, else the last host, in a stage whose budget is
    one host): fleetctl must end (0 or 1), name the host in `status` with its error, keep ledger == disk."""
    t = Tally(trials=1)
    stages = [
        {"name": "canary", "hosts": "canary", "batch": 1, "bake": "5s" if fault == "hang" else "1s",
         "max_failures": 0},
        {"name": "rest", "hosts": "all", "batch": "100%", "bake": "2s", "max_failures": 1},
    ]  # fmt: skip
    fleet = Fleet(nodes, t, hang_after=2.0, stages=stages, max_failures=1)
    what = f"fault {fault}"
    victim = fleet.nodes[0] if fault == "hang" else fleet.nodes[-1]
    target = "2.0.0" if fault == "hang" else "1.1.0"
    mark = Path.home() / f"fleetctl-pwned-{seed}"
    try:
        start = fleet.disk()
        if fault == "update-fails":
            fleet.host_vars(victim, hc_artifact_checksum="sha256:" + "0" * 64)
        elif fault == "unreachable":
            fleet.host_vars(victim, ansible_connection="ssh", ansible_port=1, ansible_user="nobody")
        elif fault in ("probe-under", "probe-over"):
            node = next(n for n in fleet.info.nodes if n.name == victim)
            front = SlowHealth(node.address, fleet.info.port, 0.6 if fault == "probe-under" else 1.6)
            fleet.cleanups.append(front.close)
            fleet.host_vars(victim, hc_port=front.port)
        elif fault == "read-only":
            fleet.cleanups.append(readonly(fleet.node_root(victim) / "releases"))
        elif fault == "artifact-missing":
            fleet.host_vars(victim, hc_artifact_url=f"file://{fleet.dir}/artifacts/missing-1.1.0.tar.gz")
        elif fault in ("dangling", "garbage"):
            name = "9.9.9" if fault == "dangling" else JINJA.replace("SEED", str(seed))
            link = fleet.node_root(victim) / "current"
            link.unlink()
            os.symlink(os.path.join("releases", name), link)
            start[victim] = name
        done = fleet.run("rollout", target, "--yes", "--json")
        if done.code not in (0, 1):
            t.note("unhandled", f"{what}: rollout exited {done.code}: {done.err.strip()[-300:]}")
        if fault == "garbage":  # the from-version travels back in a rollback: it must never be rendered
            fleet.run("rollback", "--yes", "--json")
            if mark.exists():
                t.note("unhandled", f"{what}: a node's version string ran code on the controller ({mark})")
                mark.unlink()
        rollout = next((r[0] for r in fleet.runs() if r[1] == "rollout"), "")
        shown = fleet.run("status", rollout, "--json")
        human = fleet.run("status", rollout)
        fleet.scan(f"{what}: status", human.out)
        if shown.code != 0 or human.code != 0:
            t.note(
                "unhandled", f"{what}: status exited {shown.code}/{human.code}: {human.err.strip()[-200:]}"
            )
        doc = json.loads(shown.out) if shown.code == 0 else {"hosts": []}
        host = next((h for h in doc["hosts"] if h["host"] == victim), None)
        named = host is not None and host["state"] in ("failed", "rolled_back") and bool(host["error"])
        if fault in MAY_PASS and host is not None and host["state"] == "done":
            named = True
        t.details.append(
            one_line(f"{fault}: rollout exit {done.code}, run {doc.get('run', {}).get('status')}, {victim} "
                     f"{host and host['state']}: {host and host['error']}", 240)
        )  # fmt: skip
        if not named:
            t.note("unhandled", f"{what}: {victim} not named with an error in status: {host}")
        elif host and host["error"] and (TRACEBACK in host["error"] or "\n" in host["error"].strip()):
            t.note("unhandled", f"{what}: {victim}'s error is not one line: {host['error'][:300]!r}")
        expected: dict[str, str | None] = {}
        if fault == "hang":
            expected = start
        elif fault in ("update-fails", "unreachable", "read-only", "artifact-missing"):
            expected = {n: ("1.1.0" if n != victim else start[n]) for n in fleet.nodes}
        elif fault == "probe-under":
            expected = dict.fromkeys(fleet.nodes, "1.1.0")
        check_fleet(fleet, expected, what, {r[0] for r in fleet.runs()})
    finally:
        fleet.close()
    return t


# -- the campaign ----------------------------------------------------------------------------------
COLUMNS = (
    "trials", "kills", "resumes", "hosts_checked", "mismatches", "duplicates", "tracebacks", "hangs",
    "db_locked", "orphans", "unhandled",
)  # fmt: skip


def table(t: Tally, seconds: float) -> str:
    heads = [c.replace("_", " ") for c in COLUMNS] + ["seconds"]
    values = [str(getattr(t, c)) for c in COLUMNS] + [f"{seconds:.0f}"]
    widths = [max(len(h), len(v)) for h, v in zip(heads, values, strict=True)]
    line = "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))
    row = "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))
    return f"{line}\n{row}"


def campaign(
    trials: int, seed: int, nodes: int, concurrency: tuple[str, ...], faults: tuple[str, ...], log: Any = None
) -> Tally:
    total = Tally()
    jobs: list[tuple[str, Callable[[], Tally]]] = []
    jobs += [(f"kill {seed + i}", lambda s=seed + i: kill_trial(s, nodes)) for i in range(trials)]
    jobs += [(f"concurrency {c}", lambda c=c: concurrency_trial(nodes, c)) for c in concurrency]
    jobs += [(f"fault {f}", lambda f=f: fault_trial(f, max(3, nodes - 1), seed)) for f in faults]
    for name, job in jobs:
        started = time.monotonic()
        try:
            result = job()
        except Exception as exc:  # noqa: BLE001 - the campaign itself failing is a finding, not a crash
            result = Tally(trials=1)
            result.note("unhandled", f"{name}: the campaign could not run it: {type(exc).__name__}: {exc}")
        total.add(result)
        if log:
            issues = "; ".join(result.notes) or "ok"
            print(f"{name:<28} {time.monotonic() - started:5.1f}s  {issues}", file=log, flush=True)
    return total


def record(t: Tally, args: argparse.Namespace, seconds: float) -> None:
    row = {
        "bench": "campaign",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "quick": args.quick,
        "seed": args.seed,
        "nodes": args.nodes,
        **{c: getattr(t, c) for c in COLUMNS},
        "seconds": round(seconds, 1),
        "notes": t.notes[:50],
        "details": t.details[:50],
    }
    with (HERE / "results.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=None, help="kill -9 trials (default 24, quick 4)")
    parser.add_argument("--seed", type=int, default=1, help="first seed (trial i uses seed+i)")
    parser.add_argument("--nodes", type=int, default=6, help="nodes per simulated fleet")
    parser.add_argument("--quick", action="store_true", help="a slice that runs in about three minutes")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results.jsonl")
    args = parser.parse_args()
    if args.quick:
        trials = 4 if args.trials is None else args.trials
        concurrency: tuple[str, ...] = ("lock",)
        faults: tuple[str, ...] = ("update-fails", "hang", "probe-over", "garbage")
    else:
        trials = 24 if args.trials is None else args.trials
        concurrency, faults = ("lock", "pause", "freeze", "abort"), FAULTS
    started = time.monotonic()
    total = campaign(trials, args.seed, args.nodes, concurrency, faults, log=sys.stderr)
    seconds = time.monotonic() - started
    print(table(total, seconds))
    for note in total.notes:
        print(f"  - {note}")
    if not args.no_record:
        record(total, args, seconds)
    return 0 if not any(total.zeros().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
