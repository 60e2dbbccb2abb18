"""A dry run (``send --dry-run``): render every recipient and route every domain.

Nothing is sent and no journal is written. Rendering runs through the whole list first (it
reads the recipients file once); then the distinct domains of the renderable recipients are
routed, :func:`bulksend.routing.route_all` at a time, as a run would route them.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from bulksend.campaign.recipients import Reject
from bulksend.campaign.render import Campaign, RenderError
from bulksend.routing import Router, RoutingError, route_all

REPORT_EVERY: Final = 5.0  # seconds between progress lines while rendering
FAILURES_KEPT: Final = 5  # render failures quoted in the report


@dataclass
class DryRunReport:
    """What a dry run found."""

    read: int = 0  # valid recipients read
    rendered: int = 0
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)  # by kind
    failures: list[str] = field(default_factory=list)  # the first render failures
    domains: collections.Counter[str] = field(default_factory=collections.Counter)  # recipients
    unroutable: dict[str, RoutingError] = field(default_factory=dict)
    sites: set[str] = field(default_factory=set)

    @property
    def lost(self) -> int:
        """Renderable recipients whose domain cannot be routed."""
        return sum(self.domains[d] for d in self.unroutable)

    @property
    def clean(self) -> bool:
        """Every recipient read rendered, and every domain routed."""
        return not self.unroutable and self.rendered == self.read


async def dry_run(
    campaign: Campaign, router: Router, *, say: Callable[[str], object]
) -> DryRunReport:
    """Render every recipient of ``campaign`` and route its domains through ``router``.

    ``say`` gets a progress line every :data:`REPORT_EVERY` seconds while rendering, and one
    before routing.
    """
    report = DryRunReport()

    def on_reject(reject: Reject) -> None:
        report.rejected[reject.kind.value] += 1

    now = time.time()
    report_at = time.monotonic() + REPORT_EVERY
    for recipient in campaign.recipients(on_reject):
        report.read += 1
        if time.monotonic() >= report_at:
            report_at += REPORT_EVERY
            say(f"dry run: {report.read:,} recipients read, {report.rendered:,} rendered")
        try:
            campaign.render(recipient, now=now)
        except RenderError as exc:
            if len(report.failures) < FAILURES_KEPT:
                report.failures.append(str(exc))
            continue
        report.rendered += 1
        report.domains[recipient.address.rpartition("@")[2].lower()] += 1
    say(f"dry run: {report.read:,} recipients read; routing {len(report.domains):,} domains")
    for domain, route in (await route_all(router, list(report.domains))).items():
        if isinstance(route, RoutingError):
            report.unroutable[domain] = route
        else:
            report.sites.add(str(route.site))
    return report
