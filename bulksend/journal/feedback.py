"""What came back about a campaign's recipients after the run sent to them, as its journal
records it: asynchronous bounces, complaints and unsubscribes (pure: the kinds and events).

A recipient's state never changes once final (see :mod:`bulksend.journal`): a recipient
delivered that later bounces stays ``delivered``, and the bounce is kept beside it, in the
journal's ``feedback`` table, one row per recipient and kind (a repeated event counts up and
keeps the latest details). ``bulksend inbound`` writes these rows
(:mod:`bulksend.journal.feedback_log`), ``bulksend report`` reads them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from bulksend.journal.outcomes import Category

__all__ = ["COUNTS_SQL", "FeedbackCounts", "FeedbackEvent", "FeedbackKind", "feedback_counts"]


class FeedbackKind(enum.StrEnum):
    """What came back about a recipient after sending."""

    ASYNC_BOUNCE = "async_bounce"  # a DSN (RFC 3464) or a plain failure notice
    COMPLAINT = "complaint"  # an ARF report (RFC 5965)
    UNSUBSCRIBE = "unsubscribe"  # mail to the List-Unsubscribe mailto address


@dataclass(frozen=True, slots=True)
class FeedbackEvent:
    """One event about the recipient ``address`` (as the journal holds it)."""

    address: str
    kind: FeedbackKind
    at: float
    source: str  # dsn, arf, mailto (the suppression store's sources)
    category: Category | None = None
    status: str | None = None  # the enhanced status code (RFC 3463)
    code: int | None = None
    detail: str = ""


#: Recipients with feedback, per kind and category (None: a complaint or an unsubscribe).
FeedbackCounts: TypeAlias = dict[tuple[FeedbackKind, Category | None], int]

#: The query :func:`feedback_counts` reads (every backend).
COUNTS_SQL: Final = "SELECT kind, category, count(*) FROM feedback GROUP BY kind, category"


def feedback_counts(rows: Iterable[tuple[Any, ...]]) -> FeedbackCounts:
    """The rows of :data:`COUNTS_SQL` as counts."""
    return {
        (FeedbackKind(kind), None if category is None else Category(category)): int(n)
        for kind, category, n in rows
    }
