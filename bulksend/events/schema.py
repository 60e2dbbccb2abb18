"""The event schema, version 1: one JSON object per recipient outcome.

Fields (every event has all of them; absent values are null):

``v``
    The schema version, ``1``. A field may be added in a later version of the same number;
    one that changes meaning gets a new number.
``event_id``
    Unique (32 hex digits): a receiver that gets a batch twice (a retry after a lost answer)
    drops what it has seen.
``event``
    ``delivered``, ``deferred`` (a transient failure; retried), ``bounced``, ``in_doubt``
    (the final reply never came), ``expired`` (the campaign's ``stop_at`` passed:
    ``category`` ``schedule``; or its ``max_age`` ran out, reported once the journal
    committed it, with the reply of the outcome that ended it), ``suppressed`` (on the
    suppression list before it was sent),
    ``cancelled`` (``bulksend ctl cancel``), ``not_rendered`` (its message could not be
    made). Our own pacing (throttle, backoff, windows) is not an event.
``time``
    When it happened, ISO 8601 UTC with milliseconds.
``campaign``
    The campaign id.
``recipient``
    The recipient's position in the recipients file (its id in the journal and reports).
``address``, ``domain``, ``site``
    The recipient, its domain, and the site's metric label.
``code``, ``enhanced_code``, ``text``, ``category``
    The reply (or our reason) and its category (docs/campaign.md).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any, Final

from bulksend.journal import Due, Kind, Outcome

VERSION: Final = 1

#: The event of each outcome kind (kinds absent here make none: our own pacing).
EVENTS: Final = {
    Kind.DELIVERED: "delivered",
    Kind.DEFERRED: "deferred",
    Kind.BOUNCED: "bounced",
    Kind.IN_DOUBT: "in_doubt",
    Kind.SUPPRESSED: "suppressed",
    Kind.CANCELLED: "cancelled",
    Kind.OPERATOR_BOUNCED: "bounced",
    Kind.NOT_RENDERED: "not_rendered",
    Kind.STOPPED: "expired",
}


def event(
    campaign: str, due: Due, outcome: Outcome, site: str, now: float
) -> dict[str, Any] | None:
    """The event of one outcome, or None when it makes none."""
    name = EVENTS.get(outcome.kind)
    if name is None:
        return None
    when = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds")
    return {
        "v": VERSION,
        "event_id": secrets.token_hex(16),
        "event": name,
        "time": when.replace("+00:00", "Z"),
        "campaign": campaign,
        "recipient": due.id,
        "address": due.address,
        "domain": due.domain,
        "site": site,
        "code": outcome.code,
        "enhanced_code": outcome.enhanced_code,
        "text": outcome.text,
        "category": None if outcome.category is None else outcome.category.value,
    }
