"""What a destination asks of its site's throttle, whichever backend keeps the state."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, TypeAlias

from bulksend.config import SiteLimits
from bulksend.delivery.backoff import Backoff

#: A connection lease's id (unique per backend).
Lease: TypeAlias = str


class SiteThrottle(Protocol):
    """One site's rate, connection rate, connection cap and backoff state."""

    async def reserve(self) -> float:
        """Take the next message slot; the seconds until it (0: now). Never sleeps for the
        slot itself (the caller does, after flushing), but may wait for the backend."""

    async def pace_connection(self) -> float:
        """Wait for the site's connection rate; returns the seconds waited."""

    async def lease(self) -> Lease:
        """Wait for one of the site's connection slots (the cap holds in total)."""

    def release(self, lease: Lease) -> None:
        """Give a slot back (the connection closed). Never blocks."""

    def lost(self, lease: Lease) -> bool:
        """Whether the slot was lost (expired while the backend was unreachable) or handed
        over to a waiting worker: the connection must close before its next message."""

    def publish(self) -> None:
        """The site's :class:`Backoff` changed here: let every worker know."""


class ThrottleBackend(Protocol):
    """Makes each site's throttle."""

    def open(self) -> AbstractAsyncContextManager[object]:
        """Be ready for the run (connect, start background work) until the block ends."""

    def site(
        self,
        name: str,
        limits: SiteLimits,
        backoff: Backoff,
        *,
        changed: Callable[[str], None],
        now: Callable[[], float],
    ) -> SiteThrottle:
        """The throttle of site ``name``; ``changed(action)`` is called when another worker's
        backoff is adopted into ``backoff``; ``now()`` is the run's wall clock."""
