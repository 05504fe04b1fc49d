"""Bad input, property-based (hypothesis): operator input (fleet.yml, inventories, plan files, times,
durations, versions, host patterns, probe URLs, reasons) and node answers (versions, health bodies and
status lines, facts output). Always: valid, or a one-line domain error naming the field; never another
exception. Through the CLI: exit 2, one error line (and its hint) on stderr, nothing written.
Fast: no Ansible runs, no simulated fleet; modest example counts."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import json
import sqlite3
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from yaml.reader import Reader

from fleetctl.config import Probe, load_config
from fleetctl.errors import ConfigError, FleetError, InventoryError, UsageError
from fleetctl.inventory import load_inventory
from fleetctl.plan import Plan
from fleetctl.units import BadNodeVersion, CountOrPercent, check_version, node_version, parse_duration
from fleetctl.windows import parse_instant
from tests.conftest import Cli, write

NON_PRINTABLE = Reader.NON_PRINTABLE
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text an operator or a node might send: printable, markup, templates, paths, control characters.
NASTY = st.sampled_from(
    ["[/]", "[bold]x[/bold]", "{{ 7 * 7 }}", "{% raw %}", "%s%%", "..", "../../etc", "a/b", "-rf", "\x00",
     "\r\n", "\x1b[31m", "é", "💥", " ", "", "1.2.0", "1.2.0;id", "$(id)", "`id`", "'", '"', "\\", "*", "!all"]
)  # fmt: skip
TEXT = st.one_of(NASTY, st.text(max_size=30), st.builds("".join, st.lists(NASTY, max_size=4)))
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)),
    max_leaves=6,
)


def one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, FleetError) else str(exc)
    assert text.strip() and "\n" not in text.strip(), f"not one line: {text!r}"
    assert "Traceback" not in text
    return text


# -- fleet.yml ---------------------------------------------------------------------------------------
BASE_CONFIG: dict[str, Any] = {
    "inventory": "inventory.yml",
    "state": "fleetctl.db",
    "rollout": {
        "forks": 5,
        "max_failures": 0,
        "stages": [{"name": "canary", "hosts": "canary", "batch": 1, "bake": "1s", "max_failures": 0}],
    },
    "rollback": {"forks": 10, "batch": "100%"},
    "health": {"interval": "1s", "failures_to_fail": 2, "probes": [{"http": "http://x:1/health", "timeout": "1s"}]},
}  # fmt: skip
FIELDS = [
    ("inventory",), ("state",), ("rollout", "forks"), ("rollout", "max_failures"), ("rollout", "on_failure"),
    ("rollout", "stages"), ("rollout", "stages", 0, "batch"), ("rollout", "stages", 0, "bake"),
    ("rollout", "stages", 0, "hosts"), ("rollout", "stages", 0, "name"), ("rollback", "batch"),
    ("health", "interval"), ("health", "failures_to_fail"), ("health", "probes", 0, "http"),
    ("health", "probes", 0, "timeout"), ("health", "probes", 0, "expect_status"),
    ("health", "probes", 0, "expect_body"), ("health", "probes", 0, "headers"), ("windows",), ("bogus",),
]  # fmt: skip


def with_field(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def load(text: str) -> Any:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fleet.yml"
        path.write_text(text)
        return load_config(path)


@FAST
@given(path=st.sampled_from(FIELDS), value=JSONISH)
@example(path=("health", "probes", 0, "expect_body"), value="(")  # an invalid regex
@example(path=("health", "interval"), value=0)
def test_fleet_yml_field_is_valid_or_a_one_line_error_naming_it(path: tuple[Any, ...], value: Any) -> None:
    text = yaml.safe_dump(with_field(BASE_CONFIG, path, value), allow_unicode=True)
    try:
        load(text)
    except ConfigError as exc:
        message = one_line(exc)
        named = path[0] if path[0] != "bogus" else "bogus"
        assert named in message, f"{message!r} does not name {named}"


@FAST
@given(text=st.one_of(st.text(max_size=200), TEXT.map(lambda t: f"inventory: x\nrollout: {t}\n")))
def test_any_fleet_yml_text_loads_or_fails_in_one_line(text: str) -> None:
    assume(not NON_PRINTABLE.search(text))  # a known bug: see test_fleet_yml_with_a_control_character
    try:
        load(text)
    except ConfigError as exc:
        one_line(exc)


def test_fleet_yml_with_a_control_character_fails_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load("inventory: x\x1f\n")
    one_line(info.value)


# -- inventories and host patterns -------------------------------------------------------------------
NAMES = st.one_of(st.text(string.ascii_lowercase + string.digits + "-._", min_size=1, max_size=8), TEXT)


@SLOW
@given(
    hosts=st.dictionaries(
        NAMES, st.one_of(st.none(), st.dictionaries(TEXT, JSONISH, max_size=2)), max_size=3
    ),
    groups=st.dictionaries(NAMES, st.one_of(st.none(), JSONISH), max_size=2),
)
def test_inventory_loads_or_fails_in_one_line(hosts: dict[str, Any], groups: dict[str, Any]) -> None:
    doc = {"all": {"hosts": hosts or None, "children": groups or None}}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "inventory.yml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        try:
            fleet = load_inventory([path])
        except InventoryError as exc:
            one_line(exc)
            return
        assert isinstance(fleet.names, list)


@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("inv") / "inventory.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {"h1": {"zone": "a"}, "h2": {"zone": "b"}, "web-3": None},
                    "children": {"canary": {"hosts": {"h1": None}}, "ring1": {"hosts": {"h2": None}}},
                }
            }
        )
    )
    return load_inventory([path])


@FAST
@given(
    pattern=st.one_of(
        TEXT, st.sampled_from(["canary:&ring1", "all:!canary", "web*", "~h[0-9]", "~(", "h1,,"])
    )
)
def test_host_pattern_selects_or_fails_in_one_line(small_fleet: Any, pattern: str) -> None:
    try:
        names = small_fleet.select(pattern)
    except InventoryError as exc:
        one_line(exc)
        return
    assert set(names) <= {"h1", "h2", "web-3"}


# -- plan files ---------------------------------------------------------------------------------------
VALID_PLAN: dict[str, Any] = {
    "version": "1.1.0",
    "stages": [{"name": "canary", "hosts": ["h1"], "batches": [["h1"]], "bake": 1.0, "max_failures": "0"}],
    "skipped": [],
}


@FAST
@given(
    key=st.sampled_from(["version", "stages", "skipped", "fingerprint", "component", "nonsense"]),
    value=JSONISH,
    whole=st.one_of(st.none(), JSONISH),
)
def test_plan_file_is_a_plan_or_a_usage_error(key: str, value: Any, whole: Any) -> None:
    docs = [with_field(VALID_PLAN, (key,), value)]
    if whole is not None:
        docs.append(whole)
    for doc in docs:
        try:
            Plan.from_json(json.loads(json.dumps(doc)))
        except UsageError as exc:
            one_line(exc)


# -- times, durations, counts, versions ----------------------------------------------------------------
@FAST
@given(
    text=st.one_of(
        TEXT, st.sampled_from(["1h30m", "1d", "0s", "-5s", "1e400", "5m5m", "1.5s", "99999999999d"])
    )
)
def test_duration_is_seconds_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        one_line(exc)
        return
    assert seconds >= 0 and seconds == seconds and seconds != float("inf")


@FAST
@given(raw=st.one_of(TEXT, st.integers(), st.sampled_from(["101%", "-1", "1.5", "nan%", "inf", "1e999"])))
def test_count_or_percent_parses_or_fails(raw: Any) -> None:
    try:
        value = CountOrPercent.parse(raw)
    except ValueError as exc:
        one_line(exc)
        return
    assert value.of(10) >= 0


@FAST
@given(text=st.one_of(TEXT, st.sampled_from(["2026-03-29T00:30:00Z", "2026-03-29T01:30", "tomorrow"])))
def test_instant_is_aware_utc_or_a_value_error(text: str) -> None:
    try:
        at = parse_instant(text)
    except ValueError as exc:
        one_line(exc)
        return
    assert at.utcoffset() is not None


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_instant_at_the_edge_of_the_calendar(text: str) -> None:
    try:
        parse_instant(text)
    except ValueError as exc:
        one_line(exc)


@FAST
@given(text=TEXT)
def test_version_is_plain_or_a_value_error(text: str) -> None:
    try:
        version = check_version(text)
    except ValueError as exc:
        one_line(exc)
        return
    assert version == text and not any(c in text for c in "/{}[]% \n\\") and ".." not in text


# -- node answers --------------------------------------------------------------------------------------
@FAST
@given(raw=st.one_of(JSONISH, st.binary(max_size=10)))
@example(raw="{{ lookup('pipe', 'id') }}")
@example(raw="x" * 500)
def test_node_version_is_plain_or_rejected(raw: Any) -> None:
    try:
        version = node_version(raw)
    except BadNodeVersion as exc:
        message = one_line(exc)
        assert len(message) < 300
        return
    check_version(version)
    assert version == raw


@FAST
@given(raw=st.one_of(JSONISH, st.text(max_size=20)))
def test_facts_output_becomes_a_version_or_a_host_error(raw: Any) -> None:
    from fleetctl.executor import _checked

    version, error = _checked(raw)
    if error is None:
        assert version is None or check_version(version) == raw
    else:
        assert version is None and "\n" not in error and len(error) < 200


class Answers:
    """One loopback TCP server whose every connection gets the bytes set for the current example."""

    def __init__(self) -> None:
        self.answer = b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            writer.write(self.answer)
            await writer.drain()
        except Exception:  # noqa: BLE001, S110 - a prober that gave up
            pass
        finally:
            writer.close()


STATUS_LINES = st.one_of(
    st.sampled_from(["HTTP/1.1 200 OK", "HTTP/1.1 200 [/]", "HTTP/1.1 999 x", "HTTP/1.1 abc", "HTTP/9 200",
                     "HTTP/1.1 500 [bold]oops[/]", "", "garbage", "HTTP/1.1 200 OK\x00"]),
    TEXT.map(lambda t: f"HTTP/1.1 200 {t}"),
)  # fmt: skip
BODIES = st.one_of(
    st.binary(max_size=200), TEXT.map(str.encode), st.sampled_from([b'{"a": [[[[[[1]]]]]]}', b"\xff\xfe"])
)


@SLOW
@given(
    status=STATUS_LINES,
    headers=st.lists(st.sampled_from(["Content-Length: 5", "Content-Length: -1", "Content-Length: x",
                                      "Transfer-Encoding: chunked", "X: [/]", "Content-Type: text/plain"]),
                     max_size=2),
    body=BODIES,
    expect=st.sampled_from([{}, {"expect_body": "ok"}, {"expect_json": {"a.b": 1}}]),
)  # fmt: skip
def test_health_answer_passes_or_fails_with_a_one_line_reason(
    status: str, headers: list[str], body: bytes, expect: dict[str, Any]
) -> None:
    from fleetctl.probes_http import Client, HttpTarget

    answers = Answers()
    answers.answer = (status + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode(
        "utf-8", "surrogatepass"
    ) + body

    async def go() -> str | None:
        server = await asyncio.start_server(answers.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            probe = Probe.model_validate(
                {"http": f"http://127.0.0.1:{port}/health", "timeout": "1s", **expect}
            )
            async with Client() as client:
                return await asyncio.wait_for(
                    client.check(HttpTarget(f"http://127.0.0.1:{port}/health"), probe), 3
                )
        finally:
            server.close()

    reason = asyncio.run(go())
    assert reason is None or (reason.strip() and "\n" not in reason and "Traceback" not in reason)


@FAST
@given(
    url=st.one_of(
        TEXT, TEXT.map(lambda t: f"http://{t}/health"), st.sampled_from(["ftp://x", "http://", "//x"])
    )
)
def test_probe_url_is_accepted_or_refused_in_one_line(url: str) -> None:
    assume(url)
    text = yaml.safe_dump(with_field(BASE_CONFIG, ("health", "probes", 0, "http"), url), allow_unicode=True)
    try:
        load(text)
    except ConfigError as exc:
        assert "health" in one_line(exc)


# -- through the CLI: exit 2, one error line, nothing written -------------------------------------------
@pytest.fixture
def offline(tmp_path: Path) -> dict[str, str]:
    """A fleet.yml over a three-host inventory; no journal yet."""
    write(
        tmp_path / "inventory.yml",
        yaml.safe_dump(
            {"all": {"hosts": {"h1": None, "h2": None}, "children": {"canary": {"hosts": {"h1": None}}}}}
        ),
    )
    write(tmp_path / "fleet.yml", yaml.safe_dump(BASE_CONFIG))
    return {"FLEETCTL_CONFIG": str(tmp_path / "fleet.yml"), "FLEETCTL_OPERATOR": "prop"}


def refused(cli: Cli, env: dict[str, str], argv: list[str], journal: bool = True) -> None:
    """Exit 0, or exit 2 with one error line (and its hint), and (`journal`) the journal file untouched."""
    db = Path(env["FLEETCTL_CONFIG"]).parent / "fleetctl.db"
    before = _journal_bytes(db)
    result = cli(argv, env=env, code=None)
    if result.exit_code == 0:
        return
    assert result.exit_code == 2, f"{argv} exited {result.exit_code}: {result.stderr}"
    lines = [line for line in result.stderr.split("\n") if line.strip()]
    assert lines and lines[0].startswith("fleetctl: error:"), result.stderr
    assert len(lines) <= 2 and all("Traceback" not in line for line in lines), result.stderr
    if journal:
        assert _journal_bytes(db) == before, f"{argv} wrote the journal"


def _journal_bytes(db: Path) -> bytes | None:
    """The journal file with every committed write in it: earlier in-process commands leave SQLite
    connections behind whose WAL a garbage collection may checkpoint at any moment, so checkpoint first
    (a write the command committed is in the WAL and so lands in the bytes compared)."""
    if not db.exists():
        return None
    gc.collect()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.read_bytes()


@SLOW
@given(version=TEXT.filter(lambda t: not t.startswith("-")))
def test_cli_rollout_of_a_bad_version_exits_2_writing_nothing(
    cli: Cli, offline: dict[str, str], version: str
) -> None:
    assume(not _plain(version))
    refused(cli, offline, ["rollout", version, "--yes"])


@SLOW
@given(
    option=st.sampled_from(["--for", "--until", "-l"]),
    value=st.one_of(TEXT, st.sampled_from(["-5m", "0s", "2020-01-01T00:00:00Z", "tomorrow", "nohost*"])),
)
def test_cli_freeze_with_bad_times_or_patterns_exits_2_writing_nothing(
    cli: Cli, offline: dict[str, str], option: str, value: str
) -> None:
    assume(not value.startswith("-") or option == "--for")
    refused(cli, offline, ["freeze", "on", "--reason", "prop", option + "=" + value])


@SLOW
@given(reason=TEXT.filter(lambda t: not t.startswith("-")))
@example(reason="[/]")
def test_cli_reason_with_markup_is_recorded_and_shown(cli: Cli, offline: dict[str, str], reason: str) -> None:
    result = cli(["freeze", "on", "--reason", reason], env=offline, code=None)
    assert result.exit_code in (0, 2), result.stderr
    if result.exit_code == 2:
        refused(cli, offline, ["freeze", "on", "--reason", reason])
        return
    for argv in (["freeze", "list"], ["audit"], ["freeze", "status"]):
        shown = cli(argv, env=offline, code=0)
        assert "Traceback" not in shown.stderr
    cli(["freeze", "off", "--reason", "done"], env=offline)


def _plain(version: str) -> bool:
    try:
        check_version(version)
    except ValueError:
        return False
    return True


def test_cli_freeze_until_the_edge_of_the_calendar_is_a_usage_error(
    cli: Cli, offline: dict[str, str]
) -> None:
    refused(cli, offline, ["freeze", "on", "--reason", "prop", "--until", "0001-01-01T00:00:00+01:00"])
    result = cli(["freeze", "status", "--at", "9999-12-31T23:59:59-01:00"], env=offline, code=None)
    assert result.exit_code == 2, result.stderr


@SLOW
@given(pattern=st.one_of(TEXT, st.sampled_from(["nohost", "~(", "all:&nothing", "canary:!canary"])))
def test_cli_plan_with_a_bad_host_pattern_exits_2_writing_nothing(
    cli: Cli, offline: dict[str, str], pattern: str
) -> None:
    assume(pattern and not pattern.startswith("-"))
    refused(cli, offline, ["plan", "1.1.0", "-l", pattern, "--json"], journal=False)  # see below


@pytest.mark.parametrize(
    "argv", [["plan", "1.1.0", "-l", "nohost"], ["rollout", "1.1.0", "-l", "nohost", "--yes"]]
)
def test_cli_bad_host_pattern_creates_no_journal(cli: Cli, offline: dict[str, str], argv: list[str]) -> None:
    refused(cli, offline, argv)


@SLOW
@given(path=st.sampled_from(FIELDS), value=JSONISH)
def test_cli_with_a_bad_fleet_yml_exits_2_writing_nothing(
    cli: Cli, offline: dict[str, str], path: tuple[Any, ...], value: Any
) -> None:
    config = Path(offline["FLEETCTL_CONFIG"])
    config.write_text(yaml.safe_dump(with_field(BASE_CONFIG, path, value), allow_unicode=True))
    try:
        refused(cli, offline, ["plan", "1.1.0", "--json"])
    finally:
        config.write_text(yaml.safe_dump(BASE_CONFIG))


@SLOW
@given(doc=st.one_of(JSONISH, st.sampled_from(["{", "", "null", "[]"]).map(lambda t: ("raw", t))))
def test_cli_rollout_of_a_bad_plan_file_exits_2_writing_nothing(
    cli: Cli, offline: dict[str, str], doc: Any
) -> None:
    plan = Path(offline["FLEETCTL_CONFIG"]).parent / "plan.json"
    plan.write_text(doc[1] if isinstance(doc, tuple) else json.dumps(doc))
    refused(cli, offline, ["rollout", "--plan", str(plan), "--yes"])
