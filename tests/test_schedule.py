"""Maintenance windows, the queue and `tick`: real simulated fleets, real ansible-runner runs, injected
clocks where the window has to open or close during a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fleetctl import policy, schedule
from fleetctl.context import FleetContext
from tests.conftest import TWO_BATCHES, Clock, fleetctl_proc

NIGHTLY = {
    "windows": [
        {
            "name": "overnight",
            "cron": "0 1 * * *",
            "duration": "4h",
            "cutoff": "30m",
            "timezone": "Europe/London",
        }
    ]
}
UNATTENDED_THEN_OPERATOR = [
    {"name": "canary", "hosts": "canary", "batch": 1, "bake": "0s", "max_failures": 0},
    {"name": "rest", "hosts": "all", "batch": "100%", "bake": "0s", "unattended": False},
]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def context(sim, clock=None) -> FleetContext:
    return FleetContext(config_path=sim.config, env=sim.env, **({"clock": clock} if clock else {}))


def at_version(sim, version: str) -> set[str]:
    return {h for h, v in sim.current().items() if v == version}


def open_now() -> dict:
    """A one-off maintenance window (UTC) around the real now, for CLI runs on the real clock."""
    now = datetime.now(UTC)
    return {
        "windows": [
            {
                "name": "today",
                "start": (now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M"),
                "end": (now + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M"),
            }
        ]
    }


# -- windows -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "at, expected",
    [
        # London spring-forward night: 01:00 local does not exist, so the window opens at 02:00 BST (01:00Z).
        ("2026-03-29T00:30:00Z", (False, None, None, "2026-03-29T01:00:00+00:00")),
        (
            "2026-03-29T02:00:00Z",
            (True, "overnight", "2026-03-29T04:30:00+00:00", "2026-03-30T00:00:00+00:00"),
        ),
        # Past the cutoff (04:30Z = 05:30 BST) the window is still there, but no batch may start.
        ("2026-03-29T04:45:00Z", (False, "overnight", None, "2026-03-30T00:00:00+00:00")),
        # Fall-back night: 01:00 BST (00:00Z) happens once; 4h later it is 04:00 GMT.
        (
            "2026-10-25T03:29:00Z",
            (True, "overnight", "2026-10-25T03:30:00+00:00", "2026-10-26T01:00:00+00:00"),
        ),
    ],
)
def test_schedule_windows_at_fixed_instants(make_sim, cli, at, expected):
    sim = make_sim(nodes=3)
    sim.write_config(maintenance=NIGHTLY)
    doc = cli.json(["schedule", "windows", "--at", at, "--json"], env=sim.env)
    assert (doc["open"], doc["window"], doc["closes_at"], doc["next_open"]) == expected
    text = cli(["schedule", "windows", "--at", at], env=sim.env).stdout
    assert text.startswith("open" if expected[0] else "closed")


def test_no_maintenance_windows_means_unrestricted(make_sim, cli):
    sim = make_sim(nodes=3)
    assert cli.json("schedule windows --json", env=sim.env) == {
        "open": True,
        "window": None,
        "closes_at": None,
        "next_open": None,
    }


BAD_WINDOWS = [
    (
        {"name": "tz-typo", "cron": "0 1 * * *", "duration": "4h", "timezone": "Europe/Londn"},
        "unknown timezone",
    ),
    ({"name": "bad-cron", "cron": "0 25 * * *", "duration": "1h"}, "bad cron"),
    ({"name": "minus", "cron": "0 1 * * *", "duration": "-4h"}, "negative"),
    ({"name": "backwards", "start": "2026-12-20 00:00", "end": "2026-12-01 00:00"}, "before start"),
]


@pytest.mark.parametrize("section", ["freeze", "maintenance"])
@pytest.mark.parametrize("window, problem", BAD_WINDOWS, ids=[w["name"] for w, _ in BAD_WINDOWS])
def test_bad_window_definitions_exit_2_naming_the_window(make_sim, cli, section, window, problem):
    sim = make_sim(nodes=3)
    sim.write_config(**{section: {"windows": [window]}})
    for args in ("freeze status", "schedule windows", "tick", "schedule add 1.1.0"):
        result = cli(args, env=sim.env, code=2)
        assert f"window '{window['name']}'" in result.stderr and problem in result.stderr, result.stderr
    assert set(sim.current().values()) == {"1.0.0"}


# -- the queue -----------------------------------------------------------------------------------------
def test_queue_add_list_remove(make_sim, cli):
    sim = make_sim(nodes=3)
    first = cli.json("schedule add 1.1.0 --not-before 2030-01-01T01:00:00+01:00 --json", env=sim.env)
    assert first["not_before"] == "2030-01-01T00:00:00+00:00" and first["status"] == "queued"
    cli("schedule add 1.2.0 -l ring1", env=sim.env)
    items = cli.json("schedule list --json", env=sim.env)["queue"]
    assert [(i["id"], i["version"], i["pattern"], i["by"]) for i in items] == [
        (1, "1.1.0", None, "tester"),
        (2, "1.2.0", "ring1", "tester"),
    ]
    assert "1.2.0" in cli("schedule list", env=sim.env).stdout
    cli("schedule remove 1", env=sim.env)
    assert [i["id"] for i in cli.json("schedule list --json", env=sim.env)["queue"]] == [2]
    assert "no queued rollout with id 1" in cli("schedule remove 1", env=sim.env, code=2).stderr
    actions = [e["action"] for e in cli.json("audit --json", env=sim.env)["audit"]]
    assert actions == ["schedule.remove", "schedule.add", "schedule.add"]


@pytest.mark.parametrize(
    "args, flag",
    [
        ("schedule add 1..0", "1..0"),
        ("schedule add 1.1.0 --not-before tomorrow", "--not-before"),
        ("schedule add 1.1.0 --not-before 2030-01-01T01:00:00", "--not-before"),
        ("schedule add 1.1.0 -l nosuchgroup", "-l"),
        ("schedule remove 7", "7"),
        ("schedule remove seven", "ID"),
        ("schedule windows --at noon", "--at"),
        ("schedule install", "--systemd"),
        ("schedule install --systemd --cron", "--cron"),
    ],
)
def test_bad_schedule_input_exits_2_and_writes_nothing(make_sim, cli, args, flag):
    sim = make_sim(nodes=3)
    assert flag in cli(args, env=sim.env, code=2).stderr
    assert cli.json("schedule list --json", env=sim.env) == {"queue": []}
    assert cli.json("audit --json", env=sim.env) == {"audit": []}


def test_install_prints_systemd_units_or_a_crontab_line(make_sim, cli):
    sim = make_sim(nodes=3)
    units = cli("schedule install --systemd", env=sim.env).stdout
    assert "[Service]" in units and "[Timer]" in units and "OnCalendar=*:0/5" in units
    assert f"--config {sim.config} tick" in units
    [line] = [ln for ln in cli("schedule install --cron", env=sim.env).stdout.splitlines() if ln[:1] != "#"]
    assert line.startswith("*/5 * * * * ") and line.endswith(" tick 2>&1 | logger -t fleetctl-tick")
    cron_line = schedule.install_units("cron", "/opt/fleet ctl/bin/fleetctl", "/etc/f.yml").splitlines()[1]
    assert cron_line.count("'") == 2
    assert '"/opt/fleet ctl/bin/fleetctl"' in schedule.install_units(
        "systemd", "/opt/fleet ctl/bin/fleetctl", "/f"
    )
    assert "check" in units.split("#ExecStartPre=", 1)[1].splitlines()[0]  # the preflight, offered
    guard = cli("schedule install --guard-watch", env=sim.env).stdout
    assert f"--config {sim.config} guard watch" in guard and "Restart=always" in guard
    assert "User=" in guard and "[Timer]" not in guard
    cli("schedule install --systemd --guard-watch", env=sim.env, code=2)


# -- tick ----------------------------------------------------------------------------------------------
def test_tick_outside_a_window_does_nothing_in_one_line(make_sim, cli):
    sim = make_sim(nodes=3)
    sim.write_config(
        maintenance={"windows": [{"name": "later", "start": "2099-01-01 01:00", "end": "2099-01-01 05:00"}]}
    )
    cli("schedule add 1.1.0", env=sim.env)
    result = cli("tick", env=sim.env)
    assert result.stdout == "nothing to do: window closed; next opens 2099-01-01T01:00:00Z\n"
    proc = fleetctl_proc(["tick"], sim.env)  # the real entry point, as cron runs it: plain text
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out, err) == (0, result.stdout, "")
    assert cli.json("schedule list --json", env=sim.env)["queue"][0]["status"] == "queued"
    assert set(sim.current().values()) == {"1.0.0"}
    assert cli.json("runs --json", env=sim.env)["runs"] == []


def test_tick_says_why_it_does_nothing(make_sim):
    sim = make_sim(nodes=3)
    ctx = context(sim)
    assert schedule.tick(ctx).message == "nothing to do: queue empty"
    schedule.queue_add(ctx, "1.1.0", not_before="2099-01-01T00:00:00Z")
    assert schedule.tick(ctx).message == "nothing to do: queue item 1 is not due before 2099-01-01T00:00:00Z"
    schedule.queue_add(ctx, "1.1.0")
    policy.freeze_on(ctx, "INC-5: investigating")
    outcome = schedule.tick(ctx)
    assert outcome.action == "nothing"
    assert outcome.message.startswith("nothing to do: frozen by manual #1") and "INC-5" in outcome.message
    assert ctx.store.runs.list() == [] and set(sim.current().values()) == {"1.0.0"}


def test_tick_updates_unattended_stages_stops_before_an_operator_stage_and_resume_finishes(make_sim, cli):
    sim = make_sim(nodes=3, stages=UNATTENDED_THEN_OPERATOR)
    sim.write_config(maintenance=open_now())
    cli("schedule add 1.1.0", env=sim.env)
    result = cli("tick", env=sim.env)
    last = result.stdout.splitlines()[-1]
    assert last.startswith("started run ") and "queue item 1" in last
    assert "paused: operator stage: rest needs `fleetctl resume" in last
    assert "\x1b[" not in result.stdout + result.stderr  # journald: no colours, no bars
    assert at_version(sim, "1.1.0") == {"node-001"}
    [run] = cli.json("runs --json", env=sim.env)["runs"]
    assert run["status"] == "paused" and run["reason"].startswith("operator stage: rest")
    [item] = cli.json("schedule list --json", env=sim.env)["queue"]
    assert (item["status"], item["run"]) == ("started", run["id"])

    again = cli("tick", env=sim.env).stdout
    assert again == f"nothing to do: run {run['id']} is paused ({run['reason']}) and needs an operator\n"

    cli(["resume", run["id"], "--yes"], env=sim.env)
    assert set(sim.current().values()) == {"1.1.0"}
    assert cli.json("schedule list --json", env=sim.env) == {"queue": []}
    assert cli("tick", env=sim.env).stdout == "nothing to do: queue empty\n"


def test_window_cutoff_mid_run_pauses_and_the_next_window_resumes(make_sim):
    sim = make_sim(nodes=3, stages=TWO_BATCHES)
    sim.write_config(maintenance=NIGHTLY)
    clock = Clock(utc("2026-07-01 00:10"))  # 01:10 BST: inside `overnight`, cutoff 04:30 BST
    ctx = context(sim, clock)
    schedule.queue_add(ctx, "1.1.0")

    def sink(event) -> None:  # the canary's update takes "three and a half hours"
        if event.kind == "host.result":
            clock.at = utc("2026-07-01 03:45")

    ctx.events = sink
    outcome = schedule.tick(ctx)
    assert outcome.action == "started" and outcome.run is not None
    assert outcome.run.status == "paused"
    assert outcome.run.status_reason == "window closed: overnight cutoff at 2026-07-01T03:30:00Z"
    assert at_version(sim, "1.1.0") == {"node-001"}

    ctx.events = lambda _e: None
    idle = schedule.tick(ctx)
    assert idle.action == "nothing"
    assert (
        idle.message == "nothing to do: window overnight is past its cutoff; next opens 2026-07-02T00:00:00Z"
    )

    clock.at = utc("2026-07-02 00:05")
    resumed = schedule.tick(ctx)
    assert resumed.action == "resumed" and resumed.run is not None and resumed.run.id == outcome.run.id
    assert resumed.run.status == "succeeded"
    assert set(sim.current().values()) == {"1.1.0"}
    item = ctx.store.queue.get(1)
    assert item is not None and (item.status, item.run_id) == ("done", outcome.run.id)
    assert schedule.tick(ctx).message == "nothing to do: queue empty"


# -- install: quoting and User= (issue 9) ----------------------------------------------------------------
def _odd_install(tmp_path):
    """A fleetctl and a fleet.yml at paths with spaces, %, $ and quotes; the fleetctl prints its argv."""
    import os

    bindir = tmp_path / "fleet ctl %d $HOME" / "bin"
    bindir.mkdir(parents=True)
    exe = bindir / "fleetctl"
    out = tmp_path / "argv.txt"
    exe.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{out}'\n")
    exe.chmod(0o755)
    cfg = tmp_path / "it's 100% fleet.yml"
    cfg.write_text("inventory: x\n")
    if os.geteuid() == 0:
        os.chown(cfg, 1, 1)  # owned by another user (daemon): User= names it, not the caller
    return exe, cfg, out


def test_install_cron_line_escapes_percent_and_runs_as_the_owner(tmp_path):
    import pwd
    import subprocess

    exe, cfg, out = _odd_install(tmp_path)
    text = schedule.install_units("cron", exe, cfg)
    owner = pwd.getpwuid(cfg.stat().st_uid).pw_name
    comment, line, offer, checked = text.splitlines()
    assert comment.startswith(f"# crontab -u {owner} -e")
    assert offer.startswith("# or, to tick only when the preflight passes")
    assert checked.startswith("# */5 ") and " check " in checked and "%" not in checked.replace("\\%", "")
    assert "%" not in line.replace("\\%", "")  # every % escaped: cron would cut the line there
    # What cron does with the line (crontab(5)): an unescaped % ends the command, `\%` is a %; then sh.
    command = line.split(" ", 5)[5].replace("\\%", "\0").split("%")[0].replace("\0", "%")
    command = command.replace("| logger -t fleetctl-tick", "")
    subprocess.run(["/bin/sh", "-c", command], check=True, timeout=30)
    assert out.read_text().splitlines() == ["--config", str(cfg), "tick"]


def test_install_systemd_quotes_execstart_and_sets_user(tmp_path):
    import pwd
    import shutil
    import subprocess

    exe, cfg, _ = _odd_install(tmp_path)
    text = schedule.install_units("systemd", exe, cfg)
    owner = pwd.getpwuid(cfg.stat().st_uid).pw_name
    assert f"\nUser={owner}\n" in text
    [start] = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    quoted = '"' + str(exe).replace("%", "%%") + '"'  # the executable's path is not $-expanded
    assert start.startswith(f"ExecStart={quoted} --config ")
    args = start[len(f"ExecStart={quoted}") :]
    assert "$" not in args.replace("$$", "") and "%" not in start.replace("%%", "")
    assert (
        schedule.install_units("systemd", "/usr/bin/fleetctl", cfg, user="deploy").count("User=deploy") == 1
    )
    if shutil.which("systemd-analyze") is None:
        return
    units = tmp_path / "units"
    units.mkdir()
    for chunk in text.split("# /etc/systemd/system/")[1:]:
        name, _, body = chunk.partition("\n")
        (units / name.strip()).write_text(body)
    verify = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(units / "fleetctl-tick.service"),
            str(units / "fleetctl-tick.timer"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr


@pytest.mark.parametrize("kind", ["cron", "systemd"])
def test_install_refuses_paths_it_cannot_write(kind):
    from fleetctl.errors import UsageError

    with pytest.raises(UsageError, match="control character"):
        schedule.install_units(kind, "/opt/a\nb/fleetctl", "/etc/f.yml")
    if kind == "cron":
        with pytest.raises(UsageError, match="backslash"):
            schedule.install_units(kind, "/opt/a\\%b/fleetctl", "/etc/f.yml")
