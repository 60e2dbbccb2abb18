"""Routes, sites and policy lookup: what the delivery layer asks of routing.

How this works:

* :class:`Router` turns a recipient domain into a :class:`Route`. A smarthost, when set, takes
  every domain; otherwise a route override for the domain (like a Postfix transport map entry,
  ``smtp:[host]:port``) takes it; both skip the MX lookup (and all DNS when the relay is an IP
  address). Everything else goes to MX resolution (:mod:`bulksend.routing.mx`, RFC 5321 §5.1).
* Domains whose MX host sets are equal share one :class:`Site` (the "MX rollup" of KumoMTA and
  PowerMTA): every Google Workspace domain publishes the same ``*.google.com`` hosts, so they
  all share one site, one connection pool and one set of limits. The site is derived from the
  *set* of host names (sorted, lowercase) and the port, so preference values, record order and
  the shuffle of equal preferences never change it.
* :class:`PolicyTable` looks a setting up by domain, then by MX host suffix (a rule for
  ``google.com`` covers every domain whose MX hosts are under ``google.com``), then a default.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from bulksend.config import TlsMode
from bulksend.errors import ConfigError
from bulksend.routing.config import Credentials, Relay, RoutingConfig
from bulksend.routing.errors import RoutingError
from bulksend.routing.mx import MXHost, MXResolver, normalize_domain

__all__ = ["PolicyTable", "Route", "Router", "Site"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Site:
    """Where mail for a set of domains goes: a set of MX host names and a port.

    Build it with :meth:`of`, which sorts, lowercases and deduplicates, so equal sets give
    equal sites. Hashing is cached: sites key the delivery layer's hot dictionaries.

    ``domain`` is set for a domain that does not roll up with the others (one with its own
    policy, see :meth:`alone`): the same hosts, but a site, limits and connections of its own.
    ``source`` is set for the share of a site that leaves from one egress source address
    (:meth:`via`, see :mod:`bulksend.egress.selection`).
    """

    mx: tuple[str, ...]
    port: int = 25
    domain: str = ""
    source: str = ""
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.mx, self.port, self.domain, self.source)))

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(self) -> tuple[type[Site], tuple[tuple[str, ...], int, str, str]]:
        # Rebuild through __init__: a pickled hash is wrong under another PYTHONHASHSEED.
        return (Site, (self.mx, self.port, self.domain, self.source))

    @classmethod
    def of(cls, names: Iterable[str], port: int = 25) -> Site:
        """The site of these MX host names, in any order, case or with final dots."""
        return cls(tuple(sorted({n.lower().rstrip(".") for n in names})), port)

    def alone(self, domain: str) -> Site:
        """This site's hosts serving ``domain`` alone (not rolled up with other domains)."""
        return Site(self.mx, self.port, domain)

    def via(self, source: str) -> Site:
        """This site's share that leaves from egress source ``source`` ("": the whole site)."""
        return Site(self.mx, self.port, self.domain, source)

    def __str__(self) -> str:
        hosts = ",".join(self.mx)
        text = hosts if self.port == 25 else f"{hosts}:{self.port}"
        text = f"{self.domain}@{text}" if self.domain else text
        return f"{text} via {self.source}" if self.source else text


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach one domain.

    Attributes:
        domain: the recipient domain as lowercase A-labels.
        site: the MX rollup key shared with every domain that has the same MX hosts.
        hosts: the hosts in the order to try them, each with its addresses and port.
        auth: a smarthost's or override's AUTH credentials, for the SMTP client.
        tls: a relay's own STARTTLS setting (the smarthost's ``tls``), None for MX routes:
            the policy's limits layer on it.
        cached: the MX answer came from the resolver's cache (for the lookup metrics).
        expires: when the first DNS answer behind this route expires (trio time; infinite
            for a relay given by address): from then on, routing again may give another route.
    """

    domain: str
    site: Site
    hosts: tuple[MXHost, ...]
    auth: Credentials | None = None
    tls: TlsMode | None = None
    cached: bool = field(default=False, compare=False)
    expires: float = field(default=math.inf, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_hash", hash((self.domain, self.site, self.hosts, self.auth, self.tls))
        )

    def __hash__(self) -> int:
        return self._hash

    def __reduce__(
        self,
    ) -> tuple[
        type[Route], tuple[str, Site, tuple[MXHost, ...], Credentials | None, TlsMode | None]
    ]:
        return (Route, (self.domain, self.site, self.hosts, self.auth, self.tls))


class PolicyTable(Generic[T]):
    """Settings looked up by domain, then by MX host suffix, then a default.

    A domain rule matches that domain exactly. A suffix rule ``google.com`` matches an MX host
    ``google.com`` or ``*.google.com`` (whole labels only: not ``notgoogle.com``); when several
    hosts of a site match different rules, the longest suffix wins, then the
    alphabetically first. Keys may be U-labels, any case, with or without a final dot (or a
    leading dot for suffixes).

    Raises:
        ConfigError: a key is not a valid domain.
    """

    def __init__(
        self,
        default: T,
        *,
        domains: Mapping[str, T] | None = None,
        mx_suffixes: Mapping[str, T] | None = None,
    ) -> None:
        self.default = default
        self._domains = {_config_domain(k, "policy domain"): v for k, v in (domains or {}).items()}
        self._suffixes = {
            _config_domain(k.lstrip("."), "policy MX suffix"): v
            for k, v in (mx_suffixes or {}).items()
        }

    def lookup(self, domain: str, site: Site) -> T:
        """The setting for ``domain`` (normalised, as in :attr:`Route.domain`) at ``site``."""
        if domain in self._domains:
            return self._domains[domain]
        best: tuple[int, str] | None = None
        for host in site.mx:
            labels = host.split(".")
            for start in range(len(labels)):
                suffix = ".".join(labels[start:])
                if suffix in self._suffixes:
                    candidate = (-(len(labels) - start), suffix)
                    if best is None or candidate < best:
                        best = candidate
                    break  # shorter suffixes of this host cannot beat this one
        return self.default if best is None else self._suffixes[best[1]]

    def for_route(self, route: Route) -> T:
        """The setting for a route's domain and site."""
        return self.lookup(route.domain, route.site)


def _config_domain(text: str, what: str) -> str:
    try:
        return normalize_domain(text)
    except RoutingError as exc:
        raise ConfigError(f"{what} {text!r}: {exc.text}") from None


class Router:
    """Turns recipient domains into routes.

    Args:
        config: the routing settings.
        resolver: an MX resolver to share (by default one is made from ``config``, unless a
            smarthost makes DNS unnecessary and no relay needs a name resolved).

    Raises:
        ConfigError: an override's domain or a relay's host is invalid, or DNS is needed and
            no nameserver is configured.
    """

    def __init__(self, config: RoutingConfig, *, resolver: MXResolver | None = None) -> None:
        self.config = config
        self._overrides = {
            _config_domain(domain, "route override"): relay
            for domain, relay in config.overrides.items()
        }
        relays = list(self._overrides.values())
        if config.smarthost is not None:
            relays = [config.smarthost]
        for relay in relays:
            if relay.address is None:
                _config_domain(relay.host, "relay host")
        needs_dns = config.smarthost is None or config.smarthost.address is None
        if resolver is None and needs_dns:
            resolver = MXResolver(config)
        self._resolver = resolver

    @property
    def resolver(self) -> MXResolver | None:
        """The resolver routes are looked up with (None: a smarthost by address needs none)."""
        return self._resolver

    def relayed(self, domain: str) -> bool:
        """Whether ``domain`` (normalised) goes to a configured relay rather than its MX hosts."""
        return self.config.smarthost is not None or domain in self._overrides

    async def route(self, domain: str) -> Route:
        """The route for ``domain`` (U- or A-labels, any case).

        Raises:
            PermanentRoutingError: the domain is invalid, does not exist or takes no mail.
            TransientRoutingError: DNS could not say where it goes, for now.
        """
        await trio.lowlevel.checkpoint()
        name = normalize_domain(domain)
        relay = self.config.smarthost or self._overrides.get(name)
        if relay is not None:
            return await self._relay_route(name, relay)
        assert self._resolver is not None
        found = await self._resolver.resolve(name)
        return Route(
            name,
            Site.of(found.names, self.config.smtp_port),
            found.hosts,
            cached=found.cached,
            expires=found.expires,
        )

    async def _relay_route(self, domain: str, relay: Relay) -> Route:
        address = relay.address
        expires = math.inf
        if address is not None:
            addresses: tuple[str, ...] = (address,)
            host = address
        else:
            assert self._resolver is not None
            host = normalize_domain(relay.host)
            addresses, expires = await self._resolver.addresses(host)
        hosts = (MXHost(host, 0, addresses, relay.port),)
        return Route(
            domain, Site((host,), relay.port), hosts, relay.auth, relay.tls, expires=expires
        )


async def route_all(
    router: Router, domains: Iterable[str], *, at_once: int = 64
) -> dict[str, Route | RoutingError]:
    """Route every domain, ``at_once`` lookups at a time: its route, or why it has none."""
    results: dict[str, Route | RoutingError] = {}
    limiter = trio.CapacityLimiter(at_once)

    async def one(domain: str) -> None:
        async with limiter:
            try:
                results[domain] = await router.route(domain)
            except RoutingError as exc:
                results[domain] = exc

    async with trio.open_nursery() as nursery:
        for domain in domains:
            nursery.start_soon(one, domain)
    return results
