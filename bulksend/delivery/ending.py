"""Ending a domain's waiting recipients in the middle of a run: an operator's cancel
(``bulksend ctl``), the campaign's ``[schedule] stop_at``, and holding a paused domain back.

How this works: the domain is detached from its destination, which hands back what it had
taken of it (:meth:`~bulksend.delivery.destination.Destination.hand_back`), then every
waiting recipient of it is claimed, due or not, and given the outcome. A batch the
destination was fetching meanwhile lands in its buffer, so it is handed back once more at
the end. Messages already on the wire finish as they would.
"""

from __future__ import annotations

import math
from typing import Final

import trio

from bulksend.delivery.scheduler import Scheduler
from bulksend.journal import Outcome

#: Recipients claimed (and ended) at once.
_BATCH: Final = 1000


def hold_domain(scheduler: Scheduler, domain: str, outcome: Outcome) -> int:
    """Take ``domain`` from its destination; what it had taken of it gets ``outcome``.
    Returns how many recipients that was."""
    held = 0
    for destination in scheduler.destinations.values():
        if domain in destination.domains:
            destination.detach(domain)
            scheduler.domain_idle(domain)
        held += destination.hand_back(domain, outcome)
    return held


async def end_waiting(scheduler: Scheduler, domain: str, outcome: Outcome) -> int:
    """Give every waiting recipient of ``domain`` ``outcome`` (a final one); returns how many.

    With a journal this process holds alone (SQLite) every one; with a shared (PostgreSQL)
    one only those this worker holds (see :mod:`bulksend.control.shared` for a cancel).
    """
    context = scheduler.context
    count = hold_domain(scheduler, domain, outcome)
    label = next((d.label for d in scheduler.destinations.values() if domain in d.domains), "other")
    if isinstance(context.writer.journal.path, str):
        # A shared (PostgreSQL) journal: claiming rows due at any time would also expire
        # the other workers' leases. What is due comes to the destinations, which end it.
        return count
    while batch := await context.writer.fetch_due(domain, _BATCH, now=math.inf):
        for due in batch:
            context.record(due, outcome, label)
        count += len(batch)
    return count + hold_domain(scheduler, domain, outcome)


async def end_at_stop(scheduler: Scheduler) -> None:
    """At the campaign's ``[schedule] stop_at`` (if it has one), expire every recipient
    still waiting (category ``schedule``); returns at once when the run stops first."""
    context = scheduler.context
    schedule = context.schedule
    if schedule is None or schedule.config.stop_at is None:
        return
    with trio.move_on_at(schedule.config.stop_at - context.epoch):
        await context.stopping.wait()  # the run ended first (or was stopped)
    if context.stopping.is_set():
        return
    await context.writer.flush()
    for domain in await context.writer.due_domains(now=math.inf):
        await end_waiting(scheduler, domain, schedule.stopped())
