"""The scheduler: from the journal's due recipients to destinations, under one nursery.

How this works: the *feeder* asks the journal which domains have recipients due now,
routes each new one (DNS, concurrently but bounded), and attaches it to the destination of
its site, creating that destination on first use. From then on the destination pulls that
domain's recipients itself (see :mod:`bulksend.delivery.destination`), so the feeder never
waits on a full or slow destination, and memory holds only a few recipients per site: never
a task or an object per pending recipient.

A domain is detached when its destination finds nothing due for it. The feeder then sleeps
until the earliest moment something becomes due again (the journal's next retry time, or a
deferral just recorded), never polling, and finishes when no recipient is waiting.

Routing failures are settled here: a permanent one (NXDOMAIN, null MX) bounces the domain's
due recipients, a temporary one defers them, both with the enhanced code routing reported.

Routes expire with the DNS answers behind them (a run lasts days, MX TTLs hours): when an
attached domain's route has expired (and it has kept it at least ``_REROUTE_MIN``, so TTL 0
does not turn every batch into a lookup), the feeder detaches it from its destination and
routes it again; the new route may lead to another site, whose destination then serves it.

Limits (:class:`SitePolicy`) are layered: defaults, then a relay's own ``tls`` (the
smarthost's), then the site's MX suffix override, then the domain's override. A domain with
an override of its own does not roll up: it gets a site of its own (the same hosts, see
:meth:`~bulksend.routing.Site.alone`), so its limits and TLS requirement hold for its
recipients only, and the rolled-up site keeps the site's limits.
A domain with an MTA-STS policy (enforce or testing, looked up once per routing through the
run's :class:`~bulksend.tlspolicy.TlsPolicies`) has a site of its own too, so its
connections obey its policy; relayed domains (smarthost, overrides) have no MTA-STS or DANE.

With an egress pool a site has one destination per source address (its lanes, see
:mod:`bulksend.egress.selection`), each attached to the site's domains and pulling from them;
a site of a mailbox provider (``[policy.providers]`` or the shipped rules) shares the
provider's limits and backoff with its other sites (:mod:`bulksend.delivery.provider`); a
warming source's daily count is shared by its lanes at every site, and kept in the journal
for every worker that shares it (:mod:`bulksend.egress.warmup`).

Stopping (:meth:`Scheduler.stop`, on SIGINT/SIGTERM from the CLI): no new transaction
starts; senders finish what is in flight within ``grace`` seconds, then are cancelled (a
message whose final reply is still owed then is in doubt); unsent recipients are handed back
to the journal. The run can be resumed.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from bulksend.config import LimitsOverride, SendingPolicy, SiteLimits, TlsMode
from bulksend.config.providers import ProviderPolicy
from bulksend.delivery.backoff import Backoff
from bulksend.delivery.context import RunContext, RunSettings
from bulksend.delivery.destination import Destination
from bulksend.delivery.outcome import classify_dns
from bulksend.delivery.provider import Provider
from bulksend.egress.metrics import WarmupCollector
from bulksend.egress.providers import ProviderTable, check_warmup_providers, effective_providers
from bulksend.egress.rules import shipped_providers
from bulksend.egress.selection import Lane, lanes
from bulksend.egress.warmup import Warmup
from bulksend.journal import Due, Outcome
from bulksend.routing import PolicyTable, Route, Router, RoutingError, Site

log = logging.getLogger("bulksend.scheduler")

# Domains routed at once; DNS answers come back in milliseconds, so this is plenty.
_ROUTING_CONCURRENCY = 64
# Seconds an attached domain keeps its route at least, whatever the TTL (0 included): routing
# again detaches the domain from its destination for a moment.
_REROUTE_MIN = 30.0
# Wake-ups (deferrals recorded, domains finished) are handled together, at most this often:
# asking the journal which domains are due scans its index (~0.1 s at 1M recipients).
_COALESCE = 0.25
# With no domain attached, whatever still waits is claimed by another worker of a shared
# journal (or in flight here): its outcomes and its expiring leases are not events of this
# process, so the journal is asked again this often.
_SHARED_POLL = 1.0


def _ignore(_site: Site, _destination: Destination) -> None:
    pass


def _never(_domain: str) -> bool:
    return False


class SitePolicy:
    """The limits of each route's destination, and which domains do not roll up.

    Limits are layered, each layer replacing only the keys it sets: the policy's defaults, a
    relay's own ``tls`` (the smarthost's), the override of the site's MX host suffix, the
    override of the domain. A domain with an override has a site of its own (:meth:`site_of`).

    Raises:
        ConfigError: an override's key is not a valid domain.
    """

    def __init__(self, policy: SendingPolicy) -> None:
        self._defaults = policy.defaults
        self._sites: PolicyTable[LimitsOverride | None] = PolicyTable(
            None, mx_suffixes=policy.sites
        )
        self._domains: PolicyTable[LimitsOverride | None] = PolicyTable(
            None, domains=policy.domains
        )

    def lookup(self, domain: str, site: Site, tls: TlsMode | None = None) -> SiteLimits:
        """The limits for ``domain`` (normalised) at ``site``, over a relay's ``tls``."""
        limits = self._defaults if tls is None else dataclasses.replace(self._defaults, tls=tls)
        for override in (self._sites.lookup(domain, site), self._domains.lookup(domain, site)):
            if override is not None:
                limits = override.apply(limits)
        return limits

    def for_route(self, route: Route) -> SiteLimits:
        """The limits of a route's destination."""
        return self.lookup(route.domain, route.site, route.tls)

    def site_of(self, route: Route) -> Site:
        """The route's site, or a site of the domain's own when it has an override."""
        if self._domains.lookup(route.domain, route.site) is None:
            return route.site
        return route.site.alone(route.domain)


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """What ``status`` and the progress display show for one site."""

    site: str
    label: str
    domains: int
    connections: int
    senders: int
    backed_off: bool
    max_connections: int
    rate: float | None
    suspended_for: float
    reason: str
    last_error: str
    tls_policy: str = ""  # the TLS policy of its last connection (MTA-STS enforce, DANE ...)
    tls_failure: str = ""  # its last TLS failure or MTA-STS/DANE refusal


class Scheduler:
    """Runs one campaign's deliveries until no recipient is waiting, or until stopped.

    It makes the run's :class:`~bulksend.delivery.context.RunContext` and is the
    :class:`~bulksend.delivery.context.RunEvents` its destinations report to.
    ``on_outcome`` sees every outcome as it is recorded, with the site's metric label
    (accounting log, progress display).
    """

    def __init__(
        self,
        settings: RunSettings,
        router: Router,
        policy: SendingPolicy,
        *,
        grace: float = 30.0,
        on_outcome: Callable[[Due, Outcome, str], None] | None = None,
        owns: Callable[[str], bool] | None = None,
        share: tuple[int, int] = (0, 1),
    ) -> None:
        self.context = RunContext(settings, self)
        self.router = router
        self.policy = policy
        self.table = SitePolicy(policy)
        campaign_file = settings.campaign.config.source
        providers = effective_providers(policy, shipped_providers(), source=campaign_file)
        self.providers = ProviderTable(providers.values())
        self._providers: dict[str, Provider] = {}  # by name (and egress source)
        # By egress source (one allowance, all sites), and by "<source>/<provider>".
        self._warmups: dict[str, Warmup] = {}
        self._share = share  # this shard's (index, count): its part of each warm-up allowance
        sources = settings.campaign.config.egress.sources.values()
        check_warmup_providers(sources, providers, campaign_file)
        if any(source.warmup or source.warmup_providers for source in sources):
            self.context.metrics.registry.register(WarmupCollector(self._warmups))
        # A shard sends to a site only from the egress sources it owns (delivery.shard).
        self._owns = owns
        self.grace = grace
        self.destinations: dict[Site, Destination] = {}
        self._attached: set[str] = set()
        # Attached domains that have a route: when to route again, and who serves them.
        self._routed: dict[str, tuple[float, list[Destination]]] = {}
        self._reroutes: list[tuple[float, str]] = []  # heap of (trio time, domain)
        self._sleep_until = -math.inf  # trio time the feeder sleeps until, while it sleeps
        self._routing = trio.Semaphore(_ROUTING_CONCURRENCY)
        self._wake = trio.Event()
        self._wake_at = math.inf
        self._label_threshold = 0
        self.complete = False
        self._on_outcome = on_outcome
        #: Live control (``bulksend ctl``): sees each new destination; says which domains
        #: are held (paused or cancelled: not attached).
        self.on_destination: Callable[[Site, Destination], None] = _ignore
        self.held: Callable[[str], bool] = _never

    # ------------------------------------------------------------------ public

    @property
    def stopping(self) -> bool:
        """Whether a stop has begun (asked for, or the run is done)."""
        return self.context.stopping.is_set()

    def stop(self) -> None:
        """Begin a graceful stop: nothing new starts, in-flight work gets ``grace`` seconds."""
        if not self.context.stopping.is_set():
            if not self.complete:
                log.info("stopping: no new transactions; waiting up to %gs", self.grace)
            self.context.stopping.set()
            for destination in self.destinations.values():
                destination.wake()
            self._wake.set()

    async def run(self) -> None:
        """Deliver until every recipient is final, or until :meth:`stop` (then return)."""
        async with trio.open_nursery() as nursery:
            await self._feed(nursery)
            self.stop()  # done or stopping: release idle senders
            with trio.move_on_after(self.grace):
                if self.context.senders:
                    await self.context.idle.wait()
            nursery.cancel_scope.cancel()
        for warmup in self._warmups.values():
            await warmup.give_back()

    def sites(self) -> list[SiteStatus]:
        """A snapshot of every site's state, busiest first."""
        now = self.context.now()
        out = []
        for site, d in self.destinations.items():
            limits = d.backoff.limits
            out.append(
                SiteStatus(
                    site=str(site),
                    label=d.label,
                    domains=len(d.domains),
                    connections=d.open_connections,
                    senders=d.senders,
                    backed_off=d.backoff.active,
                    max_connections=limits.max_connections,
                    rate=limits.rate,
                    suspended_for=max(limits.suspended_until - now, 0.0),
                    reason=d.backoff.reason,
                    last_error=d.last_error,
                    tls_policy=d.tls_policy,
                    tls_failure=d.tls_failure,
                )
            )
        out.sort(key=lambda s: (-s.connections, -s.domains, s.site))
        return out

    # ------------------------------------------------------------- run events

    def outcome_recorded(self, due: Due, outcome: Outcome, site_label: str) -> None:
        if self._on_outcome is not None:
            self._on_outcome(due, outcome, site_label)

    def due_again(self, at: float) -> None:
        if at < self._wake_at:
            self._wake.set()

    def final(self) -> None:
        # With no domain attached, the last claimed recipients finishing may end the run.
        if not self._attached:
            self._wake.set()

    def limit_reached(self) -> None:
        self.stop()

    def domain_idle(self, domain: str) -> None:
        self._attached.discard(domain)
        self._routed.pop(domain, None)
        self._wake.set()

    async def _feed(self, nursery: trio.Nursery) -> None:
        d = self.context
        first = True
        while not d.stopping.is_set():
            self._wake = trio.Event()
            self._wake_at = math.inf
            self._sleep_until = -math.inf
            await d.writer.flush()  # what senders recorded is visible to the queries below
            now = d.now()
            due = await d.writer.due_domains(now=now)
            if first and due:
                volumes = sorted(due.values(), reverse=True)
                top = d.metrics.sites.top
                self._label_threshold = volumes[min(top, len(volumes)) - 1]
                first = False
            fresh = sorted(
                (n for n in due if n not in self._attached and not self.held(n)),
                key=lambda n: -due[n],
            )
            for domain in fresh:
                if d.stopping.is_set():
                    return
                self._attached.add(domain)
                await self._routing.acquire()
                nursery.start_soon(self._route, domain, due[domain], nursery)
            await self._reroute_expired(nursery)
            if not self._attached and not await d.writer.waiting():
                self.complete = True
                return
            upcoming = await d.writer.next_due_at()
            # Rows due now belong to attached domains: their destinations fetch them.
            self._wake_at = upcoming if upcoming is not None and upcoming > now else math.inf
            wait = self._wake_at - d.now()
            if self._reroutes:
                wait = min(wait, self._reroutes[0][0] - trio.current_time())
            if not self._attached:
                wait = min(wait, _SHARED_POLL)
            self._sleep_until = trio.current_time() + wait
            with trio.move_on_after(max(wait, 0.0)):
                await self._wake.wait()
            await trio.sleep(_COALESCE)

    async def _reroute_expired(self, nursery: trio.Nursery) -> None:
        """Route again every attached domain whose route expired (it may move to another site)."""
        now = trio.current_time()
        while self._reroutes and self._reroutes[0][0] <= now:
            at, domain = heapq.heappop(self._reroutes)
            routed = self._routed.get(domain)
            if routed is None or routed[0] != at:
                continue  # detached since, or routed again since
            del self._routed[domain]
            for destination in routed[1]:
                destination.detach(domain)
            await self._routing.acquire()
            nursery.start_soon(self._route, domain, 0, nursery)

    async def _route(self, domain: str, volume: int, nursery: trio.Nursery) -> None:
        d = self.context
        try:
            try:
                route = await self.router.route(domain)
            except RoutingError as exc:
                result = "temporary" if exc.transient else "permanent"
                d.metrics.dns_lookups.labels(result).inc()
                await self._settle(domain, exc)
                self.domain_idle(domain)
                return
            d.metrics.dns_lookups.labels("cached" if route.cached else "ok").inc()
            tls = None if self.router.relayed(route.domain) else d.tls
            sts = None if tls is None else await tls.domain_policy(route.domain)
            group = self._destinations(route, volume, alone=sts is not None)
            for destination in group:
                destination.tls = tls
            reroute_at = max(route.expires, trio.current_time() + _REROUTE_MIN)
            if reroute_at < math.inf:
                self._routed[domain] = (reroute_at, group)
                heapq.heappush(self._reroutes, (reroute_at, domain))
                if reroute_at < self._sleep_until:
                    self._wake.set()  # the feeder sleeps past it
                if len(self._reroutes) > 2 * len(self._routed) + 1024:
                    # Entries of domains gone idle pile up: keep the live ones only.
                    self._reroutes = [(at, name) for name, (at, _) in self._routed.items()]
                    heapq.heapify(self._reroutes)
            for destination in group:
                destination.attach(domain, nursery)
        finally:
            self._routing.release()

    async def _settle(self, domain: str, exc: RoutingError) -> None:
        """Every due recipient of an unroutable domain gets the routing outcome."""
        d = self.context
        outcome = classify_dns(
            transient=exc.transient, enhanced_code=exc.enhanced_code, text=exc.text
        )
        log.info("domain %s: %s %s", domain, exc.enhanced_code, exc.text)
        while not d.stopping.is_set():
            batch = await d.writer.fetch_due(domain, 500, now=d.now())
            if not batch:
                return
            for due in batch:  # claimed: each gets its outcome (no checkpoint between)
                d.record(due, outcome, "other")

    def _destinations(self, route: Route, volume: int, *, alone: bool) -> list[Destination]:
        """The destinations of the route's site: one per egress lane (one without a pool).

        A domain with an MTA-STS policy (``alone``) does not roll up: its connections obey
        its policy.
        """
        site = route.site.alone(route.domain) if alone else self.table.site_of(route)
        group = []
        every = lanes(self.context.campaign.config.egress, self.table.for_route(route))
        owns = self._owns
        mine = [lane for lane in every if owns is None or owns(str(route.site.via(lane.source)))]
        for lane in mine if len(every) > 1 and mine else every:
            key = site.via(lane.source)
            destination = self.destinations.get(key)
            if destination is not None:
                destination.route = route  # the newest answer: same hosts, maybe new addresses
            else:
                limits = lane.limits
                name = str(key)
                metrics = self.context.metrics
                label = metrics.sites.label(name, volume, threshold=self._label_threshold)
                provider = self._provider(route, lane)
                warmups = self._lane_warmups(lane, None if provider is None else provider.policy)
                shared = () if provider is None else provider.policy.backoff
                backoff = Backoff(
                    name,
                    self.policy.backoff + shared + lane.rules,
                    max_connections=limits.max_connections,
                    rate=limits.rate,
                )
                destination = Destination(
                    self.context,
                    route,
                    limits,
                    backoff,
                    label=label,
                    lane=lane,
                    provider=provider,
                    warmups=warmups,
                )
                self.destinations[key] = destination
                self.on_destination(key, destination)
            group.append(destination)
        for destination in group:  # where a lane that must wait hands its recipients
            destination.siblings = [d for d in group if d is not destination]
        return group

    def _lane_warmups(self, lane: Lane, provider: ProviderPolicy | None) -> tuple[Warmup, ...]:
        """The warm-ups of a lane's one source: its own, shared by its lanes at every site,
        and the one of its messages to ``provider``, shared by that provider's sites."""
        if not lane.source:
            return ()
        ((source, _weight),) = lane.sources
        found = [self._warmup(source.name, source.warmup, source.warmup_start)]
        if provider is not None:
            curve = source.warmup_providers.get(provider.name, ())
            found.append(self._warmup(f"{source.name}/{provider.name}", curve, source.warmup_start))
        return tuple(w for w in found if w is not None)

    def _warmup(self, name: str, curve: tuple[int, ...], start: float | None) -> Warmup | None:
        """The warm-up named ``name`` (one journal row), made on first use; None: no curve."""
        if not curve:
            return None
        warmup = self._warmups.get(name)
        if warmup is None:
            ledger = functools.partial(self.context.writer.update_warmup, name)
            warmup = Warmup(curve, start, ledger=ledger, share=self._share, name=name)
            self._warmups[name] = warmup
        return warmup

    def _provider(self, route: Route, lane: Lane) -> Provider | None:
        """The shared limits of the route's mailbox provider (per egress source), if any."""
        policy = self.providers.lookup(route.domain, route.site)
        if policy is None:
            return None
        key = f"provider {policy.name}" + (f" via {lane.source}" if lane.source else "")
        provider = self._providers.get(key)
        if provider is None:
            d = self.context
            provider = Provider(key, policy, d.throttles, now=d.now)
            self._providers[key] = provider
        return provider
