"""Send windows (``[schedule]``), with no I/O: may a recipient be sent to now, and if not,
when.

How this works: :meth:`SendWindows.opens_at` takes a wall-clock moment and a time zone and
returns that moment if sending is allowed then, else the next moment it is (``math.inf``
once ``stop_at`` has passed). A daily window is laid on the local calendar days around the
moment (the day before too, for a window that runs past midnight), so daylight-saving days
are handled by the zone database (a local time skipped that day reads as PEP 495's fold=0
does: with the offset before the change).

The destination asks :meth:`SendWindows.hold` for each recipient it takes: outside its
window, the recipient goes back to the journal due when the window opens, as a throttle
deferral: not an attempt, and it does not start the recipient's ``max_age``
(invariant 6). After ``stop_at`` it expires with the category ``schedule``; the run ends
every recipient still waiting then (:func:`bulksend.delivery.run` starts that task).
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping
from typing import Any

from bulksend.config.schedule import ScheduleConfig, zone
from bulksend.journal import Due, Outcome

OUTSIDE: str = "outside the send window"


class SendWindows:
    """A campaign's ``[schedule]``, ready to ask."""

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        self._default = zone(config.timezone)
        self._zones: dict[str, zoneinfo.ZoneInfo | None] = {}

    def zone_of(self, data: Mapping[str, Any] | None) -> zoneinfo.ZoneInfo:
        """A recipient's zone: its ``timezone_column`` if that names one, else the campaign's."""
        column = self.config.timezone_column
        name = None if column is None or data is None else data.get(column)
        if not isinstance(name, str) or not name:
            return self._default
        if name not in self._zones:
            try:
                self._zones[name] = zone(name)
            except ValueError:
                self._zones[name] = None  # an unknown zone: the campaign's
        return self._zones[name] or self._default

    def opens_at(self, now: float, tz: zoneinfo.ZoneInfo | None = None) -> float:
        """``now`` if sending is allowed then, else when it next is (inf: never again)."""
        c = self.config
        at = now if c.start_at is None else max(now, c.start_at)
        if c.stop_at is not None and at >= c.stop_at:
            return math.inf
        if c.windows:
            at = self._next_window(at, tz or self._default)
        if c.stop_at is not None and at >= c.stop_at:
            return math.inf
        return at

    def _next_window(self, at: float, tz: zoneinfo.ZoneInfo) -> float:
        today = dt.datetime.fromtimestamp(at, tz).date()
        best = math.inf
        for offset in (-1, 0, 1):
            day = today + dt.timedelta(days=offset)
            for start, end in self.config.windows:
                opens = _local(day, start, tz)
                closes = (
                    _local(day + dt.timedelta(days=1), end, tz)
                    if end <= start
                    else _local(day, end, tz)
                )
                if opens <= at < closes:
                    return at
                if opens > at:
                    best = min(best, opens)
        return best

    def hold(self, due: Due, now: float) -> Outcome | None:
        """What to record instead of sending ``due`` now, or None to send it."""
        opens = self.opens_at(now, self.zone_of(due.data))
        if opens == now:
            return None
        if opens == math.inf:
            return self.stopped()
        return Outcome.throttled(opens - now, OUTSIDE)

    def stopped(self) -> Outcome:
        """The outcome of a recipient still waiting at ``stop_at``."""
        assert self.config.stop_at is not None
        when = dt.datetime.fromtimestamp(self.config.stop_at, self._default).isoformat()
        return Outcome.stopped(f"not sent by the campaign's stop_at ({when})")


def _local(day: dt.date, seconds: int, tz: zoneinfo.ZoneInfo) -> float:
    """Epoch seconds of ``seconds`` into local ``day`` (24:00 is the next day's 00:00)."""
    if seconds >= 86_400:
        return _local(day + dt.timedelta(days=1), seconds - 86_400, tz)
    hours, rest = divmod(seconds, 3600)
    when = dt.datetime(day.year, day.month, day.day, hours, rest // 60, rest % 60, tzinfo=tz)
    return when.timestamp()
