"""Value parsers: durations, counts/percents (Ansible `serial` rounding) and plain versions."""

from __future__ import annotations

import pytest

from fleetctl.units import (
    BadNodeVersion,
    CountOrPercent,
    check_version,
    format_duration,
    node_version,
    node_version_or_none,
    parse_duration,
)

# --- parse_duration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("1h30m15s", 5415.0),
        ("1.5s", 1.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("90", 90.0),
        (" 5m ", 300.0),
        ("1h 30m", 5400.0),
        ("2H", 7200.0),
        ("10M", 600.0),
        (0, 0.0),
        (45, 45.0),
        (2.5, 2.5),
        (0.05, 0.05),
    ],
)
def test_parse_duration_accepts(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize("text, seconds", [("1.5", 1.5), ("0.25", 0.25)])
def test_parse_duration_accepts_decimal_seconds_as_text(text: str, seconds: float) -> None:
    """'90' and 1.5 are seconds, and so are '1.5s'; the string '1.5' must be too ("or a number of seconds")."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "s",
        "abc",
        "5x",
        "1m30",
        "30s5m",
        "1h1h",
        "m5",
        "1.5m",
        "5 minutes",
        "-5s",
        "-1",
        " -1h",
        "--1",
        -1,
        -0.5,
        True,
        False,
    ],
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", [-1, -0.001, "-5s", "-1"])
def test_parse_duration_negative_says_so(text: object) -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration(text)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["abc", "5x", ""])
def test_parse_duration_error_shows_examples(text: str) -> None:
    with pytest.raises(ValueError, match=r"30s, 5m"):
        parse_duration(text)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_parse_duration_rejects_non_finite_numbers(value: float) -> None:
    """YAML `.nan` / `.inf` reach parse_duration as floats: a bake of NaN or forever is not a duration."""
    with pytest.raises(ValueError):
        parse_duration(value)


# --- format_duration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (0.4, "0s"),
        (1, "1s"),
        (45, "45s"),
        (59, "59s"),
        (59.6, "1m"),
        (60, "1m"),
        (125, "2m05s"),
        (599, "9m59s"),
        (3600, "1h"),
        (3660, "1h01m"),
        (5400, "1h30m"),
        (7200, "2h"),
        (86400, "24h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0, 1, 30, 59, 60, 61, 125, 600, 3599, 3600, 5400, 7260, 86400])
def test_format_then_parse_round_trips_without_hour_seconds(seconds: int) -> None:
    # below an hour the format is exact; above it keeps minutes, which these values are whole in
    assert parse_duration(format_duration(seconds)) == seconds


# --- CountOrPercent --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, value, percent, text",
    [
        ("3", 3.0, False, "3"),
        (3, 3.0, False, "3"),
        (0, 0.0, False, "0"),
        ("0", 0.0, False, "0"),
        ("25%", 25.0, True, "25%"),
        (" 25 % ", 25.0, True, "25%"),
        ("100%", 100.0, True, "100%"),
        ("0%", 0.0, True, "0%"),
        ("2.5%", 2.5, True, "2.5%"),
        ("3.0", 3.0, False, "3"),
        ("  7 ", 7.0, False, "7"),
    ],
)
def test_count_or_percent_parse(raw: str | int, value: float, percent: bool, text: str) -> None:
    c = CountOrPercent.parse(raw)
    assert (c.value, c.percent) == (value, percent)
    assert str(c) == text
    assert CountOrPercent.parse(str(c)) == c


@pytest.mark.parametrize(
    "raw",
    ["abc", "", "%", "150%", "100.1%", "-1", "-5%", "1.5", "2.5", "3 hosts", "25%%", "%25", -1, True, False],
)
def test_count_or_percent_rejects(raw: object) -> None:
    with pytest.raises(ValueError):
        CountOrPercent.parse(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize("raw", ["abc", "150%", "-1", "1.5"])
def test_count_or_percent_error_shows_examples(raw: str) -> None:
    with pytest.raises(ValueError, match=r"2 or 25%"):
        CountOrPercent.parse(raw)


@pytest.mark.parametrize("raw", ["inf", "1e400", "nan", "nan%", "-inf", float("inf"), float("nan")])
def test_count_or_percent_rejects_non_finite_with_value_error(raw: object) -> None:
    """Only a ValueError becomes a config error (pydantic); OverflowError or a NaN that parses crash later."""
    with pytest.raises(ValueError, match="count or percent"):
        CountOrPercent.parse(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw, total, minimum, expected",
    [
        ("25%", 10, 0, 2),  # 2.5 rounds down, as Ansible's serial
        ("25%", 10, 1, 2),
        ("50%", 10, 1, 5),
        ("100%", 10, 1, 10),
        ("5%", 10, 0, 0),
        ("5%", 10, 1, 1),  # the minimum applies after rounding down
        ("33%", 100, 1, 33),
        ("29%", 100, 1, 29),  # no float drift: 29/100*100 is 28.999... in Ansible's own order
        ("57%", 100, 1, 57),
        ("99%", 10, 1, 9),
        ("10%", 9, 0, 0),
        ("10%", 19, 0, 1),
        ("2.5%", 200, 0, 5),
        ("0%", 10, 0, 0),
        ("0%", 10, 1, 1),
        ("3", 10, 1, 3),
        ("3", 2, 1, 3),  # a count is not capped by the total
        ("0", 10, 1, 1),
        ("0", 10, 0, 0),
        ("25%", 0, 1, 1),
        ("25%", 0, 0, 0),
    ],
)
def test_count_or_percent_of(raw: str, total: int, minimum: int, expected: int) -> None:
    assert CountOrPercent.parse(raw).of(total, minimum=minimum) == expected


@pytest.mark.parametrize("pct", [1, 5, 10, 25, 33, 50, 66, 75, 99, 100])
@pytest.mark.parametrize("total", [0, 1, 3, 7, 10, 99, 100, 1000])
def test_percent_of_is_exact_floor(pct: int, total: int) -> None:
    n = CountOrPercent.parse(f"{pct}%").of(total)
    assert n == (total * pct) // 100
    assert 0 <= n <= total


def test_count_or_percent_is_hashable_and_frozen() -> None:
    c = CountOrPercent.parse("10%")
    assert {c, CountOrPercent(10.0, True)} == {c}
    with pytest.raises(AttributeError):
        c.value = 5  # type: ignore[misc]


# --- check_version ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version",
    ["1.0.0", "1.2.0-rc1", "1.2.0+build.5", "2024_01_02", "v1", "1", "A-b_c+d.e", "1.0.0-rc.1+sha.abc123"],
)
def test_check_version_accepts(version: str) -> None:
    assert check_version(version) == version


@pytest.mark.parametrize(
    "version",
    [
        "",
        "..",
        ".",
        "../x",
        "x/../y",
        "1..0",
        "a/b",
        "/etc",
        "a b",
        "1.0;rm",
        "1.0 && rm -rf /",
        "$(id)",
        "`id`",
        "1.0|x",
        "-rf",
        ".hidden",
        "+1",
        "_x",
        "1.0\t",
        "1.0\r",
        "1.0 ",
        " 1.0",
        "é1",
        "1.0*",
        "1.0~",
    ],
)
def test_check_version_rejects(version: str) -> None:
    with pytest.raises(ValueError, match="not a plain version"):
        check_version(version)


@pytest.mark.parametrize("version", ["1.0\n", "1.0.0\n", "x\n"])
def test_check_version_rejects_trailing_newline(version: str) -> None:
    """`$` in a regex also matches before a final newline: a version ending in '\\n' must still be refused."""
    with pytest.raises(ValueError, match="not a plain version"):
        check_version(version)


def test_check_version_rejects_none() -> None:
    with pytest.raises(ValueError):
        check_version(None)  # type: ignore[arg-type]


# --- node_version: what a node reports is untrusted ----------------------------------------------------


def test_node_version_accepts_plain_versions() -> None:
    assert node_version("1.2.0-rc1+b.5") == "1.2.0-rc1+b.5"
    assert node_version_or_none(None) is None


@pytest.mark.parametrize(
    "raw",
    [
        "{{ lookup('pipe', 'id') }}",
        "{% raw %}x",
        "1.0\n",
        "[/]",
        "../../etc",
        "1.0; rm -rf /",
        "",
        "x" * 129,
        5,
        ["1.0"],
    ],
)
def test_node_version_rejects_and_shows_the_text_escaped(raw: object) -> None:
    with pytest.raises(BadNodeVersion) as info:
        node_version(raw)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message  # one line, whatever the node sent
    assert len(message) < 200  # truncated


def test_node_version_message_is_one_escaped_line() -> None:
    with pytest.raises(BadNodeVersion) as info:
        node_version("1.0\n{{ 7*7 }}" + "y" * 500)
    message = str(info.value)
    assert "\n" not in message and "\\n" in message  # the newline is shown escaped
    assert "..." in message and len(message) < 200
