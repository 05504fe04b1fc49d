"""Inventories loaded with Ansible's own loader (YAML, INI ranges, directories, scripts), Ansible host
patterns, host variable rendering and the fleet fingerprint."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from fleetctl.errors import ExitCode, InventoryError
from fleetctl.inventory import Fleet, load_inventory

YAML_INV = """\
all:
  vars:
    base_port: 9000
    hc_port: "{{ base_port }}"
  children:
    canary:
      hosts:
        web01:
    ring1:
      hosts:
        web01:
        web02:
        web03:
    ring2:
      hosts:
        web04:
        db01:
        db02:
    zone_a:
      hosts:
        web01:
        web04:
        db01:
    zone_b:
      hosts:
        web02:
        db02:
    zone_c:
      hosts:
        web03:
    drain:
      hosts:
        web03:
        db02:
  hosts:
    web01:
      ansible_host: 10.0.0.1
    web02:
      ansible_host: 10.0.0.2
    web03:
      ansible_host: 10.0.0.3
      hc_port: 9100
    web04:
      ansible_host: 10.0.0.4
    db01:
      ansible_host: 10.0.1.1
    db02:
      ansible_host: 10.0.1.2
"""


def write(path: Path, text: str, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    if mode is not None:
        path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return load_inventory([write(tmp_path_factory.mktemp("inv") / "inventory.yml", YAML_INV)])


def inventory_error(sources: list[Path]) -> InventoryError:
    with pytest.raises(InventoryError) as info:
        load_inventory(sources)
    err = info.value
    assert err.exit_code == ExitCode.USAGE == 2
    assert "\n" not in err.message, err.message
    assert err.hint
    return err


# --- sources ---------------------------------------------------------------------------------------------


def test_yaml_inventory_hosts_groups_vars(fleet: Fleet) -> None:
    assert fleet.names == ["web01", "web02", "web03", "web04", "db01", "db02"]
    assert len(fleet) == 6
    assert fleet["web01"].groups == ("canary", "ring1", "zone_a")
    assert fleet.groups_of("db02") == ("drain", "ring2", "zone_b")
    assert fleet["web01"].var("ansible_host") == "10.0.0.1"
    assert fleet["web01"].var("missing", "dflt") == "dflt"
    assert fleet["web03"].vars["hc_port"] == 9100  # host var beats group var
    # magic variables are not host variables
    for magic in ("groups", "group_names", "inventory_hostname", "hostvars", "omit", "playbook_dir"):
        assert magic not in fleet["web01"].vars


def test_hosts_compare_by_name_and_groups(fleet: Fleet) -> None:
    other = load_inventory(fleet.sources)
    assert other["web01"] == fleet["web01"]
    assert hash(other["web01"]) == hash(fleet["web01"])
    assert other["web01"] != fleet["web02"]


def test_ini_inventory_with_ranges(tmp_path: Path) -> None:
    inv = write(
        tmp_path / "hosts.ini",
        """\
        [web]
        web[01:05] hc_port=8080

        [db]
        db-[a:c].example.com

        [ring1:children]
        db

        [web:vars]
        zone=a
        """,
    )
    fleet = load_inventory([inv])
    assert fleet.names == [f"web0{i}" for i in range(1, 6)] + [f"db-{c}.example.com" for c in "abc"]
    assert fleet["web03"].vars == {"hc_port": 8080, "zone": "a"}
    assert fleet["db-b.example.com"].groups == ("db", "ring1")
    assert fleet.select("web[1:2]") == ["web02", "web03"]  # Ansible subscript on a group
    assert fleet.select("ring1") == ["db-a.example.com", "db-b.example.com", "db-c.example.com"]


def test_directory_with_group_vars_and_host_vars(tmp_path: Path) -> None:
    d = tmp_path / "inventory"
    write(
        d / "hosts.yml",
        """\
        ring1:
          hosts:
            web01:
            web02:
        ring2:
          hosts:
            web03:
        """,
    )
    write(d / "group_vars" / "all.yml", "hc_root: /opt/hc\nzone: x\n")
    write(d / "group_vars" / "ring1.yml", "hc_port: 8080\n")
    write(d / "group_vars" / "ring2" / "main.yml", "hc_port: 8081\n")
    write(d / "host_vars" / "web02.yml", "zone: b\nhc_port: 9999\n")
    fleet = load_inventory([d])
    assert fleet.names == ["web01", "web02", "web03"]
    assert fleet["web01"].vars == {"hc_root": "/opt/hc", "zone": "x", "hc_port": 8080}
    assert fleet["web02"].vars == {"hc_root": "/opt/hc", "zone": "b", "hc_port": 9999}
    assert fleet["web03"].vars["hc_port"] == 8081


def test_two_sources_merge(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yml", "ring1:\n  hosts:\n    h1:\n    h2:\n")
    b = write(tmp_path / "b.ini", "[ring2]\nh3\n[ring1]\nh2 hc_port=1\n")
    fleet = load_inventory([a, b])
    assert fleet.names == ["h1", "h2", "h3"]
    assert fleet["h2"].vars == {"hc_port": 1}
    assert fleet.sources == [a, b]


def test_executable_inventory_script(tmp_path: Path) -> None:
    script = write(
        tmp_path / "inventory.py",
        f"""\
        #!{sys.executable}
        import json, sys
        if sys.argv[1:] == ["--list"]:
            print(json.dumps({{
                "ring1": {{"hosts": ["s1", "s2"], "vars": {{"hc_port": 8081}}}},
                "canary": {{"hosts": ["s1"]}},
                "_meta": {{"hostvars": {{"s1": {{"ansible_host": "127.0.0.1"}}, "s2": {{"zone": "b"}}}}}},
            }}))
        else:
            print("{{}}")
        """,
        mode=0o755,
    )
    fleet = load_inventory([script])
    assert fleet.names == ["s1", "s2"]
    assert fleet["s1"].groups == ("canary", "ring1")
    assert fleet["s1"].vars == {"hc_port": 8081, "ansible_host": "127.0.0.1"}
    assert fleet["s2"].vars == {"hc_port": 8081, "zone": "b"}
    assert fleet.select("canary") == ["s1"]


# --- bad sources -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope.yml", "missing/dir", "hosts.ini"])
def test_missing_source(tmp_path: Path, name: str) -> None:
    err = inventory_error([tmp_path / name])
    assert "does not exist" in err.message and name in err.message


def test_one_missing_source_among_good_ones(tmp_path: Path) -> None:
    good = write(tmp_path / "a.yml", "all:\n  hosts:\n    h1:\n")
    err = inventory_error([good, tmp_path / "gone.yml"])
    assert "gone.yml" in err.message


@pytest.mark.parametrize(
    "name, text",
    [
        ("bad.yml", "all:\n  hosts: [\n"),
        ("bad.yml", "all:\n  hosts:\n    h1:\n   bad indent: x\n"),
        ("bad.yml", "all:\n  children:\n    - not\n    - a mapping\n"),
        ("bad.ini", "[web\nh1\n"),
        ("bad.ini", "[web:vars]\nthis is not key value\n"),
        ("bad.txt", "\x00\x01 not an inventory at all {{{\n"),
    ],
)
def test_invalid_inventory_is_one_line_error(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path / name, text)
    err = inventory_error([path])
    assert err.message.startswith(f"cannot load inventory {path}: ")
    assert len(err.message) > len(f"cannot load inventory {path}: ")


def test_failing_inventory_script(tmp_path: Path) -> None:
    script = write(tmp_path / "inv.sh", "#!/bin/sh\necho 'boom: no cmdb' >&2\nexit 3\n", mode=0o755)
    err = inventory_error([script])
    assert str(script) in err.message


def test_failing_inventory_script_reports_the_script_failure(tmp_path: Path) -> None:
    """An executable source is a script: its failure (exit code) is the reason, not the INI plugin's attempt
    to read the script's text ("Expected key=value host variable assignment, got: ...")."""
    script = write(tmp_path / "inv.sh", "#!/bin/sh\necho 'boom: no cmdb' >&2\nexit 3\n", mode=0o755)
    err = inventory_error([script])
    assert "exit code 3" in err.message, err.message


@pytest.mark.parametrize(
    "text", ["all: {}\n", "all:\n  children:\n    empty: {}\n", "[web]\n", "# nothing\n"]
)
def test_inventory_without_hosts(tmp_path: Path, text: str) -> None:
    suffix = ".ini" if text.startswith(("[", "#")) else ".yml"
    err = inventory_error([write(tmp_path / f"inv{suffix}", text)])
    assert "no hosts" in err.message


def test_loading_is_quiet(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The library never prints: Ansible's parse warnings are swallowed (and summarised in the error)."""
    bad = write(tmp_path / "bad.yml", "all:\n  hosts: [\n")
    with pytest.raises(InventoryError):
        load_inventory([bad])
    load_inventory([write(tmp_path / "ok.yml", "all:\n  hosts:\n    h1:\n")]).select(
        "nomatch*", required=False
    )
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# --- patterns --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern, expected",
    [
        (None, ["web01", "web02", "web03", "web04", "db01", "db02"]),
        ("", ["web01", "web02", "web03", "web04", "db01", "db02"]),
        ("all", ["web01", "web02", "web03", "web04", "db01", "db02"]),
        ("*", ["web01", "web02", "web03", "web04", "db01", "db02"]),
        ("canary", ["web01"]),
        ("ring1", ["web01", "web02", "web03"]),
        ("ring1:&zone_a", ["web01"]),
        ("ring2:&zone_a", ["web04", "db01"]),
        ("ring1:&zone_c", ["web03"]),
        ("web*", ["web01", "web02", "web03", "web04"]),
        ("db0?", ["db01", "db02"]),
        ("~web0[12]", ["web01", "web02"]),
        ("!drain", ["web01", "web02", "web04", "db01"]),
        ("all:!drain", ["web01", "web02", "web04", "db01"]),
        ("ring1:!drain", ["web01", "web02"]),
        ("ring1,ring2", ["web01", "web02", "web03", "web04", "db01", "db02"]),
        (
            "ring2,ring1",
            ["web01", "web02", "web03", "web04", "db01", "db02"],
        ),  # inventory order, not pattern order
        ("ring1:ring2", ["web01", "web02", "web03", "web04", "db01", "db02"]),
        ("zone_a:zone_b:&ring2", ["web04", "db01", "db02"]),
        ("ring1:zone_c:&zone_a", ["web01"]),
        ("zone_c,web04", ["web03", "web04"]),
        ("web02", ["web02"]),
        ("db02,web01", ["web01", "db02"]),
        ("all:!ring1:!ring2", []),
    ],
)
def test_select_with_ansible_patterns(fleet: Fleet, pattern: str | None, expected: list[str]) -> None:
    assert fleet.select(pattern, required=False) == expected


@pytest.mark.parametrize("pattern", ["nomatch", "nothing*", "ring1:&drain:&zone_a", "all:!all", "ring3"])
def test_pattern_matching_nothing(fleet: Fleet, pattern: str) -> None:
    with pytest.raises(InventoryError) as info:
        fleet.select(pattern)
    assert info.value.exit_code == 2
    assert repr(pattern) in info.value.message and "matches no host" in info.value.message
    assert fleet.select(pattern, required=False) == []


@pytest.mark.parametrize("pattern", ["~(", "~web(", "ring1:~(x"])
def test_invalid_pattern(fleet: Fleet, pattern: str) -> None:
    with pytest.raises(InventoryError) as info:
        fleet.select(pattern, required=False)
    assert info.value.exit_code == 2
    assert "invalid host pattern" in info.value.message
    assert "\n" not in info.value.message


def test_select_does_not_mutate_between_calls(fleet: Fleet) -> None:
    first = fleet.select("ring1:!drain")
    fleet.select("drain")
    assert fleet.select("ring1:!drain") == first


# --- rendering -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, template, expected",
    [
        ("web01", "{{ ansible_host }}:{{ hc_port }}", "10.0.0.1:9000"),  # hc_port is itself "{{ base_port }}"
        ("web03", "{{ ansible_host }}:{{ hc_port }}", "10.0.0.3:9100"),
        ("web01", "http://{{ ansible_host }}:{{ hc_port }}/health", "http://10.0.0.1:9000/health"),
        ("db02", "{{ inventory_hostname }}", "db02"),
        ("web02", "no template at all", "no template at all"),
        ("web03", "{{ hc_port + 1 }}", "9101"),
    ],
)
def test_render(fleet: Fleet, host: str, template: str, expected: str) -> None:
    assert fleet[host].render(template) == expected


@pytest.mark.parametrize(
    "template, expected",
    [
        ("{{ hc_port | int + 1 }}", "9001"),
        ("{% if hc_port | int == 9000 %}default{% else %}custom{% endif %}", "default"),
    ],
)
def test_render_expressions_see_nested_values(fleet: Fleet, template: str, expected: str) -> None:
    """Ansible templates a nested var before an expression uses it: hc_port is 9000 here, not '{{ base_port }}'."""
    assert fleet["web02"].render(template) == expected


def test_render_does_not_re_render_values(tmp_path: Path) -> None:
    """A value that merely contains braces (a token, a password) is data: it must not be rendered again."""
    inv = write(tmp_path / "inv.yml", "all:\n  hosts:\n    h1:\n      token: !unsafe 'a{{b}}c'\n")
    assert load_inventory([inv])["h1"].render("x-{{ token }}") == "x-a{{b}}c"


def test_render_deeply_nested(tmp_path: Path) -> None:
    inv = write(
        tmp_path / "inv.yml",
        """\
        all:
          vars:
            a: "{{ b }}"
            b: "{{ c }}"
            c: "{{ d }}"
            d: "8443"
          hosts:
            h1:
              ansible_host: "{{ ip }}"
              ip: 127.0.0.1
        """,
    )
    assert (
        load_inventory([inv])["h1"].render("https://{{ ansible_host }}:{{ a }}/") == "https://127.0.0.1:8443/"
    )


@pytest.mark.parametrize(
    "template",
    ["{{ nope }}", "{{ ansible_host }}:{{ missing_port }}", "{{ hc_port.nothing.here }}", "{{ unclosed "],
)
def test_render_undefined_or_broken(fleet: Fleet, template: str) -> None:
    with pytest.raises(InventoryError) as info:
        fleet["web01"].render(template)
    assert info.value.exit_code == 2
    assert "web01" in info.value.message and repr(template) in info.value.message


def test_render_nested_undefined(tmp_path: Path) -> None:
    inv = write(tmp_path / "inv.yml", "all:\n  hosts:\n    h1:\n      hc_port: '{{ base_port }}'\n")
    with pytest.raises(InventoryError, match="base_port"):
        load_inventory([inv])["h1"].render("{{ hc_port }}")


def test_render_self_referencing_var_is_an_error(tmp_path: Path) -> None:
    """A variable loop must not come back as an unrendered '{{ ... }}' URL: Ansible calls it a recursive loop."""
    inv = write(tmp_path / "inv.yml", "all:\n  hosts:\n    h1:\n      a: '{{ b }}'\n      b: '{{ a }}'\n")
    with pytest.raises(InventoryError):
        load_inventory([inv])["h1"].render("http://{{ a }}/")


# --- fingerprint -----------------------------------------------------------------------------------------


def test_fingerprint_stable_across_loads(tmp_path: Path) -> None:
    inv = write(tmp_path / "inv.yml", YAML_INV)
    a, b = load_inventory([inv]), load_inventory([inv])
    assert a.fingerprint() == b.fingerprint()
    assert len(a.fingerprint()) == 16
    assert a.fingerprint(["web01", "db02"]) == b.fingerprint(["web01", "db02"])
    assert a.fingerprint(["web01"]) != a.fingerprint()
    assert a.fingerprint(["web01", "not-a-host"]) == a.fingerprint(["web01"])


@pytest.mark.parametrize(
    "old, new",
    [
        ("      ansible_host: 10.0.0.2\n", "      ansible_host: 10.0.0.22\n"),  # web02's address
        ("    drain:\n      hosts:\n        web03:\n", "    drain:\n      hosts:\n        web02:\n"),  # group
        (
            "    web04:\n      ansible_host: 10.0.0.4\n",
            "    web04:\n      ansible_host: 10.0.0.4\n      hc_port: 1\n",
        ),
        ("      ansible_host: 10.0.1.2\n", "      ansible_host: 10.0.1.2\n    db03:\n"),  # a new host
        (
            "    web04:\n      ansible_host: 10.0.0.4\n",
            "    web04:\n      ansible_host: 10.0.0.4\n      hc_root: /x\n",
        ),
        (
            "    web04:\n      ansible_host: 10.0.0.4\n",
            "    web04:\n      ansible_host: 10.0.0.4\n      ansible_port: 2222\n",
        ),
    ],
)
def test_fingerprint_changes_with_fleet(tmp_path: Path, old: str, new: str) -> None:
    assert old in YAML_INV
    before = load_inventory([write(tmp_path / "a.yml", YAML_INV)]).fingerprint()
    after = load_inventory([write(tmp_path / "b.yml", YAML_INV.replace(old, new, 1))]).fingerprint()
    assert before != after


def test_fingerprint_ignores_unrelated_vars(tmp_path: Path) -> None:
    before = load_inventory([write(tmp_path / "a.yml", YAML_INV)]).fingerprint()
    changed = YAML_INV.replace(
        "      ansible_host: 10.0.0.4\n", "      ansible_host: 10.0.0.4\n      owner: bob\n"
    )
    assert load_inventory([write(tmp_path / "b.yml", changed)]).fingerprint() == before


def test_fingerprint_follows_templated_vars(tmp_path: Path) -> None:
    """hc_port is '{{ base_port }}': moving base_port moves every probe URL, so the fingerprint must change."""
    before = load_inventory([write(tmp_path / "a.yml", YAML_INV)])
    after = load_inventory(
        [write(tmp_path / "b.yml", YAML_INV.replace("base_port: 9000", "base_port: 9500"))]
    )
    assert before["web01"].render("{{ hc_port }}") != after["web01"].render("{{ hc_port }}")
    assert before.fingerprint() != after.fingerprint()


# --- rendered variables (SshClient targets, the fingerprint) --------------------------------------------


def test_rendered_var_renders_templates_but_not_unsafe_values(tmp_path: Path) -> None:
    inv = write(
        tmp_path / "inv.yml",
        "all:\n  vars:\n    base_port: 2200\n  hosts:\n    h1:\n"
        "      ansible_host: '{{ inventory_hostname }}.example'\n"
        "      ansible_port: '{{ base_port | int + 1 }}'\n"
        '      hc_root: !unsafe \'/opt/{{ lookup("pipe", "id") }}\'\n'
        "      plain: 7\n",
    )
    h1 = load_inventory([inv])["h1"]
    assert h1.rendered_var("ansible_host") == "h1.example"
    assert int(h1.rendered_var("ansible_port")) == 2201
    assert h1.rendered_var("hc_root") == '/opt/{{ lookup("pipe", "id") }}'  # !unsafe: data, never run
    assert h1.rendered_var("plain") == 7 and h1.rendered_var("missing", "d") == "d"


def test_rendered_var_that_cannot_render_names_the_variable(tmp_path: Path) -> None:
    inv = write(tmp_path / "inv.yml", "all:\n  hosts:\n    h1:\n      ansible_port: '{{ nowhere }}'\n")
    with pytest.raises(InventoryError, match="ansible_port of host h1"):
        load_inventory([inv])["h1"].rendered_var("ansible_port")


def test_fingerprint_does_not_render_unsafe_values(tmp_path: Path) -> None:
    """The fingerprint renders templated ansible_host/hc_root, but a value marked !unsafe is data."""
    marker = tmp_path / "rendered"
    inv = write(
        tmp_path / "inv.yml",
        f"all:\n  hosts:\n    h1:\n      hc_root: !unsafe \"{{{{ lookup('pipe', 'touch {marker}') }}}}\"\n",
    )
    load_inventory([inv]).fingerprint()
    assert not marker.exists()
