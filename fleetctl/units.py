"""Small value parsers shared by config, CLI and plans: durations, counts/percents, versions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]*")


def parse_duration(text: str | int | float) -> float:
    """'30s', '5m', '2h', '1h30m', '1d' (or a number of seconds) -> seconds. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise ValueError(f"not a duration: {text!r}")
        if text < 0:
            raise ValueError(f"a duration cannot be negative: {text}")
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    if s.startswith("-"):
        raise ValueError(f"a duration cannot be negative: {text!r}")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    m = _DURATION.match(s)
    if not s or not m or not any(m.groups()):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 2h, 1h30m)")
    d, h, mi, sec = m.groups()
    return int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0)


def format_duration(seconds: float) -> str:
    """Seconds -> '1h30m', '45s', '2m05s'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    return f"{m}m{s:02d}s" if s else f"{m}m"


@dataclass(frozen=True)
class CountOrPercent:
    """A count ('3') or a percent ('25%') of some total."""

    value: float
    percent: bool

    @classmethod
    def parse(cls, raw: str | int) -> CountOrPercent:
        if isinstance(raw, bool):
            raise ValueError(f"not a count or percent: {raw!r}")
        if isinstance(raw, int):
            if raw < 0:
                raise ValueError(f"cannot be negative: {raw}")
            return cls(float(raw), False)
        s = str(raw).strip()
        pct = s.endswith("%")
        num = s[:-1].strip() if pct else s
        try:
            value = float(num)
        except (ValueError, OverflowError):
            raise ValueError(f"not a count or percent: {raw!r} (use e.g. 2 or 25%)") from None
        if (
            not math.isfinite(value)
            or value < 0
            or (pct and value > 100)
            or (not pct and not value.is_integer())
        ):
            raise ValueError(f"not a count or percent: {raw!r} (use e.g. 2 or 25%)")
        return cls(value, pct)

    def of(self, total: int, minimum: int = 0) -> int:
        """Resolve against a total. A percent rounds down (as Ansible's `serial`), then `minimum` applies."""
        n = math.floor(total * self.value / 100) if self.percent else int(self.value)
        return max(n, minimum)

    def __str__(self) -> str:
        return f"{self.value:g}%" if self.percent else str(int(self.value))


def check_version(version: str) -> str:
    """A version ends up in paths and commands: letters, digits, '.', '-', '+', '_' only."""
    if not _VERSION.fullmatch(version or "") or ".." in version:
        raise ValueError(
            f"{version!r} is not a plain version: use only letters, digits, '.', '-', '+', '_' (e.g. 1.2.0)"
        )
    return version


MAX_VERSION_LENGTH = 128  # the journal's version columns


class BadNodeVersion(ValueError):
    """A node reported something that is not a plain version: untrusted text, never used further."""


def shown(raw: object, limit: int = 60) -> str:
    """Untrusted text as it may be shown: repr-escaped (no markup, no control characters), truncated."""
    text = repr(raw)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def node_version(raw: object) -> str:
    """A version a node reported (facts, `hc_previous`, `readlink current`, the ledger's record of it).

    Returns it when it is a plain version (see check_version); else raises BadNodeVersion, whose message
    shows the raw text escaped and truncated. A node's answer must never reach a template, path or command.
    """
    if not isinstance(raw, str):
        raise BadNodeVersion(f"the node reported a version that is not text: {shown(raw)}")
    if len(raw) > MAX_VERSION_LENGTH:
        raise BadNodeVersion(
            f"the node reported a version of {len(raw)} characters (at most {MAX_VERSION_LENGTH}): {shown(raw)}"
        )
    try:
        return check_version(raw)
    except ValueError:
        raise BadNodeVersion(
            f"the node reported {shown(raw)} as its version: not a plain version "
            "(only letters, digits, '.', '-', '+', '_')"
        ) from None


def is_plain_version(raw: object) -> bool:
    """True for a plain version (what node_version accepts)."""
    try:
        node_version(raw)
    except BadNodeVersion:
        return False
    return True


def node_version_or_none(raw: object) -> str | None:
    """node_version, with None (nothing reported) passed through."""
    return None if raw is None else node_version(raw)
