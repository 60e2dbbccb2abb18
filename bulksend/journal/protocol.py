"""What a journal store offers its users, as two small protocols.

:class:`JournalReader` is what reports read (one journal, or several shards' journals as
one); :class:`JournalStore` adds what the :class:`~bulksend.journal.writer.JournalWriter`
uses during a run. :class:`~bulksend.journal.store.Journal` (SQLite) implements both; a
second backend (PostgreSQL) implements the same two.

Ownership: while a writer runs it *holds* the store (:meth:`JournalStore.hold`); the run
methods then take the holder as ``owner=`` and refuse anyone else, and the report methods
are refused (the writer's thread uses the connection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypeAlias, runtime_checkable

from bulksend.journal.feedback import FeedbackCounts, FeedbackRow
from bulksend.journal.outcomes import Category, Outcome, Status
from bulksend.journal.records import Due, RecipientState

#: One outcome to apply: the recipient's id, the outcome, and when it happened (epoch s).
OutcomeRecord: TypeAlias = tuple[int, Outcome, float]


class JournalReader(Protocol):
    """The recipients' rows and their counts, for reports and exports."""

    @property
    def path(self) -> Path | str:
        """Where the journal is (for messages)."""

    def counts(self) -> dict[Status, int]:
        """Recipients per status (every status present, zero included)."""

    def counts_by_domain(self) -> dict[str, dict[Status, int]]:
        """Recipients per domain and status (only non-zero statuses)."""

    def counts_by_category(
        self, statuses: Iterable[Status] = (Status.BOUNCED,)
    ) -> dict[Category, int]:
        """Recipients in ``statuses`` (default: bounced) per category of their last reply."""

    def feedback_counts(self) -> FeedbackCounts:
        """Recipients with asynchronous bounces, complaints, unsubscribes (by category)."""

    def in_doubt_total(self) -> int:
        """How many sends may have been duplicated (in-doubt events, all recipients)."""

    def not_imported(self) -> dict[str, int]:
        """Rows of the recipients file left out of the journal, by reason."""

    def iter_states(self, statuses: Iterable[Status] | None = None) -> Iterator[RecipientState]:
        """Every recipient's row in id order (streamed), optionally only some statuses."""

    def iter_feedback(self, statuses: Iterable[Status] | None = None) -> Iterator[FeedbackRow]:
        """Every feedback row by recipient id, then kind (streamed), optionally only those of
        recipients in some statuses."""


class JournalStore(JournalReader, Protocol):
    """The durable recipient queue a run claims from and records outcomes into."""

    def hold(self, owner: object) -> None:
        """Reserve the store for ``owner``; RuntimeError if someone holds it already."""

    def release(self, owner: object) -> None:
        """End ``owner``'s hold (a no-op if it holds nothing)."""

    def fetch_due(
        self, domain: str, limit: int, *, now: float | None = None, owner: object = None
    ) -> list[Due]:
        """Claim up to ``limit`` recipients of ``domain`` due at ``now`` (in-doubt first)."""

    def due_domains(self, *, now: float | None = None, owner: object = None) -> dict[str, int]:
        """Domains with recipients due at ``now``, with how many are due."""

    def next_due_at(self, *, owner: object = None) -> float | None:
        """The earliest time any unclaimed waiting recipient is due, or None."""

    def waiting(self, *, owner: object = None) -> bool:
        """Whether any recipient is still waiting (pending or in doubt, claimed or not)."""

    def suppress_waiting(
        self,
        suppressed: Callable[[str], bool],
        *,
        now: float | None = None,
        owner: object = None,
    ) -> int:
        """Mark every unclaimed waiting recipient whose address is ``suppressed``."""

    def apply(
        self,
        records: Sequence[OutcomeRecord],
        *,
        owner: object = None,
        expired: list[int] | None = None,
    ) -> tuple[int, int]:
        """Apply outcomes in one durable transaction; returns how many applied, and expired
        (their ids are appended to ``expired``, if given)."""

    def update_warmup(
        self, source: str, change: Callable[[str | None], str], *, owner: object = None
    ) -> str:
        """Replace one egress source's warm-up state (JSON; None before the first) by
        ``change(saved)`` in one transaction, atomically for every worker sharing the
        journal; returns the new state."""


@runtime_checkable
class LeasedStore(Protocol):
    """A store whose claims are leases (PostgreSQL): the writer renews them while it runs."""

    #: Seconds a claim is held without renewal.
    lease: float

    def renew_leases(self, *, now: float | None = None, owner: object = None) -> int:
        """Extend every lease this store holds; returns how many."""
