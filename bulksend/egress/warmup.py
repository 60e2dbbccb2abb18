"""Warm-up: a new source address sends at most so many messages on each day of its life.

How this works: receivers trust a new IP address slowly, so a source may carry a schedule,
day n of its warm-up -> at most ``curve[n - 1]`` messages that day (all sites together);
after the last day, no limit. Day 1 begins at the source's ``warmup_start`` (midnight UTC of
that date), or when this run first sends from it; each day lasts 24 hours from then. A lane
that finds today's allowance used is suspended until the next day begins: its recipients go
to the pool's other sources, or wait, as throttle deferrals, never as attempts.

The state (day 1's beginning, the current day and its count) is saved in the journal's meta
table while the run goes (:meth:`Warmup.state`, :meth:`Warmup.restore`), so a restarted run
continues the schedule and the day's count where they were.

The default curve (``warmup = true``) is
:data:`bulksend.config.egress.DEFAULT_WARMUP`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

__all__ = ["Warmup"]

_DAY = 86400.0


class Warmup:
    """One source's warm-up state: its curve, its first day, what it sent today."""

    __slots__ = ("_day", "_sent", "curve", "start")

    def __init__(self, curve: Sequence[int], start: float | None = None) -> None:
        self.curve = tuple(curve)
        self.start = start  # wall-clock seconds of day 1's beginning; None: the first send
        self._day = -1
        self._sent = 0

    def day(self, now: float) -> int:
        """The warm-up day ``now`` falls in (1 for the first, and before it began)."""
        start = now if self.start is None else self.start
        return max(int((now - start) // _DAY) + 1, 1)

    def allowance(self, now: float) -> int | None:
        """Today's allowance (None: no limit any more, or not started)."""
        day = self.day(now)
        return self.curve[day - 1] if 1 <= day <= len(self.curve) else None

    def take(self, now: float) -> float:
        """Count one message if today's allowance has room (0.0); else the seconds until
        the next day begins (nothing counted)."""
        if self.start is None:
            self.start = now
        day = self.day(now)
        if day != self._day:
            self._day, self._sent = day, 0
        allowance = self.allowance(now)
        if allowance is not None and self._sent >= allowance:
            return max(self.start + day * _DAY - now, math.ulp(now))
        self._sent += 1
        return 0.0

    def state(self) -> str:
        """What to save: day 1's beginning, the current day and its count (JSON)."""
        return json.dumps({"start": self.start, "day": self._day, "sent": self._sent})

    def restore(self, saved: str | None) -> None:
        """Continue from a saved :meth:`state` (its start wins over one not yet known)."""
        if saved is None:
            return
        data = json.loads(saved)
        if self.start is None:
            self.start = data["start"]
        if self.start == data["start"]:
            self._day, self._sent = int(data["day"]), int(data["sent"])

    def sent_today(self, now: float) -> int:
        """Messages counted on the day ``now`` falls in."""
        return self._sent if self.start is not None and self.day(now) == self._day else 0
