"""A provider's shared limits in a run: one rate, one connection cap and one backoff over
every site (and source lane) that matches it, in addition to each site's own.

How this works: each matching destination's throttle is wrapped in a
:class:`ProviderThrottle`, which takes a slot of the site *and* of the provider for every
message, paces connections by both, and holds a lease of both while a connection is open
(the provider's cap: a local count, and the throttle backend's lease, which holds across
workers with a shared backend). A reply that matches one of the provider's backoff rules
backs off every member destination at once (:meth:`Provider.back_off`), and lowers the
provider's shared rate, so Microsoft's "server busy" to one tenant slows all of them.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from bulksend.config import BackoffRule, SiteLimits
from bulksend.config.providers import ProviderPolicy
from bulksend.delivery.backoff import Backoff
from bulksend.throttles import Lease, SiteThrottle, ThrottleBackend

#: What a member destination does when the provider backs off: apply the rule to itself.
Member = Callable[[BackoffRule, float, str], None]


class Provider:
    """One provider (for one egress lane) in a run."""

    def __init__(
        self,
        key: str,
        policy: ProviderPolicy,
        throttles: ThrottleBackend,
        *,
        now: Callable[[], float],
    ) -> None:
        self.key = key
        self.policy = policy
        limits = policy.limits.apply(SiteLimits(max_connections=1))
        cap = policy.limits.max_connections
        self.backoff = Backoff(
            key, policy.backoff, max_connections=cap or 1, rate=policy.limits.rate
        )
        self.throttle: SiteThrottle = throttles.site(
            key, limits, self.backoff, changed=self._ignore, now=now
        )
        self._slots = None if cap is None else trio.Semaphore(cap)
        self._members: list[Member] = []
        self._now = now

    def join(self, member: Member) -> None:
        """A destination of this provider: it backs off with the others."""
        self._members.append(member)

    def back_off(self, rule: BackoffRule, now: float, reason: str) -> bool:
        """If ``rule`` is one of the provider's, apply it to the provider and every member
        (True); else do nothing (False)."""
        if rule not in self.policy.backoff:
            return False
        if self.backoff.apply(rule, now, reason):
            self.throttle.publish()
        for member in self._members:
            member(rule, now, reason)
        return True

    async def reserve(self) -> float:
        """Take the provider's next message slot (its rate back once a backoff is over)."""
        if self.backoff.active:
            self.backoff.restore(self._now())
        return await self.throttle.reserve()

    def wrap(self, site: SiteThrottle) -> ProviderThrottle:
        """A member site's throttle, held to the provider's limits as well."""
        return ProviderThrottle(site, self)

    async def lease(self) -> Lease | None:
        if self._slots is None:
            return None
        await self._slots.acquire()
        try:
            return await self.throttle.lease()
        except BaseException:
            self._slots.release()
            raise

    def release(self, lease: Lease | None) -> None:
        if lease is not None and self._slots is not None:
            self.throttle.release(lease)
            self._slots.release()

    def _ignore(self, action: str) -> None:
        """Another worker's provider backoff, adopted: its members adopt their own."""


class ProviderThrottle:
    """A site's throttle and its provider's, as one (:class:`~bulksend.throttles.SiteThrottle`)."""

    __slots__ = ("_leases", "_provider", "_site")

    def __init__(self, site: SiteThrottle, provider: Provider) -> None:
        self._site = site
        self._provider = provider
        self._leases: dict[Lease, Lease | None] = {}

    async def reserve(self) -> float:
        return max(await self._site.reserve(), await self._provider.reserve())

    async def pace_connection(self) -> float:
        return await self._site.pace_connection() + await self._provider.throttle.pace_connection()

    async def lease(self) -> Lease:
        lease = await self._site.lease()
        try:
            self._leases[lease] = await self._provider.lease()
        except BaseException:
            self._site.release(lease)
            raise
        return lease

    def release(self, lease: Lease) -> None:
        self._site.release(lease)
        self._provider.release(self._leases.pop(lease, None))

    def lost(self, lease: Lease) -> bool:
        paired = self._leases.get(lease)
        return self._site.lost(lease) or (
            paired is not None and self._provider.throttle.lost(paired)
        )

    def publish(self) -> None:
        self._site.publish()
