"""Prometheus metrics: what bulksend exports, and the bounded site label.

Every metric of a run lives in one :class:`Metrics` object with its own registry (tests and
several runs in one process never collide); what the return path and the unsubscribe
endpoint export is :class:`FeedbackMetrics`. Series are aggregates only: no address, local part or
merge value is ever a label. Per-site series use :class:`SiteLabels`, which gives a site
its own label only if it is among the ``top`` sites by recipient volume known when the site
is first seen, and ``"other"`` otherwise, so a campaign to 10k domains exports a few dozen
series, not 10k.

The registry also carries ``bulksend_build_info{version}`` and the standard ``process_*``
series (CPU, memory, file descriptors; Linux). prometheus_client's ``*_created`` series
(a creation timestamp for every counter and histogram child, a third of the scrape and no
use to a rate) are turned off for the whole process when this module is imported.

The README lists every metric; ``tests/deploy/test_deploy.py`` checks that list and the
Grafana dashboard against what this module registers.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from bulksend.smtp.errors import RemoteProtocolError, ReplyError, SMTPTimeoutError, TLSError

OTHER = "other"

disable_created_metrics()  # type: ignore[no-untyped-call]

#: The ``reason`` values of ``bulksend_connections_failed_total``, as documented.
CONNECTION_FAILURE_REASONS = ("refused", "timeout", "tls", "rejected", "protocol", "network")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, its causes, and the members of any exception group among them."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        if e.__cause__ is not None:
            todo.append(e.__cause__)


def connection_failure_reason(exc: BaseException) -> str:
    """Why a connection attempt failed, as a ``reason`` label value.

    ``tls`` (STARTTLS or the handshake failed), ``timeout`` (no answer in time),
    ``refused`` (nothing listens: TCP reset), ``rejected`` (the server answered with a
    refusal: greeting or EHLO), ``protocol`` (it broke SMTP), ``network`` (anything else:
    unreachable, reset, closed).
    """
    if isinstance(exc, TLSError):
        return "tls"
    if isinstance(exc, ReplyError):
        return "rejected"
    if isinstance(exc, RemoteProtocolError):
        return "protocol"
    causes = list(_causes(exc))
    if any(isinstance(e, SMTPTimeoutError | TimeoutError) for e in causes):
        return "timeout"
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return "refused"
    return "network"


def _version() -> str:
    try:
        return version("bulksend")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Count:
    """One series of a :class:`CountedFamily`: a plain number, without a lock."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative: a counter only goes up)."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class CountedFamily:
    """A counter family counted in plain numbers and published when it is collected.

    prometheus_client's ``Counter`` takes a lock and, through ``labels()``, a dict lookup
    for every increment; the delivery hot path counts several series per message, so its
    counters are these instead: the run's (one) thread adds to :class:`Count` objects it
    keeps, and a scrape (the exporter's thread) reads the numbers as they are. Names,
    labels, help text and values are those a ``Counter`` would export.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Count] = {}
        if not self._labelnames:
            self._children[()] = Count()  # an unlabelled counter exports 0 from the start
        registry.register(self)

    def labels(self, *values: str) -> Count:
        """The series of these label values (created on first use; keep it to count fast)."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
            child = self._children.setdefault(values, Count())
        return child

    def inc(self, amount: float = 1.0) -> None:
        """Count on an unlabelled family."""
        self.labels().inc(amount)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def describe(self) -> list[CounterMetricFamily]:
        return [self._family()]

    def collect(self) -> list[CounterMetricFamily]:
        family = self._family()
        for values, child in list(self._children.items()):  # a copy: the run may add one
            family.add_metric(list(values), child.value)
        return [family]


class CountedHistogram:
    """An unlabelled histogram counted in plain numbers (see :class:`CountedFamily`)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [*buckets, math.inf]
        # The ``le`` label values as prometheus_client writes them ("0.005", "+Inf").
        self._les: list[str] = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        registry.register(self)

    def observe(self, amount: float) -> None:
        """Count one observation (in the first bucket whose bound is at least ``amount``)."""
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> list[HistogramMetricFamily]:
        total = 0
        cumulative = []
        for le, count in zip(self._les, list(self._counts), strict=True):
            total += count
            cumulative.append((le, total))
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], cumulative, self._sum)
        return [family]


@dataclass
class MetricsServer:
    """A running metrics endpoint (a daemon thread); :meth:`close` stops it."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """The scrape URL, ``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()


class SiteLabels:
    """Maps a site name to a bounded label set: the ``top`` biggest sites, the rest "other"."""

    def __init__(self, top: int = 20) -> None:
        self.top = top
        self._labels: dict[str, str] = {}
        self._named = 0

    def label(self, site: str, volume: int = 0, *, threshold: int = 0) -> str:
        """The label for ``site``; decided the first time the site is seen.

        Args:
            site: the site's name.
            volume: recipients known for it (from the journal) when first seen.
            threshold: the smallest volume that earns a name (the top-N cut-off).
        """
        label = self._labels.get(site)
        if label is None:
            if self._named < self.top and volume >= threshold:
                label = site
                self._named += 1
            else:
                label = OTHER
            self._labels[site] = label
        return label


class Metrics:
    """Every bulksend metric, registered in :attr:`registry`.

    Args:
        registry: where to register (a new one by default).
        top_sites: how many sites get their own label.
        process: also register ``bulksend_build_info`` and the ``process_*`` series (a
            worker of ``--workers`` leaves them to the parent, which sums its workers).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        top_sites: int = 20,
        process: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sites = SiteLabels(top_sites)
        r = self.registry
        if process:
            register_process_metrics(r)
        self.suppressions = _suppressions(r)
        self.recipients = CountedFamily(
            "bulksend_recipients",
            "Recipient outcomes by result (delivered, deferred, bounced, expired, in_doubt); "
            "expired is counted when the journal commits it.",
            ["outcome"],
            registry=r,
        )
        self.site_recipients = CountedFamily(
            "bulksend_site_recipients",
            "Recipient outcomes per site (top sites by volume, the rest as 'other').",
            ["site", "outcome"],
            registry=r,
        )
        self.replies = CountedFamily(
            "bulksend_smtp_replies",
            "Final SMTP replies per recipient by class (2xx, 4xx, 5xx).",
            ["code_class"],
            registry=r,
        )
        self.bounces = CountedFamily(
            "bulksend_bounces",
            "Bounced recipients by category.",
            ["category"],
            registry=r,
        )
        self.transaction_seconds = CountedHistogram(
            "bulksend_smtp_transaction_seconds",
            "Time from MAIL FROM to the final reply of one SMTP transaction.",
            _LATENCY_BUCKETS,
            registry=r,
        )
        self.dns_lookups = Counter(
            "bulksend_dns_lookups",
            "Domain routings by result (ok, cached, temporary, permanent).",
            ["result"],
            registry=r,
        )
        self.connections_open = Gauge(
            "bulksend_connections_open",
            "SMTP connections open now, per site.",
            ["site"],
            registry=r,
        )
        self.connections_opened = Counter(
            "bulksend_connections_opened",
            "SMTP connections established, per site and TLS state (tls, plaintext).",
            ["site", "tls"],
            registry=r,
        )
        self.connections_failed = Counter(
            "bulksend_connections_failed",
            "SMTP connection attempts that failed, per site and reason "
            f"({', '.join(CONNECTION_FAILURE_REASONS)}).",
            ["site", "reason"],
            registry=r,
        )
        self.throttle_wait_seconds = Counter(
            "bulksend_throttle_wait_seconds",
            "Seconds senders waited on a site's message or connection rate limit.",
            ["site"],
            registry=r,
        )
        self.backoff_active = Gauge(
            "bulksend_backoff_active",
            "1 while a site is backed off (reduced or suspended) after receiver pushback.",
            ["site"],
            registry=r,
        )
        self.backoff_events = Counter(
            "bulksend_backoff_events",
            "Backoff changes per site and action (reduce, suspend, restore).",
            ["site", "action"],
            registry=r,
        )
        self.journal_commit_seconds = Histogram(
            "bulksend_journal_commit_seconds",
            "Time to commit one batch of outcomes to the journal.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "bulksend_queue_depth",
            "Recipients not yet in a final state (pending or in doubt).",
            registry=r,
        )
        self.in_doubt = CountedFamily(
            "bulksend_in_doubt",
            "Messages whose final reply never came (they may have been delivered).",
            registry=r,
        )
        self.tls_sessions = CountedFamily(
            "bulksend_tls_sessions",
            "SMTP sessions to MX hosts by TLS policy (none, opportunistic, sts, dane) and "
            "result (success, plaintext, or an RFC 8460 failure type).",
            ["policy", "result"],
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Expose the metrics over HTTP on ``host:port`` (loopback unless told otherwise).

        Port 0 picks a free one; the returned server says which, and stops with ``close()``.

        Raises:
            OSError: the address cannot be bound.
        """
        return serve(self.registry, port, host)


def _suppressions(registry: CollectorRegistry) -> Counter:
    return Counter(
        "bulksend_suppressions",
        "Entries made in the suppression store (or made again), by reason (hard_bounce, "
        "soft_bounce, complaint, unsubscribe) and source (campaign, dsn, arf, mailto, http).",
        ["reason", "source"],
        registry=registry,
    )


class FeedbackMetrics:
    """What comes back, as ``bulksend inbound --listen`` and ``bulksend unsubscribe-server``
    export it: the notices received (by kind and what became of them) and the suppressions
    they made. The complaint-rate alert divides their complaints by the runs' deliveries."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if process:
            register_process_metrics(self.registry)
        self.feedback = Counter(
            "bulksend_feedback",
            "Notices that came back to the return path or the unsubscribe endpoint, by kind "
            "(bounce, complaint, unsubscribe, delay, auto_reply, ...) and outcome (suppressed, "
            "counted, unknown_recipient, ...).",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.suppressions = _suppressions(self.registry)
        self.async_bounces = Counter(
            "bulksend_async_bounces",
            "Bounces of a campaign's recipients that came back after the run sent to them "
            "(DSN, failure notices), by category (as inline bounces: bad_mailbox, "
            "mailbox_full, policy, ...).",
            ["category"],
            registry=self.registry,
        )


def register_process_metrics(registry: CollectorRegistry) -> None:
    """Add ``bulksend_build_info{version}`` and the ``process_*`` series to ``registry``."""
    build = Gauge(
        "bulksend_build_info",
        "Always 1; the version label says which bulksend runs.",
        ["version"],
        registry=registry,
    )
    build.labels(_version()).set(1)
    ProcessCollector(registry=registry)


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Expose ``registry`` over HTTP (what :meth:`Metrics.serve` and ``--workers`` use)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address
    return MetricsServer(str(bound[0]), int(bound[1]), server, thread)
