"""Sharding a campaign across processes or machines, by *site*.

How this works: one Trio process uses one core, so a big campaign runs as N shards (``send
--workers N`` on one machine, ``--shard I/N`` on N machines, one journal per shard). Every
site's limits and backoff must live in exactly one shard, or N shards would each send to
gmail.com at the full configured rate. Sharding by *domain* cannot promise that: domains
rolled up to one MX set (every Google Workspace domain) would land in different shards.

So shards are cut by site. Before importing, a shard reads the recipient file's domains
(a cheap pass: no address validation), routes each distinct domain once (concurrently; the
answers stay in the router's cache for the run), and keeps the recipients whose *site*
hashes to its index. Every shard computes the same assignment from the same DNS answers,
so a site is owned by one shard. A domain that cannot be routed now (SERVFAIL) is assigned
by its own name. With ``send --workers N`` the parent routes once and hands every worker
the same plan (:func:`~bulksend.delivery.run.plan_shards`): shards that each asked DNS could
see one domain fail for one and answer for another, and would then both keep its
recipients (sent twice) or neither (never sent).

With egress sources (``scope = "source"``, :mod:`bulksend.egress.selection`), the unit whose
limits must live in one place is (site, source) instead: each unit, ``"<site> via
<source>"``, hashes to its shard, so a big site's sources spread over several shards and
gmail.com is no longer pinned to one core. A recipient of such a site belongs to one of the
site's units, chosen by a hash of its address (:func:`unit_of`); the shard that owns that
unit imports it, and each shard sends to the site only from the sources it owns. (A source
that backs off then hands its recipients only to the sources of its own shard, and each
shard sends its share of a source's warm-up allowance: :attr:`Warmup.share
<bulksend.egress.warmup.Warmup.share>`.)

Caveat (documented in the README), for ``--shard I/N`` on separate machines, where each
shard routes for itself: if DNS changes an MX set between the shards' imports, a site could
be split (its limits then hold per shard), and a domain whose lookup fails in one shard and
not in another is kept by both or by neither. Keeping the import of all shards close
together (as an Indexed Job does) makes this unlikely.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bulksend.errors import ConfigError
from bulksend.routing import Route, Router, RoutingError, normalize_domain, route_all


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/8"`` -> shard 2 of 8 (as Kubernetes' job completion index counts, from 0)."""
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise ConfigError(f"shard {text!r}: write it as INDEX/COUNT, e.g. 0/4")
        return cls(int(index), int(count))

    def owns(self, key: str) -> bool:
        """Whether the site, (site, source) unit, or domain ``key`` belongs to this shard."""
        return _hash(key) % self.count == self.index

    def journal(self, path: Path) -> Path:
        """This shard's journal file, beside ``path``: ``x.sqlite3`` -> ``x.2of8.sqlite3``."""
        return path.with_name(f"{path.stem}.{self.index}of{self.count}{path.suffix}")

    def base_journal(self, path: Path) -> Path:
        """The path :meth:`journal` turns into ``path``: ``x.2of8.sqlite3`` -> ``x.sqlite3``."""
        tag = f".{self.index}of{self.count}"
        if not path.stem.endswith(tag):
            raise ConfigError(f"{path} is not the journal of shard {self} (no {tag} in its name)")
        return path.with_name(path.stem[: -len(tag)] + path.suffix)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _none(_route: Route) -> Sequence[str]:
    """No egress sources: a site is one unit."""
    return ()


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def unit_of(units: Sequence[str], address: str) -> str:
    """Which of its site's units (one per egress source, or the site) a recipient belongs to."""
    return units[0] if len(units) == 1 else units[_hash(address.lower()) % len(units)]


def distinct_domains(emails: Iterable[str]) -> set[str]:
    """The distinct normalised domains of raw addresses; unparsable ones are left out."""
    raw = {e.rpartition("@")[2].strip().lower() for e in emails if "@" in e}
    domains = set()
    for domain in raw:
        try:
            domains.add(normalize_domain(domain))
        except RoutingError:
            continue
    return domains


async def site_keys(
    router: Router, domains: Iterable[str], sources: Callable[[Route], Sequence[str]] = _none
) -> dict[str, list[str]]:
    """Route every domain (64 at a time) and map it to its site's units: the site's name,
    or with egress sources (``sources(route)``: the lanes' source names) ``"<site> via
    <source>"`` for each.

    A domain that cannot be routed maps to itself.
    """
    routes = await route_all(router, domains)
    return {
        domain: [domain] if isinstance(route, RoutingError) else _units(route, sources(route))
        for domain, route in routes.items()
    }


def _units(route: Route, sources: Sequence[str]) -> list[str]:
    return [str(route.site.via(source)) for source in sources] or [str(route.site)]
