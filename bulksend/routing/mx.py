"""MX resolution: a domain -> its mail exchangers and their addresses, with a TTL cache.

How this works (RFC 5321 §5.1):

1. The domain is normalised: U-labels become A-labels (IDNA 2008 with UTS #46 mapping, RFC
   5891), letters are lowercased (the domain is case-insensitive, §2.4), and its length is
   checked *before* conversion so a huge input never reaches the IDNA codec.
2. Its MX records are looked up. NXDOMAIN is permanent (5.1.2). A SERVFAIL or a timeout is
   temporary (4.4.3). A lone ``MX 0 .`` is a null MX (RFC 7505 §3): permanent 5.1.10 and no
   address fallback; "." targets mixed with real ones (a misconfiguration §3 forbids) are
   dropped. No MX records at all means the implicit MX: the domain itself, preference 0.
3. The hosts are ordered by preference, equal preferences shuffled on every call so load
   spreads over them; the first ``max_mx_hosts`` are resolved (A, and AAAA when enabled).
   A host whose name does not resolve is skipped.
4. Addresses outside the global unicast space (loopback, RFC 1918, link-local, CGNAT,
   documentation...: every non-global block of the IANA special-purpose registries, RFC 6890)
   are refused unless ``allow_private`` is set, so a hostile DNS entry cannot aim the sender
   at internal services. IPv6 forms that carry an IPv4 address (IPv4-mapped, NAT64, 6to4,
   Teredo) are judged by the IPv4 they carry.

   When no usable address remains: if every host's lookups succeeded and every address found
   was refused, the failure is permanent 5.4.4. That is an answer the domain's owner
   published (often the pre-RFC 7505 way of saying "no mail here", ``MX 10 localhost``), and
   asking again gives the same answer, as with a null MX. If any lookup failed, or any host
   had no address at all, it is temporary (4.4.3, 4.4.4): a later lookup may find a usable
   host, and a DNS hiccup must never bounce a recipient.

Every lookup (one name, one type) goes through a cache: a positive answer lives for its TTL
(the CNAME chain's smallest), a negative one for its SOA MINIMUM (RFC 2308 §5), both clamped
to [ttl_min, ttl_max] (by default only capped: TTL 0 is not cached at all, RFC 1035 §3.2.1);
a SERVFAIL or timeout for ``failure_ttl`` (RFC 2308 §7.1). An :class:`MXSet` carries the
expiry of the earliest answer it was built from, so the delivery layer can route again. Time is
``trio.current_time()``, so a MockClock drives expiry. Concurrent lookups of one key share
one query: the first caller leads, the rest wait on its ``trio.Event``; if the leader is
cancelled, a waiter takes over.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import cachetools
import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
import trio

from bulksend.config import parse_domain
from bulksend.errors import ConfigError
from bulksend.routing.config import RoutingConfig
from bulksend.routing.errors import PermanentRoutingError, TransientRoutingError

__all__ = [
    "MXHost",
    "MXResolver",
    "MXSet",
    "Records",
    "is_acceptable_address",
    "normalize_domain",
    "system_nameservers",
]

_EDNS_PAYLOAD = 1232  # DNS flag day 2020: no fragmentation, TCP beyond this
_RETRANSMIT = 2.0  # seconds before a UDP query is sent again, within the lookup's timeout


@functools.lru_cache(maxsize=65536)
def normalize_domain(domain: str) -> str:
    """Return ``domain`` as lowercase A-labels without a final dot (see :func:`parse_domain`).

    Raises:
        PermanentRoutingError: 5.1.3 when it is not a valid host name (too long, empty label,
            characters outside letters, digits and hyphen, or invalid IDNA 2008).
    """
    try:
        return parse_domain(domain)
    except ValueError as exc:
        raise PermanentRoutingError(domain, "5.1.3", str(exc)) from None


# IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and its updates): every block
# whose "Globally Reachable" is False or N/A, plus multicast and the reserved 240/4. Written out
# rather than taken from ``ipaddress.is_global``, whose answer changes between Python releases.
_NON_GLOBAL_V4 = tuple(
    ipaddress.IPv4Network(block)
    for block in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private (RFC 1918)
        "100.64.0.0/10",  # shared address space, CGNAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (RFC 6890; .9 and .10 are anycast services)
        "192.0.2.0/24",  # documentation TEST-NET-1
        "192.88.99.0/24",  # deprecated 6to4 relay anycast (RFC 7526)
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation TEST-NET-2
        "203.0.113.0/24",  # documentation TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the limited broadcast address
    )
)
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")  # the only allocated unicast space
_NON_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(block)
    for block in (
        "2001::/23",  # IETF protocol assignments: benchmarking, ORCHID, ... (Teredo: below)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
    )
)
# IPv6 forms that carry an IPv4 address: acceptable only when every embedded IPv4 is.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: last 32 bits
_6TO4 = ipaddress.IPv6Network("2002::/16")  # RFC 3056: bits 16-47
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380: server bits 32-63, client ~last 32


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 translation or tunnel address carries; None if not one."""
    value = int(ip)
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip in _NAT64:
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if ip in _6TO4:
        return (ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF),)
    if ip in _TEREDO:
        server = ipaddress.IPv4Address((value >> 64) & 0xFFFFFFFF)
        return (server, ipaddress.IPv4Address(~value & 0xFFFFFFFF))
    return None


def is_acceptable_address(address: str, *, allow_private: bool = False) -> bool:
    """Whether mail may be sent to ``address``.

    Unspecified and multicast addresses are never acceptable, nor IPv6 forms that embed one.
    Otherwise, unless ``allow_private``, only globally reachable addresses are: IPv4 outside
    every non-global special-purpose block; IPv6 in the global unicast space ``2000::/3``
    outside its non-global blocks. An IPv6 address that embeds IPv4 (IPv4-mapped, NAT64
    ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32``) is judged by the IPv4
    addresses it carries, so ``64:ff9b::7f00:1`` is loopback.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    carried: tuple[ipaddress.IPv4Address, ...] | None = None
    if isinstance(ip, ipaddress.IPv6Address):
        carried = _embedded_ipv4(ip)
    checked = (ip,) if carried is None else carried
    if any(a.is_unspecified or a.is_multicast for a in (ip, *checked)):
        return False
    if allow_private:
        return True
    return all(_is_global(a) for a in checked)


def _is_global(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv4Address):
        return not any(ip in block for block in _NON_GLOBAL_V4)
    return ip in _GLOBAL_UNICAST_V6 and not any(ip in block for block in _NON_GLOBAL_V6)


def system_nameservers() -> tuple[str, ...]:
    """The host's configured resolvers (``/etc/resolv.conf``), for the CLI to pass in.

    Raises:
        ConfigError: the system has no resolver configuration.
    """
    try:
        resolver = dns.resolver.Resolver(configure=True)
    except dns.exception.DNSException as exc:
        raise ConfigError(
            f"cannot read the system's DNS configuration ({exc}); set routing nameservers"
        ) from None
    return tuple(str(ns) for ns in resolver.nameservers)


@dataclass(frozen=True, slots=True)
class MXHost:
    """One host to try: its name, MX preference, acceptable addresses in order, and port."""

    name: str
    preference: int
    addresses: tuple[str, ...]
    port: int = 25


@dataclass(frozen=True, slots=True)
class MXSet:
    """What MX resolution found for one domain.

    Attributes:
        names: every MX host name the domain publishes (lowercase), usable or not: the
            input of the site key (:meth:`~bulksend.routing.Site.of` sorts them).
        hosts: the usable hosts in the order to try them.
        cached: the MX answer came from the cache (no query was sent for it).
        expires: when the first of the DNS answers it was built from expires (trio time):
            from then on a new lookup may give another answer.
    """

    names: tuple[str, ...]
    hosts: tuple[MXHost, ...]
    cached: bool = field(default=False, compare=False)
    expires: float = field(default=math.inf, compare=False)


class _Status(enum.Enum):
    FOUND = "found"
    NODATA = "nodata"  # the name exists, without records of this type
    NXDOMAIN = "nxdomain"
    FAILED = "failed"  # SERVFAIL, REFUSED, timeout, garbage: try again later


@dataclass(frozen=True, slots=True)
class _Answer:
    """One cached DNS answer, reduced to what routing needs."""

    status: _Status
    expires: float
    exchanges: tuple[tuple[int, str], ...] = ()  # MX: (preference, lowercase name or ".")
    addresses: tuple[str, ...] = ()  # A / AAAA
    reason: str = ""
    records: tuple[dns.rdata.Rdata, ...] = ()  # any other type (TXT, TLSA)
    secure: bool = False  # the resolver set AD: it validated the answer with DNSSEC


@dataclass(frozen=True, slots=True)
class Records:
    """The records of one name and type (TXT, TLSA...), as :meth:`MXResolver.records` found.

    Attributes:
        found: the records (empty: the name or the type does not exist).
        secure: the resolver set AD (RFC 4035 §3.2.3): it validated them with DNSSEC.
        failure: why the lookup failed (SERVFAIL, timeout...); "" when it did not.
    """

    found: tuple[dns.rdata.Rdata, ...]
    secure: bool
    failure: str = ""


@dataclass(slots=True, eq=False)
class _Flight:
    """A lookup in progress; followers wait on ``done`` and read ``answer``."""

    done: trio.Event = field(default_factory=trio.Event)
    answer: _Answer | None = None


_Key = tuple[str, dns.rdatatype.RdataType]


def _expiry(key: _Key, answer: _Answer, now: float) -> float:
    return answer.expires


class MXResolver:
    """Resolves domains to ordered MX hosts, caching every DNS answer for its TTL.

    Args:
        config: nameservers, timeouts, TTL clamps and address policy.
        rng: the randomness for shuffling equal preferences (tests may fix it).

    Raises:
        ConfigError: ``config.nameservers`` is empty.
    """

    def __init__(self, config: RoutingConfig, *, rng: random.Random | None = None) -> None:
        if not config.nameservers:
            raise ConfigError(
                "routing needs at least one nameserver (or a smarthost, which needs none)"
            )
        self._config = config
        self._rng = rng or random.Random()
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.port = config.dns_port
        resolver.nameservers = list(config.nameservers)
        resolver.lifetime = config.timeout
        resolver.timeout = min(_RETRANSMIT, config.timeout)
        # With dnssec, ask with DO (RFC 3225) so a validating resolver sets AD on what it
        # validated (RFC 6840 §5.7 would also accept AD in the query).
        resolver.use_edns(0, dns.flags.DO if config.dnssec else 0, _EDNS_PAYLOAD)
        self._resolver = resolver
        self._backend = dns.asyncbackend.get_backend("trio")
        self._cache: cachetools.TLRUCache[_Key, _Answer, float] = cachetools.TLRUCache(
            maxsize=config.cache_size, ttu=_expiry, timer=trio.current_time
        )
        self._flights: dict[_Key, _Flight] = {}

    # ---- public ----------------------------------------------------------------------------

    async def resolve(self, domain: str) -> MXSet:
        """The MX hosts of ``domain`` (already normalised) in the order to try them.

        Raises:
            PermanentRoutingError: NXDOMAIN (5.1.2), null MX (5.1.10), no MX and no address
                (5.1.2), every address refused (5.4.4).
            TransientRoutingError: DNS failure or timeout (4.4.3), no MX host resolves (4.4.4).
        """
        cached = self._cache.get((domain, dns.rdatatype.MX)) is not None
        mx = await self._lookup(domain, dns.rdatatype.MX)
        if mx.status is _Status.FAILED:
            raise TransientRoutingError(domain, "4.4.3", f"MX lookup failed: {mx.reason}")
        if mx.status is _Status.NXDOMAIN:
            raise PermanentRoutingError(domain, "5.1.2", "domain does not exist (NXDOMAIN)")
        implicit = not mx.exchanges
        if implicit:
            exchanges: Sequence[tuple[int, str]] = [(0, domain)]
        else:
            exchanges = [(pref, name) for pref, name in mx.exchanges if name != "."]
            if not exchanges:
                raise PermanentRoutingError(
                    domain, "5.1.10", "domain accepts no mail (null MX, RFC 7505)"
                )
        names = tuple(name for _, name in exchanges)
        ordered = self._order(exchanges)[: self._config.max_mx_hosts]
        found, expires = await self._addresses_of([name for _, name in ordered])

        hosts: list[MXHost] = []
        failed: list[str] = []
        missing: list[str] = []
        refused: list[str] = []
        for preference, name in ordered:
            addresses, reason = found[name]
            if reason:
                failed.append(f"{name} ({reason})")
            acceptable = tuple(
                a
                for a in addresses
                if is_acceptable_address(a, allow_private=self._config.allow_private)
            )
            if acceptable:
                hosts.append(MXHost(name, preference, acceptable, self._config.smtp_port))
            elif addresses:
                refused.append(f"{name} ({', '.join(addresses)})")
            elif not reason:
                missing.append(name)
        if hosts:
            return MXSet(names, tuple(hosts), cached, min(mx.expires, expires))
        raise self._no_host(
            domain, implicit=implicit, failed=failed, missing=missing, refused=refused
        )

    async def addresses(self, host: str) -> tuple[tuple[str, ...], float]:
        """The addresses of a configured relay's host name, and when the answer expires.

        No range filtering: a configured relay is trusted.

        Raises:
            TransientRoutingError: 4.4.3 when no address could be found.
        """
        name = normalize_domain(host)
        found, expires = await self._addresses_of([name])
        addresses, reason = found[name]
        if not addresses:
            raise TransientRoutingError(
                host, "4.4.3", f"relay host {name} has no address ({reason or 'no A/AAAA'})"
            )
        return addresses, expires

    async def records(self, name: str, kind: str) -> Records:
        """The ``kind`` records of ``name`` (cached, concurrent callers sharing one query)."""
        answer = await self._lookup(name, dns.rdatatype.from_text(kind))
        failure = (answer.reason or "failed") if answer.status is _Status.FAILED else ""
        return Records(answer.records, answer.secure, failure)

    # ---- ordering and failure classification ------------------------------------------------

    def _order(self, exchanges: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
        """Preference order, equal preferences shuffled (RFC 5321 §5.1), each name once."""
        keyed = [(pref, self._rng.random(), name) for pref, name in exchanges]
        keyed.sort()
        seen: set[str] = set()
        ordered = []
        for pref, _, name in keyed:
            if name not in seen:
                seen.add(name)
                ordered.append((pref, name))
        return ordered

    @staticmethod
    def _no_host(
        domain: str, *, implicit: bool, failed: list[str], missing: list[str], refused: list[str]
    ) -> Exception:
        if failed:
            return TransientRoutingError(
                domain, "4.4.3", "address lookup failed for " + "; ".join(failed)
            )
        if refused and not missing:
            return PermanentRoutingError(
                domain,
                "5.4.4",
                "no acceptable address: non-global addresses are refused: " + "; ".join(refused),
            )
        if implicit:
            return PermanentRoutingError(domain, "5.1.2", "domain has no MX and no A/AAAA records")
        detail = "MX hosts without addresses: " + ", ".join(missing)
        if refused:
            detail += "; refused non-global addresses: " + "; ".join(refused)
        return TransientRoutingError(domain, "4.4.4", detail)

    # ---- lookups -----------------------------------------------------------------------------

    async def _addresses_of(
        self, names: Sequence[str]
    ) -> tuple[dict[str, tuple[tuple[str, ...], str]], float]:
        """For each name: (addresses, IPv4 first, each family shuffled; failure reason or "");
        and when the first of the answers used expires."""
        kinds = [dns.rdatatype.A]
        if self._config.ipv6:
            kinds.append(dns.rdatatype.AAAA)
        answers: dict[_Key, _Answer] = {}
        missing: list[_Key] = []
        for name in names:
            for kind in kinds:
                cached = self._cache.get((name, kind))
                if cached is None:
                    missing.append((name, kind))
                else:
                    answers[(name, kind)] = cached
        if missing:

            async def fetch(key: _Key) -> None:
                answers[key] = await self._lookup(*key)

            async with trio.open_nursery() as nursery:
                for key in missing:
                    nursery.start_soon(fetch, key)

        result: dict[str, tuple[tuple[str, ...], str]] = {}
        for name in names:
            addresses: list[str] = []
            reasons: list[str] = []
            for kind in kinds:
                answer = answers[(name, kind)]
                if answer.status is _Status.FAILED:
                    reasons.append(f"{dns.rdatatype.to_text(kind)}: {answer.reason}")
                family = list(answer.addresses)
                self._rng.shuffle(family)
                addresses.extend(family)
            result[name] = (tuple(addresses), "; ".join(reasons))
        return result, min((a.expires for a in answers.values()), default=math.inf)

    async def _lookup(self, name: str, kind: dns.rdatatype.RdataType) -> _Answer:
        """One cached answer; concurrent callers for one key share one query."""
        key = (name, kind)
        while True:
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.answer is not None:
                return flight.answer
            # The leader was cancelled before it had an answer; go round and lead if needed.
        flight = _Flight()
        self._flights[key] = flight
        try:
            answer = await self._query(name, kind)
            flight.answer = answer
            self._cache[key] = answer  # dropped at once by the cache when already expired
            return answer
        finally:
            del self._flights[key]
            flight.done.set()

    def _expires(self, ttl: float) -> float:
        config = self._config
        return trio.current_time() + min(max(ttl, config.ttl_min), config.ttl_max)

    def _failure(self, reason: str) -> _Answer:
        return _Answer(
            _Status.FAILED, trio.current_time() + self._config.failure_ttl, reason=reason
        )

    async def _query(self, name: str, kind: dns.rdatatype.RdataType) -> _Answer:
        """Ask the nameservers once (dnspython retries and falls back to TCP on TC)."""
        qname = dns.name.from_text(name, origin=dns.name.root)
        with trio.move_on_after(self._config.timeout) as deadline:
            try:
                answer = await self._resolver.resolve(
                    qname, kind, raise_on_no_answer=False, search=False, backend=self._backend
                )
            except dns.resolver.NXDOMAIN as exc:
                try:
                    response = exc.response(qname)  # type: ignore[no-untyped-call]
                    ttl = response.resolve_chaining().minimum_ttl
                except (KeyError, dns.exception.DNSException):
                    ttl = 0
                return _Answer(_Status.NXDOMAIN, self._expires(ttl))
            except dns.exception.Timeout:
                return self._failure(f"timed out after {self._config.timeout:g}s")
            except dns.exception.DNSException as exc:
                return self._failure(str(exc) or type(exc).__name__)
        if deadline.cancelled_caught:
            return self._failure(f"timed out after {self._config.timeout:g}s")
        ttl = answer.chaining_result.minimum_ttl
        rrset = answer.rrset
        if rrset is None or len(rrset) == 0:
            return _Answer(_Status.NODATA, self._expires(ttl))
        if kind == dns.rdatatype.MX:
            exchanges = tuple(
                (rd.preference, rd.exchange.to_text(omit_final_dot=True).lower() or ".")
                for rd in rrset
            )
            return _Answer(_Status.FOUND, self._expires(ttl), exchanges=exchanges)
        if kind not in (dns.rdatatype.A, dns.rdatatype.AAAA):
            secure = bool(answer.response.flags & dns.flags.AD)
            return _Answer(_Status.FOUND, self._expires(ttl), records=tuple(rrset), secure=secure)
        return _Answer(
            _Status.FOUND, self._expires(ttl), addresses=tuple(rd.address for rd in rrset)
        )
