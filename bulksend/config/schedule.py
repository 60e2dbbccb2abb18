"""``[schedule]``: when a campaign may send (start, daily windows in a time zone, end).

.. code-block:: toml

    [schedule]
    start_at = 2026-12-04T08:00:00+01:00   # a TOML date-time (no offset: in `timezone`)
    stop_at = 2026-12-06T20:00:00+01:00    # what is still waiting then expires ("schedule")
    timezone = "Europe/Berlin"              # the windows' zone (default UTC)
    windows = ["08:00-12:00", "14:00-20:00"]  # daily; "22:00-06:00" runs past midnight
    timezone_column = "tz"                  # a recipient's own zone, from this column
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass
from typing import Final

from bulksend.config.table import Table

_WINDOW: Final = re.compile(
    r"^\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*-\s*(\d{1,2}):(\d{2})(?::(\d{2}))?\s*$"
)
_DAY: Final = 86_400


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """When sending is allowed. Times are epoch seconds; windows are (start, end) seconds
    of the local day in ``timezone`` (end <= start: the window runs past midnight)."""

    start_at: float | None = None
    stop_at: float | None = None
    timezone: str = "UTC"
    windows: tuple[tuple[int, int], ...] = ()
    timezone_column: str | None = None

    @property
    def active(self) -> bool:
        """Whether it restricts anything."""
        return self.start_at is not None or self.stop_at is not None or bool(self.windows)


def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA time zone ``name``.

    Raises:
        ValueError: no such zone here (the message says where zones come from).
    """
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as 'Europe/Berlin'; the zones "
            "come from the system's tzdata, or the tzdata Python package)"
        ) from None


def parse_window(text: str) -> tuple[int, int]:
    """``"08:00-20:00"`` (or with seconds) as (start, end) seconds of the day.

    Raises:
        ValueError: not a window.
    """
    m = _WINDOW.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a window; write it like '08:00-20:00'")
    h1, m1, s1, h2, m2, s2 = (int(g or 0) for g in m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or s1 > 59 or s2 > 59 or (h2 == 24 and m2 + s2):
        raise ValueError(f"{text!r}: no such time of day")
    start, end = h1 * 3600 + m1 * 60 + s1, h2 * 3600 + m2 * 60 + s2
    if start == end % _DAY and end != _DAY:
        raise ValueError(f"{text!r} is empty; for all day leave `windows` out")
    return start, end


def _moment(table: Table, name: str, tz: zoneinfo.ZoneInfo) -> float | None:
    value = table.raw(name)
    if value is None:
        return None
    moment = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = dt.datetime.fromisoformat(value)
    if not isinstance(moment, dt.datetime):
        raise table.error(
            name, f"{value!r} is not a date and time", "Write it like 2026-12-04T08:00:00+01:00."
        )
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def load_schedule(root: Table) -> ScheduleConfig:
    """The ``[schedule]`` table (none: no restriction)."""
    t = root.sub("schedule")
    if t is None:
        return ScheduleConfig()
    tz_name = t.string("timezone") or "UTC"
    try:
        tz = zone(tz_name)
    except ValueError as exc:
        raise t.error("timezone", str(exc), "Use an IANA zone name.") from None
    windows = []
    for text in t.string_list("windows"):
        try:
            windows.append(parse_window(text))
        except ValueError as exc:
            raise t.error("windows", str(exc), "Write each window as 'HH:MM-HH:MM'.") from None
    start_at, stop_at = _moment(t, "start_at", tz), _moment(t, "stop_at", tz)
    if start_at is not None and stop_at is not None and stop_at <= start_at:
        raise t.error("stop_at", "it is not after start_at", "Make stop_at later.")
    column = t.string("timezone_column")
    t.finish()
    return ScheduleConfig(start_at, stop_at, tz_name, tuple(windows), column)
