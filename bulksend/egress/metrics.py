"""The warm-up metrics: each warming egress source's day, allowance and use of it.

A collector read at scrape time (from the metrics server's thread: plain reads, wall clock),
registered in the run's registry by the scheduler when a source warms up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bulksend.egress.warmup import Warmup

__all__ = ["WarmupCollector"]


class WarmupCollector(Collector):
    """``bulksend_egress_warmup_{day,allowance,sent}{source}`` of this process's sources."""

    def __init__(self, warmups: Mapping[str, Warmup]) -> None:
        self._warmups = warmups

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        day = GaugeMetricFamily(
            "bulksend_egress_warmup_day",
            "The warm-up day of each warming egress source (1 for the first).",
            labels=["source"],
        )
        allowance = GaugeMetricFamily(
            "bulksend_egress_warmup_allowance",
            "Messages each warming egress source may send today (absent after its schedule).",
            labels=["source"],
        )
        sent = GaugeMetricFamily(
            "bulksend_egress_warmup_sent",
            "Messages each warming egress source sent today, all sites.",
            labels=["source"],
        )
        for name, warmup in dict(self._warmups).items():
            if warmup.start is None:
                continue  # not used yet
            day.add_metric([name], warmup.day(now))
            today = warmup.allowance(now)
            if today is not None:
                allowance.add_metric([name], today)
            sent.add_metric([name], warmup.sent_today(now))
        yield from (day, allowance, sent)
