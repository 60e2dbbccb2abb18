"""What came back about a campaign's recipients after the run sent to them, as its journal
records it: asynchronous bounces, complaints and unsubscribes (pure: the kinds and events).

A recipient's state never changes once final (see :mod:`bulksend.journal`): a recipient
delivered that later bounces stays ``delivered``, and the bounce is kept beside it, in the
journal's ``feedback`` table, one row per recipient and kind (a repeated event counts up and
keeps the latest details). ``bulksend inbound`` writes these rows
(:mod:`bulksend.journal.feedback_log`), ``bulksend report`` reads them: their counts, and
with ``--feedback`` the rows themselves (:class:`FeedbackRow`, the query of every backend).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from bulksend.journal.outcomes import Category, Status
from bulksend.journal.records import iso_time
from bulksend.text import printable

__all__ = [
    "COUNTS_SQL",
    "FeedbackCounts",
    "FeedbackEvent",
    "FeedbackKind",
    "FeedbackRow",
    "feedback_counts",
    "feedback_row",
    "rows_sql",
]


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


@dataclass(frozen=True, slots=True)
class FeedbackRow:
    """One recipient's feedback of one kind, with the recipient's row, for exports."""

    id: int
    address: str
    domain: str
    recipient_status: Status  # the recipient's final state (delivered, ...)
    kind: FeedbackKind
    category: Category | None
    status: str | None  # the enhanced status code (RFC 3463), as the report gave it
    code: int | None
    source: str
    detail: str
    first_at: float
    last_at: float
    count: int

    def as_export(self) -> dict[str, Any]:
        """The exported fields; the remote text (detail, status code) escaped."""
        return {
            "id": self.id,
            "address": self.address,
            "domain": self.domain,
            "status": str(self.recipient_status),
            "kind": str(self.kind),
            "category": None if self.category is None else str(self.category),
            "enhanced_code": None if self.status is None else printable(self.status),
            "code": self.code,
            "source": self.source,
            "detail": printable(self.detail),
            "first_time": iso_time(self.first_at),
            "last_time": iso_time(self.last_at),
            "count": self.count,
        }


def rows_sql(wanted: str) -> str:
    """The query of :class:`FeedbackRow`'s columns (every backend): the rows whose
    recipient passes ``wanted`` (a condition on ``r.status``, in the dialect's
    placeholders), by recipient id, then kind."""
    return f"""SELECT r.id, r.address, r.domain, r.status, f.kind, f.category, f.status, f.code,
    f.source, f.detail, f.first_at, f.last_at, f.count
FROM feedback f JOIN recipients r ON r.id = f.recipient_id
WHERE {wanted} ORDER BY f.recipient_id, f.kind"""  # noqa: S608


def feedback_row(row: tuple[Any, ...]) -> FeedbackRow:
    """A row of :func:`rows_sql` as a :class:`FeedbackRow`."""
    return FeedbackRow(
        row[0],
        row[1],
        row[2],
        Status(row[3]),
        FeedbackKind(row[4]),
        None if row[5] is None else Category(row[5]),
        *row[6:13],
    )
