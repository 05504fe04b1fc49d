"""Freeze and maintenance windows: is an instant inside one, and when does that change next?

A window is one-off (`start`/`end`, local wall time in `timezone`) or recurring (`cron` opens it, it stays
open for `duration`). `cutoff` stops new batches that long before a maintenance window ends. Instants passed
in must be timezone-aware; instants returned are aware UTC.

Daylight-saving semantics:
- cron fields are matched in the window's local wall time: `0 1 * * *` opens at 01:00 local all year round;
- `duration` is elapsed time from the start: 4h from 00:00 ends at 05:00 local on a spring-forward night and
  at 03:00 local on a fall-back night;
- a cron start that does not exist locally (01:30 in London on a spring-forward day) opens the window at the
  first instant after the gap (02:00 BST), as cronsim and cron daemons run skipped jobs: no night is lost;
- a cron start that happens twice (01:30 in London on a fall-back day) opens the window once, at the first;
- one-off `start`/`end` are read as zoneinfo reads them (fold=0): an ambiguous time is the first one, and a
  nonexistent one moves forward by the length of the gap (01:30 on a London spring-forward day is 02:30 BST);
  a datetime that carries its own UTC offset is taken as that exact instant;
- occurrences of one window that overlap or touch form one occurrence.
A window that never closes (`0 0 * * *` for 24h in UTC) is followed for at most `HORIZON` (400 days) or
20 000 cron firings: its occurrence reports the end where the search stopped, and it has no next change.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, model_validator

from fleetctl.units import format_duration, parse_duration

HORIZON = timedelta(days=400)
_MAX_STEPS = 20_000
_MARGIN = timedelta(days=1)  # more than any UTC offset change: wall-clock order vs instant order
_FIELDS = ("name", "timezone", "start", "end", "cron", "duration", "cutoff")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown timezone {name!r} (use an IANA name such as Europe/London)") from None


def _parse_local(value: object) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, time())
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a date and time (use YYYY-MM-DD HH:MM)")


def _fmt(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M") + (dt.strftime(" %z") if dt.tzinfo else "")


class WindowSpec(BaseModel):
    """One window from fleet.yml. `duration` and `cutoff` are seconds; `start`/`end` local wall time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    timezone: str = "UTC"
    start: datetime | None = None
    end: datetime | None = None
    cron: str | None = None
    duration: float | None = None
    cutoff: float = 0.0

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"every window needs a name (got {name!r})")
        unknown = [str(k) for k in data if k not in _FIELDS]
        if unknown:
            raise ValueError(f"window {name!r}: unknown field {unknown[0]!r} (known: {', '.join(_FIELDS)})")
        out = dict(data)
        parsers = {
            "duration": parse_duration,
            "cutoff": parse_duration,
            "start": _parse_local,
            "end": _parse_local,
        }
        for key, parse in parsers.items():
            if out.get(key) is not None:
                try:
                    out[key] = parse(out[key])
                except ValueError as exc:
                    raise ValueError(f"window {name!r}: {key}: {exc}") from None
        return out

    @model_validator(mode="after")
    def _check(self) -> WindowSpec:
        def fail(message: str) -> ValueError:
            return ValueError(f"window {self.name!r}: {message}")

        try:
            _zone(self.timezone)
        except ValueError as exc:
            raise fail(str(exc)) from None
        one_off = self.start is not None or self.end is not None
        recurring = self.cron is not None or self.duration is not None
        forms = "start and end (a one-off window) or cron and duration (a recurring window)"
        if one_off and recurring:
            raise fail(f"give either {forms}, not both")
        if not one_off and not recurring:
            raise fail(f"give {forms}")
        if self.start is not None and self.end is not None:
            occ = _one_off(self)
            if occ.end <= occ.start:
                how = "before" if occ.end < occ.start else "the same instant as"
                raise fail(f"end {_fmt(self.end)} is {how} start {_fmt(self.start)}")
            length = (occ.end - occ.start).total_seconds()
        elif one_off:
            raise fail("a one-off window needs both start and end")
        elif self.cron is None or self.duration is None:
            raise fail("a recurring window needs both cron (when it opens) and duration (how long)")
        else:
            if len(self.cron.split()) != 5:
                raise fail(
                    f"bad cron {self.cron!r}: use 5 fields (minute hour day-of-month month day-of-week)"
                )
            try:
                CronSim(self.cron, datetime(2000, 1, 1))
            except CronSimError as exc:
                raise fail(f"bad cron {self.cron!r}: {exc}") from None
            if self.duration <= 0:
                raise fail("duration must be longer than zero")
            length = self.duration
        if self.cutoff >= length:
            raise fail(
                f"cutoff {format_duration(self.cutoff)} must be shorter than the window "
                f"({format_duration(length)})"
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class WindowsConfig(BaseModel):
    """The `freeze:` or `maintenance:` section: a list of uniquely named windows."""

    model_config = ConfigDict(extra="forbid")

    windows: list[WindowSpec] = []

    @model_validator(mode="after")
    def _unique(self) -> WindowsConfig:
        seen: set[str] = set()
        for spec in self.windows:
            if spec.name in seen:
                raise ValueError(f"window {spec.name!r} is defined twice: window names must be unique")
            seen.add(spec.name)
        return self


def _json(obj: object) -> dict[str, Any]:
    """A dataclass as a JSON-ready dict: instants as ISO 8601 strings with offset."""
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in vars(obj).items()}


@dataclass(frozen=True)
class Occurrence:
    """One stretch of time a window is open: [start, end), in UTC. `cutoff_at` is end - cutoff."""

    name: str
    start: datetime
    end: datetime
    cutoff_at: datetime

    def to_json(self) -> dict[str, Any]:
        return _json(self)


@dataclass(frozen=True)
class MaintenanceState:
    """Whether a new batch may start now. See `maintenance_state`."""

    open: bool
    window: str | None
    closes_at: datetime | None
    next_open: datetime | None

    def to_json(self) -> dict[str, Any]:
        """{"open", "window", "closes_at", "next_open"}; instants as ISO 8601 strings with offset."""
        return _json(self)


def parse_instant(text: str) -> datetime:
    """ISO 8601 with an offset ('2026-03-29T00:30:00Z', '2026-03-29T01:30:00+01:00') -> aware UTC datetime."""
    s = text.strip()
    try:
        dt = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("z", "Z")) else s)
    except ValueError:
        raise ValueError(f"not an ISO 8601 instant: {text!r} (e.g. 2026-03-29T00:30:00Z)") from None
    if dt.utcoffset() is None:
        raise ValueError(f"{text!r} has no UTC offset: add an offset such as Z or +01:00")
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is outside the calendar in UTC (years 1 to 9999)") from None


def _aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{at.isoformat()} is a naive datetime: give an aware one (e.g. in UTC)")


def _occurrence(spec: WindowSpec, start: datetime, end: datetime) -> Occurrence:
    return Occurrence(spec.name, start, end, end - timedelta(seconds=spec.cutoff))


def _one_off(spec: WindowSpec) -> Occurrence:
    assert spec.start is not None and spec.end is not None
    start, end = (
        (dt if dt.tzinfo else dt.replace(tzinfo=spec.zone, fold=0)).astimezone(UTC)
        for dt in (spec.start, spec.end)
    )
    return _occurrence(spec, start, end)


def _cron_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """A cron match in local wall time -> its instant: the first if ambiguous, the gap's end if skipped."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a spring-forward gap: fold=1 lands before the change, fold=0 after it. Find the change.
    lo, hi = int(wall.replace(tzinfo=zone, fold=1).timestamp()), int(first.timestamp())
    after = first.astimezone(zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _fires(spec: WindowSpec, at: datetime, reverse: bool = False) -> Iterator[datetime]:
    """Cron start instants strictly after `at` (at or before it, if reverse), in order, at most _MAX_STEPS."""
    assert spec.cron is not None
    zone = spec.zone
    local = at.astimezone(zone).replace(tzinfo=None, fold=0)
    previous = None
    # cronsim itself gives up after 50 years without a match.
    cron = CronSim(spec.cron, local + _MARGIN if reverse else local - _MARGIN, reverse=reverse)
    for step, wall in enumerate(cron):
        if step > _MAX_STEPS:
            return
        instant = _cron_instant(wall, zone)
        if instant != previous and (instant <= at if reverse else instant > at):
            yield instant
        previous = instant


def _run(spec: WindowSpec, fire: datetime) -> tuple[Occurrence, bool]:
    """The occurrence holding the firing `fire`, merged with overlapping or touching neighbours, and
    whether it is open-ended (still open at the horizon, so its end is only where the search stopped)."""
    length = timedelta(seconds=spec.duration or 0)
    start, end = fire, fire + length
    for earlier in _fires(spec, fire - timedelta(microseconds=1), reverse=True):
        if earlier + length < start or earlier < fire - HORIZON:
            break
        start = earlier
    for later in _fires(spec, fire):
        if later > end:
            return _occurrence(spec, start, end), False
        if later > fire + HORIZON:
            break
        end = later + length
    return _occurrence(spec, start, end), True


def _current(spec: WindowSpec, at: datetime) -> tuple[Occurrence, bool] | None:
    _aware(at)
    if spec.cron is None:
        occ = _one_off(spec)
        return (occ, False) if occ.start <= at < occ.end else None
    last = next(_fires(spec, at, reverse=True), None)
    if last is None or last + timedelta(seconds=spec.duration or 0) <= at:
        return None
    return _run(spec, last)


def _next(spec: WindowSpec, after: datetime, current: tuple[Occurrence, bool] | None) -> Occurrence | None:
    if spec.cron is None:
        occ = _one_off(spec)
        return occ if occ.start > after else None
    if current is not None and current[1]:
        return None
    fire = next(_fires(spec, current[0].end if current else after), None)
    return _run(spec, fire)[0] if fire is not None else None


def occurrence_at(spec: WindowSpec, at: datetime) -> Occurrence | None:
    """The occurrence of `spec` that contains `at` (start <= at < end), or None."""
    current = _current(spec, at)
    return current[0] if current else None


def next_occurrence(spec: WindowSpec, after: datetime) -> Occurrence | None:
    """The first occurrence of `spec` that starts strictly after `after`, or None."""
    return _next(spec, after, _current(spec, after))


def active(specs: Sequence[WindowSpec], at: datetime) -> list[Occurrence]:
    """The occurrences containing `at`, one per active window, in definition order."""
    return [occ for spec in specs if (occ := occurrence_at(spec, at)) is not None]


def next_change(specs: Sequence[WindowSpec], at: datetime) -> datetime | None:
    """The earliest instant after `at` when an active window ends or another one starts (None: never)."""
    changes = []
    for spec in specs:
        current = _current(spec, at)
        if current is None:
            upcoming = _next(spec, at, None)
            changes += [upcoming.start] if upcoming else []
        elif not current[1]:
            changes.append(current[0].end)
    return min(changes, default=None)


def maintenance_state(specs: Sequence[WindowSpec], at: datetime) -> MaintenanceState:
    """May an unattended run start a new batch at `at`?

    Open while `at` is inside a maintenance window and before its cutoff; `window` and `closes_at` (the
    cutoff) come from the open window that closes last. Inside a window but past its cutoff the state is
    closed, with `window` naming it. `next_open` is the next start of any window after `at`.
    With no maintenance windows configured, unattended runs are not restricted: open=True, window=None,
    closes_at=None, next_open=None.
    """
    _aware(at)
    if not specs:
        return MaintenanceState(open=True, window=None, closes_at=None, next_open=None)
    starts = [occ.start for spec in specs if (occ := next_occurrence(spec, at)) is not None]
    next_open = min(starts, default=None)
    current = active(specs, at)
    usable = [occ for occ in current if at < occ.cutoff_at]
    if usable:
        best = max(usable, key=lambda occ: occ.cutoff_at)
        return MaintenanceState(open=True, window=best.name, closes_at=best.cutoff_at, next_open=next_open)
    window = current[0].name if current else None
    return MaintenanceState(open=False, window=window, closes_at=None, next_open=next_open)
