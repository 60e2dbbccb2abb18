"""Warm-up: a new source address sends at most so many messages on each day of its life.

How this works: receivers trust a new IP address slowly, so a source may carry a schedule,
day n of its warm-up -> at most ``curve[n - 1]`` messages that day (all sites and every
worker together); after the last day, no limit. Day 1 begins at the source's
``warmup_start`` (midnight UTC of that date), or when the campaign first sends from it; each
day lasts 24 hours from then. A lane that finds today's allowance used is suspended until
the next day begins: its recipients go to the pool's other sources, or wait, as throttle
deferrals, never as attempts.

The day's count lives in the journal, one ``warmup:<source>`` row (day 1's beginning, the
current day and its count, JSON), the one place every worker of a shared (PostgreSQL)
journal sees. A process takes a *block* of the day's allowance in one atomic update of that
row (:meth:`~bulksend.journal.JournalStore.update_warmup`, the row locked meanwhile: the
``UPDATE ... RETURNING`` of a counter, with the day's rollover in it) and spends it locally,
so the allowance holds in total over the workers and the hot path pays one round trip per
block (a hundredth of the day's allowance, 1 to 50 messages). A process that stops gives
back what it took and did not use. A restarted run continues from the row. SQLite shards
(``--workers``, ``--shard``) each have a journal of their own: they split each day's
allowance between them instead (:attr:`Warmup.share`).

A source may also warm up per mailbox provider (``warmup_providers``): its messages to the
sites of that provider count against a schedule of their own, a row ``warmup:<source>/<provider>``,
besides the source's total one; a message goes out only when each of its warm-ups has room
(:func:`count_message`).

The default curve (``warmup = true``) is
:data:`bulksend.config.egress.DEFAULT_WARMUP`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

import trio

__all__ = ["Ledger", "Warmup", "count_message"]

_DAY = 86400.0
# The most messages of a day's allowance one process takes at once.
_BLOCK_MAX = 50

#: Where the day's count is kept: replaces the saved state (JSON; None before the first) by
#: ``change(saved)`` atomically and returns the new state (the journal's ``update_warmup``).
Ledger: TypeAlias = Callable[[Callable[[str | None], str]], Awaitable[str]]


class Warmup:
    """One source's warm-up in this process: its curve, its first day, its share of the
    day's allowance, and the block of it this process may still send.

    Without a ``ledger`` this process alone keeps the day's count.
    """

    __slots__ = (
        "_day",
        "_ledger",
        "_left",
        "_lock",
        "_sent",
        "curve",
        "name",
        "share",
        "start",
    )

    def __init__(
        self,
        curve: Sequence[int],
        start: float | None = None,
        *,
        ledger: Ledger | None = None,
        share: tuple[int, int] = (0, 1),
        name: str = "",
    ) -> None:
        self.name = name  # the source, or "<source>/<provider>"
        self.curve = tuple(curve)
        self.start = start  # wall-clock seconds of day 1's beginning; None: the first send
        self.share = share  # (index, count): this shard's part of each day's allowance
        self._ledger = ledger
        self._lock = trio.Lock()
        self._day = -1
        self._sent = 0  # the day's count (every process sharing the ledger) as last seen
        self._left = 0  # of which taken by this process and not yet used

    def day(self, now: float) -> int:
        """The warm-up day ``now`` falls in (1 for the first, and before it began)."""
        start = now if self.start is None else self.start
        return _day(start, now)

    def allowance(self, now: float) -> int | None:
        """Today's allowance, this shard's share of it (None: no limit any more)."""
        return self._allowance(self.day(now))

    def take(self, now: float) -> float | None:
        """Count one message if today's allowance has room (0.0); else the seconds until
        the next day begins (nothing counted); None when the ledger must be asked first
        (:meth:`acquire`)."""
        if self.start is None:
            if self._ledger is not None:
                return None  # day 1 may have begun in another worker
            self.start = now
        day = self.day(now)
        if day != self._day:
            self._day, self._sent, self._left = day, 0, 0
        allowance = self._allowance(day)
        if allowance is None:
            return 0.0
        if self._left > 0:
            self._left -= 1
            return 0.0
        if self._sent >= allowance:
            return max(self.start + day * _DAY - now, math.ulp(now))
        if self._ledger is not None:
            return None
        self._sent += 1
        return 0.0

    async def acquire(self, now: float) -> float:
        """:meth:`take`, taking a block of today's allowance from the ledger when this
        process has none left (one round trip at a time)."""
        wait = self.take(now)
        while wait is None:
            async with self._lock:
                wait = self.take(now)
                if wait is None:
                    await self._refill(now)
                    wait = self.take(now)
        return wait

    def untake(self) -> None:
        """Give back one message :meth:`take` counted (it was not sent after all)."""
        if self._ledger is None:
            self._sent -= 1
        else:
            self._left += 1

    async def give_back(self) -> None:
        """Return to the ledger what this process took of today's allowance and did not
        send (the run ends), so that the other workers, or the next run, may send it."""
        left, self._left = self._left, 0
        if self._ledger is None or left == 0:
            return
        start, day = self.start, self._day

        def change(saved: str | None) -> str:
            data = json.loads(saved or "{}")
            if data.get("start") == start and data.get("day") == day:
                data["sent"] = max(int(data["sent"]) - left, 0)
            return json.dumps(data)

        await self._ledger(change)

    def sent_today(self, now: float) -> int:
        """Messages counted on the day ``now`` falls in (every worker, as last seen)."""
        if self.start is None or self.day(now) != self._day:
            return 0
        return self._sent - self._left

    async def _refill(self, now: float) -> None:
        assert self._ledger is not None
        granted = 0

        def change(saved: str | None) -> str:
            nonlocal granted
            data = json.loads(saved or "{}")
            start = self.start if self.start is not None else data.get("start", now)
            day = _day(start, now)
            same = data.get("start") == start and data.get("day") == day
            sent = int(data["sent"]) if same else 0
            allowance = self._allowance(day)
            granted = 0
            if allowance is not None:
                block = max(1, min(allowance // 100, _BLOCK_MAX))
                granted = max(min(block, allowance - sent), 0)
            return json.dumps({"start": start, "day": day, "sent": sent + granted})

        state = json.loads(await self._ledger(change))
        self.start, self._day, self._sent = float(state["start"]), state["day"], state["sent"]
        self._left = granted

    def _allowance(self, day: int) -> int | None:
        if not 1 <= day <= len(self.curve):
            return None
        total = self.curve[day - 1]
        index, count = self.share
        return total * (index + 1) // count - total * index // count


async def count_message(warmups: Sequence[Warmup], now: float) -> tuple[float, Warmup | None]:
    """Count one message against each of ``warmups`` (a source's total and its provider's):
    ``(0.0, None)``; else nothing counted, and the seconds until the next day of the first
    whose allowance is used, and that warm-up."""
    for index, warmup in enumerate(warmups):
        wait = await warmup.acquire(now)
        if wait:
            for counted in warmups[:index]:
                counted.untake()
            return wait, warmup
    return 0.0, None


def _day(start: float, now: float) -> int:
    return max(int((now - start) // _DAY) + 1, 1)
