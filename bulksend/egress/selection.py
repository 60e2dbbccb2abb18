"""A site's lanes: the destinations its traffic is split into, by source address.

How this works: receivers count per source IP address (connections, rate, blocks), so with a
pool of sources the unit whose limits hold is (site, source): each source gets a *lane* of its
own, a destination with the site's limits (capped by the source's own) and its own backoff,
so a source that is blocked backs off alone while the others carry the site's traffic
(KumoMTA's egress sources, PowerMTA's virtual MTAs). With ``scope = "site"`` the limits hold
for the site in total: one lane, whose connections take the pool's sources in turn, in
proportion to their weights (the smooth weighted round robin of nginx's upstream module);
a source the receiver blocks is left out of the turn for a while (:meth:`Rotation.block`),
the lane backing off as a whole only when every source is blocked.
Without a pool: one lane from the machine's default address, as before egress existed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from bulksend.config import BackoffRule, SiteLimits
from bulksend.config.egress import EgressConfig, EgressSource

__all__ = ["SOURCE_BLOCKED", "Lane", "Rotation", "lanes"]

_N = TypeVar("_N", int, float)


#: A receiver refusing the source address itself (a DNS blocklist listing, a poor IP
#: reputation, a banned sending IP): not the recipient's fault, and nothing another recipient
#: would fare better with from this address. The source's lane stops for an hour and its
#: recipients go to the pool's other sources. After the campaign's own rules (which may say
#: otherwise), for a lane of one source; in a lane of several (``scope = "site"``) it leaves
#: the connection's source out for that time (:meth:`Rotation.block`).
SOURCE_BLOCKED = BackoffRule(
    code="5xx",
    enhanced_code="5.7",
    text=re.compile(
        r"(?i)\b(ip|client|host|address)\b.{0,60}?"
        r"\b(block|blacklist|blocklist|denylist|listed|banned|reputation)"
        r"|\b(listed|blocked) (in|on|at|by|using)\b|\bbanned sending ip\b"
        r"|spamhaus|spamcop|barracuda|\bdnsbl\b|\brbl\b"
    ),
    suspend=3600.0,
    duration=3600.0,
)


@dataclass(frozen=True, slots=True)
class Lane:
    """One destination of a site: the source that names it, its limits, its sources, and
    the backoff rules it adds to the campaign's."""

    source: str  # "" for a lane of the whole site (no pool, or scope "site")
    limits: SiteLimits
    sources: tuple[tuple[EgressSource, int], ...]  # (source, weight); () the default address
    rules: tuple[BackoffRule, ...] = ()


def lanes(egress: EgressConfig, limits: SiteLimits) -> list[Lane]:
    """The lanes of a site whose limits are ``limits`` (its pool and scope among them)."""
    if limits.pool is None:
        return [Lane("", limits, ())]
    pool = egress.pools[limits.pool]
    if limits.scope == "site":
        return [Lane("", limits, pool.sources, (SOURCE_BLOCKED,))]
    return [Lane(s.name, capped(limits, s), ((s, w),), (SOURCE_BLOCKED,)) for s, w in pool.sources]


def capped(limits: SiteLimits, source: EgressSource) -> SiteLimits:
    """``limits`` lowered to the source's own caps where it has them."""
    connections = limits.max_connections
    if source.max_connections is not None:
        connections = min(connections, source.max_connections)
    return dataclasses.replace(
        limits,
        max_connections=connections,
        rate=_lower(limits.rate, source.rate),
        connection_rate=_lower(limits.connection_rate, source.connection_rate),
    )


def _lower(value: _N | None, cap: _N | None) -> _N | None:
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


class Rotation:
    """Which source the next connection leaves from: smooth weighted round robin.

    Each pick adds every member's weight to its running score, takes the highest and takes
    the total back from it: weights 3 and 1 give a, a, b, a, ... never long runs of one.
    Members blocked (:meth:`block`) sit the turns out until their time is up.
    """

    __slots__ = ("_blocked", "_members", "_scores")

    def __init__(self, members: Sequence[tuple[EgressSource, int]]) -> None:
        self._members = tuple(members)
        self._scores = [0] * len(self._members)
        self._blocked: dict[str, float] = {}  # source name -> until when (wall clock)

    @property
    def several(self) -> bool:
        """Whether there are several sources to turn between."""
        return len(self._members) > 1

    def next(self, now: float) -> EgressSource | None:
        """The next connection's source; None: the machine's default address."""
        if not self._members:
            return None
        members = [
            (i, weight)
            for i, (source, weight) in enumerate(self._members)
            if not self.blocked(source.name, now)
        ] or list(enumerate(w for _s, w in self._members))
        best = members[0][0]
        for i, weight in members:
            self._scores[i] += weight
            if self._scores[i] > self._scores[best]:
                best = i
        self._scores[best] -= sum(w for _i, w in members)
        return self._members[best][0]

    def block(self, name: str, until: float, now: float) -> float:
        """Leave source ``name`` out of the turn until ``until``; returns 0.0 while another
        source may still be taken, else the seconds until the first one comes back."""
        self._blocked[name] = max(self._blocked.get(name, until), until)
        if any(not self.blocked(source.name, now) for source, _w in self._members):
            return 0.0
        return min(self._blocked.values()) - now

    def blocked(self, name: str, now: float) -> bool:
        """Whether source ``name`` is out of the turn at ``now``."""
        return bool(self._blocked) and self._blocked.get(name, -math.inf) > now
