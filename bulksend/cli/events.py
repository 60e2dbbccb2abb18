"""The event stream of a run from its flags and campaign (``--events stdout``, ``[events]``)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from bulksend.campaign.render import Campaign
from bulksend.events.stream import EventStream
from bulksend.journal import Due, Outcome
from bulksend.metrics import Metrics


def spool_path(campaign: Campaign, journal: Path | str) -> Path:
    """Where webhook batches wait while the receiver is down: beside the journal (a SQLite
    one), else beside the campaign file."""
    if isinstance(journal, Path):
        return journal.with_name(journal.name + ".events")
    return campaign.config.source.with_name(f"{campaign.config.id}.events")


def event_stream(
    campaign: Campaign, journal: Path | str, to_stdout: bool, metrics: Metrics
) -> EventStream | None:
    """The run's event stream, or None when it has no sink."""
    stream = EventStream(
        campaign.config.id,
        registry=metrics.registry,
        stdout=sys.stdout if to_stdout else None,
        webhook=campaign.config.events,
        spool=spool_path(campaign, journal),
    )
    return stream if stream else None


def both(
    first: Callable[[Due, Outcome, str], None], second: Callable[[Due, Outcome, str], None]
) -> Callable[[Due, Outcome, str], None]:
    """One ``on_outcome`` that calls two."""

    def call(due: Due, outcome: Outcome, site: str) -> None:
        first(due, outcome, site)
        second(due, outcome, site)

    return call
