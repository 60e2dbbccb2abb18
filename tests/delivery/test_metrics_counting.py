"""The counters of the delivery hot path: plain numbers, scraped as prometheus_client's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from bulksend.metrics import Metrics

_OBSERVED = (0.001, 0.005, 0.0051, 0.2, 7.0, 100.0)


def _name(line: bytes) -> bytes:
    """The series a line of the exposition is about (its HELP and TYPE lines included)."""
    if line.startswith(b"# "):
        return line.split(b" ")[2] if line.count(b" ") >= 2 else b""
    return line.split(b"{")[0].split(b" ")[0]


def _families(text: bytes, names: tuple[bytes, ...]) -> list[bytes]:
    return [line for line in text.splitlines() if _name(line) in names]


def test_a_scrape_sees_what_prometheus_clients_counter_and_histogram_would_export() -> None:
    metrics = Metrics(process=False)
    reference = CollectorRegistry()
    recipients = Counter(
        "bulksend_recipients",
        metrics.recipients.describe()[0].documentation,
        ["outcome"],
        registry=reference,
    )
    in_doubt = Counter(
        "bulksend_in_doubt", metrics.in_doubt.describe()[0].documentation, registry=reference
    )
    seconds = Histogram(
        "bulksend_smtp_transaction_seconds",
        metrics.transaction_seconds.describe()[0].documentation,
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        registry=reference,
    )
    for outcome, n in (("delivered", 3), ("bounced", 1)):
        for _ in range(n):
            metrics.recipients.labels(outcome).inc()
            recipients.labels(outcome).inc()
    metrics.recipients.labels("expired").inc(5)
    recipients.labels("expired").inc(5)
    metrics.in_doubt.inc()
    in_doubt.inc()
    for value in _OBSERVED:
        metrics.transaction_seconds.observe(value)
        seconds.observe(value)
    names = (
        b"bulksend_recipients",  # OpenMetrics names the family without _total
        b"bulksend_recipients_total",
        b"bulksend_in_doubt",
        b"bulksend_in_doubt_total",
        *(
            f"bulksend_smtp_transaction_seconds{suffix}".encode()
            for suffix in ("", "_bucket", "_count", "_sum")
        ),
    )
    for generate in (generate_latest, generate_openmetrics):
        ours = _families(generate(metrics.registry), names)
        theirs = _families(generate(reference), names)
        assert sorted(ours) == sorted(theirs)  # the registries list families in their own order
        assert len(ours) > 20  # the comparison saw every family, help and type lines too


def test_an_unlabelled_counter_exports_zero_before_its_first_count() -> None:
    metrics = Metrics(process=False)
    assert metrics.registry.get_sample_value("bulksend_in_doubt_total") == 0
    assert metrics.registry.get_sample_value("bulksend_recipients_total", {"outcome": "x"}) is None
