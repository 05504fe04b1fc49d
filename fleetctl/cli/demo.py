"""`fleetctl demo`: a simulated fleet in a temp dir, the real commands with short narration, torn down."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

from fleetctl.sim import fleet as simfleet

DEMO_POLICY = {
    "forks": 20,
    "on_failure": "rollback",
    "max_failures": 0,
    "spread_by": "zone",
    "max_unavailable": "50%",
    "stages": [
        {"name": "canary", "hosts": "canary", "batch": 1, "bake": "10s", "max_failures": 0},
        {"name": "ring1", "hosts": "ring1", "batch": "100%", "bake": "3s"},
        {"name": "rest", "hosts": "all", "batch": "50%", "bake": "2s"},
    ],
}


class Demo:
    def __init__(self, config: Path, keep_going: bool) -> None:
        self.env = {**os.environ, "FLEETCTL_CONFIG": str(config), "FLEETCTL_OPERATOR": "demo"}
        self.keep_going = keep_going
        self.failed: list[str] = []

    def say(self, text: str) -> None:
        typer.secho(f"\n== {text}", bold=True, err=True)

    def run(self, args: str, expect: int = 0) -> float:
        typer.secho(f"$ fleetctl {args}", fg="cyan", err=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", "fleetctl", *shlex.split(args)], env=self.env)
        elapsed = time.monotonic() - started
        if code != expect:
            self.failed.append(f"`fleetctl {args}` exited {code}, expected {expect}")
            typer.secho(f"   !! exited {code}, expected {expect}", fg="red", err=True)
            if not self.keep_going:
                raise typer.Exit(1)
        else:
            typer.secho(f"   (exit {code}, {elapsed:.1f}s)", dim=True, err=True)
        return elapsed


def demo(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=3, max=200, help="Simulated nodes.")] = 10,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the simulated fleet running afterwards.")
    ] = False,
    keep_going: Annotated[
        bool, typer.Option("--keep-going", help="Go on after a step that went wrong.")
    ] = False,
) -> None:
    """Try fleetctl end to end on a simulated fleet in a temp dir (about four minutes), then tear it down."""
    workdir = Path(tempfile.mkdtemp(prefix="fleetctl-demo-"))
    hang = 3.0
    info = simfleet.create(workdir / "sim", nodes, hang)
    doc = yaml.safe_load(info.config.read_text())
    doc["rollout"] = DEMO_POLICY
    doc["health"]["interval"] = "1s"
    info.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    d = Demo(info.config, keep_going)
    try:
        d.say(
            f"A simulated fleet of {nodes} nodes in {info.dir}: real node dirs, one real HTTP controller each"
        )
        d.run("hosts")
        d.say("What do the nodes run? Ask them, and record it in the ledger")
        d.run("versions --refresh")
        d.say("Update only the canary to 1.1.0 (-l takes any Ansible host pattern)")
        d.run("rollout 1.1.0 -l canary --yes")
        d.run("history -n 3")
        d.say(
            "A staged rollout of 1.2.0: plan first (touches nothing), then canary -> ring1 -> rest with bakes"
        )
        d.run("plan 1.2.0")
        d.run("rollout 1.2.0 --yes")
        d.run("versions")
        d.say(
            f"2.0.0 is the faulty build: its controller's API blocks {hang:g}s after start."
            " The canary's bake catches it, the run halts, rolls back and quarantines 2.0.0"
        )
        d.run("rollout 2.0.0 --yes", expect=1)
        d.run("status")
        d.say("The quarantine refuses the version until someone clears it with a reason")
        d.run("rollout 2.0.0 --yes", expect=3)
        d.run("quarantine list")
        d.run("versions")
        _extra_steps(d, info.config, info.dir, hang)
        if d.failed:
            typer.secho("\nDemo finished with problems:\n  " + "\n  ".join(d.failed), fg="red", err=True)
            raise typer.Exit(1)
        typer.secho("\nDemo finished: every step behaved as described.", fg="green", bold=True, err=True)
    finally:
        if keep:
            typer.echo(
                f"\nThe simulated fleet is still running: export FLEETCTL_CONFIG={info.config}", err=True
            )
            typer.echo(f"Stop it with: fleetctl sim down --dir {info.dir}", err=True)
        else:
            simfleet.stop(info.dir)


def _freeze_chapter(d: Demo) -> None:
    d.say("A change freeze is one command: rollouts refuse (exit 3, nothing changed), rollbacks still run")
    d.run("freeze on --reason 'investigating controller hangs' --for 2h")
    d.run("freeze status")
    d.run("rollout 1.1.0 -l ring1 --yes", expect=3)
    d.run("rollback --to 1.1.0 -l canary --yes --reason 'restore the canary during the freeze'")
    d.run("audit -n 4")
    d.run("freeze off --reason 'root cause found'")


def _incident_chapter(d: Demo, config: Path, sim_dir: Path, hang: float) -> None:
    d.say(
        "The incident replayed: a careless policy (one stage, 100% batch, no bake, no probes) pushes 2.0.0 "
        "to every node at once"
    )
    doc = yaml.safe_load(config.read_text())
    careful = dict(doc)
    doc["rollout"] = {
        "forks": 10,
        "on_failure": "halt",
        "max_failures": "100%",
        "stages": [{"name": "everything", "hosts": "all", "batch": "100%", "bake": "0s"}],
    }
    doc["health"] = {**doc["health"], "probes": []}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    d.run("quarantine clear 2.0.0 --reason 'replaying the incident on purpose'")
    push = d.run("rollout 2.0.0 --yes")
    time.sleep(hang + 1)
    d.say(f"{hang:g}s later every controller's API blocks, as on that night")
    d.run("sim status --dir " + shlex.quote(str(sim_dir)))
    config.write_text(yaml.safe_dump(careful, sort_keys=False))
    d.say(
        "One command restores every node to the version it ran before (wide, no bakes, health checked at the end)"
    )
    back = d.run("rollback --yes")
    d.run("sim status --dir " + shlex.quote(str(sim_dir)))
    typer.secho(
        f"\n   rollout of 2.0.0: {push:.1f}s   fleet-wide rollback: {back:.1f}s   "
        f"({back / push:.0%} of the rollout's time)",
        bold=True,
        err=True,
    )


def _guard_chapter(d: Demo, workdir: Path, nodes: int) -> None:
    """The night as it really went: the build passed every bake and blocked under the morning's load."""
    info = simfleet.create(workdir / "sim-guard", nodes, 3600.0)  # 2.0.0 blocks only under load here
    try:
        doc = yaml.safe_load(info.config.read_text())
        doc["rollout"] = DEMO_POLICY
        doc["health"]["interval"] = "1s"
        doc["guard"] = {"duration": "24h", "interval": "2s", "failures_to_fail": 2, "max_failures": 0}
        info.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        g = Demo(info.config, d.keep_going)
        g.failed = d.failed
        d.say(
            "The night as it really went: the build passed every bake and blocked hours later, under the "
            "morning's load. A second fleet, with a guard in fleet.yml: after a rollout its hosts stay under "
            "probes (here a round every 2s; 2 failed rounds fail a host; budget 0)"
        )
        g.run("rollout 2.0.0 --yes")
        g.run("guard status")
        g.run("tick")
        d.say("Morning: the load arrives, and every 2.0.0 controller starts to block")
        g.run("sim load --dir " + shlex.quote(str(info.dir)))
        loaded = time.monotonic()
        code, ticks = 0, 0
        while code == 0 and ticks < 10:  # what cron does every few minutes, here every 2s
            time.sleep(2.05)
            ticks += 1
            typer.secho("$ fleetctl tick", fg="cyan", err=True)
            code = subprocess.call([sys.executable, "-m", "fleetctl", "tick"], env=g.env)
        back = time.monotonic() - loaded
        if code != 1:
            d.failed.append(f"the guard did not trip within {ticks} ticks (last tick exited {code})")
        g.run("guard status")
        g.run("sim status --dir " + shlex.quote(str(info.dir)))
        typer.secho(
            "\n   the incident:  cause found after 85 min, every node back after 95 more: 180 min down\n"
            f"   with the guard: the load arrived, and {back:.0f}s later every node was back at 1.0.0, "
            "2.0.0 quarantined, nobody woken",
            bold=True,
            err=True,
        )
    finally:
        simfleet.stop(info.dir)


def _unattended_chapter(d: Demo, config: Path) -> None:
    """03:00, nobody watching: a scheduled tick catches 2.0.0 at the canary, and a webhook says so."""
    d.say(
        "03:00, nobody watching: an unattended tick catches 2.0.0 at the canary, and a webhook tells people"
    )
    recv = subprocess.Popen(
        [sys.executable, "-m", "fleetctl", "notify", "receive", "--bind", "127.0.0.1:0", "--count", "4"],
        env=d.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert recv.stderr is not None
        url = (recv.stderr.readline().split() or [""])[-1]  # "listening on http://127.0.0.1:PORT/hook"
        doc = yaml.safe_load(config.read_text())
        events = ["run.started", "run.halted", "rollback.started", "run.rolled_back"]
        doc["notify"] = [{"webhook": url, "events": events}]
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        d.run("quarantine clear 2.0.0 --reason 'trying it unattended'")
        d.run("schedule add 2.0.0")
        d.run("tick", expect=1)  # no maintenance windows configured: the window is open
        out, _ = recv.communicate(timeout=30)
        typer.echo(out, err=True)
    except subprocess.TimeoutExpired:
        d.failed.append("the webhook receiver did not get the run's four events")
    finally:
        recv.kill()
        doc = yaml.safe_load(config.read_text())
        doc.pop("notify", None)
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
    d.run("notify list")
    d.say("Everyone else watches live in a browser: `fleetctl serve`, then open http://127.0.0.1:8080/")


def _extra_steps(d: Demo, config: Path, sim_dir: Path, hang: float) -> None:
    _freeze_chapter(d)
    _unattended_chapter(d, config)
    _incident_chapter(d, config, sim_dir, hang)
    _guard_chapter(d, sim_dir.parent, max(3, len(simfleet.load(sim_dir).nodes)))
