"""Prometheus metrics: what bulksend exports, and the bounded site label.

Every metric lives in one :class:`Metrics` object with its own registry (tests and several
runs in one process never collide). Series are aggregates only: no address, local part or
merge value is ever a label. Per-site series use :class:`SiteLabels`, which gives a site
its own label only if it is among the ``top`` sites by recipient volume known when the site
is first seen, and ``"other"`` otherwise, so a campaign to 10k domains exports a few dozen
series, not 10k.

The README lists every metric; ``tests/test_metrics.py`` checks that list and the Grafana
dashboard against what this module registers.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

OTHER = "other"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


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
    """Every bulksend metric, registered in :attr:`registry`."""

    def __init__(self, registry: CollectorRegistry | None = None, *, top_sites: int = 20) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sites = SiteLabels(top_sites)
        r = self.registry
        self.recipients = Counter(
            "bulksend_recipients",
            "Recipient outcomes by result (delivered, deferred, bounced, expired, in_doubt); "
            "expired is counted when the journal commits it.",
            ["outcome"],
            registry=r,
        )
        self.site_recipients = Counter(
            "bulksend_site_recipients",
            "Recipient outcomes per site (top sites by volume, the rest as 'other').",
            ["site", "outcome"],
            registry=r,
        )
        self.replies = Counter(
            "bulksend_smtp_replies",
            "Final SMTP replies per recipient by class (2xx, 4xx, 5xx).",
            ["code_class"],
            registry=r,
        )
        self.bounces = Counter(
            "bulksend_bounces",
            "Bounced recipients by category.",
            ["category"],
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "bulksend_smtp_transaction_seconds",
            "Time from MAIL FROM to the final reply of one SMTP transaction.",
            buckets=_LATENCY_BUCKETS,
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
            "SMTP connection attempts that failed, per site and reason.",
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
        self.in_doubt = Counter(
            "bulksend_in_doubt",
            "Messages whose final reply never came (they may have been delivered).",
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Expose the metrics over HTTP on ``host:port`` (loopback unless told otherwise).

        Port 0 picks a free one; the returned server says which, and stops with ``close()``.

        Raises:
            OSError: the address cannot be bound.
        """
        return serve(self.registry, port, host)


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Expose ``registry`` over HTTP (what :meth:`Metrics.serve` and ``--workers`` use)."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address
    return MetricsServer(str(bound[0]), int(bound[1]), server, thread)
