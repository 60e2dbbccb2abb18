"""What one run's destinations share, and the events they report to the scheduler.

How this works: the caller of a run fixes its :class:`RunSettings` (the campaign, the journal
writer, metrics, TLS contexts, limits). The :class:`~bulksend.delivery.scheduler.Scheduler`
makes the run's :class:`RunContext` from them, passing itself as the :class:`RunEvents` the
destinations report to: an outcome recorded, a recipient due again, a domain with nothing
due, the run's ``--limit`` reached (or renders failing systematically), a recipient final.

Recording an outcome is synchronous (no await, so never a checkpoint in the sender loop):
it queues the outcome for the journal writer's next batch (:meth:`JournalWriter.add`) and
counts it in plain numbers that the metrics exporter reads when scraped
(:class:`~bulksend.metrics.CountedFamily`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from bulksend.campaign.render import Campaign, RenderBreaker, RenderError
from bulksend.config import Timeouts
from bulksend.delivery.pool import ConnectionPool
from bulksend.delivery.throttle import TokenBucket
from bulksend.journal import Category, Due, JournalWriter, Kind, Outcome
from bulksend.journal.protocol import OutcomeRecord
from bulksend.metrics import Count, Metrics
from bulksend.schedule.windows import SendWindows
from bulksend.throttles import LocalThrottles, ThrottleBackend
from bulksend.tlspolicy import TlsPolicies

__all__ = ["RunContext", "RunEvents", "RunSettings"]


class RunEvents(Protocol):
    """What a run's destinations report (the scheduler implements it)."""

    def outcome_recorded(self, due: Due, outcome: Outcome, site_label: str) -> None:
        """``due``'s outcome was queued for the journal (accounting log, progress)."""

    def due_again(self, at: float) -> None:
        """A recipient handed back is due again at wall-clock time ``at``."""

    def domain_idle(self, domain: str) -> None:
        """``domain`` has nothing due now: its destination no longer fetches it."""

    def limit_reached(self) -> None:
        """Begin a graceful stop (``--limit`` reached, or renders failing systematically)."""

    def final(self) -> None:
        """A recipient reached a final state."""


def _never_suppressed(_address: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class RunSettings:
    """How a run sends: fixed by its caller before it starts."""

    campaign: Campaign
    writer: JournalWriter
    metrics: Metrics
    timeouts: Timeouts
    ehlo_hostname: str
    connections: ConnectionPool  # the global cap on open connections
    ssl_verified: ssl.SSLContext  # for TLS that must verify (required, smarthost AUTH)
    ssl_opportunistic: ssl.SSLContext  # for opportunistic STARTTLS to MX hosts
    epoch: float  # wall-clock seconds at trio time 0
    limit: int | None = None  # recipients to send in this run (``--limit``)
    #: Whether an address is on the suppression list (re-read during the run); None: none.
    suppressed: Callable[[str], bool] | None = None
    total_rate: TokenBucket = field(default_factory=lambda: TokenBucket(None))
    fetch_batch: int = 64
    #: Where site limits live: this process (default) or shared (bulksend.throttles.redis).
    throttles: ThrottleBackend = field(default_factory=LocalThrottles)
    #: MTA-STS and DANE decisions, TLS session counts; None: opportunistic TLS only.
    tls: TlsPolicies | None = None
    #: ``[schedule]``: when recipients may be sent to; None: any time.
    schedule: SendWindows | None = None


class _SiteCounts:
    """One (site label, kind)'s metric series, kept so that counting is an addition."""

    __slots__ = ("recipients", "site")

    def __init__(self, recipients: Count, site: Count) -> None:
        self.recipients = recipients
        self.site = site


_RETRIED = frozenset((Kind.DEFERRED, Kind.IN_DOUBT, Kind.THROTTLED))


class RunContext:
    """One run's shared state: its settings, its stop, its counts, and whom to tell."""

    def __init__(self, settings: RunSettings, events: RunEvents) -> None:
        self.settings = settings
        self.events = events
        self.campaign = settings.campaign
        self.writer = settings.writer
        self.writer.on_commit = self._committed
        #: Retried outcomes not committed yet: the journal may expire their recipients.
        self._expiring: dict[int, tuple[Due, Outcome, str]] = {}
        self.metrics = settings.metrics
        self.connections = settings.connections
        self.suppressed = settings.suppressed or _never_suppressed
        self.total_rate = settings.total_rate
        self.throttles = settings.throttles
        self.tls = settings.tls
        self.schedule = settings.schedule
        self.epoch = settings.epoch
        self.limit = settings.limit
        self.stopping = trio.Event()
        self.renders = RenderBreaker()
        #: Why the run stopped itself (renders failing systematically); "" while it has not.
        self.halt_reason = ""
        self.stats: dict[str, int] = {}  # outcomes of this run, by kind
        self.taken = 0  # recipients taken for sending in this run
        self.senders = 0  # sender tasks running, all destinations
        self.idle = trio.Event()  # set while no sender runs
        self._counts: dict[tuple[str, Kind], _SiteCounts] = {}
        self._replies: dict[int, Count] = {}
        self._bounces: dict[Category, Count] = {}

    def sender_started(self) -> None:
        if self.senders == 0:
            self.idle = trio.Event()
        self.senders += 1

    def sender_ended(self) -> None:
        self.senders -= 1
        if self.senders == 0:
            self.idle.set()

    def take_one(self) -> None:
        """Count a recipient taken for sending; reaching ``limit`` begins a stop."""
        self.taken += 1
        if self.limit is not None and self.taken >= self.limit:
            self.events.limit_reached()

    @property
    def halted(self) -> bool:
        """No new connection or transaction may start: stopping, except for the recipients
        taken within ``limit`` (reaching it stops the run, and they are its last)."""
        return self.stopping.is_set() and not (self.limit is not None and self.taken >= self.limit)

    def now(self) -> float:
        """Wall-clock seconds, advancing with trio's clock (so MockClock tests work)."""
        return self.epoch + trio.current_time()

    def not_rendered(self, group: list[Due], error: RenderError, site_label: str) -> None:
        """Set aside recipients whose message could not be made: never a bounce (the fault
        is the sender's); once render failures are systematic, stop the run."""
        outcome = Outcome.not_rendered(error.reason)
        for due in group:
            self.record(due, outcome, site_label)
        stop = self.renders.failed(error)
        if stop is not None and not self.halt_reason:
            self.halt_reason = stop
            self.events.limit_reached()

    def _committed(self, records: Sequence[OutcomeRecord], expired: Sequence[int]) -> None:
        """Report the recipients the journal expired on this commit (once: the record of
        a retried outcome leaves :attr:`_expiring` with its commit)."""
        ended = set(expired)
        for rid, outcome, _now in records:
            noted = self._expiring.get(rid)
            if noted is None or noted[1] is not outcome:
                continue  # not retried, or recorded again since (a later batch)
            del self._expiring[rid]
            if rid in ended:
                due, last, site_label = noted
                self.events.outcome_recorded(due, Outcome.expired(last), site_label)

    def record(self, due: Due, outcome: Outcome, site_label: str) -> None:
        """Journal one recipient's outcome (queued for the writer's next batch) and count it."""
        now = self.epoch + trio.current_time()
        self.writer.add(due.id, outcome, now=now)
        self.events.outcome_recorded(due, outcome, site_label)
        kind = outcome.kind
        self.stats[kind.value] = self.stats.get(kind.value, 0) + 1
        counts = self._counts.get((site_label, kind))
        if counts is None:
            m = self.metrics
            counts = _SiteCounts(
                m.recipients.labels(kind.value), m.site_recipients.labels(site_label, kind.value)
            )
            self._counts[site_label, kind] = counts
        counts.recipients.value += 1
        counts.site.value += 1
        code = outcome.code
        if code is not None:
            replies = self._replies.get(code // 100)
            if replies is None:
                replies = self._replies[code // 100] = self.metrics.replies.labels(
                    f"{code // 100}xx"
                )
            replies.value += 1
        if kind in _RETRIED:
            self._expiring[due.id] = (due, outcome, site_label)
            if kind is Kind.IN_DOUBT:
                self.metrics.in_doubt.inc()
            # The journal decides the exact time; the scheduler just needs to look again.
            self.events.due_again(now + (outcome.retry_after or 0.0))
            return
        if kind is Kind.BOUNCED and outcome.category is not None:
            category = outcome.category
            bounces = self._bounces.get(category)
            if bounces is None:
                bounces = self._bounces[category] = self.metrics.bounces.labels(category.value)
            bounces.value += 1
        self.events.final()
