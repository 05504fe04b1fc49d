"""fleet.yml: where it is found, how it is validated, and the errors a user sees (field named, exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetctl.config import (
    FleetConfig,
    HealthConfig,
    Probe,
    RollbackPolicy,
    RolloutPolicy,
    find_config,
    load_config,
)
from fleetctl.errors import ConfigError, ExitCode
from fleetctl.units import CountOrPercent


def write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert err.exit_code == ExitCode.USAGE == 2
    assert "\n" not in err.message
    assert err.hint
    return err


# --- find_config -----------------------------------------------------------------------------------------


def test_find_config_explicit_wins_over_env_and_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = write(tmp_path / "a" / "fleet.yml", {"inventory": "i.yml"})
    env_cfg = write(tmp_path / "b" / "fleet.yml", {"inventory": "i.yml"})
    write(tmp_path / "fleet.yml", {"inventory": "i.yml"})
    monkeypatch.chdir(tmp_path)
    assert find_config(explicit, env={"FLEETCTL_CONFIG": str(env_cfg)}) == explicit.resolve()


def test_find_config_env_wins_over_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_cfg = write(tmp_path / "b" / "other.yml", {"inventory": "i.yml"})
    write(tmp_path / "fleet.yml", {"inventory": "i.yml"})
    monkeypatch.chdir(tmp_path)
    assert find_config(None, env={"FLEETCTL_CONFIG": str(env_cfg)}) == env_cfg.resolve()


@pytest.mark.parametrize("env", [{}, {"FLEETCTL_CONFIG": ""}, {"OTHER": "x"}])
def test_find_config_falls_back_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict) -> None:
    cfg = write(tmp_path / "fleet.yml", {"inventory": "i.yml"})
    monkeypatch.chdir(tmp_path)
    found = find_config(None, env=env)
    assert found == cfg.resolve()
    assert found.is_absolute()


def test_find_config_relative_explicit_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "sub" / "f.yml", {"inventory": "i.yml"})
    monkeypatch.chdir(tmp_path)
    assert find_config(Path("sub/f.yml"), env={}) == (tmp_path / "sub" / "f.yml").resolve()


@pytest.mark.parametrize(
    "how, origin",
    [("explicit", "--config"), ("env", "FLEETCTL_CONFIG"), ("cwd", "./fleet.yml"), ("dir", "--config")],
)
def test_find_config_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, origin: str) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nope.yml"
    explicit = {"explicit": missing, "dir": tmp_path}.get(how)
    env = {"FLEETCTL_CONFIG": str(missing)} if how == "env" else {}
    with pytest.raises(ConfigError) as info:
        find_config(explicit, env=env)
    assert info.value.exit_code == 2
    assert origin in info.value.message
    assert "--config" in (info.value.hint or "")


# --- load_config: a good file ----------------------------------------------------------------------------


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "fleet.yml", {"inventory": "inventory.yml"}))
    assert cfg.path == tmp_path / "fleet.yml"
    assert cfg.base_dir == tmp_path
    assert cfg.inventory == [(tmp_path / "inventory.yml").resolve()]
    assert cfg.component == "host-controller"
    assert cfg.rollout.on_failure == "rollback"
    assert cfg.rollout.max_failures == CountOrPercent(0, False)
    assert [s.name for s in cfg.rollout.stages] == ["all"]
    assert cfg.rollback.batch == CountOrPercent(100, True)
    assert cfg.health.failures_to_fail == 2
    assert cfg.playbooks is None
    assert cfg.freeze.windows == [] and cfg.maintenance.windows == []


def test_full_config(tmp_path: Path) -> None:
    doc = {
        "inventory": ["inv/a.yml", "/abs/b.ini"],
        "state": "sqlite:///x.db",
        "component": "hc",
        "playbooks": "pb",
        "vars": {"hc_root": "/opt/hc"},
        "rollout": {
            "forks": 5,
            "on_failure": "halt",
            "max_failures": "10%",
            "spread_by": "zone",
            "max_unavailable": 1,
            "stages": [
                {"name": "canary", "hosts": "canary", "batch": 1, "bake": "5m", "max_failures": 0},
                {
                    "name": "rest",
                    "hosts": "all:!canary",
                    "batch": "25%",
                    "bake": "1h30m",
                    "unattended": False,
                },
            ],
        },
        "rollback": {"forks": 100, "batch": "50%"},
        "health": {
            "interval": "5s",
            "failures_to_fail": 3,
            "probes": [
                {
                    "http": "http://{{ ansible_host }}:{{ hc_port }}/health",
                    "timeout": "1s",
                    "expect_body": "ok",
                },
                {"tcp": "{{ ansible_host }}:22"},
            ],
        },
        "freeze": {"windows": [{"name": "xmas", "start": "2026-12-20 00:00", "end": "2027-01-02 00:00"}]},
        "maintenance": {
            "windows": [{"name": "nightly", "cron": "0 1 * * *", "duration": "4h", "cutoff": "30m"}]
        },
    }
    cfg = load_config(write(tmp_path / "fleet.yml", doc))
    assert cfg.inventory == [(tmp_path / "inv" / "a.yml").resolve(), Path("/abs/b.ini")]
    assert cfg.playbooks == (tmp_path / "pb").resolve()
    assert cfg.vars == {"hc_root": "/opt/hc"}
    r = cfg.rollout
    assert (r.forks, r.on_failure, r.spread_by) == (5, "halt", "zone")
    assert r.max_failures == CountOrPercent(10, True)
    assert r.max_unavailable == CountOrPercent(1, False)
    canary, rest = r.stages
    assert (canary.batch, canary.bake, canary.max_failures) == (
        CountOrPercent(1, False),
        300.0,
        CountOrPercent(0, False),
    )
    assert (rest.batch, rest.bake, rest.max_failures, rest.unattended) == (
        CountOrPercent(25, True),
        5400.0,
        None,
        False,
    )
    assert cfg.rollback == RollbackPolicy(forks=100, batch=CountOrPercent(50, True))
    assert cfg.health.interval == 5.0 and cfg.health.failures_to_fail == 3
    http, tcp = cfg.health.probes
    assert (http.kind, http.timeout, http.expect_body) == ("http", 1.0, "ok")
    assert (tcp.kind, tcp.target, tcp.timeout) == ("tcp", "{{ ansible_host }}:22", 2.0)
    assert [w.name for w in cfg.freeze.windows] == ["xmas"]
    assert cfg.maintenance.windows[0].duration == 4 * 3600 and cfg.maintenance.windows[0].cutoff == 1800


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "fleet.yml", {"inventory": "i.yml"}))
    with pytest.raises(ValueError):
        cfg.component = "x"  # type: ignore[misc]


@pytest.mark.parametrize("inventory", ["inv.yml", "./inv.yml", "sub/../inv.yml"])
def test_relative_inventory_resolves_against_config_dir_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inventory: str
) -> None:
    cfg_path = write(tmp_path / "conf" / "fleet.yml", {"inventory": inventory})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(cfg_path).inventory == [(tmp_path / "conf" / "inv.yml").resolve()]


def test_home_in_inventory_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(write(tmp_path / "fleet.yml", {"inventory": "~/inv.yml"}))
    assert cfg.inventory == [tmp_path / "home" / "inv.yml"]


@pytest.mark.parametrize("field", ["key", "known_hosts"])
def test_relative_ssh_paths_resolve_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """DESIGN/config docstring: relative paths in fleet.yml resolve against fleet.yml's own directory."""
    cfg_path = write(tmp_path / "conf" / "fleet.yml", {"inventory": "i.yml", "ssh": {field: "keys/f"}})
    monkeypatch.chdir(tmp_path)
    cfg = load_config(cfg_path)
    assert getattr(cfg.ssh, field) == (tmp_path / "conf" / "keys" / "f").resolve()


# --- state_url -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state, override, expected",
    [
        (None, None, "sqlite:///{dir}/fleetctl.db"),
        ("journal.db", None, "sqlite:///{dir}/journal.db"),
        ("data/j.db", None, "sqlite:///{dir}/data/j.db"),
        ("/var/lib/fleetctl/j.db", None, "sqlite:////var/lib/fleetctl/j.db"),
        ("sqlite:////srv/x.db", None, "sqlite:////srv/x.db"),
        ("postgresql+psycopg://u@db/fleet", None, "postgresql+psycopg://u@db/fleet"),
        ("journal.db", "sqlite:////override.db", "sqlite:////override.db"),
        (None, "postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_state_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str | None, override: str | None, expected: str
) -> None:
    doc: dict[str, Any] = {"inventory": "i.yml"}
    if state is not None:
        doc["state"] = state
    cfg_path = write(tmp_path / "conf" / "fleet.yml", doc)
    monkeypatch.chdir(tmp_path)
    url = load_config(cfg_path).state_url(override)
    assert url == expected.format(dir=(tmp_path / "conf").resolve())


# --- load_config: errors ---------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    err = config_error(tmp_path / "nope.yml")
    assert "cannot read" in err.message and "nope.yml" in err.message


@pytest.mark.parametrize(
    "text, line",
    [
        ("inventory: [a, b\n", None),
        ("inventory: i.yml\nrollout:\n  forks: 1\n   stages: x\n", 4),
        ("inventory: i.yml\n\tbad: tab\n", 2),
        ("inventory: 'unterminated\n", None),
    ],
)
def test_bad_yaml(tmp_path: Path, text: str, line: int | None) -> None:
    err = config_error(write(tmp_path / "fleet.yml", text))
    assert "not valid YAML" in err.message
    if line is not None:
        assert f"line {line}" in err.message


@pytest.mark.parametrize(
    "text", ["", "# just a comment\n", "- a\n- b\n", "just a string\n", "42\n", "null\n"]
)
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    err = config_error(write(tmp_path / "fleet.yml", text))
    assert "expected a mapping" in err.message


def test_missing_inventory(tmp_path: Path) -> None:
    err = config_error(write(tmp_path / "fleet.yml", {"state": "x.db"}))
    assert "inventory" in err.message and "missing" in err.message


@pytest.mark.parametrize("text", ["inventory:\n", "inventory: null\n", "inventory: []\n", "inventory: ''\n"])
def test_empty_inventory_is_an_error(tmp_path: Path, text: str) -> None:
    """`inventory:` with no value must not become Path('None') or an empty list of sources."""
    err = config_error(write(tmp_path / "fleet.yml", text))
    assert "inventory" in err.message


# Each bad setting, and the dotted field the message must name.
BAD = [
    ({"bogus": 1}, "bogus", "Extra inputs"),
    ({"rollout": {"bogus": 1}}, "rollout.bogus", "Extra inputs"),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all", "batch": "abc"}]}},
        "rollout.stages.0.batch",
        "count or percent",
    ),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all", "batch": "150%"}]}},
        "rollout.stages.0.batch",
        "count or percent",
    ),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all", "batch": -1}]}},
        "rollout.stages.0.batch",
        "negative",
    ),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all", "batch": True}]}},
        "rollout.stages.0.batch",
        "count or percent",
    ),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all"}, {"name": "b", "hosts": "x", "batch": "1.5"}]}},
        "rollout.stages.1.batch",
        "count or percent",
    ),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all", "bake": "soon"}]}},
        "rollout.stages.0.bake",
        "duration",
    ),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all", "bake": "-5m"}]}},
        "rollout.stages.0.bake",
        "negative",
    ),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all", "max_failures": "x"}]}},
        "rollout.stages.0.max_failures",
        "count or percent",
    ),
    ({"rollout": {"stages": [{"name": "a"}]}}, "rollout.stages.0.hosts", "required"),
    ({"rollout": {"stages": [{"hosts": "all"}]}}, "rollout.stages.0.name", "required"),
    (
        {"rollout": {"stages": [{"name": "a", "hosts": "all", "extra": 1}]}},
        "rollout.stages.0.extra",
        "Extra inputs",
    ),
    ({"rollout": {"on_failure": "explode"}}, "rollout.on_failure", "'rollback' or 'halt'"),
    ({"rollout": {"forks": 0}}, "rollout.forks", "greater than or equal to 1"),
    ({"rollout": {"forks": 501}}, "rollout.forks", "less than or equal to 500"),
    ({"rollout": {"max_failures": "200%"}}, "rollout.max_failures", "count or percent"),
    ({"rollout": {"max_unavailable": "abc"}}, "rollout.max_unavailable", "count or percent"),
    ({"rollout": {"stages": []}}, "rollout", "at least one stage"),
    (
        {
            "rollout": {
                "stages": [
                    {"name": "a", "hosts": "x"},
                    {"name": "b", "hosts": "y"},
                    {"name": "a", "hosts": "z"},
                ]
            }
        },
        "rollout",
        "stage names must be unique: a",
    ),
    ({"rollback": {"batch": "0.5"}}, "rollback.batch", "count or percent"),
    ({"rollback": {"forks": 0}}, "rollback.forks", "greater than or equal to 1"),
    ({"health": {"probes": [{"timeout": 1}]}}, "health.probes.0", "exactly one of http, tcp, playbook, ssh"),
    ({"health": {"probes": [{"http": "http://x/", "tcp": "x:1"}]}}, "health.probes.0", "exactly one of"),
    (
        {"health": {"probes": [{"http": "http://x/"}, {"tcp": "x:1", "ssh": "true", "playbook": "h.yml"}]}},
        "health.probes.1",
        "exactly one of",
    ),
    (
        {"health": {"probes": [{"http": "http://x/", "timeout": 0}]}},
        "health.probes.0",
        "timeout must be positive",
    ),
    ({"health": {"probes": [{"http": "http://x/", "timeout": "1x"}]}}, "health.probes.0.timeout", "duration"),
    ({"health": {"probes": [{"http": "http://x/", "bogus": 1}]}}, "health.probes.0.bogus", "Extra inputs"),
    ({"health": {"failures_to_fail": 0}}, "health.failures_to_fail", "greater than or equal to 1"),
    ({"health": {"interval": "-1s"}}, "health.interval", "negative"),
    ({"ssh": {"connect_timeout": "x"}}, "ssh.connect_timeout", "duration"),
    ({"vars": ["a"]}, "vars", "dictionary"),
    # issue 9: a regex that cannot compile, and durations that cannot be zero
    (
        {"health": {"probes": [{"http": "http://x/"}, {"http": "http://y/", "expect_body": "ok("}]}},
        "health.probes.1.expect_body",
        "not a valid regular expression: missing ), unterminated subpattern",
    ),
    (
        {"health": {"probes": [{"http": "http://x/", "expect_body": "[a-"}]}},
        "health.probes.0.expect_body",
        "regular",
    ),
    ({"health": {"interval": 0}}, "health.interval", "must be a positive duration (e.g. 10s), not 0"),
    ({"health": {"interval": "0s"}}, "health.interval", "positive duration"),
    (
        {"health": {"probes": [{"tcp": "x:1", "timeout": "0s"}]}},
        "health.probes.0",
        "timeout must be positive",
    ),
    ({"ssh": {"connect_timeout": 0}}, "ssh.connect_timeout", "positive duration"),
    ({"ssh": {"command_timeout": "0m"}}, "ssh.command_timeout", "positive duration"),
    # issue 9: the checksum policy is fleet.yml's artifacts section, nowhere else
    ({"artifacts": {"require_checksum": "maybe"}}, "artifacts.require_checksum", "boolean"),
    ({"artifacts": {"require_checksums": False}}, "artifacts.require_checksums", "Extra inputs"),
    ({"vars": {"hc_require_checksum": False}}, "vars", "write `artifacts: {require_checksum: false}`"),
]


@pytest.mark.parametrize("doc, field, text", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_settings_name_the_field(tmp_path: Path, doc: dict, field: str, text: str) -> None:
    err = config_error(write(tmp_path / "fleet.yml", {"inventory": "i.yml", **doc}))
    assert err.message.startswith(f"fleet.yml: {field}: "), err.message
    assert text in err.message


@pytest.mark.parametrize("value", [".inf", ".nan", "1e400"])
def test_non_finite_batch_is_a_config_error_not_a_crash(tmp_path: Path, value: str) -> None:
    """YAML `.inf`/`.nan` are floats: they must end as ConfigError naming the field, not OverflowError."""
    text = f"inventory: i.yml\nrollout:\n  stages:\n    - {{name: a, hosts: all, batch: {value}}}\n"
    err = config_error(write(tmp_path / "fleet.yml", text))
    assert err.message.startswith("fleet.yml: rollout.stages.0.batch: ")


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_non_finite_bake_is_a_config_error(tmp_path: Path, value: str) -> None:
    text = f"inventory: i.yml\nrollout:\n  stages:\n    - {{name: a, hosts: all, bake: {value}}}\n"
    err = config_error(write(tmp_path / "fleet.yml", text))
    assert err.message.startswith("fleet.yml: rollout.stages.0.bake: ")


# Bad freeze/maintenance windows: the message names the section and the window.
BAD_WINDOWS = [
    ("freeze", {"name": "xmas", "cron": "0 0 * *", "duration": "1h"}, "bad cron"),
    ("freeze", {"name": "xmas", "cron": "61 0 * * *", "duration": "1h"}, "bad cron"),
    ("freeze", {"name": "xmas", "start": "2026-01-02 00:00", "end": "2026-01-01 00:00"}, "before start"),
    ("freeze", {"name": "xmas", "start": "2026-01-02 00:00"}, "needs both start and end"),
    ("freeze", {"name": "xmas", "start": "not a date", "end": "2026-01-01"}, "not a date"),
    ("maintenance", {"name": "nightly", "cron": "0 1 * * *"}, "needs both cron"),
    ("maintenance", {"name": "nightly", "cron": "0 1 * * *", "duration": "1h", "cutoff": "2h"}, "cutoff"),
    ("maintenance", {"name": "nightly", "cron": "0 1 * * *", "duration": "0s"}, "longer than zero"),
    ("maintenance", {"name": "nightly", "cron": "0 1 * * *", "duration": "soon"}, "duration"),
    (
        "maintenance",
        {"name": "nightly", "cron": "0 1 * * *", "duration": "1h", "timezone": "Mars/Base"},
        "unknown timezone",
    ),
    (
        "maintenance",
        {"name": "nightly", "cron": "0 1 * * *", "duration": "1h", "bogus": 1},
        "unknown field 'bogus'",
    ),
    ("maintenance", {"name": "nightly"}, "give start and end"),
    (
        "maintenance",
        {
            "name": "nightly",
            "cron": "0 1 * * *",
            "duration": "1h",
            "start": "2026-01-01",
            "end": "2026-01-02",
        },
        "not both",
    ),
]


@pytest.mark.parametrize("section, window, text", BAD_WINDOWS, ids=[f"{b[0]}-{b[2]}" for b in BAD_WINDOWS])
def test_bad_window_names_the_window(tmp_path: Path, section: str, window: dict, text: str) -> None:
    good = {"name": "fine", "cron": "0 2 * * *", "duration": "1h"}
    doc = {"inventory": "i.yml", section: {"windows": [good, window]}}
    err = config_error(write(tmp_path / "fleet.yml", doc))
    assert err.message.startswith(f"fleet.yml: {section}.windows.1: ")
    assert f"window {window['name']!r}" in err.message
    assert text in err.message


def test_duplicate_window_names(tmp_path: Path) -> None:
    w = {"name": "n", "cron": "0 1 * * *", "duration": "1h"}
    err = config_error(
        write(tmp_path / "fleet.yml", {"inventory": "i.yml", "maintenance": {"windows": [w, w]}})
    )
    assert "'n'" in err.message and "defined twice" in err.message and "maintenance" in err.message


@pytest.mark.parametrize("name", [None, "", "  "])
def test_window_without_name(tmp_path: Path, name: str | None) -> None:
    w = {"name": name, "cron": "0 1 * * *", "duration": "1h"}
    err = config_error(write(tmp_path / "fleet.yml", {"inventory": "i.yml", "freeze": {"windows": [w]}}))
    assert "freeze.windows.0" in err.message and "needs a name" in err.message


# --- the models on their own -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, kind, target",
    [
        ({"http": "http://h/health"}, "http", "http://h/health"),
        ({"tcp": "h:22"}, "tcp", "h:22"),
        ({"playbook": "health.yml"}, "playbook", "health.yml"),
        ({"ssh": "systemctl is-active hc"}, "ssh", "systemctl is-active hc"),
    ],
)
def test_probe_kind_and_target(kwargs: dict, kind: str, target: str) -> None:
    p = Probe(**kwargs)
    assert (p.kind, p.target, p.timeout, p.expect_status) == (kind, target, 2.0, 200)


def test_policy_models_accept_python_values() -> None:
    policy = RolloutPolicy(max_unavailable="50%", stages=[{"name": "a", "hosts": "all", "batch": 2}])
    assert policy.max_unavailable == CountOrPercent(50, True)
    assert policy.stages[0].batch == CountOrPercent(2, False)
    assert HealthConfig(interval=0.05).interval == 0.05
    assert FleetConfig(path=Path("/x/fleet.yml"), inventory=[Path("/x/i.yml")]).base_dir == Path("/x")


def test_checksums_are_required_unless_fleet_yml_opts_out(tmp_path: Path) -> None:
    """artifacts.require_checksum reaches every playbook as hc_require_checksum, over `vars:`."""
    cfg = load_config(write(tmp_path / "fleet.yml", {"inventory": "i.yml", "vars": {"hc_keep_releases": 2}}))
    assert cfg.playbook_vars() == {"hc_keep_releases": 2, "hc_require_checksum": True}
    doc = {"inventory": "i.yml", "artifacts": {"require_checksum": False}}
    assert load_config(write(tmp_path / "fleet.yml", doc)).playbook_vars() == {"hc_require_checksum": False}


def test_a_valid_expect_body_regex_is_kept(tmp_path: Path) -> None:
    doc = {"inventory": "i.yml", "health": {"probes": [{"http": "http://x/", "expect_body": r"^ok \d+$"}]}}
    assert load_config(write(tmp_path / "fleet.yml", doc)).health.probes[0].expect_body == r"^ok \d+$"
