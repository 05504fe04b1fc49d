"""Freeze and maintenance windows at fixed instants, on both sides of 2026's DST changes.

2026 changes (UTC): London 29 Mar 01:00 (GMT->BST) and 25 Oct 01:00 (BST->GMT); New York 8 Mar 07:00
(EST->EDT) and 1 Nov 06:00 (EDT->EST); Sydney 4 Apr 16:00 (AEDT->AEST) and 3 Oct 16:00 (AEST->AEDT).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import yaml
from cronsim import CronSim

from fleetctl.windows import (
    MaintenanceState,
    Occurrence,
    WindowsConfig,
    WindowSpec,
    active,
    maintenance_state,
    next_change,
    next_occurrence,
    occurrence_at,
    parse_instant,
)

LON, NYC, SYD = "Europe/London", "America/New_York", "Australia/Sydney"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(dt: datetime, tz: str) -> str:
    return dt.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")


def cron(expr: str, duration: str, tz: str, name: str = "w", **extra: object) -> WindowSpec:
    return WindowSpec(name=name, cron=expr, duration=duration, timezone=tz, **extra)


# --- recurring windows across DST ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tz, after, start_utc, start_local",
    [
        (LON, "2026-03-27 12:00", "2026-03-28 03:00", "2026-03-28 03:00 GMT"),
        (LON, "2026-03-28 12:00", "2026-03-29 02:00", "2026-03-29 03:00 BST"),
        (LON, "2026-10-24 00:00", "2026-10-24 02:00", "2026-10-24 03:00 BST"),
        (LON, "2026-10-24 12:00", "2026-10-25 03:00", "2026-10-25 03:00 GMT"),
        (NYC, "2026-03-06 12:00", "2026-03-07 08:00", "2026-03-07 03:00 EST"),
        (NYC, "2026-03-07 12:00", "2026-03-08 07:00", "2026-03-08 03:00 EDT"),
        (NYC, "2026-10-31 00:00", "2026-10-31 07:00", "2026-10-31 03:00 EDT"),
        (NYC, "2026-10-31 12:00", "2026-11-01 08:00", "2026-11-01 03:00 EST"),
        (SYD, "2026-04-03 00:00", "2026-04-03 16:00", "2026-04-04 03:00 AEDT"),
        (SYD, "2026-04-04 00:00", "2026-04-04 17:00", "2026-04-05 03:00 AEST"),
        (SYD, "2026-10-02 00:00", "2026-10-02 17:00", "2026-10-03 03:00 AEST"),
        (SYD, "2026-10-03 00:00", "2026-10-03 16:00", "2026-10-04 03:00 AEDT"),
    ],
)
def test_cron_start_stays_at_local_hour_across_change(tz, after, start_utc, start_local):
    occ = next_occurrence(cron("0 3 * * *", "1h", tz), utc(after))
    assert occ is not None
    assert occ.start == utc(start_utc)
    assert local(occ.start, tz) == start_local
    assert occ.end - occ.start == timedelta(hours=1)


@pytest.mark.parametrize(
    "tz, expr, after, start_utc, start_local",
    [
        # 01:30 does not exist: the window opens at the first instant after the gap.
        (LON, "30 1 * * *", "2026-03-28 12:00", "2026-03-29 01:00", "2026-03-29 02:00 BST"),
        (LON, "0 1 * * *", "2026-03-28 12:00", "2026-03-29 01:00", "2026-03-29 02:00 BST"),
        (NYC, "30 2 * * *", "2026-03-07 12:00", "2026-03-08 07:00", "2026-03-08 03:00 EDT"),
        (SYD, "30 2 * * *", "2026-10-03 00:00", "2026-10-03 16:00", "2026-10-04 03:00 AEDT"),
        # The day after, it is back at the cron time.
        (LON, "30 1 * * *", "2026-03-29 12:00", "2026-03-30 00:30", "2026-03-30 01:30 BST"),
        (NYC, "30 2 * * *", "2026-03-08 12:00", "2026-03-09 06:30", "2026-03-09 02:30 EDT"),
        (SYD, "30 2 * * *", "2026-10-03 20:00", "2026-10-04 15:30", "2026-10-05 02:30 AEDT"),
    ],
)
def test_nonexistent_cron_start_opens_after_the_gap(tz, expr, after, start_utc, start_local):
    spec = cron(expr, "4h", tz)
    occ = next_occurrence(spec, utc(after))
    assert occ is not None
    assert (occ.start, local(occ.start, tz)) == (utc(start_utc), start_local)
    assert occ.end == occ.start + timedelta(hours=4)
    assert occurrence_at(spec, occ.start) == occ
    assert occurrence_at(spec, occ.start - timedelta(seconds=1)) is None


@pytest.mark.parametrize(
    "tz, expr, first_utc, first_local, second_utc, next_day_utc",
    [
        # 01:30 happens twice; the window opens at the first one only, and not again at the second.
        (
            LON,
            "30 1 * * *",
            "2026-10-25 00:30",
            "2026-10-25 01:30 BST",
            "2026-10-25 01:30",
            "2026-10-26 01:30",
        ),
        (
            NYC,
            "30 1 * * *",
            "2026-11-01 05:30",
            "2026-11-01 01:30 EDT",
            "2026-11-01 06:30",
            "2026-11-02 06:30",
        ),
        (
            SYD,
            "30 2 * * *",
            "2026-04-04 15:30",
            "2026-04-05 02:30 AEDT",
            "2026-04-04 16:30",
            "2026-04-05 16:30",
        ),
    ],
)
def test_repeated_cron_start_opens_once(tz, expr, first_utc, first_local, second_utc, next_day_utc):
    spec = cron(expr, "30m", tz)
    first = next_occurrence(spec, utc(first_utc) - timedelta(hours=6))
    assert first is not None and (first.start, local(first.start, tz)) == (utc(first_utc), first_local)
    assert local(utc(second_utc), tz)[11:16] == first_local[11:16]  # the same wall time, again
    assert occurrence_at(spec, utc(second_utc)) is None
    assert occurrence_at(spec, utc(second_utc) + timedelta(minutes=5)) is None
    following = next_occurrence(spec, first.start)
    assert following is not None and following.start == utc(next_day_utc)


@pytest.mark.parametrize(
    "tz, day, start_local, end_local",
    [
        # duration is elapsed time: 4h from local midnight ends at 05:00 or 03:00 local on a change night.
        (LON, "2026-03-28 12:00", "2026-03-29 00:00 GMT", "2026-03-29 05:00 BST"),
        (LON, "2026-10-24 12:00", "2026-10-25 00:00 BST", "2026-10-25 03:00 GMT"),
        (NYC, "2026-03-07 12:00", "2026-03-08 00:00 EST", "2026-03-08 05:00 EDT"),
        (NYC, "2026-10-31 12:00", "2026-11-01 00:00 EDT", "2026-11-01 03:00 EST"),
        (SYD, "2026-04-04 00:00", "2026-04-05 00:00 AEDT", "2026-04-05 03:00 AEST"),
        (SYD, "2026-10-03 00:00", "2026-10-04 00:00 AEST", "2026-10-04 05:00 AEDT"),
        (LON, "2026-06-01 12:00", "2026-06-02 00:00 BST", "2026-06-02 04:00 BST"),
    ],
)
def test_duration_is_elapsed_time_across_change(tz, day, start_local, end_local):
    spec = cron("0 0 * * *", "4h", tz)
    occ = next_occurrence(spec, utc(day))
    assert occ is not None
    assert (local(occ.start, tz), local(occ.end, tz)) == (start_local, end_local)
    assert occ.end - occ.start == timedelta(hours=4)
    assert occurrence_at(spec, occ.end - timedelta(seconds=1)) == occ
    assert occurrence_at(spec, occ.end) is None


BUSINESS = {tz: cron("0 8 * * 1-5", "10h", tz, name="business-hours") for tz in (LON, NYC, SYD)}


@pytest.mark.parametrize(
    "tz, instant, inside",
    [
        (LON, "2026-03-27 07:59", False),  # Friday, GMT
        (LON, "2026-03-27 08:00", True),
        (LON, "2026-03-27 17:59", True),
        (LON, "2026-03-27 18:00", False),
        (LON, "2026-03-28 12:00", False),  # Saturday
        (LON, "2026-03-30 06:59", False),  # Monday, BST: opens 07:00 UTC
        (LON, "2026-03-30 07:00", True),
        (LON, "2026-03-30 16:59", True),
        (LON, "2026-03-30 17:00", False),
        (LON, "2026-10-23 07:00", True),  # Friday, BST
        (LON, "2026-10-26 07:30", False),  # Monday, GMT: opens 08:00 UTC
        (LON, "2026-10-26 08:00", True),
        (NYC, "2026-03-06 12:59", False),  # Friday, EST: 08:00-18:00 = 13:00-23:00 UTC
        (NYC, "2026-03-06 13:00", True),
        (NYC, "2026-03-06 12:00", False),
        (NYC, "2026-03-06 23:00", False),
        (NYC, "2026-03-09 12:00", True),  # Monday, EDT: 12:00-22:00 UTC
        (NYC, "2026-03-09 22:00", False),
        (NYC, "2026-11-02 12:30", False),  # Monday, EST again
        (NYC, "2026-11-02 13:00", True),
        (SYD, "2026-04-02 21:00", True),  # Friday 3 Apr 08:00 AEDT
        (SYD, "2026-04-02 20:59", False),
        (SYD, "2026-04-05 21:59", False),  # Monday 6 Apr 07:59 AEST
        (SYD, "2026-04-05 22:00", True),
        (SYD, "2026-10-04 20:59", False),  # Monday 5 Oct 07:59 AEDT
        (SYD, "2026-10-04 21:00", True),
    ],
)
def test_inside_business_hours(tz, instant, inside):
    assert (occurrence_at(BUSINESS[tz], utc(instant)) is not None) is inside


def test_repeated_start_inside_window_is_one_occurrence():
    spec = cron("30 1 * * *", "2h", LON)  # 01:30 BST -> 03:30 UTC-elapsed: 00:30Z-02:30Z
    occ = occurrence_at(spec, utc("2026-10-25 01:45"))  # 01:45 GMT, after the second 01:30
    assert occ is not None and (occ.start, occ.end) == (utc("2026-10-25 00:30"), utc("2026-10-25 02:30"))
    assert next_change([spec], utc("2026-10-25 01:45")) == utc("2026-10-25 02:30")


@pytest.mark.parametrize("tz", [LON, NYC, SYD])
@pytest.mark.parametrize("expr", ["0 1 * * *", "30 2 * * *", "15 1,3 * * *", "0 8 * * 1-5"])
@pytest.mark.parametrize("around", ["2026-03-01", "2026-03-25", "2026-04-01", "2026-10-01", "2026-10-22"])
def test_starts_match_cronsim_for_fixed_time_expressions(tz, expr, around):
    zone = ZoneInfo(tz)
    begin = datetime.fromisoformat(around).replace(tzinfo=zone)
    expected = CronSim(expr, begin)
    spec, after = cron(expr, "1m", tz), begin.astimezone(UTC)
    for _ in range(12):
        occ = next_occurrence(spec, after)
        assert occ is not None
        assert occ.start == next(expected).astimezone(UTC)
        after = occ.start


# --- one-off windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "start, end, tz, start_utc, end_utc",
    [
        ("2026-12-20 00:00", "2027-01-04 00:00", LON, "2026-12-20 00:00", "2027-01-04 00:00"),
        ("2026-07-01 09:00", "2026-07-01 17:00", LON, "2026-07-01 08:00", "2026-07-01 16:00"),
        ("2026-03-07 12:00", "2026-03-09 12:00", NYC, "2026-03-07 17:00", "2026-03-09 16:00"),
        ("2026-04-04 12:00", "2026-04-05 12:00", SYD, "2026-04-04 01:00", "2026-04-05 02:00"),
        # nonexistent local times move forward by the gap; ambiguous ones take the first
        ("2026-03-29 01:30", "2026-03-29 03:00", LON, "2026-03-29 01:30", "2026-03-29 02:00"),
        ("2026-10-25 01:30", "2026-10-25 03:00", LON, "2026-10-25 00:30", "2026-10-25 03:00"),
        ("2026-03-08 02:30", "2026-03-08 04:00", NYC, "2026-03-08 07:30", "2026-03-08 08:00"),
        ("2026-11-01 01:30", "2026-11-01 02:00", NYC, "2026-11-01 05:30", "2026-11-01 07:00"),
        ("2026-10-04 02:30", "2026-10-04 04:00", SYD, "2026-10-03 16:30", "2026-10-03 17:00"),
        ("2026-04-05 02:30", "2026-04-05 04:00", SYD, "2026-04-04 15:30", "2026-04-04 18:00"),
        ("2026-12-20 00:00", "2026-12-21 00:00", "UTC", "2026-12-20 00:00", "2026-12-21 00:00"),
    ],
)
def test_one_off_in_local_time(start, end, tz, start_utc, end_utc):
    spec = WindowSpec(name="once", start=start, end=end, timezone=tz)
    occ = next_occurrence(spec, utc("2026-01-01 00:00"))
    assert occ == Occurrence("once", utc(start_utc), utc(end_utc), utc(end_utc))
    assert occurrence_at(spec, occ.start) == occ
    assert occurrence_at(spec, occ.end - timedelta(seconds=1)) == occ
    assert occurrence_at(spec, occ.start - timedelta(seconds=1)) is None
    assert occurrence_at(spec, occ.end) is None
    assert next_occurrence(spec, occ.start) is None  # a past one-off has no next occurrence


@pytest.mark.parametrize(
    "value, start_utc",
    [
        (datetime(2026, 12, 20, 0, 0), "2026-12-20 00:00"),  # YAML naive datetime: local wall time
        (date(2026, 12, 20), "2026-12-20 00:00"),  # YAML date: local midnight
        (datetime(2026, 12, 20, tzinfo=timezone(timedelta(hours=1))), "2026-12-19 23:00"),  # exact instant
        ("2026-12-20T00:00", "2026-12-20 00:00"),
        ("2026-12-20", "2026-12-20 00:00"),
    ],
)
def test_one_off_accepts_yaml_values(value, start_utc):
    spec = WindowSpec(name="once", start=value, end="2027-01-04 00:00", timezone=LON)
    occ = occurrence_at(spec, utc(start_utc))
    assert occ is not None and occ.start == utc(start_utc)


def test_config_from_fleet_yml():
    doc = yaml.safe_load(
        """
        freeze:
          windows:
            - {name: year-end, start: "2026-12-20 00:00", end: "2027-01-04 00:00", timezone: Europe/London}
            - {name: business-hours, cron: "0 8 * * 1-5", duration: 10h, timezone: Europe/London}
        maintenance:
          windows:
            - {name: overnight, cron: "0 1 * * *", duration: 4h, cutoff: 30m, timezone: Europe/London}
        """
    )
    freeze, maintenance = WindowsConfig(**doc["freeze"]), WindowsConfig(**doc["maintenance"])
    assert [w.name for w in freeze.windows] == ["year-end", "business-hours"]
    assert freeze.windows[1].duration == 36000 and freeze.windows[0].start == datetime(2026, 12, 20)
    (overnight,) = maintenance.windows
    assert (overnight.duration, overnight.cutoff, overnight.timezone) == (14400, 1800, LON)
    assert WindowsConfig().windows == []


# --- active and next_change --------------------------------------------------------------------------

FREEZE = WindowsConfig(
    windows=[
        {"name": "year-end", "start": "2026-12-20 00:00", "end": "2027-01-04 00:00", "timezone": LON},
        {"name": "business-hours", "cron": "0 8 * * 1-5", "duration": "10h", "timezone": LON},
    ]
).windows


@pytest.mark.parametrize(
    "instant, names, change",
    [
        ("2026-12-18 12:00", ["business-hours"], "2026-12-18 18:00"),  # Friday
        ("2026-12-18 19:00", [], "2026-12-20 00:00"),  # year-end starts before Monday
        ("2026-12-21 09:00", ["year-end", "business-hours"], "2026-12-21 18:00"),
        ("2026-12-21 18:00", ["year-end"], "2026-12-22 08:00"),
        ("2027-01-03 12:00", ["year-end"], "2027-01-04 00:00"),  # Sunday
        ("2027-01-04 00:00", [], "2027-01-04 08:00"),
        ("2026-03-27 18:00", [], "2026-03-30 07:00"),  # next Monday is in BST
        ("2026-10-23 16:59", ["business-hours"], "2026-10-23 17:00"),
        ("2026-10-23 17:00", [], "2026-10-26 08:00"),  # next Monday is in GMT
    ],
)
def test_active_and_next_change(instant, names, change):
    assert [occ.name for occ in active(FREEZE, utc(instant))] == names
    assert next_change(FREEZE, utc(instant)) == utc(change)


@pytest.mark.parametrize(
    "specs, instant, change",
    [
        ([], "2026-06-01 00:00", None),
        (
            [WindowSpec(name="old", start="2020-01-01 00:00", end="2020-01-02 00:00")],
            "2026-06-01 00:00",
            None,
        ),
        ([cron("0 0 * * *", "24h", "UTC")], "2026-06-01 12:00", None),  # never closes
        ([cron("0 1,2 * * *", "1h", "UTC")], "2026-06-01 01:30", "2026-06-01 03:00"),  # touching: one
        ([cron("0 1,2 * * *", "90m", "UTC")], "2026-06-01 01:30", "2026-06-01 03:30"),  # overlapping: one
        ([cron("0 0 29 2 *", "1h", "UTC")], "2026-03-01 00:00", "2028-02-29 00:00"),  # rare cron
        ([cron("30 1 * * *", "4h", LON)], "2026-03-28 23:00", "2026-03-29 01:00"),  # opens after the gap
        ([cron("30 1 * * *", "4h", LON)], "2026-03-29 02:00", "2026-03-29 05:00"),
        ([cron("30 1 * * *", "4h", LON)], "2026-10-25 01:30", "2026-10-25 04:30"),  # once, elapsed
    ],
)
def test_next_change_edges(specs, instant, change):
    assert next_change(specs, utc(instant)) == (utc(change) if change else None)


def test_merged_occurrence_spans_touching_firings():
    occ = occurrence_at(cron("0 1,2 * * *", "1h", "UTC"), utc("2026-06-01 02:30"))
    assert occ is not None and (occ.start, occ.end) == (utc("2026-06-01 01:00"), utc("2026-06-01 03:00"))


def test_never_closing_window_is_active_without_a_next_occurrence():
    spec = cron("0 0 * * *", "24h", "UTC")
    assert occurrence_at(spec, utc("2026-06-01 12:00")) is not None
    assert next_occurrence(spec, utc("2026-06-01 12:00")) is None


# --- maintenance state and cutoff --------------------------------------------------------------------

OVERNIGHT = [cron("0 1 * * *", "4h", LON, name="overnight", cutoff="30m")]  # BST: 00:00Z-04:00Z, cut 03:30Z


@pytest.mark.parametrize(
    "instant, state",
    [
        ("2026-05-31 23:59", (False, None, None, "2026-06-01 00:00")),
        ("2026-06-01 00:00", (True, "overnight", "2026-06-01 03:30", "2026-06-02 00:00")),
        ("2026-06-01 03:29", (True, "overnight", "2026-06-01 03:30", "2026-06-02 00:00")),
        ("2026-06-01 03:30", (False, "overnight", None, "2026-06-02 00:00")),  # past cutoff
        ("2026-06-01 04:00", (False, None, None, "2026-06-02 00:00")),
        # spring forward: 01:00 does not exist, the window opens at 02:00 BST (01:00Z) for 4h
        ("2026-03-29 00:30", (False, None, None, "2026-03-29 01:00")),
        ("2026-03-29 04:29", (True, "overnight", "2026-03-29 04:30", "2026-03-30 00:00")),
        ("2026-03-29 04:30", (False, "overnight", None, "2026-03-30 00:00")),
        # fall back: 01:00 BST (00:00Z) once, 4h elapsed
        ("2026-10-25 01:30", (True, "overnight", "2026-10-25 03:30", "2026-10-26 01:00")),
        ("2026-10-25 03:45", (False, "overnight", None, "2026-10-26 01:00")),
    ],
)
def test_maintenance_state_with_cutoff(instant, state):
    open_, window, closes_at, next_open = state
    assert maintenance_state(OVERNIGHT, utc(instant)) == MaintenanceState(
        open=open_,
        window=window,
        closes_at=utc(closes_at) if closes_at else None,
        next_open=utc(next_open) if next_open else None,
    )


def test_maintenance_state_to_json():
    state = maintenance_state(OVERNIGHT, utc("2026-06-01 01:00"))
    assert state.to_json() == {
        "open": True,
        "window": "overnight",
        "closes_at": "2026-06-01T03:30:00+00:00",
        "next_open": "2026-06-02T00:00:00+00:00",
    }
    assert json.loads(json.dumps(state.to_json()))["open"] is True
    closed = maintenance_state(OVERNIGHT, utc("2026-06-01 12:00")).to_json()
    assert closed == {
        "open": False,
        "window": None,
        "closes_at": None,
        "next_open": "2026-06-02T00:00:00+00:00",
    }


def test_occurrence_to_json():
    occ = occurrence_at(OVERNIGHT[0], utc("2026-06-01 01:00"))
    assert occ is not None and occ.to_json() == {
        "name": "overnight",
        "start": "2026-06-01T00:00:00+00:00",
        "end": "2026-06-01T04:00:00+00:00",
        "cutoff_at": "2026-06-01T03:30:00+00:00",
    }


def test_no_maintenance_windows_means_unrestricted():
    assert maintenance_state([], utc("2026-06-01 12:00")) == MaintenanceState(True, None, None, None)


def test_overlapping_maintenance_windows_use_the_latest_cutoff():
    specs = [*OVERNIGHT, cron("0 2 * * *", "4h", LON, name="late", cutoff="1h")]  # 01:00Z-05:00Z, cut 04:00Z
    state = maintenance_state(specs, utc("2026-06-01 03:45"))
    assert (state.open, state.window, state.closes_at) == (True, "late", utc("2026-06-01 04:00"))


# --- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        (
            {
                "name": "year-end",
                "start": "2026-12-20 00:00",
                "end": "2027-01-04 00:00",
                "timezone": "Europe/Lodnon",
            },
            "window 'year-end': unknown timezone 'Europe/Lodnon' (use an IANA name such as Europe/London)",
        ),
        ({"name": "n", "cron": "0 1 * * *", "duration": "1h", "timezone": "../etc"}, "unknown timezone"),
        ({"name": "n", "cron": "0 1 * * *", "duration": "1h", "timezone": "Europe"}, "unknown timezone"),
        ({"name": "n", "cron": "61 1 * * *", "duration": "1h"}, "bad cron '61 1 * * *': Bad minute"),
        ({"name": "n", "cron": "0 1 * * 9", "duration": "1h"}, "Bad day-of-week"),
        ({"name": "n", "cron": "0 0 30 2 *", "duration": "1h"}, "Bad day-of-month"),
        ({"name": "n", "cron": "0 0 1 * * *", "duration": "1h"}, "use 5 fields"),
        ({"name": "n", "cron": "nightly", "duration": "1h"}, "bad cron 'nightly'"),
        ({"name": "n", "cron": "0 1 * * *", "duration": "-1h"}, "duration: a duration cannot be negative"),
        ({"name": "n", "cron": "0 1 * * *", "duration": -60}, "duration: a duration cannot be negative"),
        ({"name": "n", "cron": "0 1 * * *", "duration": 0}, "duration must be longer than zero"),
        ({"name": "n", "cron": "0 1 * * *", "duration": "soon"}, "duration: not a duration"),
        (
            {"name": "year-end", "start": "2027-01-05 00:00", "end": "2027-01-04 00:00"},
            "window 'year-end': end 2027-01-04 00:00 is before start 2027-01-05 00:00",
        ),
        (
            {"name": "n", "start": "2027-01-04 00:00", "end": "2027-01-04 00:00"},
            "is the same instant as start",
        ),
        # ambiguous times take the first (BST) reading: end 00:30Z is before start 00:45Z
        ({"name": "n", "start": "2026-10-25 01:45", "end": "2026-10-25 01:30", "timezone": LON}, "is before"),
        (
            {"name": "n", "start": "2026-13-01 00:00", "end": "2027-01-04 00:00"},
            "start: '2026-13-01 00:00' is not",
        ),
        (
            {"name": "n", "start": "2026-12-20", "end": "2027-01-04", "cron": "0 1 * * *", "duration": "1h"},
            "not both",
        ),
        ({"name": "n", "start": "2026-12-20", "cron": "0 1 * * *"}, "not both"),
        ({"name": "n"}, "window 'n': give start and end (a one-off window) or cron and duration"),
        ({"name": "n", "start": "2026-12-20 00:00"}, "needs both start and end"),
        ({"name": "n", "cron": "0 1 * * *"}, "needs both cron (when it opens) and duration"),
        ({"name": "n", "duration": "1h"}, "needs both cron"),
        ({"name": "n", "cron": "0 1 * * *", "duration": "4h", "cutoff": "4h"}, "cutoff 4h must be shorter"),
        ({"name": "n", "cron": "0 1 * * *", "duration": "4h", "cutoff": "5h"}, "cutoff 5h must be shorter"),
        (
            {"name": "n", "cron": "0 1 * * *", "duration": "4h", "cutoff": "-5m"},
            "cutoff: a duration cannot be",
        ),
        ({"name": "n", "start": "2026-12-20 00:00", "end": "2026-12-20 01:00", "cutoff": "1h"}, "(1h)"),
        (
            {"name": "n", "cron": "0 1 * * *", "duration": "4h", "durration": "5h"},
            "unknown field 'durration'",
        ),
    ],
)
def test_bad_window_names_itself(raw, message):
    with pytest.raises(ValueError, match="window '") as info:
        WindowSpec(**raw)
    assert message in str(info.value)
    assert f"window {raw['name']!r}" in str(info.value)


@pytest.mark.parametrize("name", [None, "", "  "])
def test_window_needs_a_name(name):
    with pytest.raises(ValueError, match="every window needs a name"):
        WindowSpec.model_validate({"name": name, "cron": "0 1 * * *", "duration": "1h"})


def test_duplicate_window_names():
    windows = [{"name": "overnight", "cron": "0 1 * * *", "duration": "4h"}] * 2
    with pytest.raises(ValueError, match="window 'overnight' is defined twice"):
        WindowsConfig(windows=windows)


# --- instants ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2026-03-29T00:30:00Z", "2026-03-29 00:30"),
        ("2026-03-29T00:30:00z", "2026-03-29 00:30"),
        ("2026-03-29T01:30:00+01:00", "2026-03-29 00:30"),
        ("2026-03-29 01:30+01:00", "2026-03-29 00:30"),
        ("2026-03-28T20:30:00-04:00", "2026-03-29 00:30"),
        ("  2026-03-29T00:30Z ", "2026-03-29 00:30"),
    ],
)
def test_parse_instant(text, expected):
    parsed = parse_instant(text)
    assert parsed == utc(expected) and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text, message",
    [
        ("2026-03-29T00:30:00", "add an offset such as Z or +01:00"),
        ("2026-03-29", "add an offset such as Z or +01:00"),
        ("tomorrow", "not an ISO 8601 instant"),
        ("", "not an ISO 8601 instant"),
    ],
)
def test_parse_instant_refuses(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_instant(text)


@pytest.mark.parametrize(
    "call",
    [
        lambda at: occurrence_at(BUSINESS[LON], at),
        lambda at: next_occurrence(BUSINESS[LON], at),
        lambda at: active(FREEZE, at),
        lambda at: next_change(FREEZE, at),
        lambda at: maintenance_state(OVERNIGHT, at),
        lambda at: maintenance_state([], at),
    ],
)
def test_naive_instants_are_refused(call):
    with pytest.raises(ValueError, match="naive"):
        call(datetime(2026, 6, 1, 12, 0))


def test_aware_instants_in_any_zone():
    at = datetime(2026, 3, 30, 8, 0, tzinfo=ZoneInfo(LON))  # 08:00 BST = 07:00Z
    occ = occurrence_at(BUSINESS[LON], at)
    assert occ is not None and occ.start == utc("2026-03-30 07:00") and occ.start.tzinfo is UTC
