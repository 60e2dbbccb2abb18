"""Rate limiting: a token bucket that wakes its caller at the exact moment a token is due.

How this works: the bucket is kept as a GCRA "theoretical arrival time" (the virtual
scheduling form of a token bucket, ITU-T I.371): each :meth:`TokenBucket.reserve` takes the
next free slot, ``1/rate`` seconds after the previous one, and returns how long the caller
must sleep until it. Callers queue up in reservation order and nobody ever polls: a site
limited to 50/s wakes 50 senders a second, each at its own instant. ``burst`` lets that many
messages go back to back after an idle spell (1 = strictly paced).

Concurrency (how many connections) is a separate tool (the senders per site in the
destination, the global cap in :mod:`bulksend.delivery.pool`); this module is only about rate.
"""

from __future__ import annotations

import math

import trio


class TokenBucket:
    """A rate limit of ``rate`` events per second (None: unlimited)."""

    __slots__ = ("_burst", "_interval", "_tat")

    def __init__(self, rate: float | None, *, burst: float = 1.0) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self._burst = burst
        self._interval = 0.0
        self._tat = -math.inf
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        return None if self._interval == 0 else 1.0 / self._interval

    def set_rate(self, rate: float | None) -> None:
        """Change the rate; slots already reserved keep their time."""
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self._interval = 0.0 if rate is None else 1.0 / rate

    def reserve(self) -> float:
        """Take the next slot; return the seconds until it (0 if it is free now)."""
        if self._interval == 0:
            return 0.0
        now = trio.current_time()
        tat = max(self._tat, now)
        start = max(now, tat - (self._burst - 1) * self._interval)
        self._tat = tat + self._interval
        return start - now

    async def acquire(self) -> float:
        """Wait for the next slot; returns the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            await trio.sleep(delay)
        return delay
