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

That plan also knows each site's size (rows per domain), so it places the largest sites
(:data:`PLACED_PER_SHARD` per shard) by size instead of by hash, largest first onto the
least loaded shard: four big providers on four workers get a core each (a hash would put
two of them on one core nine times in ten). The long tail still goes by hash. The
placement is recorded in each shard's journal before its first row, and an unfinished import
resumes with the one it began with, however it is resumed (``send --workers`` again, or
``resume`` of one shard): a placement made again could differ (with a greedy placement one
changed DNS answer can move other sites too) and two shards would then keep the same
recipients, or none. (Which site a domain routes to is asked again on resume: the caveat
below holds for a domain whose MX set changed meanwhile.) ``--shard
I/N`` on separate machines plans alone on each machine: by hash, or, given the placement
``bulksend plan`` made once for all of them (``--placement``), with the same placement.

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
import heapq
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bulksend.errors import ConfigError
from bulksend.routing import Route, Router, RoutingError, normalize_domain, route_all

#: How many of the largest sites per shard a plan made for every shard places by size
#: (:func:`place`): the big providers, each on a core of its own; the rest go by hash.
PLACED_PER_SHARD: Final = 16


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


def domain_rows(emails: Iterable[str]) -> Counter[str]:
    """How many rows each normalised domain of raw addresses has; unparsable ones are left
    out."""
    raw = Counter(e.rpartition("@")[2].strip().lower() for e in emails if "@" in e)
    rows: Counter[str] = Counter()
    for domain, n in raw.items():
        try:
            rows[normalize_domain(domain)] += n
        except RoutingError:
            continue
    return rows


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """How the shards of a run divide its recipients.

    ``units``: each domain's site units (:func:`make_plan`). ``placed``: the shard of each of the
    largest whole sites, placed by size; every other unit goes where its hash puts it
    (:meth:`Shard.owns`).
    """

    units: Mapping[str, Sequence[str]]
    placed: Mapping[str, int]

    def keeps(self, shard: Shard, domain: str, address: str) -> bool:
        """Whether ``shard`` owns the recipient ``address`` at ``domain``."""
        unit = unit_of(self.units.get(domain, (domain,)), address)
        index = self.placed.get(unit)
        return shard.owns(unit) if index is None else index == shard.index


async def make_plan(
    router: Router,
    rows: Mapping[str, int],
    sources: Callable[[Route], Sequence[str]] = _none,
    *,
    shards: int = 0,
    placed: Mapping[str, int] | None = None,
) -> ShardPlan:
    """Route every domain (64 at a time) and map it to its site's units: the site's name,
    or with egress sources (``sources(route)``: the lanes' source names) ``"<site> via
    <source>"`` for each. A domain that cannot be routed is a unit by its own name.

    The largest whole sites are placed as ``placed`` says (a resumed import keeps the
    placement it began with), else, with ``shards`` (a plan made once for every shard), over
    them by size (:func:`place`); every other unit goes by hash.
    """
    routes = await route_all(router, rows)
    units: dict[str, list[str]] = {}
    sizing = placed is None and shards > 0
    whole: Counter[str] = Counter()
    load = [0.0] * shards
    for domain, route in sorted(routes.items()):  # the same sums in every run
        lanes = () if isinstance(route, RoutingError) else sources(route)
        names = [domain] if isinstance(route, RoutingError) else _units(route, lanes)
        units[domain] = names
        if not sizing:
            continue
        if lanes:  # a shard's scheduler finds its sources by their hash: they stay there
            for name in names:
                load[_hash(name) % shards] += rows[domain] / len(names)
        else:
            whole[names[0]] += rows[domain]
    if placed is None:
        placed = place(whole, load) if sizing else {}
    return ShardPlan(units, dict(placed))


def place(sites: Mapping[str, int], load: Sequence[float]) -> dict[str, int]:
    """The shard of each of the largest sites (rows by site), largest first onto the least
    loaded shard (``load``: the rows each holds already; ties: the lowest index), so that N
    workers give the N biggest sites a core each. A hash would put two of four big sites on
    one of four workers nine times in ten; it stays for the long tail of small sites
    (beyond :data:`PLACED_PER_SHARD` per shard), whose rows it spreads evenly enough, and
    keeps the placement small."""
    ranked = sorted(sites.items(), key=lambda item: (-item[1], item[0]))
    biggest = ranked[: PLACED_PER_SHARD * len(load)]
    held = list(load)
    for name, n in ranked[len(biggest) :]:
        held[_hash(name) % len(held)] += n
    heap = [(rows, index) for index, rows in enumerate(held)]
    heapq.heapify(heap)
    placed: dict[str, int] = {}
    for name, n in biggest:
        rows, index = heapq.heappop(heap)
        placed[name] = index
        heapq.heappush(heap, (rows + n, index))
    return placed


def placement_text(placed: Mapping[str, int], count: int) -> str:
    """``placed`` over ``count`` shards as ``bulksend plan`` prints it (JSON)."""
    return json.dumps({"shards": count, "sites": dict(placed)}, indent=1, sort_keys=True)


def read_placement(path: Path, count: int) -> dict[str, int]:
    """The placement ``bulksend plan`` made (:func:`placement_text`), for ``count`` shards.

    Raises:
        ConfigError: it cannot be read, or is not a placement over ``count`` shards.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the shards' placement: {exc}") from None
    sites = data.get("sites") if isinstance(data, dict) else None
    if (
        not isinstance(sites, dict)
        or data.get("shards") != count
        or not all(type(index) is int and 0 <= index < count for index in sites.values())
    ):
        raise ConfigError(
            f"{path}: not a placement of sites over {count} shards (`bulksend plan "
            f"--shards {count}` makes one)"
        )
    return sites


def _units(route: Route, sources: Sequence[str]) -> list[str]:
    return [str(route.site.via(source)) for source in sources] or [str(route.site)]
