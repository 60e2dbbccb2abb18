"""The local backend: today's behaviour, each process keeps its own limits.

Rate and connection rate are :class:`~bulksend.delivery.throttle.TokenBucket`\\ s; the
connection cap is the destination's own count of senders (one connection each), so leases
are free and never lost, and a backoff stays in this process.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from bulksend.config import SiteLimits
from bulksend.delivery.backoff import Backoff
from bulksend.delivery.throttle import TokenBucket
from bulksend.throttles.protocol import Lease


class LocalSite:
    """One site's throttle, in this process."""

    __slots__ = ("_backoff", "_leases", "_open_rate", "_rate")

    def __init__(self, limits: SiteLimits, backoff: Backoff) -> None:
        self._backoff = backoff
        self._rate = TokenBucket(limits.rate)
        self._open_rate = TokenBucket(limits.connection_rate)
        self._leases = itertools.count(1)

    async def reserve(self) -> float:
        rate = self._backoff.limits.rate
        if rate != self._rate.rate:
            self._rate.set_rate(rate)
        return self._rate.reserve()

    async def pace_connection(self) -> float:
        return await self._open_rate.acquire()

    async def lease(self) -> Lease:
        return str(next(self._leases))

    def release(self, lease: Lease) -> None:
        pass

    def lost(self, lease: Lease) -> bool:
        return False

    def publish(self) -> None:
        pass


class LocalThrottles:
    """The default backend: nothing shared."""

    @asynccontextmanager
    async def open(self) -> AsyncIterator[LocalThrottles]:
        yield self

    def site(
        self,
        name: str,
        limits: SiteLimits,
        backoff: Backoff,
        *,
        changed: Callable[[str], None],
        now: Callable[[], float],
    ) -> LocalSite:
        return LocalSite(limits, backoff)
